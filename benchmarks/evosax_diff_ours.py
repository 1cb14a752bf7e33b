"""eggroll's trainer at the scale of ``evosax_diff_ab.py``: the evosax peer's network (glorot + tanh), N=256, sigma
0.02, Adam lr 0.01, r=4, centered ranks, Brax HalfCheetah (spring, 1000 steps) on the CPU; prints the population's
mean return every generation and the mean policy's return every 5.

    taskset -c 1 python3 benchmarks/evosax_diff_ours.py --seed 1 --generations 10
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any


def small_scale_config(seed: int, generations: int, population: int) -> Any:
    """The ``TrainConfig`` of this scale (the evosax peer's network and settings on the CPU)."""
    from eggroll_rl.agents import TrainConfig

    return TrainConfig.for_env(
        "HalfCheetah", device="cpu", backend="brax", brax_backend="spring", env_kwargs={"episode_length": 1000},
        max_episode_steps=1000, population=population, lr=0.01, sigma=0.02, rank=4,
        generations=generations, eval_every=5, eval_episodes=32, weight_init="glorot", activation="tanh",
        seed=seed, cpu_threads=1, out_dir="", tensorboard=False, time_limit_s=0.0,
    )  # fmt: skip


def progress_printer() -> Callable[[dict], None]:
    """A ``progress_fn`` printing each generation's population mean (and the eval, when there is one)."""
    start = time.time()

    def progress(r: dict) -> None:
        line = f"gen {r['generation'] + 1:3d} train_mean {r['train_return_mean']:9.1f}"
        if r.get("eval_return") is not None:
            line += f" eval {r['eval_return']:9.1f}"
        print(line + f"  ({time.time() - start:.0f} s)", flush=True)

    return progress


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--generations", type=int, default=10)
    ap.add_argument("--population", type=int, default=256)
    args = ap.parse_args()

    from eggroll_rl.agents import train

    train(small_scale_config(args.seed, args.generations, args.population), progress_fn=progress_printer())


if __name__ == "__main__":
    main()
