"""The training-only reward shift: ES fitness = return - shift * episode length; evaluation and logs unshifted."""

from __future__ import annotations

import math

import pytest
import torch

import eggroll_rl.agents.trainer as trainer
from eggroll_rl import EggrollStrategy
from eggroll_rl.agents.config import TrainConfig
from eggroll_rl.agents.rollout import rollout
from eggroll_rl.agents.trainer import train, training_fitness
from eggroll_rl.envs import make_env

DROP = ("wall_time_s", "steps_per_s", "eval_time_s")


class _ShiftedRewards:
    """The reference: an env whose every reward is ``reward - shift`` (what the fitness must equal)."""

    def __init__(self, env, shift: float) -> None:
        self.env, self.shift = env, shift

    def __getattr__(self, name):
        return getattr(self.env, name)

    def reset(self, seed=None):
        return self.env.reset(seed=seed)

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        return obs, reward - self.shift, terminated, truncated, info


@pytest.mark.parametrize(
    "env_name, max_steps",
    [("CartPole", 300), ("CartPole", 37), ("Pendulum", 150)],  # 37, 150: episodes cut by max_steps count as they stand
)
def test_fitness_is_the_return_of_shifted_rewards(env_name, max_steps):
    shift, members, envs_per_member = 0.75, 6, 2

    def run(env):
        def act(obs, ids):  # deterministic, member-dependent, so episode lengths differ
            if env_name == "CartPole":
                return ((obs[:, 2] + 0.15 * obs[:, 3] * (ids % 3) + 0.01 * (ids - 3)) > 0).long()
            return torch.tanh(obs[:, :1] * (ids[:, None] - 2.5)) * 2.0

        return rollout(
            env, act, num_members=members, envs_per_member=envs_per_member, episodes_per_env=2,
            max_steps=max_steps, seed=7,
        )  # fmt: skip

    plain = run(make_env(env_name, backend="torch", num_envs=members * envs_per_member, device="cpu", seed=3))
    shifted_env = make_env(env_name, backend="torch", num_envs=members * envs_per_member, device="cpu", seed=3)
    reference = run(_ShiftedRewards(shifted_env, shift))
    assert torch.equal(plain.lengths, reference.lengths)
    if env_name == "CartPole":
        assert len(set(plain.lengths.tolist())) > 1
    torch.testing.assert_close(training_fitness(plain, shift), reference.returns, rtol=0, atol=1e-4)
    assert training_fitness(plain, 0.0) is plain.returns


def _spy(monkeypatch):
    """Record every rollout's result (the population's and the evaluations') and the fitness given to
    ``strategy.step`` in every generation."""
    seen = {"rollouts": [], "fitness": []}
    real_rollout, real_step = trainer.rollout, EggrollStrategy.step

    def rollout_spy(*args, **kwargs):
        result = real_rollout(*args, **kwargs)
        seen["rollouts"].append(result)
        return result

    def step_spy(self, fitness, *args, **kwargs):
        seen["fitness"].append(fitness.clone())
        return real_step(self, fitness, *args, **kwargs)

    monkeypatch.setattr(trainer, "rollout", rollout_spy)
    monkeypatch.setattr(EggrollStrategy, "step", step_spy)
    return seen


def _config(**overrides) -> TrainConfig:
    values = dict(
        device="cpu", population=16, hidden_sizes=(8,), generations=3, eval_every=1, eval_episodes=4,
        max_episode_steps=120, tensorboard=False, cpu_threads=1,
    )  # fmt: skip
    return TrainConfig.for_env("CartPole", **values | overrides)


def test_training_uses_shifted_fitness_and_logs_env_returns(monkeypatch):
    plain_seen = _spy(monkeypatch)
    plain = train(_config())
    monkeypatch.undo()
    shifted_seen = _spy(monkeypatch)
    shift = 0.5  # CartPole pays 1 per step: shifted fitness (1 - 0.5) * length ranks members alike
    shifted = train(_config(reward_shift=shift))

    # Fitness = return - shift * episode length, the lengths being those of the unshifted run (same seed, same
    # policy in generation 0; the same updates after it, as the ranking is unchanged).
    population = [r for r in plain_seen["rollouts"] if r.returns.numel() == 16]  # not the evaluations' rollouts
    assert len(population) == len(shifted_seen["fitness"]) == 3
    for gen, (fit, result) in enumerate(zip(shifted_seen["fitness"], population)):
        assert torch.equal(result.returns, result.lengths)  # CartPole: return = length
        torch.testing.assert_close(fit, result.returns - shift * result.lengths, rtol=0, atol=1e-5, msg=f"gen {gen}")
        torch.testing.assert_close(plain_seen["fitness"][gen], result.returns, rtol=0, atol=0)
    # Logged training returns, evaluation returns and the best evaluation are the env's own.
    strip = [{k: v for k, v in r.items() if k not in DROP} for r in plain.metrics]
    assert [{k: v for k, v in r.items() if k not in DROP} for r in shifted.metrics] == strip
    assert shifted.best_eval_return == plain.best_eval_return > 0


def test_a_shift_past_the_reward_changes_the_search(monkeypatch):
    seen = _spy(monkeypatch)
    result = train(_config(reward_shift=2.0, generations=1))
    fit, ro = seen["fitness"][0], seen["rollouts"][0]
    torch.testing.assert_close(fit, -ro.lengths, rtol=0, atol=1e-5)  # 1 - 2 per step: shorter is fitter
    assert result.metrics[0]["train_return_mean"] == pytest.approx(float(ro.returns.double().mean()))
    assert result.metrics[0]["train_return_mean"] > 0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "1.0", True])
def test_reward_shift_must_be_a_finite_number(bad):
    with pytest.raises((ValueError, TypeError), match="reward_shift"):
        TrainConfig(reward_shift=bad)


def test_resume_keeps_the_reward_shift(tmp_path):
    run = tmp_path / "r"
    train(_config(reward_shift=1.0, generations=1, out_dir=str(run), eval_every=0))
    with pytest.raises(ValueError, match="reward_shift"):
        train(_config(reward_shift=0.0, generations=2), resume=run)
    resumed = train(_config(reward_shift=1.0, generations=2), resume=run)
    assert resumed.config.reward_shift == 1.0 and len(resumed.metrics) == 2
