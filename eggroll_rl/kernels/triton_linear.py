"""Triton kernels of the perturbed linear forward ``y = x W^T + b + (sigma s/sqrt r)(x B_j) A_j^T + sigma s eps_j``.

Rows are handled in pairs ``(2q, 2q+1)``: with antithetic sampling and the usual ``member_ids = arange`` both rows of a
pair share the noise index ``j``, so each factor entry is generated once and used twice. A block whose pairs do not
all share ``j`` (arbitrary ``member_ids``, antithetic off) takes the per-row branch at run time.

* ``xb_kernel``: ``u = (sigma s/sqrt r) x B_j`` as ``(SPLIT, R, RP)`` fp32 partial sums over slices of the input
  features; B is generated once per (pair, feature): no redundancy.
* ``perturbed_linear_kernel``: one output tile: ``x W^T`` (``HAS_GEMM``) or a tile of ``y_in`` already computed by
  cuBLAS, then the epilogue generates ``A_j`` and the bias noise for its (pairs, columns) -- once over the grid -- and
  adds ``u A_j^T + sigma s eps_j``. With ``NUM_U == 0`` (one column tile covers all outputs) ``u`` is accumulated in
  the K loop itself from the tiles of ``x`` it already loads: one launch for the whole layer.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .triton_noise import noise_block

STREAM_A = tl.constexpr(0)
STREAM_B = tl.constexpr(1)
STREAM_VECTOR = tl.constexpr(2)


@triton.jit
def _pair_ids(ids_ptr, row0, R, P: tl.constexpr, ANTITHETIC: tl.constexpr):
    """Noise index and sign of the even and odd row of ``P`` pairs from ``row0``; missing odd rows copy the even."""
    rows_e = row0 + 2 * tl.arange(0, P)
    mem_e = tl.load(ids_ptr + rows_e, mask=rows_e < R, other=0)
    mem_o = tl.load(ids_ptr + rows_e + 1, mask=rows_e + 1 < R, other=0)
    mem_o = tl.where(rows_e + 1 < R, mem_o, mem_e)
    if ANTITHETIC:
        j_e = mem_e // 2
        j_o = mem_o // 2
        s_e = 1.0 - 2.0 * (mem_e % 2).to(tl.float32)
        s_o = 1.0 - 2.0 * (mem_o % 2).to(tl.float32)
    else:
        j_e = mem_e
        j_o = mem_o
        s_e = tl.full([P], 1.0, tl.float32)
        s_o = tl.full([P], 1.0, tl.float32)
    shared = tl.min((j_e == j_o).to(tl.int32), axis=0) == 1
    return rows_e, j_e, j_o, tl.join(s_e, s_o), shared


@triton.jit
def _xb_chunk(
    x_ptr,
    rows_e,
    j_e,
    j_o,
    shared,
    k_start,
    R,
    K,
    stride_xr,
    stride_xk,
    k0,
    k1,
    t_eff,
    RANK: tl.constexpr,
    RP: tl.constexpr,
    P: tl.constexpr,
    BLOCK_K: tl.constexpr,
    NOISE: tl.constexpr,
    FAST_MATH: tl.constexpr,
):
    """(P, 2, RP) partial ``x[rows, k] B_j[k, c]`` summed over ``k_start .. k_start + BLOCK_K``."""
    offs_k = k_start + tl.arange(0, BLOCK_K)
    rows = rows_e[:, None] + tl.arange(0, 2)[None, :]  # (P, 2)
    mask = (rows[:, :, None] < R) & (offs_k[None, None, :] < K)
    x3 = tl.load(x_ptr + rows[:, :, None] * stride_xr + offs_k[None, None, :] * stride_xk, mask=mask, other=0.0).to(
        tl.float32
    )
    cidx = tl.arange(0, RP)[None, None, :]
    acc = tl.zeros([P, 2, RP], dtype=tl.float32)
    if shared:
        for c in tl.static_range(RANK):
            b_s = noise_block(k0, k1, j_e, t_eff, (STREAM_B << 16) | c, k_start, P, BLOCK_K, NOISE, FAST_MATH)
            part_s = tl.sum(x3 * b_s[:, None, :], axis=2)
            acc += tl.where(cidx == c, part_s[:, :, None], 0.0)
    else:
        j_all = tl.reshape(tl.join(j_e, j_o), [2 * P])
        for c in tl.static_range(RANK):
            b_r = noise_block(k0, k1, j_all, t_eff, (STREAM_B << 16) | c, k_start, 2 * P, BLOCK_K, NOISE, FAST_MATH)
            part_r = tl.sum(x3 * tl.reshape(b_r, [P, 2, BLOCK_K]), axis=2)
            acc += tl.where(cidx == c, part_r[:, :, None], 0.0)
    return acc


@triton.jit(do_not_specialize=["seed", "w_index", "t_eff"])
def xb_kernel(
    # pointers
    x_ptr,
    ids_ptr,
    u_ptr,  # (SPLIT, R, RP) fp32 out
    # dimensions
    R,
    K,
    k_per_split,
    # strides
    stride_xr,
    stride_xk,
    # noise
    seed,
    w_index,
    t_eff,
    scale,  # sigma / sqrt(rank)
    # meta-parameters
    RANK: tl.constexpr,
    RP: tl.constexpr,
    ANTITHETIC: tl.constexpr,
    NOISE: tl.constexpr,
    FAST_MATH: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_s = tl.program_id(1)
    P: tl.constexpr = BLOCK_R // 2
    k0 = seed.to(tl.uint32, bitcast=True)
    k1 = w_index.to(tl.uint32, bitcast=True)
    t = t_eff.to(tl.uint32, bitcast=True)
    rows_e, j_e, j_o, s2, shared = _pair_ids(ids_ptr, pid_r * BLOCK_R, R, P, ANTITHETIC)
    acc = tl.zeros([P, 2, RP], dtype=tl.float32)
    k_lo = pid_s * k_per_split
    k_hi = tl.minimum(K, k_lo + k_per_split)
    for k_start in range(k_lo, k_hi, BLOCK_K):
        acc += _xb_chunk(
            x_ptr, rows_e, j_e, j_o, shared, k_start, R, K, stride_xr, stride_xk, k0, k1, t,
            RANK, RP, P, BLOCK_K, NOISE, FAST_MATH,
        )  # fmt: skip
    acc = acc * (scale * s2)[:, :, None]
    rows = rows_e[:, None] + tl.arange(0, 2)[None, :]
    cidx = tl.arange(0, RP)
    ptrs = u_ptr + pid_s * R * RP + rows[:, :, None] * RP + cidx[None, None, :]
    tl.store(ptrs, acc, mask=rows[:, :, None] < R)


@triton.jit
def _delta_tile(
    u3,
    sig2,
    j_e,
    j_o,
    shared,
    col0,
    k0,
    k1_w,
    k1_b,
    t_eff,
    PERTURB_W: tl.constexpr,
    PERTURB_B: tl.constexpr,
    RANK: tl.constexpr,
    RP: tl.constexpr,
    P: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NOISE: tl.constexpr,
    FAST_MATH: tl.constexpr,
):
    """(2P, BLOCK_N) ``u A_j^T + sigma s eps_j`` for the columns ``col0 ..`` of ``P`` row pairs."""
    cidx = tl.arange(0, RP)[None, None, :]
    if shared:
        d = tl.zeros([P, 2, BLOCK_N], dtype=tl.float32)
        if PERTURB_W:
            for c in tl.static_range(RANK):
                a_s = noise_block(k0, k1_w, j_e, t_eff, (STREAM_A << 16) | c, col0, P, BLOCK_N, NOISE, FAST_MATH)
                uc_s = tl.sum(tl.where(cidx == c, u3, 0.0), axis=2)
                d += uc_s[:, :, None] * a_s[:, None, :]
        if PERTURB_B:
            eps_s = noise_block(k0, k1_b, j_e, t_eff, STREAM_VECTOR << 16, col0, P, BLOCK_N, NOISE, FAST_MATH)
            d += sig2[:, :, None] * eps_s[:, None, :]
        delta = tl.reshape(d, [2 * P, BLOCK_N])
    else:
        j_all = tl.reshape(tl.join(j_e, j_o), [2 * P])
        delta = tl.zeros([2 * P, BLOCK_N], dtype=tl.float32)
        if PERTURB_W:
            u2 = tl.reshape(u3, [2 * P, RP])
            for c in tl.static_range(RANK):
                a_r = noise_block(k0, k1_w, j_all, t_eff, (STREAM_A << 16) | c, col0, 2 * P, BLOCK_N, NOISE, FAST_MATH)
                uc_r = tl.sum(tl.where(tl.arange(0, RP)[None, :] == c, u2, 0.0), axis=1)
                delta += uc_r[:, None] * a_r
        if PERTURB_B:
            eps_r = noise_block(k0, k1_b, j_all, t_eff, STREAM_VECTOR << 16, col0, 2 * P, BLOCK_N, NOISE, FAST_MATH)
            delta += tl.reshape(sig2, [2 * P])[:, None] * eps_r
    return delta


@triton.jit(do_not_specialize=["seed", "w_index", "b_index", "t_eff"])
def perturbed_linear_kernel(
    # pointers
    x_ptr,
    w_ptr,
    b_ptr,
    yin_ptr,  # (R, M) x W^T + b from cuBLAS when not HAS_GEMM
    y_ptr,
    ids_ptr,
    u_ptr,  # (NUM_U, R, RP) partial u from xb_kernel when NUM_U > 0
    # dimensions
    R,
    M,
    K,
    # strides
    stride_xr,
    stride_xk,
    stride_wm,
    stride_wk,
    stride_yr,
    stride_ym,
    # noise
    seed,
    w_index,
    b_index,
    t_eff,
    scale,  # sigma / sqrt(rank)
    sigma,
    # meta-parameters
    RANK: tl.constexpr,
    RP: tl.constexpr,
    NUM_U: tl.constexpr,
    ANTITHETIC: tl.constexpr,
    NOISE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    PERTURB_W: tl.constexpr,
    PERTURB_B: tl.constexpr,
    HAS_GEMM: tl.constexpr,
    FAST_MATH: tl.constexpr,
    IN_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    # -- tile of this program, grouped ordering for L2 reuse (tutorial 03) --
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(R, BLOCK_M)
    num_pid_n = tl.cdiv(M, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    P: tl.constexpr = BLOCK_M // 2
    FUSE_XB: tl.constexpr = PERTURB_W and NUM_U == 0
    k0 = seed.to(tl.uint32, bitcast=True)
    k1_w = w_index.to(tl.uint32, bitcast=True)
    k1_b = b_index.to(tl.uint32, bitcast=True)
    t = t_eff.to(tl.uint32, bitcast=True)
    rows_e, j_e, j_o, s2, shared = _pair_ids(ids_ptr, pid_m * BLOCK_M, R, P, ANTITHETIC)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    u3 = tl.zeros([P, 2, RP], dtype=tl.float32)

    # -- main loop: x W^T, and u = x B_j from the same tiles of x when fused --
    if HAS_GEMM:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        offs_k = tl.arange(0, BLOCK_K)
        x_ptrs = x_ptr + offs_m[:, None] * stride_xr + offs_k[None, :] * stride_xk
        w_ptrs = w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wm
        for k_start in range(0, K, BLOCK_K):
            k_ok = offs_k < K - k_start
            xt = tl.load(x_ptrs, mask=(offs_m[:, None] < R) & k_ok[None, :], other=0.0)
            wt = tl.load(w_ptrs, mask=k_ok[:, None] & (offs_n[None, :] < M), other=0.0)
            if DOT_FP32:  # the interpreter's dot mishandles bf16
                xt = xt.to(tl.float32)
                wt = wt.to(tl.float32)
            acc = tl.dot(xt, wt, acc, input_precision=IN_PRECISION)
            if FUSE_XB:
                u3 += _xb_chunk(
                    x_ptr, rows_e, j_e, j_o, shared, k_start, R, K, stride_xr, stride_xk, k0, k1_w, t,
                    RANK, RP, P, BLOCK_K, NOISE, FAST_MATH,
                )  # fmt: skip
            x_ptrs += BLOCK_K * stride_xk
            w_ptrs += BLOCK_K * stride_wk
        if HAS_BIAS:
            bias = tl.load(b_ptr + offs_n, mask=offs_n < M, other=0.0).to(tl.float32)
            acc += bias[None, :]
    else:
        y_mask = (offs_m[:, None] < R) & (offs_n[None, :] < M)
        yin_ptrs = yin_ptr + offs_m[:, None] * stride_yr + offs_n[None, :] * stride_ym
        acc = tl.load(yin_ptrs, mask=y_mask, other=0.0).to(tl.float32)

    # -- epilogue: generate A_j and eps_j for this tile once per pair, add the perturbation --
    if PERTURB_W:
        if FUSE_XB:
            u3 = u3 * (scale * s2)[:, :, None]
        else:
            rows = rows_e[:, None] + tl.arange(0, 2)[None, :]
            u_ptrs = u_ptr + rows[:, :, None] * RP + tl.arange(0, RP)[None, None, :]
            for s in tl.static_range(NUM_U):
                u3 += tl.load(u_ptrs + s * R * RP, mask=rows[:, :, None] < R, other=0.0)
    if PERTURB_W or PERTURB_B:
        delta = _delta_tile(
            u3, sigma * s2, j_e, j_o, shared, pid_n * BLOCK_N, k0, k1_w, k1_b, t,
            PERTURB_W, PERTURB_B, RANK, RP, P, BLOCK_N, NOISE, FAST_MATH,
        )  # fmt: skip
        acc += delta

    y_ptrs = y_ptr + offs_m[:, None] * stride_yr + offs_n[None, :] * stride_ym
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=(offs_m[:, None] < R) & (offs_n[None, :] < M))
