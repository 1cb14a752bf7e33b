"""A/B of the evosax cell's two non-config differences from eggroll, on the CPU at a small scale: the leaderboard's
evosax loop (``leaderboard_agents.jax_episodes`` / ``merge_moments``, evosax 0.3.2 ``Open_ES``, glorot + tanh MLP,
Brax HalfCheetah spring) with one change at a time:

- ``board``:      as the leaderboard cell runs it (observation moments start at count 0 / m2 0, so generation 0's
                  observations are divided by sqrt(1e-8) = 1e-4 and clipped to +-10);
- ``obs1``:       generation 0 with eggroll's normalizer start (mean 0, var 1: raw observations, clipped to +-10);
- ``lowrank``:    eggroll's noise instead of evosax's full-rank draw: every weight matrix ``W (in, out)`` gets
                  ``A B^T / sqrt(r)`` (``A (in, r)``, ``B (out, r)`` i.i.d. N(0, 1)), biases full-rank N(0, 1);
                  ``Open_ES.tell`` takes that population as it is (it recovers ``z = (x - mean) / std``).

Per generation it prints the population's mean return (the training fitness) and every ``--eval-every`` the mean
policy's return over ``--eval-envs`` episodes.

    taskset -c 1 python3 benchmarks/evosax_diff_ab.py --evosax-path /tmp/evosax_src --variant board
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--evosax-path", default="/tmp/evosax_src")
    ap.add_argument("--variant", choices=["board", "obs1", "lowrank"], default="board")
    ap.add_argument("--population", type=int, default=256)
    ap.add_argument("--generations", type=int, default=10)
    ap.add_argument("--length", type=int, default=1000)
    ap.add_argument("--sigma", type=float, default=0.02)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--eval-envs", type=int, default=32)
    args = ap.parse_args()
    sys.path.insert(0, args.evosax_path)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

    import jax
    import jax.numpy as jnp
    import optax
    from brax import envs
    from evosax.algorithms import Open_ES
    from leaderboard_agents import glorot_mlp, jax_episodes, merge_moments

    env = envs.get_environment("halfcheetah", backend="spring")
    n, length = args.population, args.length
    sizes = [env.observation_size, 64, 64, env.action_size]
    key, mean = glorot_mlp(jax.random.PRNGKey(args.seed), sizes)
    strategy = Open_ES(
        population_size=n, solution=mean, use_antithetic_sampling=True, optimizer=optax.adam(args.lr),
        std_schedule=optax.constant_schedule(args.sigma),
    )  # fmt: skip
    es_params = strategy.default_params

    def lowrank_population(key, es_state):
        """mean + sigma * s_i E_{pair(i)} with E's matrices A B^T / sqrt(r); evosax's layout [+z, -z]."""
        half = n // 2
        parts = []
        for (w, b), k in zip(mean, jax.random.split(key, len(mean))):
            ka, kb, kc = jax.random.split(k, 3)
            a = jax.random.normal(ka, (half, w.shape[0], args.rank))
            bb = jax.random.normal(kb, (half, w.shape[1], args.rank))
            parts += [jnp.einsum("uir,uor->uio", a, bb).reshape(half, -1) / jnp.sqrt(args.rank)]
            parts += [jax.random.normal(kc, (half, b.shape[0]))]
        z = jnp.concatenate(parts, axis=1)
        z = jnp.concatenate([z, -z])
        flat = es_state.mean + es_state.std * z
        return jax.vmap(strategy._unravel_solution)(flat)

    def episodes(layers, stats, reset_key, envs_n, batched, shift):
        return jax_episodes(env, layers, stats, reset_key, envs_n, length=length, shift=shift, batched=batched,
                            obs_clip=10.0)  # fmt: skip

    @jax.jit
    def generation(es_state, stats, key):
        key_ask, key_env, key_tell = jax.random.split(key, 3)
        if args.variant == "lowrank":
            population = lowrank_population(key_ask, es_state)
        else:
            population, es_state = strategy.ask(key_ask, es_state, es_params)
        ret, s0, s1, s2 = episodes(population, stats, key_env, n, True, 0.0)
        es_state, _ = strategy.tell(key_tell, population, -ret, es_state, es_params)
        return es_state, merge_moments(stats, s0, s1, s2), ret.mean()

    @jax.jit
    def evaluation(es_state, stats, key):
        ret, *_ = episodes(strategy.get_mean(es_state), stats, key, args.eval_envs, False, 0.0)
        return ret.mean()

    key, key_init = jax.random.split(key)
    es_state = strategy.init(key_init, mean, es_params)
    d = env.observation_size
    if args.variant == "obs1":
        # eggroll's start: count 0, mean 0, var 1. m2 / max(count, 1) = 1 at generation 0; merge_moments then adds
        # the batch's M2 to this 1, i.e. 1 / count (< 1e-5 after one generation) on the variance.
        stats = (jnp.zeros(()), jnp.zeros(d), jnp.ones(d))
    else:
        stats = (jnp.zeros(()), jnp.zeros(d), jnp.zeros(d))
    print(f"variant {args.variant} seed {args.seed} N {n} length {length} sigma {args.sigma} lr {args.lr}", flush=True)
    start = time.time()
    for gen in range(args.generations):
        key, key_gen, key_eval = jax.random.split(key, 3)
        es_state, stats, train_mean = generation(es_state, stats, key_gen)
        line = f"gen {gen + 1:3d} train_mean {float(train_mean):9.1f}"
        if (gen + 1) % args.eval_every == 0 or gen + 1 == args.generations:
            line += f" eval {float(evaluation(es_state, stats, key_eval)):9.1f}"
        print(line + f"  ({time.time() - start:.0f} s)", flush=True)
    std = jnp.sqrt(stats[2] / jnp.maximum(stats[0], 1.0) + 1e-8)
    print("obs std:", [round(float(v), 3) for v in std])


if __name__ == "__main__":
    main()
