"""Triton kernels of the update: factors regenerated from the noise contract, never stored beyond a chunk.

* ``factor_stack_kernel`` writes a chunk of scaled factors, stacked along one ``J_c * r`` axis and transposed
  (``At[jj r + c, a] = w_j A_j[a, c]``, ``Bt[jj r + c, b] = B_j[b, c]``) so the stores are coalesced along the
  feature axis; ``G += At^T Bt`` is then one tensor-core GEMM (cuBLAS). Each factor entry is generated once: a fully
  fused GEMM would regenerate ``A`` once per column tile and ``B`` once per row tile.
* ``vector_update_kernel``: ``sum_j w_j eps_j`` for a flat parameter; each program sums a slice of the noise
  indices for a block of elements, partial sums are added on the host side (deterministic, no atomics).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_noise import noise_block


@triton.jit(do_not_specialize=["seed", "param_index", "t_eff"])
def factor_stack_kernel(
    # pointers
    at_ptr,  # (J * RANK, M) out
    bt_ptr,  # (J * RANK, N) out
    ids_ptr,  # (J,) noise indices
    w_ptr,  # (J,) float32 weights
    # dimensions
    J,
    M,
    N,
    # noise
    seed,
    param_index,
    t_eff,
    # meta-parameters
    RANK: tl.constexpr,
    NOISE: tl.constexpr,
    FAST_MATH: tl.constexpr,
    PJ: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid_e = tl.program_id(0)
    pid_j = tl.program_id(1)
    k0 = seed.to(tl.uint32, bitcast=True)
    k1 = param_index.to(tl.uint32, bitcast=True)
    t = t_eff.to(tl.uint32, bitcast=True)
    jj = pid_j * PJ + tl.arange(0, PJ)
    j_ok = jj < J
    j = tl.load(ids_ptr + jj, mask=j_ok, other=0)
    wj = tl.load(w_ptr + jj, mask=j_ok, other=0.0).to(tl.float32)
    e0 = pid_e * BLOCK
    ee = e0 + tl.arange(0, BLOCK)
    for c in tl.static_range(RANK):
        row = (jj * RANK + c)[:, None]
        ok = j_ok[:, None] & (ee < M)[None, :]
        if e0 < M:
            a = noise_block(k0, k1, j, t, c, e0, PJ, BLOCK, NOISE, FAST_MATH) * wj[:, None]
            tl.store(at_ptr + row * M + ee[None, :], a.to(at_ptr.dtype.element_ty), mask=ok)
        if e0 < N:
            b = noise_block(k0, k1, j, t, (1 << 16) | c, e0, PJ, BLOCK, NOISE, FAST_MATH)
            ok_b = j_ok[:, None] & (ee < N)[None, :]
            tl.store(bt_ptr + row * N + ee[None, :], b.to(bt_ptr.dtype.element_ty), mask=ok_b)


@triton.jit(do_not_specialize=["seed", "param_index", "t_eff"])
def vector_update_kernel(
    # pointers
    out_ptr,  # (SPLIT, NUMEL) float32 partial sums
    ids_ptr,
    w_ptr,
    # dimensions
    J,
    NUMEL,
    j_per_split,
    # noise
    seed,
    param_index,
    t_eff,
    # meta-parameters
    NOISE: tl.constexpr,
    FAST_MATH: tl.constexpr,
    PJ: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid_e = tl.program_id(0)
    pid_s = tl.program_id(1)
    k0 = seed.to(tl.uint32, bitcast=True)
    k1 = param_index.to(tl.uint32, bitcast=True)
    t = t_eff.to(tl.uint32, bitcast=True)
    e0 = pid_e * BLOCK
    acc = tl.zeros([PJ, BLOCK], dtype=tl.float32)  # reduced over PJ once, after the loop
    j_lo = pid_s * j_per_split
    j_hi = tl.minimum(J, j_lo + j_per_split)
    for j_start in range(j_lo, j_hi, PJ):
        jj = j_start + tl.arange(0, PJ)
        j_ok = jj < j_hi
        j = tl.load(ids_ptr + jj, mask=j_ok, other=0)
        wj = tl.load(w_ptr + jj, mask=j_ok, other=0.0).to(tl.float32)
        eps = noise_block(k0, k1, j, t, 2 << 16, e0, PJ, BLOCK, NOISE, FAST_MATH)
        acc += eps * wj[:, None]
    ee = e0 + tl.arange(0, BLOCK)
    tl.store(out_ptr + pid_s * NUMEL + ee, tl.sum(acc, axis=0), mask=ee < NUMEL)
