"""GSM8K: the final number of an answer, exact match, and the protocol: greedy pass@1 and sampled pass@k.

The final number is the number on the first '####' line that has one (a rambling answer's later '####' lines do not
count: the answer is cut after that line), else the last number in the text. Numbers may carry '$', thousands commas, a sign ('-' or '−', before or after '$'), decimals, a unit or a
trailing period: '$1,234.50' -> 1234.5, '-$3' -> -3, '12kg.' -> 12. Equality is exact on the decimal value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal, InvalidOperation

from ..sami.prompts import ChatTokenizer, render_prompt
from ..sami.sampling import SamplingSpec
from .policy import Policy, generate_texts

_NUMBER = re.compile(
    r"(?<![\w.])(?P<s1>[-−])?\$?(?P<s2>[-−])?(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?P<frac>\.\d+)?")
_HASHES = re.compile(r"####(?P<rest>[^\n]*)")
# Where a rambling answer starts another problem or turn (the plain frames' labels): generation stops there, so
# the answer's later '####' lines are mostly never written; `cut_after_answer` drops whatever still follows.
STOP_STRINGS = ("\nProblem:", "\nQuestion:", "\nHuman:", "\nUser:", "\nSystem:")
# The neutral evaluation prompt's system text: the task description ({constitution}) alone. Not even the '####'
# format: a principle being trained may be about it (final_answer_line's antithesis asks for no such line), and the
# score falls back to the last number.
NEUTRAL_SYSTEM = "{constitution}"


def _value(m: re.Match) -> str | None:
    digits = m.group("int").replace(",", "") + (m.group("frac") or "")
    try:
        d = Decimal(digits)
    except InvalidOperation:  # pragma: no cover - the regex only lets digits through
        return None
    if m.group("s1") or m.group("s2"):
        d = -d
    if d == 0:
        d = Decimal(0)  # no '-0'
    return format(d.normalize(), "f")


def extract_answer(text: str | None) -> str | None:
    """The final number as a canonical decimal string ('1234.5', '-3', '72'), or None when there is none."""
    if not text:
        return None
    for h in _HASHES.finditer(text):
        m = _NUMBER.search(h.group("rest"))
        if m:
            return _value(m)
    found = list(_NUMBER.finditer(text))
    return _value(found[-1]) if found else None


def cut_after_answer(text: str) -> str:
    """The answer up to the end of its first '####' line that holds a number; anything after it is rambling."""
    for h in _HASHES.finditer(text or ""):
        if _NUMBER.search(h.group("rest")):
            return text[:h.end()]
    return text or ""


def is_correct(response: str, reference: str) -> bool:
    """Exact match of the final numbers; a reference may be a bare number or a full GSM8K solution."""
    pred, gold = extract_answer(response), extract_answer(reference)
    return pred is not None and gold is not None and Decimal(pred) == Decimal(gold)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def score_samples(samples: Sequence[Sequence[str]], references: Sequence[str],
                  ks: Sequence[int] | None = None) -> dict:
    """pass@k over problems; `samples[i]` are the n answers to problem i (the same n for every problem)."""
    if len(samples) != len(references):
        raise ValueError(f"{len(samples)} sample lists but {len(references)} references")
    if not samples:
        return {"problems": 0, "samples": 0, "pass_at": {}, "extracted": None}
    n = len(samples[0])
    if n == 0 or any(len(s) != n for s in samples):
        raise ValueError("every problem needs the same, non-zero number of samples")
    ks = sorted({k for k in (ks or (1, 2, 5, 10, n)) if 1 <= k <= n})
    correct = [sum(is_correct(r, ref) for r in rs) for rs, ref in zip(samples, references, strict=True)]
    extracted = sum(extract_answer(r) is not None for rs in samples for r in rs) / (n * len(samples))
    return {"problems": len(samples), "samples": n, "extracted": extracted,
            "pass_at": {str(k): sum(pass_at_k(n, c, k) for c in correct) / len(correct) for k in ks}}


def neutral_prompt(task_kind: str, description: str | None, question: str,
                   tokenizer: ChatTokenizer | None = None) -> str:
    """The problem under the task description alone, no principles and no answer format: what the model does on
    its own, which an antithesis in the prompt would push down by design, the all-positive constitution push up, and
    a format instruction contradict when the format is itself a principle being trained."""
    return render_prompt(task_kind, (description or "").strip() or "Solve the problem.", question, tokenizer,
                         system_override=NEUTRAL_SYSTEM)


def gsm8k_eval(policy: Policy, prompts: Sequence[str], references: Sequence[str], k: int, sampling: SamplingSpec,
               seed: int, ids: Sequence[str] | None = None) -> dict:
    """The protocol: zero-shot greedy pass@1 (temperature 0) and pass@1..k of k answers sampled as `sampling` says.

    Generation stops where a rambling answer starts a new problem or turn (STOP_STRINGS, with the sampler's own),
    and each answer is cut after its first '####' line before scoring. `pass_at` is the sampled pass@k.
    """
    k = max(1, min(int(k), 10))
    ids = list(ids) if ids is not None else [str(i) for i in range(len(prompts))]
    stop = list(dict.fromkeys([*sampling.stop, *STOP_STRINGS]))
    greedy_spec = replace(sampling, n=1, temperature=0.0, stop=stop)
    greedy = [cut_after_answer((s or [""])[0]) for s in generate_texts(policy, list(prompts), greedy_spec, seed,
                                                                         keys=[("gsm8k-greedy", i) for i in ids])]
    if sampling.temperature > 0:
        out = generate_texts(policy, list(prompts), replace(sampling, n=k, stop=stop), seed,
                             keys=[("gsm8k", i) for i in ids])
        # a short return counts as wrong answers, not a crash
        samples = [[cut_after_answer(x) for x in (list(s) + [""] * k)[:k]] for s in out]
    else:  # the sampler is greedy: every attempt is the greedy answer
        samples = [[g] * k for g in greedy]
    result = score_samples(samples, references)
    greedy_ok = [is_correct(g, ref) for g, ref in zip(greedy, references, strict=True)]
    result["greedy_pass_at_1"] = sum(greedy_ok) / len(greedy_ok) if greedy_ok else None
    result["greedy_extracted"] = (sum(extract_answer(g) is not None for g in greedy) / len(greedy)) if greedy else None
    result["sampling"] = {"temperature": sampling.temperature, "top_p": sampling.top_p,
                          "max_tokens": sampling.max_tokens, "k": k, "stop": stop}
    result["per_problem"] = [{"id": i, "reference": extract_answer(ref), "greedy": extract_answer(g),
                              "greedy_correct": ok, "sampled_correct": sum(is_correct(x, ref) for x in s)}
                             for i, ref, g, ok, s in zip(ids, references, greedy, greedy_ok, samples, strict=True)]
    result["examples"] = [{"reference": extract_answer(ref), "answer": g[-300:], "extracted": extract_answer(g)}
                          for g, ref in list(zip(greedy, references, strict=True))[:3]]
    return result
