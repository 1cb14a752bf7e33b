"""The evosax peer of the leaderboard (benchmarks/leaderboard_agents.py): its JAX rollout against a step-by-step
loop over the same Brax env, its running observation moments against numpy, and (where evosax is installed) one
short cell end to end."""

from __future__ import annotations

import numpy as np
import pytest
from bench_modules import load

jax = pytest.importorskip("jax")
envs = pytest.importorskip("brax.envs")
jnp = jax.numpy
la = load("leaderboard_agents")


def test_merge_moments_equals_the_moments_of_all_samples():
    rng = np.random.default_rng(0)
    first, second = rng.normal(1.0, 2.0, (37, 3)), rng.normal(-0.5, 0.7, (11, 3))
    stats = (jnp.asarray(37.0), jnp.asarray(first.mean(0)), jnp.asarray(((first - first.mean(0)) ** 2).sum(0)))
    count, mean, m2 = la.merge_moments(stats, jnp.asarray(11.0), jnp.asarray(second.sum(0)),
                                       jnp.asarray((second**2).sum(0)))  # fmt: skip
    both = np.concatenate([first, second])
    assert float(count) == 48.0
    np.testing.assert_allclose(np.asarray(mean), both.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(m2) / 48.0, both.var(0), rtol=1e-4)
    empty = la.merge_moments((jnp.zeros(()), jnp.zeros(3), jnp.zeros(3)), jnp.asarray(11.0),
                             jnp.asarray(second.sum(0)), jnp.asarray((second**2).sum(0)))  # fmt: skip
    np.testing.assert_allclose(np.asarray(empty[2]) / 11.0, second.var(0), rtol=1e-4)


def test_jax_episodes_matches_a_step_by_step_loop():
    """Per-member policies, a reward shift, clipped normalized observations and episodes that end (inverted
    pendulum falls): the scan equals stepping each env in Python and summing until its first done."""
    env = envs.get_environment("inverted_pendulum", backend="spring")
    n, length, shift, clip = 3, 25, 0.5, 2.0
    key = jax.random.PRNGKey(3)
    sizes = [env.observation_size, 8, env.action_size]
    keys = jax.random.split(key, 4)
    # large weights so that some pendulums fall within the 25 steps and the mask matters
    layers = [(3.0 * jax.random.normal(keys[0], (n, a, b)), 0.1 * jax.random.normal(keys[1], (n, b)))
              for a, b in zip(sizes[:-1], sizes[1:])]  # fmt: skip
    stats = (jnp.asarray(10.0), 0.1 * jnp.ones(env.observation_size), 4.0 * jnp.ones(env.observation_size))
    ret, s0, s1, s2 = jax.jit(
        lambda layers, stats, k: la.jax_episodes(
            env, layers, stats, k, n, length=length, shift=shift, batched=True, obs_clip=clip
        )  # fmt: skip
    )(layers, stats, keys[2])

    step = jax.jit(jax.vmap(env.step))
    state = jax.jit(jax.vmap(env.reset))(jax.random.split(keys[2], n))
    count, mu, m2 = (np.asarray(x, dtype=np.float64) for x in stats)
    expected_ret, alive = np.zeros(n), np.ones(n, dtype=bool)
    e0, e1, e2 = 0.0, np.zeros(env.observation_size), np.zeros(env.observation_size)
    for _ in range(length):
        obs = np.asarray(state.obs, dtype=np.float64)
        normed = np.clip((obs - mu) / np.sqrt(m2 / count + 1e-8), -clip, clip)
        actions = []
        for i in range(n):
            x = normed[i]
            for w, b in layers:
                x = np.tanh(x @ np.asarray(w[i], dtype=np.float64) + np.asarray(b[i], dtype=np.float64))
            actions.append(x)
        e0, e1, e2 = e0 + alive.sum(), e1 + obs[alive].sum(0), e2 + (obs[alive] ** 2).sum(0)
        state = step(state, jnp.asarray(np.stack(actions), dtype=jnp.float32))
        expected_ret += np.where(alive, np.asarray(state.reward) - shift, 0.0)
        alive &= np.asarray(state.done) == 0
    assert 0 < e0 < n * length  # some episodes ended early
    assert float(s0) == e0
    np.testing.assert_allclose(np.asarray(ret), expected_ret, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.asarray(s1), e1, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.asarray(s2), e2, rtol=1e-4, atol=1e-3)


def test_evosax_cell_runs_and_mirrors_the_shared_config():
    pytest.importorskip("evosax")
    lb = load("leaderboard")

    class Clock:
        def __init__(self) -> None:
            self.evals: list[tuple[int, float]] = []
            self.lengths: list[float | None] = []

        def elapsed(self) -> float:
            return 0.0  # never past the budget: the generations end the run

        def __call__(self, env_steps: int, eval_return: float, eval_length: float | None = None) -> None:
            self.evals.append((env_steps, eval_return))
            self.lengths.append(eval_length)

    cell = lb.Cell(env="InvertedPendulum", agent="evosax", seed=0, budget_s=600.0, backend="brax",
                   brax_backend="spring", episode_length=20, device="cpu",
                   overrides={"population": 8, "eval_episodes": 2, "eval_every": 2, "generations": 4,
                              "reward_shift": 0.0})  # fmt: skip
    clock = Clock()
    out = la.run_evosax(cell, cell.budget_s, clock)
    shared = la.shared_config(cell)
    assert out["stopped"] == "generations" and len(out["chunks"]) == 4
    steps = [c[1] for c in out["chunks"]]
    assert [s for s, _ in clock.evals] == [sum(steps[:2]), sum(steps)]
    assert all(0 < c[1] <= 8 * 20 for c in out["chunks"])
    assert all(0.0 <= r <= 20.0 for _, r in clock.evals)  # inverted pendulum: 1 per step alive, 20 steps
    # so the evaluation's mean episode length is its mean return
    assert [n for n in clock.lengths] == pytest.approx([r for _, r in clock.evals])
    config = out["config"]
    assert (config["population"], config["sigma"], config["lr"]) == (8, shared.sigma, shared.lr)
    assert config["hidden_sizes"] == list(shared.hidden_sizes) and config["episode_length"] == 20
