"""Fitness shaping: small pure functions ``(N,) float32 -> (N,) float32``. Higher fitness is better."""

from __future__ import annotations

import torch

from .choices import FitnessShaping, options
from .validation import check_choice

__all__ = ["SHAPINGS", "shape_fitness", "zscore", "centered_rank", "check_fitness"]

SHAPINGS = options(FitnessShaping)
_EPS = 1e-8


def _zscore_formula(f: torch.Tensor, group_size: int, eps) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z, var)``: ``z = (f - mean) / sqrt(var + eps)``, the mean per group of ``group_size`` (0: all), the
    variance global. Members tied with their whole group get exactly 0: a float32 mean of equal values can be off
    by an ulp, and the update would then follow that rounding."""
    if group_size:
        var = f.var(unbiased=False)
        rows = f.view(-1, group_size)
        mean = rows.mean(dim=1, keepdim=True)
    else:
        var, mean = torch.var_mean(f, unbiased=False)
        rows, mean = f.view(1, -1), mean.view(1, 1)
    tied = rows.amax(dim=1, keepdim=True) == rows.amin(dim=1, keepdim=True)
    centered = torch.where(tied, torch.zeros_like(rows), rows - mean).view(-1)
    return centered / torch.sqrt(var + eps).clamp_min(torch.finfo(f.dtype).tiny), var


def _zscore(f: torch.Tensor, group_size: int = 0) -> torch.Tensor:
    z, var = _zscore_formula(f, group_size, _EPS)
    # The variance overflows float32 once |f| passes ~1e19 (then z would be 0 or NaN): take the moments of
    # f / max|f| instead, where 1e-8 becomes 1e-8 / max|f|^2. torch.where, not an if: no host sync, and a finite
    # variance keeps the plain formula bit for bit.
    scale = f.abs().amax()
    z_scaled, _ = _zscore_formula(f / scale, group_size, _EPS / scale.square())
    return torch.where(torch.isfinite(var), z, z_scaled)


def zscore(f: torch.Tensor) -> torch.Tensor:
    """``(f - mean) / sqrt(var + 1e-8)`` with the population (biased) variance, for any finite ``f``; all values
    tied give exactly 0."""
    return _zscore(f)


def centered_rank(f: torch.Tensor) -> torch.Tensor:
    """Ranks scaled to [-0.5, 0.5]: the worst member gets -0.5, the best +0.5; tied members share their average
    rank, so tied fitness gives no update direction (all tied: exactly 0)."""
    n = f.numel()
    if n == 1:
        return torch.zeros_like(f)
    sorted_f, order = f.sort(stable=True)
    _, inverse, counts = torch.unique_consecutive(sorted_f, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts  # sorted position of each distinct value's first member
    average = first.to(f.dtype) + (counts - 1).to(f.dtype) / 2  # untied: + 0, the old index rank exactly
    ranks = torch.empty_like(f)
    ranks[order] = average[inverse]
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
    check_choice("fitness_shaping", method, SHAPINGS)
    if group_size and group_size > 0:
        if f.numel() % group_size:
            raise ValueError(
                f"group_size={group_size} must divide the population size {f.numel()}; "
                "use a population that is a multiple of group_size"
            )
        groups = _grouped(f, group_size)
        if method == "zscore":
            return _zscore(f, group_size)
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
    if fitnesses.is_meta:  # no data to copy: say so, not NotImplementedError from the copy below
        raise ValueError(f"fitnesses are on the meta device (shape only, no values); expected values on {device}")
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
