"""MLP policy: forward math against explicit torch, heads, observation normalization, export, and that the
strategy evolves the Linear layers only (normalization and bounds are buffers)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from eggroll_rl import EggrollStrategy
from eggroll_rl.agents.config import TrainConfig
from eggroll_rl.agents.policy import MLPPolicy, ObservationNormalizer, load_policy, make_policy, save_policy
from eggroll_rl.agents.schedules import schedule_value
from eggroll_rl.envs import Box, Discrete


def _manual_forward(policy: MLPPolicy, obs: torch.Tensor, activation: str) -> torch.Tensor:
    x = obs
    if policy.obs_norm is not None:
        n = policy.obs_norm
        x = ((x - n.mean.float()) / torch.sqrt(n.var + n.eps).float()).clamp(-n.clip, n.clip)
    linears = [m for m in policy.trunk if isinstance(m, torch.nn.Linear)]
    for lin in linears:
        x = x @ lin.weight.T + lin.bias
        x = F.relu(F.layer_norm(x, x.shape[-1:])) if activation == "pqn" else torch.tanh(x)
    return x @ policy.head.weight.T + policy.head.bias


@pytest.mark.parametrize("activation", ["pqn", "tanh"])
def test_discrete_head_is_argmax_of_explicit_mlp(activation):
    torch.manual_seed(0)
    policy = MLPPolicy(5, 3, discrete=True, hidden_sizes=(7, 6), activation=activation)
    policy.obs_norm.update(torch.randn(100, 5) * 3 + 1)
    obs = torch.randn(11, 5) * 2
    logits = _manual_forward(policy, obs, activation)
    torch.testing.assert_close(policy.features(obs), logits)
    assert torch.equal(policy(obs), logits.argmax(-1))
    assert policy(obs).dtype == torch.int64


def test_continuous_heads_respect_bounds():
    torch.manual_seed(1)
    low, high = torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 5.0])
    tanh = MLPPolicy(3, 2, discrete=False, hidden_sizes=(8,), action_low=low, action_high=high, obs_norm=False)
    with torch.no_grad():
        tanh.head.weight.mul_(100.0)  # saturate
    obs = torch.randn(64, 3)
    out = tanh.features(obs)
    expected = low + (torch.tanh(out) + 1) * 0.5 * (high - low)
    torch.testing.assert_close(tanh(obs), expected)
    assert bool((tanh(obs) >= low).all() and (tanh(obs) <= high).all())
    clip = MLPPolicy(
        3, 2, discrete=False, hidden_sizes=(8,), action_low=low, action_high=high, action_mode="clip", obs_norm=False
    )
    clip.load_state_dict(tanh.state_dict())
    torch.testing.assert_close(clip(obs), torch.maximum(torch.minimum(out, high), low))


def test_normalizer_merges_batches_exactly():
    torch.manual_seed(2)
    data = torch.randn(1000, 4, dtype=torch.float64) * torch.tensor([1.0, 10.0, 0.1, 3.0]) + 5
    norm = ObservationNormalizer(4, clip=0)
    for chunk in data.split([1, 100, 399, 500]):
        norm.update(chunk)
    torch.testing.assert_close(norm.mean, data.mean(0))
    torch.testing.assert_close(norm.var, data.var(0, unbiased=False))
    assert float(norm.count) == 1000
    # masked update: only live rows count
    norm2 = ObservationNormalizer(4, clip=0)
    mask = torch.arange(1000) % 3 == 0
    norm2.update(data, mask=mask)
    torch.testing.assert_close(norm2.mean, data[mask].mean(0))
    # moments API (what the trainer feeds from rollout sums)
    norm3 = ObservationNormalizer(4, clip=0)
    norm3.update_moments(600, data[:600].mean(0), data[:600].var(0, unbiased=False))
    norm3.update_moments(400, data[600:].mean(0), data[600:].var(0, unbiased=False))
    torch.testing.assert_close(norm3.var, data.var(0, unbiased=False))


def test_strategy_evolves_linear_layers_only():
    policy = MLPPolicy(4, 2, discrete=True, hidden_sizes=(8, 8), activation="pqn")
    strategy = EggrollStrategy(sigma=0.1, lr=0.1, rank=2, allow_cpu=True)
    strategy.setup(policy)
    names = sorted(s.name for s in strategy.specs)
    assert names == sorted(n for n, _ in policy.named_parameters())
    assert not any("obs_norm" in n or "action" in n for n in names)
    policy.obs_norm.update(torch.randn(50, 4) * 4)
    mean_before = policy.obs_norm.mean.clone()
    obs = torch.randn(6, 4)
    with strategy.perturb(population_size=6, epoch=0) as pop:
        actions = pop.batched_forward(policy, obs)
        # member 0's action equals the plain forward with its weights materialized
        w = {n: p.detach().clone() for n, p in policy.named_parameters()}
        for n, p in policy.named_parameters():
            p.data += pop.perturbation(0, n)
        assert int(policy(obs[:1])[0]) == int(actions[0])
        for n, p in policy.named_parameters():
            p.data.copy_(w[n])
    strategy.step(torch.arange(6, dtype=torch.float32))
    assert torch.equal(policy.obs_norm.mean, mean_before)


def test_make_policy_and_export_roundtrip(tmp_path):
    policy = make_policy(
        Box.from_bounds(-math.inf, math.inf, (3,)),
        Box.from_bounds(-2.0, 2.0, (1,)),
        hidden_sizes=(16,),
        activation="tanh",
    )
    assert not policy.discrete and policy.action_high.tolist() == [2.0]
    policy.obs_norm.update(torch.randn(30, 3) + 7)
    save_policy(policy, tmp_path / "p.pt")
    loaded = load_policy(tmp_path / "p.pt")
    obs = torch.randn(9, 3) + 7
    torch.testing.assert_close(loaded(obs), policy(obs))
    torch.testing.assert_close(loaded.obs_norm.mean, policy.obs_norm.mean)
    # unbounded continuous actions fall back to [-1, 1]
    p2 = make_policy(Box.from_bounds(-1, 1, (2,)), Box.from_bounds(-math.inf, math.inf, (2,)))
    assert p2.action_low.tolist() == [-1.0, -1.0]
    assert make_policy(Box.from_bounds(-1, 1, (2,)), Discrete(4)).discrete


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hidden_sizes=(0,)), "hidden_sizes"),
        (dict(activation="gelu"), "activation"),
        (dict(action_mode="squash"), "action_mode"),
    ],
)
def test_policy_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLPPolicy(3, 2, discrete=False, **kwargs)


def test_schedules():
    assert schedule_value("constant", 0.1, 0.5, 0.7) == 0.1
    assert schedule_value("linear", 1.0, 0.1, 0.5) == pytest.approx(0.55)
    assert schedule_value("exponential", 1.0, 0.01, 0.5) == pytest.approx(0.1)
    assert schedule_value("exponential", 1.0, 0.01, 1.0) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="cosine"):
        schedule_value("cosine", 1.0, 0.1, 0.0)


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(sigma=-0.1), "sigma"),
        (dict(population=7), "population"),
        (dict(rank=0), "rank"),
        (dict(lr=0.0), "lr"),
        (dict(activation="gelu"), "activation"),
        (dict(generations=0, total_steps=0), "generations"),
        (dict(lr_schedule="cosine"), "lr_schedule"),
    ],
)
def test_config_rejects_bad_values(changes, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig.for_env("CartPole", **changes)


def test_config_env_defaults_and_unknown_keys():
    assert TrainConfig.for_env("HalfCheetah").population == TrainConfig.for_env("halfcheetah-v5").population
    assert TrainConfig.for_env("CartPole", population=10).population == 10
    with pytest.raises(ValueError, match="unknown config keys"):
        TrainConfig.from_dict({"env": "CartPole", "sigmaa": 0.1})
