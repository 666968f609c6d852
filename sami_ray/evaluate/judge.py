"""Pairwise win rates with an LLM judge: an OpenAI-compatible chat endpoint or a local Policy.

Every pair is judged twice, candidate first and baseline first, so a judge that prefers a position gains nothing.
Each verdict counts 1 for a candidate win, 0.5 for a tie, 0 for a loss; the win rate is their mean over verdicts
that parsed. Verdicts that do not parse and requests that failed are counted and reported, never guessed.
The judge's prompt is a template file (`judge_templates.py`: shipped per task kind, or the user's own).
Length: both sides' mean words, a length-controlled win rate fitted on the length difference (`length.py`), and
the older tolerance view that keeps only pairs whose two answers differ in word count by at most
`length_tolerance` of the longer one. Every reply is kept (`RAW_KEY`: which pair, which order, the verdict) for
`report.write_report` to store as JSON lines beside the report.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, Protocol

import httpx

from ..errors import UserError
from ..sami.sampling import SamplingSpec
from .judge_templates import JudgeTemplate, shipped_template
from .length import logistic_length_fit, mean_words
from .policy import Policy, generate_one
from .text import word_count

log = logging.getLogger(__name__)

Outcome = Literal["win", "loss", "tie", "unparseable", "error"]

RAW_KEY = "raw_judgments"  # one record per judge prompt; stored beside the report, not inside it

_VERDICT = re.compile(r"\[\[\s*(A|B|C|TIE)\s*\]\]", re.IGNORECASE)


def parse_verdict(text: str | None) -> Literal["A", "B", "tie"] | None:
    """The last [[A]] / [[B]] / [[C]] (or [[tie]]) in the judge's reply; None when there is none."""
    if not text:
        return None
    found = _VERDICT.findall(text)
    if not found:
        return None
    v = found[-1].upper()
    return "tie" if v in ("C", "TIE") else v  # type: ignore[return-value]


class JudgeBackend(Protocol):
    def complete(self, prompts: list[str]) -> list[str | None]:
        """One reply per prompt; None where the request failed for good."""
        ...


class OpenAIJudge:
    """A judge behind any OpenAI-compatible `/chat/completions` endpoint. The API key is read from the environment
    variable named `api_key_env` and only ever sent in the Authorization header."""

    def __init__(self, url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 60.0,
                 max_retries: int = 2, max_tokens: int = 256, concurrency: int = 4, backoff_s: float = 0.5):
        self.endpoint = url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_tokens = max_tokens
        self.concurrency = max(1, concurrency)
        self.backoff_s = backoff_s
        self.errors: Counter[str] = Counter()

    @classmethod
    def from_config(cls, cfg: object) -> OpenAIJudge:
        return cls(cfg.url, cfg.model, cfg.api_key_env, cfg.timeout_s, cfg.max_retries)

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _one(self, client: httpx.Client, prompt: str) -> tuple[str | None, str | None]:
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}], "temperature": 0.0,
                "max_tokens": self.max_tokens}
        why = "no attempt"
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                resp = client.post(self.endpoint, json=body, headers=self._headers())
            except httpx.TimeoutException:
                why = "timeout"
                continue
            except httpx.TransportError as e:
                why = f"connection: {type(e).__name__}"
                continue
            if resp.status_code in (401, 403, 404):
                raise UserError(f"judge at {self.endpoint} answered HTTP {resp.status_code}: check "
                                f"evaluation.judge.url, evaluation.judge.model ({self.model!r}) and the API key in "
                                f"the environment variable {self.api_key_env}")
            if resp.status_code == 429 or resp.status_code >= 500:
                why = f"http {resp.status_code}"
                continue
            if resp.status_code != 200:
                return None, f"http {resp.status_code}"
            try:
                return str(resp.json()["choices"][0]["message"]["content"]), None
            except (ValueError, KeyError, IndexError, TypeError):
                return None, "malformed response"
        return None, why

    def complete(self, prompts: list[str]) -> list[str | None]:
        self.errors = Counter()
        if not prompts:
            return []
        with httpx.Client(timeout=self.timeout_s) as client, ThreadPoolExecutor(self.concurrency) as pool:
            results = list(pool.map(lambda p: self._one(client, p), prompts))
        for _, why in results:
            if why:
                self.errors[why] += 1
        if all(why and why.startswith("connection") for _, why in results):
            raise UserError(f"judge at {self.endpoint} cannot be reached ({results[0][1]}); "
                            "check evaluation.judge.url")
        if self.errors:
            log.warning("judge %s: %s", self.endpoint, dict(self.errors))
        return [text for text, _ in results]


class LocalJudge:
    """A judge that is any Policy (the driver passes a vLLM-backed actor): greedy, one reply per prompt."""

    def __init__(self, policy: Policy, max_tokens: int = 256):
        self.policy = policy
        self.sampling = SamplingSpec(temperature=0.0, top_p=1.0, max_tokens=max_tokens)
        self.errors: Counter[str] = Counter()

    def complete(self, prompts: list[str]) -> list[str | None]:
        return list(generate_one(self.policy, prompts, self.sampling, seed=0))


@dataclass(frozen=True)
class PairItem:
    query: str
    constitution: str
    candidate: str
    baseline: str
    category: str | None = None


def judge_prompt(item: PairItem, candidate_first: bool, template: JudgeTemplate | None = None) -> str:
    a, b = (item.candidate, item.baseline) if candidate_first else (item.baseline, item.candidate)
    return (template or shipped_template("instruction")).render(item.constitution, item.query, a, b)


def outcome(reply: str | None, candidate_first: bool) -> Outcome:
    if reply is None:
        return "error"
    v = parse_verdict(reply)
    if v is None:
        return "unparseable"
    if v == "tie":
        return "tie"
    return "win" if (v == "A") == candidate_first else "loss"


def tally(outcomes: Sequence[Outcome]) -> dict:
    c = Counter(outcomes)
    decided = c["win"] + c["loss"] + c["tie"]
    return {"verdicts": len(outcomes), "wins": c["win"], "losses": c["loss"], "ties": c["tie"],
            "unparseable": c["unparseable"], "errors": c["error"],
            "win_rate": (c["win"] + 0.5 * c["tie"]) / decided if decided else None}


_SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def judge_pairs(backend: JudgeBackend, items: Sequence[PairItem], length_tolerance: float = 0.2,
                template: JudgeTemplate | None = None) -> dict:
    """Win rate of the candidates over the baselines, both orders judged; see the module docstring."""
    template = template or shipped_template("instruction")
    prompts = [judge_prompt(it, first, template) for it in items for first in (True, False)]
    replies = backend.complete(prompts)
    per_pair: list[tuple[Outcome, Outcome]] = []
    first_position = []
    raw = []
    for k, it in enumerate(items):
        r1, r2 = replies[2 * k], replies[2 * k + 1]
        o1, o2 = outcome(r1, True), outcome(r2, False)
        per_pair.append((o1, o2))
        for r, o, order in ((r1, o1, "candidate_first"), (r2, o2, "baseline_first")):
            v = parse_verdict(r)
            if v in ("A", "B"):
                first_position.append(v == "A")
            raw.append({"pair": k, "order": order, "verdict": v, "outcome": o, "reply": r, "query": it.query,
                        "constitution": it.constitution, "category": it.category, "candidate": it.candidate,
                        "baseline": it.baseline})
    flat = [o for pair in per_pair for o in pair]
    both = [(o1, o2) for o1, o2 in per_pair if o1 in ("win", "loss", "tie") and o2 in ("win", "loss", "tie")]
    similar = [pair for pair, it in zip(per_pair, items, strict=True)
               if _similar_length(it.candidate, it.baseline, length_tolerance)]
    by_cat: dict[str, list[Outcome]] = defaultdict(list)
    for pair, it in zip(per_pair, items, strict=True):
        by_cat[it.category or "all"].extend(pair)
    bad = [r for r in replies if r is not None and parse_verdict(r) is None]
    decided = [(word_count(it.candidate) - word_count(it.baseline), _SCORE[o])
               for pair, it in zip(per_pair, items, strict=True) for o in pair if o in _SCORE]
    return {
        "pairs": len(items),
        **tally(flat),
        "by_order": {"candidate_first": tally([o1 for o1, _ in per_pair]),
                     "baseline_first": tally([o2 for _, o2 in per_pair])},
        "position_consistency": sum(a == b for a, b in both) / len(both) if both else None,
        "first_position_chosen": sum(first_position) / len(first_position) if first_position else None,
        "lengths": {"candidate_mean_words": mean_words([it.candidate for it in items]),
                    "baseline_mean_words": mean_words([it.baseline for it in items])},
        "length_controlled_win_rate": logistic_length_fit([d for d, _ in decided], [y for _, y in decided]),
        "length_controlled": {"tolerance": length_tolerance, "pairs": len(similar),
                              **tally([o for pair in similar for o in pair])},
        "by_category": {cat: tally(outs) for cat, outs in sorted(by_cat.items())},
        "template": template.name,
        "unparseable_examples": [r[:200] for r in bad[:3]],
        "error_kinds": dict(getattr(backend, "errors", {}) or {}),
        RAW_KEY: raw,
    }


def _similar_length(a: str, b: str, tolerance: float) -> bool:
    la, lb = word_count(a), word_count(b)
    return abs(la - lb) <= tolerance * max(la, lb, 1)


def judge_from_config(cfg: object, local_judge: Policy | None = None) -> JudgeBackend | None:
    """The judge a config asks for: None for kind 'none', or 'local' without a judge policy passed in."""
    if cfg.kind == "openai":
        return OpenAIJudge.from_config(cfg)
    if cfg.kind == "local" and local_judge is not None:
        return LocalJudge(local_judge)
    return None
