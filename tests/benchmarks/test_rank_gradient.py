"""benchmarks/rank_gradient.py: its perturbations have the noise contract's second moments, and for a linear
objective the gradient estimate's cosine with the gradient is sqrt(P / (P + d)) at every rank (P pairs, d weights;
the full-rank value, which the low-rank 4th moments change by less than the tolerance)."""

from __future__ import annotations

import math

import pytest
import torch
from bench_modules import load

rg = load("rank_gradient")


@pytest.mark.parametrize("rank", [1, 4, 0])
def test_perturbations_have_unit_variance_and_come_in_antithetic_pairs(rank):
    eps = rg.perturbations(2000, (6, 5), rank, torch.Generator().manual_seed(1))
    assert eps.shape == (4000, 6, 5)
    assert torch.equal(eps[:2000], -eps[2000:])
    assert abs(float(eps.pow(2).mean()) - 1.0) < 0.03


def test_centered_rank_maps_to_evenly_spaced_values_in_order():
    f = torch.tensor([3.0, -1.0, 10.0, 0.5])
    assert [round(v, 6) for v in rg.centered_rank(f).tolist()] == [round(v, 6) for v in (1 / 6, -0.5, 0.5, -1 / 6)]


@pytest.mark.parametrize("rank", [1, 4, 0])
def test_linear_objective_cosine_matches_the_explicit_value(rank):
    population = 512
    d = sum(m * n for m, n in rg.SHAPES)
    expected = math.sqrt(population / 2 / (population / 2 + d))
    got = sum(rg.cosine(population, rank, "raw", seed) for seed in range(4)) / 4
    assert abs(got - expected) < 0.03, (got, expected)
