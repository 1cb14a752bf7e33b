"""``members_per_start``: groups of consecutive members play from the same initial states (common random numbers), and
a linear policy (``hidden_sizes=[]``)."""

from __future__ import annotations

import pytest
import torch

import eggroll_rl.agents.trainer as trainer
from eggroll_rl.agents.config import TrainConfig
from eggroll_rl.agents.trainer import train
from eggroll_rl.envs import make_env


def test_start_rows_pick_those_rows_of_the_whole_batch():
    whole = make_env("Pendulum", backend="torch", num_envs=6, device="cpu", seed=0)
    shared = make_env("Pendulum", backend="torch", num_envs=4, device="cpu", seed=0)
    shared.set_start_rows(torch.tensor([0, 0, 5, 5]), total=6)
    for seed in (3, 11):
        assert torch.equal(shared.reset(seed=seed), whole.reset(seed=seed)[[0, 0, 5, 5]])
    for rows, total in (([0, 6, 1, 1], 6), ([0, 1, 2], 6), ([0.0, 1.0, 2.0, 3.0], 6)):
        with pytest.raises(ValueError, match="rows"):
            shared.set_start_rows(torch.tensor(rows), total)


def test_gym_start_rows_seed_each_sub_env_as_its_row():
    pytest.importorskip("gymnasium")
    whole = make_env("Pendulum", backend="gym", num_envs=4, device="cpu", seed=0)
    shared = make_env("Pendulum", backend="gym", num_envs=4, device="cpu", seed=0)
    shared.set_start_rows([1, 1, 3, 3], total=4)
    obs, ref = shared.reset(seed=7), whole.reset(seed=7)
    assert torch.equal(obs, ref[[1, 1, 3, 3]])
    assert not torch.equal(ref[0], ref[1])


@pytest.mark.parametrize("members_per_start, expected", [(2, [0, 1, 0, 1, 4, 5, 4, 5]), (4, [0, 1] * 4)])
def test_trainer_gives_each_group_its_first_members_rows(members_per_start, expected):
    config = TrainConfig(population=4, episodes_per_member=2, members_per_start=members_per_start)
    seen = {}

    class _Env:
        def set_start_rows(self, rows, total):
            seen["rows"], seen["total"] = rows.tolist(), total

    trainer._share_starts(_Env(), 0, 4, config)
    assert seen == {"rows": expected, "total": 8}
    trainer._share_starts(_Env(), 2, 2, config)  # the second rank's half under torchrun: global rows
    assert seen == {"rows": expected[4:], "total": 8}


def test_members_per_start_must_divide_the_population_and_have_a_backend():
    with pytest.raises(ValueError, match="members_per_start=3 is invalid"):
        TrainConfig(population=8, members_per_start=3)

    class _NoShare:
        backend = "envpool"

    with pytest.raises(ValueError, match="members_per_start=2 is invalid with backend 'envpool'"):
        trainer._share_starts(_NoShare(), 0, 4, TrainConfig(population=4, members_per_start=2))


def test_antithetic_pairs_sharing_starts_see_the_same_first_observation(monkeypatch):
    firsts = []
    real = trainer.rollout

    def spy(env, act, *args, **kwargs):
        def act_spy(obs, ids):
            if len(firsts) < 1:
                firsts.append(obs.clone())
            return act(obs, ids)

        return real(env, act_spy, *args, **kwargs)

    monkeypatch.setattr(trainer, "rollout", spy)
    config = TrainConfig(
        env="Pendulum", backend="torch", device="cpu", population=8, members_per_start=2, generations=1,
        eval_every=0, eval_episodes=2, hidden_sizes=[], rank=1, cpu_threads=1,
    )  # fmt: skip
    result = train(config)
    obs = firsts[0]
    assert torch.equal(obs[0::2], obs[1::2]) and not torch.equal(obs[0], obs[2])
    assert [name for name, _ in result.policy.named_parameters()] == ["head.weight", "head.bias"]  # linear


@pytest.mark.slow
def test_brax_start_rows_pick_those_rows_of_the_whole_batch():
    pytest.importorskip("brax")
    whole = make_env("Reacher", backend="brax", num_envs=6, device="cpu", seed=0)
    shared = make_env("Reacher", backend="brax", num_envs=4, device="cpu", seed=0)
    shared.set_start_rows([2, 2, 5, 5], total=6)
    for seed in (3, 17):
        assert torch.equal(shared.reset(seed=seed), whole.reset(seed=seed)[[2, 2, 5, 5]])
    # The rows live on the env's own JAX device, put there explicitly: an uncommitted array (jnp.asarray) lands on
    # JAX's default device, which on rank 1 of a 2-GPU torchrun is the other GPU (and made it current for torch).
    rows = shared._start_rows[0]
    assert rows.committed and rows.devices() == {shared._jax_device}
    assert rows.tolist() == [2, 2, 5, 5]
