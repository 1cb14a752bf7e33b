"""Population sharding over ``torch.distributed`` (launched by ``torchrun``).

Each rank holds a full replica of the model and the strategy, evaluates a contiguous slice of the population,
and all-gathers the fitnesses (``N`` scalars). Every rank then calls ``strategy.step`` on the same fitnesses and,
because the noise is regenerated from the seed, applies the same update: no weights or noise cross the network.
NCCL on GPUs, gloo for CPU tests.

Usage (one process per GPU, ``torchrun --nproc_per_node=G script.py``)::

    dist.init_process_group("nccl")
    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    members = population_slice(N)                       # this rank's member ids
    with strategy.perturb(N, epoch) as pop:
        local = evaluate(pop, members)                  # (len(members),) fitness of this rank's members
    strategy.step(all_gather_fitness(local, N))         # identical on every rank
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["population_slice", "all_gather_fitness", "check_replicas_in_sync"]


def _world(group) -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(group), dist.get_world_size(group)
    return 0, 1


def _bounds(population_size: int, rank: int, world_size: int) -> tuple[int, int]:
    base, extra = divmod(population_size, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def population_slice(
    population_size: int,
    rank: int | None = None,
    world_size: int | None = None,
    device: torch.device | str | None = None,
    group=None,
) -> torch.Tensor:
    """Member ids ``(n_rank,)`` evaluated by ``rank``: contiguous, as even as possible (sizes differ by <= 1).

    Without an initialized process group (and no ``rank``/``world_size`` given) the whole population.
    """
    if population_size < 1:
        raise ValueError(f"population_size must be >= 1, got {population_size}")
    r, w = _world(group)
    rank = r if rank is None else rank
    world_size = w if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
    lo, hi = _bounds(population_size, rank, world_size)
    return torch.arange(lo, hi, device=device)


def all_gather_fitness(local_fitness: torch.Tensor, population_size: int, group=None) -> torch.Tensor:
    """Concatenate every rank's fitness slice (ordered by member id): ``(population_size,)`` float32.

    Args:
        local_fitness: ``(n_rank,)`` fitness of this rank's ``population_slice``.
    """
    rank, world_size = _world(group)
    lo, hi = _bounds(population_size, rank, world_size)
    local = torch.as_tensor(local_fitness).to(torch.float32).reshape(-1)
    if local.numel() != hi - lo:
        raise ValueError(
            f"local_fitness has {local.numel()} values but rank {rank} of {world_size} owns members [{lo}, {hi})"
        )
    if world_size == 1:
        return local
    width = -(-population_size // world_size)  # ceil: every rank sends the same size, padded
    padded = torch.zeros(width, dtype=torch.float32, device=local.device)
    padded[: local.numel()] = local
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded, group=group)
    sizes = [hi - lo for lo, hi in (_bounds(population_size, r, world_size) for r in range(world_size))]
    return torch.cat([g[:size] for g, size in zip(gathered, sizes)])


def check_replicas_in_sync(module: torch.nn.Module, group=None) -> bool:
    """True when every rank holds bit-identical parameters (compares a float64 checksum of each parameter)."""
    rank, world_size = _world(group)
    if world_size == 1:
        return True
    sums = torch.stack([p.detach().double().sum() for p in module.parameters()])
    lo, hi = sums.clone(), sums.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=group)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=group)
    return bool(torch.equal(lo, hi))
