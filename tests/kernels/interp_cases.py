"""Kernel-vs-twin checks run under ``TRITON_INTERPRET=1`` (CPU). Executed as a script in a subprocess by
``test_triton_interp.py``, so the interpreter setting never leaks into other tests of the same pytest run.

Prints one JSON object: case name -> {"err": float, "tol": float} (or {"error": str}).
"""

from __future__ import annotations

import json
import os
import sys
import traceback

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

import torch  # noqa: E402

from eggroll_rl import noise as N  # noqa: E402
from eggroll_rl.kernels import reference, triton_ops  # noqa: E402

RESULTS: dict[str, dict] = {}


def case(name):
    def deco(fn):
        try:
            err, tol = fn()
            RESULTS[name] = {"err": float(err), "tol": float(tol)}
        except Exception:  # noqa: BLE001 - reported to the test
            RESULTS[name] = {"error": traceback.format_exc()[-3000:]}
        return fn

    return deco


def _max_abs(a, b):
    return (a.double() - b.double()).abs().max().item()


# --- noise ---------------------------------------------------------------------------------------------------
IDS = torch.tensor([0, 1, 6, 511, 123456789, 2**31 + 5, 2**33 + 3])

for seed, k, t, stream, col in [(0, 0, 0, 0, 0), (1, 1, 1, 1, 3), (0xDEADBEEF, 7, 2**32 - 1, 2, 0)]:

    @case(f"words seed={seed} k={k} t={t} stream={stream} col={col}")
    def _(seed=seed, k=k, t=t, stream=stream, col=col):
        got = triton_ops.stream_words_triton(seed, k, t, IDS, stream, col, 70)
        ref = N.stream_words(seed, k, t, IDS, stream, col, 70)
        return int((got != ref).sum()), 0


for noise, length in [("gaussian", 1000), ("gaussian", 13), ("rademacher", 1000), ("rademacher", 77)]:

    @case(f"stream {noise} length={length}")
    def _(noise=noise, length=length):
        got = triton_ops.noise_stream_triton(42, 3, 9, IDS, 0, 1, length, noise)
        fn = N.normal_stream if noise == "gaussian" else N.rademacher_stream
        return _max_abs(got, fn(42, 3, 9, IDS, 0, 1, length)), (1e-5 if noise == "gaussian" else 0)


# --- forward -------------------------------------------------------------------------------------------------
FORWARD = [  # R, n, m, dtype, rank, antithetic, noise, bias, weight_index, bias_index, ids, gemm
    (7, 37, 45, torch.float32, 2, True, "gaussian", True, 3, 4, None, "triton"),
    (8, 37, 45, torch.float32, 2, True, "rademacher", True, 3, 4, None, "triton"),
    (5, 17, 6, torch.float32, 4, False, "gaussian", False, 3, 4, None, "triton"),
    (5, 17, 6, torch.float32, 1, True, "gaussian", True, None, 4, None, "triton"),
    (9, 20, 300, torch.float32, 1, True, "gaussian", True, 3, 4, None, "triton"),
    (9, 20, 300, torch.float32, 3, True, "gaussian", True, 3, None, None, "cublas"),
    (6, 130, 300, torch.float32, 2, True, "rademacher", True, 3, 4, [5, 2, 9, 9, 0, 1], "triton"),
    (6, 130, 300, torch.float32, 2, True, "gaussian", False, 3, 4, [5, 2, 9, 9, 0, 1], "cublas"),
    (11, 33, 19, torch.float32, 3, True, "gaussian", True, 3, 4, [4, 5, 0, 1, 7, 6, 2, 3, 9, 8, 10], "triton"),
    (5, 17, 300, torch.bfloat16, 4, True, "gaussian", True, 3, None, None, "triton"),
    (6, 40, 50, torch.float16, 2, True, "rademacher", True, 3, 4, None, "triton"),
    (6, 40, 260, torch.float16, 1, False, "gaussian", True, None, 4, None, "cublas"),
    (8, 37, 45, torch.float32, 6, True, "gaussian", True, 3, 4, None, "cublas"),  # rank > 4: generic delta path
    (8, 70, 33, torch.float32, 4, True, "gaussian", True, 3, 4, None, "cublas"),
    (8, 70, 33, torch.float32, 3, True, "rademacher", False, 3, 4, None, "cublas"),
]


def _modes(R, anti, ids, gemm):
    """(FORWARD_MODE, FORWARD_GEMM, paired) variants valid for one case."""
    out = [("tiles", gemm, False), ("delta", gemm, False)]
    if ids is None and anti and R % 2 == 0:
        out.append(("delta", gemm, True))  # rows 2q, 2q+1 are an antithetic pair
    return out


for R, n, m, dtype, rank, anti, noise, has_bias, wi, bi, ids, gemm in FORWARD:
    for mode, gemm_mode, paired in _modes(R, anti, ids, gemm):
        name = f"forward {mode} paired={paired} R={R} n={n} m={m} {dtype} r={rank} anti={anti} {noise} "
        name += f"bias={has_bias} w={wi} b={bi} {gemm_mode}" + (" shuffled" if ids is not None else "")

        @case(name)
        def _(R=R, n=n, m=m, dtype=dtype, rank=rank, anti=anti, noise=noise, has_bias=has_bias, wi=wi, bi=bi,
              ids=ids, mode=mode, gemm=gemm_mode, paired=paired):  # fmt: skip
            triton_ops.FORWARD_MODE = mode
            triton_ops.FORWARD_GEMM = gemm
            g = torch.Generator().manual_seed(R * 1000 + n)
            x = torch.randn(R, n, generator=g).to(dtype)
            w = (torch.randn(m, n, generator=g) / n**0.5).to(dtype)
            b = torch.randn(m, generator=g).to(dtype) if has_bias else None
            member_ids = torch.arange(R) if ids is None else torch.tensor(ids)
            kw = dict(seed=99, weight_index=wi, bias_index=bi, t_eff=3, sigma=0.4, rank=rank, antithetic=anti,
                      noise=noise)  # fmt: skip
            y = triton_ops.perturbed_linear_triton(x, w, b, member_ids, paired=paired, **kw)
            assert y.dtype == dtype and y.shape == (R, m), (y.dtype, y.shape)
            exact = reference.perturbed_linear_reference(
                x.double(), w.double(), None if b is None else b.double(), member_ids, **kw
            )
            twin = reference.perturbed_linear_reference(x, w, b, member_ids, **kw)
            err = _max_abs(y, exact)
            return err, 3 * _max_abs(twin, exact) + (1e-5 if dtype == torch.float32 else 1e-3)


triton_ops.FORWARD_MODE = "delta"


# --- update --------------------------------------------------------------------------------------------------
for noise, update_dtype, tol in [("gaussian", torch.float32, 1e-5), ("rademacher", torch.float32, 1e-5),
                                 ("gaussian", torch.bfloat16, 1e-2)]:  # fmt: skip

    @case(f"lowrank_update {noise} {update_dtype}")
    def _(noise=noise, update_dtype=update_dtype, tol=tol):
        triton_ops.UPDATE_DTYPE = update_dtype
        ids = torch.tensor([0, 5, 9, 2, 7])
        w = torch.linspace(-1.0, 2.0, 5)
        kw = dict(seed=3, param_index=2, t_eff=1, noise_ids=ids, weights=w, m=33, n=150, rank=3, noise=noise)
        got = triton_ops.lowrank_update_triton(**kw)
        ref = reference.lowrank_update_reference(**kw)
        assert got.dtype == torch.float32 and got.shape == (33, 150)
        return ((got - ref).norm() / ref.norm()).item(), tol


for gram_max in (4096, 0):  # 4096: one GEMM into the parameter, norm from the Gram matrices; 0: fallback via G

    @case(f"lowrank_apply gram_max={gram_max}")
    def _(gram_max=gram_max):
        triton_ops.UPDATE_DTYPE = None
        old, triton_ops.APPLY_GRAM_MAX = triton_ops.APPLY_GRAM_MAX, gram_max
        ids = torch.tensor([3, 1, 4, 0])
        w = torch.tensor([0.5, -1.0, 2.0, 0.25])
        kw = dict(seed=5, param_index=1, t_eff=2, noise_ids=ids, weights=w, m=80, n=70, rank=2)
        p0 = torch.randn(80, 70)
        p = p0.clone()
        sq = triton_ops.lowrank_apply_triton(p, 0.3, factor_dtype=torch.float32, **kw)
        triton_ops.APPLY_GRAM_MAX = old
        G = reference.lowrank_update_reference(**kw)
        err = max(((p - p0 - 0.3 * G).norm() / (0.3 * G.norm())).item(), abs(sq.item() / G.square().sum().item() - 1))
        return err, 1e-5


@case("lowrank_update chunked")
def _():
    triton_ops.UPDATE_DTYPE = torch.float32
    old = triton_ops.UPDATE_CHUNK_ELEMENTS
    triton_ops.UPDATE_CHUNK_ELEMENTS = 2 * 2 * (20 + 30)  # two noise indices per chunk
    kw = dict(seed=1, param_index=0, t_eff=0, noise_ids=torch.arange(5), weights=torch.randn(5), m=20, n=30, rank=2)
    got = triton_ops.lowrank_update_triton(**kw)
    triton_ops.UPDATE_CHUNK_ELEMENTS = old
    ref = reference.lowrank_update_reference(**kw)
    return ((got - ref).norm() / ref.norm()).item(), 1e-5


for noise, numel, J in [("gaussian", 300, 5), ("rademacher", 300, 5), ("gaussian", 7, 40)]:

    @case(f"vector_update {noise} numel={numel} J={J}")
    def _(noise=noise, numel=numel, J=J):
        kw = dict(seed=3, param_index=2, t_eff=1, noise_ids=torch.arange(J) * 3, weights=torch.randn(J), numel=numel,
                  noise=noise)  # fmt: skip
        got = triton_ops.vector_update_triton(**kw)
        assert got.dtype == torch.float32 and got.shape == (numel,)
        return _max_abs(got, reference.vector_update_reference(**kw)), 1e-5


# --- bad input -----------------------------------------------------------------------------------------------
BAD = {
    "x 1-D": lambda x, w, b, i: (x[0], w, b, i),
    "weight in_features": lambda x, w, b, i: (x, w[:, :-1], b, i),
    "weight dtype": lambda x, w, b, i: (x, w.double(), b, i),
    "bias shape": lambda x, w, b, i: (x, w, b[:-1], i),
    "member_ids length": lambda x, w, b, i: (x, w, b, i[:-1]),
    "member_ids float": lambda x, w, b, i: (x, w, b, i.float()),
}
for label, mutate in BAD.items():

    @case(f"bad input: {label}")
    def _(mutate=mutate):
        args = mutate(torch.randn(4, 8), torch.randn(5, 8), torch.randn(5), torch.arange(4))
        kw = dict(seed=0, weight_index=0, bias_index=1, t_eff=0, sigma=0.1, rank=1, antithetic=True)
        try:
            triton_ops.perturbed_linear_triton(*args, **kw)
        except (ValueError, TypeError):
            return 0, 0
        return 1, 0


@case("bad input: noise name")
def _():
    try:
        triton_ops.perturbed_linear_triton(
            torch.randn(4, 8), torch.randn(5, 8), None, torch.arange(4), seed=0, weight_index=0, bias_index=None,
            t_eff=0, sigma=0.1, rank=1, antithetic=True, noise="uniform",
        )  # fmt: skip
    except ValueError as exc:
        return (0 if "noise" in str(exc) else 1), 0
    return 1, 0


json.dump(RESULTS, sys.stdout)
