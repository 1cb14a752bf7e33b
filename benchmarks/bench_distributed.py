"""Scaling of `train()` over ranks (torchrun): generation time, env steps/s and scaling efficiency at 1 and G GPUs.

    python benchmarks/bench_distributed.py            # GPUs: HalfCheetah defaults and N=16384, torch and JAX rollouts
    python benchmarks/bench_distributed.py --quick --device cpu --out /tmp/dist   # CPU check: CartPole, tiny
    python benchmarks/bench_distributed.py --cases halfcheetah_defaults halfcheetah_defaults_torch  # two cases

For each case and each rank count the driver launches ``torchrun --standalone --nproc-per-node G`` on this file
(``--worker``): every rank trains ``warmup + timed + 1`` generations of the case's config (no evaluation but the
final one, no run directory), then times the two parts that do not shrink with more ranks — the fitness
all-gather of N float32 and the replicated update (``strategy.step``) — on the same process group. Rank 0 writes
its numbers; the driver writes ``<out>/distributed.{json,md}``:

- generation time: median wall time of the ``timed`` generations after ``warmup`` (rank 0's clock; the collectives
  make every rank wait for the slowest), the final generation (with its evaluation) left out;
- env steps/s: live env steps of those generations / their wall time;
- scaling efficiency: (steps/s at G) / (G × steps/s at 1).

``NCCL_NVLS_ENABLE=0`` is set for the workers (NVLink multicast stays off on the shared GPU machines). Tests never
assert on these numbers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _report import versions  # noqa: E402  (benchmarks/, the script's folder)

# (name, env, TrainConfig overrides): the GPU cases of issue 15, and the CPU check.
GPU_CASES = [
    # HalfCheetah's GPU defaults train with the JAX rollout (config.rollout="jax", the whole episode in one jitted
    # loop per rank); the *_torch cases step Brax from torch instead (the default before 2026-11-30, when these two
    # were named halfcheetah_defaults_jax / halfcheetah_n16384_jax and the torch ones had the plain names).
    ("halfcheetah_defaults", "HalfCheetah", {}),
    ("halfcheetah_n16384", "HalfCheetah", {"population": 16384}),
    ("halfcheetah_defaults_torch", "HalfCheetah", {"rollout": "torch"}),
    ("halfcheetah_n16384_torch", "HalfCheetah", {"population": 16384, "rollout": "torch"}),
]
QUICK_CASES = [
    ("cartpole_n16", "CartPole", {"population": 16, "hidden_sizes": [8]}),
    ("cartpole_n64", "CartPole", {"population": 64, "hidden_sizes": [16]}),
]
COLLECTIVE_REPEATS = 50


def _versions() -> dict[str, str]:
    out = versions("triton", "jax", "brax")
    if torch.cuda.is_available():
        out["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    return out


def _device_name(device: str) -> str:
    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"


# ------------------------------------------------------------------------------------------------------- worker
def _worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from eggroll_rl.agents import TrainConfig
    from eggroll_rl.agents.trainer import train
    from eggroll_rl.distributed import all_gather_fitness, init_from_environment, population_slice, world

    case = json.loads(args.case)
    cuda = args.device == "cuda"
    owned = init_from_environment("cuda" if cuda else "cpu")  # here, so that it outlives train() for the timings
    rank, world_size = world()
    config = TrainConfig.for_env(
        case["env"],
        **{
            **case["overrides"],
            "device": args.device,
            "generations": args.warmup + args.timed + 1,
            "total_steps": 0,
            "time_limit_s": 0.0,
            "eval_every": 0,
            "eval_episodes": 8,
            "out_dir": "",
        },
    )
    records: list[dict] = []
    result = train(config, progress_fn=records.append)
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    # The parts that do not shrink with more ranks: the fitness gather and the replicated update.
    n = config.population
    dev = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    local = torch.randn(population_slice(n).numel(), device=dev)
    gather_s = []
    for _ in range(COLLECTIVE_REPEATS):
        sync()
        t0 = time.perf_counter()
        fitness = all_gather_fitness(local, n)
        sync()
        gather_s.append(time.perf_counter() - t0)
    update_s = []
    strategy = result.strategy
    for i in range(5):
        with strategy.perturb(population_size=n, epoch=10_000 + i):
            pass
        sync()
        t0 = time.perf_counter()
        strategy.step(fitness.clone())
        sync()
        update_s.append(time.perf_counter() - t0)

    if rank == 0:
        timed = records[args.warmup : args.warmup + args.timed]
        before = records[args.warmup - 1] if args.warmup else {"wall_time_s": 0.0, "env_steps": 0}
        walls = [before["wall_time_s"]] + [r["wall_time_s"] for r in timed]
        steps = timed[-1]["env_steps"] - before["env_steps"]
        out = {
            "ranks": world_size,
            "population": n,
            "generation_s": statistics.median(b - a for a, b in zip(walls, walls[1:])),
            "steps_per_s": steps / (walls[-1] - walls[0]),
            "env_steps_per_generation": steps / len(timed),
            "fitness_gather_s": statistics.median(gather_s),
            "update_s": statistics.median(update_s),
            "final_train_return": records[-1]["train_return_mean"],
        }
        Path(args.result).write_text(json.dumps(out))
    if owned:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------------- driver
def _launch(case: tuple, ranks: int, args: argparse.Namespace, result: Path) -> tuple[dict, str]:
    name, env, overrides = case
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
        str(Path(__file__).resolve()), "--worker", "--device", args.device, "--warmup", str(args.warmup),
        "--timed", str(args.timed), "--result", str(result),
        "--case", json.dumps({"env": env, "overrides": overrides}),
    ]  # fmt: skip
    env_vars = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
        NCCL_NVLS_ENABLE="0",
    )
    proc = subprocess.run(cmd, env=env_vars, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:  # every rank's whole log is kept: the first rank to fail is rarely the last to print
        log = Path(args.out) / f"{name}_{ranks}ranks.stderr.txt"  # main() made the folder
        log.write_text(proc.stderr)
        raise RuntimeError(
            f"{name} on {ranks} ranks failed (exit {proc.returncode}); every rank's output is in {log}:\n"
            f"{proc.stderr[-4000:]}"
        )
    shown = " ".join(c if " " not in c and "{" not in c else f"'{c}'" for c in cmd[1:])
    return json.loads(result.read_text()), f"python {shown}"


def _markdown(report: dict) -> str:
    lines = [
        "# Distributed training: scaling over ranks",
        "",
        f"Device: {report['device']}; {report['date']}; versions {report['versions']}.",
        f"Generation time = median of {report['timed']} generations after {report['warmup']} warm-up ones (rank 0's "
        "clock). Scaling efficiency = (steps/s at G) / (G × steps/s at 1). Produced by "
        "`benchmarks/bench_distributed.py`.",
        "",
        "| case | ranks | population | generation (s) | env steps/s | efficiency | fitness gather (ms) | update (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for case in report["cases"]:
        base = case["runs"][0]["steps_per_s"]
        for run in case["runs"]:
            eff = run["steps_per_s"] / (run["ranks"] * base)
            lines.append(
                f"| {case['name']} | {run['ranks']} | {run['population']} | {run['generation_s']:.3f} | "
                f"{run['steps_per_s']:,.0f} | {eff:.2f} | {1e3 * run['fitness_gather_s']:.3f} | "
                f"{1e3 * run['update_s']:.2f} |"
            )
    lines += ["", "Command (the torchrun command of each run is in distributed.json):", "", f"    {report['command']}"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="rank counts; the first is the base")
    parser.add_argument("--quick", action="store_true", help="CartPole at tiny sizes (a check, not a measurement)")
    parser.add_argument("--cases", nargs="+", default=None, help="run only these cases (by name)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--timed", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=580.0, help="seconds per torchrun launch")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    if args.timed < 1 or args.warmup < 0:
        raise SystemExit(f"--timed {args.timed} --warmup {args.warmup}: expected timed >= 1 and warmup >= 0")
    if args.device == "cuda" and torch.cuda.device_count() < max(args.ranks):
        raise SystemExit(f"--ranks {args.ranks} needs {max(args.ranks)} GPUs; torch sees {torch.cuda.device_count()}")
    report = {
        "device": _device_name(args.device),
        "date": datetime.date.today().isoformat(),
        "versions": _versions(),
        "warmup": args.warmup,
        "timed": args.timed,
        "command": "python benchmarks/bench_distributed.py " + " ".join(sys.argv[1:]),
        "cases": [],
    }
    known = QUICK_CASES if args.quick else GPU_CASES
    unknown = sorted(set(args.cases or ()) - {c[0] for c in known})
    if unknown:
        raise SystemExit(f"--cases {unknown}: unknown; expected some of {[c[0] for c in known]}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def write() -> None:  # after every case, so that a launch killed at a machine's time limit keeps the others
        (out / "distributed.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "distributed.md").write_text(_markdown(report))

    with tempfile.TemporaryDirectory() as tmp:
        for case in [c for c in known if not args.cases or c[0] in args.cases]:
            runs, commands = [], []
            for ranks in args.ranks:
                run, command = _launch(case, ranks, args, Path(tmp) / f"{case[0]}_{ranks}.json")
                runs.append(run)
                commands.append(command)
                print(f"{case[0]:<22} ranks {ranks}: {run['generation_s']:.3f} s/generation, "
                      f"{run['steps_per_s']:,.0f} steps/s", flush=True)  # fmt: skip
            report["cases"].append({"name": case[0], "env": case[1], "overrides": case[2], "runs": runs,
                                    "commands": commands})  # fmt: skip
            write()
    print(_markdown(report))


if __name__ == "__main__":
    main()
