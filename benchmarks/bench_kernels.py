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

from eggroll_rl.kernels import linear, philox, update
from eggroll_rl.noise import member_noise_and_sign

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


def case_update(rows, features, rank, noise, dtype, device):
    """``step()`` at the paper shape vs one plain forward: the real ``EggrollStrategy.step`` on a bf16 Linear.

    ``eggroll_ms`` is the GPU time of ``step()`` with ``optimizer=None`` (plain ascent, fused:
    ``W += lr sum_j w_j A_j B_j^T`` is one GEMM into ``W``), fitness shaping and metrics included; ``step_wall_ms``
    its synchronized wall time. Alongside: ``grad_ms`` (the gradient kernels alone, G in float32, as
    ``estimate_gradient`` returns it) and ``step_adam_ms`` / ``step_adam_wall_ms`` (``step()`` with Adam: G
    materialized, converted to the parameter dtype, Adam's state updated).
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

    def stepper(optimizer):
        es = EggrollStrategy(sigma=SIGMA, lr=1e-4, rank=rank, noise=noise, optimizer=optimizer, seed=SEED)
        es.setup(lin)
        return es

    def step(es):
        es.perturb(rows)  # step() consumes its perturb(); this one costs no GPU time
        return es.step(fit)

    with torch.no_grad():
        rec["plain_ms"] = timed([lambda x=x: F.linear(x, lin.weight, lin.bias) for x in xs], graph=False)
        rec["grad_ms"] = timed([lambda: grad_only(fit[:J])], graph=False)
        es = stepper(None)
        rec["eggroll_ms"], rec["step_wall_ms"] = gpu_and_wall_ms(lambda: step(es))
        es = stepper("adam")
        rec["step_adam_ms"], rec["step_adam_wall_ms"] = gpu_and_wall_ms(lambda: step(es))
    rec["eggroll_variant"] = "step() GPU time, optimizer=None (fused apply)"
    rec["ratio"] = rec["plain_ms"] / rec["eggroll_ms"]
    rec["update_over_forward"] = rec["eggroll_ms"] / rec["plain_ms"]
    rec["adam_over_forward"] = rec["step_adam_ms"] / rec["plain_ms"]
    return rec


def case_noise(device, noise):
    """Raw generator throughput: 2^26 values of one stream kind, written to memory (256 MiB)."""
    ids = torch.arange(1024, device=device)
    length = 1 << 16
    t = timed([lambda: philox.noise_stream_triton(SEED, 0, 0, ids, 0, 0, length, noise)], graph=False)
    n = ids.numel() * length
    return {"case": "noise_throughput", "noise": noise, "values": n, "ms": t, "gvalues_per_s": n / t / 1e6}


# ---------------------------------------------------------------------------------------------------------- main


REPEATS = 5  # interleaved plain/perturbed timings per single-layer case
TARGETS = {"paper_r1": 0.90, "paper_r4": 0.85, "rl_4096": 0.60, "rl_65536": 0.50}


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
        tgt = TARGETS.get(r["case"])
        tgt_s = f"≥ {tgt}" if tgt else ("≤ 1.5× fwd" if r["case"] == "update" else "")
        lines.append(
            f"| {r['case']} | {r['shape']} | {r['noise']} | {r['dtype']} | {r['rank']} | {fmt(r['plain_ms'])} "
            f"| {fmt(r['eggroll_ms'])}{variant(r)} | **{r['ratio']:.3f}**{spread(r)} | {tgt_s} "
            f"| {fmt(r.get('naive_stored_ms'))} | {fmt(r.get('naive_randn_ms'))} | {fmt(r.get('openes_ms'))} "
            f"| {fmt(r.get('vmap_ms'))} | {fmt(r.get('batched_forward_ms'))} |"
        )
    upd = [r for r in records if r["case"] == "update"]
    if upd:
        lines += ["", "Update (`step()` at the paper shape; ms, and × one plain forward of the same run):", ""]
        for r in upd:
            lines.append(
                f"- {r['noise']} r={r['rank']}: step() plain ascent (fused): GPU {fmt(r['eggroll_ms'])} ms = "
                f"{r['update_over_forward']:.2f}× a forward, wall {fmt(r['step_wall_ms'])} ms; gradient kernels "
                f"alone (G float32) {fmt(r['grad_ms'])} ms; step() with Adam: GPU {fmt(r['step_adam_ms'])} ms = "
                f"{r['adam_over_forward']:.2f}×, wall {fmt(r['step_adam_wall_ms'])} ms"
            )
    lines += ["", "Generator throughput (values written to memory):", ""]
    for r in records:
        if r["case"] == "noise_throughput":
            lines.append(f"- {r['noise']}: {r['values']} values in {fmt(r['ms'])} ms = {r['gvalues_per_s']:.1f} G/s")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--cases", default="paper_r1,paper_r4,rl_4096,rl_65536,update,noise")
    ap.add_argument("--noises", default="gaussian,rademacher")
    args = ap.parse_args()
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
    for noise in args.noises.split(","):
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
        }
        jobs = [job for c in cases for job in table[c]]
        for job in jobs:
            t0 = time.time()
            try:
                rec = job[0](*job[1])
            except Exception as exc:  # noqa: BLE001 - one failed case must not lose the others
                print(f"FAILED {job[1][:2]}: {exc!r}"[:2000], flush=True)
                continue
            rec.update({k: meta[k] for k in ("device", "torch", "triton", "cuda")})
            records.append(rec)
            print(json.dumps(rec), f"({time.time() - t0:.0f}s)", flush=True)
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
