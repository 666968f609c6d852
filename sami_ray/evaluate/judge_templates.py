"""The judge's pairwise prompt as a template file: one shipped per task kind (templates/), or the user's own
(`evaluation.judge.template`).

A template holds exactly the placeholders {principles}, {query}, {answer_a} and {answer_b}, each at least once, and
asks for the verdict as [[A]], [[B]] or [[C]] (what `judge.parse_verdict` reads). Placeholders are filled in one
pass, so braces inside an answer are never read as placeholders; any other {word} in a template is an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..errors import ConfigError

PLACEHOLDERS = ("principles", "query", "answer_a", "answer_b")
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
# task.kind -> shipped template; math questions are judged as general instructions
BY_TASK = {"summarization": "summarization", "dialogue": "dialogue", "instruction": "instruction",
           "math": "instruction"}


@dataclass(frozen=True)
class JudgeTemplate:
    name: str  # the shipped template's name or the user's file
    text: str

    def render(self, principles: str, query: str, answer_a: str, answer_b: str) -> str:
        values = {"principles": principles, "query": query, "answer_a": answer_a, "answer_b": answer_b}
        return _FIELD.sub(lambda m: values[m.group(1)], self.text)


def parse_template(text: str, name: str) -> JudgeTemplate:
    """A checked template; a ConfigError naming `name` and the placeholder that is missing or unknown."""
    found = set(_FIELD.findall(text))
    unknown = sorted(found - set(PLACEHOLDERS))
    if unknown:
        raise ConfigError(f"judge template {name}: unknown placeholder {{{unknown[0]}}} (a template may use only "
                          + ", ".join("{" + p + "}" for p in PLACEHOLDERS) + ")")
    missing = [p for p in PLACEHOLDERS if p not in found]
    if missing:
        raise ConfigError(f"judge template {name}: placeholder {{{missing[0]}}} is missing (a template needs "
                          + ", ".join("{" + p + "}" for p in PLACEHOLDERS) + ")")
    return JudgeTemplate(name, text)


def shipped_template(task_kind: str) -> JudgeTemplate:
    """The template shipped for a task kind (package data: sami_ray/evaluate/templates/<name>.txt)."""
    name = BY_TASK.get(task_kind, "instruction")
    text = resources.files(__package__).joinpath("templates", f"{name}.txt").read_text(encoding="utf-8")
    return parse_template(text, f"{name} (shipped)")


def load_template(path: str | Path) -> JudgeTemplate:
    """The user's template file, checked."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"evaluation.judge.template: cannot read {path} ({e.strerror or e})") from None
    return parse_template(text, str(path))


def template_for(judge_cfg: object | None, task_kind: str) -> JudgeTemplate:
    """`evaluation.judge.template` when set, else the shipped template for `task_kind`."""
    path = judge_cfg.template if judge_cfg is not None else None
    return load_template(path) if path else shipped_template(task_kind)
