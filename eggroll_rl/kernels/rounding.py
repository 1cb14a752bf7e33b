"""Stochastic rounding of float32 values into bfloat16, with the random bits from a counter-based hash.

A bf16 value is a float32 whose low 16 bits are zero. Adding 16 uniform random bits to ``x``'s float32 bits and then
dropping the low 16 bits rounds ``|x|`` up to the next bf16 value with probability equal to the dropped fraction of
a bf16 step, down otherwise, so ``E[round(x)] = x``: updates far below half a bf16 step still move a bf16 weight in
expectation, where round-to-nearest drops them every time (issue #14 §1). The carry of the addition runs into the
exponent when the mantissa overflows, which is the correct next value; infinities stay infinite.

Contract (the Triton helper and the torch twin agree bit for bit): for the element of row-major index ``i`` (uint32)
of a tensor rounded with keys ``(k0, k1)``, the random bits are ``mix32(mix32(i ^ k0) + k1) >> 16`` (uint32
arithmetic), ``mix32`` being the two-multiply integer hash with Wellons' "lowbias32" constants (a public-domain
avalanche hash: every input bit flips each output bit with probability within ~0.2 % of one half). ``round_keys``
derives the keys from the strategy's seed, its step counter and the parameter's index, so each step draws fresh bits
and a run is reproducible. This is not Philox: one Philox-10 call per element would cost about ten times the
integer work of the two hashes, which for the update's epilogue is more than the memory traffic rounding in place
saves; rounding needs bits that are uniform and independent of the value rounded, not a cryptographic stream.
"""

from __future__ import annotations

import torch

from ._launch import as_i32, tl, triton

MASK32 = 0xFFFFFFFF
_MIX_A = 0x7FEB352D
_MIX_B = 0x846CA68B
_KEY_SEED = 0x5851F42D  # separates the rounding keys from anything else derived from the same seed
_KEY_STEP = 0x9E3779B9
_KEY_PARAM = 0x85EBCA6B
ROUNDING_DTYPES = (torch.bfloat16,)

# Triton: literals in [2^31, 2^32) are typed uint32 (as in philox.py).
_TL_MIX_A = tl.constexpr(_MIX_A)
_TL_MIX_B = tl.constexpr(_MIX_B)


def mix32(x: int) -> int:
    """The hash on a Python int (uint32 in, uint32 out)."""
    x &= MASK32
    x ^= x >> 16
    x = (x * _MIX_A) & MASK32
    x ^= x >> 15
    x = (x * _MIX_B) & MASK32
    return x ^ (x >> 16)


def round_keys(seed: int, step: int, param_index: int) -> tuple[int, int]:
    """The two uint32 keys of one parameter's rounding at one step."""
    k0 = mix32(int(seed) ^ _KEY_SEED)
    k1 = mix32((int(step) * _KEY_STEP + (int(param_index) + 1) * _KEY_PARAM) & MASK32)
    return k0, k1


def kernel_keys(keys: tuple[int, int] | None) -> tuple[int, int]:
    """``keys`` as the int32 kernel arguments with the same bits ((0, 0) when rounding to nearest)."""
    return (0, 0) if keys is None else (as_i32(keys[0]), as_i32(keys[1]))


@triton.jit
def mix32_tl(x):
    """``mix32`` on a uint32 tensor."""
    x ^= x >> 16
    x *= _TL_MIX_A
    x ^= x >> 15
    x *= _TL_MIX_B
    return x ^ (x >> 16)


@triton.jit
def stochastic_round_tl(x, idx, k0, k1):
    """float32 ``x`` stochastically rounded to a bf16 value (returned as float32 with its low 16 bits zero, so the
    cast to bf16 that follows is exact); ``idx``: the elements' row-major indices; ``k0``, ``k1``: the int32 keys."""
    key0 = k0.to(tl.uint32, bitcast=True)
    key1 = k1.to(tl.uint32, bitcast=True)
    bits = mix32_tl(mix32_tl(idx.to(tl.uint32) ^ key0) + key1) >> 16
    return (((x.to(tl.uint32, bitcast=True) + bits) >> 16) << 16).to(tl.float32, bitcast=True)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2^32`` for int64 tensors holding uint32 values, without overflowing int64."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & MASK32


def _mix32_torch(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, _MIX_A)
    x = x ^ (x >> 15)
    x = _mul32(x, _MIX_B)
    return x ^ (x >> 16)


def random_bits_reference(numel: int, keys: tuple[int, int], device) -> torch.Tensor:
    """The 16 random bits (int64 values in [0, 2^16)) of elements ``0 .. numel - 1``."""
    k0, k1 = keys
    idx = torch.arange(numel, dtype=torch.int64, device=device) & MASK32
    return _mix32_torch((_mix32_torch(idx ^ k0) + k1) & MASK32) >> 16


def stochastic_round_reference(x: torch.Tensor, keys: tuple[int, int]) -> torch.Tensor:
    """Pure-torch twin: float32 ``x`` stochastically rounded to bfloat16 (same shape), element ``i`` of ``x`` in
    row-major order taking the bits of index ``i``."""
    if x.dtype != torch.float32:
        raise ValueError(f"stochastic rounding takes float32 values, got {x.dtype}")
    flat = x.contiguous().view(-1)
    bits = flat.view(torch.int32).to(torch.int64) & MASK32
    rounded = ((bits + random_bits_reference(flat.numel(), keys, x.device)) >> 16) << 16
    rounded = rounded & MASK32
    signed = torch.where(rounded >= 1 << 31, rounded - (1 << 32), rounded).to(torch.int32)
    return signed.view(torch.float32).to(torch.bfloat16).view(x.shape)
