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

import datetime
import hashlib
import json
import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "population_slice",
    "all_gather_fitness",
    "all_reduce_sum",
    "broadcast_from_rank0",
    "check_replicas_in_sync",
    "check_same_config",
    "config_hash",
    "init_from_environment",
    "world",
]

DEFAULT_TIMEOUT_S = 600.0
"""Collective timeout of a process group made by ``init_from_environment``: longer than the longest gap between
two collectives of a generation (the first generation's compilation, rank 0's evaluation and checkpoint), so it
only ends a rank that hangs. A rank that raises ends the others sooner: its process exits and their next
collective fails (gloo) or torchrun stops them."""


def world(group=None) -> tuple[int, int]:
    """``(rank, world_size)`` of ``group``; ``(0, 1)`` without an initialized process group."""
    return _world(group)


def init_from_environment(device_type: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Join the process group that ``torchrun`` describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...).

    NCCL when ``device_type`` is ``"cuda"`` (after ``torch.cuda.set_device(LOCAL_RANK)``), gloo otherwise, with a
    finite ``timeout_s``. Returns True when this call made the group (the caller destroys it), False when one was
    already initialized or the environment names no multi-process launch (``WORLD_SIZE`` unset or 1).
    """
    if not dist.is_available() or dist.is_initialized():
        return False
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {missing} are not set: launch with torchrun "
            "(`torchrun --nproc-per-node G -m eggroll_rl.cli train ...`), which sets them"
        )
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(
        "nccl" if device_type == "cuda" else "gloo", timeout=datetime.timedelta(seconds=float(timeout_s))
    )
    return True


def config_hash(values: dict[str, Any]) -> str:
    """SHA-256 of a JSON-able dict (keys sorted): what ``check_same_config`` compares across ranks."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def check_same_config(values: dict[str, Any], group=None) -> None:
    """Raise ``ValueError`` on every rank when the ranks were started with different ``values`` (a config dict)."""
    rank, world_size = _world(group)
    if world_size == 1:
        return
    hashes: list[Any] = [None] * world_size
    dist.all_gather_object(hashes, config_hash(values), group=group)
    odd = [r for r, h in enumerate(hashes) if h != hashes[0]]
    if odd:
        everyone: list[Any] = [None] * world_size  # only now the whole configs, to name what differs
        dist.all_gather_object(everyone, values, group=group)
        fields = sorted({k for r in odd for k in everyone[0].keys() | everyone[r].keys()
                         if everyone[0].get(k) != everyone[r].get(k)})  # fmt: skip
        raise ValueError(
            f"the ranks were started with different configs: ranks {odd} differ from rank 0 in {fields} (config "
            f"hashes {sorted({h[:12] for h in hashes})}); every rank must get the same command line and config file"
        )


def all_reduce_sum(values: torch.Tensor, group=None) -> torch.Tensor:
    """The elementwise sum of ``values`` over the ranks (a new tensor; ``values`` itself without a group)."""
    _, world_size = _world(group)
    if world_size == 1:
        return values
    total = values.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
    return total


def broadcast_from_rank0(obj: Any, group=None) -> Any:
    """Rank 0's ``obj`` on every rank (pickled; for small values: decisions, a config, a checkpoint)."""
    _, world_size = _world(group)
    if world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=group)
    return box[0]


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


def check_replicas_in_sync(module: torch.nn.Module, group=None, buffers: bool = False) -> bool:
    """True when every rank holds identical parameters (compares a float64 checksum of each parameter, and of each
    floating-point buffer with ``buffers=True``, e.g. observation statistics)."""
    rank, world_size = _world(group)
    if world_size == 1:
        return True
    tensors = list(module.parameters())
    if buffers:
        tensors += [b for b in module.buffers() if b.is_floating_point()]
    sums = torch.stack([t.detach().double().sum() for t in tensors])
    lo, hi = sums.clone(), sums.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=group)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=group)
    return bool(torch.equal(lo, hi))
