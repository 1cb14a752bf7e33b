"""Host entry points of the Triton kernels: same signatures and results as the twins in ``reference.py``.

Each wrapper checks its inputs, allocates, launches. Kernels live in ``triton_noise.py`` (the noise contract in
registers), ``triton_linear.py`` (forward) and ``triton_update.py`` (update). Set ``TRITON_INTERPRET=1`` before
importing to run them on the CPU (tests do); the interpreter uses exact ``log/sin/cos`` instead of the fast
special-function approximations and a single small tile configuration instead of autotuning.

Module settings (plain attributes, read at call time):

* ``FORWARD_MODE``: ``"delta"`` (default) writes each row's perturbation (plus bias) with ``lowrank_delta_kernel``
  and lets cuBLAS add ``x W^T`` into it in place; ``"tiles"`` uses the tile kernels of ``triton_linear.py``
  (settings below).
* ``FORWARD_GEMM``: ``"cublas"`` (default) lets cuBLAS compute ``x W^T + b`` and a second kernel adds the
  perturbation (one extra read and write of ``y``); ``"triton"`` computes ``x W^T`` inside the perturbation kernel
  (one pass over ``y``, but Triton's GEMM trails cuBLAS at the paper's shape: see benchmarks/results/kernels.md).
  Only for layers too wide for the single-launch kernel (``m > FUSE_MAX_OUT``).
* ``UPDATE_DTYPE``: dtype of the regenerated factors fed to the update GEMM; ``None`` (default) follows the
  parameter (bf16 factors for bf16/fp16 parameters: tensor cores at full rate, fp32 accumulation and output,
  ~3e-3 relative error on ``G``; float32 factors for float32 parameters).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
import triton

from ..noise import NOISE_TYPES
from .triton_delta import lowrank_delta_kernel
from .triton_linear import perturbed_linear_kernel, xb_kernel
from .triton_noise import INTERPRET, _stream_kernel, _words_kernel
from .triton_update import factor_stack_kernel, vector_update_kernel

__all__ = [
    "perturbed_linear_triton",
    "lowrank_update_triton",
    "lowrank_apply_triton",
    "vector_update_triton",
    "noise_stream_triton",
    "stream_words_triton",
]

FORWARD_MODE = "delta"
# Delta kernel launch shape: feature blocks of at most DELTA_BLOCK_MAX, rows per program so that a tile holds about
# DELTA_TILE elements, DELTA_WARPS warps. None = the heuristic of _delta_launch_shape, from the sweep of
# benchmarks/tune_delta.py on the H100 (2026-11-24): wide layers like wide blocks and 8 warps, narrow ones small tiles.
DELTA_BLOCK_MAX: int | None = None
DELTA_TILE: int | None = None
DELTA_WARPS: int | None = None


def _delta_launch_shape(K: int, M: int, rank: int) -> tuple[int, int, int]:
    # A tile of 4 elements per thread lets each thread make exactly one Philox call (4 words = 4 consecutive
    # elements) per noise block, so the noise lands in the layout of the vector loads/stores with no shuffle.
    # Wide layers: 8 warps (tune_delta.py; at r=4 the kernel alone, timed by graph replay in profile_delta.py,
    # takes 47.8 us with 8 warps against 49.4 us with 4).
    wide = max(K, M) >= 4096
    warps = DELTA_WARPS or (8 if wide else 4)
    block_max = DELTA_BLOCK_MAX or 4 * 32 * warps
    tile = DELTA_TILE or 4 * 32 * warps
    return block_max, tile, warps


FORWARD_GEMM = "cublas"
FUSE_MAX_OUT = 256
UPDATE_DTYPE: torch.dtype | None = None  # None: the caller's ``factor_dtype`` (the parameter's dtype)
# Bound on the regenerated factor elements held at once by the update (bf16: 128 MiB).
UPDATE_CHUNK_ELEMENTS = 1 << 26
FAST_MATH = not INTERPRET

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# --- autotuned launchers --------------------------------------------------------------------------------------


def _cfg(bm, bn, bk, warps, stages, group=8):
    kw = {"BLOCK_M": bm, "BLOCK_K": bk, "GROUP_M": group}
    if bn is not None:
        kw["BLOCK_N"] = bn
    return triton.Config(kw, num_warps=warps, num_stages=stages)


if INTERPRET:
    _GEMM_CONFIGS = [_cfg(16, 128, 32, 4, 1)]
    _ADD_CONFIGS = [_cfg(16, 128, 32, 4, 1)]
    _FUSED_CONFIGS = [_cfg(16, None, 32, 4, 1)]
else:
    # first entry of each list: the fixed choice of set_autotune(False), valid for every dtype
    _GEMM_CONFIGS = [_cfg(64, 128, 32, 4, 3), _cfg(128, 128, 64, 8, 3), _cfg(128, 256, 64, 8, 3)]
    _ADD_CONFIGS = [_cfg(32, 128, 16, 4, 1), _cfg(64, 128, 16, 4, 1), _cfg(16, 256, 16, 4, 1)]
    _FUSED_CONFIGS = [
        _cfg(32, None, 32, 4, 3),
        _cfg(16, None, 64, 4, 3),
        _cfg(64, None, 64, 4, 3),
        _cfg(128, None, 32, 8, 3),
    ]


def _prune_gemm(configs, named_args, **kwargs):
    fp32 = named_args["x_ptr"].dtype == torch.float32
    out = []
    for c in configs:
        kw = dict(c.kwargs)
        if fp32:  # fp32 tiles are twice the bytes: halve BLOCK_K (shared memory)
            kw["BLOCK_K"] = min(kw["BLOCK_K"], 32)
        out.append(triton.Config(kw, num_warps=c.num_warps, num_stages=c.num_stages))
    return out


def _prune_fused(configs, named_args, **kwargs):
    rows = named_args["R"]
    k_dim = named_args["K"]
    bm_cap = max(16, triton.next_power_of_2(rows))
    bk_cap = max(16, triton.next_power_of_2(k_dim))
    keep = [c for c in configs if c.kwargs["BLOCK_M"] <= bm_cap and c.kwargs["BLOCK_K"] <= bk_cap]
    return keep or configs[:1]


_KEY = ["R", "M", "K", "RANK", "NOISE", "HAS_BIAS", "PERTURB_W", "PERTURB_B", "NUM_U"]
_gemm_launch = triton.autotune(_GEMM_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune_gemm})(
    perturbed_linear_kernel
)
_add_launch = triton.autotune(_ADD_CONFIGS, key=_KEY)(perturbed_linear_kernel)
_fused_launch = triton.autotune(_FUSED_CONFIGS, key=_KEY, prune_configs_by={"early_config_prune": _prune_fused})(
    perturbed_linear_kernel
)


_ALL_CONFIGS = {id(a): list(a.configs) for a in (_gemm_launch, _add_launch, _fused_launch)}


def set_autotune(enabled: bool) -> None:
    """Autotune over every tile configuration (default) or use each kernel's first one (tests: fewer compiles)."""
    for launcher in (_gemm_launch, _add_launch, _fused_launch):
        configs = _ALL_CONFIGS[id(launcher)]
        launcher.configs = list(configs) if enabled else configs[:1]
        launcher.cache.clear()


@functools.lru_cache(maxsize=8)
def _num_sms(device_index: int) -> int:
    if INTERPRET or not torch.cuda.is_available():
        return 4
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _i32(v: int) -> int:
    """uint32 value as the signed int32 with the same bits (scalar kernel arguments stay int32: one compilation)."""
    v = int(v) & 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v


def _noise_code(noise: str) -> int:
    if noise not in NOISE_TYPES:
        raise ValueError(f"noise={noise!r} is not supported; expected one of {NOISE_TYPES}")
    return NOISE_TYPES.index(noise)


def _check_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")


def _check_ids(name: str, ids: torch.Tensor, length: int | None, device: torch.device) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.dtype.is_floating_point or ids.is_complex():
        raise ValueError(f"{name} must be a 1-D integer tensor, got {getattr(ids, 'shape', ids)!r}")
    if length is not None and ids.numel() != length:
        raise ValueError(f"{name} has {ids.numel()} entries; expected {length} (one per row of x)")
    if ids.device != device:
        raise ValueError(f"{name} is on {ids.device}; expected {device}")
    return ids.to(torch.int64).contiguous()


# --- forward ---------------------------------------------------------------------------------------------------


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
) -> torch.Tensor:
    """Triton twin of ``reference.perturbed_linear_reference``: ``(R, n)`` rows -> ``(R, m)`` in ``x.dtype``.

    ``paired=True`` promises that rows ``2q`` and ``2q+1`` share their noise index (antithetic members in order,
    or an even number of consecutive rows per member): their noise is then generated once.
    """
    # -- check --
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D (rows, in_features), got shape {tuple(x.shape)}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x has dtype {x.dtype}; expected one of {_FLOAT_DTYPES}")
    if weight.dim() != 2 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"weight has shape {tuple(weight.shape)}; expected (out_features, {x.shape[1]})")
    if weight.dtype != x.dtype:
        raise TypeError(f"weight has dtype {weight.dtype}; expected x's dtype {x.dtype}")
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != x.dtype):
        raise ValueError(
            f"bias has shape {tuple(bias.shape)} and dtype {bias.dtype}; expected ({weight.shape[0]},) {x.dtype}"
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device}; expected x's device {x.device}")
    ids = _check_ids("member_ids", member_ids, x.shape[0], x.device)
    code = _noise_code(noise)
    _check_int("rank", rank)
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    for name, v in (("seed", seed), ("t_eff", t_eff)):
        _check_int(name, v)
    if weight_index is None and bias_index is None:
        return F.linear(x, weight, bias)

    # -- allocate --
    R, K = x.shape
    M = weight.shape[0]
    if FORWARD_MODE == "delta":
        return _delta_forward(x, weight, bias, ids, seed, weight_index, bias_index, t_eff, sigma, rank, antithetic,
                              code, paired)  # fmt: skip
    y = torch.empty((R, M), dtype=x.dtype, device=x.device)
    if R == 0:
        return y
    perturb_w = weight_index is not None
    rp = triton.next_power_of_2(rank)
    common = dict(
        seed=_i32(seed),
        w_index=_i32(weight_index if perturb_w else 0),
        b_index=_i32(bias_index if bias_index is not None else 0),
        t_eff=_i32(t_eff),
        scale=float(sigma) / math.sqrt(rank),
        sigma=float(sigma),
        RANK=rank,
        RP=rp,
        ANTITHETIC=bool(antithetic),
        NOISE=code,
        PERTURB_W=perturb_w,
        PERTURB_B=bias_index is not None,
        FAST_MATH=FAST_MATH,
        IN_PRECISION="tf32" if torch.backends.cuda.matmul.allow_tf32 else "tf32x3",
        DOT_FP32=INTERPRET and x.dtype == torch.bfloat16,
    )
    b_arg = bias if bias is not None else y  # dummy pointer, never read without HAS_BIAS
    strides = (x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), y.stride(0), y.stride(1))

    # -- launch: one kernel when a column tile covers all outputs --
    if perturb_w and M <= FUSE_MAX_OUT:
        bn = max(16, triton.next_power_of_2(M))
        grid = lambda meta: (triton.cdiv(R, meta["BLOCK_M"]),)  # noqa: E731
        _fused_launch[grid](
            x, weight, b_arg, y, y, ids, y, R, M, K, *strides,
            NUM_U=0, HAS_BIAS=bias is not None, HAS_GEMM=True, BLOCK_N=bn, **common,
        )  # fmt: skip
        return y

    # -- otherwise: u = (sigma s / sqrt r) x B_j first (tiny), then the tile kernel --
    num_u = 0
    u = y
    if perturb_w:
        block_k = min(128 if INTERPRET else 512, max(16, triton.next_power_of_2(K)))
        block_r = 2
        row_blocks = triton.cdiv(R, block_r)
        k_blocks = triton.cdiv(K, block_k)
        split = min(k_blocks, max(1, triton.cdiv(4 * _num_sms(x.device.index or 0), row_blocks)), 8)
        k_per_split = triton.cdiv(k_blocks, split) * block_k
        num_u = triton.cdiv(K, k_per_split)
        u = torch.empty((num_u, R, rp), dtype=torch.float32, device=x.device)
        xb_kernel[(row_blocks, num_u)](
            x, ids, u, R, K, k_per_split, x.stride(0), x.stride(1),
            common["seed"], common["w_index"], common["t_eff"], common["scale"],
            RANK=rank, RP=rp, ANTITHETIC=bool(antithetic), NOISE=code, FAST_MATH=FAST_MATH,
            BLOCK_R=block_r, BLOCK_K=block_k, num_warps=4,
        )  # fmt: skip
    grid = lambda meta: (triton.cdiv(R, meta["BLOCK_M"]) * triton.cdiv(M, meta["BLOCK_N"]),)  # noqa: E731
    if FORWARD_GEMM == "cublas":
        y_in = F.linear(x, weight, bias)
        _add_launch[grid](
            x, weight, b_arg, y_in, y, ids, u, R, M, K, *strides,
            NUM_U=num_u, HAS_BIAS=False, HAS_GEMM=False, **common,
        )  # fmt: skip
    else:
        _gemm_launch[grid](
            x, weight, b_arg, y, y, ids, u, R, M, K, *strides,
            NUM_U=num_u, HAS_BIAS=bias is not None, HAS_GEMM=True, **common,
        )  # fmt: skip
    return y


def _delta_forward(x, weight, bias, ids, seed, weight_index, bias_index, t_eff, sigma, rank, antithetic, code, paired):
    d = lowrank_delta(x, weight.shape[0], bias, ids, seed, weight_index, bias_index, t_eff, sigma, rank, antithetic,
                      code, paired)  # fmt: skip
    if INTERPRET and x.dtype != torch.float32:
        # The interpreter's bf16/fp16 matmul is unreliable; the GPU path below is what runs for real.
        return (d.float() + x.float() @ weight.float().T).to(x.dtype)
    return d.addmm_(x, weight.T)


def lowrank_delta(x, M, bias, ids, seed, weight_index, bias_index, t_eff, sigma, rank, antithetic, code, paired):
    """``D = (sigma s/sqrt r)(x B_j) A_j^T + b + sigma s eps_j``, ``(R, M)`` in ``x.dtype``: the forward without
    ``x W^T`` (one launch of ``lowrank_delta_kernel``; ``benchmarks/profile_delta.py`` times it alone)."""
    R, K = x.shape
    d = torch.empty((R, M), dtype=x.dtype, device=x.device)
    if R == 0:
        return d
    paired = bool(paired) and R % 2 == 0
    block_max, tile, warps = _delta_launch_shape(K, M, rank)
    block_k = min(block_max, max(8, triton.next_power_of_2(K)))
    block_m = min(block_max, max(8, triton.next_power_of_2(M)))
    if INTERPRET:
        block_k, block_m, warps = min(block_k, 32), min(block_m, 32), 4
    rows_per_prog = max(1, min(16, tile // max(block_k, block_m)))
    units = R // 2 if paired else R
    grid = (triton.cdiv(units, rows_per_prog),)
    lowrank_delta_kernel[grid](
        x, ids, bias if bias is not None else d, d, R, M, K,
        x.stride(0), x.stride(1), d.stride(0), d.stride(1),
        _i32(seed), _i32(weight_index if weight_index is not None else 0),
        _i32(bias_index if bias_index is not None else 0), _i32(t_eff),
        float(sigma) / math.sqrt(rank), float(sigma),
        RANK=rank, RP=triton.next_power_of_2(rank), ANTITHETIC=bool(antithetic), PAIRED=paired, NOISE=code,
        FAST_MATH=FAST_MATH, HAS_BIAS=bias is not None, PERTURB_W=weight_index is not None,
        PERTURB_B=bias_index is not None, P=rows_per_prog, BLOCK_K=block_k, BLOCK_M=block_m,
        num_warps=warps,
    )  # fmt: skip
    return d


# --- update ----------------------------------------------------------------------------------------------------


def _check_update_args(seed, param_index, t_eff, noise_ids, weights):
    for name, v in (("seed", seed), ("param_index", param_index), ("t_eff", t_eff)):
        _check_int(name, v)
    if not isinstance(weights, torch.Tensor) or weights.dim() != 1 or not weights.dtype.is_floating_point:
        raise ValueError(f"weights must be a 1-D float tensor, got {getattr(weights, 'shape', weights)!r}")
    ids = _check_ids("noise_ids", noise_ids, weights.numel(), weights.device)
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
) -> torch.Tensor:
    """Triton twin of ``reference.lowrank_update_reference``: ``sum_j w_j A_j B_j^T``, ``(m, n)`` float32.

    The regenerated factors enter the GEMM as ``UPDATE_DTYPE`` if set, else ``factor_dtype`` (bf16/fp16 run on the
    tensor cores at full rate, ~3e-3 relative error on ``G``), else float32.
    """
    ids, w = _check_update_args(seed, param_index, t_eff, noise_ids, weights)
    code = _noise_code(noise)
    for name, v in (("m", m), ("n", n), ("rank", rank)):
        _check_int(name, v)
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    J = ids.numel()
    if J == 0:
        return torch.zeros(m, n, dtype=torch.float32, device=w.device)
    G = None
    for at, bt in _factor_chunks(ids, w, seed, param_index, t_eff, m, n, rank, code, factor_dtype):
        G = _mm_f32(at.T, bt, G)
    return G


def _factor_chunks(ids, w, seed, param_index, t_eff, m, n, rank, code, factor_dtype):
    """Yield ``(At, Bt)``: the stacked, weighted factors of consecutive chunks of noise indices (one buffer)."""
    J = ids.numel()
    chunk = max(1, min(J, UPDATE_CHUNK_ELEMENTS // (rank * (m + n))))
    fdtype = UPDATE_DTYPE or (torch.bfloat16 if factor_dtype in (torch.bfloat16, torch.float16) else torch.float32)
    at_buf = torch.empty(chunk * rank, m, dtype=fdtype, device=w.device)
    bt_buf = torch.empty(chunk * rank, n, dtype=fdtype, device=w.device)
    # 4 elements per thread: one Philox call each, in the layout of the stores (see _delta_launch_shape)
    block = 128 if INTERPRET else 512
    pj = 1
    for lo in range(0, J, chunk):
        hi = min(J, lo + chunk)
        at, bt = at_buf[: (hi - lo) * rank], bt_buf[: (hi - lo) * rank]
        grid = (triton.cdiv(max(m, n), block), triton.cdiv(hi - lo, pj))
        factor_stack_kernel[grid](
            at, bt, ids[lo:hi], w[lo:hi], hi - lo, m, n, _i32(seed), _i32(param_index), _i32(t_eff),
            RANK=rank, NOISE=code, FAST_MATH=FAST_MATH, PJ=pj, BLOCK=block, num_warps=4,
        )  # fmt: skip
        yield at, bt


# Largest stacked axis J*r for which the fused apply takes ||G||^2 from the (J r)^2 Gram matrices of the factors.
APPLY_GRAM_MAX = 4096


def lowrank_apply_triton(param: torch.Tensor, alpha: float, **kw) -> torch.Tensor:
    """``param += alpha * G`` with ``G = sum_j w_j A_j B_j^T`` never materialized; returns ``||G||_F^2`` (0-d fp32).

    When all factors fit one chunk, ``J r <= APPLY_GRAM_MAX`` and the norm's Gram GEMMs cost at most a quarter
    of the update's (``4 J r (m + n) <= m n``), one GEMM adds ``alpha At^T Bt`` into ``param``
    in place (cuBLAS, beta = 1, float32 accumulation, one rounding to the parameter's dtype) and the norm comes
    from ``||At^T Bt||^2 = sum((At At^T) * (Bt Bt^T))``. Otherwise ``G`` is built in float32 and added.
    """
    m, n, rank = kw["m"], kw["n"], kw["rank"]
    J = kw["noise_ids"].numel()
    # The Gram matrices cost 2 (J r)^2 (m + n) FLOPs against the update's 2 J r m n: take them up to a quarter.
    fits = J * rank <= APPLY_GRAM_MAX and 4 * J * rank * (m + n) <= m * n
    fits = fits and J <= UPDATE_CHUNK_ELEMENTS // (rank * (m + n))
    if not fits or J == 0 or param.dtype not in _FLOAT_DTYPES or (INTERPRET and param.dtype != torch.float32):
        G = lowrank_update_triton(**kw)
        param.add_(G.to(param.dtype), alpha=alpha)
        return G.square().sum()
    ids, w = _check_update_args(kw["seed"], kw["param_index"], kw["t_eff"], kw["noise_ids"], kw["weights"])
    code = _noise_code(kw.get("noise", "gaussian"))
    ((at, bt),) = _factor_chunks(ids, w, kw["seed"], kw["param_index"], kw["t_eff"], m, n, rank, code, param.dtype)
    sq = (_mm_f32(at, at.T, None) * _mm_f32(bt, bt.T, None)).sum()
    param.addmm_(at.T.to(param.dtype), bt.to(param.dtype), alpha=alpha)  # no-op casts unless fp16 / UPDATE_DTYPE
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
    """Triton twin of ``reference.vector_update_reference``: ``sum_j w_j eps_j``, ``(numel,)`` float32."""
    ids, w = _check_update_args(seed, param_index, t_eff, noise_ids, weights)
    code = _noise_code(noise)
    _check_int("numel", numel)
    if numel < 0:
        raise ValueError(f"numel must be >= 0, got {numel}")
    J = ids.numel()
    if J == 0 or numel == 0:
        return torch.zeros(numel, dtype=torch.float32, device=w.device)
    block = 128
    pj = 4
    e_blocks = triton.cdiv(numel, block)
    # Split the noise indices too, so that ~8 programs per SM share the work (a short serial loop each).
    split = min(triton.cdiv(J, pj), max(1, triton.cdiv(8 * _num_sms(w.device.index or 0), e_blocks)))
    j_per_split = triton.cdiv(triton.cdiv(J, split), pj) * pj
    split = triton.cdiv(J, j_per_split)
    out = torch.empty(split, numel, dtype=torch.float32, device=w.device)
    vector_update_kernel[(e_blocks, split)](
        out, ids, w, J, numel, j_per_split, _i32(seed), _i32(param_index), _i32(t_eff),
        NOISE=code, FAST_MATH=FAST_MATH, PJ=pj, BLOCK=block, num_warps=4,
    )  # fmt: skip
    return out[0] if split == 1 else out.sum(0)


# --- noise streams (tests and tools) ---------------------------------------------------------------------------


def stream_words_triton(
    seed: int, param_index: int, t_eff: int, noise_ids: torch.Tensor, stream: int, column: int, num_blocks: int
) -> torch.Tensor:
    """Triton twin of ``noise.stream_words``: ``(J, num_blocks, 4)`` int64 words."""
    ids = _check_ids("noise_ids", noise_ids, None, noise_ids.device)
    out = torch.empty(ids.numel(), num_blocks, 4, dtype=torch.int64, device=ids.device)
    if out.numel():
        p, nb = 4, 64
        _words_kernel[(triton.cdiv(ids.numel(), p), triton.cdiv(num_blocks, nb))](
            out, ids, ids.numel(), num_blocks, _i32(seed), _i32(param_index), _i32(t_eff),
            ((stream << 16) | column) & 0x7FFFFFFF, P=p, NB=nb,
        )  # fmt: skip
    return out


def noise_stream_triton(
    seed: int,
    param_index: int,
    t_eff: int,
    noise_ids: torch.Tensor,
    stream: int,
    column: int,
    length: int,
    noise: str = "gaussian",
    fast_math: bool | None = None,
) -> torch.Tensor:
    """Triton twin of ``noise.normal_stream`` / ``noise.rademacher_stream``: ``(J, length)`` float32."""
    ids = _check_ids("noise_ids", noise_ids, None, noise_ids.device)
    code = _noise_code(noise)
    out = torch.empty(ids.numel(), length, dtype=torch.float32, device=ids.device)
    if out.numel():
        p, ncol = 4, 512
        _stream_kernel[(triton.cdiv(ids.numel(), p), triton.cdiv(length, ncol))](
            out, ids, ids.numel(), length, _i32(seed), _i32(param_index), _i32(t_eff),
            ((stream << 16) | column) & 0x7FFFFFFF, P=p, NCOL=ncol, NOISE=code,
            FAST_MATH=FAST_MATH if fast_math is None else fast_math,
        )  # fmt: skip
    return out
