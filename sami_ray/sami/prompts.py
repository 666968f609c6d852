"""Prompt templates: how a constitution and a query become the text a model continues.

Base models get a plain-text frame (the constitution as a system paragraph, then the query); instruction-tuned
models get the constitution as the system message of their own chat template. Generation and training use the
same rendering, so the log-probs the trainer scores are of exactly the prompts the sampler answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..errors import ConfigError

TaskKind = Literal["instruction", "summarization", "dialogue", "math"]


class ChatTokenizer(Protocol):
    def apply_chat_template(self, conversation: list[dict], tokenize: bool = ..., add_generation_prompt: bool = ...,
                            **kw: object) -> str: ...


@dataclass(frozen=True)
class TaskTemplate:
    system: str  # {constitution} is filled in
    user: str  # {query} is filled in
    base_frame: str  # for base models: {system} and {user}


_BASE_FRAME = "System: {system}\n\nHuman: {user}\n\nAssistant:"

TEMPLATES: dict[str, TaskTemplate] = {
    "instruction": TaskTemplate(
        system="You are a helpful assistant. Follow these principles in your answer:\n{constitution}",
        user="{query}",
        base_frame=_BASE_FRAME,
    ),
    "summarization": TaskTemplate(
        system="Summarize the post for the reader, following these principles:\n{constitution}",
        user="{query}\n\nSummarize the post above.",
        base_frame="System: {system}\n\nPOST: {user}\n\nSummary:",
    ),
    "dialogue": TaskTemplate(
        system="You are the assistant in this conversation. Follow these principles:\n{constitution}",
        user="{query}",
        base_frame=_BASE_FRAME,
    ),
    "math": TaskTemplate(
        system="Solve the problem. Follow these principles:\n{constitution}\n"
               "End with a line of the form '#### <number>'.",
        user="{query}",
        base_frame="System: {system}\n\nProblem: {user}\n\nSolution:",
    ),
}

# A generation prompt with no constitution at all (the 'base model' view used by evaluations).
NO_CONSTITUTION = "(no principles)"


def get_template(task: str) -> TaskTemplate:
    try:
        return TEMPLATES[task]
    except KeyError:
        raise ValueError(f"unknown task kind {task!r}; known: {sorted(TEMPLATES)}") from None


def render_prompt(task: str, constitution_text: str, query_text: str,
                  tokenizer: ChatTokenizer | None = None, system_override: str | None = None) -> str:
    """The prompt string for (constitution, query). With a tokenizer, its chat template frames the messages."""
    template = get_template(task)
    system = (system_override or template.system).format(constitution=constitution_text)
    user = template.user.format(query=query_text)
    if tokenizer is None:
        return template.base_frame.format(system=system, user=user)
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def has_chat_template(tokenizer: object) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_tokenizer_for(mode: str, tokenizer: Any, field: str) -> Any:
    """`tokenizer` when prompts go through its chat template (per `mode`: on, off, auto), else None."""
    if mode == "off":
        return None
    if has_chat_template(tokenizer):
        return tokenizer
    if mode == "on":
        raise ConfigError(f"{field} is 'on' but the model's tokenizer has no chat template; set it to 'off' or 'auto'")
    return None
