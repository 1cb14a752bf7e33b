"""Policy initialisation (``weight_init``): the default is torch's ``nn.Linear`` init with a shrunk head, drawn
exactly as before the option existed; ``glorot`` is Glorot-uniform on every layer with zero biases. Both travel in
the policy's spec (save/load, checkpoints) and through ``TrainConfig``, the builders and the CLI."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from eggroll_rl.agents.builders import build_policy
from eggroll_rl.agents.checkpoint import atomic_torch_save
from eggroll_rl.agents.config import TrainConfig
from eggroll_rl.agents.policy import MLPPolicy, load_policy, policy_payload, save_policy
from eggroll_rl.envs import Box, Discrete


def _old_construction(obs_dim: int, action_dim: int, hidden_sizes: tuple[int, ...]) -> list[torch.Tensor]:
    """The parameters MLPPolicy made before ``weight_init`` existed, in ``named_parameters`` order."""
    layers, width = [], obs_dim
    for h in hidden_sizes:
        layers.append(nn.Linear(width, h))
        width = h
    head = nn.Linear(width, action_dim)
    with torch.no_grad():
        head.weight.mul_(0.1)
        head.bias.zero_()
    return [t for layer in [*layers, head] for t in (layer.weight, layer.bias)]


def _linears(policy: MLPPolicy) -> list[nn.Linear]:
    return [m for m in policy.trunk if isinstance(m, nn.Linear)] + [policy.head]


@pytest.mark.parametrize("shape", [(5, 3, (7, 6)), (17, 6, (64, 64)), (4, 2, ()), (3, 1, (9,))])
@pytest.mark.parametrize("seed", [0, 1234])
def test_torch_init_is_bit_identical_to_the_old_construction(shape, seed):
    obs_dim, action_dim, hidden = shape
    torch.manual_seed(seed)
    expected = _old_construction(obs_dim, action_dim, hidden)
    rng_after_old = torch.get_rng_state()
    for kwargs in (dict(), dict(weight_init="torch")):  # the default is "torch"
        torch.manual_seed(seed)
        policy = MLPPolicy(obs_dim, action_dim, discrete=False, hidden_sizes=hidden, **kwargs)
        assert torch.equal(torch.get_rng_state(), rng_after_old)  # the same draws, no more
        params = [p.detach() for _, p in policy.named_parameters()]
        assert len(params) == len(expected)
        for got, want in zip(params, expected):
            assert torch.equal(got, want)
        assert policy.spec["weight_init"] == "torch"
    assert TrainConfig().weight_init == "torch"
    assert all(TrainConfig.for_env(env, device="cpu").weight_init == "torch" for env in ("CartPole", "HalfCheetah"))
    # HalfCheetah's GPU recipe is the one that picks Glorot (config.py, halfcheetah_init_gpu_2026-11-30.md).
    assert TrainConfig.for_env("HalfCheetah", device="cuda").weight_init == "glorot"


def test_glorot_weights_are_uniform_within_the_bound_with_zero_biases():
    torch.manual_seed(0)
    policy = MLPPolicy(100, 6, discrete=False, hidden_sizes=(256, 256), weight_init="glorot")
    for layer in _linears(policy):
        fan_out, fan_in = layer.weight.shape
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        w = layer.weight.detach().double().reshape(-1)
        n = w.numel()
        assert float(w.abs().max()) <= bound
        assert float(w.abs().max()) > bound * (1 - 20.0 / n)  # fills the interval (no 0.1 head shrink)
        # U(-b, b): E w = 0, E w^2 = b^2 / 3, Var(w^2) = 4 b^4 / 45; five standard errors of the sample means.
        assert abs(float(w.mean())) < 5 * bound / math.sqrt(3 * n)
        assert abs(float(w.square().mean()) - bound**2 / 3) < 5 * bound**2 * math.sqrt(4 / 45 / n)
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))
    assert policy.spec["weight_init"] == "glorot"


def test_glorot_is_seeded_and_differs_from_torch():
    torch.manual_seed(7)
    a = MLPPolicy(5, 3, discrete=True, hidden_sizes=(8,), weight_init="glorot")
    torch.manual_seed(7)
    b = MLPPolicy(5, 3, discrete=True, hidden_sizes=(8,), weight_init="glorot")
    torch.manual_seed(7)
    c = MLPPolicy(5, 3, discrete=True, hidden_sizes=(8,))
    for la, lb, lc in zip(_linears(a), _linears(b), _linears(c)):
        assert torch.equal(la.weight, lb.weight)
        assert not torch.equal(la.weight, lc.weight)


def test_weight_init_round_trips_through_save_and_load(tmp_path):
    torch.manual_seed(3)
    policy = MLPPolicy(4, 2, discrete=False, hidden_sizes=(8, 8), weight_init="glorot")
    policy.obs_norm.update(torch.randn(20, 4) * 2 + 1)
    save_policy(policy, tmp_path / "p.pt")
    loaded = load_policy(tmp_path / "p.pt")
    assert loaded.spec == policy.spec and loaded.spec["weight_init"] == "glorot"
    obs = torch.randn(5, 4)
    torch.testing.assert_close(loaded(obs), policy(obs), rtol=0, atol=0)
    # A payload written before weight_init existed loads as "torch", with its own weights.
    payload = policy_payload(policy)
    del payload["spec"]["weight_init"]
    atomic_torch_save({"policy": payload}, tmp_path / "old_checkpoint.pt")
    old = load_policy(tmp_path / "old_checkpoint.pt")
    assert old.spec["weight_init"] == "torch"
    torch.testing.assert_close(old(obs), policy(obs), rtol=0, atol=0)


def test_build_policy_takes_weight_init_from_the_config():
    env = SimpleNamespace(single_observation_space=Box.from_bounds(-1, 1, (3,)), single_action_space=Discrete(2))
    for value in ("torch", "glorot"):
        config = TrainConfig.for_env("CartPole", weight_init=value)
        assert build_policy(config, env, torch.device("cpu")).spec["weight_init"] == value


def test_cli_flag_sets_weight_init():
    from eggroll_rl.cli import _train_config

    assert _train_config(["CartPole"]).weight_init == "torch"
    assert _train_config(["CartPole", "--weight-init", "glorot"]).weight_init == "glorot"


def test_bad_weight_init_names_argument_value_and_options():
    message = r"weight_init='xavier' is invalid: expected one of \['torch', 'glorot'\]"
    with pytest.raises(ValueError, match=message):
        TrainConfig.for_env("CartPole", weight_init="xavier")
    with pytest.raises(ValueError, match=message):
        MLPPolicy(3, 2, discrete=False, weight_init="xavier")
