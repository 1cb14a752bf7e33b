"""Mirrored sampling: members 2j and 2j+1 share noise with opposite signs."""

from __future__ import annotations

import torch
import torch.nn as nn
from es_helpers import make_strategy


def test_pairs_are_negatives_and_pairs_differ(device, simple_mlp):
    s = make_strategy(device)
    s.setup(simple_mlp)
    with s.perturb(8) as pop:
        for spec in s.specs:
            deltas = [pop.perturbation(i, spec.name) for i in range(8)]
            for j in range(4):
                torch.testing.assert_close(deltas[2 * j], -deltas[2 * j + 1])
            for j in range(3):
                assert not torch.allclose(deltas[2 * j], deltas[2 * j + 2])


def test_without_antithetic_every_member_has_its_own_positive_noise(device, simple_mlp):
    s = make_strategy(device, antithetic=False)
    s.setup(simple_mlp)
    s_anti = make_strategy(device)
    s_anti.setup(simple_mlp)
    with s.perturb(6) as pop, s_anti.perturb(12) as pop_anti:
        for i in range(6):
            # member i without mirroring uses noise index i with sign +1: member 2i of the mirrored population.
            torch.testing.assert_close(pop.perturbation(i, "0.weight"), pop_anti.perturbation(2 * i, "0.weight"))
        assert not torch.allclose(pop.perturbation(0, "0.weight"), -pop.perturbation(1, "0.weight"))


def test_mirrored_outputs_average_to_the_mean_model_for_a_linear_layer(device):
    torch.manual_seed(0)
    model = nn.Linear(12, 5).to(device)
    s = make_strategy(device, rank=3, sigma=0.5)
    s.setup(model)
    x = torch.randn(10, 12, device=device).repeat_interleave(2, dim=0)  # rows 2j and 2j+1 share the input
    with s.perturb(20) as pop:
        y = pop.batched_forward(model, x)
    torch.testing.assert_close((y[0::2] + y[1::2]) / 2, model(x[0::2]), rtol=1e-5, atol=1e-5)


def test_symmetric_fitness_gives_a_zero_gradient(device, simple_mlp):
    s = make_strategy(device, optimizer=None, fitness_shaping="none", lr=1.0)
    s.setup(simple_mlp)
    before = [p.detach().clone() for p in simple_mlp.parameters()]
    with s.perturb(8):
        pass
    metrics = s.step(torch.tensor([3.0, 3.0, -1.0, -1.0, 0.5, 0.5, 2.0, 2.0], device=device))
    assert metrics["grad_norm"] < 1e-6
    for a, b in zip(before, simple_mlp.parameters()):
        torch.testing.assert_close(a, b.detach())
