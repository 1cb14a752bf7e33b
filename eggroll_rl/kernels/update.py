"""Low-rank update: ``G = sum_j w_j A_j B_j^T`` (built, or added straight into a parameter: ``p = beta p + alpha G``),
and ``g = sum_j w_j eps_j`` for flat parameters, with the noise regenerated from the contract, never stored beyond a
chunk of noise indices.

Each op has a Triton version (``*_triton``, CUDA) and a pure-torch twin (``*_reference``, any device) with the same
arguments; ``eggroll_rl.kernels`` picks one.

* ``factor_stack_kernel`` writes a chunk of scaled factors, stacked along one ``J_c * r`` axis and transposed
  (``At[jj r + c, a] = w_j A_j[a, c]``, ``Bt[jj r + c, b] = B_j[b, c]``) so the stores are coalesced along the
  feature axis; ``At^T Bt`` is then one tensor-core GEMM. Each factor entry is generated once: a GEMM that
  generated its operands would regenerate ``A`` once per column tile and ``B`` once per row tile.
* ``lowrank_addmm_kernel`` is that GEMM for bf16 factors, with the update in its epilogue: ``C = beta C + alpha
  At^T Bt`` in ``C``'s dtype (``C`` is the parameter, or its float32 master copy, or a fresh gradient buffer), the
  result rounded once more into a second tensor (the bf16/fp16 parameter of a master copy), and per tile the sums
  of ``acc^2`` (so ``||G||_F^2`` is exact, from the float32 accumulators, with no pass over ``G``) and of the
  measured change ``(C_new - C_old)^2``. One pass over ``C`` instead of four (GEMM into a float32 ``G``, the add,
  ``||G||``, the master's rounded copy). Float32 factors (float32 models) and matrices too small to fill the GPU
  with tiles go through cuBLAS instead (``_mm_f32``; small layers get cuBLAS's split-K).
* ``lowrank_adam_kernel`` is the same GEMM with one ``torch.optim.Adam`` step in its epilogue (``optim.adam_math``):
  the parameter (float32 master), both moments and the rounded copy are read and written once, ``G`` never stored.
* ``vector_update_kernel``: ``sum_j w_j eps_j`` for a flat parameter; each program sums a slice of the noise
  indices for a block of elements, partial sums are added on the host side (deterministic, no atomics).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..noise import SIGN_SPAN, SPANS_PER_CALL_FACTOR, STREAM_A, STREAM_B, factor_noise, vector_noise
from ..validation import check_int
from . import optim
from ._launch import FAST_MATH, FLOAT_DTYPES, INTERPRET, as_i32, check_ids, noise_code, num_sms, tl, triton
from .optim import AdamStep, adam_math
from .philox import (
    FACTOR_SPANS,
    column_block,
    fast_pair_block,
    pick_pair,
    pick_word,
    quad_signs,
    sign_spans,
    sign_words_next,
    vector_block,
)
from .rounding import kernel_keys, stochastic_round_tl

# Bound on the regenerated factor elements held at once: the kernels' buffer (bf16: 128 MiB) and the twin's (fp32
# elements, 64 MiB).
CHUNK_ELEMENTS = 1 << 26
REFERENCE_CHUNK_ELEMENTS = 1 << 24
# Largest stacked axis J*r for which the fused apply takes ||G||^2 from the (J r)^2 Gram matrices of the factors.
APPLY_GRAM_MAX = 4096
# factor_stack_kernel: elements per block along the features (4 per thread: one Philox call each, in the layout of
# the stores; Gaussian-fast: one call each for two columns; Rademacher: a program walks the blocks of 8 spans, one
# call per thread for all of them); the interpreter runs smaller blocks.
FACTOR_BLOCK = 512
INTERPRET_FACTOR_BLOCK = 128
# vector_update_kernel: elements and noise indices per program; programs per SM to aim for.
VECTOR_BLOCK = 128
VECTOR_PJ = 4
VECTOR_PROGRAMS_PER_SM = 8
LOW_PRECISION = (torch.bfloat16, torch.float16)


class GemmShape(NamedTuple):
    """Launch shape of ``lowrank_addmm_kernel``: tile sizes, warps, pipeline stages, row tiles per L2 group, an
    optional register cap per thread (``maxnreg``; None: the compiler's choice), whether the kernel loads its C
    tile before the main loop (``prefetch_c``; the Adam kernel ignores it), and ``persistent``: programs an SM of
    ``lowrank_addmm_tma_kernel`` instead (0: one program a tile; the Adam kernel ignores it; a candidate of
    ``bench_kernels.py --cases update_sweep``, not a default until timed)."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    group_m: int = 8
    maxnreg: int | None = None
    prefetch_c: bool = False  # plain/SGD update: load the C tile before the main loop (its latency under the MMAs)
    persistent: int = 0  # plain/SGD update: >0 runs lowrank_addmm_tma_kernel with this many programs an SM


# The first whose grid fills every SM once is taken. Two programs of 64 x 128 tiles (one warpgroup, 4 stages:
# 96 KiB of shared memory, ~200 registers a thread in the offline sm_90 compile) fit an SM, so one's epilogue (read
# C, write C and the copy: memory bound) can overlap the other's main loop (tensor cores); 128 x 128 with 8 warps
# needs ~230 registers a thread, one program an SM. A guess from the compiler's resource report, not from timings:
# ``benchmarks/bench_kernels.py --cases update_sweep`` times the candidates (NOTES_kernels.md, fourth pass). The C tile
# is prefetched in the first: -5 % of the GEMM at r=1, -1 % at r=4 in the session-7 sweep (NOTES_kernels.md).
GEMM_SHAPES = (GemmShape(64, 128, 64, 4, 4, prefetch_c=True), GemmShape(64, 64, 64, 4, 3))
# Adam in the epilogue holds the parameter and both moments besides the accumulators: 64 x 64 tiles (~250
# registers a thread, no spills, two programs an SM); 64 x 128 spills.
ADAM_GEMM_SHAPES = (GemmShape(64, 64, 64, 4, 3),)
# Candidates for the persistent TMA kernel (lowrank_addmm_tma_kernel), not defaults until ``bench_kernels.py --cases
# update_sweep`` times them (NOTES_kernels.md, session 20). Offline sm_90 compile (Triton 3.9): TMA loads and async
# wgmma; 128 x 128 / 8 warps: 248 registers, 160 KiB of shared memory (one program an SM); 64 x 128 / 4 warps /
# 3 stages: 255 registers, 104 KiB (two). 128 x 256 needs 272 KiB (more than an H200 SM has) and spills.
TMA_GEMM_SHAPES = (GemmShape(128, 128, 64, 8, 3, persistent=1), GemmShape(64, 128, 64, 4, 3, persistent=2))
INTERPRET_GEMM_SHAPE = GemmShape(32, 32, 16, 4, 1)  # several tiles on small test shapes, fast on the CPU


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
    BLOCKS: tl.constexpr,  # blocks of features per program
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
    e0 = pid_e * BLOCK * BLOCKS
    if NOISE == 0:
        ee = e0 + tl.arange(0, BLOCK)
        for c in tl.static_range(RANK):
            row = (jj * RANK + c)[:, None]
            ok = j_ok[:, None] & (ee < M)[None, :]
            if e0 < M:
                a = column_block(k0, k1, j, t, 0, c, e0, PJ, BLOCK, NOISE, FAST_MATH) * wj[:, None]
                tl.store(at_ptr + row * M + ee[None, :], a.to(at_ptr.dtype.element_ty), mask=ok)
            if e0 < N:
                b = column_block(k0, k1, j, t, 1, c, e0, PJ, BLOCK, NOISE, FAST_MATH)
                ok_b = j_ok[:, None] & (ee < N)[None, :]
                tl.store(bt_ptr + row * N + ee[None, :], b.to(bt_ptr.dtype.element_ty), mask=ok_b)
    elif NOISE == 2:
        if e0 < M:
            _store_fast_pairs(at_ptr, M, jj, j_ok, j, wj, k0, k1, t, e0, 0, RANK, FAST_MATH, PJ, BLOCK)
        if e0 < N:
            _store_fast_pairs(bt_ptr, N, jj, j_ok, j, wj, k0, k1, t, e0, 1, RANK, FAST_MATH, PJ, BLOCK)
    else:
        if e0 < M:
            _store_signs(at_ptr, M, jj, j_ok, j, wj, k0, k1, t, e0, 0, RANK, PJ, BLOCK, BLOCKS)
        if e0 < N:
            _store_signs(bt_ptr, N, jj, j_ok, j, wj, k0, k1, t, e0, 1, RANK, PJ, BLOCK, BLOCKS)


@triton.jit
def _store_fast_pairs(
    out_ptr, L, jj, j_ok, j, wj, k0, k1, t, e0,
    STREAM: tl.constexpr, RANK: tl.constexpr, FAST_MATH: tl.constexpr, PJ: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Gaussian-fast rows ``e0 .. e0 + BLOCK - 1`` of every column of factor ``STREAM`` (0: A, times ``wj``; 1: B)
    into ``out[jj * RANK + c, :]``: one call per quad for each pair of columns."""
    ee = e0 + tl.arange(0, BLOCK)
    ok = j_ok[:, None] & (ee < L)[None, :]
    for g in tl.static_range((RANK + 1) // 2):
        za, zb = fast_pair_block(k0, k1, j, t, STREAM, g, e0, PJ, BLOCK, FAST_MATH)
        for h in tl.static_range(2):
            if 2 * g + h < RANK:
                z = pick_pair(za, zb, h)
                if STREAM == 0:
                    z = z * wj[:, None]
                row = (jj * RANK + 2 * g + h)[:, None]
                tl.store(out_ptr + row * L + ee[None, :], z.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _store_signs(
    out_ptr, L, jj, j_ok, j, wj, k0, k1, t, e_first,
    STREAM: tl.constexpr, RANK: tl.constexpr, PJ: tl.constexpr, BLOCK: tl.constexpr, BLOCKS: tl.constexpr,
):  # fmt: skip
    """Rademacher rows ``e_first .. e_first + BLOCKS * BLOCK - 1`` of every column of factor ``STREAM`` (0: A,
    times ``wj``; 1: B) into ``out[jj * RANK + c, :]``. Per column group, one call per quad gives four columns
    of 8 spans; the program's blocks (a run of 8 spans) walk them keeping the words (``sign_words_next``)."""
    for g in tl.static_range((RANK + 3) // 4):
        w0 = tl.zeros([PJ, BLOCK // 4], dtype=tl.uint32)
        w1 = w0
        w2 = w0
        w3 = w0
        for e0 in range(e_first, tl.minimum(L, e_first + BLOCKS * BLOCK), BLOCK):
            c3 = (STREAM << 16) | g
            w0, w1, w2, w3 = sign_words_next(w0, w1, w2, w3, k0, k1, j, t, c3, e0, PJ, BLOCK // 4, FACTOR_SPANS)
            span = sign_spans(e0, BLOCK // 4)
            ee = e0 + tl.arange(0, BLOCK)
            ok = j_ok[:, None] & (ee < L)[None, :]
            for w in tl.static_range(4):
                if 4 * g + w < RANK:
                    z = quad_signs(pick_word(w0, w1, w2, w3, w), span, PJ, BLOCK // 4)
                    if STREAM == 0:
                        z = z * wj[:, None]
                    row = (jj * RANK + 4 * g + w)[:, None]
                    tl.store(out_ptr + row * L + ee[None, :], z.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def tile_origin(tile, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Tile number ``tile``'s first row and column. GROUP_M row tiles walk the column tiles together (their Bt
    slices stay in L2)."""
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * grid_n
    first_m = (tile // width) * GROUP_M
    group_size = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (tile % width) % group_size
    pid_n = (tile % width) // group_size
    return pid_m * BLOCK_M, pid_n * BLOCK_N


@triton.jit
def tile_rows_cols(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's tile (``tile_origin`` of the program id): its row and column indices."""
    row, col = tile_origin(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    return row + tl.arange(0, BLOCK_M), col + tl.arange(0, BLOCK_N)


@triton.jit
def tile_product(
    at_ptr, bt_ptr, rm, rn, M, N, K, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
):  # fmt: skip
    """The tile ``(rm, rn)`` of ``At^T Bt``: float32 accumulators, 0 outside the matrix."""
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    # (BLOCK_K, BLOCK_M) slices of At rows (contiguous along M) and (BLOCK_K, BLOCK_N) of Bt; the transposed At
    # tile is the dot's M-major A operand (tensor cores take it from shared memory as is).
    a_ptrs = at_ptr + rk[:, None] * M + rm[None, :]
    b_ptrs = bt_ptr + rk[:, None] * N + rn[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + rk < K)[:, None]
        a = tl.load(a_ptrs, mask=k_ok & m_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok & n_ok[None, :], other=0.0)
        if UPCAST:
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(tl.trans(a), b, acc)
        a_ptrs += BLOCK_K * M
        b_ptrs += BLOCK_K * N
    return acc


@triton.jit
def lowrank_tile(
    at_ptr,
    bt_ptr,
    M,
    N,
    K,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """This program's tile of ``At^T Bt``: ``(acc, rm, rn)``, float32 accumulators (0 outside the matrix) and the
    tile's row and column indices (``tile_rows_cols``)."""
    rm, rn = tile_rows_cols(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    return tile_product(at_ptr, bt_ptr, rm, rn, M, N, K, BLOCK_M, BLOCK_N, BLOCK_K, UPCAST), rm, rn


@triton.jit(do_not_specialize=["round_k0", "round_k1"])
def lowrank_addmm_kernel(
    # pointers
    at_ptr,  # (K, M) stacked weighted factors A^T (bf16)
    bt_ptr,  # (K, N) stacked factors B^T (bf16)
    c_ptr,  # (M, N) row stride stride_cm: C = beta C + alpha At^T Bt (C read only with READ_C)
    copy_ptr,  # (M, N) contiguous: the new C rounded to this tensor's dtype (HAS_COPY)
    sq_ptr,  # (2, tiles) float32 out: per tile sum acc^2, and sum (C_new - C_old)^2 (0 without READ_C)
    # dimensions
    M,
    N,
    K,
    stride_cm,
    # scalars
    alpha,
    beta,
    round_k0,  # int32 keys of the stochastic rounding (rounding.py; unused without STOCHASTIC)
    round_k1,
    # meta-parameters
    READ_C: tl.constexpr,
    HAS_COPY: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    UPCAST: tl.constexpr,  # the interpreter's dot of bf16 operands is wrong (numpy has no bf16): float32 there
    PREFETCH_C: tl.constexpr = False,  # with READ_C: load the C tile before the main loop
    STOCHASTIC: tl.constexpr = False,  # round C_new into C's bf16 stochastically (rounding.stochastic_round_tl)
):
    pid = tl.program_id(0)
    tiles = tl.num_programs(0)
    if READ_C and PREFETCH_C:
        rm, rn = tile_rows_cols(M, N, BLOCK_M, BLOCK_N, GROUP_M)
        c_old = tl.load(c_ptr + rm.to(tl.int64)[:, None] * stride_cm + rn[None, :],
                        mask=(rm < M)[:, None] & (rn < N)[None, :], other=0.0).to(tl.float32)  # fmt: skip
        acc = tile_product(at_ptr, bt_ptr, rm, rn, M, N, K, BLOCK_M, BLOCK_N, BLOCK_K, UPCAST)
    else:  # the tile's addresses are formed after the main loop: no registers held through it
        acc, rm, rn = lowrank_tile(at_ptr, bt_ptr, M, N, K, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, UPCAST)
        c_old = 0.0  # loaded by the epilogue
    addmm_epilogue(acc, c_old, rm, rn, c_ptr, copy_ptr, sq_ptr, pid, tiles, M, N, stride_cm, alpha, beta, round_k0,
                   round_k1, READ_C, HAS_COPY, PREFETCH_C, STOCHASTIC)  # fmt: skip


@triton.jit
def addmm_epilogue(
    acc, c_old, rm, rn, c_ptr, copy_ptr, sq_ptr, tile, tiles, M, N, stride_cm, alpha, beta, round_k0, round_k1,
    READ_C: tl.constexpr, HAS_COPY: tl.constexpr, C_LOADED: tl.constexpr, STOCHASTIC: tl.constexpr,
):  # fmt: skip
    """``lowrank_addmm_kernel``'s epilogue for tile number ``tile`` (of ``tiles``): ||acc||^2 first, then the update
    ``beta C + alpha acc``, its rounded copy and the measured change (acc's registers are free once out is formed).
    ``c_old``: the float32 C tile where ``C_LOADED`` (read here otherwise). ``STOCHASTIC``: the update is rounded
    into C's bf16 stochastically, element ``(i, j)`` taking the random bits of index ``i N + j``."""
    tl.store(sq_ptr + tile, tl.sum(tl.sum(acc * acc, axis=1), axis=0))
    ok = (rm < M)[:, None] & (rn < N)[None, :]
    rows = rm.to(tl.int64)[:, None]
    c_ptrs = c_ptr + rows * stride_cm + rn[None, :]
    out = alpha * acc
    if READ_C:
        if not C_LOADED:
            c_old = tl.load(c_ptrs, mask=ok, other=0.0).to(tl.float32)
        out = beta * c_old + out
    if STOCHASTIC:
        out = stochastic_round_tl(out, rows * N + rn[None, :], round_k0, round_k1)
    stored = out.to(c_ptr.dtype.element_ty)
    tl.store(c_ptrs, stored, mask=ok)
    if HAS_COPY:
        tl.store(copy_ptr + rows * N + rn[None, :], out.to(copy_ptr.dtype.element_ty), mask=ok)
    if READ_C:
        d = stored.to(tl.float32) - c_old  # 0 outside the matrix (both masked to 0)
        tl.store(sq_ptr + tiles + tile, tl.sum(tl.sum(d * d, axis=1), axis=0))
    else:
        tl.store(sq_ptr + tiles + tile, 0.0)


@triton.jit(do_not_specialize=["round_k0", "round_k1"])
def lowrank_addmm_tma_kernel(
    at_desc,  # TensorDescriptor of At (K, M), blocks (BLOCK_K, BLOCK_M); zero outside the matrix
    bt_desc,  # TensorDescriptor of Bt (K, N), blocks (BLOCK_K, BLOCK_N)
    c_ptr,
    copy_ptr,
    sq_ptr,
    M,
    N,
    K,
    stride_cm,
    alpha,
    beta,
    round_k0,
    round_k1,
    READ_C: tl.constexpr,
    HAS_COPY: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    UPCAST: tl.constexpr,
    PROGRAMS: tl.constexpr,  # the grid: each program takes every PROGRAMS-th tile
    FLATTEN: tl.constexpr,  # one software pipeline over a program's k steps (next tile's loads under the epilogue)
    STOCHASTIC: tl.constexpr = False,
):
    """``lowrank_addmm_kernel``'s update (the same values and outputs) as a persistent kernel whose operands come
    through TMA descriptors: a program per SM slot walks its tiles, so the loads of its next tile can run under the
    epilogue of this one (NOTES_kernels.md: the fused GEMM ran at ~340 TFLOP/s against cuBLAS's ~460 at r=4)."""
    tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    k_steps = tl.cdiv(K, BLOCK_K)
    for tile in tl.range(tl.program_id(0), tiles, PROGRAMS, flatten=FLATTEN):
        row, col = tile_origin(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ks in range(k_steps):
            a = at_desc.load([ks * BLOCK_K, row])
            b = bt_desc.load([ks * BLOCK_K, col])
            if UPCAST:
                a, b = a.to(tl.float32), b.to(tl.float32)
            acc = tl.dot(tl.trans(a), b, acc)
        rm = row + tl.arange(0, BLOCK_M)
        rn = col + tl.arange(0, BLOCK_N)
        addmm_epilogue(acc, 0.0, rm, rn, c_ptr, copy_ptr, sq_ptr, tile, tiles, M, N, stride_cm, alpha, beta, round_k0,
                       round_k1, READ_C, HAS_COPY, False, STOCHASTIC)  # fmt: skip


@triton.jit
def lowrank_adam_kernel(
    # pointers
    at_ptr,  # (K, M) stacked weighted factors A^T (bf16): the tile of At^T Bt is the ES gradient G
    bt_ptr,  # (K, N) stacked factors B^T (bf16)
    p_ptr,  # (M, N) contiguous parameter (a float32 master), updated in place
    m_ptr,  # (M, N) contiguous exp_avg, updated in place
    v_ptr,  # (M, N) contiguous exp_avg_sq, updated in place
    copy_ptr,  # (M, N) contiguous: the new parameter rounded to this tensor's dtype (HAS_COPY)
    sq_ptr,  # (2, tiles) float32 out: per tile sum G^2, and sum (p_new - p_old)^2
    # dimensions
    M,
    N,
    K,
    # scalars: optim.AdamStep.scalars()
    grad_sign,
    one_minus_beta1,
    beta2,
    one_minus_beta2,
    eps,
    weight_decay,
    decay,
    neg_step_size,
    bias_correction2_sqrt,
    # meta-parameters
    WEIGHT_DECAY: tl.constexpr,
    HAS_COPY: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid = tl.program_id(0)
    tiles = tl.num_programs(0)
    acc, rm, rn = lowrank_tile(at_ptr, bt_ptr, M, N, K, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, UPCAST)

    # Epilogue: optim.adam_step_kernel's pass, with the gradient from the accumulators instead of memory.
    tl.store(sq_ptr + pid, tl.sum(tl.sum(acc * acc, axis=1), axis=0))
    ok = (rm < M)[:, None] & (rn < N)[None, :]
    offs = rm.to(tl.int64)[:, None] * N + rn[None, :]
    p0 = tl.load(p_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    m = tl.load(m_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    p, m, v = adam_math(
        p0, acc * grad_sign, m, v, one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay,
        neg_step_size, bias_correction2_sqrt, WEIGHT_DECAY,
    )  # fmt: skip
    stored = p.to(p_ptr.dtype.element_ty)
    tl.store(p_ptr + offs, stored, mask=ok)
    tl.store(m_ptr + offs, m.to(m_ptr.dtype.element_ty), mask=ok)
    tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=ok)
    if HAS_COPY:
        tl.store(copy_ptr + offs, p.to(copy_ptr.dtype.element_ty), mask=ok)
    d = tl.where(ok, stored.to(tl.float32) - p0, 0.0)
    tl.store(sq_ptr + tiles + pid, tl.sum(tl.sum(d * d, axis=1), axis=0))


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
        eps = vector_block(k0, k1, j, t, e0, PJ, BLOCK, NOISE, FAST_MATH)
        acc += eps * wj[:, None]
    ee = e0 + tl.arange(0, BLOCK)
    tl.store(out_ptr + pid_s * NUMEL + ee, tl.sum(acc, axis=0), mask=ee < NUMEL)


# --- launchers ---------------------------------------------------------------------------------------------------


def _check_update_args(seed, param_index, t_eff, noise_ids, weights):
    for name, v in (("seed", seed), ("param_index", param_index), ("t_eff", t_eff)):
        check_int(name, v)
    if not isinstance(weights, torch.Tensor) or weights.dim() != 1 or not weights.dtype.is_floating_point:
        raise ValueError(f"weights must be a 1-D float tensor, got {getattr(weights, 'shape', weights)!r}")
    ids = check_ids("noise_ids", noise_ids, weights.numel(), weights.device)
    return ids, weights.to(torch.float32).contiguous()


def _mm_f32(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """``a @ b`` (+ ``out``) with float32 accumulation and output, for bf16 or fp32 operands."""
    if a.dtype == torch.float32 or a.device.type != "cuda":  # out_dtype is CUDA-only
        a, b = a.float(), b.float()
        return torch.mm(a, b) if out is None else out.addmm_(a, b)
    if out is None:
        return torch.mm(a, b, out_dtype=torch.float32)
    return torch.addmm(out, a, b, out_dtype=torch.float32)


def gemm_launch_shape(
    m: int, n: int, device: torch.device, shapes: tuple[GemmShape, ...] | None = None
) -> GemmShape | None:
    """The first of ``shapes`` (None: ``GEMM_SHAPES``, read at the call) whose tiles fill every SM once for an
    ``(m, n)`` update; None: too small (the update goes through cuBLAS, whose split-K keeps the SMs busy on small
    matrices with long ``K``)."""
    if INTERPRET:
        return INTERPRET_GEMM_SHAPE
    shapes = GEMM_SHAPES if shapes is None else shapes
    sms = num_sms(device.index or 0)
    for shape in shapes:
        if triton.cdiv(m, shape.block_m) * triton.cdiv(n, shape.block_n) >= sms:
            return shape
    return None


def _gemm_shape(gemm_shape, m, n, factor_dtype, device, shapes=None) -> GemmShape | None:
    """The launch shape of the fused GEMM for this call, or None for the cuBLAS path (float32 factors)."""
    if factor_dtype not in LOW_PRECISION:
        return None  # float32 factors: cuBLAS's float32 GEMM keeps full precision (the kernel's dot would be tf32)
    if gemm_shape == "auto":
        return gemm_launch_shape(m, n, device, shapes)
    if gemm_shape is not None and not isinstance(gemm_shape, GemmShape):
        raise ValueError(f"gemm_shape must be 'auto', None or a GemmShape, got {gemm_shape!r}")
    return gemm_shape


def _chunk_size(J: int, rank: int, m: int, n: int, chunk_elements: int) -> int:
    """Noise indices whose stacked factors fit one buffer of ``chunk_elements``."""
    return max(1, min(J, chunk_elements // (rank * (m + n))))


def _addmm(at, bt, c, *, alpha, beta, read_c, copy, shape: GemmShape, round_keys=None) -> torch.Tensor:
    """``c = beta c + alpha at^T bt`` (and ``copy``) through ``lowrank_addmm_kernel``; returns ``(sum acc^2,
    sum (c_new - c_old)^2)`` as a ``(2,)`` float32 tensor. ``round_keys``: stochastic rounding into a bf16 ``c``
    (``rounding.py``; None: to nearest)."""
    K, M = at.shape
    N = bt.shape[1]
    if c.shape != (M, N) or c.stride(1) != 1:
        raise ValueError(f"the target must be ({M}, {N}) with unit column stride, got {tuple(c.shape)} {c.stride()}")
    if copy is not None and (copy.shape != (M, N) or not copy.is_contiguous()):
        raise ValueError(f"copy must be a contiguous ({M}, {N}) tensor, got {tuple(copy.shape)}")
    tiles = triton.cdiv(M, shape.block_m) * triton.cdiv(N, shape.block_n)
    sq = torch.empty(2, tiles, dtype=torch.float32, device=c.device)
    extra = {} if shape.maxnreg is None else {"maxnreg": shape.maxnreg}
    outputs = (c, copy if copy is not None else c, sq, M, N, K, c.stride(0), float(alpha), float(beta),
               *kernel_keys(round_keys))  # fmt: skip
    meta = dict(READ_C=read_c, HAS_COPY=copy is not None, BLOCK_M=shape.block_m, BLOCK_N=shape.block_n,
                BLOCK_K=shape.block_k, GROUP_M=shape.group_m, UPCAST=INTERPRET, num_warps=shape.num_warps,
                num_stages=shape.num_stages, STOCHASTIC=round_keys is not None, **extra)  # fmt: skip
    if shape.persistent and _tma_ready(at, bt):
        from triton.tools.tensor_descriptor import TensorDescriptor

        programs = min(tiles, shape.persistent * num_sms(c.device.index or 0))
        at_desc = TensorDescriptor.from_tensor(at, [shape.block_k, shape.block_m])
        bt_desc = TensorDescriptor.from_tensor(bt, [shape.block_k, shape.block_n])
        lowrank_addmm_tma_kernel[(programs,)](at_desc, bt_desc, *outputs, PROGRAMS=programs, FLATTEN=True, **meta)
    else:  # one program a tile (a persistent shape whose operands TMA cannot take keeps its tile sizes)
        lowrank_addmm_kernel[(tiles,)](at, bt, *outputs, PREFETCH_C=shape.prefetch_c, **meta)
    return sq.sum(1)


def _tma_ready(*operands: torch.Tensor) -> bool:
    """Whether TMA descriptors can address these row-major operands: a 16-byte aligned base and row stride (Hopper's
    rule), unit column stride."""
    return all(
        t.stride(1) == 1 and t.data_ptr() % 16 == 0 and (t.stride(0) * t.element_size()) % 16 == 0 for t in operands
    )


def _adam_gemm(at, bt, param, exp_avg, exp_avg_sq, hyper: AdamStep, *, copy, shape: GemmShape) -> torch.Tensor:
    """One Adam step of ``param`` on ``G = at^T bt`` through ``lowrank_adam_kernel`` (contiguous ``(M, N)``
    tensors); returns ``(sum G^2, sum (p_new - p_old)^2)`` as a ``(2,)`` float32 tensor."""
    K, M = at.shape
    N = bt.shape[1]
    tiles = triton.cdiv(M, shape.block_m) * triton.cdiv(N, shape.block_n)
    sq = torch.empty(2, tiles, dtype=torch.float32, device=param.device)
    extra = {} if shape.maxnreg is None else {"maxnreg": shape.maxnreg}
    lowrank_adam_kernel[(tiles,)](
        at, bt, param, exp_avg, exp_avg_sq, copy if copy is not None else param, sq, M, N, K, *hyper.scalars(),
        WEIGHT_DECAY=hyper.weight_decay_mode, HAS_COPY=copy is not None, BLOCK_M=shape.block_m,
        BLOCK_N=shape.block_n, BLOCK_K=shape.block_k, GROUP_M=shape.group_m, UPCAST=INTERPRET,
        num_warps=shape.num_warps, num_stages=shape.num_stages, **extra,
    )  # fmt: skip
    return sq.sum(1)


def lowrank_update_triton(
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
    chunk_elements: int = CHUNK_ELEMENTS,
    gemm_shape: GemmShape | str | None = "auto",
    factor_block: int | None = None,
) -> torch.Tensor:
    """Triton version of ``lowrank_update_reference``: ``sum_j w_j A_j B_j^T``, ``(m, n)`` float32.

    The regenerated factors enter the GEMM as bf16 for a bf16/fp16 ``factor_dtype`` (tensor cores at full rate,
    fp32 accumulation, ~3e-3 relative error on ``G``), else as float32. ``chunk_elements`` bounds the factor buffer;
    ``gemm_shape`` is the fused GEMM's launch shape (``"auto"``: ``gemm_launch_shape``; None: cuBLAS);
    ``factor_block``: features per block of the factor kernel (a power of two >= 4; None: ``FACTOR_BLOCK``, or
    ``INTERPRET_FACTOR_BLOCK`` under the interpreter).
    """
    G, _ = lowrank_gradient_triton(
        seed=seed, param_index=param_index, t_eff=t_eff, noise_ids=noise_ids, weights=weights, m=m, n=n,
        rank=rank, noise=noise, factor_dtype=factor_dtype, chunk_elements=chunk_elements, gemm_shape=gemm_shape,
        factor_block=factor_block,
    )  # fmt: skip
    return G


def lowrank_gradient_triton(
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
    chunk_elements: int = CHUNK_ELEMENTS,
    gemm_shape: GemmShape | str | None = "auto",
    factor_block: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of ``lowrank_gradient_reference``: ``(scale * G in dtype, ||G||_F^2)``.

    With bf16 factors and all noise indices in one chunk, one launch of ``lowrank_addmm_kernel`` writes
    ``scale * G`` and the squared norm of its float32 accumulators; otherwise cuBLAS builds ``G`` in float32 and
    one more pass takes the norm.
    """
    ids, w = _check_update_args(seed, param_index, t_eff, noise_ids, weights)
    code = noise_code(noise)
    for name, v in (("m", m), ("n", n), ("rank", rank)):
        check_int(name, v, 1)
    J = ids.numel()
    shape = _gemm_shape(gemm_shape, m, n, factor_dtype, w.device)
    if J and shape is not None and J <= _chunk_size(J, rank, m, n, chunk_elements):
        ((at, bt),) = _factor_chunks(
            ids, w, seed, param_index, t_eff, m, n, rank, code, factor_dtype, chunk_elements, factor_block
        )
        out = torch.empty(m, n, dtype=dtype, device=w.device)
        sq = _addmm(at, bt, out, alpha=scale, beta=0.0, read_c=False, copy=None, shape=shape)
        return out, sq[0]
    G = torch.zeros(m, n, dtype=torch.float32, device=w.device) if J == 0 else None
    chunks = _factor_chunks(
        ids, w, seed, param_index, t_eff, m, n, rank, code, factor_dtype, chunk_elements, factor_block
    )
    for at, bt in chunks:
        G = _mm_f32(at.T, bt, G)
    sq = torch.linalg.vector_norm(G).square()
    if scale != 1:
        G.mul_(scale)
    return G.to(dtype), sq


def _factor_chunks(ids, w, seed, param_index, t_eff, m, n, rank, code, factor_dtype, chunk_elements, block=None):
    """Yield ``(At, Bt)``: the stacked, weighted factors of consecutive chunks of noise indices (one buffer)."""
    J = ids.numel()
    if J == 0:
        return
    chunk = _chunk_size(J, rank, m, n, chunk_elements)
    fdtype = torch.bfloat16 if factor_dtype in LOW_PRECISION else torch.float32
    at_buf = torch.empty(chunk * rank, m, dtype=fdtype, device=w.device)
    bt_buf = torch.empty(chunk * rank, n, dtype=fdtype, device=w.device)
    if block is None:
        block = INTERPRET_FACTOR_BLOCK if INTERPRET else FACTOR_BLOCK
    # Rademacher: a program takes a run of 8 spans of rows, so each call (a quad of 8 spans) is made once
    blocks = max(1, SPANS_PER_CALL_FACTOR * SIGN_SPAN // block) if code == 1 else 1
    pj = 1
    for lo in range(0, J, chunk):
        hi = min(J, lo + chunk)
        at, bt = at_buf[: (hi - lo) * rank], bt_buf[: (hi - lo) * rank]
        grid = (triton.cdiv(max(m, n), block * blocks), triton.cdiv(hi - lo, pj))
        factor_stack_kernel[grid](
            at, bt, ids[lo:hi], w[lo:hi], hi - lo, m, n, as_i32(seed), as_i32(param_index), as_i32(t_eff),
            RANK=rank, NOISE=code, FAST_MATH=FAST_MATH, PJ=pj, BLOCK=block, BLOCKS=blocks, num_warps=4,
        )  # fmt: skip
        yield at, bt


def lowrank_apply_triton(
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
    chunk_elements: int = CHUNK_ELEMENTS,
    gram_max: int = APPLY_GRAM_MAX,
    gemm_shape: GemmShape | str | None = "auto",
    factor_block: int | None = None,
    round_keys: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of ``lowrank_apply_reference``: ``param = beta param + alpha G`` (and ``copy``), ``G`` never
    stored in memory where it can be helped; returns ``(||G||_F^2, ||param_new - param_old||_F^2)``.

    Three paths, first that applies:

    1. bf16/fp16 ``factor_dtype`` (a low-precision model, its ``param`` the float32 master or the weight itself),
       one chunk of factors, a matrix that fills the GPU with tiles: one ``lowrank_addmm_kernel`` launch reads and
       writes ``param`` once, writes ``copy``, and sums ``acc^2`` and the change (both exact, float32).
    2. ``beta == 1``, no ``copy``, one chunk, ``J r <= gram_max`` and the norm's Gram GEMMs cost at most a quarter of
       the update's (``4 J r (m + n) <= m n``): cuBLAS adds ``alpha At^T Bt`` into ``param`` (beta = 1, float32
       accumulation, one rounding) and the norm is ``||At^T Bt||^2 = sum((At At^T) * (Bt Bt^T))``; the change is
       reported as ``alpha^2 ||G||^2`` (it differs from the measured one by rounding only).
    3. Otherwise ``G`` is built in float32 (``lowrank_gradient_triton``) and one ``optim.ascent_step`` pass applies it.

    With ``round_keys`` (a bf16 ``param``, no ``copy``) the result is rounded stochastically: path 1 in its epilogue,
    path 3 by the twin's rounding; path 2 (cuBLAS rounds to nearest) is not taken.
    """
    kw = dict(seed=seed, param_index=param_index, t_eff=t_eff, noise_ids=noise_ids, weights=weights, m=m, n=n,
              rank=rank, noise=noise, factor_dtype=factor_dtype, chunk_elements=chunk_elements,
              factor_block=factor_block)  # fmt: skip
    ids, w = _check_update_args(seed, param_index, t_eff, noise_ids, weights)
    code = noise_code(noise)
    for name, v in (("m", m), ("n", n), ("rank", rank)):
        check_int(name, v, 1)
    if param.shape != (m, n):
        raise ValueError(f"param has shape {tuple(param.shape)}; expected ({m}, {n})")
    if round_keys is not None:
        optim.check_stochastic_target(param, copy)
    J = ids.numel()
    one_chunk = 0 < J <= _chunk_size(J, rank, m, n, chunk_elements)
    shape = _gemm_shape(gemm_shape, m, n, factor_dtype, w.device)
    if one_chunk and shape is not None and param.dtype in FLOAT_DTYPES and param.stride(1) == 1:
        ((at, bt),) = _factor_chunks(
            ids, w, seed, param_index, t_eff, m, n, rank, code, factor_dtype, chunk_elements, factor_block
        )
        sq = _addmm(at, bt, param, alpha=alpha, beta=beta, read_c=True, copy=copy, shape=shape, round_keys=round_keys)
        return sq[0], sq[1]
    # The Gram matrices cost 2 (J r)^2 (m + n) FLOPs against the update's 2 J r m n: take them up to a quarter.
    gram = one_chunk and J * rank <= gram_max and 4 * J * rank * (m + n) <= m * n and beta == 1 and copy is None
    gram = gram and not (param.dtype == torch.float32 and factor_dtype in LOW_PRECISION) and round_keys is None
    if gram and param.dtype in FLOAT_DTYPES and not (INTERPRET and param.dtype != torch.float32):
        ((at, bt),) = _factor_chunks(
            ids, w, seed, param_index, t_eff, m, n, rank, code, param.dtype, chunk_elements, factor_block
        )
        sq = (_mm_f32(at, at.T, None) * _mm_f32(bt, bt.T, None)).sum()
        param.addmm_(at.T.to(param.dtype), bt.to(param.dtype), alpha=alpha)  # no-op casts unless fp16
        return sq, sq * float(alpha) ** 2
    G, sq = lowrank_gradient_triton(gemm_shape=gemm_shape, **kw)
    if round_keys is not None:
        return sq, optim.ascent_step_reference(param, G, alpha=alpha, beta=beta, round_keys=round_keys)
    step = optim.ascent_step_triton if optim.steppable(param, copy) else optim.ascent_step_reference
    return sq, step(param, G, alpha=alpha, beta=beta, copy=copy)


def lowrank_adam_triton(
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
    chunk_elements: int = CHUNK_ELEMENTS,
    gemm_shape: GemmShape | str | None = "auto",
    factor_block: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of ``lowrank_adam_reference``: one Adam step of ``param`` on ``G = sum_j w_j A_j B_j^T``.

    With bf16 factors, one chunk of them, contiguous tensors and a matrix that fills the GPU with tiles, Adam runs in
    the GEMM's epilogue (``lowrank_adam_kernel``): ``G`` never reaches memory, and the parameter, its moments and
    the copy are read and written once. Otherwise ``G`` is built (``lowrank_gradient_triton``) and
    ``optim.adam_step`` applies it.
    """
    kw = dict(seed=seed, param_index=param_index, t_eff=t_eff, noise_ids=noise_ids, weights=weights, m=m, n=n,
              rank=rank, noise=noise, factor_dtype=factor_dtype, chunk_elements=chunk_elements,
              factor_block=factor_block)  # fmt: skip
    ids, w = _check_update_args(seed, param_index, t_eff, noise_ids, weights)
    code = noise_code(noise)
    for name, v in (("m", m), ("n", n), ("rank", rank)):
        check_int(name, v, 1)
    if param.shape != (m, n):
        raise ValueError(f"param has shape {tuple(param.shape)}; expected ({m}, {n})")
    optim.check_step_args(param, None, copy, None, exp_avg, exp_avg_sq)
    J = ids.numel()
    one_chunk = 0 < J <= _chunk_size(J, rank, m, n, chunk_elements)
    shape = _gemm_shape(gemm_shape, m, n, factor_dtype, w.device, ADAM_GEMM_SHAPES)
    if one_chunk and shape is not None and optim.steppable(param, exp_avg, exp_avg_sq, copy):
        ((at, bt),) = _factor_chunks(
            ids, w, seed, param_index, t_eff, m, n, rank, code, factor_dtype, chunk_elements, factor_block
        )
        sq = _adam_gemm(at, bt, param, exp_avg, exp_avg_sq, hyper, copy=copy, shape=shape)
        return sq[0], sq[1]
    G, sq = lowrank_gradient_triton(gemm_shape=gemm_shape, **kw)
    fits = optim.steppable(param, exp_avg, exp_avg_sq, copy)
    step = optim.adam_step_triton if fits else optim.adam_step_reference
    return sq, step(param, G, exp_avg, exp_avg_sq, hyper, copy=copy)


def vector_update_triton(
    *,
    seed: int,
    param_index: int,
    t_eff: int,
    noise_ids: torch.Tensor,
    weights: torch.Tensor,
    numel: int,
    noise: str = "gaussian",
) -> torch.Tensor:
    """Triton version of ``vector_update_reference``: ``sum_j w_j eps_j``, ``(numel,)`` float32."""
    ids, w = _check_update_args(seed, param_index, t_eff, noise_ids, weights)
    code = noise_code(noise)
    check_int("numel", numel, 0)
    J = ids.numel()
    if J == 0 or numel == 0:
        return torch.zeros(numel, dtype=torch.float32, device=w.device)
    block, pj = VECTOR_BLOCK, VECTOR_PJ
    e_blocks = triton.cdiv(numel, block)
    # Split the noise indices too, so that several programs per SM share the work (a short serial loop each).
    programs = VECTOR_PROGRAMS_PER_SM * num_sms(w.device.index or 0)
    split = min(triton.cdiv(J, pj), max(1, triton.cdiv(programs, e_blocks)))
    j_per_split = triton.cdiv(triton.cdiv(J, split), pj) * pj
    split = triton.cdiv(J, j_per_split)
    out = torch.empty(split, numel, dtype=torch.float32, device=w.device)
    vector_update_kernel[(e_blocks, split)](
        out, ids, w, J, numel, j_per_split, as_i32(seed), as_i32(param_index), as_i32(t_eff),
        NOISE=code, FAST_MATH=FAST_MATH, PJ=pj, BLOCK=block, num_warps=4,
    )  # fmt: skip
    return out[0] if split == 1 else out.sum(0)


# --- pure-torch twins --------------------------------------------------------------------------------------------


def _chunks(num: int, per_item: int, chunk_elements: int):
    size = max(1, chunk_elements // max(per_item, 1))
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
    chunk_elements: int = REFERENCE_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """``G = sum_j w_j A_j B_j^T`` with the factors regenerated in chunks of noise indices.

    Args:
        noise_ids: ``(J,)`` int64 noise indices; weights: ``(J,)`` float32.
        factor_dtype: the parameter's dtype; the kernels use bf16 factors for bf16/fp16, the twin always float32.
        chunk_elements: bound on the factor elements generated at once.
    Returns:
        ``(m, n)`` float32 on ``weights.device``.
    """
    device = weights.device
    G = torch.zeros(m, n, dtype=torch.float32, device=device)
    for lo, hi in _chunks(noise_ids.numel(), rank * (m + n), chunk_elements):
        ids = noise_ids[lo:hi]
        A = factor_noise(seed, param_index, t_eff, ids, m, rank, STREAM_A, noise, device)  # (c, m, r)
        B = factor_noise(seed, param_index, t_eff, ids, n, rank, STREAM_B, noise, device)  # (c, n, r)
        A = A * weights[lo:hi].to(torch.float32).view(-1, 1, 1)
        # Stack the chunk's factors along one (c*r) axis: one GEMM.
        A_stack = A.permute(1, 0, 2).reshape(m, -1)
        B_stack = B.permute(1, 0, 2).reshape(n, -1)
        G.addmm_(A_stack, B_stack.T)
    return G


def lowrank_gradient_reference(
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
    chunk_elements: int = REFERENCE_CHUNK_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale * G, ||G||_F^2)``: ``G`` of ``lowrank_update_reference`` scaled and cast to ``dtype`` (e.g.
    ``scale=-1`` and the parameter's dtype: the ``p.grad`` of a loss), and its squared norm before both (0-d
    float32)."""
    G = lowrank_update_reference(
        seed=seed, param_index=param_index, t_eff=t_eff, noise_ids=noise_ids, weights=weights, m=m, n=n, rank=rank,
        noise=noise, factor_dtype=factor_dtype, chunk_elements=chunk_elements,
    )  # fmt: skip
    sq = G.square().sum()
    return (G if scale == 1 else G * scale).to(dtype), sq


def lowrank_apply_reference(
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
    chunk_elements: int = REFERENCE_CHUNK_ELEMENTS,
    gram_max: int = APPLY_GRAM_MAX,
    gemm_shape: GemmShape | str | None = "auto",
    round_keys: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``param = beta * param + alpha * G`` in place (``G`` of ``lowrank_update_reference``, built in float32; one
    rounding to ``param``'s dtype), and ``copy`` = the result rounded to ``copy``'s dtype when given.

    Args:
        param: ``(m, n)``; beta: ``1 - lr * weight_decay`` for decayed plain ascent (1: none).
        copy: e.g. the bf16 parameter whose float32 master copy ``param`` is.
        gram_max, gemm_shape: only matter to the kernels.
        round_keys: round stochastically into a bf16 ``param`` (no ``copy``) with these keys
            (``rounding.round_keys``); None: to nearest.
    Returns:
        ``(||G||_F^2, ||param_new - param_old||_F^2)``, 0-d float32 each.
    """
    G = lowrank_update_reference(
        seed=seed, param_index=param_index, t_eff=t_eff, noise_ids=noise_ids, weights=weights, m=m, n=n, rank=rank,
        noise=noise, factor_dtype=factor_dtype, chunk_elements=chunk_elements,
    )  # fmt: skip
    return G.square().sum(), optim.ascent_step_reference(
        param, G, alpha=alpha, beta=beta, copy=copy, round_keys=round_keys
    )


def lowrank_adam_reference(
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
    chunk_elements: int = REFERENCE_CHUNK_ELEMENTS,
    gemm_shape: GemmShape | str | None = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``torch.optim.Adam`` step of ``param`` (``(m, n)``) on the ES gradient ``G`` of
    ``lowrank_update_reference``: ``optim.adam_step_reference(param, G, exp_avg, exp_avg_sq, hyper, copy=copy)``.

    Returns:
        ``(||G||_F^2, ||param_new - param_old||_F^2)``, 0-d float32 each. ``gemm_shape`` only matters to the kernels.
    """
    G = lowrank_update_reference(
        seed=seed, param_index=param_index, t_eff=t_eff, noise_ids=noise_ids, weights=weights, m=m, n=n, rank=rank,
        noise=noise, factor_dtype=factor_dtype, chunk_elements=chunk_elements,
    )  # fmt: skip
    return G.square().sum(), optim.adam_step_reference(param, G, exp_avg, exp_avg_sq, hyper, copy=copy)


def vector_update_reference(
    *,
    seed: int,
    param_index: int,
    t_eff: int,
    noise_ids: torch.Tensor,
    weights: torch.Tensor,
    numel: int,
    noise: str = "gaussian",
    chunk_elements: int = REFERENCE_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """``g = sum_j w_j eps_j`` for a non-matrix parameter, flattened: ``(numel,)`` float32.

    ``chunk_elements`` bounds the noise generated at once (the twin's own: the kernel streams the noise).
    """
    device = weights.device
    g = torch.zeros(numel, dtype=torch.float32, device=device)
    for lo, hi in _chunks(noise_ids.numel(), numel, chunk_elements):
        eps = vector_noise(seed, param_index, t_eff, noise_ids[lo:hi], numel, noise, device)  # (c, numel)
        g.add_(weights[lo:hi].to(torch.float32) @ eps)
    return g
