"""Our rollout path against the evosax cell's ``lax.scan`` on one generation, CPU: same member weights (dense, from
our noise), same normalizer, same env starts. Per-member returns and observation moments should agree to float
rounding over short horizons (HalfCheetah is chaotic: rounding grows over long ones).

    taskset -c 1 python3 benchmarks/evosax_diff_plumbing.py --members 16 --steps 100 1000
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--steps", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from leaderboard_agents import jax_episodes

    from eggroll_rl import EggrollStrategy
    from eggroll_rl.agents.policy import make_policy
    from eggroll_rl.agents.rollout import rollout
    from eggroll_rl.envs.brax_adapter import BraxVecEnv

    n = args.members
    env = BraxVecEnv("halfcheetah", num_envs=n, device="cpu", seed=0, brax_backend="spring", episode_length=1000)
    torch.manual_seed(0)
    policy = make_policy(env.single_observation_space, env.single_action_space, (64, 64), activation="tanh",
                         weight_init="glorot")  # fmt: skip
    # a non-trivial normalizer, the same on both sides
    rng = np.random.default_rng(0)
    mean = rng.normal(0, 0.1, 17)
    var = rng.uniform(0.5, 4.0, 17)
    policy.obs_norm.update_moments(1000.0, torch.tensor(mean), torch.tensor(var))
    count = 1000.0
    stats = (jnp.asarray(count, jnp.float32), jnp.asarray(mean, jnp.float32), jnp.asarray(var * count, jnp.float32))
    strategy = EggrollStrategy(sigma=0.02, lr=0.01, rank=4, fitness_shaping="centered_rank", seed=3, allow_cpu=True)
    strategy.setup(policy)
    layers_t = [m for m in policy.trunk if isinstance(m, torch.nn.Linear)] + [policy.head]
    brax_env = env._env
    for steps in args.steps:
        with torch.no_grad(), strategy.perturb(population_size=n, epoch=0) as pop:
            ours = rollout(env, lambda obs, ids: pop.batched_forward(policy, obs, member_ids=ids), num_members=n,
                           max_steps=steps, seed=args.seed, record_obs=True)  # fmt: skip
            layers = []
            for m in layers_t:
                wname = next(s.name for s in strategy.specs if s.param is m.weight)
                bname = next(s.name for s in strategy.specs if s.param is m.bias)
                w = torch.stack([(m.weight + pop.perturbation(i, wname)).T for i in range(n)])
                b = torch.stack([m.bias + pop.perturbation(i, bname) for i in range(n)])
                layers.append((jnp.asarray(w.numpy()), jnp.asarray(b.numpy())))
        # BraxVecEnv.reset(seed): key = PRNGKey(seed); key, sub = split(key); keys = split(sub, n)
        _, sub = jax.random.split(jax.random.PRNGKey(args.seed))
        ret, s0, s1, s2 = jax_episodes(brax_env, layers, stats, sub, n, length=steps, shift=0.0, batched=True,
                                       obs_clip=10.0)  # fmt: skip
        r_ours = ours.returns.numpy().astype(np.float64)
        r_jax = np.asarray(ret, np.float64)
        obs_diff = np.abs(ours.obs_sum.numpy() / ours.obs_count - np.asarray(s1) / float(s0)).max()
        head_ours, head_jax = np.round(r_ours[:4], 3).tolist(), np.round(r_jax[:4], 3).tolist()
        print(f"steps {steps}: returns ours {head_ours} ... jax {head_jax} ...")
        print(
            f"   max |diff| {np.abs(r_ours - r_jax).max():.4g}, mean |return| {np.abs(r_jax).mean():.4g}, "
            f"corr {np.corrcoef(r_ours, r_jax)[0, 1]:.6f}; obs count ours {ours.obs_count} jax {int(s0)}; "
            f"max |obs mean diff| {obs_diff:.3g}"
        )


if __name__ == "__main__":
    main()
