"""Reproduce (or rule out) the CUDA-graph capture race between torch and JAX seen on Brax Ant (GPU only).

Each rollout captures the policy step as a CUDA graph right after the first ``env.step``, while JAX's dispatch
threads may still be running that step. ``--global-capture`` forces torch's default global capture mode and
``--no-sync`` skips the env's ``synchronize()`` before capturing: together they are the behaviour before the fix.

    python benchmarks/repro_capture_race.py --rollouts 40                       # as shipped
    python benchmarks/repro_capture_race.py --rollouts 40 --global-capture --no-sync   # as before the fix

Prints how many captures failed, whether JAX still runs afterwards, and writes a JSON line to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

from eggroll_rl import EggrollStrategy
from eggroll_rl.agents import TrainConfig
from eggroll_rl.agents.builders import build_policy
from eggroll_rl.agents.rollout import population_act, rollout
from eggroll_rl.envs import make_env


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="Ant")
    p.add_argument("--brax-backend", default="positional")
    p.add_argument("--population", type=int, default=128)
    p.add_argument("--rollouts", type=int, default=40)
    p.add_argument("--max-steps", type=int, default=200)
    p.add_argument("--global-capture", action="store_true")
    p.add_argument("--no-sync", action="store_true")
    p.add_argument("--out", default="")
    args = p.parse_args()

    if args.global_capture:
        graph = torch.cuda.graph
        torch.cuda.graph = lambda g, **kw: graph(g, **{**kw, "capture_error_mode": "global"})
    config = TrainConfig.for_env(args.env, population=args.population, brax_backend=args.brax_backend)
    env = make_env(args.env, backend="brax", num_envs=args.population, device="cuda",
                   brax_backend=args.brax_backend)  # fmt: skip
    if args.no_sync:
        env.synchronize = lambda: None
    policy = build_policy(config, env, torch.device("cuda"))
    strategy = EggrollStrategy(sigma=config.sigma, lr=config.lr, rank=config.rank, seed=0)
    strategy.setup(policy)
    failed, error, done = 0, "", 0
    start = time.perf_counter()
    for gen in range(args.rollouts):
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with strategy.perturb(population_size=args.population, epoch=gen) as pop:
                    res = rollout(env, population_act(pop, policy), num_members=args.population,
                                  max_steps=args.max_steps, seed=gen, record_obs=True)  # fmt: skip
                strategy.step(res.returns)
            failed += sum("capturing the step as a CUDA graph failed" in str(w.message) for w in caught)
            done += 1
        except Exception as e:  # noqa: BLE001 - the point is to report it
            error = f"{type(e).__name__}: {str(e)[:300]}"
            break
    torch.cuda.synchronize()
    row = dict(env=args.env, brax_backend=args.brax_backend, population=args.population, max_steps=args.max_steps,
               global_capture=args.global_capture, no_sync=args.no_sync, rollouts_done=done,
               captures_failed=failed, error=error, wall_s=round(time.perf_counter() - start, 1))  # fmt: skip
    print(json.dumps(row))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
