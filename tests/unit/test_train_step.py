"""The shared-prefix step against the reference step on a tiny model: same loss, KL and gradients (fp32).

Single process, no Ray, no DeepSpeed. Tolerance: 1e-5 relative (and 1e-6 absolute) on the loss, its parts and
every parameter gradient; the two layouts differ only in summation order.
"""

from __future__ import annotations

import random

import pytest
import torch

from sami_ray.sami.data import TokenizedExample
from sami_ray.sami.loss import IGNORE_INDEX
from sami_ray.train.step import PairScorer, pack_shared_prefix, sami_objective, tree_attention_mask
from tests.support.tiny_models import tiny_model

RTOL, ATOL = 1e-5, 1e-6


def _examples(vocab: int, b: int, n: int, seed: int = 0) -> list[TokenizedExample]:
    rng = random.Random(seed)
    out = []
    for _ in range(b):
        prompts = [[rng.randrange(4, vocab) for _ in range(rng.randint(9, 17))] for _ in range(n)]
        responses = [[rng.randrange(4, vocab) for _ in range(rng.randint(1, 9))] + [2] for _ in range(n)]
        out.append(TokenizedExample(prompts, responses))
    return out


@pytest.fixture(scope="module", params=["llama", "mixtral"])
def model_pair(request):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    path = tiny_model(kind=request.param)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():  # a policy that differs from the reference, so the KL term is not zero
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    policy.train()
    ref.eval()
    return policy, ref


def _run(policy, ref, impl, examples, beta, normalization="mean"):
    policy.zero_grad(set_to_none=True)
    scorer = PairScorer(policy, impl, chunk_size=7, pad_token_id=3)
    ref_scorer = PairScorer(ref, impl, chunk_size=7, pad_token_id=3)
    with torch.no_grad():
        ref_scores = ref_scorer(examples)
    out = sami_objective(scorer(examples), ref_scores, batch_size=len(examples), n=examples[0].n,
                         normalization=normalization, beta=beta)
    out.loss.backward()
    grads = {k: p.grad.detach().clone() for k, p in policy.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("normalization", ["mean", "sum"])
def test_shared_prefix_matches_reference(model_pair, normalization):
    policy, ref = model_pair
    examples = _examples(policy.config.vocab_size, b=2, n=3)
    want, want_grads = _run(policy, ref, "reference", examples, beta=0.1, normalization=normalization)
    got, got_grads = _run(policy, ref, "shared_prefix", examples, beta=0.1, normalization=normalization)
    torch.testing.assert_close(got.loss, want.loss, rtol=RTOL, atol=ATOL)
    assert got.kl == pytest.approx(want.kl, rel=RTOL, abs=ATOL) and want.kl > 0
    assert (got.row_accuracy, got.col_accuracy) == (want.row_accuracy, want.col_accuracy)
    assert got.response_tokens == want.response_tokens
    assert got.input_tokens < want.input_tokens  # no prompt repeated per pair
    assert set(got_grads) == set(want_grads) and want_grads
    for name, g in want_grads.items():
        torch.testing.assert_close(got_grads[name], g, rtol=RTOL, atol=ATOL, msg=lambda m, n=name: f"{n}: {m}")


def test_router_aux_loss_is_reported_and_differentiable(model_pair):
    policy, _ = model_pair
    if getattr(policy.config, "num_local_experts", None) is None:
        pytest.skip("dense model: no router")
    examples = _examples(policy.config.vocab_size, b=1, n=2, seed=3)
    policy.zero_grad(set_to_none=True)
    scorer = PairScorer(policy, "shared_prefix", router_logits=True, pad_token_id=3)
    out = sami_objective(scorer(examples), None, batch_size=1, n=2, router_aux_coef=0.5)
    assert out.aux_loss > 0
    out.loss.backward()
    assert policy.model.layers[0].mlp.gate.weight.grad.abs().sum() > 0


def test_packing_layout():
    ex = TokenizedExample([[10, 11, 12], [20, 21]], [[30, 31, 2], [40, 2]])
    packed = pack_shared_prefix([ex], pad_token_id=3)
    assert packed.input_ids.tolist() == [[10, 11, 12, 30, 31, 40], [20, 21, 30, 31, 40, 3]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 3], [0, 1, 2, 3, 2, 0]]
    # pair (i=0, j=1): token 40 predicted at the last prompt position, then 2 at 40's position.
    assert packed.labels[1].tolist() == [40, 2, IGNORE_INDEX]
    assert packed.gather_index[1, :2].tolist() == [2, 5]
    mask = tree_attention_mask(packed.segments, torch.float32)[0, 0] == 0
    assert mask[5].tolist() == [True, True, True, False, False, True]  # response 2 sees the prompt, not response 1
    assert mask[4].tolist() == [True, True, True, True, True, False]


def test_unknown_impl_is_refused(model_pair):
    with pytest.raises(ValueError, match="unknown step implementation"):
        PairScorer(model_pair[0], "fast")  # type: ignore[arg-type]


def test_lr_schedule_shapes():
    from sami_ray.train.optim import lr_factor

    assert [lr_factor(s, warmup_steps=2, total_steps=10, schedule="constant") for s in (0, 1, 5)] == [0.5, 1.0, 1.0]
    assert lr_factor(6, warmup_steps=2, total_steps=10, schedule="linear") == pytest.approx(0.5)
    assert lr_factor(6, warmup_steps=2, total_steps=10, schedule="cosine") == pytest.approx(0.5)
    assert lr_factor(10, warmup_steps=2, total_steps=10, schedule="cosine") == pytest.approx(0.0)


def test_ds_config_from_trainer_config():
    from sami_ray.config import TrainerConfig
    from sami_ray.train.ds_config import build_ds_config, inference_ds_config

    cfg = TrainerConfig(grad_accum=4, dtype="bfloat16", offload_params=True, offload_optimizer=True,
                        max_grad_norm=0.4)
    ds = build_ds_config(cfg, world_size=8, num_params=1000)
    assert ds["train_batch_size"] == 32 and ds["gradient_clipping"] == 0.4 and ds["bf16"]["enabled"]
    # ZeRO stage 0 in fp32: the worker clips (and so has the norm); DeepSpeed must not clip a second time, nor
    # clip at its own default (1.0) where the config says not to clip at all
    from deepspeed.runtime.config import DeepSpeedConfig

    for no_ds_clip in (TrainerConfig(zero_stage=0, max_grad_norm=0.4), TrainerConfig(max_grad_norm=None)):
        built = build_ds_config(no_ds_clip, world_size=1)
        assert built["gradient_clipping"] == 0.0
        assert DeepSpeedConfig(built).gradient_clipping == 0.0
    assert DeepSpeedConfig({"train_batch_size": 1}).gradient_clipping == 1.0  # why the key is always written
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_param_persistence_threshold"] == 0
    assert zero["offload_param"]["device"] == "cpu" and zero["offload_optimizer"]["device"] == "cpu"
    assert "offload_optimizer" not in inference_ds_config(ds)["zero_optimization"]
    big = build_ds_config(cfg, world_size=8, num_params=47_000_000_000)
    assert big["zero_optimization"]["stage3_param_persistence_threshold"] > 0


def test_data_stream_shards_are_disjoint_cover_every_example_and_are_deterministic():
    from sami_ray.train.data_stream import micro_batch_indices, owns, total_steps

    shards = {r: [pos for pos in range(10) if owns(pos, r, 2)] for r in range(2)}
    assert set(shards[0]).isdisjoint(shards[1]) and sorted(shards[0] + shards[1]) == list(range(10))
    kw = dict(shard_size=5, micro_batch=1, grad_accum=1, seed=7)
    assert total_steps(10, epochs=1.0, max_steps=None, micro_batch=1, grad_accum=1, world_size=2) == 5
    for r in range(2):  # one epoch: each rank reads every example of its shard once
        assert sorted(i for s in range(5) for i in micro_batch_indices(s, 0, r, **kw)) == list(range(5))
    # a restarted worker that resumes at step 3 reads exactly what the first one would have
    assert micro_batch_indices(3, 0, 1, **kw) == micro_batch_indices(3, 0, 1, **kw)
    assert micro_batch_indices(5, 0, 0, **kw) != [] and total_steps(10, epochs=0.1, max_steps=None, micro_batch=1,
                                                                     grad_accum=1, world_size=2) == 1
