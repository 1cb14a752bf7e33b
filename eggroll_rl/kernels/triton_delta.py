"""Row-wise low-rank delta kernel: ``D = (sigma s/sqrt r)(x B_j) A_j^T + b + sigma s eps_j``, then ``D += x W^T``.

The perturbation of a row needs only that row: ``u = x B_j`` (a length-``n`` dot per rank) and ``u A_j^T`` (a
length-``m`` outer product). One program owns ``P`` rows (or ``P`` row pairs): it generates ``B_j`` while it reads
``x`` once, then generates ``A_j`` and the bias noise while it writes ``D`` once. cuBLAS then adds ``x W^T`` into
``D`` in place (``addmm`` with ``beta = 1``: reading ``C`` rides in the GEMM's epilogue, nearly free when the GEMM
is compute bound). Compared with "cuBLAS first, then a pass over ``y``", this saves one read of ``y`` and one
launch, and the noise of a pair of rows that share ``j`` (antithetic members ``2q``, ``2q+1``) is generated once.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_noise import noise_block

STREAM_A = tl.constexpr(0)
STREAM_B = tl.constexpr(1)
STREAM_VECTOR = tl.constexpr(2)


@triton.jit
def _x_block(x_ptr, rows, mask, stride_xr, stride_xk, k_start, K, BLOCK_K: tl.constexpr):
    ks = k_start + tl.arange(0, BLOCK_K)
    ptrs = x_ptr + rows[:, None] * stride_xr + ks[None, :] * stride_xk
    return tl.load(ptrs, mask=mask[:, None] & (ks < K)[None, :], other=0.0).to(tl.float32)


@triton.jit
def _b_dots(
    xa, xb, k_start, aa0, aa1, aa2, aa3, ab0, ab1, ab2, ab3, k0, kw, j, t,
    RANK: tl.constexpr, PAIRED: tl.constexpr, NOISE: tl.constexpr, FAST_MATH: tl.constexpr, P: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    """Accumulate ``x * B[:, c]`` elementwise for rank columns ``c < RANK <= 4`` of one block of ``K``."""
    bn = noise_block(k0, kw, j, t, (1 << 16) | 0, k_start, P, BLOCK_K, NOISE, FAST_MATH)
    aa0 += xa * bn
    if PAIRED:
        ab0 += xb * bn
    if RANK > 1:
        bn = noise_block(k0, kw, j, t, (1 << 16) | 1, k_start, P, BLOCK_K, NOISE, FAST_MATH)
        aa1 += xa * bn
        if PAIRED:
            ab1 += xb * bn
    if RANK > 2:
        bn = noise_block(k0, kw, j, t, (1 << 16) | 2, k_start, P, BLOCK_K, NOISE, FAST_MATH)
        aa2 += xa * bn
        if PAIRED:
            ab2 += xb * bn
    if RANK > 3:
        bn = noise_block(k0, kw, j, t, (1 << 16) | 3, k_start, P, BLOCK_K, NOISE, FAST_MATH)
        aa3 += xa * bn
        if PAIRED:
            ab3 += xb * bn
    return aa0, aa1, aa2, aa3, ab0, ab1, ab2, ab3


@triton.jit
def _d_block(
    d_ptr, bias_ptr, rows_a, rows_b, mask_a, mask_b, m_start, M, stride_dr, stride_dm,
    ua0, ua1, ua2, ua3, ub0, ub1, ub2, ub3, eps_a, eps_b, k0, kw, kb, j, t,
    RANK: tl.constexpr, PAIRED: tl.constexpr, NOISE: tl.constexpr, FAST_MATH: tl.constexpr,
    HAS_BIAS: tl.constexpr, PERTURB_W: tl.constexpr, PERTURB_B: tl.constexpr, P: tl.constexpr,
    BLOCK_M: tl.constexpr,
):  # fmt: skip
    """Write one block of ``D = sum_c u_c A[:, c]^T + b + sigma s eps`` (rank columns ``c < RANK <= 4``)."""
    ms = m_start + tl.arange(0, BLOCK_M)
    mmask = ms < M
    d_a = tl.zeros([P, BLOCK_M], dtype=tl.float32)
    d_b = tl.zeros([P, BLOCK_M], dtype=tl.float32)
    if HAS_BIAS:
        b = tl.load(bias_ptr + ms, mask=mmask, other=0.0).to(tl.float32)
        d_a += b[None, :]
        if PAIRED:
            d_b += b[None, :]
    if PERTURB_W:
        an = noise_block(k0, kw, j, t, 0, m_start, P, BLOCK_M, NOISE, FAST_MATH)
        d_a += ua0[:, None] * an
        if PAIRED:
            d_b += ub0[:, None] * an
        if RANK > 1:
            an = noise_block(k0, kw, j, t, 1, m_start, P, BLOCK_M, NOISE, FAST_MATH)
            d_a += ua1[:, None] * an
            if PAIRED:
                d_b += ub1[:, None] * an
        if RANK > 2:
            an = noise_block(k0, kw, j, t, 2, m_start, P, BLOCK_M, NOISE, FAST_MATH)
            d_a += ua2[:, None] * an
            if PAIRED:
                d_b += ub2[:, None] * an
        if RANK > 3:
            an = noise_block(k0, kw, j, t, 3, m_start, P, BLOCK_M, NOISE, FAST_MATH)
            d_a += ua3[:, None] * an
            if PAIRED:
                d_b += ub3[:, None] * an
    if PERTURB_B:
        eps = noise_block(k0, kb, j, t, 2 << 16, m_start, P, BLOCK_M, NOISE, FAST_MATH)
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
            for k_start in range(0, K, BLOCK_K):
                xa = _x_block(x_ptr, rows_a, mask_a, stride_xr, stride_xk, k_start, K, BLOCK_K)
                xb = xa
                if PAIRED:
                    xb = _x_block(x_ptr, rows_b, mask_b, stride_xr, stride_xk, k_start, K, BLOCK_K)
                aa0, aa1, aa2, aa3, ab0, ab1, ab2, ab3 = _b_dots(
                    xa, xb, k_start, aa0, aa1, aa2, aa3, ab0, ab1, ab2, ab3, k0, kw, j, t,
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
                    bnoise = noise_block(k0, kw, j, t, (1 << 16) | c, k_start, P, BLOCK_K, NOISE, FAST_MATH)
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
        for m_start in range(0, M, BLOCK_M):
            _d_block(
                d_ptr, bias_ptr, rows_a, rows_b, mask_a, mask_b, m_start, M, stride_dr, stride_dm,
                ua0, ua1, ua2, ua3, ub0, ub1, ub2, ub3, sigma * s_a, sigma * s_b, k0, kw, kb, j, t,
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
                    anoise = noise_block(k0, kw, j, t, c, m_start, P, BLOCK_M, NOISE, FAST_MATH)
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
                eps = noise_block(k0, kb, j, t, 2 << 16, m_start, P, BLOCK_M, NOISE, FAST_MATH)
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
