"""Gaussian vs Rademacher (vs Gaussian-fast) factors: does the cheaper noise learn as well?

Trains the same model with ``EggrollStrategy(noise=...)`` for each noise kind of ``--noises`` (default
``gaussian,rademacher``; ``gaussian_fast`` too on request) and several seeds:
a policy on the torch-native CartPole (plain strategy + rollout loop; the mean policy's return per generation) and
a student MLP regressing a random teacher MLP (the student's MSE per step, reported negated so higher is better).
Writes ``benchmarks/results/noise_learning.{json,md}``.

    python benchmarks/bench_noise_learning.py [--device cpu] [--seeds 3] [--noises gaussian,rademacher,gaussian_fast]
        [--out benchmarks/results]
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
from eggroll_rl.noise import NOISE_TYPES
from eggroll_rl.validation import check_choice

CASES = {
    # env, population, generations, max_steps, sigma, lr, hidden
    "CartPole": dict(population=128, generations=25, max_steps=500, sigma=0.1, lr=0.05, hidden=32, threshold=475.0),
    "Regression": dict(population=64, generations=300, max_steps=0, sigma=0.05, lr=0.01, hidden=32, threshold=-0.05),
}


def _policy(obs_dim: int, out_dim: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                         nn.Linear(hidden, out_dim))  # fmt: skip


def regress_once(noise: str, seed: int, device: torch.device) -> list[float]:
    """Student (16 -> 32 -> 32 -> 4) fits a random teacher of the same shape; returns -MSE per step."""
    cfg = CASES["Regression"]
    gen = torch.Generator().manual_seed(1000 + seed)
    teacher = _policy(16, 4, cfg["hidden"])
    for p in teacher.parameters():
        p.data = torch.randn(p.shape, generator=gen) / max(p.shape[-1], 1) ** 0.5
    teacher = teacher.to(device)
    torch.manual_seed(seed)
    student = _policy(16, 4, cfg["hidden"]).to(device)
    strategy = EggrollStrategy(sigma=cfg["sigma"], lr=cfg["lr"], rank=4, noise=noise, seed=seed,
                               allow_cpu=device.type == "cpu")  # fmt: skip
    strategy.setup(student)
    n, batch = cfg["population"], 64
    x_test = torch.randn(1024, 16, generator=gen).to(device)
    with torch.no_grad():
        y_test = teacher(x_test)
    curve = []
    for step in range(cfg["generations"]):
        x = torch.randn(batch, 16, generator=gen).to(device)
        with torch.no_grad():
            y = teacher(x)
        ids = torch.arange(n, device=device).repeat_interleave(batch)
        with strategy.perturb(n, epoch=step) as pop:
            pred = pop.batched_forward(student, x.repeat(n, 1), member_ids=ids).view(n, batch, -1)
        strategy.step(-(pred - y).pow(2).mean(dim=(1, 2)))
        with torch.no_grad():
            curve.append(-float((student(x_test) - y_test).pow(2).mean()))
    return curve


def train_once(env_name: str, noise: str, seed: int, device: torch.device) -> list[float]:
    if env_name == "Regression":
        return regress_once(noise, seed, device)
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
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--envs", nargs="+", default=list(CASES))
    ap.add_argument("--noises", default="gaussian,rademacher", help=f"comma-separated, of {', '.join(NOISE_TYPES)}")
    ap.add_argument("--out", default="benchmarks/results")
    args = ap.parse_args()
    noises = [check_choice("noise", n, NOISE_TYPES) for n in args.noises.split(",")]
    device = torch.device(args.device)
    records = []
    for env_name in args.envs:
        for noise in noises:
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
    print(write_md(out, meta, records, args.envs, noises))


def write_md(out: Path, meta: dict, records: list[dict], envs: list[str], noises: list[str]) -> str:
    header = " | ".join(f"{n} {key}" for key in ("final", "best") for n in noises)
    gens = " | ".join(f"{n} gens to threshold" for n in noises)
    lines = [f"# {' vs '.join(n.replace('_', '-').capitalize() for n in noises)} factors: learning", "",
             f"Device {meta['device']}, torch {meta['torch']}, rank 4, MLP (hidden 32, 32, tanh), Adam, "
             "`python benchmarks/bench_noise_learning.py`. CartPole (torch-native): return of the mean policy on 16 "
             "evaluation episodes. Regression: minus the student's test MSE against a random teacher MLP. "
             "Mean ± std over seeds; 'gens to threshold' lists each seed (— = never).", "",
             f"| env | population × generations | {header} | threshold | {gens} |",
             "|---|---|" + "---|" * (3 * len(noises) + 1)]  # fmt: skip
    for env_name in envs:
        row = [env_name, f"{CASES[env_name]['population']} × {CASES[env_name]['generations']}"]
        for key in ("final", "best"):
            for noise in noises:
                vals = torch.tensor([r[key] for r in records if r["env"] == env_name and r["noise"] == noise])
                row.append(f"{vals.mean():.4g} ± {vals.std(unbiased=False):.2g}")
        row.append(str(CASES[env_name]["threshold"]))
        for noise in noises:
            hits = [r["gens_to_threshold"] for r in records if r["env"] == env_name and r["noise"] == noise]
            row.append(", ".join("—" if h is None else str(h) for h in hits))
        lines.append("| " + " | ".join(row) + " |")
    text = "\n".join(lines) + "\n"
    (out / "noise_learning.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
