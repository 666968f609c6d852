"""Scoring every (constitution i, response j) pair of a micro-batch, and the SAMI objective built on it.

Two layouts give the same numbers:

- `reference`: one sequence per pair, `prompt_i + response_j`, all padded to the longest; the model's full
  logits and a log-softmax over them (the straightforward way; kept to test the fast one against).
- `shared_prefix` (default): one packed row per (query, constitution i): `prompt_i` followed by all N responses.
  A tree-shaped attention mask lets each response see the prompt and its own earlier tokens only, with position
  ids restarting after the prompt, so every response is scored exactly as if it followed the prompt alone. The
  prompt is run once per row and its keys/values feed the N responses inside the same forward (a KV cache with
  gradients flowing through it, and one that HF's activation checkpointing does not throw away, unlike
  `past_key_values`). No pair repeats the prompt, padding is only the small length difference between rows, and
  log-probs come from hidden states chunk by chunk, so the (positions x vocabulary) logits never exist at once.

Both return per-pair token log-probs in the same (pairs, T) layout, pairs ordered (b, i, j) like `collate_pairs`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import nn

from ..sami.data import TokenizedExample, collate_pairs
from ..sami.loss import (
    IGNORE_INDEX,
    diagonal_accuracy,
    dpo_loss,
    dpo_stats,
    kl_to_reference,
    sami_loss,
    sequence_logprobs,
    sft_loss,
    token_logprobs,
    token_logprobs_from_hidden,
)
from ..sami.pairs import TokenizedPair

StepImpl = Literal["shared_prefix", "reference"]

# Segment ids in a packed row.
PAD_SEGMENT = -1
PROMPT_SEGMENT = 0


@dataclass
class PackedPairs:
    """B*N packed rows `prompt_i + response_1[:-1] + ... + response_N[:-1]` and where each pair's tokens live.

    A response's last token is only ever predicted, never an input, so it is left out of the row.
    """

    input_ids: torch.Tensor  # (rows, L)
    position_ids: torch.Tensor  # (rows, L)
    segments: torch.Tensor  # (rows, L): PAD_SEGMENT, PROMPT_SEGMENT, or j+1 for response j
    gather_index: torch.Tensor  # (pairs, T): flat index into rows*L of the position that predicts each token
    labels: torch.Tensor  # (pairs, T): the predicted token, IGNORE_INDEX past a response's end
    batch_size: int
    n: int

    def to(self, device: torch.device) -> PackedPairs:
        return PackedPairs(self.input_ids.to(device), self.position_ids.to(device), self.segments.to(device),
                           self.gather_index.to(device), self.labels.to(device), self.batch_size, self.n)


def pack_shared_prefix(examples: Sequence[TokenizedExample], pad_token_id: int) -> PackedPairs:
    if not examples:
        raise ValueError("cannot pack an empty batch")
    n = examples[0].n
    if any(e.n != n for e in examples):
        raise ValueError("all examples of a batch need the same N")
    rows: list[tuple[list[int], list[int], list[int]]] = []  # ids, positions, segments
    pair_sources: list[list[tuple[int, int]]] = []  # per pair: (row, position) per predicted token
    pair_labels: list[list[int]] = []
    for ex in examples:
        if any(len(r) == 0 for r in ex.response_ids) or any(len(p) == 0 for p in ex.prompt_ids):
            raise ValueError("every prompt and response needs at least one token")
        for i in range(n):
            prompt = ex.prompt_ids[i]
            ids, pos, seg = list(prompt), list(range(len(prompt))), [PROMPT_SEGMENT] * len(prompt)
            starts = []
            for j in range(n):
                resp = ex.response_ids[j]
                starts.append(len(ids))
                ids += resp[:-1]
                pos += range(len(prompt), len(prompt) + len(resp) - 1)
                seg += [j + 1] * (len(resp) - 1)
            row = len(rows)
            rows.append((ids, pos, seg))
            for j in range(n):
                resp = ex.response_ids[j]
                # token t of response j is predicted at the last prompt position (t = 0) or at its token t-1.
                pair_sources.append([(row, len(prompt) - 1)] + [(row, starts[j] + t - 1) for t in range(1, len(resp))])
                pair_labels.append(list(resp))
    length = max(len(r[0]) for r in rows)
    r_count = len(rows)
    input_ids = torch.full((r_count, length), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((r_count, length), dtype=torch.long)
    segments = torch.full((r_count, length), PAD_SEGMENT, dtype=torch.long)
    for k, (ids, pos, seg) in enumerate(rows):
        input_ids[k, :len(ids)] = torch.tensor(ids)
        position_ids[k, :len(pos)] = torch.tensor(pos)
        segments[k, :len(seg)] = torch.tensor(seg)
    width = max(len(lab) for lab in pair_labels)
    gather_index = torch.zeros((len(pair_labels), width), dtype=torch.long)
    labels = torch.full((len(pair_labels), width), IGNORE_INDEX, dtype=torch.long)
    for k, (src, lab) in enumerate(zip(pair_sources, pair_labels, strict=True)):
        gather_index[k, :len(src)] = torch.tensor([row * length + p for row, p in src])
        labels[k, :len(lab)] = torch.tensor(lab)
    return PackedPairs(input_ids, position_ids, segments, gather_index, labels, len(examples), n)


def tree_attention_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive (rows, 1, L, L) mask: the prompt is causal, each response sees the whole prompt and its own past.

    Padding positions see only themselves, so no softmax row is empty (their outputs are never read).
    """
    length = segments.shape[-1]
    idx = torch.arange(length, device=segments.device)
    causal = idx[None, :, None] >= idx[None, None, :]  # query a (dim 1) may see key b (dim 2) when b <= a
    q, k = segments[:, :, None], segments[:, None, :]
    sees_prompt = (k == PROMPT_SEGMENT) & ((q > PROMPT_SEGMENT) | ((q == PROMPT_SEGMENT) & causal))
    same_response = (q > PROMPT_SEGMENT) & (k == q) & causal
    itself = torch.eye(length, dtype=torch.bool, device=segments.device)[None]
    allowed = sees_prompt | same_response | itself
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


class PairScores(NamedTuple):
    """A named tuple, not a dataclass: ZeRO-3 hooks the backward pass of a module only through tensors it finds
    in the module's output (tuples, lists, dicts), and the LM head weight must be gathered there again."""

    token_logprobs: torch.Tensor  # (pairs, T), 0 where labels are IGNORE_INDEX
    labels: torch.Tensor  # (pairs, T)
    aux_loss: torch.Tensor | None  # router load-balancing loss (MoE models), else None
    input_tokens: int  # tokens the model ran on, padding included (for throughput)


def _is_moe(model: nn.Module) -> bool:
    return getattr(model.config, "num_local_experts", None) is not None


def _load_balancing(model: nn.Module, router_logits: tuple[torch.Tensor, ...] | None,
                    mask: torch.Tensor) -> torch.Tensor | None:
    """The model family's own load-balancing loss over the real (non-padding) tokens."""
    fn = getattr(sys.modules[type(model).__module__], "load_balancing_loss_func", None)
    if fn is None or not router_logits:
        return None
    cfg = model.config
    return fn(router_logits, cfg.num_local_experts, cfg.num_experts_per_tok, mask)


class PairScorer(nn.Module):
    """Wraps a causal LM; `forward(examples)` scores every pair of every example. DeepSpeed wraps this module.

    The shared-prefix path projects hidden states with the LM head's weight outside the head's own forward; under
    ZeRO-3 that weight is registered as an external parameter so DeepSpeed gathers it for this module.
    """

    def __init__(self, model: nn.Module, impl: StepImpl = "shared_prefix", chunk_size: int = 512,
                 pad_token_id: int = 0, router_logits: bool = False) -> None:
        super().__init__()
        if impl not in ("shared_prefix", "reference"):
            raise ValueError(f"unknown step implementation {impl!r}")
        self.model = model
        self.impl = impl
        self.chunk_size = chunk_size
        self.pad_token_id = pad_token_id
        self.router_logits = router_logits and _is_moe(model)

    def register_for_zero3(self) -> None:
        import deepspeed

        deepspeed.zero.register_external_parameter(self, self.model.get_output_embeddings().weight)

    def _device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def _dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def forward(self, examples: Sequence[TokenizedExample]) -> PairScores:
        if self.impl == "reference":
            return self._reference(examples)
        return self._shared_prefix(examples)

    def _reference(self, examples: Sequence[TokenizedExample]) -> PairScores:
        batch = collate_pairs(examples, self.pad_token_id)
        return self._score_padded(batch.input_ids, batch.attention_mask, batch.labels)

    def _shared_prefix(self, examples: Sequence[TokenizedExample]) -> PairScores:
        return self._score_packed(pack_shared_prefix(examples, self.pad_token_id))

    def _score_padded(self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> PairScores:
        """One padded sequence per scored row: the model's full logits and a log-softmax over them."""
        dev = self._device()
        extra = {"output_router_logits": True} if self.router_logits else {}
        out = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), use_cache=False, **extra)
        labels = labels.to(dev)
        aux = getattr(out, "aux_loss", None) if self.router_logits else None
        return PairScores(token_logprobs(out.logits, labels), labels, aux, ids.numel())

    def _score_packed(self, packed: PackedPairs) -> PairScores:
        """Packed rows under the tree mask; log-probs from the hidden states of the predicting positions only."""
        packed = packed.to(self._device())
        mask = tree_attention_mask(packed.segments, self._dtype())
        extra = {"output_router_logits": True} if self.router_logits else {}
        out = self.model.base_model(input_ids=packed.input_ids, attention_mask=mask,
                                    position_ids=packed.position_ids, use_cache=False, **extra)
        hidden = out.last_hidden_state
        flat = hidden.reshape(-1, hidden.shape[-1])
        picked = flat.index_select(0, packed.gather_index.reshape(-1)).reshape(*packed.gather_index.shape, -1)
        weight = self.model.get_output_embeddings().weight
        lp = token_logprobs_from_hidden(picked, weight, packed.labels, chunk_size=self.chunk_size)
        aux = None
        if self.router_logits:
            aux = _load_balancing(self.model, getattr(out, "router_logits", None),
                                  (packed.segments != PAD_SEGMENT).to(hidden.dtype))
        return PairScores(lp, packed.labels, aux, packed.input_ids.numel())


@dataclass
class StepOutput:
    loss: torch.Tensor  # what backward runs on
    sami_loss: float
    kl: float
    aux_loss: float
    row_accuracy: float
    col_accuracy: float
    response_tokens: int
    input_tokens: int
    n: int


def sami_objective(scores: PairScores, ref_scores: PairScores | None, *, batch_size: int, n: int,
                   normalization: str = "mean", beta: float = 0.0, router_aux_coef: float = 0.0) -> StepOutput:
    """SAMI loss on the (B, N, N) matrix, plus beta * KL to the reference and the router loss when asked."""
    seq = sequence_logprobs(scores.token_logprobs, scores.labels, normalization)  # type: ignore[arg-type]
    matrix = seq.reshape(batch_size, n, n)
    core = sami_loss(matrix)
    loss = core
    kl_value = 0.0
    if ref_scores is not None:
        kl = kl_to_reference(scores.token_logprobs, ref_scores.token_logprobs.detach(), scores.labels).mean()
        kl_value = float(kl.detach())
        if beta > 0:
            loss = loss + beta * kl
    aux_value = 0.0
    if scores.aux_loss is not None and torch.is_tensor(scores.aux_loss):
        aux_value = float(scores.aux_loss.detach())
        if router_aux_coef > 0:
            loss = loss + router_aux_coef * scores.aux_loss.to(loss.dtype)
    row, col = diagonal_accuracy(matrix)
    return StepOutput(loss, float(core.detach()), kl_value, aux_value, row, col,
                      int((scores.labels != IGNORE_INDEX).sum()), scores.input_tokens, n)


# ---------------------------------------------------------------- one prompt, k responses (the baselines)
#
# DPO scores a chosen and a rejected response after one prompt, SFT one response: the same shared-prefix packing
# with one prompt per row. The prompt runs once and the responses follow it under the tree mask, so chosen and
# rejected are scored in one forward. Rows are ordered (item, response), chosen first.

def pack_prompt_responses(items: Sequence[TokenizedPair], pad_token_id: int) -> PackedPairs:
    """One packed row per item, `prompt + response_1[:-1] + ... + response_k[:-1]`; `n` is k (the same for all)."""
    if not items:
        raise ValueError("cannot pack an empty batch")
    k = len(items[0].responses)
    if any(len(it.responses) != k for it in items):
        raise ValueError("all items of a batch need the same number of responses")
    rows: list[tuple[list[int], list[int], list[int]]] = []
    pair_sources: list[list[int]] = []  # per response: positions in its row that predict its tokens
    pair_labels: list[list[int]] = []
    for it in items:
        prompt, responses = it.prompt_ids, it.responses
        if not prompt or any(len(r) == 0 for r in responses):
            raise ValueError("every prompt and response needs at least one token")
        ids, pos, seg = list(prompt), list(range(len(prompt))), [PROMPT_SEGMENT] * len(prompt)
        for j, resp in enumerate(responses):
            start = len(ids)
            ids += resp[:-1]
            pos += range(len(prompt), len(prompt) + len(resp) - 1)
            seg += [j + 1] * (len(resp) - 1)
            # as in pack_shared_prefix: token 0 is predicted at the prompt's last position, token t at token t-1
            pair_sources.append([len(prompt) - 1] + [start + t - 1 for t in range(1, len(resp))])
            pair_labels.append(list(resp))
        rows.append((ids, pos, seg))
    length = max(len(r[0]) for r in rows)
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), length), dtype=torch.long)
    segments = torch.full((len(rows), length), PAD_SEGMENT, dtype=torch.long)
    for r, (ids, pos, seg) in enumerate(rows):
        input_ids[r, :len(ids)] = torch.tensor(ids)
        position_ids[r, :len(pos)] = torch.tensor(pos)
        segments[r, :len(seg)] = torch.tensor(seg)
    width = max(len(lab) for lab in pair_labels)
    gather_index = torch.zeros((len(pair_labels), width), dtype=torch.long)
    labels = torch.full((len(pair_labels), width), IGNORE_INDEX, dtype=torch.long)
    for p, (src, lab) in enumerate(zip(pair_sources, pair_labels, strict=True)):
        row = p // k
        gather_index[p, :len(src)] = torch.tensor([row * length + s for s in src])
        labels[p, :len(lab)] = torch.tensor(lab)
    return PackedPairs(input_ids, position_ids, segments, gather_index, labels, len(items), k)


def collate_prompt_responses(items: Sequence[TokenizedPair], pad_token_id: int
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The straightforward layout: one padded `prompt + response` per (item, response); ids, mask, labels."""
    seqs, labs = [], []
    for it in items:
        for resp in it.responses:
            seqs.append(it.prompt_ids + resp)
            labs.append([IGNORE_INDEX] * (len(it.prompt_ids) - 1) + resp + [IGNORE_INDEX])
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    labels = torch.full((len(seqs), length), IGNORE_INDEX, dtype=torch.long)
    for r, (s, lab) in enumerate(zip(seqs, labs, strict=True)):
        ids[r, :len(s)] = torch.tensor(s)
        mask[r, :len(s)] = 1
        labels[r, :len(lab)] = torch.tensor(lab)
    return ids, mask, labels


class ResponseScorer(PairScorer):
    """`forward(items)` scores every response of every `TokenizedPair` after its prompt; DeepSpeed wraps this
    module as it wraps PairScorer (same ZeRO-3 registration, same router loss). PairScores rows: (item, response)."""

    def forward(self, items: Sequence[TokenizedPair]) -> PairScores:  # type: ignore[override]
        if self.impl == "reference":
            return self._reference_responses(items)
        return self._packed_responses(items)

    def _reference_responses(self, items: Sequence[TokenizedPair]) -> PairScores:
        return self._score_padded(*collate_prompt_responses(items, self.pad_token_id))

    def _packed_responses(self, items: Sequence[TokenizedPair]) -> PairScores:
        return self._score_packed(pack_prompt_responses(items, self.pad_token_id))


class ResponseLogps(NamedTuple):
    summed: torch.Tensor  # (rows, k): log p(response | prompt), summed over the response's tokens
    mean: torch.Tensor  # (rows, k): the same divided by the response's token count
    tokens: torch.Tensor  # (rows, k): response tokens


def response_logprobs(scores: PairScores, k: int) -> ResponseLogps:
    """Per-response sequence log-probs of a ResponseScorer's output, shaped (rows, k)."""
    summed = sequence_logprobs(scores.token_logprobs, scores.labels, "sum").reshape(-1, k)
    tokens = (scores.labels != IGNORE_INDEX).sum(dim=-1).reshape(-1, k)
    return ResponseLogps(summed, summed / tokens.clamp_min(1).to(summed.dtype), tokens)


def score_responses(model_or_scorer: nn.Module, items: Sequence[TokenizedPair]) -> ResponseLogps:
    """(rows, k) log-probs of each item's responses after its prompt, in one forward. Takes a ResponseScorer, a
    DeepSpeed engine around one, or a bare causal LM (wrapped in a shared-prefix ResponseScorer here)."""
    scorer = model_or_scorer
    if not isinstance(getattr(scorer, "module", scorer), PairScorer):  # a bare model (an engine has .module)
        pad = getattr(scorer.config, "pad_token_id", None)
        scorer = ResponseScorer(scorer, pad_token_id=pad if pad is not None else 0)
    return response_logprobs(scorer(items), len(items[0].responses))


def reference_logps(ref_scorer: nn.Module, items: Sequence[TokenizedPair], micro_batch: int,
                    min_batches: int = 0) -> torch.Tensor:
    """Summed log-probs (len(items), k) of every item under the frozen reference, on the CPU: computed once before
    training, then indexed per micro-batch, never recomputed per epoch.

    Under ZeRO-3 every forward is a collective, so every rank must run as many: `min_batches` pads this rank's
    count with repeats of its last batch (pass the largest count any rank needs)."""
    if not items:
        raise ValueError("no items to score")
    out = []
    batches = [items[s:s + micro_batch] for s in range(0, len(items), micro_batch)]
    with torch.no_grad():
        for b in range(max(len(batches), min_batches)):
            logps = score_responses(ref_scorer, batches[min(b, len(batches) - 1)]).summed
            if b < len(batches):
                out.append(logps.float().cpu())
    return torch.cat(out)


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # what backward runs on
    stats: dict[str, float]  # the keys of DPO_STAT_KEYS / SFT_STAT_KEYS
    response_tokens: int
    input_tokens: int


DPO_STAT_KEYS = ("loss", "dpo_loss", "aux_loss", "chosen_reward", "rejected_reward", "reward_margin",
                 "reward_accuracy", "chosen_logps", "rejected_logps")
SFT_STAT_KEYS = ("loss", "sft_loss", "aux_loss")


def _with_router_loss(core: torch.Tensor, scores: PairScores, coef: float) -> tuple[torch.Tensor, float]:
    if scores.aux_loss is None or not torch.is_tensor(scores.aux_loss):
        return core, 0.0
    value = float(scores.aux_loss.detach())
    return (core + coef * scores.aux_loss.to(core.dtype) if coef > 0 else core), value


def dpo_objective(scores: PairScores, ref_logps: torch.Tensor, *, beta: float,
                  router_aux_coef: float = 0.0) -> ObjectiveOutput:
    """DPO on a ResponseScorer's output for (chosen, rejected) items and their cached reference log-probs
    (rows, 2), from `reference_logps`."""
    policy = response_logprobs(scores, 2).summed
    ref = ref_logps.to(device=policy.device, dtype=policy.dtype)
    args = (policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1])
    core = dpo_loss(*args, beta)
    loss, aux = _with_router_loss(core, scores, router_aux_coef)
    stats = {"loss": float(loss.detach()), "dpo_loss": float(core.detach()), "aux_loss": aux,
             **dpo_stats(*args, beta)}
    return ObjectiveOutput(loss, stats, int((scores.labels != IGNORE_INDEX).sum()), scores.input_tokens)


def sft_objective(scores: PairScores, *, router_aux_coef: float = 0.0) -> ObjectiveOutput:
    """SFT on a ResponseScorer's output for one-response items: mean token cross-entropy of the responses."""
    core = sft_loss(scores.token_logprobs, scores.labels)
    loss, aux = _with_router_loss(core, scores, router_aux_coef)
    stats = {"loss": float(loss.detach()), "sft_loss": float(core.detach()), "aux_loss": aux}
    return ObjectiveOutput(loss, stats, int((scores.labels != IGNORE_INDEX).sum()), scores.input_tokens)
