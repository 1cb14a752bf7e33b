"""Gaussian vs Rademacher factors: does the cheaper noise learn as well?

Trains the same policy with ``EggrollStrategy(noise="gaussian")`` and ``noise="rademacher"`` on torch-native
envs (CartPole, Pendulum) for several seeds, through the plain strategy + rollout loop, and records the mean
policy's return per generation. Writes ``benchmarks/results/noise_learning.{json,md}``.

    python benchmarks/bench_noise_learning.py [--device cpu] [--seeds 3] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn as nn

from eggroll_rl import EggrollStrategy
from eggroll_rl.agents.rollout import default_action_fn, population_act, rollout
from eggroll_rl.envs import make_env

CASES = {
    # env, population, generations, max_steps, sigma, lr, hidden
    "CartPole": dict(population=128, generations=25, max_steps=500, sigma=0.1, lr=0.05, hidden=32, threshold=475.0),
    "Pendulum": dict(population=128, generations=60, max_steps=200, sigma=0.1, lr=0.03, hidden=32, threshold=-400.0),
}


def _policy(obs_dim: int, out_dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, out_dim))  # fmt: skip


def train_once(env_name: str, noise: str, seed: int, device: torch.device) -> list[float]:
    cfg = CASES[env_name]
    n = cfg["population"]
    env = make_env(env_name, backend="torch", num_envs=n, device=device, seed=seed)
    eval_env = make_env(env_name, backend="torch", num_envs=16, device=device, seed=10_000 + seed)
    space = env.single_action_space
    out_dim = space.n if hasattr(space, "n") else space.shape[0]
    torch.manual_seed(seed)
    policy = _policy(env.single_observation_space.shape[0], out_dim, cfg["hidden"]).to(device)
    strategy = EggrollStrategy(sigma=cfg["sigma"], lr=cfg["lr"], rank=4, noise=noise, seed=seed,
                               allow_cpu=device.type == "cpu")  # fmt: skip
    strategy.setup(policy)
    action_fn = default_action_fn(space)
    curve = []
    for gen in range(cfg["generations"]):
        with strategy.perturb(n, epoch=gen) as pop:
            res = rollout(env, population_act(pop, policy, action_fn), n, max_steps=cfg["max_steps"], seed=gen)
        strategy.step(res.returns)
        with torch.no_grad():
            ev = rollout(eval_env, lambda obs, ids: action_fn(policy(obs)), 16, max_steps=cfg["max_steps"], seed=0)
        curve.append(float(ev.returns.mean()))
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--envs", nargs="+", default=list(CASES))
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    device = torch.device(args.device)
    records = []
    for env_name in args.envs:
        for noise in ("gaussian", "rademacher"):
            for seed in range(args.seeds):
                t0 = time.perf_counter()
                curve = train_once(env_name, noise, seed, device)
                hit = [g for g, v in enumerate(curve) if v >= CASES[env_name]["threshold"]]
                records.append(dict(env=env_name, noise=noise, seed=seed, curve=curve, final=curve[-1],
                                    best=max(curve), gens_to_threshold=hit[0] + 1 if hit else None,
                                    wall_s=time.perf_counter() - t0, **CASES[env_name]))  # fmt: skip
                print(f"{env_name:9s} {noise:10s} seed {seed}: final {curve[-1]:8.1f} best {max(curve):8.1f} "
                      f"({records[-1]['wall_s']:.0f} s)")  # fmt: skip
    meta = dict(device=str(device), torch=torch.__version__, python=platform.python_version(),
                cpu=platform.processor() or platform.machine(), rank=4)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "noise_learning.json").write_text(json.dumps(dict(meta=meta, records=records), indent=1))
    lines = ["# Gaussian vs Rademacher factors: learning", "",
             f"Device {meta['device']}, torch {meta['torch']}, rank 4, policy MLP (hidden 32, 32, tanh), plain "
             "strategy + rollout loop (`benchmarks/bench_noise_learning.py`). Return of the mean policy on 16 "
             "evaluation episodes after the last generation (mean ± std over seeds).", "",
             "| env | population × generations | gaussian final | rademacher final | gaussian best | rademacher best "
             "| threshold | gaussian gens to threshold | rademacher gens to threshold |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for env_name in args.envs:
        row = [env_name, f"{CASES[env_name]['population']} × {CASES[env_name]['generations']}"]
        for key in ("final", "best"):
            for noise in ("gaussian", "rademacher"):
                vals = torch.tensor([r[key] for r in records if r["env"] == env_name and r["noise"] == noise])
                row.append(f"{vals.mean():.1f} ± {vals.std(unbiased=False):.1f}")
        row.append(str(CASES[env_name]["threshold"]))
        for noise in ("gaussian", "rademacher"):
            hits = [r["gens_to_threshold"] for r in records if r["env"] == env_name and r["noise"] == noise]
            row.append(", ".join("—" if h is None else str(h) for h in hits))
        lines.append("| " + " | ".join(row) + " |")
    (out / "noise_learning.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
