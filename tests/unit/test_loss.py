import math

import pytest
import torch
import torch.nn.functional as F

from sami_ray.sami.loss import (
    IGNORE_INDEX,
    diagonal_accuracy,
    kl_to_reference,
    mi_lower_bound,
    sami_loss,
    sequence_logprobs,
    token_logprobs,
    token_logprobs_from_hidden,
)


def brute_force(lp: torch.Tensor) -> float:
    """The SAMI loss written as plain loops over queries, rows and columns."""
    lp = lp if lp.dim() == 3 else lp[None]
    total = 0.0
    b, n, _ = lp.shape
    for q in range(b):
        rows = sum(-(lp[q, i, i] - torch.logsumexp(lp[q, i, :], 0)) for i in range(n)) / n
        cols = sum(-(lp[q, j, j] - torch.logsumexp(lp[q, :, j], 0)) for j in range(n)) / n
        total += 0.5 * (rows + cols)
    return float(total / b)


@pytest.mark.parametrize("b,n", [(1, 2), (3, 2), (2, 4), (4, 7)])
def test_loss_equals_brute_force(b, n):
    g = torch.Generator().manual_seed(b * 10 + n)
    lp = -torch.rand(b, n, n, generator=g, dtype=torch.float64) * 5
    assert sami_loss(lp).item() == pytest.approx(brute_force(lp), rel=1e-10)


def test_unbatched_matrix_is_one_query():
    lp = -torch.rand(3, 3, dtype=torch.float64)
    assert sami_loss(lp).item() == pytest.approx(sami_loss(lp[None]).item())


@pytest.mark.parametrize("n", [2, 3, 8])
def test_constant_matrix_gives_log_n(n):
    lp = torch.full((2, n, n), -3.7)
    assert sami_loss(lp).item() == pytest.approx(math.log(n), rel=1e-6)
    assert mi_lower_bound(sami_loss(lp), n) == pytest.approx(0.0, abs=1e-6)


def test_loss_falls_to_zero_as_diagonal_dominates():
    n = 4
    base = -torch.rand(n, n, dtype=torch.float64)
    losses = [sami_loss(base + s * torch.eye(n, dtype=torch.float64)).item() for s in (0, 1, 4, 16, 64)]
    assert all(a > b for a, b in zip(losses, losses[1:], strict=False))
    assert losses[-1] < 1e-10
    assert diagonal_accuracy(base + 64 * torch.eye(n, dtype=torch.float64)) == (1.0, 1.0)


def test_invariant_to_permuting_constitutions_and_responses_together():
    g = torch.Generator().manual_seed(1)
    lp = -torch.rand(2, 5, 5, generator=g, dtype=torch.float64)
    perm = torch.randperm(5, generator=g)
    permuted = lp[:, perm][:, :, perm]
    assert sami_loss(permuted).item() == pytest.approx(sami_loss(lp).item(), rel=1e-12)


def test_gradcheck():
    lp = (-torch.rand(2, 3, 3, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(sami_loss, (lp,))


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError):
        sami_loss(torch.zeros(2, 3))
    with pytest.raises(ValueError):
        sami_loss(torch.zeros(1, 1))


def _plain_token_logprobs(logits, labels):
    lp = F.log_softmax(logits, dim=-1)
    out = lp.gather(-1, labels.clamp_min(0)[..., None]).squeeze(-1)
    return out.masked_fill(labels == IGNORE_INDEX, 0.0)


def test_chunked_logprobs_equal_plain_log_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 11, 50, generator=g)
    labels = torch.randint(0, 50, (3, 11), generator=g)
    labels[:, :4] = IGNORE_INDEX
    for chunk in (1, 7, 1000):
        assert torch.allclose(token_logprobs(logits, labels, chunk_size=chunk), _plain_token_logprobs(logits, labels),
                              atol=1e-6)


@pytest.mark.parametrize("chunk", [4, 64])  # several chunks, recomputed in the backward pass; one, kept
def test_logprobs_from_hidden_equal_plain_path_with_gradients(chunk):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 9, 16, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(40, 16, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 40, (2, 9), generator=g)
    labels[0, :3] = IGNORE_INDEX
    fast = token_logprobs_from_hidden(hidden, weight, labels, chunk_size=chunk)
    plain = _plain_token_logprobs(hidden @ weight.t(), labels)
    assert torch.allclose(fast, plain, atol=1e-10)
    gf = torch.autograd.grad(fast.sum(), (hidden, weight))
    gp = torch.autograd.grad(plain.sum(), (hidden, weight))
    for a, b in zip(gf, gp, strict=True):
        assert torch.allclose(a, b, atol=1e-10)


def test_sequence_logprobs_mean_and_sum():
    tok = torch.tensor([[0.0, -1.0, -2.0, 0.0]])
    labels = torch.tensor([[IGNORE_INDEX, 5, 6, IGNORE_INDEX]])
    assert sequence_logprobs(tok, labels, "sum").item() == pytest.approx(-3.0)
    assert sequence_logprobs(tok, labels, "mean").item() == pytest.approx(-1.5)


def test_kl_is_zero_for_identical_models_and_positive_otherwise():
    labels = torch.tensor([[IGNORE_INDEX, 1, 2]])
    p = torch.tensor([[0.0, -1.0, -2.0]])
    assert kl_to_reference(p, p, labels).item() == pytest.approx(0.0)
    assert kl_to_reference(p, p - 0.5, labels).item() > 0
