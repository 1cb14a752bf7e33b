"""Multi-process contract: ranks evaluate slices of the population and apply the same update.

No weights or noise cross processes: every rank regenerates the noise from the seed, so the update of a rank
that saw only the all-gathered fitnesses equals the single-process update. The torch.distributed runner
(gloo on CPU, NCCL on GPUs) is not built yet; these tests check the contract it relies on.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from conftest import make_strategy


def _setup(device, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(device)
    s = make_strategy(device, rank=2)
    s.setup(model)
    return model, s


def test_sliced_evaluation_equals_whole_population(device):
    model, s = _setup(device)
    n, ranks = 16, 4
    x = torch.randn(n, 5, device=device)
    with s.perturb(n, epoch=2) as pop:
        whole = pop.batched_forward(model, x)
    # Each "rank" holds its own replica and evaluates members [r*4, r*4+4).
    parts = []
    for r in range(ranks):
        replica = copy.deepcopy(model)
        s_r = make_strategy(device, rank=2)
        s_r.setup(replica)
        ids = torch.arange(r * 4, r * 4 + 4, device=device)
        with s_r.perturb(n, epoch=2) as pop:
            parts.append(pop.batched_forward(replica, x[ids], member_ids=ids))
    torch.testing.assert_close(torch.cat(parts), whole)


def test_every_replica_applies_the_same_update(device):
    model, s = _setup(device)
    replicas = [copy.deepcopy(model) for _ in range(3)]
    fitness = torch.randn(12, device=device)
    with s.perturb(12, epoch=1):
        pass
    s.step(fitness)
    for replica in replicas:
        s_r = make_strategy(device, rank=2)
        s_r.setup(replica)
        with s_r.perturb(12, epoch=1):
            pass
        s_r.step(fitness.clone())
        for a, b in zip(model.parameters(), replica.parameters()):
            assert torch.equal(a, b)
