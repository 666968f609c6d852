"""The held-out MI bound: how well the policy's own log-probs tell apart answers written under different
constitutions. Uses the core SAMI loss, so the number is the one training optimises: log N - loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..sami.loss import diagonal_accuracy, mi_lower_bound, sami_loss
from .policy import Policy


def score_matrices(policy: Policy, prompts: Sequence[Sequence[str]],
                   responses: Sequence[Sequence[str]]) -> torch.Tensor:
    """(B, N, N) with [b, i, j] = mean per-token log p(response_j | prompt_i) for query b.

    All B*N*N pairs go to the policy in one `score` call (the engine batches). A response with no tokens gives NaN.
    """
    pairs_p, pairs_r = [], []
    for ps, rs in zip(prompts, responses, strict=True):
        if len(ps) != len(rs):
            raise ValueError(f"{len(ps)} prompts but {len(rs)} responses for one query")
        for p in ps:
            for r in rs:
                pairs_p.append(p)
                pairs_r.append(r)
    scored = policy.score(pairs_p, pairs_r) if pairs_p else []
    means = [sum(t) / len(t) if len(t) else math.nan for t in scored]
    n = len(prompts[0]) if prompts else 0
    return torch.tensor(means, dtype=torch.float64).reshape(len(prompts), n, n)


def bound_from_matrices(matrices: torch.Tensor) -> dict:
    """log N - sami_loss and diagonal accuracies over the queries whose matrix is complete."""
    b, n = matrices.shape[0], matrices.shape[-1]
    ok = ~torch.isnan(matrices).flatten(1).any(dim=1) if b else torch.zeros(0, dtype=torch.bool)
    kept = matrices[ok]
    out = {"n": n, "log_n": math.log(n) if n else None, "queries": int(ok.sum()), "skipped_queries": b - int(ok.sum())}
    if len(kept) == 0:
        return {**out, "mi_bound": None, "loss": None, "row_accuracy": None, "col_accuracy": None}
    loss = sami_loss(kept)
    row, col = diagonal_accuracy(kept)
    return {**out, "mi_bound": mi_lower_bound(loss, n), "loss": float(loss), "row_accuracy": row, "col_accuracy": col}


def mi_bound(policy: Policy, prompts: Sequence[Sequence[str]], responses: Sequence[Sequence[str]]) -> dict:
    """`prompts[b][i]`: query b under constitution i; `responses[b][j]`: the answer sampled under constitution j."""
    return bound_from_matrices(score_matrices(policy, prompts, responses))
