"""End-to-end training benchmark: `train()` with an env's tuned defaults, time to a target return.

    python benchmarks/bench_train.py --env CartPole --device cpu --target 475
    python benchmarks/bench_train.py --env HalfCheetah --device cuda --target 3000 --set time_limit_s=500

Writes ``<results>/train_<env>_<device>.{json,md,png}`` (the run's metrics, curve, config, device and versions)
and prints a summary table. Wall-clock figures count from the call of ``train()`` — environment construction and
every compilation (Triton kernels, JAX jit) included. Tests never assert on these numbers.

Stopped by SIGTERM or SIGINT (e.g. ``benchmarks/run_recipes.py``'s deadline) after at least one generation, it still
writes the files, from the generations completed, with ``"interrupted": "SIGTERM"`` in the json, and exits with
status 0 (nothing is written, and the status is that of the signal, if no generation had completed).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _report import parse_value, versions  # noqa: E402  (benchmarks/, the script's folder)

from eggroll_rl.agents.config import TrainConfig  # noqa: E402
from eggroll_rl.agents.run_dir import plot_learning_curve  # noqa: E402
from eggroll_rl.agents.trainer import TrainingInterrupted, train  # noqa: E402


def _device_name(device: str) -> str:
    if device != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    return f"CPU ({cpu}, {torch.get_num_threads()} torch threads max, {__import__('os').cpu_count()} cores)"


def _check_kernels(config: TrainConfig) -> str:
    """Compare the Triton and pure-torch paths on this config's policy; fall back to torch if they disagree."""
    import os

    from eggroll_rl import EggrollStrategy, kernels
    from eggroll_rl.agents.policy import MLPPolicy

    if not torch.cuda.is_available():
        return "no CUDA: pure-torch path"
    try:
        policy = MLPPolicy(17, 6, discrete=False, hidden_sizes=config.hidden_sizes, activation=config.activation)
        policy = policy.cuda()
        strategy = EggrollStrategy(sigma=config.sigma, lr=config.lr, rank=config.rank)
        strategy.setup(policy)
        x = torch.randn(512, 17, device="cuda")
        ids = torch.arange(512, device="cuda") % 256
        with strategy.perturb(256, epoch=3) as pop:
            a = pop.batched_forward(policy, x, member_ids=ids)
            os.environ["EGGROLL_DISABLE_TRITON"] = "1"
            b = pop.batched_forward(policy, x, member_ids=ids)
            del os.environ["EGGROLL_DISABLE_TRITON"]
        diff = float((a - b).abs().max())
        if diff > 1e-2:
            raise AssertionError(f"Triton and torch paths differ by {diff}")
        return f"triton={kernels.use_triton(x.device)}, max |triton - torch| = {diff:.2e}"
    except Exception as exc:  # report and continue on the pure-torch path
        os.environ["EGGROLL_DISABLE_TRITON"] = "1"
        return f"kernel check failed ({type(exc).__name__}: {exc}); using the pure-torch path"


def _device_kind(config: TrainConfig) -> str:
    from eggroll_rl.envs import resolve_device

    return resolve_device(config.device).type


def _env_info(config: TrainConfig) -> dict[str, str]:
    """The backend (and physics) ``train`` built the env with, for a run stopped before it returned its
    ``env_info`` (the same choice: ``select_backend`` for the config's device)."""
    from eggroll_rl.envs import select_backend

    backend = select_backend(config.env, config.backend, _device_kind(config))
    info = {"backend": backend}
    if backend == "brax":
        info["brax_backend"] = config.env_kwargs.get("brax_backend", config.brax_backend)
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="CartPole")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--target", type=float, default=None, help="eval return to time (default: none)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a TrainConfig field")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="where json/md/png go")
    p.add_argument("--run-dir", default=None, help="keep the run directory here (default: a temporary one)")
    p.add_argument("--tag", default="", help="suffix of the result file names")
    p.add_argument("--check-kernels", action="store_true", help="compare Triton with the torch path first")
    args = p.parse_args()

    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = parse_value(value)
    run_dir = Path(args.run_dir) if args.run_dir else Path(tempfile.mkdtemp(prefix="bench_train_")) / "run"
    config = TrainConfig.for_env(args.env, device=args.device, out_dir=str(run_dir), **overrides)

    kernel_check = _check_kernels(config) if args.check_kernels else "not run"
    print(f"kernel check: {kernel_check}", flush=True)
    t0 = time.perf_counter()
    reached: dict = {}
    last_print = [0.0]

    records: list[dict] = []  # what the run had done when a signal stops it

    def progress(record: dict) -> None:
        records.append({k: v for k, v in record.items() if k not in ("progress", "best_eval_return")})
        now = time.perf_counter() - t0
        ev = record.get("eval_return")
        if ev is not None and args.target is not None and ev >= args.target and not reached:
            reached.update(
                generation=record["generation"],
                env_steps=record["env_steps"],
                total_s=now,
                train_wall_s=record["wall_time_s"],
                eval_return=ev,
            )
        if ev is not None or now - last_print[0] > 15:
            last_print[0] = now
            print(
                f"[{now:7.1f}s] gen {record['generation']:5d} steps {record['env_steps']:>12,} "
                f"train {record['train_return_mean']:9.2f} (max {record['train_return_max']:9.2f}) "
                f"eval {'' if ev is None else f'{ev:9.2f}'} {record['steps_per_s']:>12,.0f} steps/s",
                flush=True,
            )

    interrupted = None
    try:
        result = train(config, progress_fn=progress)
        metrics, env_info = result.metrics, result.env_info
        final_eval, best_eval = result.final_eval_return, result.best_eval_return
        device_kind = "cpu" if str(next(result.policy.parameters()).device) == "cpu" else "cuda"
    except TrainingInterrupted as exc:
        if not records:
            raise
        interrupted = signal.Signals(exc.signum).name
        print(f"{interrupted} after {len(records)} generations: writing the results so far", flush=True)
        metrics, env_info, device_kind = records, _env_info(config), _device_kind(config)
        scores = [r["eval_return"] for r in records if r.get("eval_return") is not None]
        final_eval, best_eval = (scores[-1], max(scores)) if scores else (None, float("-inf"))
    total_s = time.perf_counter() - t0
    evals = [
        (r["generation"], r["env_steps"], r["wall_time_s"], r["eval_return"])
        for r in metrics
        if r.get("eval_return") is not None
    ]
    name = f"train_{args.env.replace(':', '_').lower()}_{device_kind}{'_' + args.tag if args.tag else ''}"
    summary = {
        "env": args.env,
        "device": _device_name(device_kind),
        "versions": versions("triton", "jax", "brax", "gymnasium", "mujoco", "envpool"),
        "command": "python benchmarks/bench_train.py " + " ".join(sys.argv[1:]),
        "config": config.to_dict(),
        "env_info": env_info,
        "kernel_check": kernel_check,
        "total_wall_s": total_s,
        "generations": len(metrics),
        "env_steps": metrics[-1]["env_steps"] if metrics else 0,
        "final_eval_return": final_eval,
        "best_eval_return": best_eval,
        "interrupted": interrupted,
        "target": args.target,
        "target_reached": reached or None,
        "mean_steps_per_s": (metrics[-1]["env_steps"] / metrics[-1]["wall_time_s"]) if metrics else 0.0,
        "evals": evals,
        "metrics": metrics,
    }
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(summary, indent=1))
    plot_learning_curve(metrics, results / f"{name}.png", title=f"EGGROLL on {args.env} ({summary['device']})")
    reached_txt = (
        (
            f"{reached['eval_return']:.1f} at {reached['total_s']:.1f} s total "
            f"(generation {reached['generation']}, {reached['env_steps']:,} env steps)"
        )
        if reached
        else "no"
    )
    rows = [
        ("env", args.env),
        ("device", summary["device"]),
        ("versions", ", ".join(f"{k} {v}" for k, v in summary["versions"].items())),
        ("command", f"`{summary['command']}`"),
        ("population / rank / sigma / lr", f"{config.population} / {config.rank} / {config.sigma} / {config.lr}"),
        (
            "policy",
            f"MLP {list(config.hidden_sizes)} {config.activation}, weight_init={config.weight_init}, "
            f"obs_norm={config.obs_norm}",
        ),
        ("env backend", ", ".join(f"{k}={v}" for k, v in env_info.items())),
        ("generations / env steps", f"{len(metrics)} / {summary['env_steps']:,}"),
        ("stopped by", interrupted or "its budget"),
        ("total wall time (incl. env build and compilation)", f"{total_s:.1f} s"),
        ("mean env steps/s (training loop)", f"{summary['mean_steps_per_s']:,.0f}"),
        ("final eval return", f"{final_eval}"),
        ("best eval return", f"{best_eval:.2f}"),
        (f"first eval >= {args.target}", reached_txt),
    ]
    md = [f"# Training benchmark: {args.env}", "", "| | |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in rows]
    md += ["", "Evaluations (generation, env steps, training wall s, eval return):", ""]
    md += [f"- {g}, {s:,}, {w:.1f}, {e:.2f}" for g, s, w, e in evals]
    if config.reward_shift:
        # The env's reward includes an alive bonus that training removed (reward_shift per live step): the same
        # evaluations with it removed too, i.e. what a policy earns by moving rather than by staying up.
        md += ["", f"Eval return less reward_shift x episode length ({config.reward_shift} per step; generation, "
               "return, mean episode length):", ""]  # fmt: skip
        md += [
            f"- {r['generation']}, {r['eval_return'] - config.reward_shift * r['eval_length_mean']:.2f}, "
            f"{r['eval_length_mean']:.1f}"
            for r in metrics
            if r.get("eval_return") is not None and r.get("eval_length_mean") is not None
        ]
    (results / f"{name}.md").write_text("\n".join(md) + "\n")
    print("\n".join(f"{k:>50}: {v}" for k, v in rows))
    if not args.run_dir:
        shutil.rmtree(run_dir.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
