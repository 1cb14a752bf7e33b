"""Perturbed linear forward: ``y = x W^T + b + (sigma s/sqrt r)(x B_j) A_j^T + sigma s eps_j`` for every row.

``perturbed_linear_triton`` (CUDA) and its pure-torch twin ``perturbed_linear_reference`` (any device) take the same
arguments (plus the kernel's launch shape, and the twin's ``noise_source``) and give the same result to float
rounding; ``eggroll_rl.kernels.perturbed_linear`` picks one.

The kernel, ``lowrank_delta_kernel``, writes ``D = (sigma s/sqrt r)(x B_j) A_j^T + b + sigma s eps_j``. The
perturbation of a row needs only that row: ``u = x B_j`` (a length-``n`` dot per rank) and ``u A_j^T`` (a
length-``m`` outer product). One program owns ``P`` rows (or ``P`` row pairs): it generates ``B_j`` while it reads
``x`` once, then generates ``A_j`` and the bias noise while it writes ``D`` once. cuBLAS then adds ``x W^T`` into
``D`` in place (``addmm`` with ``beta = 1``: reading ``C`` rides in the GEMM's epilogue, nearly free when the GEMM
is compute bound). Compared with "cuBLAS first, then a pass over ``y``", this saves one read of ``y`` and one
launch, and the noise of a pair of rows that share ``j`` (antithetic members ``2q``, ``2q+1``) is generated once.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..noise import STREAM_A, STREAM_B, factor_noise, member_noise_and_sign, unique_noise_ids, vector_noise
from ..validation import check_int
from ._launch import FAST_MATH, FLOAT_DTYPES, INTERPRET, as_i32, check_ids, noise_code, tl, triton
from .philox import (
    FACTOR_SPANS,
    VECTOR_SPANS,
    column_block,
    fast_pair_block,
    pick_pair,
    pick_word,
    quad_signs,
    sign_spans,
    sign_words,
    sign_words_next,
    vector_block,
    vector_word,
)

# Launch shape of the delta kernel, from the sweep of benchmarks/tune_delta.py on the H100 (2026-11-24): layers with
# a side of at least WIDE_FEATURES get WIDE_WARPS warps, others NARROW_WARPS; feature blocks and row tiles hold
# 4 * 32 * warps elements (a quad per thread: one Philox call per thread per Gaussian noise block, per pair of
# Gaussian-fast columns; Rademacher blocks of a span or more keep each thread's call for 8 spans, noise.py); at most
# MAX_ROWS_PER_PROGRAM rows a program.
WIDE_FEATURES = 4096
WIDE_WARPS = 8
NARROW_WARPS = 4
MAX_ROWS_PER_PROGRAM = 16
INTERPRET_BLOCK_MAX = 32  # the interpreter runs small blocks unless told (fast on the CPU, same values)
_AUTOCAST_DEVICES = ("cpu", "cuda")  # device types torch.autocast knows (others raise when asked)


@triton.jit
def _x_block(x_ptr, rows, mask, stride_xr, stride_xk, k_start, K, BLOCK_K: tl.constexpr):
    ks = k_start + tl.arange(0, BLOCK_K)
    ptrs = x_ptr + rows[:, None] * stride_xr + ks[None, :] * stride_xk
    return tl.load(ptrs, mask=mask[:, None] & (ks < K)[None, :], other=0.0).to(tl.float32)


@triton.jit
def _b_dots(
    xa, xb, k_start, aa0, aa1, aa2, aa3, ab0, ab1, ab2, ab3, k0, kw, j, t, w0, w1, w2, w3,
    RANK: tl.constexpr, PAIRED: tl.constexpr, NOISE: tl.constexpr, FAST_MATH: tl.constexpr, P: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Accumulate ``x * B[:, c]`` elementwise for rank columns ``c < RANK <= 4`` of one block of ``K``
    (Rademacher: from the words ``w0 .. w3`` of the block's calls, one per column; Gaussian-fast: one call per
    pair of columns)."""
    span = sign_spans(k_start, BLOCK_K // 4)
    if NOISE == 2:
        f0, f1 = fast_pair_block(k0, kw, j, t, 1, 0, k_start, P, BLOCK_K, FAST_MATH)
        if RANK > 2:
            f2, f3 = fast_pair_block(k0, kw, j, t, 1, 1, k_start, P, BLOCK_K, FAST_MATH)
    if NOISE == 0:
        bn = column_block(k0, kw, j, t, 1, 0, k_start, P, BLOCK_K, NOISE, FAST_MATH)
    elif NOISE == 2:
        bn = f0
    else:
        bn = quad_signs(w0, span, P, BLOCK_K // 4)
    aa0 += xa * bn
    if PAIRED:
        ab0 += xb * bn
    if RANK > 1:
        if NOISE == 0:
            bn = column_block(k0, kw, j, t, 1, 1, k_start, P, BLOCK_K, NOISE, FAST_MATH)
        elif NOISE == 2:
            bn = f1
        else:
            bn = quad_signs(w1, span, P, BLOCK_K // 4)
        aa1 += xa * bn
        if PAIRED:
            ab1 += xb * bn
    if RANK > 2:
        if NOISE == 0:
            bn = column_block(k0, kw, j, t, 1, 2, k_start, P, BLOCK_K, NOISE, FAST_MATH)
        elif NOISE == 2:
            bn = f2
        else:
            bn = quad_signs(w2, span, P, BLOCK_K // 4)
        aa2 += xa * bn
        if PAIRED:
            ab2 += xb * bn
    if RANK > 3:
        if NOISE == 0:
            bn = column_block(k0, kw, j, t, 1, 3, k_start, P, BLOCK_K, NOISE, FAST_MATH)
        elif NOISE == 2:
            bn = f3
        else:
            bn = quad_signs(w3, span, P, BLOCK_K // 4)
        aa3 += xa * bn
        if PAIRED:
            ab3 += xb * bn
    return aa0, aa1, aa2, aa3, ab0, ab1, ab2, ab3


@triton.jit
def _d_block(
    d_ptr, bias_ptr, rows_a, rows_b, mask_a, mask_b, m_start, M, stride_dr, stride_dm,
    ua0, ua1, ua2, ua3, ub0, ub1, ub2, ub3, eps_a, eps_b, k0, kw, kb, j, t, w0, w1, w2, w3, v0, v1, v2, v3,
    RANK: tl.constexpr, PAIRED: tl.constexpr, NOISE: tl.constexpr, FAST_MATH: tl.constexpr,
    HAS_BIAS: tl.constexpr, PERTURB_W: tl.constexpr, PERTURB_B: tl.constexpr, P: tl.constexpr,
    BLOCK_M: tl.constexpr,
):  # fmt: skip
    """Write one block of ``D = sum_c u_c A[:, c]^T + b + sigma s eps`` (rank columns ``c < RANK <= 4``;
    Rademacher: from the words of the block's calls, ``w0 .. w3`` for ``A``, ``v0 .. v3`` for ``eps``;
    Gaussian-fast: one call per pair of columns of ``A``)."""
    span = sign_spans(m_start, BLOCK_M // 4)
    ms = m_start + tl.arange(0, BLOCK_M)
    mmask = ms < M
    d_a = tl.zeros([P, BLOCK_M], dtype=tl.float32)
    d_b = tl.zeros([P, BLOCK_M], dtype=tl.float32)
    if HAS_BIAS:
        b = tl.load(bias_ptr + ms, mask=mmask, other=0.0).to(tl.float32)
        if NOISE == 0:
            d_a += b[None, :]
            if PAIRED:
                d_b += b[None, :]
        else:  # start from b itself: no adds of zero (which the compiler must keep, for -0.0)
            d_a = tl.broadcast_to(b[None, :], [P, BLOCK_M])
            d_b = d_a
    if PERTURB_W:
        if NOISE == 2:
            f0, f1 = fast_pair_block(k0, kw, j, t, 0, 0, m_start, P, BLOCK_M, FAST_MATH)
            if RANK > 2:
                f2, f3 = fast_pair_block(k0, kw, j, t, 0, 1, m_start, P, BLOCK_M, FAST_MATH)
        if NOISE == 0:
            an = column_block(k0, kw, j, t, 0, 0, m_start, P, BLOCK_M, NOISE, FAST_MATH)
        elif NOISE == 2:
            an = f0
        else:
            an = quad_signs(w0, span, P, BLOCK_M // 4)
        d_a += ua0[:, None] * an
        if PAIRED:
            d_b += ub0[:, None] * an
        if RANK > 1:
            if NOISE == 0:
                an = column_block(k0, kw, j, t, 0, 1, m_start, P, BLOCK_M, NOISE, FAST_MATH)
            elif NOISE == 2:
                an = f1
            else:
                an = quad_signs(w1, span, P, BLOCK_M // 4)
            d_a += ua1[:, None] * an
            if PAIRED:
                d_b += ub1[:, None] * an
        if RANK > 2:
            if NOISE == 0:
                an = column_block(k0, kw, j, t, 0, 2, m_start, P, BLOCK_M, NOISE, FAST_MATH)
            elif NOISE == 2:
                an = f2
            else:
                an = quad_signs(w2, span, P, BLOCK_M // 4)
            d_a += ua2[:, None] * an
            if PAIRED:
                d_b += ub2[:, None] * an
        if RANK > 3:
            if NOISE == 0:
                an = column_block(k0, kw, j, t, 0, 3, m_start, P, BLOCK_M, NOISE, FAST_MATH)
            elif NOISE == 2:
                an = f3
            else:
                an = quad_signs(w3, span, P, BLOCK_M // 4)
            d_a += ua3[:, None] * an
            if PAIRED:
                d_b += ub3[:, None] * an
    if PERTURB_B:
        if NOISE != 1:
            eps = vector_block(k0, kb, j, t, m_start, P, BLOCK_M, NOISE, FAST_MATH)
        else:
            eps = quad_signs(vector_word(v0, v1, v2, v3, span), span, P, BLOCK_M // 4)
        d_a += eps_a[:, None] * eps
        if PAIRED:
            d_b += eps_b[:, None] * eps
    out_a = d_ptr + rows_a[:, None] * stride_dr + ms[None, :] * stride_dm
    tl.store(out_a, d_a.to(d_ptr.dtype.element_ty), mask=mask_a[:, None] & mmask[None, :])
    if PAIRED:
        out_b = d_ptr + rows_b[:, None] * stride_dr + ms[None, :] * stride_dm
        tl.store(out_b, d_b.to(d_ptr.dtype.element_ty), mask=mask_b[:, None] & mmask[None, :])


@triton.jit(do_not_specialize=["seed", "w_index", "b_index", "t_eff"])
def lowrank_delta_kernel(
    # pointers
    x_ptr,  # (R, K) input rows
    ids_ptr,  # (R,) int64 member of each row
    bias_ptr,  # (M,) or dummy
    d_ptr,  # (R, M) output delta (+ bias)
    # dimensions
    R,
    M,
    K,
    # strides
    stride_xr,
    stride_xk,
    stride_dr,
    stride_dm,
    # noise contract
    seed,
    w_index,
    b_index,
    t_eff,
    scale,  # sigma / sqrt(rank)
    sigma,
    # meta-parameters
    RANK: tl.constexpr,
    RP: tl.constexpr,  # next power of two >= RANK
    ANTITHETIC: tl.constexpr,
    PAIRED: tl.constexpr,  # rows 2q and 2q+1 share their noise index: generate it once for both
    NOISE: tl.constexpr,
    FAST_MATH: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    PERTURB_W: tl.constexpr,
    PERTURB_B: tl.constexpr,
    P: tl.constexpr,  # rows (PAIRED: row pairs) per program
    BLOCK_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    pid = tl.program_id(0)
    k0 = seed.to(tl.uint32, bitcast=True)
    t = t_eff.to(tl.uint32, bitcast=True)
    STEP: tl.constexpr = 2 if PAIRED else 1

    # -- rows, noise index, sign --
    rows_a = (pid * P + tl.arange(0, P)) * STEP
    mask_a = rows_a < R
    mem_a = tl.load(ids_ptr + rows_a, mask=mask_a, other=0)
    if ANTITHETIC:
        j = mem_a // 2
        s_a = 1.0 - 2.0 * (mem_a % 2).to(tl.float32)
    else:
        j = mem_a
        s_a = tl.full([P], 1.0, tl.float32)
    if PAIRED:
        rows_b = rows_a + 1
        mask_b = rows_b < R
        mem_b = tl.load(ids_ptr + rows_b, mask=mask_b, other=0)
        if ANTITHETIC:
            s_b = 1.0 - 2.0 * (mem_b % 2).to(tl.float32)
        else:
            s_b = tl.full([P], 1.0, tl.float32)
    rcols = tl.arange(0, RP)

    # -- phase 1: u = (sigma s / sqrt r) x B_j, B generated while x is read once --
    # RANK <= 4 (SPLIT): one register accumulator per rank column, reduced once after the loop (no per-block
    # cross-warp reduction); larger ranks: a per-block reduction into a (P, RP) tensor.
    SPLIT: tl.constexpr = RANK <= 4
    u_a = tl.zeros([P, RP], dtype=tl.float32)
    u_b = tl.zeros([P, RP], dtype=tl.float32)
    ua0 = tl.zeros([P], dtype=tl.float32)
    ua1 = ua0
    ua2 = ua0
    ua3 = ua0
    ub0 = ua0
    ub1 = ua0
    ub2 = ua0
    ub3 = ua0
    if PERTURB_W:
        kw = w_index.to(tl.uint32, bitcast=True)
        if SPLIT:
            aa0 = tl.zeros([P, BLOCK_K], dtype=tl.float32)
            aa1 = aa0
            aa2 = aa0
            aa3 = aa0
            ab0 = aa0
            ab1 = aa0
            ab2 = aa0
            ab3 = aa0
            if not PAIRED:
                rows_b = rows_a
                mask_b = mask_a
            # Rademacher: the words of this thread's calls, one per quad, kept across blocks (sign_words_next)
            w0 = tl.zeros([P, BLOCK_K // 4], dtype=tl.uint32)
            w1 = w0
            w2 = w0
            w3 = w0
            for k_start in range(0, K, BLOCK_K):
                xa = _x_block(x_ptr, rows_a, mask_a, stride_xr, stride_xk, k_start, K, BLOCK_K)
                xb = xa
                if PAIRED:
                    xb = _x_block(x_ptr, rows_b, mask_b, stride_xr, stride_xk, k_start, K, BLOCK_K)
                if NOISE == 1:
                    w0, w1, w2, w3 = sign_words_next(
                        w0, w1, w2, w3, k0, kw, j, t, 1 << 16, k_start, P, BLOCK_K // 4, FACTOR_SPANS
                    )
                aa0, aa1, aa2, aa3, ab0, ab1, ab2, ab3 = _b_dots(
                    xa, xb, k_start, aa0, aa1, aa2, aa3, ab0, ab1, ab2, ab3, k0, kw, j, t, w0, w1, w2, w3,
                    RANK, PAIRED, NOISE, FAST_MATH, P, BLOCK_K,
                )  # fmt: skip
            ua0 = tl.sum(aa0, axis=1) * (scale * s_a)
            ua1 = tl.sum(aa1, axis=1) * (scale * s_a)
            ua2 = tl.sum(aa2, axis=1) * (scale * s_a)
            ua3 = tl.sum(aa3, axis=1) * (scale * s_a)
            if PAIRED:
                ub0 = tl.sum(ab0, axis=1) * (scale * s_b)
                ub1 = tl.sum(ab1, axis=1) * (scale * s_b)
                ub2 = tl.sum(ab2, axis=1) * (scale * s_b)
                ub3 = tl.sum(ab3, axis=1) * (scale * s_b)
        else:
            for k_start in range(0, K, BLOCK_K):
                ks = k_start + tl.arange(0, BLOCK_K)
                kmask = ks < K
                xa = tl.load(
                    x_ptr + rows_a[:, None] * stride_xr + ks[None, :] * stride_xk,
                    mask=mask_a[:, None] & kmask[None, :],
                    other=0.0,
                ).to(tl.float32)
                if PAIRED:
                    xb = tl.load(
                        x_ptr + rows_b[:, None] * stride_xr + ks[None, :] * stride_xk,
                        mask=mask_b[:, None] & kmask[None, :],
                        other=0.0,
                    ).to(tl.float32)
                for c in tl.static_range(RANK):
                    if NOISE == 0:
                        bnoise = column_block(k0, kw, j, t, 1, c, k_start, P, BLOCK_K, NOISE, FAST_MATH)
                    elif NOISE == 2:
                        if c % 2 == 0:  # one call per quad for the pair's two columns
                            f0, f1 = fast_pair_block(k0, kw, j, t, 1, c // 2, k_start, P, BLOCK_K, FAST_MATH)
                        bnoise = pick_pair(f0, f1, c % 2)
                    else:
                        if c % 4 == 0:  # one call per quad for the group's four columns (no reuse across blocks)
                            g0, g1, g2, g3 = sign_words(
                                k0, kw, j, t, (1 << 16) | (c // 4), k_start, P, BLOCK_K // 4, FACTOR_SPANS
                            )
                        span = sign_spans(k_start, BLOCK_K // 4)
                        bnoise = quad_signs(pick_word(g0, g1, g2, g3, c % 4), span, P, BLOCK_K // 4)
                    sel = (rcols == c)[None, :]
                    u_a += tl.where(sel, tl.sum(xa * bnoise, axis=1)[:, None], 0.0)
                    if PAIRED:
                        u_b += tl.where(sel, tl.sum(xb * bnoise, axis=1)[:, None], 0.0)
            u_a = u_a * (scale * s_a)[:, None]
            if PAIRED:
                u_b = u_b * (scale * s_b)[:, None]

    # -- phase 2: D = u A_j^T + b + sigma s eps_j, A and eps generated while D is written once --
    kb = b_index.to(tl.uint32, bitcast=True)
    if SPLIT:
        if not PAIRED:
            rows_b = rows_a
            mask_b = mask_a
            s_b = s_a
        if not PERTURB_W:
            kw = kb
        w0 = tl.zeros([P, BLOCK_M // 4], dtype=tl.uint32)  # Rademacher words of A, then of eps
        w1 = w0
        w2 = w0
        w3 = w0
        v0 = w0
        v1 = w0
        v2 = w0
        v3 = w0
        for m_start in range(0, M, BLOCK_M):
            if NOISE == 1:
                if PERTURB_W:
                    w0, w1, w2, w3 = sign_words_next(
                        w0, w1, w2, w3, k0, kw, j, t, 0, m_start, P, BLOCK_M // 4, FACTOR_SPANS
                    )
                if PERTURB_B:
                    v0, v1, v2, v3 = sign_words_next(
                        v0, v1, v2, v3, k0, kb, j, t, 2 << 16, m_start, P, BLOCK_M // 4, VECTOR_SPANS
                    )
            _d_block(
                d_ptr, bias_ptr, rows_a, rows_b, mask_a, mask_b, m_start, M, stride_dr, stride_dm,
                ua0, ua1, ua2, ua3, ub0, ub1, ub2, ub3, sigma * s_a, sigma * s_b, k0, kw, kb, j, t,
                w0, w1, w2, w3, v0, v1, v2, v3,
                RANK, PAIRED, NOISE, FAST_MATH, HAS_BIAS, PERTURB_W, PERTURB_B, P, BLOCK_M,
            )  # fmt: skip
    else:
        for m_start in range(0, M, BLOCK_M):
            ms = m_start + tl.arange(0, BLOCK_M)
            mmask = ms < M
            d_a = tl.zeros([P, BLOCK_M], dtype=tl.float32)
            d_b = tl.zeros([P, BLOCK_M], dtype=tl.float32)
            if PERTURB_W:
                for c in tl.static_range(RANK):
                    if NOISE == 0:
                        anoise = column_block(k0, kw, j, t, 0, c, m_start, P, BLOCK_M, NOISE, FAST_MATH)
                    elif NOISE == 2:
                        if c % 2 == 0:
                            f0, f1 = fast_pair_block(k0, kw, j, t, 0, c // 2, m_start, P, BLOCK_M, FAST_MATH)
                        anoise = pick_pair(f0, f1, c % 2)
                    else:
                        if c % 4 == 0:
                            g0, g1, g2, g3 = sign_words(k0, kw, j, t, c // 4, m_start, P, BLOCK_M // 4, FACTOR_SPANS)
                        span = sign_spans(m_start, BLOCK_M // 4)
                        anoise = quad_signs(pick_word(g0, g1, g2, g3, c % 4), span, P, BLOCK_M // 4)
                    sel = (rcols == c)[None, :]
                    d_a += tl.sum(tl.where(sel, u_a, 0.0), axis=1)[:, None] * anoise
                    if PAIRED:
                        d_b += tl.sum(tl.where(sel, u_b, 0.0), axis=1)[:, None] * anoise
            if HAS_BIAS:
                b = tl.load(bias_ptr + ms, mask=mmask, other=0.0).to(tl.float32)
                d_a += b[None, :]
                if PAIRED:
                    d_b += b[None, :]
            if PERTURB_B:
                eps = vector_block(k0, kb, j, t, m_start, P, BLOCK_M, NOISE, FAST_MATH)
                d_a += (sigma * s_a)[:, None] * eps
                if PAIRED:
                    d_b += (sigma * s_b)[:, None] * eps
            tl.store(
                d_ptr + rows_a[:, None] * stride_dr + ms[None, :] * stride_dm,
                d_a.to(d_ptr.dtype.element_ty),
                mask=mask_a[:, None] & mmask[None, :],
            )
            if PAIRED:
                tl.store(
                    d_ptr + rows_b[:, None] * stride_dr + ms[None, :] * stride_dm,
                    d_b.to(d_ptr.dtype.element_ty),
                    mask=mask_b[:, None] & mmask[None, :],
                )


# --- what the launcher and the twin share ------------------------------------------------------------------------


def linear_operands(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
    """``(x, weight, bias, autocast)`` in the dtype ``F.linear`` computes in.

    Under ``torch.autocast`` for ``x``'s device, the float16/bfloat16/float32 operands are cast to the autocast
    dtype, as autocast does for ``F.linear`` (the result is then in that dtype); ``autocast`` says so, and the
    caller runs the rest with autocast off so that its float32 parts stay float32. Otherwise the three must have
    one dtype (``F.linear`` refuses mixed dtypes too): a TypeError says what to do.
    """
    autocast = x.device.type in _AUTOCAST_DEVICES and torch.is_autocast_enabled(x.device.type)
    if autocast:
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight, bias = (t.to(dtype) if t is not None and t.dtype in FLOAT_DTYPES else t for t in (x, weight, bias))
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(
                f"perturbed linear: {name} has dtype {t.dtype} but the input x has dtype {x.dtype}; a layer's "
                "input and parameters must share a dtype: cast the model or the input (model.to(x.dtype)), or run "
                "the forward under torch.autocast, which computes the layer in the autocast dtype"
            )
    return x, weight, bias, autocast


def _autocast_off(autocast: bool, device_type: str):
    return torch.autocast(device_type, enabled=False) if autocast else contextlib.nullcontext()


def check_pairs(member_ids: torch.Tensor, antithetic: bool) -> None:
    """Raise unless rows ``2q`` and ``2q+1`` share their noise index, as ``paired=True`` promises (a host sync)."""
    full = member_ids.shape[0] // 2 * 2
    j, _ = member_noise_and_sign(member_ids[:full], antithetic)
    bad = (j[0::2] != j[1::2]).nonzero()
    if bad.numel():
        q = int(bad[0, 0])
        a, b = (int(v) for v in member_ids[2 * q : 2 * q + 2])
        raise ValueError(
            f"paired=True promises that rows 2q and 2q+1 share their noise index (antithetic members 2j, 2j+1 in "
            f"order), but rows {2 * q} and {2 * q + 1} are members {a} and {b} (noise indices {int(j[2 * q])} and "
            f"{int(j[2 * q + 1])}, antithetic={antithetic}); pass paired=False"
        )


# --- launcher ----------------------------------------------------------------------------------------------------


def delta_launch_shape(
    K: int, M: int, block_max: int | None = None, tile: int | None = None, num_warps: int | None = None
) -> tuple[int, int, int]:
    """``(block_max, tile, num_warps)`` of the delta kernel for a ``K -> M`` layer; None picks the default."""
    # A tile of 4 elements per thread lets each thread make exactly one Philox call (4 words = 4 consecutive
    # elements) per noise block, so the noise lands in the layout of the vector loads/stores with no shuffle; the
    # Rademacher signs of a quad (4 consecutive rows, 4 columns, 8 spans) come from one call in the same layout.
    # Wide layers: more warps (benchmarks/NOTES_kernels.md, session 2 and 3).
    if num_warps is None:
        num_warps = WIDE_WARPS if max(K, M) >= WIDE_FEATURES else NARROW_WARPS
    block_max = 4 * 32 * num_warps if block_max is None else block_max
    tile = 4 * 32 * num_warps if tile is None else tile
    return block_max, tile, num_warps


def delta_blocks(
    K: int, M: int, block_max: int | None = None, tile: int | None = None, num_warps: int | None = None,
    interpret: bool = False,
) -> tuple[int, int, int, int]:  # fmt: skip
    """``(BLOCK_K, BLOCK_M, P, num_warps)`` of a ``lowrank_delta_kernel`` launch for a ``K -> M`` layer
    (``delta_launch_shape``'s arguments; ``interpret``: the interpreter's small blocks unless the blocks were given)."""
    default_blocks = block_max is None
    block_max, tile, warps = delta_launch_shape(K, M, block_max, tile, num_warps)
    block_k = min(block_max, max(8, triton.next_power_of_2(K)))
    block_m = min(block_max, max(8, triton.next_power_of_2(M)))
    if interpret and default_blocks:
        block_k, block_m, warps = min(block_k, INTERPRET_BLOCK_MAX), min(block_m, INTERPRET_BLOCK_MAX), NARROW_WARPS
    return block_k, block_m, max(1, min(MAX_ROWS_PER_PROGRAM, tile // max(block_k, block_m))), warps


def perturbed_linear_triton(
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
    block_max: int | None = None,
    tile: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """Triton version of ``perturbed_linear_reference`` (same arguments and result); CUDA tensors.

    ``block_max``, ``tile``, ``num_warps``: the delta kernel's launch shape (``delta_launch_shape``; None = the
    tuned default).
    """
    # -- check --
    if x.dim() < 2:
        raise ValueError(f"x must be (rows, ..., in_features), got shape {tuple(x.shape)}")
    x, weight, bias, autocast = linear_operands(x, weight, bias)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x has dtype {x.dtype}; expected one of {FLOAT_DTYPES}")
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(f"weight has shape {tuple(weight.shape)}; expected (out_features, {x.shape[-1]})")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias has shape {tuple(bias.shape)}; expected ({weight.shape[0]},)")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device}; expected x's device {x.device}")
    ids = check_ids("member_ids", member_ids, x.shape[0], x.device)
    noise_code(noise)
    check_int("rank", rank, 1)
    for name, v in (("seed", seed), ("t_eff", t_eff)):
        check_int(name, v)
    if paired and check_paired:
        check_pairs(ids, antithetic)
    with _autocast_off(autocast, x.device.type):
        if weight_index is None and bias_index is None:
            return F.linear(x, weight, bias)
        return _perturbed_linear_triton(
            x, weight, bias, ids, seed=seed, weight_index=weight_index, bias_index=bias_index, t_eff=t_eff,
            sigma=sigma, rank=rank, antithetic=antithetic, noise=noise, paired=paired, block_max=block_max,
            tile=tile, num_warps=num_warps,
        )  # fmt: skip


def _perturbed_linear_triton(x, weight, bias, ids, *, paired, **kw):
    # -- one row of x2 per vector: each member's rows repeated --
    per_row = math.prod(x.shape[1:-1])
    x2 = x.reshape(-1, x.shape[-1])
    ids = ids.repeat_interleave(per_row)
    # Flattened rows 2q, 2q+1 share a noise index when each member row repeats an even number of times, or when
    # member rows 2q, 2q+1 do (then a pair that straddles two member rows straddles such a pair).
    paired = per_row % 2 == 0 or paired

    # -- launch: D = perturbation + bias, then D += x W^T --
    d = lowrank_delta(x2, weight.shape[0], bias, ids, paired=paired, **kw)
    if INTERPRET and x.dtype != torch.float32:
        # The interpreter's bf16/fp16 matmul is unreliable; the GPU path below is what runs for real.
        y = (d.float() + x2.float() @ weight.float().T).to(x.dtype)
    else:
        y = d.addmm_(x2, weight.T)
    return y.reshape(*x.shape[:-1], -1)


def lowrank_delta(
    x: torch.Tensor,
    out_features: int,
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
    block_max: int | None = None,
    tile: int | None = None,
    num_warps: int | None = None,
) -> torch.Tensor:
    """``D = (sigma s/sqrt r)(x B_j) A_j^T + b + sigma s eps_j``: the forward without ``x W^T``, one launch of
    ``lowrank_delta_kernel`` (``benchmarks/profile_delta.py`` times it alone).

    Args:
        x: ``(R, n)``; member_ids: ``(R,)`` int64, contiguous, on ``x``'s device (unchecked).
    Returns:
        ``(R, out_features)`` in ``x.dtype``.
    """
    R, K = x.shape
    M = out_features
    d = torch.empty((R, M), dtype=x.dtype, device=x.device)
    if R == 0:
        return d
    paired = bool(paired) and R % 2 == 0
    code = noise_code(noise)
    block_k, block_m, rows_per_prog, warps = delta_blocks(K, M, block_max, tile, num_warps, interpret=INTERPRET)
    units = R // 2 if paired else R
    grid = (triton.cdiv(units, rows_per_prog),)
    lowrank_delta_kernel[grid](
        x, member_ids, bias if bias is not None else d, d, R, M, K,
        x.stride(0), x.stride(1), d.stride(0), d.stride(1),
        as_i32(seed), as_i32(weight_index if weight_index is not None else 0),
        as_i32(bias_index if bias_index is not None else 0), as_i32(t_eff),
        float(sigma) / math.sqrt(rank), float(sigma),
        RANK=rank, RP=triton.next_power_of_2(rank), ANTITHETIC=bool(antithetic), PAIRED=paired,
        NOISE=code, FAST_MATH=FAST_MATH, HAS_BIAS=bias is not None,
        PERTURB_W=weight_index is not None, PERTURB_B=bias_index is not None, P=rows_per_prog,
        BLOCK_K=block_k, BLOCK_M=block_m, num_warps=warps,
    )  # fmt: skip
    return d


# --- pure-torch twin ---------------------------------------------------------------------------------------------

NoiseSource = Callable[[str, torch.Tensor], torch.Tensor]


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
    check_paired: bool = True,
    noise_source: NoiseSource | None = None,
) -> torch.Tensor:
    """``y = x W^T + b + (sigma s/sqrt r) (x B_j) A_j^T + sigma s eps_j`` for every row, in float32.

    Args:
        x: ``(R, ..., n)``; every vector of row ``i`` runs as member ``member_ids[i]``.
        weight: ``(m, n)``; bias: ``(m,)`` or None.
        member_ids: ``(R,)`` int64 member of each row.
        weight_index / bias_index: the parameters' indices ``k`` in the noise contract, or None when that
            parameter is not evolved (no noise added for it).
        paired: a promise that rows ``2q`` and ``2q+1`` share their noise index (the kernel then generates it
            once); the result does not depend on it, but a broken promise raises a ValueError.
        check_paired: check that promise (one host sync); False when the caller has checked these ids already
            (``batched_forward`` does, once per ids tensor; a CUDA graph capture cannot sync).
        noise_source: ``noise_source(what, noise_ids)`` gives ``A`` ``(U, m, r)`` (``what="A"``), ``B``
            ``(U, n, r)`` (``"B"``) or ``eps`` ``(U, m)`` (``"eps"``) of the unique noise indices ``noise_ids``,
            float32, so a caller can reuse noise it holds (the strategy keeps a ``perturb()`` block's); default:
            generated from the contract (``eggroll_rl.noise``). The kernel always generates it in registers.
    Returns:
        ``(R, ..., m)`` in ``x.dtype``, or in the autocast dtype under ``torch.autocast`` (``linear_operands``).
    """
    x, weight, bias, autocast = linear_operands(x, weight, bias)
    if paired and check_paired:
        check_pairs(torch.as_tensor(member_ids, device=x.device), antithetic)
    with _autocast_off(autocast, x.device.type):
        return _perturbed_linear_reference(
            x, weight, bias, member_ids, seed=seed, weight_index=weight_index, bias_index=bias_index, t_eff=t_eff,
            sigma=sigma, rank=rank, antithetic=antithetic, noise=noise, noise_source=noise_source,
        )  # fmt: skip


def _perturbed_linear_reference(
    x, weight, bias, member_ids, *, seed, weight_index, bias_index, t_eff, sigma, rank, antithetic, noise, noise_source
):
    y = F.linear(x, weight, bias)
    if weight_index is None and bias_index is None:
        return y
    m, n = weight.shape
    if noise_source is None:

        def noise_source(what: str, ids: torch.Tensor) -> torch.Tensor:
            if what == "eps":
                return vector_noise(seed, bias_index, t_eff, ids, m, noise, x.device)
            rows, stream = (m, STREAM_A) if what == "A" else (n, STREAM_B)
            return factor_noise(seed, weight_index, t_eff, ids, rows, rank, stream, noise, x.device)

    rows = x.shape[0]
    j, s = member_noise_and_sign(member_ids, antithetic)
    uniq, inv = unique_noise_ids(j)
    y = y.reshape(rows, -1, m).to(torch.float32)
    xr = x.reshape(rows, -1, n).to(torch.float32)
    if weight_index is not None:
        scale = (sigma / math.sqrt(rank)) * s
        num = uniq.shape[0]
        if rows % num == 0 and bool((inv == torch.arange(num, device=inv.device).repeat_interleave(rows // num)).all()):
            # Rows grouped by noise index in equal runs (a batch repeated per member): one (x B) A^T per group
            # instead of gathering every row's factors.
            t = torch.bmm(xr.reshape(num, -1, n), noise_source("B", uniq)).reshape(rows, -1, rank)
            t = t * scale[:, None, None]
            y = y + torch.bmm(t.reshape(num, -1, rank), noise_source("A", uniq).transpose(1, 2)).reshape(y.shape)
        else:
            A = noise_source("A", uniq)[inv] * scale[:, None, None]  # (R, m, r), scaled
            B = noise_source("B", uniq)[inv]  # (R, n, r)
            y = y + torch.bmm(torch.bmm(xr, B), A.transpose(1, 2))
    if bias_index is not None:
        y = y + ((sigma * s)[:, None] * noise_source("eps", uniq)[inv])[:, None, :]
    return y.to(x.dtype).reshape(*x.shape[:-1], -1)
