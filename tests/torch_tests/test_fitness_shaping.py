"""Fitness shaping functions against their formulas."""

from __future__ import annotations

import pytest
import torch
from es_helpers import make_strategy

from eggroll_rl.fitness import centered_rank, shape_fitness, zscore


def test_zscore_formula():
    f = torch.tensor([1.0, 2.0, 4.0, 9.0])
    expected = (f - f.mean()) / torch.sqrt(f.var(unbiased=False) + 1e-8)
    torch.testing.assert_close(zscore(f), expected)
    assert zscore(torch.full((4,), 3.0)).abs().max() == 0


def test_centered_rank_values_and_ties():
    f = torch.tensor([10.0, -1.0, 3.0, 7.0, 0.0])
    torch.testing.assert_close(centered_rank(f), torch.tensor([0.5, -0.5, 0.0, 0.25, -0.25]))
    tied = centered_rank(torch.tensor([1.0, 1.0, 2.0]))
    torch.testing.assert_close(tied, torch.tensor([-0.25, -0.25, 0.5]))  # tied members share their average rank


def test_none_is_identity():
    f = torch.tensor([3.0, -2.0])
    torch.testing.assert_close(shape_fitness(f, "none"), f)


def test_group_size_subtracts_group_means_and_divides_by_global_std():
    f = torch.tensor([1.0, 3.0, 10.0, 14.0, -2.0, 0.0])
    z = shape_fitness(f, "zscore", group_size=2)
    std = torch.sqrt(f.var(unbiased=False) + 1e-8)
    expected = torch.tensor([-1.0, 1.0, -2.0, 2.0, -1.0, 1.0]) / std
    torch.testing.assert_close(z, expected)
    r = shape_fitness(f, "centered_rank", group_size=3)
    torch.testing.assert_close(r, torch.tensor([-0.5, 0.0, 0.5, 0.5, -0.5, 0.0]))


def test_group_size_must_divide_population():
    with pytest.raises(ValueError, match="group_size=4"):
        shape_fitness(torch.zeros(6), "zscore", group_size=4)


@pytest.mark.parametrize("shaping", ["zscore", "centered_rank"])
def test_updates_are_invariant_to_affine_rescaling_of_fitness(device, simple_mlp, shaping):
    import copy

    updates = []
    f = torch.randn(8, device=device)
    for g in (f, 3.0 * f + 7.0):
        model = copy.deepcopy(simple_mlp)
        s = make_strategy(device, fitness_shaping=shaping, optimizer=None, lr=0.1)
        s.setup(model)
        with s.perturb(8):
            pass
        s.step(g)
        updates.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(updates[0], updates[1], rtol=1e-4, atol=1e-6)
