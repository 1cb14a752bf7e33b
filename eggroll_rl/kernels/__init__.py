"""Kernels and the one dispatch point.

Callers (the strategy, on every device) use the functions below; each runs the Triton kernel for CUDA tensors (when
Triton imports) and its pure-torch twin elsewhere. Set ``EGGROLL_DISABLE_TRITON=1`` to force the twins everywhere
(for debugging or comparison).

One file per op, each holding its Triton kernel, launcher (``*_triton``) and twin (``*_reference``, same arguments):

* ``linear.py``: the perturbed linear forward (row-wise delta kernel + cuBLAS ``addmm``);
* ``update.py``: ``sum_j w_j A_j B_j^T`` (built, or added straight into a parameter) and ``sum_j w_j eps_j``;
* ``optim.py``: one-pass optimizer steps (plain ascent, Adam/AdamW) for a parameter and its ES gradient;
* ``philox.py``: the noise contract in registers (used by the other kernels) and whole streams for tests;
* ``_launch.py``: what the launchers share (Triton import, interpreter flag, argument checks).
"""

from __future__ import annotations

import contextlib
import os
import warnings

import torch

from . import linear as _linear
from . import optim as _optim
from . import update as _update
from ._launch import TRITON_IMPORT_ERROR
from .linear import NoiseSource
from .optim import AdamStep
from .rounding import round_keys, stochastic_round_reference

__all__ = [
    "perturbed_linear",
    "lowrank_update",
    "lowrank_gradient",
    "lowrank_apply",
    "vector_update",
    "lowrank_adam",
    "ascent_step",
    "adam_step",
    "AdamStep",
    "round_keys",
    "stochastic_round_reference",
    "triton_available",
    "use_triton",
]

_warned = False


def triton_available() -> bool:
    """True when Triton imported."""
    return TRITON_IMPORT_ERROR is None


def use_triton(device: torch.device) -> bool:
    """Whether calls on ``device`` go to the Triton kernels."""
    global _warned
    if device.type != "cuda" or os.environ.get("EGGROLL_DISABLE_TRITON", "0") not in ("", "0"):
        return False
    if TRITON_IMPORT_ERROR is not None:
        if not _warned:
            warnings.warn(
                f"Triton kernels unavailable ({TRITON_IMPORT_ERROR!r}); using the slower pure-torch path on CUDA.",
                stacklevel=3,
            )
            _warned = True
        return False
    return True


def _launch_device(device: torch.device) -> contextlib.AbstractContextManager:
    """``device`` made current for a launch: Triton launches on the current device's stream, not on the tensors'
    device, so a model on ``cuda:1`` used while ``cuda:0`` is current would run its kernels on GPU 0 (reading GPU 1's
    memory over the interconnect, unordered with GPU 1's stream) or fail with an opaque CUDA error. CPU tensors (the
    Triton interpreter) need nothing."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def perturbed_linear(
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
    check_paired: bool = True,
    noise_source: NoiseSource | None = None,
) -> torch.Tensor:
    """``y = x W^T + b + (sigma s/sqrt r)(x B_j) A_j^T + sigma s eps_j``, ``(R, ..., n) -> (R, ..., m)``.

    See ``linear.perturbed_linear_reference`` for the arguments; ``noise_source`` reaches only the twin
    (the kernel generates the noise in registers). Both paths check a ``paired=True`` promise (a host sync)
    unless ``check_paired=False``, and both compute in the autocast dtype under ``torch.autocast``.
    """
    kw = dict(seed=seed, weight_index=weight_index, bias_index=bias_index, t_eff=t_eff, sigma=sigma, rank=rank,
              antithetic=antithetic, noise=noise, paired=paired, check_paired=check_paired)  # fmt: skip
    if use_triton(x.device):
        with _launch_device(x.device):
            return _linear.perturbed_linear_triton(x, weight, bias, member_ids, **kw)
    return _linear.perturbed_linear_reference(x, weight, bias, member_ids, noise_source=noise_source, **kw)


def lowrank_update(
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
    """``G = sum_j w_j A_j B_j^T``, ``(m, n)`` float32; see ``update.lowrank_update_reference``."""
    kw = dict(seed=seed, param_index=param_index, t_eff=t_eff, noise_ids=noise_ids, weights=weights, m=m, n=n,
              rank=rank, noise=noise, factor_dtype=factor_dtype)  # fmt: skip
    if use_triton(weights.device):
        with _launch_device(weights.device):
            return _update.lowrank_update_triton(**kw)
    return _update.lowrank_update_reference(**kw)


def lowrank_gradient(
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
    scale: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale * G in dtype, ||G||_F^2)`` for ``G = sum_j w_j A_j B_j^T``; see ``update.lowrank_gradient_reference``.

    On CUDA with bf16 factors the norm comes from the GEMM's float32 accumulators (no pass over ``G``).
    """
    kw = dict(seed=seed, param_index=param_index, t_eff=t_eff, noise_ids=noise_ids, weights=weights, m=m, n=n,
              rank=rank, noise=noise, factor_dtype=factor_dtype, scale=scale, dtype=dtype)  # fmt: skip
    if use_triton(weights.device):
        with _launch_device(weights.device):
            return _update.lowrank_gradient_triton(**kw)
    return _update.lowrank_gradient_reference(**kw)


def lowrank_apply(
    param: torch.Tensor,
    alpha: float,
    *,
    beta: float = 1.0,
    copy: torch.Tensor | None = None,
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
    round_keys: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``param = beta * param + alpha * sum_j w_j A_j B_j^T`` in place (and ``copy``, the result rounded to its
    dtype); returns ``(||G||_F^2, ||param_new - param_old||_F^2)`` (0-d float32 each). ``round_keys``: round
    stochastically into a bf16 ``param`` (``rounding.py``) instead of to nearest.

    On CUDA the sum goes straight into ``param`` (one GEMM over the regenerated factors with the update, the copy
    and both norms in its epilogue; no ``(m, n)`` float32 buffer); elsewhere the twin builds it. The other arguments
    are ``lowrank_update``'s; see ``update.lowrank_apply_reference``.
    """
    kw = dict(seed=seed, param_index=param_index, t_eff=t_eff, noise_ids=noise_ids, weights=weights, m=m, n=n,
              rank=rank, noise=noise, factor_dtype=factor_dtype, beta=beta, copy=copy,
              round_keys=round_keys)  # fmt: skip
    if use_triton(weights.device):
        with _launch_device(weights.device):
            return _update.lowrank_apply_triton(param, alpha, **kw)
    return _update.lowrank_apply_reference(param, alpha, **kw)


def vector_update(
    *,
    seed: int,
    param_index: int,
    t_eff: int,
    noise_ids: torch.Tensor,
    weights: torch.Tensor,
    numel: int,
    noise: str = "gaussian",
) -> torch.Tensor:
    """``g = sum_j w_j eps_j``, ``(numel,)`` float32; see ``update.vector_update_reference``."""
    kw = dict(seed=seed, param_index=param_index, t_eff=t_eff, noise_ids=noise_ids, weights=weights, numel=numel,
              noise=noise)  # fmt: skip
    if use_triton(weights.device):
        with _launch_device(weights.device):
            return _update.vector_update_triton(**kw)
    return _update.vector_update_reference(**kw)


def ascent_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    *,
    alpha: float,
    beta: float = 1.0,
    scale: torch.Tensor | None = None,
    copy: torch.Tensor | None = None,
    round_keys: tuple[int, int] | None = None,
) -> torch.Tensor:
    """``param = beta * param + alpha * scale * grad`` in one pass; returns the measured ``||param change||^2``.

    See ``optim.ascent_step_reference``; the Triton kernel runs for contiguous CUDA tensors, the twin otherwise
    (always with ``round_keys``: stochastic rounding into a bf16 ``param``, used for vectors, whose pass is small).
    """
    if round_keys is not None:
        return _optim.ascent_step_reference(
            param, grad, alpha=alpha, beta=beta, scale=scale, copy=copy, round_keys=round_keys
        )
    kw = dict(alpha=alpha, beta=beta, scale=scale, copy=copy)
    if use_triton(param.device) and _optim.steppable(param, grad, copy):
        with _launch_device(param.device):
            return _optim.ascent_step_triton(param, grad, **kw)
    return _optim.ascent_step_reference(param, grad, **kw)


def adam_step(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    hyper: AdamStep,
    *,
    scale: torch.Tensor | None = None,
    copy: torch.Tensor | None = None,
) -> torch.Tensor:
    """One ``torch.optim.Adam`` (``hyper.decoupled``: AdamW) step in one pass; returns the measured
    ``||param change||^2``. See ``optim.adam_step_reference``; the Triton kernel runs for contiguous CUDA tensors,
    the twin otherwise."""
    if use_triton(param.device) and _optim.steppable(param, grad, exp_avg, exp_avg_sq, copy):
        with _launch_device(param.device):
            return _optim.adam_step_triton(param, grad, exp_avg, exp_avg_sq, hyper, scale=scale, copy=copy)
    return _optim.adam_step_reference(param, grad, exp_avg, exp_avg_sq, hyper, scale=scale, copy=copy)


def lowrank_adam(
    param: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    hyper: AdamStep,
    *,
    copy: torch.Tensor | None = None,
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """One Adam step of the ``(m, n)`` ``param`` on ``G = sum_j w_j A_j B_j^T``; returns ``(||G||_F^2,
    ||param change||^2)``. On CUDA with bf16 factors Adam runs in the GEMM's epilogue (``G`` never stored); see
    ``update.lowrank_adam_reference``."""
    kw = dict(copy=copy, seed=seed, param_index=param_index, t_eff=t_eff, noise_ids=noise_ids, weights=weights, m=m,
              n=n, rank=rank, noise=noise, factor_dtype=factor_dtype)  # fmt: skip
    if use_triton(weights.device):
        with _launch_device(weights.device):
            return _update.lowrank_adam_triton(param, exp_avg, exp_avg_sq, hyper, **kw)
    return _update.lowrank_adam_reference(param, exp_avg, exp_avg_sq, hyper, **kw)
