"""batched_forward equals the forward of materialized perturbed weights, for every supported layer."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from es_helpers import make_strategy, materialized_forward

from eggroll_rl.kernels.linear import perturbed_linear_reference
from eggroll_rl.noise import NOISE_TYPES, STREAM_A, STREAM_B, factor_noise, vector_noise


class FreeScale(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, d))
        self.shift = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return x * self.scale + self.shift


def _models():
    return {
        "mlp": (lambda: nn.Sequential(nn.Linear(7, 9), nn.Tanh(), nn.Linear(9, 3)), (7,)),
        "norms_and_free": (
            lambda: nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.ReLU(), FreeScale(8), nn.Linear(8, 2)),
            (5,),
        ),
        "rmsnorm": (lambda: nn.Sequential(nn.Linear(4, 6), nn.RMSNorm(6), nn.Linear(6, 2)), (3, 4)),
        "conv1d": (lambda: nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Flatten()), (2, 6)),
        "conv2d": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.Flatten(), nn.Linear(16, 2)), (3, 5, 5)),
        "sequence": (lambda: nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)), (5, 4)),
    }


@pytest.mark.parametrize("name", list(_models()))
@pytest.mark.parametrize("noise", NOISE_TYPES)
def test_batched_forward_matches_materialized_weights(device, name, noise):
    build, shape = _models()[name]
    torch.manual_seed(0)
    model = build().to(device)
    s = make_strategy(device, rank=3, sigma=0.2, noise=noise)
    s.setup(model)
    n = 6
    x = torch.randn(n, *shape, device=device)
    with s.perturb(n, epoch=2) as pop:
        y = pop.batched_forward(model, x)
        ref = torch.cat([materialized_forward(model, pop, x[i : i + 1], i) for i in range(n)])
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)


def test_member_ids_select_members(device, simple_mlp):
    s = make_strategy(device, rank=2)
    s.setup(simple_mlp)
    ids = torch.tensor([3, 0, 3, 5, 1, 1, 2, 4, 5], device=device)
    x = torch.randn(9, 8, device=device)
    with s.perturb(6) as pop:
        y = pop.batched_forward(simple_mlp, x, member_ids=ids)
        for r, i in enumerate(ids.tolist()):
            torch.testing.assert_close(y[r], materialized_forward(simple_mlp, pop, x[r : r + 1], i)[0])


def test_embedding_matches_materialized(device):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(11, 4, padding_idx=0), nn.Flatten(), nn.Linear(12, 2)).to(device)
    s = make_strategy(device, rank=2)
    s.setup(model)
    x = torch.randint(1, 11, (4, 3), device=device)
    with s.perturb(4) as pop:
        y = pop.batched_forward(model, x)
        ref = torch.cat([materialized_forward(model, pop, x[i : i + 1], i) for i in range(4)])
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_linear_equals_the_explicit_formula(device):
    """y = x W^T + b + (sigma s / sqrt r)(x B_j) A_j^T + sigma s eps_j, written out from the noise functions."""
    torch.manual_seed(0)
    model = nn.Linear(10, 7).to(device)
    sigma, r, seed = 0.3, 4, 9
    s = make_strategy(device, rank=r, sigma=sigma, seed=seed)
    s.setup(model)
    x = torch.randn(8, 10, device=device)
    with s.perturb(8, epoch=5) as pop:
        y = pop.batched_forward(model, x)
    for i in range(8):
        j, sign = torch.tensor([i // 2], device=device), (1.0 if i % 2 == 0 else -1.0)
        A = factor_noise(seed, 0, 5, j, 7, r, STREAM_A)[0]
        B = factor_noise(seed, 0, 5, j, 10, r, STREAM_B)[0]
        eps = vector_noise(seed, 1, 5, j, 7)[0]
        expected = x[i] @ model.weight.T + model.bias + (sigma * sign / math.sqrt(r)) * (x[i] @ B) @ A.T
        expected = expected + sigma * sign * eps
        torch.testing.assert_close(y[i], expected, rtol=1e-5, atol=1e-5)


def test_reference_twin_agrees_with_the_strategy_path(device):
    torch.manual_seed(0)
    model = nn.Linear(9, 5).to(device)
    s = make_strategy(device, rank=2, sigma=0.1)
    s.setup(model)
    ids = torch.tensor([0, 3, 3, 1, 2, 7], device=device)
    x = torch.randn(6, 9, device=device)
    with s.perturb(8, epoch=1) as pop:
        y = pop.batched_forward(model, x, member_ids=ids)
    ref = perturbed_linear_reference(
        x, model.weight, model.bias, ids, seed=42, weight_index=0, bias_index=1, t_eff=1, sigma=0.1, rank=2,
        antithetic=True,
    )  # fmt: skip
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_iterate_rows_equal_batched_forward_rows(device, simple_mlp):
    s = make_strategy(device, rank=4)
    s.setup(simple_mlp)
    x = torch.randn(6, 8, device=device)
    original = [p.detach().clone() for p in simple_mlp.parameters()]
    with s.perturb(6) as pop:
        batched = pop.batched_forward(simple_mlp, x)
        seen = []
        for member in pop.iterate():
            seen.append(member)
            torch.testing.assert_close(simple_mlp(x[member]), batched[member], rtol=1e-5, atol=1e-5)
    assert seen == list(range(6))
    assert all(torch.equal(a, b) for a, b in zip(original, simple_mlp.parameters()))


def test_iterate_restores_parameters_after_break(device, simple_mlp):
    s = make_strategy(device)
    s.setup(simple_mlp)
    original = [p.detach().clone() for p in simple_mlp.parameters()]
    with s.perturb(4) as pop:
        for member in pop.iterate():
            if member == 1:
                break
    assert all(torch.equal(a, b) for a, b in zip(original, simple_mlp.parameters()))
