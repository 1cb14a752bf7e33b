"""The policies of the eggroll and evosax leaderboard cells at initialization, on Brax HalfCheetah (spring) on the CPU.

For each network (eggroll's default: torch init, head x0.1, pqn; glorot+pqn; torch+tanh; glorot+tanh = the evosax
peer's network) and seed, all in JAX (the torch nets' initial weights are copied in; pqn = relu(layer_norm(x)),
no affine, eps 1e-5, as torch's F.layer_norm):

1. gen-0 mean-policy rollout (``--envs`` envs, ``--steps`` steps) with the observation scaling of each cell's first
   generation: eggroll's normalizer starts at mean 0 / var 1 (raw observations, clipped to +-10); the evosax adapter's
   starts at count 0 / m2 0, i.e. std sqrt(0 + 1e-8) = 1e-4 (observations x 1e4, clipped to +-10);
2. the observation mean/var of that rollout become the normalizer (what every later generation uses);
3. mean-policy rollout with that normalizer: return, mean |action|, fraction of |action| > 0.95;
4. a population of ``--envs`` members (antithetic pairs) with sigma 0.02 noise, low-rank r=4 (eggroll) or full-rank
   (evosax): the std of the members' returns, the mean |f(+) - f(-)| of pairs, and the RMS change of the action
   (on the step-3 observations) that a perturbation causes.

    taskset -c 1 python3 benchmarks/evosax_diff_policy.py
"""

# ruff: noqa: B023  (the helpers defined in the loop are called within the same iteration)

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def torch_layers(init: str, activation: str, seed: int, sizes: list[int]) -> list[tuple]:
    import torch

    from eggroll_rl.agents.policy import MLPPolicy

    torch.manual_seed(seed)
    p = MLPPolicy(sizes[0], sizes[-1], False, tuple(sizes[1:-1]), activation=activation, weight_init=init)
    layers = [m for m in p.trunk if isinstance(m, torch.nn.Linear)] + [p.head]
    return [(m.weight.detach().T.numpy().copy(), m.bias.detach().numpy().copy()) for m in layers]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--envs", type=int, default=128)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--sigma", type=float, default=0.02)
    ap.add_argument("--rank", type=int, default=4)
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np
    from brax import envs

    env = envs.get_environment("halfcheetah", backend="spring")
    sizes = [env.observation_size, 64, 64, env.action_size]
    B, T = args.envs, args.steps

    def forward(layers, x, pqn):
        for i, (w, b) in enumerate(layers):
            x = x @ w + b
            if i < len(layers) - 1:
                if pqn:
                    mu = x.mean(-1, keepdims=True)
                    var = ((x - mu) ** 2).mean(-1, keepdims=True)
                    x = jax.nn.relu((x - mu) / jnp.sqrt(var + 1e-5))
                else:
                    x = jnp.tanh(x)
        return jnp.tanh(x)

    def make_rollout(pqn: bool, batched: bool):
        def run(layers, norm, key):
            mean, std = norm

            def body(carry, _):
                state, ret = carry
                x = jnp.clip((state.obs - mean) / std, -10.0, 10.0)
                a = jax.vmap(lambda l, o: forward(l, o, pqn))(layers, x) if batched else forward(layers, x, pqn)
                state2 = jax.vmap(env.step)(state, a)
                return (state2, ret + state2.reward), (state.obs, a, x)

            state = jax.vmap(env.reset)(jax.random.split(key, B))
            (_, ret), (obs, acts, xs) = jax.lax.scan(body, (state, jnp.zeros(B)), None, length=T)
            return ret, obs, acts, xs

        return jax.jit(run)

    rollouts = {(pqn, batched): make_rollout(pqn, batched) for pqn in (True, False) for batched in (False, True)}
    nets = [("torch", "pqn"), ("glorot", "pqn"), ("torch", "tanh"), ("glorot", "tanh")]
    rng = np.random.default_rng(123)
    print(f"HalfCheetah spring, {B} envs x {T} steps, sigma {args.sigma}; obs {sizes[0]}, act {sizes[-1]}")
    header = (
        "net | seed | gen0 scaling | gen0 return | gen0 |a| | return (stats) | |a| | sat>0.95 | pop std(f) | "
        "mean|f+-f-| | rms da lowrank | rms da fullrank | pop std(f) fullrank"
    )
    print(header)
    for init, act in nets:
        pqn = act == "pqn"
        for seed in args.seeds:
            t0 = time.time()
            layers = [(jnp.asarray(w), jnp.asarray(b)) for w, b in torch_layers(init, act, seed, sizes)]
            key = jax.random.PRNGKey(seed)
            out = {}
            for label, norm in (
                ("eggroll", (jnp.zeros(sizes[0]), jnp.ones(sizes[0]))),
                ("evosax", (jnp.zeros(sizes[0]), jnp.full(sizes[0], 1e-4))),
            ):
                ret, obs, acts, _ = rollouts[(pqn, False)](layers, norm, key)
                out[label] = (float(ret.mean()), float(jnp.abs(acts).mean()), obs)
            obs = np.asarray(out["eggroll"][2]).reshape(-1, sizes[0]).astype(np.float64)
            mean, var = obs.mean(0), obs.var(0)
            norm = (jnp.asarray(mean, jnp.float32), jnp.asarray(np.sqrt(var + 1e-8), jnp.float32))
            ret, _, acts, xs = rollouts[(pqn, False)](layers, norm, key)
            acts = np.asarray(acts)

            def population(lowrank: bool):
                half = B // 2
                deltas = []
                for w, _b in layers:
                    i, o = w.shape
                    if lowrank:
                        A = rng.standard_normal((half, o, args.rank))
                        Bf = rng.standard_normal((half, i, args.rank))
                        e = np.einsum("uir,uor->uio", Bf, A) / np.sqrt(args.rank)
                    else:
                        e = rng.standard_normal((half, i, o))
                    eb = rng.standard_normal((half, o))
                    deltas.append((e, eb))
                sign = np.tile([1.0, -1.0], half)
                members = [
                    (
                        jnp.asarray(
                            np.asarray(w)[None] + args.sigma * sign[:, None, None] * e[np.arange(B) // 2], jnp.float32
                        ),
                        jnp.asarray(
                            np.asarray(b)[None] + args.sigma * sign[:, None] * eb[np.arange(B) // 2], jnp.float32
                        ),
                    )
                    for (w, b), (e, eb) in zip(layers, deltas)
                ]
                # action change on the mean policy's normalized observations (first 2000 of them)
                x = jnp.asarray(np.asarray(xs).reshape(-1, sizes[0])[:2000])
                a0 = forward(layers, x, pqn)
                da = jax.vmap(lambda l: forward(l, x, pqn) - a0)(members)
                r, *_ = rollouts[(pqn, True)](members, norm, key)
                r = np.asarray(r)
                return r, float(jnp.sqrt(jnp.mean(da**2)))

            r_low, da_low = population(True)
            r_full, da_full = population(False)
            print(
                f"{init}+{act} | {seed} | - | eggroll {out['eggroll'][0]:.1f} / evosax {out['evosax'][0]:.1f} | "
                f"eggroll {out['eggroll'][1]:.3f} / evosax {out['evosax'][1]:.3f} | {float(ret.mean()):.1f} | "
                f"{np.abs(acts).mean():.3f} | {(np.abs(acts) > 0.95).mean():.3f} | {r_low.std():.1f} | "
                f"{np.abs(r_low[0::2] - r_low[1::2]).mean():.1f} | {da_low:.4f} | {da_full:.4f} | {r_full.std():.1f}"
                f"   ({time.time() - t0:.0f} s)",
                flush=True,
            )
    print("obs std (gen-0 eggroll-default rollout of the last net):", np.round(np.sqrt(var), 3).tolist())


if __name__ == "__main__":
    main()
