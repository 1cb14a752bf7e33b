"""Where a Reacher policy's return goes: its distance and control parts, step by step, on gymnasium's Reacher-v5.

    python benchmarks/reacher_split.py RUN_DIR/checkpoints/best.pt [--episodes 200] [--seed 12345] [--scale 1.0]

Plays the policy's deterministic actions (times ``--scale``) in ``--episodes`` fresh 50-step episodes and prints the
mean return with its standard error, the sum of ``reward_dist`` (minus the fingertip-to-target distance) and of
``reward_ctrl`` (minus the squared action), and both at a few steps. A re-evaluation on fresh episodes also shows how
far a run's best evaluation was a lucky draw (the trainer keeps the checkpoint of its highest noisy evaluation).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch


def main() -> None:
    import gymnasium as gym

    from eggroll_rl.agents.policy import load_policy

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("policy", help="a policy or trainer checkpoint (.pt)")
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--scale", type=float, default=1.0, help="multiply every action by this")
    args = p.parse_args()
    torch.set_num_threads(1)
    policy = load_policy(args.policy).eval()
    n, steps = args.episodes, 50
    env = gym.make_vec("Reacher-v5", num_envs=n, vectorization_mode="sync")
    obs, _ = env.reset(seed=args.seed)
    dist, ctrl, amax = np.zeros((steps, n)), np.zeros((steps, n)), np.zeros((steps, n))
    with torch.no_grad():
        for t in range(steps):
            action = policy(torch.as_tensor(obs, dtype=torch.float32)).numpy() * args.scale
            obs, _, _, _, info = env.step(action)
            dist[t], ctrl[t], amax[t] = info["reward_dist"], info["reward_ctrl"], np.abs(action).max(1)
    ret = dist.sum(0) + ctrl.sum(0)
    print(f"return {ret.mean():.3f} ± {ret.std(ddof=1) / np.sqrt(n):.3f} (s.e., {n} episodes): "
          f"distance {dist.sum(0).mean():.3f}, control {ctrl.sum(0).mean():.3f}")  # fmt: skip
    for t in (0, 5, 10, 20, 30, steps - 1):
        print(
            f"  step {t:2d}: distance {dist[t].mean():.4f}, control {ctrl[t].mean():.4f}, max |a| {amax[t].mean():.3f}"
        )


if __name__ == "__main__":
    main()
