"""MT-Bench evaluation: both turns answered, each turn graded 1 to 10 by the judge, and a pairwise win rate per
category against a baseline's answers.

- Answers: the second turn's prompt is the conversation so far (the first question, the model's own first answer,
  the second question), through the model's chat template where it has one, else the task's plain frame. The model
  answers at MT-Bench's own temperature per category (greedy for math, coding, reasoning and extraction).
- Grading: one judge prompt per turn from the template file templates/mtbench_single.txt (placeholders
  {principles}, {questions}, {answer}, {reference}); the judge sees the reference answer for math, reasoning and
  coding questions that have one, as MT-Bench does. The rating is the last [[N]] of the reply, N from 1 to 10; a reply
  without one is counted as unparsed and a failed request as an error, never as a score.
- Pairwise: both turns of a question as one exchange per side, judged by `judge.judge_pairs` (both orders, ties
  half a win) with the question's category, against the baseline report's MT-Bench answers.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources

from ..sami.constitutions import Constitution
from ..sami.datasets.mtbench import MultiTurnQuery
from ..sami.prompts import ChatTokenizer, get_template, render_prompt
from ..sami.sampling import SamplingSpec
from .judge import JudgeBackend, PairItem, judge_pairs
from .judge_templates import JudgeTemplate
from .policy import Policy, generate_one

TEMPLATE_FILE = "mtbench_single.txt"
PLACEHOLDERS = ("principles", "questions", "answer", "reference")
REFERENCE_CATEGORIES = frozenset({"math", "reasoning", "coding"})
# MT-Bench's answer temperature per category (FastChat llm_judge); a category not listed samples as configured.
CATEGORY_TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                        "reasoning": 0.0, "stem": 0.1, "humanities": 0.1}
NO_REFERENCE = "(none for this question)"

_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_FIELD = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


def parse_rating(reply: str | None) -> float | None:
    """The last [[N]] in a judge's reply when 1 <= N <= 10; None when there is none or it is out of range."""
    found = _RATING.findall(reply or "")
    if not found:
        return None
    value = float(found[-1])
    return value if 1 <= value <= 10 else None


def grading_template() -> str:
    return resources.files(__package__).joinpath("templates", TEMPLATE_FILE).read_text(encoding="utf-8")


def fill(template: str, **values: str) -> str:
    """Placeholders filled in one pass, so braces inside an answer are never read as placeholders."""
    return _FIELD.sub(lambda m: values[m.group(1)], template)


@dataclass(frozen=True)
class MTItem:
    """One MT-Bench question answered under one constitution."""

    query: MultiTurnQuery
    constitution: Constitution

    @property
    def category(self) -> str:
        return self.query.category or "uncategorised"


def conversation_prompt(task_kind: str, constitution: str, questions: Sequence[str], answers: Sequence[str],
                        tokenizer: ChatTokenizer | None = None) -> str:
    """The prompt for question `len(answers)`: the earlier questions with the model's own answers, then it."""
    if len(questions) != len(answers) + 1:
        raise ValueError(f"{len(questions)} questions need {len(questions) - 1} earlier answers, got {len(answers)}")
    if not answers:
        return render_prompt(task_kind, constitution, questions[0], tokenizer)
    template = get_template(task_kind)
    if tokenizer is not None:
        messages = [{"role": "system", "content": template.system.format(constitution=constitution)}]
        for q, a in zip(questions, [*answers, None], strict=True):
            messages.append({"role": "user", "content": template.user.format(query=q)})
            if a is not None:
                messages.append({"role": "assistant", "content": a})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # plain frame: the first turn as rendered alone, then Human/Assistant turns as the frame writes them
    text = render_prompt(task_kind, constitution, questions[0], None)
    for q, a in zip(questions[1:], answers, strict=True):
        text += f" {a.strip()}\n\nHuman: {template.user.format(query=q)}\n\nAssistant:"
    return text


def answer_turns(policy: Policy, items: Sequence[MTItem], task_kind: str, tokenizer: ChatTokenizer | None,
                 sampling: SamplingSpec, seed: int) -> list[list[str]]:
    """Every turn of every question answered in order; turn t's prompt holds the model's answers to turns < t."""
    answers: list[list[str]] = [[] for _ in items]
    for t in range(max((len(it.query.turns) for it in items), default=0)):
        todo = [k for k, it in enumerate(items) if len(it.query.turns) > t]
        by_temperature: dict[float, list[int]] = defaultdict(list)
        for k in todo:
            by_temperature[CATEGORY_TEMPERATURE.get(items[k].category, sampling.temperature)].append(k)
        for temperature, ks in sorted(by_temperature.items()):
            prompts = [conversation_prompt(task_kind, items[k].constitution.text, items[k].query.turns[:t + 1],
                                           answers[k], tokenizer) for k in ks]
            outs = generate_one(policy, prompts, replace(sampling, n=1, temperature=temperature), seed,
                                keys=[("mtbench", items[k].query.id, t) for k in ks])
            for k, out in zip(ks, outs, strict=True):
                answers[k].append(out.strip())
    return answers


def _reference(item: MTItem, turn: int) -> str:
    refs = item.query.references
    if item.category in REFERENCE_CATEGORIES and turn < len(refs) and refs[turn].strip():
        return refs[turn].strip()
    return NO_REFERENCE


def _dialogue(questions: Sequence[str], answers: Sequence[str]) -> str:
    lines = []
    for t, q in enumerate(questions):
        lines.append(f"User: {q}")
        if t < len(answers):
            lines.append(f"Assistant: {answers[t]}")
    return "\n\n".join(lines)


def grading_prompts(items: Sequence[MTItem], answers: Sequence[Sequence[str]], template: str
                    ) -> list[tuple[int, int, str]]:
    """(item index, turn, judge prompt) for every answered turn."""
    out = []
    for k, (item, ans) in enumerate(zip(items, answers, strict=True)):
        for t, a in enumerate(ans):
            out.append((k, t, fill(template, principles=item.constitution.text,
                                   questions=_dialogue(item.query.turns[:t + 1], ans[:t]), answer=a,
                                   reference=_reference(item, t))))
    return out


def _stats(ratings: Sequence[float | None], errors: int) -> dict:
    scored = [r for r in ratings if r is not None]
    return {"mean": sum(scored) / len(scored) if scored else None, "count": len(scored),
            "unparsed": len(ratings) - len(scored), "errors": errors}


def aggregate(judgments: Sequence[dict]) -> dict:
    """Mean rating, count, unparsed and errors per turn and over both turns, overall and per category."""

    def block(js: Sequence[dict]) -> dict:
        turns = sorted({j["turn"] for j in js})
        out = {f"turn_{t + 1}": _stats([j["rating"] for j in js if j["turn"] == t and not j["error"]],
                                       sum(j["error"] for j in js if j["turn"] == t)) for t in turns}
        out["both_turns"] = _stats([j["rating"] for j in js if not j["error"]], sum(j["error"] for j in js))
        return out

    by_cat: dict[str, list[dict]] = defaultdict(list)
    for j in judgments:
        by_cat[j["category"]].append(j)
    return {"overall": block(judgments), "by_category": {c: block(js) for c, js in sorted(by_cat.items())}}


def grade(backend: JudgeBackend, items: Sequence[MTItem], answers: Sequence[Sequence[str]]) -> list[dict]:
    """One judgment per answered turn: the rating (None: unparsed or failed) and the judge's raw reply."""
    prompts = grading_prompts(items, answers, grading_template())
    replies = backend.complete([p for _, _, p in prompts])
    return [{"query_id": items[k].query.id, "category": items[k].category, "turn": t, "rating": parse_rating(r),
             "error": r is None, "reply": r} for (k, t, _), r in zip(prompts, replies, strict=True)]


def _exchange(texts: Sequence[str]) -> str:
    return "\n\n".join(f"[Turn {t + 1}] {x}" for t, x in enumerate(texts))


def pairwise(backend: JudgeBackend, items: Sequence[MTItem], answers: Sequence[Sequence[str]],
             baseline_answers: dict[tuple[str, str], list[str]], template: JudgeTemplate | None = None
             ) -> dict | None:
    """Win rate per category over the baseline's answers to the same questions under the same constitutions;
    both turns form one exchange per side. None when the baseline answered none of them."""
    pairs = []
    for item, ans in zip(items, answers, strict=True):
        other = baseline_answers.get((item.query.id, item.constitution.id))
        if other is not None and len(other) == len(ans):
            pairs.append(PairItem(_exchange(item.query.turns[:len(ans)]), item.constitution.text, _exchange(ans),
                                  _exchange(other), item.category))
    return judge_pairs(backend, pairs, template=template) if pairs else None


def answers_of(report: dict | None) -> dict[tuple[str, str], list[str]]:
    """(question id, constitution id) -> its turns' answers, from an evaluation report's MT-Bench section."""
    section = (report or {}).get("mtbench") or {}
    return {(a["query_id"], a["constitution_id"]): list(a["turns"]) for a in section.get("answers") or []}


def mtbench_eval(policy: Policy, items: Sequence[MTItem], task_kind: str, tokenizer: ChatTokenizer | None,
                 sampling: SamplingSpec, seed: int, backend: JudgeBackend, baseline: dict | None,
                 template: JudgeTemplate | None = None) -> dict:
    """Answer, grade and compare (pairwise with the judge's pairwise `template`); the report's `mtbench` section,
    answers and the grading judge's raw replies included."""
    answers = answer_turns(policy, items, task_kind, tokenizer, sampling, seed)
    judgments = grade(backend, items, answers)
    result = {"questions": len(items), "grading": aggregate(judgments), "template": TEMPLATE_FILE,
              "max_tokens": sampling.max_tokens,
              "answers": [{"query_id": it.query.id, "category": it.category, "constitution_id": it.constitution.id,
                           "turns": ans} for it, ans in zip(items, answers, strict=True)],
              "judgments": judgments}
    if baseline is not None:
        wins = pairwise(backend, items, answers, answers_of(baseline), template)
        if wins is not None:
            wins["baseline"] = f"iteration {baseline.get('iteration')}"
        result["pairwise"] = wins
    return result
