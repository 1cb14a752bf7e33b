"""eggroll's trainer at the scale of ``evosax_diff_ab.py``: the evosax peer's network (glorot + tanh), N=256, sigma
0.02, Adam lr 0.01, r=4, centered ranks, Brax HalfCheetah (spring, 1000 steps) on the CPU; prints the population's
mean return every generation and the mean policy's return every 5.

    taskset -c 1 python3 benchmarks/evosax_diff_ours.py --seed 1 --generations 10
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--generations", type=int, default=10)
    ap.add_argument("--population", type=int, default=256)
    args = ap.parse_args()

    from eggroll_rl.agents import TrainConfig, train

    cfg = TrainConfig.for_env(
        "HalfCheetah", device="cpu", backend="brax", brax_backend="spring", env_kwargs={"episode_length": 1000},
        max_episode_steps=1000, population=args.population, lr=0.01, sigma=0.02, rank=4,
        generations=args.generations, eval_every=5, eval_episodes=32, weight_init="glorot", activation="tanh",
        seed=args.seed, cpu_threads=1, out_dir="", tensorboard=False, time_limit_s=0.0,
    )  # fmt: skip
    start = time.time()

    def progress(r: dict) -> None:
        line = f"gen {r['generation'] + 1:3d} train_mean {r['train_return_mean']:9.1f}"
        if r.get("eval_return") is not None:
            line += f" eval {r['eval_return']:9.1f}"
        print(line + f"  ({time.time() - start:.0f} s)", flush=True)

    train(cfg, progress_fn=progress)


if __name__ == "__main__":
    main()
