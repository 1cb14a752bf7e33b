"""Benchmark of the EGGROLL kernels against plain inference and the usual ways of evaluating a population.

One run times, on the same inputs: plain inference (``x W^T + b``, cuBLAS), our Triton kernels, naive torch
low-rank with stored factors, naive torch low-rank with ``torch.randn`` per call, full-rank OpenES (materialized
weights, where they fit) and ``torch.func.vmap(functional_call)`` over stacked parameters (EvoTorch's way).
``ratio = plain_ms / eggroll_ms`` (1.0 = free perturbation). Writes ``kernels.json`` and ``kernels.md``.

Usage: ``PYTHONPATH=. python benchmarks/bench_kernels.py --out benchmarks/results``
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from eggroll_rl.kernels import linear, optim, philox, update
from eggroll_rl.noise import NOISE_TYPES, member_noise_and_sign
from eggroll_rl.validation import check_choice

SEED = 1234
SIGMA = 0.1


def _time_graph(fns, reps: int = 50) -> float:
    """Median ms of one call, from CUDA-graph replays of ``fns`` (one call per input set, rotated)."""
    for f in fns:  # warm-up: compile, autotune, allocator
        f()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for f in fns:
            f()
        torch.cuda.synchronize()
        with torch.cuda.graph(g, stream=s):
            for f in fns:
                f()
    torch.cuda.current_stream().wait_stream(s)
    g.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / len(fns))
    return statistics.median(times)


def _time_bench(fns) -> float:
    """Median ms per call via ``do_bench``, rotating over the input sets."""
    it = [0]

    def run():
        fns[it[0] % len(fns)]()
        it[0] += 1

    return do_bench(run, warmup=50, rep=200, return_mode="median")


def kernel_breakdown(fn, calls: int = 10) -> dict[str, float]:
    """Mean device microseconds per call of each kernel that ``fn`` launches (torch.profiler)."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    out = {}
    for evt in prof.key_averages():
        t = getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0)
        if t:
            out[evt.key[:60]] = round(t / calls, 2)
    return out


def timed(fns, graph: bool) -> float | None:
    try:
        return _time_graph(fns) if graph else _time_bench(fns)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None


# --------------------------------------------------------------------------------------------------------- layers


def member_sign(num_rows: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.arange(num_rows, device=device)
    j, s = member_noise_and_sign(ids, True)
    return ids, j, s


def eggroll_layer(x, lin, ids, k_w, k_b, rank, noise):
    # ids = arange(rows) with antithetic pairs: rows 2q, 2q+1 share their noise (paired=True).
    return linear.perturbed_linear_triton(
        x, lin.weight, lin.bias, ids, seed=SEED, weight_index=k_w, bias_index=k_b, t_eff=0, sigma=SIGMA,
        rank=rank, antithetic=True, noise=noise, paired=True, check_paired=False,
    )  # fmt: skip


def naive_layer(x, lin, s, A, B, eps, rank):
    """Stored (or freshly drawn) factors per member: ``A (N, m, r)``, ``B (N, n, r)``, ``eps (N, m)``."""
    y = F.linear(x, lin.weight, lin.bias)
    xb = torch.bmm(x.unsqueeze(1), B).squeeze(1)  # (N, r)
    scale = (SIGMA / math.sqrt(rank)) * s.to(x.dtype)
    return (
        y
        + torch.bmm((xb * scale[:, None]).unsqueeze(1), A.transpose(1, 2)).squeeze(1)
        + (SIGMA * s.to(x.dtype))[:, None] * eps
    )


def naive_factors(lin, rows, rank, dtype, device, randn_per_call: bool):
    """Factor tensors for ``rows`` members with antithetic pairs sharing noise (expand, no copy)."""
    m, n = lin.weight.shape
    pairs = rows // 2

    def draw():
        A = torch.randn(pairs, 1, m, rank, dtype=dtype, device=device).expand(pairs, 2, m, rank).reshape(rows, m, rank)
        B = torch.randn(pairs, 1, n, rank, dtype=dtype, device=device).expand(pairs, 2, n, rank).reshape(rows, n, rank)
        e = torch.randn(pairs, 1, m, dtype=dtype, device=device).expand(pairs, 2, m).reshape(rows, m)
        return A, B, e

    if randn_per_call:
        return draw
    stored = draw()
    return lambda: stored


# ------------------------------------------------------------------------------------------------------- cases


def case_linear(name, rows, features, rank, noise, dtype, device):
    torch.manual_seed(0)
    lin = nn.Linear(features, features, device=device, dtype=dtype)
    xs = [torch.randn(rows, features, device=device, dtype=dtype) for _ in range(3)]
    ids, j, s = member_sign(rows, device)
    rec = {"case": name, "noise": noise, "dtype": str(dtype).removeprefix("torch."), "rank": rank, "rows": rows}
    rec["shape"] = f"Linear {features}x{features}, {rows} rows"
    with torch.no_grad():
        timed([lambda x=x: eggroll_layer(x, lin, ids, 0, 1, rank, noise) for x in xs], graph=False)  # compile
        # The plain GEMM's time drifts with the clocks by up to ~10 % between measurements: time plain and
        # perturbed alternately REPEATS times and keep the median pair (by ratio) and the spread.
        pairs = []
        for _ in range(REPEATS):
            p = timed([lambda x=x: F.linear(x, lin.weight, lin.bias) for x in xs], graph=False)
            e = timed([lambda x=x: eggroll_layer(x, lin, ids, 0, 1, rank, noise) for x in xs], graph=False)
            pairs.append((p / e, p, e))
        pairs.sort()
        _, rec["plain_ms"], rec["eggroll_ms"] = pairs[len(pairs) // 2]
        rec["ratio_min"], rec["ratio_max"] = pairs[0][0], pairs[-1][0]
        rec["kernels_us"] = kernel_breakdown(lambda: eggroll_layer(xs[0], lin, ids, 0, 1, rank, noise))
        if noise == "gaussian":
            for label, per_call in (("naive_stored_ms", False), ("naive_randn_ms", True)):
                try:
                    fac = naive_factors(lin, rows, rank, dtype, device, per_call)
                    rec[label] = timed([lambda x=x, f=fac: naive_layer(x, lin, s, *f(), rank) for x in xs], graph=False)
                    del fac
                except torch.cuda.OutOfMemoryError:
                    rec[label] = None
                torch.cuda.empty_cache()
            # Materialized per-member weights (OpenES, vmap over stacked parameters) need rows * 128 MiB: no fit.
            rec["openes_ms"] = rec["vmap_ms"] = None
    rec["ratio"] = rec["plain_ms"] / rec["eggroll_ms"]
    return rec


class MLP(nn.Module):
    def __init__(self, sizes, device, dtype):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b, device=device, dtype=dtype) for a, b in zip(sizes, sizes[1:]))

    def forward(self, x):
        for i, lin in enumerate(self.layers):
            x = lin(x)
            if i < len(self.layers) - 1:
                x = torch.tanh(x)
        return x


def case_mlp(name, members, rank, noise, device, with_strategy: bool):
    torch.manual_seed(0)
    dtype = torch.float32
    sizes = (17, 256, 256, 256, 6)
    model = MLP(sizes, device, dtype)
    xs = [torch.randn(members, sizes[0], device=device, dtype=dtype) for _ in range(3)]
    ids, j, s = member_sign(members, device)
    layers = list(model.layers)
    rec = {"case": name, "noise": noise, "dtype": "float32", "rank": rank, "rows": members}
    rec["shape"] = f"MLP {'-'.join(map(str, sizes))} (tanh), {members} members x 1 row"

    def eggroll(x):
        for i, lin in enumerate(layers):
            x = eggroll_layer(x, lin, ids, 2 * i, 2 * i + 1, rank, noise)
            if i < len(layers) - 1:
                x = torch.tanh(x)
        return x

    with torch.no_grad():
        rec["plain_ms"] = timed([lambda x=x: model(x) for x in xs], graph=True)
        rec["eggroll_ms"] = timed([lambda x=x: eggroll(x) for x in xs], graph=True)
        rec["kernels_us"] = kernel_breakdown(lambda: eggroll(xs[0]))
        if with_strategy:
            try:
                from eggroll_rl import EggrollStrategy

                strat = EggrollStrategy(sigma=SIGMA, lr=0.01, rank=rank, noise=noise)
                strat.setup(model)
                with strat.perturb(population_size=members, epoch=0) as pop:
                    rec["batched_forward_ms"] = timed(
                        [lambda x=x: pop.batched_forward(model, x) for x in xs], graph=True
                    )
            except Exception as exc:  # noqa: BLE001 - report, keep benchmarking
                rec["batched_forward_ms"] = None
                rec["batched_forward_error"] = repr(exc)[:200]
        if noise == "gaussian":
            for label, per_call in (("naive_stored_ms", False), ("naive_randn_ms", True)):
                facs = [naive_factors(lin, members, rank, dtype, device, per_call) for lin in layers]

                def naive(x, facs=facs):
                    for i, (lin, fac) in enumerate(zip(layers, facs)):
                        x = naive_layer(x, lin, s, *fac(), rank)
                        if i < len(layers) - 1:
                            x = torch.tanh(x)
                    return x

                rec[label] = timed([lambda x=x: naive(x) for x in xs], graph=True)
                del facs
            params = sum(p.numel() for p in model.parameters())
            if members * params * 4 <= 12e9:
                stacked = {
                    n: (p.detach()[None] + SIGMA * torch.randn(members, *p.shape, device=device, dtype=dtype))
                    for n, p in model.named_parameters()
                }

                def openes(x):
                    h = x.unsqueeze(1)
                    for i in range(len(layers)):
                        W, b = stacked[f"layers.{i}.weight"], stacked[f"layers.{i}.bias"]
                        h = torch.baddbmm(b.unsqueeze(1), h, W.transpose(1, 2))
                        if i < len(layers) - 1:
                            h = torch.tanh(h)
                    return h.squeeze(1)

                rec["openes_ms"] = timed([lambda x=x: openes(x) for x in xs], graph=True)
                fcall = torch.func.vmap(
                    lambda p, xi: torch.func.functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)
                )
                rec["vmap_ms"] = timed([lambda x=x: fcall(stacked, x) for x in xs], graph=True)
                del stacked
            else:
                rec["openes_ms"] = rec["vmap_ms"] = None
            torch.cuda.empty_cache()
    rec["ratio"] = rec["plain_ms"] / rec["eggroll_ms"]
    return rec


def gpu_and_wall_ms(fn, n: int = 10) -> tuple[float, float]:
    """``(GPU kernel time, wall time)`` of one call of ``fn`` in ms, averaged over ``n`` calls.

    The GPU figure is the sum of the CUDA kernels torch.profiler records; the wall figure (synchronized) adds the
    host's time between launches, which ``step()``'s device syncs expose.
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / n * 1e3
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    gpu_us = sum(e.device_time_total for e in prof.events() if e.device_type == DeviceType.CUDA)
    return gpu_us / n / 1e3, wall


# label -> optimizer=...
STEP_OPTIMIZERS = {
    "plain": None,
    "sgd": "sgd",
    "adam": "adam",
    "adam_g": "adam",
    "plain_tma": None,
    "adam_g_tma": "adam",
    "plain_sr": None,
}
# "adam" runs Adam in the update GEMM's epilogue; "adam_g" stores G in float32, then runs the one-pass Adam kernel
# (strategy.ADAM_IN_EPILOGUE forced True / False; by default the strategy picks by the matrix's size, and at this
# shape it takes the adam_g route). "..._tma": the same with the first persistent TMA candidate
# (update.TMA_GEMM_SHAPES[0]) put first in update.GEMM_SHAPES for that step only (not yet the default). "plain_sr":
# low_precision="stochastic" (no master: the bf16 weight updated in place, rounded stochastically in the epilogue).


def case_update(rows, features, rank, noise, dtype, device):
    """``step()`` at the paper shape vs one plain forward: the real ``EggrollStrategy.step`` on a bf16 Linear.

    The Linear is bf16, so the strategy keeps float32 master weights (and float32 Adam state) and writes the rounded
    bf16 weights back each step. Timed per optimizer (``STEP_OPTIMIZERS``: plain ascent ``optimizer=None``, a named
    ``"sgd"``, ``"adam"``): ``step_<label>_ms`` the GPU time of one ``step()`` (torch.profiler: the sum of its
    kernels; fitness shaping and metrics included), ``step_<label>_wall_ms`` its synchronized wall time,
    ``<label>_over_forward`` the GPU time over one plain forward of the same run, ``kernels_<label>_us`` the per-kernel
    breakdown. ``grad_ms``: the gradient kernels alone (``G`` float32, as ``estimate_gradient`` returns it).
    ``eggroll_ms`` / ``ratio`` keep the plain-ascent step for the table.
    """
    from eggroll_rl import EggrollStrategy

    torch.manual_seed(0)
    rec = {"case": "update", "noise": noise, "dtype": str(dtype).removeprefix("torch."), "rank": rank, "rows": rows}
    J = rows // 2
    rec["shape"] = f"step(): Linear {features}x{features}, {rows} members ({J} pairs)"
    lin = nn.Linear(features, features, device=device, dtype=dtype)
    xs = [torch.randn(rows, features, device=device, dtype=dtype) for _ in range(3)]
    fit = torch.randn(rows, device=device)
    ids = torch.arange(J, device=device)

    def grad_only(w):
        kw = dict(seed=SEED, param_index=0, t_eff=0, noise_ids=ids, weights=w, noise=noise)
        update.lowrank_update_triton(m=features, n=features, rank=rank, factor_dtype=dtype, **kw)
        kw["param_index"] = 1
        update.vector_update_triton(numel=features, **kw)

    def step(es):
        es.perturb(rows)  # step() consumes its perturb(); this one costs no GPU time
        return es.step(fit)

    with torch.no_grad():
        rec["plain_ms"] = timed([lambda x=x: F.linear(x, lin.weight, lin.bias) for x in xs], graph=False)
        rec["grad_ms"] = timed([lambda: grad_only(fit[:J])], graph=False)
        default_shapes = update.GEMM_SHAPES
        for label, optimizer in STEP_OPTIMIZERS.items():
            low_precision = "stochastic" if label.endswith("_sr") else "master"
            es = EggrollStrategy(sigma=SIGMA, lr=1e-4, rank=rank, noise=noise, optimizer=optimizer, seed=SEED,
                                 low_precision=low_precision)  # fmt: skip
            es.setup(lin)
            if label.startswith("adam"):
                es._adam_in_epilogue = label == "adam"
            if label.endswith("_tma"):
                update.GEMM_SHAPES = (update.TMA_GEMM_SHAPES[0], *default_shapes)
            try:
                rec[f"step_{label}_ms"], rec[f"step_{label}_wall_ms"] = gpu_and_wall_ms(lambda es=es: step(es))
                rec[f"{label}_over_forward"] = rec[f"step_{label}_ms"] / rec["plain_ms"]
                rec[f"kernels_{label}_us"] = kernel_breakdown(lambda es=es: step(es))
            except Exception as exc:  # noqa: BLE001 - a candidate that fails must not lose the other labels
                if not label.endswith("_tma"):
                    raise
                rec[f"step_{label}_error"] = repr(exc)[:200]
            finally:
                update.GEMM_SHAPES = default_shapes
            del es
            torch.cuda.empty_cache()
    rec["eggroll_ms"] = rec["step_plain_ms"]
    rec["eggroll_variant"] = "step() GPU time, optimizer=None (fused apply)"
    rec["ratio"] = rec["plain_ms"] / rec["eggroll_ms"]
    return rec


def sweep_shapes() -> list[update.GemmShape]:
    """Launch shapes of the fused update GEMM to time (the default first); see update.GEMM_SHAPES."""
    G = update.GemmShape
    candidates = [
        update.GEMM_SHAPES[0],
        G(64, 128, 64, 4, 4),  # the default's tile without the prefetched C (the default until session 8)
        G(128, 128, 64, 8, 3),  # Triton's usual Hopper tile: ~230 registers a thread, one program per SM
        G(128, 128, 64, 8, 3, maxnreg=128),  # two programs per SM, the epilogue spills
        G(128, 64, 64, 4, 4),
        G(64, 64, 64, 4, 3),
        G(128, 256, 64, 8, 3),  # largest tile: the main loop's best, the epilogue spills
        # fewer stages: K is short at the paper shape (8 or 32 steps of 64), so 2-3 stages may hide the loads as
        # well, and a smaller shared-memory footprint fits more programs an SM (epilogues under main loops)
        G(64, 128, 64, 4, 3),
        G(64, 128, 64, 4, 2),
        G(64, 128, 128, 4, 2),
        # the C tile loaded before the main loop: its DRAM latency under the MMAs (more registers held)
        G(64, 128, 64, 4, 4, prefetch_c=True),
        G(64, 128, 64, 4, 2, prefetch_c=True),
        G(64, 64, 64, 4, 3, prefetch_c=True),
        # the persistent kernel with TMA operand loads (a program walks its tiles; session 20, not yet timed)
        *update.TMA_GEMM_SHAPES,
    ]
    return list(dict.fromkeys(candidates))


def shape_key(shape: update.GemmShape) -> str:
    """``64x128x64x4x4x8`` (block m/n/k, warps, stages, group; then the register cap, ``pf`` for a prefetched C
    tile and ``tmaP`` for the persistent TMA kernel at P programs an SM, when set): the launch shape's name in the
    sweep's columns."""
    parts = [str(x) for x in shape[:6]]
    if shape.maxnreg is not None:
        parts.append(str(shape.maxnreg))
    if shape.prefetch_c:
        parts.append("pf")
    if shape.persistent:
        parts.append(f"tma{shape.persistent}")
    return "x".join(parts)


def adam_sweep_shapes() -> list[update.GemmShape]:
    """Launch shapes of the Adam-in-epilogue GEMM to time (the default first); see update.ADAM_GEMM_SHAPES."""
    G = update.GemmShape
    candidates = [update.ADAM_GEMM_SHAPES[0], G(64, 128, 64, 8, 4), G(64, 64, 64, 4, 4)]
    return list(dict.fromkeys(candidates))


def case_update_sweep(rows, features, dtype, device):
    """The update's GEMM alone at the paper shape, r = 1 and 4, per launch shape, against cuBLAS.

    ``fused_<shape>_ms``: one ``lowrank_addmm_kernel`` launch (float32 master += lr At^T Bt, bf16 copy, both norms:
    what ``step()`` runs for a bf16 model with plain ascent / SGD); ``sr_<shape>_ms``: the same into the bf16 weight
    itself, rounded stochastically (``low_precision="stochastic"``); ``adam_fused_<shape>_ms``: one
    ``lowrank_adam_kernel`` launch (Adam on the master and its moments in the epilogue, bf16 copy: ``step()`` with
    Adam); ``store_g_ms``: the same GEMM writing G in float32 (the Adam path with ``grad_clip``). References:
    ``cublas_f32_ms`` (``torch.addmm`` of the same factors into a
    float32 output, no copy, no norm), ``cublas_bf16_ms`` (``W.addmm_`` into the bf16 weight: the fc485a4 path, no
    master), ``copy_ms`` (the bf16 refresh pass ``W.copy_(master)``), ``factors_ms`` (regenerating the factors),
    ``adam_ms`` / ``ascent_ms`` (the one-pass optimizer kernels over the weight, reading a stored G), ``forward_ms``
    (the plain forward).
    """
    torch.manual_seed(0)
    J = rows // 2
    lin = nn.Linear(features, features, device=device, dtype=dtype)
    xs = [torch.randn(rows, features, device=device, dtype=dtype) for _ in range(3)]
    master = lin.weight.detach().float().contiguous()
    copy = lin.weight.detach()

    def attempt(rec: dict, key: str, fns) -> None:
        """``rec[key]`` = the timing of ``fns``, or None and ``rec[key_error]`` (one variant must not lose the rest)."""
        try:
            rec[key] = timed(fns, graph=False)
        except Exception as exc:  # noqa: BLE001
            rec[key] = None
            rec[key.removesuffix("_ms") + "_error"] = repr(exc)[:200]

    def one_rank(rank: int, forward_ms: float) -> dict:
        rec = {"case": "update_sweep", "rank": rank, "rows": rows, "dtype": str(dtype).removeprefix("torch."),
               "noise": "gaussian", "forward_ms": forward_ms}  # fmt: skip
        rec["shape"] = f"update GEMM: {features}x{features}, K = {J}x{rank}"
        ids = torch.arange(J, device=device)
        w = torch.randn(J, device=device)
        args = (ids, w, SEED, 0, 0, features, features, rank, 0, dtype, update.CHUNK_ELEMENTS)
        rec["factors_ms"] = timed([lambda: list(update._factor_chunks(*args))], graph=False)
        ((at, bt),) = update._factor_chunks(*args)
        at, bt = at.clone(), bt.clone()
        for shape in sweep_shapes():
            key = "fused_" + shape_key(shape) + "_ms"
            kw = dict(alpha=1e-6, beta=1.0, read_c=True, copy=copy, shape=shape)
            attempt(rec, key, [lambda kw=kw: update._addmm(at, bt, master, **kw)])
        weight = lin.weight.detach().clone()
        for shape in update.GEMM_SHAPES:  # low_precision="stochastic": into the bf16 weight, no master, no copy
            key = "sr_" + shape_key(shape) + "_ms"
            kw = dict(alpha=1e-6, beta=1.0, read_c=True, copy=None, shape=shape, round_keys=(12345, 678))
            attempt(rec, key, [lambda kw=kw: update._addmm(at, bt, weight, **kw)])
        g_buf = torch.empty_like(master)
        store = [lambda: update._addmm(at, bt, g_buf, alpha=1.0, beta=0.0, read_c=False, copy=None,
                                       shape=update.GEMM_SHAPES[0])]  # fmt: skip
        attempt(rec, "store_g_ms", store)
        m_buf, v_buf = torch.zeros_like(master), torch.zeros_like(master)
        hyper = optim.AdamStep(step=1, lr=1e-6)
        for shape in adam_sweep_shapes():
            key = "adam_fused_" + shape_key(shape) + "_ms"
            kw = dict(copy=copy, shape=shape)
            attempt(rec, key, [lambda kw=kw: update._adam_gemm(at, bt, master, m_buf, v_buf, hyper, **kw)])
        attempt(rec, "cublas_f32_ms", [lambda: torch.addmm(master, at.T, bt, alpha=1e-6, out_dtype=torch.float32)])
        attempt(rec, "cublas_bf16_ms", [lambda: lin.weight.addmm_(at.T, bt, alpha=1e-6)])
        attempt(rec, "copy_ms", [lambda: copy.copy_(master)])
        print(json.dumps(rec), flush=True)
        return rec

    with torch.no_grad():
        forward_ms = timed([lambda x=x: F.linear(x, lin.weight, lin.bias) for x in xs], graph=False)
        out = [one_rank(rank, forward_ms) for rank in (1, 4)]
        g = torch.randn_like(master)
        m, v = torch.zeros_like(master), torch.zeros_like(master)
        adam = optim.AdamStep(step=1, lr=1e-6)
        attempt(out[-1], "adam_ms", [lambda: optim.adam_step_triton(master, g, m, v, adam, copy=copy)])
        attempt(out[-1], "ascent_ms", [lambda: optim.ascent_step_triton(master, g, alpha=1e-6, copy=copy)])
    return out


NOISE_STREAMS = {"factor column": (0, 0), "vector": (2, 0)}  # (stream, column) of noise_stream_triton


def case_noise(device, noise):
    """Raw generator throughput: 2^26 values of one stream kind, written to memory (256 MiB), for one factor column
    (what a call holds for the other columns of its group goes unused: 3 of 4 words for Rademacher, half of a
    gaussian_fast call) and for the vector stream (every value of every call used)."""
    ids = torch.arange(1024, device=device)
    length = 1 << 16
    n = ids.numel() * length
    out = []
    for label, (stream, column) in NOISE_STREAMS.items():

        def generate(stream=stream, column=column):
            return philox.noise_stream_triton(SEED, 0, 0, ids, stream, column, length, noise)

        t = timed([generate], graph=False)
        out.append({"case": "noise_throughput", "noise": noise, "stream": label, "values": n, "ms": t,
                    "gvalues_per_s": n / t / 1e6})  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------------------- main


REPEATS = 5  # interleaved plain/perturbed timings per single-layer case
TARGETS = {"paper_r1": 0.90, "paper_r4": 0.85, "rl_4096": 0.60, "rl_65536": 0.50}
# step() GPU time over one plain forward (issue 14 section 2): plain ascent / SGD by rank, Adam at any rank.
STEP_TARGETS = {
    ("plain", 1): 1.5,
    ("plain", 4): 2.5,
    ("sgd", 1): 1.5,
    ("sgd", 4): 2.5,
    ("adam", 1): 5.0,
    ("adam", 4): 5.0,
    ("adam_g", 1): 5.0,
    ("adam_g", 4): 5.0,
}


def write_md(path: Path, meta: dict, records: list[dict]) -> None:
    def fmt(v):
        return "—" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))

    def variant(r):
        return f" ({r['eggroll_variant']})" if "eggroll_variant" in r else ""

    def spread(r):
        return f" ({r['ratio_min']:.3f}–{r['ratio_max']:.3f})" if "ratio_min" in r else ""

    lines = [
        "# Kernel benchmark",
        "",
        f"Device: {meta['device']}; torch {meta['torch']}, triton {meta['triton']}, CUDA {meta['cuda']}; "
        f"{meta['date']}. Times are medians in ms (do_bench for single layers, CUDA-graph replays for the MLPs), "
        "inputs rotated over 3 random sets. ratio = plain_ms / eggroll_ms; for single layers the median of "
        f"{REPEATS} interleaved plain/perturbed timings, with their range.",
        "",
        "| case | shape | noise | dtype | r | plain ms | eggroll ms | ratio | target | naive stored | naive randn "
        "| OpenES | vmap | batched_forward |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        if r["case"] == "noise_throughput":
            continue
        if r["case"] == "update_sweep":
            continue
        tgt = TARGETS.get(r["case"])
        step_tgt = STEP_TARGETS.get(("plain", r["rank"]))
        tgt_s = f"≥ {tgt}" if tgt else (f"≤ {step_tgt}× fwd" if r["case"] == "update" else "")
        lines.append(
            f"| {r['case']} | {r['shape']} | {r['noise']} | {r['dtype']} | {r['rank']} | {fmt(r['plain_ms'])} "
            f"| {fmt(r['eggroll_ms'])}{variant(r)} | **{r['ratio']:.3f}**{spread(r)} | {tgt_s} "
            f"| {fmt(r.get('naive_stored_ms'))} | {fmt(r.get('naive_randn_ms'))} | {fmt(r.get('openes_ms'))} "
            f"| {fmt(r.get('vmap_ms'))} | {fmt(r.get('batched_forward_ms'))} |"
        )
    upd = [r for r in records if r["case"] == "update"]
    if upd:
        lines += ["", "`step()` at the paper shape (bf16 Linear, float32 masters): GPU ms, × one plain forward of the "
                  "same run (target), wall ms:", "",
                  "| noise | r | forward ms | " + " | ".join(STEP_OPTIMIZERS) + " | gradient kernels ms |",
                  "|---|---|---|" + "---|" * len(STEP_OPTIMIZERS) + "---|"]  # fmt: skip
        for r in upd:
            cells = [
                f"{fmt(r[f'step_{k}_ms'])} = **{r[f'{k}_over_forward']:.2f}×** "
                f"(≤ {STEP_TARGETS.get((k, r['rank']), '—')}), wall {fmt(r[f'step_{k}_wall_ms'])}"
                if f"step_{k}_ms" in r
                else "—"  # a record from before this label existed
                for k in STEP_OPTIMIZERS
            ]
            lines.append(f"| {r['noise']} | {r['rank']} | {fmt(r['plain_ms'])} | " + " | ".join(cells)
                         + f" | {fmt(r['grad_ms'])} |")  # fmt: skip
    sweep = [r for r in records if r["case"] == "update_sweep"]
    if sweep:
        keys = [k for k in sweep[0] if k.endswith("_ms") and k != "forward_ms"]
        lines += ["", "Update GEMM alone (ms; float32 master += lr At^T Bt with bf16 copy and norms, vs cuBLAS):", "",
                  "| r | forward | " + " | ".join(k.removesuffix("_ms") for k in keys) + " |",
                  "|---|---|" + "---|" * len(keys)]  # fmt: skip
        for r in sweep:
            lines.append(f"| {r['rank']} | {fmt(r['forward_ms'])} | " + " | ".join(fmt(r.get(k)) for k in keys) + " |")
        tail = sweep[-1]
        lines.append(
            f"\nOne-pass optimizer kernels over the 8192² float32 master (+ bf16 copy): Adam "
            f"{fmt(tail.get('adam_ms'))} ms, ascent {fmt(tail.get('ascent_ms'))} ms."
        )
    lines += ["", "Generator throughput (values written to memory):", ""]
    for r in records:
        if r["case"] == "noise_throughput":
            lines.append(
                f"- {r['noise']}, {r.get('stream', 'factor column')}: {r['values']} values in {fmt(r['ms'])} ms = "
                f"{r['gvalues_per_s']:.1f} G/s"
            )
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument(
        "--cases",
        default="paper_r1,paper_r4,rl_4096,rl_65536,update,noise",
        help="comma-separated; also update_sweep (the update GEMM's launch shapes against cuBLAS)",
    )
    ap.add_argument("--noises", default="gaussian,rademacher", help=f"comma-separated, of {', '.join(NOISE_TYPES)}")
    args = ap.parse_args()
    noises = [check_choice("noise", n, NOISE_TYPES) for n in args.noises.split(",")]
    if not torch.cuda.is_available():
        raise SystemExit("bench_kernels.py needs a CUDA GPU")
    device = torch.device("cuda")
    cases = args.cases.split(",")
    meta = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    records = []
    for noise in noises:
        table = {
            "paper_r1": [(case_linear, ("paper_r1", 1024, 8192, 1, noise, torch.bfloat16, device))],
            "paper_r4": [(case_linear, ("paper_r4", 1024, 8192, 4, noise, torch.bfloat16, device))],
            "rl_4096": [(case_mlp, ("rl_4096", 4096, 4, noise, device, True))],
            "rl_65536": [(case_mlp, ("rl_65536", 65536, 4, noise, device, True))],
            "update": [
                (case_update, (1024, 8192, 1, noise, torch.bfloat16, device)),
                (case_update, (1024, 8192, 4, noise, torch.bfloat16, device)),
            ],
            "noise": [(case_noise, (device, noise))],
            "update_sweep": [(case_update_sweep, (1024, 8192, torch.bfloat16, device))] if noise == noises[0] else [],
        }
        jobs = [job for c in cases for job in table[c]]
        for job in jobs:
            t0 = time.time()
            try:
                rec = job[0](*job[1])
            except Exception as exc:  # noqa: BLE001 - one failed case must not lose the others
                print(f"FAILED {job[1][:2]}: {exc!r}"[:2000], flush=True)
                continue
            for r in rec if isinstance(rec, list) else [rec]:
                r.update({k: meta[k] for k in ("device", "torch", "triton", "cuda")})
                records.append(r)
                print(json.dumps(r), f"({time.time() - t0:.0f}s)", flush=True)
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            (out / "kernels.json").write_text(json.dumps(records, indent=1) + "\n")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernels.json").write_text(json.dumps(records, indent=1) + "\n")
    write_md(out / "kernels.md", meta, records)
    print((out / "kernels.md").read_text())


if __name__ == "__main__":
    main()
