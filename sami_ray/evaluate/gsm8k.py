"""GSM8K-style scoring: the final number of an answer, exact match, pass@1 and pass@k.

The final number is the first number after '####' when the answer has such a line, else the last number in the
text. Numbers may carry '$', thousands commas, a sign ('-' or '−', before or after '$'), decimals, a unit or a
trailing period: '$1,234.50' -> 1234.5, '-$3' -> -3, '12kg.' -> 12. Equality is exact on the decimal value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import replace
from decimal import Decimal, InvalidOperation

from ..sami.sampling import SamplingSpec
from .policy import Policy, generate_texts

_NUMBER = re.compile(
    r"(?<![\w.])(?P<s1>[-−])?\$?(?P<s2>[-−])?(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?P<frac>\.\d+)?")
_HASHES = re.compile(r"####(?P<rest>[^\n]*)")


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
    for h in reversed(list(_HASHES.finditer(text))):
        m = _NUMBER.search(h.group("rest"))
        if m:
            return _value(m)
    found = list(_NUMBER.finditer(text))
    return _value(found[-1]) if found else None


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


def gsm8k_eval(policy: Policy, prompts: Sequence[str], references: Sequence[str], k: int, sampling: SamplingSpec,
               seed: int) -> dict:
    """Sample k answers per problem and score pass@1..k. With temperature 0 the k samples are identical."""
    k = max(1, min(int(k), 10))
    out = generate_texts(policy, list(prompts), replace(sampling, n=k), seed,
                         keys=[("gsm8k", i) for i in range(len(prompts))])
    samples = [(list(s) + [""] * k)[:k] for s in out]  # a short return counts as wrong answers, not a crash
    result = score_samples(samples, references)
    result["examples"] = [{"reference": extract_answer(ref), "answer": s[0][-300:], "extracted": extract_answer(s[0])}
                          for s, ref in list(zip(samples, references, strict=True))[:3]]
    return result
