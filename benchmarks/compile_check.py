"""Compile every Triton kernel launch of eggroll_rl for a GPU target without a GPU (sm_90 by default).

The interpreter (``TRITON_INTERPRET=1``) runs on the CPU and executes the kernels as Python, so it cannot see what
only the compiler checks (constexpr branches, layouts, reshapes/joins, default constexpr arguments). This tool
closes that gap before a GPU session:

1. ``capture`` (a subprocess under the interpreter): drives ``EggrollStrategy`` (perturbed forward, ``step()`` with
   plain ascent and Adam) and the update GEMMs on small models for every noise kind, several ranks and dtypes,
   antithetic and not, with the kernels forced on; every launch ``kernel[grid](...)`` is recorded as the kernel's
   name, its argument types (tensor dtypes, ints, floats), its constexpr values and its launch options.
2. ``compile``: each distinct launch is compiled with ``triton.compile(ASTSource(...), target=GPUTarget("cuda",
   arch, 32))`` (Triton's bundled ptxas; no driver), and the result (shared memory) or the error is reported.

The interpreter's launches use its own small block sizes (``INTERPRET_BLOCK_MAX``, ``INTERPRET_GEMM_SHAPE``), so this
checks the code paths and their constexpr branches, not the GPU's launch shapes (``dump_sass.py`` compiles the update
GEMMs at those).

Usage: ``PYTHONPATH=. python benchmarks/compile_check.py [--arch 90] [--out DIR]``. With another Triton's compiler
(the GPU machine's 3.6, whose interpreter does not run these kernels on the CPU), capture with this one first:
``PYTHONPATH=. python benchmarks/compile_check.py --launches L.jsonl`` then
``PYTHONPATH=/tmp/t36:. python benchmarks/compile_check.py --launches L.jsonl``.
Both phases run in ``--jobs`` processes (default: the cores, at most 4): the capture's configurations split among
interpreter subprocesses, the launches among compiler workers (on the 2-core CI machine the quick grid takes ~55 s
cold instead of ~93 s). Exit status 1 when a launch does not compile.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNEL_MODULES = ("eggroll_rl.kernels.linear", "eggroll_rl.kernels.update", "eggroll_rl.kernels.optim",
                  "eggroll_rl.kernels.philox")  # fmt: skip
OPTIONS = ("num_warps", "num_stages", "maxnreg")
# Constexprs the interpreter sets for itself (_launch.FAST_MATH: no inline PTX there; UPCAST: numpy has no bf16 dot);
# compiled with the values a GPU launch passes.
GPU_CONSTEXPRS = {"FAST_MATH": True, "UPCAST": False}
_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "int64": "i64", "int32": "i32",
           "uint8": "u8", "int8": "i8", "bool": "i1", "float64": "fp64"}  # fmt: skip


# ------------------------------------------------------------------------------------------------ capture
def _arg_type(value) -> tuple[str, int | None]:
    """Triton's signature type of a runtime argument and, for ints, the value (for the divisibility attribute)."""
    import torch

    if isinstance(value, torch.Tensor):
        return "*" + _DTYPES[str(value.dtype).removeprefix("torch.")], None
    if isinstance(value, bool):
        return "i1", int(value)
    if isinstance(value, int):
        return ("i32" if -(2**31) <= value < 2**31 else "i64"), value
    if isinstance(value, float):
        return "fp32", None
    raise TypeError(f"unsupported kernel argument {value!r}")


def _workload(quick: bool = False, shard: tuple[int, int] = (0, 1)) -> None:
    """Small models through the strategy with every noise kind, rank, dtype and optimizer, plus the GEMM variants
    (``quick``: ranks 4 and 6, bf16, antithetic: one of each kernel branch per noise kind). ``shard=(i, n)``: only
    the configurations whose index is ``i`` modulo ``n`` (the GEMM variant in shard 0), so ``n`` processes share it."""
    import torch

    from eggroll_rl import EggrollStrategy, kernels
    from eggroll_rl.kernels import update
    from eggroll_rl.noise import NOISE_TYPES

    kernels.use_triton = lambda device: True
    index = -1
    for noise in NOISE_TYPES:
        for rank in (4, 6) if quick else (1, 2, 4, 6):
            for dtype in (torch.bfloat16,) if quick else (torch.float32, torch.bfloat16):
                for antithetic in (True,) if quick else (True, False):
                    for optimizer in (None, "adam"):
                        index += 1
                        if index % shard[1] != shard[0]:
                            continue
                        torch.manual_seed(0)
                        model = torch.nn.Sequential(torch.nn.Linear(40, 24), torch.nn.Tanh(), torch.nn.Linear(24, 8))
                        model = model.to(dtype)
                        es = EggrollStrategy(sigma=0.1, lr=1e-2, rank=rank, noise=noise, antithetic=antithetic,
                                             optimizer=optimizer, seed=3, allow_cpu=True)  # fmt: skip
                        es.setup(model)
                        with es.perturb(8, epoch=0) as pop:
                            pop.batched_forward(model, torch.randn(8, 40).to(dtype))  # paired rows when antithetic
                            pop.batched_forward(model, torch.randn(8, 40).to(dtype), torch.arange(8).flip(0))
                        es.step(torch.randn(8))
    if shard[0] != 0:
        return
    # the plain update GEMM with its C tile prefetched (a launch-shape option the strategy does not pick itself)
    at, bt = torch.randn(16, 48).to(torch.bfloat16), torch.randn(16, 40).to(torch.bfloat16)
    master, copy = torch.randn(48, 40), torch.empty(48, 40, dtype=torch.bfloat16)
    shape = update.INTERPRET_GEMM_SHAPE._replace(prefetch_c=True)
    update._addmm(at, bt, master, alpha=1e-3, beta=1.0, read_c=True, copy=copy, shape=shape)
    # low_precision="stochastic": the bf16 weight as C, rounded stochastically in the epilogue
    weight = torch.randn(48, 40).to(torch.bfloat16)
    update._addmm(at, bt, weight, alpha=1e-3, beta=1.0, read_c=True, copy=None, shape=shape, round_keys=(123, 4567))


def capture(path: Path, quick: bool = False, shard: tuple[int, int] = (0, 1)) -> None:
    """Run ``_workload`` (its ``shard``) under the interpreter, recording every launch to ``path`` (JSON lines,
    deduplicated)."""
    import importlib

    seen: dict[str, dict] = {}

    class Recorder:
        def __init__(self, module: str, name: str, kernel) -> None:
            self.module, self.name, self.kernel = module, name, kernel

        def __getitem__(self, grid):
            launch = self.kernel[grid]

            def run(*args, **kwargs):
                fn = self.kernel.fn if hasattr(self.kernel, "fn") else self.kernel
                names = list(fn.__code__.co_varnames[: fn.__code__.co_argcount])
                bound = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k not in OPTIONS}
                options = {k: v for k, v in kwargs.items() if k in OPTIONS}
                record = {"module": self.module, "kernel": self.name, "args": {}, "constexprs": {}, "options": options}
                annotations = getattr(fn, "__annotations__", {})
                for arg in names:
                    if arg not in bound:
                        continue  # a default
                    if "constexpr" in str(annotations.get(arg, "")):
                        record["constexprs"][arg] = bound[arg]
                    else:
                        record["args"][arg] = _arg_type(bound[arg])
                seen.setdefault(json.dumps(record, sort_keys=True), record)
                return launch(*args, **kwargs)

            return run

        def __getattr__(self, attr):
            return getattr(self.kernel, attr)

    for module_name in KERNEL_MODULES:
        module = importlib.import_module(module_name)
        for name, value in list(vars(module).items()):
            if type(value).__name__ == "InterpretedFunction" and name.endswith("_kernel"):
                setattr(module, name, Recorder(module_name, name, value))
    _workload(quick, shard)
    path.write_text("".join(json.dumps(r) + "\n" for r in seen.values()))


# ------------------------------------------------------------------------------------------------ compile
def compile_all(records: list[dict], arch: int, jobs: int = 1) -> list[dict]:
    """Compile each recorded launch for ``GPUTarget("cuda", arch, 32)`` (``dump_sass.compile_for_target``, with the
    GPU's values of ``GPU_CONSTEXPRS``; pointers aligned, ints plain); one result per record, in order. ``jobs > 1``:
    that many worker processes, each compiling every ``jobs``-th record."""
    import importlib

    if jobs > 1 and len(records) > 1:
        import concurrent.futures
        import multiprocessing

        parts = [records[i::jobs] for i in range(jobs)]
        context = multiprocessing.get_context("spawn")  # a fresh Triton in each worker
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
            done = list(pool.map(compile_all, parts, [arch] * jobs))
        results = [None] * len(records)
        for i, part in enumerate(done):
            results[i::jobs] = part
        return results

    from dump_sass import compile_for_target

    results = []
    for r in records:
        kernel = getattr(importlib.import_module(r["module"]), r["kernel"])
        constexprs = dict(r["constexprs"]) | {k: v for k, v in GPU_CONSTEXPRS.items() if k in r["constexprs"]}
        start = time.perf_counter()
        try:
            compiled = compile_for_target(kernel, r["args"], constexprs, r["options"], arch, int_attrs=False)
            out = {"ok": True, "shared": getattr(compiled.metadata, "shared", None)}
        except Exception as exc:  # noqa: BLE001 - a report, not a handler: every launch is tried
            out = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).strip()[:1500]}"}
        results.append({**r, "constexprs": constexprs, **out, "seconds": round(time.perf_counter() - start, 1)})
    return results


def _capture_in_parallel(launches: Path, quick: bool, jobs: int, tmp: Path) -> None:
    """``capture`` in ``jobs`` interpreter subprocesses, one shard each; their launches merged (deduplicated, in
    shard order) into ``launches``."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    parts = [tmp / f"launches.{i}.jsonl" for i in range(jobs)]
    procs = [subprocess.Popen([sys.executable, __file__, "--capture-only", str(part), "--shard", str(i), str(jobs)]
                              + (["--quick"] if quick else []), env=env, cwd=ROOT)
             for i, part in enumerate(parts)]  # fmt: skip
    codes = [proc.wait() for proc in procs]
    if any(codes):
        raise SystemExit(f"compile_check: a capture process failed (exit codes {codes})")
    merged = dict.fromkeys(line for part in parts for line in part.read_text().splitlines())
    launches.write_text("".join(line + "\n" for line in merged))


def _label(r: dict) -> str:
    keys = ("NOISE", "RANK", "PAIRED", "ANTITHETIC", "HAS_BIAS", "READ_C", "PREFETCH_C", "PERTURB_W", "PERTURB_B")
    const = ", ".join(f"{k}={r['constexprs'][k]}" for k in keys if k in r["constexprs"])
    return f"{r['kernel']}({const})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability (90: H100/H200)")
    p.add_argument("--out", type=Path, default=None, help="write compile_check.json here")
    p.add_argument(
        "--launches",
        type=Path,
        help="reuse (or keep) the captured launches in this file: capture under "
        "one Triton's interpreter, compile under another's compiler",
    )
    p.add_argument("--quick", action="store_true", help="a smaller grid: ranks 4 and 6, bf16, antithetic")
    p.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1),
                   help="processes for the capture and the compilation (default: the cores, at most 4)")  # fmt: skip
    p.add_argument("--capture-only", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--shard", type=int, nargs=2, default=(0, 1), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.capture_only:
        capture(args.capture_only, args.quick, tuple(args.shard))
        return 0
    if args.jobs < 1:
        raise SystemExit(f"compile_check: --jobs={args.jobs} is invalid: expected 1 or more processes")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("compile_check: unset TRITON_INTERPRET (it captures under the interpreter in a subprocess "
                         "and compiles with Triton's compiler here)")  # fmt: skip
    import tempfile

    import triton

    with tempfile.TemporaryDirectory() as tmp:
        launches = args.launches or Path(tmp) / "launches.jsonl"
        if not launches.exists():
            _capture_in_parallel(launches, args.quick, args.jobs, Path(tmp))
        records = [json.loads(line) for line in launches.read_text().splitlines()]
    results = compile_all(records, args.arch, args.jobs)
    failed = [r for r in results if not r["ok"]]
    print(f"Triton {triton.__version__}, sm_{args.arch}: {len(results)} distinct launches, {len(failed)} failed")
    for r in results:
        status = "ok" if r["ok"] else "FAILED"
        print(f"- {status:6} {_label(r)} {r['options']} {r['seconds']} s")
        if not r["ok"]:
            print("    " + r["error"].replace("\n", "\n    ")[:1500])
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compile_check.json").write_text(json.dumps(
            {"triton": triton.__version__, "arch": args.arch, "results": results}, indent=1, default=str))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
