"""The SAMI objective and the log-probabilities it is built from.

`logprobs[..., i, j] = log p(y_j | x, c_i)`: row i is constitution c_i, column j the response sampled under c_j.
The loss is the mean of a row-wise cross-entropy (which response was written under c_i?) and a column-wise one
(which constitution wrote y_j?) against the identity: an InfoNCE bound, I(y; c | x) >= log N - loss.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

Normalization = Literal["mean", "sum"]
IGNORE_INDEX = -100


def _as_batch(logprobs: torch.Tensor) -> torch.Tensor:
    if logprobs.dim() == 2:
        logprobs = logprobs.unsqueeze(0)
    if logprobs.dim() != 3 or logprobs.shape[-1] != logprobs.shape[-2]:
        raise ValueError(f"expected a (N, N) or (B, N, N) matrix, got shape {tuple(logprobs.shape)}")
    if logprobs.shape[-1] < 2:
        raise ValueError("SAMI needs N >= 2 constitutions")
    return logprobs


def sami_loss(logprobs: torch.Tensor) -> torch.Tensor:
    """Mean of the row- and column-wise cross-entropies against the identity, averaged over queries."""
    lp = _as_batch(logprobs)
    b, n, _ = lp.shape
    target = torch.arange(n, device=lp.device).repeat(b)
    rows = F.cross_entropy(lp.reshape(b * n, n), target)
    cols = F.cross_entropy(lp.transpose(-1, -2).reshape(b * n, n), target)
    return 0.5 * (rows + cols)


def mi_lower_bound(loss: torch.Tensor | float, n: int) -> float:
    """The InfoNCE bound on I(y; c | x) in nats; at most log N."""
    return math.log(n) - float(loss)


def diagonal_accuracy(logprobs: torch.Tensor) -> tuple[float, float]:
    """Share of rows whose largest entry is the diagonal, and the same for columns."""
    lp = _as_batch(logprobs.detach())
    n = lp.shape[-1]
    eye = torch.arange(n, device=lp.device)
    row = (lp.argmax(dim=-1) == eye).float().mean().item()
    col = (lp.argmax(dim=-2) == eye).float().mean().item()
    return row, col


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Half-precision logits are normalised in fp32; fp32 and fp64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """log p(label_t) for each position, from logits already aligned with labels (shape (..., T, V) and (..., T)).

    The log-softmax is taken over at most `chunk_size` positions at a time, so the full-vocabulary
    normaliser never exists for every position at once. Positions labelled IGNORE_INDEX give 0.
    """
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1)
    safe = flat_labels.clamp_min(0)
    pieces = []
    for start in range(0, flat_logits.shape[0], chunk_size):
        chunk = flat_logits[start:start + chunk_size]
        picked = chunk.gather(-1, safe[start:start + chunk_size, None]).squeeze(-1)
        pieces.append(_upcast(picked) - torch.logsumexp(_upcast(chunk), dim=-1))
    out = torch.cat(pieces) if pieces else flat_logits.new_zeros(0)
    out = out.masked_fill(flat_labels == IGNORE_INDEX, 0.0)
    return out.reshape(labels.shape)


def _hidden_chunk_logprobs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits = _upcast(hidden @ weight.t())
    picked = logits.gather(-1, labels.clamp_min(0)[:, None]).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def token_logprobs_from_hidden(hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor,
                               chunk_size: int = 512) -> torch.Tensor:
    """Like `token_logprobs`, but projects hidden states to the vocabulary chunk by chunk.

    With more than one chunk, each chunk's logits are recomputed in the backward pass (activation checkpointing),
    so neither the forward nor the backward ever holds (positions x vocabulary) logits for more than one chunk. Only positions with a
    label are projected at all: prompt and padding positions cost nothing.
    """
    flat_h = hidden.reshape(-1, hidden.shape[-1])
    flat_labels = labels.reshape(-1)
    keep = (flat_labels != IGNORE_INDEX).nonzero(as_tuple=True)[0]
    h, y = flat_h.index_select(0, keep), flat_labels.index_select(0, keep)
    pieces = []
    # One chunk's logits are as large as recomputing them would hold in the backward pass: only several chunks
    # are worth the recomputation.
    grads = torch.is_grad_enabled() and (h.requires_grad or lm_head_weight.requires_grad)
    recompute = grads and h.shape[0] > chunk_size
    for start in range(0, h.shape[0], chunk_size):
        args = (h[start:start + chunk_size], lm_head_weight, y[start:start + chunk_size])
        if recompute:
            pieces.append(checkpoint(_hidden_chunk_logprobs, *args, use_reentrant=False))
        else:
            pieces.append(_hidden_chunk_logprobs(*args))
    picked = torch.cat(pieces) if pieces else _upcast(flat_h.new_zeros(0))
    out = torch.zeros(flat_labels.shape, dtype=picked.dtype, device=flat_h.device)
    out = out.index_put((keep,), picked)
    return out.reshape(labels.shape)


def sequence_logprobs(token_lp: torch.Tensor, labels: torch.Tensor,
                      normalization: Normalization = "mean") -> torch.Tensor:
    """Sum of the response tokens' log-probs per sequence, divided by their count when `normalization="mean"`."""
    mask = (labels != IGNORE_INDEX).to(token_lp.dtype)
    total = (token_lp * mask).sum(dim=-1)
    if normalization == "sum":
        return total
    return total / mask.sum(dim=-1).clamp_min(1.0)


def kl_to_reference(policy_token_lp: torch.Tensor, ref_token_lp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sequence KL(policy || reference) on the response tokens, the non-negative 'k3' estimator.

    With r = log p_ref - log p_policy per token, exp(r) - r - 1 >= 0 is an unbiased, low-variance estimate of the
    KL on sampled tokens; averaged over each sequence's response tokens.
    """
    mask = (labels != IGNORE_INDEX).to(policy_token_lp.dtype)
    r = (ref_token_lp - policy_token_lp) * mask
    per_token = (torch.exp(r) - r - 1.0) * mask
    return per_token.sum(dim=-1) / mask.sum(dim=-1).clamp_min(1.0)


# ---------------------------------------------------------------- the baselines' objectives

def _dpo_logits(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
                ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor) -> torch.Tensor:
    return (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """The DPO loss, mean over pairs: -log sigmoid(beta * (chosen log-ratio - rejected log-ratio)).

    Each argument is a (pairs,) tensor of sequence log-probs summed over response tokens; a log-ratio is the
    policy's log-prob minus the frozen reference's. The reference terms carry no gradient."""
    if beta <= 0:
        raise ValueError(f"DPO needs beta > 0, got {beta}: at 0 the loss is log 2 whatever the policy does")
    logits = _dpo_logits(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps.detach(),
                         ref_rejected_logps.detach())
    return -F.logsigmoid(beta * logits).mean()


def dpo_stats(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
              ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float) -> dict[str, float]:
    """What a DPO trainer usually reports, as means over pairs: the implicit rewards beta * log-ratio of chosen and
    rejected, their margin, the share of pairs whose chosen reward is the larger (0 while the policy still equals
    the reference), and the policy's summed log-probs."""
    with torch.no_grad():
        chosen = beta * (policy_chosen_logps - ref_chosen_logps).float()
        rejected = beta * (policy_rejected_logps - ref_rejected_logps).float()
        return {"chosen_reward": float(chosen.mean()), "rejected_reward": float(rejected.mean()),
                "reward_margin": float((chosen - rejected).mean()),
                "reward_accuracy": float((chosen > rejected).float().mean()),
                "chosen_logps": float(policy_chosen_logps.float().mean()),
                "rejected_logps": float(policy_rejected_logps.float().mean())}


def sft_loss(token_logprobs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every response token of the batch (each token weighs the same, so longer responses
    weigh more), as torch's cross_entropy with ignore_index; positions labelled IGNORE_INDEX do not count."""
    mask = (labels != IGNORE_INDEX).to(token_logprobs.dtype)
    return -(token_logprobs * mask).sum() / mask.sum().clamp_min(1.0)
