"""Is a training run reproducible on this machine? The same config and seed trained several times, each in a fresh
process (so XLA compiles and autotunes anew), compared generation by generation.

The leaderboard's HalfCheetah cells with the JAX rollout came out lower at equal env steps in a later call than in
an earlier one (`results/leaderboard/halfcheetah_time_to_4000/notes.md`), although the training is bit-identical
between the two commits on the CPU. This tells whether the GPU repeats a run, and what changes it:

    python benchmarks/repro_determinism.py --env HalfCheetah --generations 30 --runs 2 --out $OUT/repro
    python benchmarks/repro_determinism.py --env HalfCheetah --generations 30 --runs 2 --no-compile-ahead --out ...
    python benchmarks/repro_determinism.py ... --xla-flags=--xla_gpu_autotune_level=0 --out ...

Each run is ``train()`` with ``TrainConfig.for_env(env)`` (the GPU default) for ``--generations`` generations and no
evaluation but the last. Per generation it records the training metrics (mean, max and min training return,
gradient and update norms) as its run directory's ``metrics.jsonl`` holds them (``<out>/run<i>/``). The report
names the first generation at which any run differs from the first run, and by how much; ``<out>/runs.jsonl``
keeps every run's metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

KEYS = ("train_return_mean", "train_return_max", "train_return_min", "grad_norm", "update_norm", "env_steps")


def child(args: argparse.Namespace) -> None:
    """One run, in this process, into the run directory ``args.out`` (its ``metrics.jsonl`` is what is compared)."""
    import eggroll_rl.agents.trainer as trainer
    from eggroll_rl.agents import TrainConfig

    if args.no_compile_ahead:
        trainer._compile_evaluation_ahead = lambda config, device: False
    config = TrainConfig.for_env(args.env, seed=args.seed, generations=args.generations, time_limit_s=0,
                                 eval_every=0, out_dir=str(args.out), tensorboard=False)  # fmt: skip
    trainer.train(config)


def run_metrics(run_dir: Path) -> list[dict]:
    """The compared metrics of each generation in ``run_dir``'s ``metrics.jsonl``."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: record.get(k) for k in ("generation", *KEYS)} for record in map(json.loads, lines)]


def first_difference(base: list[dict], other: list[dict]) -> dict | None:
    """The first generation whose metrics differ between two runs (None: identical throughout)."""
    for a, b in zip(base, other):
        diffs = {k: (a[k], b[k]) for k in KEYS if a[k] != b[k]}
        if diffs:
            return {"generation": a["generation"], "differences": diffs}
    if len(base) != len(other):
        return {"generation": min(len(base), len(other)), "differences": {"length": (len(base), len(other))}}
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="HalfCheetah")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--generations", type=int, default=30)
    p.add_argument("--runs", type=int, default=2, help="fresh processes, one after the other")
    p.add_argument("--no-compile-ahead", action="store_true", help="no background compile of the evaluation")
    p.add_argument("--xla-flags", default="", help="appended to XLA_FLAGS in every run")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.runs < 1 or args.generations < 1:
        p.error(f"--runs and --generations must be >= 1, got {args.runs} and {args.generations}")
    if args.child:
        child(args)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if args.xla_flags:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + args.xla_flags).strip()
    argv = [sys.executable, __file__, "--child", "--env", args.env, "--seed", str(args.seed),
            "--generations", str(args.generations)]  # fmt: skip
    if args.no_compile_ahead:
        argv.append("--no-compile-ahead")
    runs = []
    for i in range(args.runs):
        run_dir = args.out / f"run{i}"
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, not a resume of an earlier call's
        proc = subprocess.run([*argv, "--out", str(run_dir)], env=env, capture_output=True, text=True)
        (args.out / f"run{i}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode:
            sys.exit(f"run {i} failed (exit {proc.returncode}); see {args.out / f'run{i}.log'}")
        runs.append(run_metrics(run_dir))
        print(f"run {i}: {len(runs[-1])} generations, last train_return_mean {runs[-1][-1]['train_return_mean']!r}")
    with open(args.out / "runs.jsonl", "w") as f:
        for i, metrics in enumerate(runs):
            f.write(json.dumps({"run": i, "argv": argv[2:], "xla_flags": env.get("XLA_FLAGS", ""), "metrics": metrics})
                    + "\n")  # fmt: skip
    report = {f"run {i}": first_difference(runs[0], m) for i, m in enumerate(runs[1:], start=1)}
    for name, diff in report.items():
        print(f"{name} vs run 0: " + ("identical in every generation" if diff is None else json.dumps(diff)))
    (args.out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
