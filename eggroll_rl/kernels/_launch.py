"""What the launchers share: the Triton import (optional), the interpreter flag, argument checks, the SM count.

Triton is optional (CPU installs may lack it): without it, ``triton`` and ``tl`` below are stand-ins that let the
op files define their kernels, and any launch raises. The twins never touch them.
"""

from __future__ import annotations

import functools
import os

import torch

from ..noise import NOISE_TYPES
from ..validation import check_choice

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
# The special-function unit's approximations (see philox.py's error budget); the interpreter has only exact math.
FAST_MATH = not INTERPRET
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class _TritonMissing:
    """Stands in for ``triton`` and ``triton.language`` when Triton does not import."""

    def __init__(self, error: Exception):
        self.error = error

    def jit(self, fn=None, **_):
        if fn is None:
            return self.jit
        return _MissingKernel(fn.__name__, self.error)

    @staticmethod
    def constexpr(value):
        return value


class _MissingKernel:
    def __init__(self, name: str, error: Exception):
        self.name, self.error = name, error

    def __getitem__(self, grid):
        raise RuntimeError(f"Triton kernel {self.name} cannot run: Triton did not import ({self.error!r})")


TRITON_IMPORT_ERROR: Exception | None = None
try:
    import triton
    import triton.language as tl
except Exception as exc:  # noqa: BLE001 - any import failure means "use the twins"
    TRITON_IMPORT_ERROR = exc
    triton = tl = _TritonMissing(exc)


@functools.lru_cache(maxsize=8)
def num_sms(device_index: int) -> int:
    if INTERPRET or not torch.cuda.is_available():
        return 4
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def as_i32(v: int) -> int:
    """uint32 value as the signed int32 with the same bits (scalar kernel arguments stay int32: one compilation)."""
    v = int(v) & 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v


def noise_code(noise: str) -> int:
    """The kernels' ``NOISE`` meta-parameter: 0 Gaussian, 1 Rademacher, 2 Gaussian-fast (``NOISE_TYPES`` order)."""
    return NOISE_TYPES.index(check_choice("noise", noise, NOISE_TYPES))


def check_ids(name: str, ids: torch.Tensor, length: int | None, device: torch.device) -> torch.Tensor:
    """``ids`` as a contiguous int64 ``(length,)`` tensor on ``device``, or a ValueError naming it."""
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.dtype.is_floating_point or ids.is_complex():
        raise ValueError(f"{name} must be a 1-D integer tensor, got {getattr(ids, 'shape', ids)!r}")
    if length is not None and ids.numel() != length:
        raise ValueError(f"{name} has {ids.numel()} entries; expected {length} (one per row of x)")
    if ids.device != device:
        raise ValueError(f"{name} is on {ids.device}; expected {device}")
    return ids.to(torch.int64).contiguous()
