"""One training generation's rollout on Brax: torch's step loop (``rollout``) against the jitted JAX episode
(``jax_rollout``), at each population size.

Builds what ``eggroll-rl train ENV --backend brax`` builds (env, policy and strategy of ``TrainConfig.for_env``, Brax
spring physics by default), then for each path calls the rollout exactly as the trainer does, inside
``strategy.perturb(N, epoch=g)``: the first generation alone (compilation, CUDA-graph capture) and then the median of
``--generations`` more. It prints env steps/s (transitions simulated, masked ones included, over the wall time of the
rollout call) per path and their ratio, and writes the JSON to ``--out``. It also reports how far the two paths'
member returns are apart in the same generation: HalfCheetah's dynamics amplify float rounding, so after a few tens
of steps they are different samples (``eggroll_rl/agents/jax_rollout.py``), and only a gap in their means would
point at a bug.

Usage:
    python benchmarks/bench_rollout_jax.py --device cuda --out benchmarks/results/rollout_jax_<date>.json
    python benchmarks/bench_rollout_jax.py --device cpu --population 64 --max-steps 50   # smoke check only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import torch  # noqa: E402
from _report import versions  # noqa: E402  (benchmarks/, the script's folder)

from eggroll_rl.agents.builders import build_env, build_policy, build_strategy, episode_limit  # noqa: E402
from eggroll_rl.agents.config import TrainConfig  # noqa: E402
from eggroll_rl.agents.jax_rollout import jax_rollout  # noqa: E402
from eggroll_rl.agents.rollout import rollout  # noqa: E402
from eggroll_rl.envs import resolve_device  # noqa: E402

PATHS = ("torch", "jax")


def _generation(path: str, env, policy, strategy, config: TrainConfig, epoch: int, max_steps: int):
    """One generation's rollout as the trainer runs it; returns (seconds, result)."""
    sync = torch.cuda.synchronize if env.device.type == "cuda" else (lambda: None)
    kwargs = dict(
        num_members=config.population,
        envs_per_member=config.episodes_per_member,
        max_steps=max_steps,
        seed=epoch,
        record_obs=policy.obs_norm is not None,
    )
    with strategy.perturb(population_size=config.population, epoch=epoch) as pop:
        sync()
        start = time.perf_counter()
        if path == "jax":
            result = jax_rollout(env, policy, pop, **kwargs)
        else:
            result = rollout(env, lambda obs, ids: pop.batched_forward(policy, obs, member_ids=ids), **kwargs)
        sync()
        return time.perf_counter() - start, result


def _bench_population(args: argparse.Namespace, population: int) -> dict:
    config = TrainConfig.for_env(
        args.env, device=args.device, backend="brax", brax_backend=args.brax_backend, population=population,
        **({"max_episode_steps": args.max_steps} if args.max_steps else {}),
    )  # fmt: skip
    device = resolve_device(config.device)
    env = build_env(config, config.num_envs, device, seed=config.seed)
    torch.manual_seed(config.seed)
    policy = build_policy(config, env, device)
    strategy = build_strategy(config, device)
    strategy.setup(policy)
    max_steps = episode_limit(env, config)
    row: dict = {
        "population": population,
        "num_envs": config.num_envs,
        "max_steps": max_steps,
        "hidden_sizes": list(config.hidden_sizes),
        "activation": config.activation,
        "rank": config.rank,
    }
    returns = {}
    for path in PATHS:
        first_s, _ = _generation(path, env, policy, strategy, config, 0, max_steps)
        times, steps = [], []
        for g in range(1, 1 + args.generations):
            seconds, result = _generation(path, env, policy, strategy, config, g, max_steps)
            times.append(seconds)
            steps.append(result.num_env_steps)
            returns[path] = result.returns.double().cpu()  # the last generation's, compared below
        # Reproducibility: the last generation once more must give the same bits (the trainer's resume relies on it).
        _, again = _generation(path, env, policy, strategy, config, args.generations, max_steps)
        same = torch.equal(again.returns.double().cpu(), returns[path]) and (
            result.obs_sum is None or torch.equal(again.obs_sum, result.obs_sum)
        )
        median = statistics.median(times)
        row[path] = {
            "first_generation_s": first_s,
            "median_s": median,
            "times_s": times,
            "num_env_steps": steps[-1],
            "env_steps_per_s": statistics.median(n / t for n, t in zip(steps, times)),
            "return_mean": float(returns[path].mean()),
            "repeat_bit_identical": same,
        }
        print(
            f"N={population:5d} {path:5s}: first {first_s:7.2f} s, median {median:8.4f} s/gen, "
            f"{row[path]['env_steps_per_s']:12,.0f} env steps/s, a repeated generation bit-identical: {same}",
            flush=True,
        )
    row["jax_over_torch"] = row["jax"]["env_steps_per_s"] / row["torch"]["env_steps_per_s"]
    diff = (returns["jax"] - returns["torch"]).abs()
    row["returns_max_abs_diff"] = float(diff.max())
    print(f"N={population:5d} jax/torch env steps/s: {row['jax_over_torch']:.2f}x; last generation's mean return "
          f"torch {row['torch']['return_mean']:.4g}, jax {row['jax']['return_mean']:.4g}; member returns differ by at "
          f"most {row['returns_max_abs_diff']:.3g}", flush=True)  # fmt: skip
    env.close()
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="HalfCheetah")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu", "auto"])
    p.add_argument("--brax-backend", default="spring")
    p.add_argument("--population", type=int, nargs="+", default=[2048, 1024])
    p.add_argument("--max-steps", type=int, default=0, help="cap on the episode length (0: the env's, 1000)")
    p.add_argument("--generations", type=int, default=5, help="timed generations per path after the first")
    p.add_argument("--out", default=None, help="JSON output path")
    args = p.parse_args()

    device = resolve_device(args.device)
    cpu = f"cpu ({platform.machine()}, {os.cpu_count()} cores visible)"
    report = {
        "benchmark": "bench_rollout_jax",
        "env": args.env,
        "brax_backend": args.brax_backend,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "dtype": "float32",
        "versions": versions("jax", "brax"),
        "generations_timed": args.generations,
        "rows": [_bench_population(args, n) for n in args.population],
    }
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
