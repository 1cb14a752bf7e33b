"""Low-rank update: ``G = sum_j w_j A_j B_j^T`` (and ``param += alpha G``), and ``g = sum_j w_j eps_j`` for flat
parameters, with the noise regenerated from the contract, never stored beyond a chunk of noise indices.

Each op has a Triton version (``*_triton``, CUDA) and a pure-torch twin (``*_reference``, any device) with the same
arguments; ``eggroll_rl.kernels`` picks one.

* ``factor_stack_kernel`` writes a chunk of scaled factors, stacked along one ``J_c * r`` axis and transposed
  (``At[jj r + c, a] = w_j A_j[a, c]``, ``Bt[jj r + c, b] = B_j[b, c]``) so the stores are coalesced along the
  feature axis; ``G += At^T Bt`` is then one tensor-core GEMM (cuBLAS). Each factor entry is generated once: a fully
  fused GEMM would regenerate ``A`` once per column tile and ``B`` once per row tile.
* ``vector_update_kernel``: ``sum_j w_j eps_j`` for a flat parameter; each program sums a slice of the noise
  indices for a block of elements, partial sums are added on the host side (deterministic, no atomics).
"""

from __future__ import annotations

import torch

from ..noise import SIGN_SPAN, SPANS_PER_CALL_FACTOR, STREAM_A, STREAM_B, factor_noise, vector_noise
from ..validation import check_int
from ._launch import FAST_MATH, FLOAT_DTYPES, INTERPRET, as_i32, check_ids, noise_code, num_sms, tl, triton
from .philox import FACTOR_SPANS, column_block, pick_word, quad_signs, sign_spans, sign_words_next, vector_block

# Bound on the regenerated factor elements held at once: the kernels' buffer (bf16: 128 MiB) and the twin's (fp32
# elements, 64 MiB).
CHUNK_ELEMENTS = 1 << 26
REFERENCE_CHUNK_ELEMENTS = 1 << 24
# Largest stacked axis J*r for which the fused apply takes ||G||^2 from the (J r)^2 Gram matrices of the factors.
APPLY_GRAM_MAX = 4096
# factor_stack_kernel: elements per block along the features (4 per thread: one Philox call each, in the layout of
# the stores; Rademacher: a program walks the blocks of 8 spans, one call per thread for all of them); the
# interpreter runs smaller blocks.
FACTOR_BLOCK = 512
INTERPRET_FACTOR_BLOCK = 128
# vector_update_kernel: elements and noise indices per program; programs per SM to aim for.
VECTOR_BLOCK = 128
VECTOR_PJ = 4
VECTOR_PROGRAMS_PER_SM = 8


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
    else:
        if e0 < M:
            _store_signs(at_ptr, M, jj, j_ok, j, wj, k0, k1, t, e0, 0, RANK, PJ, BLOCK, BLOCKS)
        if e0 < N:
            _store_signs(bt_ptr, N, jj, j_ok, j, wj, k0, k1, t, e0, 1, RANK, PJ, BLOCK, BLOCKS)


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
    factor_block: int | None = None,
) -> torch.Tensor:
    """Triton version of ``lowrank_update_reference``: ``sum_j w_j A_j B_j^T``, ``(m, n)`` float32.

    The regenerated factors enter the GEMM as bf16 for a bf16/fp16 ``factor_dtype`` (tensor cores at full rate,
    fp32 accumulation, ~3e-3 relative error on ``G``), else as float32. ``chunk_elements`` bounds the factor buffer;
    ``factor_block``: features per block of the factor kernel (a power of two >= 4; None: ``FACTOR_BLOCK``, or
    ``INTERPRET_FACTOR_BLOCK`` under the interpreter).
    """
    ids, w = _check_update_args(seed, param_index, t_eff, noise_ids, weights)
    code = noise_code(noise)
    for name, v in (("m", m), ("n", n), ("rank", rank)):
        check_int(name, v, 1)
    J = ids.numel()
    if J == 0:
        return torch.zeros(m, n, dtype=torch.float32, device=w.device)
    G = None
    chunks = _factor_chunks(
        ids, w, seed, param_index, t_eff, m, n, rank, code, factor_dtype, chunk_elements, factor_block
    )
    for at, bt in chunks:
        G = _mm_f32(at.T, bt, G)
    return G


def _factor_chunks(ids, w, seed, param_index, t_eff, m, n, rank, code, factor_dtype, chunk_elements, block=None):
    """Yield ``(At, Bt)``: the stacked, weighted factors of consecutive chunks of noise indices (one buffer)."""
    J = ids.numel()
    chunk = max(1, min(J, chunk_elements // (rank * (m + n))))
    fdtype = torch.bfloat16 if factor_dtype in (torch.bfloat16, torch.float16) else torch.float32
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
    factor_block: int | None = None,
) -> torch.Tensor:
    """``param += alpha * G`` with ``G = sum_j w_j A_j B_j^T`` never materialized; returns ``||G||_F^2`` (0-d fp32).

    When all factors fit one chunk, ``J r <= gram_max`` and the norm's Gram GEMMs cost at most a quarter
    of the update's (``4 J r (m + n) <= m n``), one GEMM adds ``alpha At^T Bt`` into ``param``
    in place (cuBLAS, beta = 1, float32 accumulation, one rounding to the parameter's dtype) and the norm comes
    from ``||At^T Bt||^2 = sum((At At^T) * (Bt Bt^T))``. Otherwise ``G`` is built in float32 and added; also for
    a float32 ``param`` with a bf16/fp16 ``factor_dtype`` (a low-precision model's float32 master copy): ``G``
    then comes from bf16 factors on tensor cores instead of a float32 GEMM into ``param``.
    """
    kw = dict(seed=seed, param_index=param_index, t_eff=t_eff, noise_ids=noise_ids, weights=weights, m=m, n=n,
              rank=rank, noise=noise, factor_dtype=factor_dtype, chunk_elements=chunk_elements,
              factor_block=factor_block)  # fmt: skip
    J = noise_ids.numel()
    # The Gram matrices cost 2 (J r)^2 (m + n) FLOPs against the update's 2 J r m n: take them up to a quarter.
    fits = J * rank <= gram_max and 4 * J * rank * (m + n) <= m * n
    fits = fits and J <= chunk_elements // (rank * (m + n))
    fits = fits and not (param.dtype == torch.float32 and factor_dtype in (torch.bfloat16, torch.float16))
    if not fits or J == 0 or param.dtype not in FLOAT_DTYPES or (INTERPRET and param.dtype != torch.float32):
        G = lowrank_update_triton(**kw)
        param.add_(G.to(param.dtype), alpha=alpha)
        return G.square().sum()
    ids, w = _check_update_args(seed, param_index, t_eff, noise_ids, weights)
    code = noise_code(noise)
    ((at, bt),) = _factor_chunks(
        ids, w, seed, param_index, t_eff, m, n, rank, code, param.dtype, chunk_elements, factor_block
    )
    sq = (_mm_f32(at, at.T, None) * _mm_f32(bt, bt.T, None)).sum()
    param.addmm_(at.T.to(param.dtype), bt.to(param.dtype), alpha=alpha)  # no-op casts unless fp16
    return sq


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


def lowrank_apply_reference(
    param: torch.Tensor,
    alpha: float,
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
    gram_max: int = APPLY_GRAM_MAX,
) -> torch.Tensor:
    """``param += alpha * G`` in place (``G`` of ``lowrank_update_reference``, built in float32); returns
    ``||G||_F^2`` (0-d float32). ``gram_max`` only matters to the kernels."""
    G = lowrank_update_reference(
        seed=seed, param_index=param_index, t_eff=t_eff, noise_ids=noise_ids, weights=weights, m=m, n=n, rank=rank,
        noise=noise, factor_dtype=factor_dtype, chunk_elements=chunk_elements,
    )  # fmt: skip
    param.add_(G.to(param.dtype), alpha=alpha)
    return G.square().sum()


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
