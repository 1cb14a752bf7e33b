"""Pure-torch twins of the Triton kernels: same signatures, same noise (``eggroll_rl.noise``), any device.

They are the reference the kernels are tested against and the path taken on the CPU. Shapes: ``R`` rows, ``n``
input features, ``m`` output features, ``r`` rank, ``J`` noise indices.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..noise import STREAM_A, STREAM_B, factor_noise, vector_noise

# Bound on the factor elements generated at once by the update (fp32 elements, ~64 MiB).
UPDATE_CHUNK_ELEMENTS = 1 << 24


def member_noise_and_sign(member_ids: torch.Tensor, antithetic: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise index ``j`` and sign ``s`` (+1/-1, float32) of each member id."""
    if antithetic:
        return member_ids // 2, 1.0 - 2.0 * (member_ids % 2).to(torch.float32)
    return member_ids, torch.ones(member_ids.shape, dtype=torch.float32, device=member_ids.device)


def perturbed_linear_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    member_ids: torch.Tensor,
    *,
    seed: int,
    weight_index: int | None,
    bias_index: int | None,
    t_eff: int,
    sigma: float,
    rank: int,
    antithetic: bool,
    noise: str = "gaussian",
    paired: bool = False,
) -> torch.Tensor:
    """``y = x W^T + b + (sigma s/sqrt(r)) (x B_j) A_j^T + sigma s eps_j`` for every row.

    Args:
        x: ``(R, n)`` inputs.
        weight: ``(m, n)``; bias: ``(m,)`` or None.
        member_ids: ``(R,)`` int64 member of each row.
        weight_index / bias_index: the parameters' indices ``k`` in the noise contract, or None when that
            parameter is not evolved (no noise added for it).
        paired: a hint that rows ``2q`` and ``2q+1`` share their noise index (the kernels then generate it once);
            the result does not depend on it.
    Returns:
        ``(R, m)`` in ``x.dtype``.
    """
    y = F.linear(x, weight, bias)
    if weight_index is None and bias_index is None:
        return y
    m, n = weight.shape
    j, s = member_noise_and_sign(member_ids, antithetic)
    uniq, inv = torch.unique(j, return_inverse=True)
    delta = torch.zeros(y.shape, dtype=torch.float32, device=y.device)
    if weight_index is not None:
        A = factor_noise(seed, weight_index, t_eff, uniq, m, rank, STREAM_A, noise, x.device)  # (U, m, r)
        B = factor_noise(seed, weight_index, t_eff, uniq, n, rank, STREAM_B, noise, x.device)  # (U, n, r)
        xb = torch.bmm(x.to(torch.float32).unsqueeze(1), B[inv]).squeeze(1)  # (R, r)
        scale = (sigma / math.sqrt(rank)) * s
        delta += torch.bmm((xb * scale[:, None]).unsqueeze(1), A[inv].transpose(1, 2)).squeeze(1)
    if bias_index is not None:
        eps = vector_noise(seed, bias_index, t_eff, uniq, m, noise, x.device)  # (U, m)
        delta += (sigma * s)[:, None] * eps[inv]
    return (y.to(torch.float32) + delta).to(y.dtype)


def _chunks(num: int, per_item: int):
    size = max(1, UPDATE_CHUNK_ELEMENTS // max(per_item, 1))
    for start in range(0, num, size):
        yield start, min(num, start + size)


def lowrank_update_reference(
    *,
    seed: int,
    param_index: int,
    t_eff: int,
    noise_ids: torch.Tensor,
    weights: torch.Tensor,
    m: int,
    n: int,
    rank: int,
    noise: str = "gaussian",
    factor_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``G = sum_j w_j A_j B_j^T`` with the factors regenerated in chunks of noise indices.

    ``factor_dtype`` (the parameter's dtype) lets the kernels use bf16 factors for bf16/fp16 parameters; the twin
    always computes in float32.

    Args:
        noise_ids: ``(J,)`` int64 noise indices; weights: ``(J,)`` float32.
    Returns:
        ``(m, n)`` float32 on ``weights.device``.
    """
    device = weights.device
    G = torch.zeros(m, n, dtype=torch.float32, device=device)
    for lo, hi in _chunks(noise_ids.numel(), rank * (m + n)):
        ids = noise_ids[lo:hi]
        A = factor_noise(seed, param_index, t_eff, ids, m, rank, STREAM_A, noise, device)  # (c, m, r)
        B = factor_noise(seed, param_index, t_eff, ids, n, rank, STREAM_B, noise, device)  # (c, n, r)
        A = A * weights[lo:hi].to(torch.float32).view(-1, 1, 1)
        # Stack the chunk's factors along one (c*r) axis: one GEMM.
        A_stack = A.permute(1, 0, 2).reshape(m, -1)
        B_stack = B.permute(1, 0, 2).reshape(n, -1)
        G.addmm_(A_stack, B_stack.T)
    return G


def vector_update_reference(
    *,
    seed: int,
    param_index: int,
    t_eff: int,
    noise_ids: torch.Tensor,
    weights: torch.Tensor,
    numel: int,
    noise: str = "gaussian",
) -> torch.Tensor:
    """``g = sum_j w_j eps_j`` for a non-matrix parameter, flattened: ``(numel,)`` float32."""
    device = weights.device
    g = torch.zeros(numel, dtype=torch.float32, device=device)
    for lo, hi in _chunks(noise_ids.numel(), numel):
        eps = vector_noise(seed, param_index, t_eff, noise_ids[lo:hi], numel, noise, device)  # (c, numel)
        g.add_(weights[lo:hi].to(torch.float32) @ eps)
    return g
