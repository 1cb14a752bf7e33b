"""Multi-process contract: ranks evaluate slices of the population and apply the same update.

No weights or noise cross processes: every rank regenerates the noise from the seed, so the update of a rank
that saw only the all-gathered fitnesses equals the single-process update. ``eggroll_rl.distributed`` shards
the population and all-gathers the fitnesses (gloo on CPU, NCCL on GPUs); the last test runs two gloo ranks.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
from es_helpers import make_strategy


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


# --------------------------------------------------------------------------- torch.distributed (gloo, 2 ranks)
def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    import os

    import torch.distributed as dist

    from eggroll_rl import EggrollStrategy
    from eggroll_rl.distributed import all_gather_fitness, check_replicas_in_sync, population_slice

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    s = EggrollStrategy(rank=2, seed=42, allow_cpu=True)
    s.setup(model)
    n = 10
    x = torch.randn(n, 5, generator=torch.Generator().manual_seed(1))
    for epoch in range(3):
        members = population_slice(n)
        with s.perturb(n, epoch=epoch) as pop:
            local = -pop.batched_forward(model, x[members], member_ids=members).pow(2).sum(1)
        s.step(all_gather_fitness(local, n))
    assert check_replicas_in_sync(model)
    torch.save([p.detach() for p in model.parameters()], f"{out_dir}/rank{rank}.pt")
    # Both ranks leave together, as the trainer does: a rank that tears its gloo pairs down while the other still
    # holds them can abort the other ("terminate called without an active exception", seen once on a loaded CPU).
    dist.barrier()
    dist.destroy_process_group()


def test_population_slices_cover_the_population():
    from eggroll_rl.distributed import population_slice

    slices = [population_slice(10, rank=r, world_size=3).tolist() for r in range(3)]
    assert slices == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert population_slice(4).tolist() == [0, 1, 2, 3]  # no process group: everything


def test_gloo_ranks_match_a_single_process_run(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    s = make_strategy(torch.device("cpu"), rank=2)
    s.setup(model)
    x = torch.randn(10, 5, generator=torch.Generator().manual_seed(1))
    for epoch in range(3):
        with s.perturb(10, epoch=epoch) as pop:
            f = -pop.batched_forward(model, x).pow(2).sum(1)
        s.step(f)
    for r in range(2):
        for a, b in zip(model.parameters(), torch.load(tmp_path / f"rank{r}.pt")):
            torch.testing.assert_close(a.detach(), b, rtol=1e-6, atol=1e-7)
