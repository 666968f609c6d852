"""Answer length in win rates: mean words of both sides and a length-controlled win rate.

A judge that likes long answers rewards a model for rambling. In the spirit of AlpacaEval 2's length-controlled
win rate, the judge's preference for the candidate is fitted as a logistic function of the pair's normalised
length difference, p = sigmoid(a + b * tanh(d / sd(d))) with d = candidate words - baseline words, and the
length-controlled win rate is the fitted preference at zero length difference, sigmoid(a). (AlpacaEval also fits a
per-instruction term; with a handful of verdicts per query that term cannot be estimated, so it is left out.)
A tie counts as half a win in the fit as in the raw rate. The fit is a few Newton steps in numpy: scikit-learn
is not a dependency of this project (and not in its environment), and nothing more is needed for two parameters.
A small L2 penalty on the slope alone (a weak prior, not scaled with the data) keeps the fit finite when length
separates wins from losses perfectly; the intercept, the quantity reported, is not shrunk.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .text import word_count

SLOPE_PENALTY = 0.01  # in total, not per verdict: finite under perfect separation, negligible beside real evidence


def mean_words(texts: Sequence[str]) -> float | None:
    return sum(word_count(t) for t in texts) / len(texts) if texts else None


def logistic_length_fit(length_diffs: Sequence[float], scores: Sequence[float], steps: int = 100) -> dict:
    """{win_rate, intercept, slope, scale, verdicts} for verdict scores (1 win, 0.5 tie, 0 loss) against each
    verdict's length difference (candidate minus baseline words); win_rate None without verdicts."""
    d = np.asarray(length_diffs, dtype=float)
    y = np.asarray(scores, dtype=float)
    if d.size == 0:
        return {"win_rate": None, "intercept": None, "slope": None, "scale": None, "verdicts": 0}
    scale = float(d.std())
    x = np.tanh(d / scale) if scale > 0 else np.zeros_like(d)
    features = np.stack([np.ones_like(x), x], axis=1)
    penalty = np.diag([0.0, SLOPE_PENALTY])
    theta = np.zeros(2)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(features @ theta, -500, 500)))
        grad = features.T @ (p - y) + penalty @ theta
        hess = features.T @ (features * (p * (1 - p))[:, None]) + penalty + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.max(np.abs(step)) < 1e-9:
            break
    a, b = (float(v) for v in theta)
    return {"win_rate": 1.0 / (1.0 + math.exp(-a)) if abs(a) < 700 else float(a > 0),
            "intercept": a, "slope": b, "scale": scale, "verdicts": int(y.size)}
