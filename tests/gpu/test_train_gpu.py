"""The SAMI step on CUDA in bf16: shared-prefix against reference, and its speed and memory advantage.

Skipped without a CUDA GPU (tests/conftest.py). bf16 tolerance: the two layouts sum in different orders, so
losses agree to 2e-2 and gradients point the same way (cosine > 0.99) rather than match bit for bit.
"""

from __future__ import annotations

import random
import time

import pytest
import torch

from sami_ray.sami.data import TokenizedExample
from sami_ray.train.step import PairScorer, sami_objective

pytestmark = pytest.mark.gpu


def _model(vocab: int = 32000, hidden: int = 512):
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    cfg = MixtralConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2,
                        num_attention_heads=hidden // 64, num_key_value_heads=hidden // 128, num_local_experts=4,
                        num_experts_per_tok=2, max_position_embeddings=2048, tie_word_embeddings=False)
    return MixtralForCausalLM(cfg).to("cuda", torch.bfloat16).train()


def _batch(vocab: int, n: int = 4, prompt: int = 300, response: int = 80) -> list[TokenizedExample]:
    rng = random.Random(0)
    return [TokenizedExample([[rng.randrange(4, vocab) for _ in range(prompt + rng.randint(-15, 15))] for _ in range(n)],
                             [[rng.randrange(4, vocab) for _ in range(response + rng.randint(-15, 15))]
                              for _ in range(n)])]


def _step(model, impl, batch):
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    out = sami_objective(PairScorer(model, impl)(batch), None, batch_size=1, n=batch[0].n)
    out.loss.backward()
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
    return out, grads, elapsed, torch.cuda.max_memory_allocated() - base


def test_shared_prefix_matches_reference_in_bf16_and_is_cheaper():
    model = _model()
    batch = _batch(model.config.vocab_size)
    _step(model, "reference", batch)  # warm-up (kernels, allocator)
    _step(model, "shared_prefix", batch)
    ref, g_ref, t_ref, m_ref = _step(model, "reference", batch)
    fast, g_fast, t_fast, m_fast = _step(model, "shared_prefix", batch)
    assert abs(float(fast.loss) - float(ref.loss)) < 2e-2
    assert torch.isfinite(g_fast).all()
    assert torch.nn.functional.cosine_similarity(g_fast, g_ref, dim=0) > 0.99
    print(f"\nCUDA bf16 step: reference {t_ref:.4f} s, {m_ref / 2**20:.0f} MiB; shared_prefix {t_fast:.4f} s, "
          f"{m_fast / 2**20:.0f} MiB; speed-up {t_ref / t_fast:.2f}x, memory ratio {m_fast / m_ref:.3f}x")
    assert m_fast < m_ref  # memory is deterministic; timings are printed, not asserted
