"""Fitness shaping: small pure functions ``(N,) float32 -> (N,) float32``. Higher fitness is better."""

from __future__ import annotations

import torch

__all__ = ["SHAPINGS", "shape_fitness", "zscore", "centered_rank", "check_fitness"]

SHAPINGS = ("zscore", "centered_rank", "none")
_EPS = 1e-8


def zscore(f: torch.Tensor) -> torch.Tensor:
    """``(f - mean) / sqrt(var + 1e-8)`` with the population (biased) variance."""
    var, mean = torch.var_mean(f, unbiased=False)
    return (f - mean) / torch.sqrt(var + _EPS)


def centered_rank(f: torch.Tensor) -> torch.Tensor:
    """Ranks scaled to [-0.5, 0.5]: the worst member gets -0.5, the best +0.5 (ties broken by index)."""
    n = f.numel()
    if n == 1:
        return torch.zeros_like(f)
    ranks = torch.empty_like(f)
    ranks[f.argsort(stable=True)] = torch.arange(n, dtype=f.dtype, device=f.device)
    return ranks / (n - 1) - 0.5


def _grouped(f: torch.Tensor, group_size: int) -> torch.Tensor:
    return f.view(-1, group_size)


def shape_fitness(f: torch.Tensor, method: str = "zscore", group_size: int = 0) -> torch.Tensor:
    """Shape raw fitnesses ``(N,)`` into weights ``(N,)``.

    Args:
        method: ``"zscore"``, ``"centered_rank"`` or ``"none"``.
        group_size: ``G > 0`` shapes within groups of ``G`` consecutive members: ``zscore`` subtracts each
            group's mean and divides by the global std (as in the earlier port); ``centered_rank`` ranks within
            each group. ``N`` must be a multiple of ``G``.
    """
    f = f.to(torch.float32)
    if method not in SHAPINGS:
        raise ValueError(f"fitness_shaping={method!r} is not supported; expected one of {SHAPINGS}")
    if group_size and group_size > 0:
        if f.numel() % group_size:
            raise ValueError(
                f"group_size={group_size} must divide the population size {f.numel()}; "
                "use a population that is a multiple of group_size"
            )
        groups = _grouped(f, group_size)
        if method == "zscore":
            return ((groups - groups.mean(dim=1, keepdim=True)) / torch.sqrt(f.var(unbiased=False) + _EPS)).view(-1)
        if method == "centered_rank":
            return torch.stack([centered_rank(g) for g in groups]).view(-1)
        raise ValueError("group_size > 0 needs fitness_shaping 'zscore' or 'centered_rank', not 'none'")
    if method == "zscore":
        return zscore(f)
    if method == "centered_rank":
        return centered_rank(f)
    return f


def check_fitness(fitnesses, population_size: int, device: torch.device) -> torch.Tensor:
    """Validate fitnesses and return them as a ``(N,)`` float32 tensor on ``device``."""
    if isinstance(fitnesses, (list, tuple)):
        try:
            fitnesses = torch.tensor(fitnesses, dtype=torch.float32)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"fitnesses must be a sequence of numbers, got {fitnesses!r:.80}") from exc
    elif not isinstance(fitnesses, torch.Tensor):
        try:
            fitnesses = torch.as_tensor(fitnesses)
        except (TypeError, RuntimeError) as exc:
            raise TypeError(
                f"fitnesses must be a tensor of shape ({population_size},), got {type(fitnesses).__name__}"
            ) from exc
    if fitnesses.dtype == torch.bool or fitnesses.is_complex():
        raise TypeError(f"fitnesses must be real numbers (float or int tensor), got dtype {fitnesses.dtype}")
    if fitnesses.dim() != 1 or fitnesses.shape[0] != population_size:
        raise ValueError(
            f"fitnesses must have shape ({population_size},) (one value per member of the last perturb()), "
            f"got shape {tuple(fitnesses.shape)}"
        )
    f = fitnesses.detach().to(device=device, dtype=torch.float32)
    bad = ~torch.isfinite(f)
    if bad.any():
        idx = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"fitnesses must be finite; members {idx[:20]}{' ...' if len(idx) > 20 else ''} have "
            f"{[float(v) for v in f[bad][:5]]}"
        )
    return f
