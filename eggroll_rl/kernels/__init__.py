"""Kernels and their dispatcher.

Callers use the four functions below; they run the Triton kernels for CUDA tensors (when Triton imports) and the
pure-torch twins of ``reference.py`` elsewhere. Set ``EGGROLL_DISABLE_TRITON=1`` to force the twins everywhere
(for debugging or comparison).
"""

from __future__ import annotations

import os
import warnings

import torch

from .reference import (
    lowrank_update_reference,
    perturbed_linear_reference,
    vector_update_reference,
)

__all__ = ["perturbed_linear", "lowrank_update", "lowrank_apply", "vector_update", "triton_available", "use_triton"]

_TRITON_IMPORT_ERROR: Exception | None = None
try:  # Triton is optional: CPU installs and CI may not have it.
    from . import triton_ops as _triton_ops
except Exception as exc:  # noqa: BLE001 - any import failure means "use the twins"
    _triton_ops = None
    _TRITON_IMPORT_ERROR = exc

_warned = False


def triton_available() -> bool:
    """True when the Triton kernels imported."""
    return _triton_ops is not None


def use_triton(device: torch.device) -> bool:
    """Whether calls on ``device`` go to the Triton kernels."""
    global _warned
    if device.type != "cuda" or os.environ.get("EGGROLL_DISABLE_TRITON", "0") not in ("", "0"):
        return False
    if _triton_ops is None:
        if not _warned:
            warnings.warn(
                f"Triton kernels unavailable ({_TRITON_IMPORT_ERROR!r}); using the slower pure-torch path on CUDA.",
                stacklevel=3,
            )
            _warned = True
        return False
    return True


def perturbed_linear(x, weight, bias, member_ids, **kw) -> torch.Tensor:
    """Perturbed linear forward for all rows and members; see ``reference.perturbed_linear_reference``."""
    if use_triton(x.device):
        return _triton_ops.perturbed_linear_triton(x, weight, bias, member_ids, **kw)
    return perturbed_linear_reference(x, weight, bias, member_ids, **kw)


def lowrank_update(**kw) -> torch.Tensor:
    """``sum_j w_j A_j B_j^T``; see ``reference.lowrank_update_reference``."""
    if use_triton(kw["weights"].device):
        return _triton_ops.lowrank_update_triton(**kw)
    return lowrank_update_reference(**kw)


def lowrank_apply(param: torch.Tensor, alpha: float, **kw) -> torch.Tensor:
    """``param += alpha * sum_j w_j A_j B_j^T`` in place; returns ``||sum_j w_j A_j B_j^T||_F^2`` (0-d float32).

    On CUDA the sum goes straight into ``param`` (one GEMM over the regenerated factors, no ``(m, n)`` float32
    buffer); elsewhere the twin builds it. ``kw`` are ``lowrank_update``'s arguments.
    """
    if use_triton(kw["weights"].device):
        return _triton_ops.lowrank_apply_triton(param, alpha, **kw)
    G = lowrank_update_reference(**kw)
    param.add_(G.to(param.dtype), alpha=alpha)
    return G.square().sum()


def vector_update(**kw) -> torch.Tensor:
    """``sum_j w_j eps_j``; see ``reference.vector_update_reference``."""
    if use_triton(kw["weights"].device):
        return _triton_ops.vector_update_triton(**kw)
    return vector_update_reference(**kw)
