"""Low-rank structure of the perturbations and the statistics of their factors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from es_helpers import make_strategy

from eggroll_rl.noise import FAST_Z_MAX, NOISE_TYPES


@pytest.mark.parametrize("rank", [1, 2, 4, 8])
def test_factors_shapes_scale_and_rank(device, rank):
    model = nn.Linear(32, 24).to(device)
    s = make_strategy(device, rank=rank, sigma=0.3)
    s.setup(model)
    with s.perturb(8) as pop:
        for member in range(8):
            A, B = pop.get_factors(member, "weight")
            assert A.shape == (24, rank) and B.shape == (32, rank)
            delta = pop.perturbation(member, "weight")
            torch.testing.assert_close(delta, A @ B.T)
            assert torch.linalg.matrix_rank(delta).item() == min(rank, 24)


def test_member_weight_is_w_plus_a_bt(device):
    model = nn.Linear(6, 5, bias=False).to(device)
    s = make_strategy(device, rank=3)
    s.setup(model)
    x = torch.randn(4, 6, device=device)
    with s.perturb(4) as pop:
        y = pop.batched_forward(model, x)
        for i in range(4):
            A, B = pop.get_factors(i, "weight")
            torch.testing.assert_close(y[i], x[i] @ (model.weight + A @ B.T).T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("noise", NOISE_TYPES)
def test_factor_statistics(device, noise):
    rank, sigma = 4, 0.5
    model = nn.Linear(64, 48).to(device)
    s = make_strategy(device, rank=rank, sigma=sigma, noise=noise, antithetic=False)
    s.setup(model)
    with s.perturb(200) as pop:
        A = torch.stack([pop.get_factors(i, "weight")[0] for i in range(200)])  # scaled by sigma/sqrt(r)
        B = torch.stack([pop.get_factors(i, "weight")[1] for i in range(200)])
        bias = torch.stack([pop.perturbation(i, "bias") for i in range(200)]) / sigma
    a = A / (sigma / math.sqrt(rank))
    for z in (a, B, bias):
        assert abs(z.mean().item()) < 0.02
        assert z.std().item() == pytest.approx(1.0, abs=0.02)
    if noise != "rademacher":
        kurt = (B**4).mean() / (B**2).mean() ** 2
        assert kurt.item() == pytest.approx(3.0, abs=0.1)
        if noise == "gaussian_fast":  # the 16-bit radius caps |z|
            assert max(a.abs().max().item(), B.abs().max().item(), bias.abs().max().item()) <= FAST_Z_MAX + 1e-5
    else:
        assert set(B.unique().tolist()) == {-1.0, 1.0}
        assert set(a.round().unique().tolist()) == {-1.0, 1.0}
    # Independence across members and between the two factors.
    corr = torch.corrcoef(torch.stack([B[:, 0, 0], B[:, 1, 0], a[:, 0, 0]]))
    assert (corr - torch.eye(3, device=corr.device)).abs().max() < 0.25


def test_conv_and_embedding_perturbations_are_low_rank(device):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Embedding(20, 10)).to(device)
    s = make_strategy(device, rank=2)
    s.setup(model)
    with s.perturb(4) as pop:
        d = pop.perturbation(1, "0.weight")
        assert d.shape == (8, 3, 3, 3)
        assert torch.linalg.matrix_rank(d.reshape(8, -1)).item() == 2
        e = pop.perturbation(1, "2.weight")
        assert e.shape == (20, 10) and torch.linalg.matrix_rank(e).item() == 2


def test_vector_parameters_are_full_rank_noise(device):
    model = nn.Linear(4, 6).to(device)
    s = make_strategy(device, sigma=0.2)
    s.setup(model)
    with s.perturb(4) as pop:
        with pytest.raises(ValueError, match="full-rank"):
            pop.get_factors(0, "bias")
        d = pop.perturbation(0, "bias")
        assert d.shape == (6,) and (d != 0).all()
