"""Where a training rollout's time goes: env step, policy forward, bookkeeping, per env-step call.

Builds what ``eggroll-rl train ENV`` builds (env, policy, strategy from ``TrainConfig.for_env``) and times, per
step call (``num_envs`` transitions), each part alone and the whole ``rollout``:

- ``env.step``: the env with constant actions;
- ``act``: ``pop.batched_forward(policy, obs, member_ids)`` on a fixed observation batch;
- ``rollout``: the trainer's rollout (``max_steps`` steps, ``record_obs`` as the trainer sets it);
- the CUDA kernels of a few rollout steps (torch.profiler): how many launches per step and their GPU time.

``host`` is the Python time to issue a batch of calls, ``total`` the time until the GPU finished them; a part whose
host time is close to its total is bound by launch overhead, not by the GPU.

Usage: ``python benchmarks/profile_rollout.py [--env HalfCheetah] [--steps 200] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _timing import host_and_total  # noqa: E402  (benchmarks/, the script's folder)

from eggroll_rl.agents.builders import build_env, build_policy, build_strategy, episode_limit  # noqa: E402
from eggroll_rl.agents.config import TrainConfig  # noqa: E402
from eggroll_rl.agents.rollout import rollout  # noqa: E402
from eggroll_rl.envs import resolve_device  # noqa: E402


def _time(fn, calls: int, sync, warmup: int = 1) -> dict:
    host, total = host_and_total(fn, sync, calls, warmup=warmup)
    return {"host_ms": host * 1e3, "total_ms": total * 1e3}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="HalfCheetah")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=200, help="rollout steps timed (max_steps of the rollout)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig overrides (JSON values)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    overrides = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    config = TrainConfig.for_env(args.env, device=args.device, **overrides)
    device = resolve_device(config.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    num_envs = config.population * config.episodes_per_member
    env = build_env(config, num_envs, device, seed=0)
    policy = build_policy(config, env, device)
    strategy = build_strategy(config, device)
    strategy.setup(policy)
    steps = min(args.steps, episode_limit(env, config))
    result = {
        "env": env.env_id,
        "backend": env.backend,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "num_envs": num_envs,
        "population": config.population,
        "hidden_sizes": list(config.hidden_sizes),
        "rank": config.rank,
        "steps": steps,
    }
    obs = env.reset(seed=0)
    act_dim = env.single_action_space.shape[0] if env.single_action_space.shape else None
    const = torch.zeros(num_envs, act_dim, device=device) if act_dim else torch.zeros(num_envs, dtype=torch.long)
    result["env.step"] = _time(lambda: env.step(const), steps, sync, warmup=20)
    with strategy.perturb(population_size=config.population, epoch=0) as pop:
        ids = torch.arange(config.population, device=device).repeat_interleave(config.episodes_per_member)

        def act(o, i):
            return pop.batched_forward(policy, o, member_ids=i)

        result["act"] = _time(lambda: act(obs, ids), steps, sync, warmup=5)

        outs = {}

        def run(graph):
            outs[graph] = rollout(
                env,
                act,
                num_members=config.population,
                envs_per_member=config.episodes_per_member,
                max_steps=steps,
                seed=1,
                record_obs=policy.obs_norm is not None,
                cuda_graph=graph,
            )

        for graph in (False, None, False, None):  # None: the default (graphs on CUDA)
            name = "rollout, eager" if graph is False else "rollout, default"
            t = _time(lambda graph=graph: run(graph), 1, sync)
            result.setdefault(name, []).append({k: v / steps for k, v in t.items()})
        if None in outs and False in outs:
            result["default == eager (returns, lengths, obs sums)"] = all(
                torch.equal(getattr(outs[None], f).nan_to_num(-1), getattr(outs[False], f).nan_to_num(-1))
                for f in ("returns", "lengths", "obs_sum", "obs_sumsq")
                if getattr(outs[None], f) is not None
            )
        table = ""
        if device.type == "cuda":
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                rollout(
                    env,
                    act,
                    num_members=config.population,
                    envs_per_member=config.episodes_per_member,
                    max_steps=20,
                    seed=1,
                    record_obs=policy.obs_norm is not None,
                )
                sync()
            events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
            result["torch kernels per rollout step"] = sum(e.count for e in events) / 20
            result["torch GPU us per rollout step"] = sum(e.self_device_time_total for e in events) / 20
            table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25)
            print(table)
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "profile_rollout.json").write_text(json.dumps(result, indent=1))
        (Path(args.out) / "profile_rollout_kernels.txt").write_text(table)
    env.close()


if __name__ == "__main__":
    main()
