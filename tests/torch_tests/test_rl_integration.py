"""RL patterns: a batched torch env written here, episode masking, learning; iterate() with a single gym env."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from es_helpers import make_strategy


class ReachEnv:
    """A batched point-mass env: move a 2-D point toward the origin; episodes end inside radius 0.1 or at 30 steps.

    reset() -> obs (B, 2); step(actions (B, 2)) -> obs, reward (B,), done (B,). reward = -|pos| after the move.
    """

    def __init__(self, batch_size: int, device: torch.device, seed: int = 0):
        self.batch_size, self.device = batch_size, device
        self.gen = torch.Generator().manual_seed(seed)

    def reset(self) -> torch.Tensor:
        self.pos = (torch.rand(self.batch_size, 2, generator=self.gen) * 2 - 1).to(self.device)
        self.t = 0
        return self.pos.clone()

    def step(self, actions: torch.Tensor):
        self.pos = self.pos + 0.2 * actions.clamp(-1, 1)
        self.t += 1
        dist = self.pos.norm(dim=1)
        done = (dist < 0.1) | (self.t >= 30)
        return self.pos.clone(), -dist, done


def _episode(pop, policy, env, population_size, device):
    obs = env.reset()
    returns = torch.zeros(population_size, device=device)
    lengths = torch.zeros(population_size, device=device)
    dones = torch.zeros(population_size, dtype=torch.bool, device=device)
    while not dones.all():
        actions = pop.batched_forward(policy, obs)
        obs, reward, done = env.step(actions)
        returns += reward * (~dones).float()
        lengths += (~dones).float()
        dones = dones | done
    return returns, lengths


def test_masked_returns_equal_per_member_rollouts(device):
    torch.manual_seed(0)
    policy = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)).to(device)
    s = make_strategy(device, rank=2, sigma=0.5)
    s.setup(policy)
    with s.perturb(8) as pop:
        returns, lengths = _episode(pop, policy, ReachEnv(8, device), 8, device)
        # Reference: each member alone, stepping only until its own episode ends.
        env = ReachEnv(8, device)
        start = env.reset()
        for i in pop.iterate():
            pos, total, steps = start[i].clone(), 0.0, 0
            while True:
                with torch.no_grad():
                    pos = pos + 0.2 * policy(pos).clamp(-1, 1)
                steps += 1
                total += -float(pos.norm())
                if pos.norm() < 0.1 or steps >= 30:
                    break
            assert returns[i].item() == pytest.approx(total, rel=1e-4, abs=1e-4)
            assert lengths[i].item() == steps


def test_policy_learns_to_reach_the_origin(device):
    torch.manual_seed(0)
    policy = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)).to(device)
    s = make_strategy(device, rank=2, sigma=0.1, lr=0.05)
    s.setup(policy)
    n = 64
    history = []
    for epoch in range(40):
        with s.perturb(n, epoch=epoch) as pop:
            returns, _ = _episode(pop, policy, ReachEnv(n, device, seed=epoch), n, device)
        history.append(s.step(returns)["fitness_mean"])
    # Returns are negative distances: closer to 0 is better. A random policy wanders (about -70 here).
    assert sum(history[-5:]) / 5 > 0.1 * sum(history[:5]) / 5
    assert history[-1] > -5.0


def test_seed_iterate_example_with_a_single_gymnasium_env():
    """Seed 004's sequential example (iterate() over one CartPole env), CPU-safe, a few epochs."""
    gym = pytest.importorskip("gymnasium")
    env = gym.make("CartPole-v1")
    torch.manual_seed(0)
    policy = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 2))
    strategy = make_strategy(torch.device("cpu"), sigma=0.1, lr=0.01, rank=4)
    strategy.setup(policy)
    means = []
    for epoch in range(3):
        fitnesses = []
        with strategy.perturb(population_size=8, epoch=epoch) as pop:
            for _member_id in pop.iterate():
                episode_return = 0.0
                obs, _ = env.reset(seed=epoch)
                done = False
                while not done:
                    with torch.no_grad():
                        obs_tensor = torch.as_tensor(obs, dtype=torch.float32)
                        action = policy(obs_tensor).argmax().item()
                    obs, reward, terminated, truncated, _ = env.step(action)
                    episode_return += reward
                    done = terminated or truncated
                fitnesses.append(episode_return)
        metrics = strategy.step(torch.tensor(fitnesses))
        means.append(metrics["fitness_mean"])
        assert metrics["fitness_max"] == max(fitnesses)
    assert all(m >= 8 for m in means)  # CartPole gives at least 8 steps of reward 1 before failing


def test_seed_quick_start_with_gym_make_vec():
    """Seed 004's RL quick start (gym.vector.make replaced by gymnasium 1.x's gym.make_vec), on the CPU."""
    gym = pytest.importorskip("gymnasium")
    population_size = 16
    envs = gym.make_vec("CartPole-v1", num_envs=population_size)
    torch.manual_seed(0)
    policy = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 2))
    strategy = make_strategy(torch.device("cpu"), sigma=0.1, lr=0.01, rank=4)
    strategy.setup(policy)
    for epoch in range(2):
        obs, _ = envs.reset(seed=epoch)
        episode_returns = torch.zeros(population_size)
        dones = torch.zeros(population_size, dtype=torch.bool)
        steps = 0
        with strategy.perturb(population_size=population_size, epoch=epoch) as pop:
            while not dones.all():
                obs_tensor = torch.as_tensor(obs, dtype=torch.float32)
                with torch.no_grad():
                    action_logits = pop.batched_forward(policy, obs_tensor)
                actions = action_logits.argmax(dim=-1).numpy()
                obs, rewards, terminated, truncated, _ = envs.step(actions)
                episode_returns += torch.as_tensor(rewards, dtype=torch.float32) * (~dones).float()
                dones = dones | torch.as_tensor(terminated | truncated)
                steps += 1
        metrics = strategy.step(episode_returns)
        # CartPole pays 1 per step: every return is an episode length, at most the number of steps taken.
        assert episode_returns.max().item() == steps
        assert metrics["fitness_min"] >= 8
    envs.close()
