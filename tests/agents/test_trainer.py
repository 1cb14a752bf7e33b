"""Trainer: learning on CartPole, bit-exact resume, truncated checkpoints, interrupted runs, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

from eggroll_rl.agents.checkpoint import CheckpointError, load_checkpoint_file
from eggroll_rl.agents.config import TrainConfig
from eggroll_rl.agents.policy import load_policy
from eggroll_rl.agents.run_dir import read_metrics
from eggroll_rl.agents.trainer import train

DROP = ("wall_time_s", "steps_per_s", "eval_time_s")


def tiny(**overrides) -> TrainConfig:
    values = dict(
        device="cpu",
        population=8,
        hidden_sizes=(8,),
        generations=6,
        eval_every=2,
        eval_episodes=4,
        max_episode_steps=60,
        checkpoint_every=1,
        tensorboard=False,
        cpu_threads=1,
    )
    values.update(overrides)
    return TrainConfig.for_env("CartPole", **values)


def curve(records, eval_generations=None):
    out = []
    for r in records:
        r = {k: v for k, v in r.items() if k not in DROP}
        if eval_generations is not None and r["generation"] not in eval_generations:
            r.pop("eval_return", None)
            r.pop("eval_return_std", None)
            r.pop("eval_length_mean", None)
        out.append(r)
    return out


def test_cartpole_learns_and_records_metrics(tmp_path):
    cfg = tiny(population=32, hidden_sizes=(16,), generations=8, max_episode_steps=200, out_dir=str(tmp_path / "r"))
    seen = []
    result = train(cfg, progress_fn=seen.append)
    assert [r["generation"] for r in seen] == list(range(8))
    assert 0 < seen[-1]["progress"] <= 1.0
    first, last = result.metrics[0], result.metrics[-1]
    assert last["train_return_mean"] > 2 * first["train_return_mean"]
    assert result.final_eval_return is not None and result.final_eval_return > 100
    # returns are lengths in CartPole (reward 1 per step), capped at max_episode_steps
    assert all(r["train_return_max"] <= 200 for r in result.metrics)
    run = tmp_path / "r"
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "metrics.csv",
        "learning_curve.png",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
    ):
        assert (run / name).is_file(), name
    lines = read_metrics(run)
    assert curve(lines) == curve(result.metrics)
    required = {"generation", "env_steps", "wall_time_s", "train_return_mean", "train_return_max"}
    assert all(required <= set(r) for r in lines)
    assert [r["generation"] for r in lines if "eval_return" in r] == [1, 3, 5, 7]
    # each evaluation's own seconds (the first builds the eval env too), within its generation's
    evaluated = [(i, r) for i, r in enumerate(lines) if "eval_return" in r]
    assert all("eval_time_s" not in r for r in lines if "eval_return" not in r)
    for i, r in evaluated:
        assert 0 < r["eval_time_s"] < r["wall_time_s"] - (lines[i - 1]["wall_time_s"] if i else 0.0)
    csv_lines = (run / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 9 and csv_lines[0].startswith("generation,env_steps,wall_time_s")
    # env steps are the live steps: the sum of the members' episode lengths
    assert lines[0]["env_steps"] == pytest.approx(lines[0]["episode_length_mean"] * 32)
    # the best policy file is self-contained and reproduces the recorded evaluation's ranking
    best = load_policy(run / "checkpoints" / "best.pt")
    assert best.obs_norm is not None and float(best.obs_norm.count) > 0


def test_resume_is_bit_exact(tmp_path):
    full = train(tiny(out_dir=str(tmp_path / "full")))
    train(tiny(generations=3, out_dir=str(tmp_path / "part")))
    resumed = train(tiny(generations=6), resume=tmp_path / "part")
    evals = {1, 3, 5}
    assert curve(read_metrics(tmp_path / "part"), evals) == curve(read_metrics(tmp_path / "full"), evals)
    for name, p in full.policy.state_dict().items():
        assert torch.equal(p, resumed.policy.state_dict()[name]), name


def test_interrupted_run_keeps_metrics_and_resumes(tmp_path):
    run = tmp_path / "r"

    def stop_at_4(record):
        if record["generation"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny(checkpoint_every=2, out_dir=str(run)), progress_fn=stop_at_4)
    lines = read_metrics(run)
    assert [r["generation"] for r in lines] == [0, 1, 2, 3, 4]  # flushed as written
    ckpt = load_checkpoint_file(run / "checkpoints" / "last.pt")
    assert ckpt["generation"] == 4  # generations 0..3 are in the checkpoint
    train(tiny(checkpoint_every=2), resume=run)
    reference = train(tiny(out_dir=str(tmp_path / "ref")))
    assert curve(read_metrics(run)) == curve(reference.metrics)


def test_truncated_checkpoint_falls_back_to_previous(tmp_path):
    run = tmp_path / "r"
    train(tiny(generations=3, out_dir=str(run)))
    last = run / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint_file(last)
    with pytest.warns(RuntimeWarning, match="Using the previous checkpoint"):
        resumed = train(tiny(generations=6), resume=run)
    # the previous checkpoint was written after generation 1, so generations 2.. were run again
    assert [r["generation"] for r in resumed.metrics] == list(range(6))
    reference = train(tiny(out_dir=str(tmp_path / "ref")))
    assert curve(resumed.metrics, {1, 3, 5}) == curve(reference.metrics, {1, 3, 5})


def test_bad_input_fails_before_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot be written"):
        train(tiny(out_dir=str(blocker / "run")))
    with pytest.raises(ValueError, match="unknown env name"):
        train(tiny().replace(env="CartPol", out_dir=str(tmp_path / "never")))
    assert not (tmp_path / "never").exists()
    run = tmp_path / "cp"
    train(tiny(generations=1, out_dir=str(run)))
    with pytest.raises(ValueError, match="trained on env='CartPole'"):
        train(TrainConfig.for_env("Pendulum", device="cpu"), resume=run)
    with pytest.raises(ValueError, match="sigma"):
        train(tiny(sigma=0.5), resume=run)
    with pytest.raises(ValueError, match="already holds a run"):
        train(tiny(out_dir=str(run)))


def test_schedules_reach_the_strategy():
    result = train(
        tiny(
            generations=4,
            lr_schedule="linear",
            lr_end_factor=0.5,
            sigma_schedule="exponential",
            sigma_end_factor=0.25,
            eval_every=0,
        )
    )
    lrs = [r["lr"] for r in result.metrics]
    sigmas = [r["sigma"] for r in result.metrics]
    assert lrs == pytest.approx([0.05 * (1 - 0.5 * g / 4) for g in range(4)])
    assert sigmas == pytest.approx([0.1 * 0.25 ** (g / 4) for g in range(4)])
    assert result.strategy.optimizer.param_groups[0]["lr"] == pytest.approx(lrs[-1])
    assert [r["generation"] for r in result.metrics if "eval_return" in r] == [3]  # at the end only


def test_continuous_env_total_steps_budget():
    cfg = TrainConfig.for_env(
        "Pendulum",
        device="cpu",
        population=4,
        hidden_sizes=(8,),
        total_steps=1000,
        eval_episodes=2,
        max_episode_steps=100,
        tensorboard=False,
    )
    result = train(cfg)
    assert [r["env_steps"] for r in result.metrics] == [400, 800, 1200]
    assert all(math.isfinite(r["train_return_mean"]) and r["train_return_mean"] < 0 for r in result.metrics)


def test_gym_backend(tmp_path):
    pytest.importorskip("gymnasium")
    cfg = tiny(backend="gym", generations=2, out_dir=str(tmp_path / "g"))
    result = train(cfg)
    assert len(result.metrics) == 2
    assert json.loads((tmp_path / "g" / "metrics.jsonl").read_text().splitlines()[-1])["eval_return"] > 0


def test_build_env_gives_brax_its_physics_backend(monkeypatch):
    import eggroll_rl.envs as envs
    from eggroll_rl.agents.builders import build_env

    calls = []

    def fake_make_env(name, backend="auto", **kwargs):
        calls.append((backend, dict(kwargs)))
        return object()

    monkeypatch.setattr(envs, "make_env", fake_make_env)
    cfg = TrainConfig.for_env("HalfCheetah", device="cpu")
    for picked in ("brax", "envpool"):  # what backend="auto" picks (Brax on a GPU, EnvPool on a CPU)
        monkeypatch.setattr(envs, "select_backend", lambda name, backend, device, picked=picked: picked)
        calls.clear()
        build_env(cfg, 4, torch.device("cpu"), seed=0)
        (call,) = calls  # built once
        assert call[0] == "auto" and call[1]["check_finite"] is True  # HalfCheetah keeps the (deferred) env checks
        if picked == "brax":
            assert call[1]["brax_backend"] == "spring"
        else:
            assert "brax_backend" not in call[1]  # EnvPool/gymnasium do not take it


@pytest.mark.parametrize("env", ["CartPole", "Pendulum"])
def test_classic_control_defaults_train_on_one_cpu_thread(env):
    """Their small policies run on one torch thread on the CPU (ENV_DEFAULTS' cpu_threads=1), restored afterwards.

    With torch's default threads a Pendulum generation ran about 10x slower on a loaded 2-core machine; the
    learning curve is the same up to float reduction order (the output layer's update GEMM is split differently).
    """
    cfg = TrainConfig.for_env(
        env, device="cpu", population=4, hidden_sizes=(8,), generations=1, eval_every=0, eval_episodes=2,
        max_episode_steps=20, tensorboard=False,
    )  # fmt: skip
    assert cfg.cpu_threads == 1
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # more than one, as torch's default is on any multi-core machine
    try:
        seen = []
        train(cfg, progress_fn=lambda record: seen.append(torch.get_num_threads()))
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_ranks_global_member_ids_are_checked_once_per_rollout(monkeypatch):
    """Under torchrun a rank plays members first.. with their global ids: the shifted ids must be one tensor per
    rollout, so that batched_forward checks them once (one host sync) and the rollout's CUDA graph can be captured."""
    from eggroll_rl import EggrollStrategy
    from eggroll_rl.agents.trainer import _OffsetIds

    policy = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    strategy = EggrollStrategy(sigma=0.1, lr=0.01, rank=2, antithetic=True, seed=0, allow_cpu=True)
    strategy.setup(policy)
    ids = torch.arange(4).repeat_interleave(2)  # this rank's 4 local members, 2 envs each
    shift = _OffsetIds(4)  # ... members 4..7 of a population of 8
    assert shift(ids) is shift(ids) and torch.equal(shift(ids), ids + 4)
    assert _OffsetIds(0)(ids) is ids
    syncs = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: syncs.append(1) or tolist(t))
    x = torch.randn(8, 3)
    with strategy.perturb(population_size=8, epoch=0) as pop:
        outs = [pop.batched_forward(policy, x, member_ids=shift(ids)) for _ in range(3)]
        assert len(syncs) == 1
        ref = pop.batched_forward(policy, x, member_ids=ids + 4)  # a fresh tensor: checked again
    assert len(syncs) == 2
    for out in outs:
        torch.testing.assert_close(out, ref, rtol=0, atol=0)
    ids.add_(0)  # changed in place: shifted again
    assert shift(ids) is not outs[0] and torch.equal(shift(ids), ids + 4)


def test_evaluations_record_their_mean_episode_length():
    # CartPole pays 1 per step, so an evaluation's mean return is its mean episode length: the reference.
    result = train(tiny(population=16, hidden_sizes=(8,), generations=2, eval_every=1, eval_episodes=4,
                        max_episode_steps=100))  # fmt: skip
    evaluated = [r for r in result.metrics if r.get("eval_return") is not None]
    assert len(evaluated) == 2
    for r in evaluated:
        assert r["eval_length_mean"] == r["eval_return"]
        assert 1 <= r["eval_length_mean"] <= 100


@pytest.mark.parametrize("source", ["torch", "xla", "other"])
def test_out_of_memory_in_a_rollout_is_a_clear_error(monkeypatch, source):
    import importlib

    trainer = importlib.import_module("eggroll_rl.agents.trainer")
    jax_errors = pytest.importorskip("jax.errors")
    errors = {
        "torch": torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.\nmore detail"),
        "xla": jax_errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8.00GiB."),
        "other": jax_errors.JaxRuntimeError("INTERNAL: something else"),
    }

    def failing_rollout(*args, **kwargs):
        raise errors[source]

    monkeypatch.setattr(trainer, "rollout", failing_rollout)
    config = tiny(population=8, episodes_per_member=2)
    if source == "other":  # any other error passes through as it is
        with pytest.raises(jax_errors.JaxRuntimeError, match="INTERNAL: something else"):
            train(config)
        return
    said = {
        "torch": "torch said: CUDA out of memory. Tried to allocate 2.00 GiB.$",
        "xla": "XLA said: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8.00GiB.$",
    }[source]
    expected = (
        r"out of device memory in generation 0's rollout: 16 envs on this process on cpu \(population 8, "
        r"episodes_per_member 2, backend 'torch', rollout 'torch'\); lower --population or --episodes-per-member\. "
    )
    with pytest.raises(RuntimeError, match=expected + said) as info:
        train(config)
    assert info.value.__cause__ is errors[source]
