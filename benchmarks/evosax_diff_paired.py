"""The paired test of hypothesis 1 in ``results/evosax_diff_2026-11-30.md``: eggroll's trainer started from the
evosax peer's initial weights. Everything else is ``evosax_diff_ours.py`` (glorot + tanh net, N=256, sigma 0.02, Adam
lr 0.01, r=4, centered ranks, Brax HalfCheetah spring, 1000 steps, CPU); the printed lines are the same.

The weights are ``leaderboard_agents.glorot_mlp(jax.random.PRNGKey(seed), sizes)``, the call ``run_evosax`` and
``evosax_diff_ab.py`` make, so seed s starts where the evosax loop's seed s starts. ``train`` has no option for given
initial weights, so this script wraps ``trainer.build_policy`` (the one place ``train`` makes its policy, before
``strategy.setup``): the policy is built as usual (same torch RNG draws, so the noise and env starts stay those of
``evosax_diff_ours.py`` with the same seed), then its weights are overwritten and checked equal to the JAX arrays.
``--obs-start empty`` also starts the normalizer as the evosax adapter does (count 0, variance 0: std 1e-4).

    taskset -c 1 python3 benchmarks/evosax_diff_paired.py --seed 1 --generations 10
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import numpy as np
import torch


def evosax_layers(seed: int, sizes: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The evosax peer's initial ``[(W (in, out), b (out,)), ...]`` for ``seed``, as float32 numpy arrays."""
    import jax

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from leaderboard_agents import glorot_mlp

    _, layers = glorot_mlp(jax.random.PRNGKey(seed), sizes)
    return [(np.asarray(w), np.asarray(b)) for w, b in layers]


@torch.no_grad()
def load_evosax_weights(policy: Any, layers: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """Copy ``layers`` into ``policy``'s Linear layers (``W`` transposed to torch's ``(out, in)``); returns the max
    absolute difference after the copy (0 expected)."""
    linears = [m for m in policy.trunk if isinstance(m, torch.nn.Linear)] + [policy.head]
    if len(linears) != len(layers):
        raise ValueError(f"policy has {len(linears)} Linear layers, the evosax net {len(layers)}")
    worst = 0.0
    for linear, (w, b) in zip(linears, layers):
        if tuple(linear.weight.shape) != w.T.shape or tuple(linear.bias.shape) != b.shape:
            raise ValueError(f"layer shapes differ: torch {tuple(linear.weight.shape)}, jax {w.shape} (transposed)")
        linear.weight.copy_(torch.from_numpy(w.T.copy()))
        linear.bias.copy_(torch.from_numpy(b.copy()))
        for t, a in ((linear.weight, w.T), (linear.bias, b)):
            worst = max(worst, float(np.max(np.abs(t.detach().cpu().numpy().astype(np.float64) - a))))
    return worst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--generations", type=int, default=10)
    ap.add_argument("--population", type=int, default=256)
    ap.add_argument(
        "--obs-start", choices=("raw", "empty"), default="raw",
        help="normalizer at generation 0: raw (ours: mean 0, var 1) or empty (evosax's adapter: var 0, std 1e-4)",
    )  # fmt: skip
    args = ap.parse_args()

    from eggroll_rl.agents import TrainConfig, train, trainer

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from evosax_diff_ours import progress_printer, small_scale_config

    cfg = small_scale_config(args.seed, args.generations, args.population)
    build_policy = trainer.build_policy

    def build_from_evosax(config: TrainConfig, env: Any, device: torch.device) -> Any:
        policy = build_policy(config, env, device)
        sizes = [policy.obs_dim, *config.hidden_sizes, policy.action_dim]
        layers = evosax_layers(config.seed, sizes)
        worst = load_evosax_weights(policy, layers)
        assert worst == 0.0, f"loaded torch weights differ from the JAX arrays by {worst}"
        if args.obs_start == "empty":
            policy.obs_norm.var.zero_()  # count is 0, so the first merge replaces it: evosax's scheme from gen 1
        rms = ", ".join(f"{float(np.sqrt(np.mean(w**2))):.3f}" for w, _ in layers)
        print(f"evosax seed-{config.seed} weights {sizes} loaded (max abs diff {worst}; weight RMS {rms})", flush=True)
        return policy

    trainer.build_policy = build_from_evosax
    progress = progress_printer()

    try:
        train(cfg, progress_fn=progress)
    finally:
        trainer.build_policy = build_policy


if __name__ == "__main__":
    main()
