"""``train`` under torchrun on CPU (gloo, 2 ranks): the same run as one process, resumable on another number of
ranks, and every rank ends on a fault or a config mismatch.

Each test launches ``torchrun --standalone`` (a free port per launch) in a subprocess that imports this checkout.
CartPole runs on the torch-native env, whose slice of envs on a rank resets as the same rows of the
single-process batch (``set_reset_window``); the fitnesses are all-gathered exactly and the observation sums
are float64, so the metrics are expected to be equal, not only close (see ``_same_metrics``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eggroll_rl.agents import TrainConfig
from eggroll_rl.agents.config import load_config_file
from eggroll_rl.agents.trainer import _BRAX_FLOOR_ENVS, _Ranks, _small_slice_note, train

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("distributed_worker.py")
TIMING = ("wall_time_s", "steps_per_s", "eval_time_s")
SMALL = dict(device="cpu", population=16, hidden_sizes=(8,), eval_every=2, eval_episodes=4, tensorboard=False)


def _torchrun(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("EGGROLL_RL_DEBUG", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def _same_metrics(a: list[dict], b: list[dict]) -> None:
    # Exact: a rank's members see the same resets and noise as in one process, the fitness gather copies floats,
    # and the float64 observation sums, added in another order, differ by ~1e-16 relative (the statistics by
    # ~1e-15, checked with rtol=1e-12 below), far below the float32 the policy normalizes with. Should such a
    # difference ever flip a float32 rounding (and then an argmax action), compare returns with rel=1e-6 instead.
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra == rb, f"generation {ra['generation']}: {ra} != {rb}"


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory) -> Path:
    """A 3-generation CartPole run on 2 gloo ranks through the CLI."""
    out = tmp_path_factory.mktemp("dist") / "run2"
    cli = ["-m", "eggroll_rl.cli", "train", "CartPole", "--out", str(out), "--quiet", "--no-tensorboard"]
    flags = ["--device", "cpu", "--population", "16", "--hidden-sizes", "8", "--generations", "3"]
    proc = _torchrun(*cli, *flags, "--eval-every", "2", "--eval-episodes", "4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done:") == 1  # rank 0 alone prints the summary
    return out


def test_two_ranks_give_the_single_process_metrics(two_rank_run, tmp_path):
    single = train(TrainConfig.for_env("CartPole", generations=3, out_dir=str(tmp_path / "run1"), **SMALL))
    _same_metrics(_metrics(two_rank_run), _metrics(tmp_path / "run1"))
    ckpt = torch.load(two_rank_run / "checkpoints" / "last.pt", weights_only=True)
    for name, value in single.policy.state_dict().items():
        if value.dtype == torch.float64:  # observation statistics: float64 sums added in another order
            torch.testing.assert_close(ckpt["policy"]["state_dict"][name], value, rtol=1e-12, atol=0)
        else:
            assert torch.equal(ckpt["policy"]["state_dict"][name], value), name


def test_a_two_rank_run_resumes_on_one_rank(two_rank_run, tmp_path):
    run = tmp_path / "run2"
    shutil.copytree(two_rank_run, run)
    resumed = train(TrainConfig.for_env("CartPole", generations=5, **SMALL), resume=run)
    straight = train(TrainConfig.for_env("CartPole", generations=5, out_dir=str(tmp_path / "run1"), **SMALL))
    assert [r["generation"] for r in resumed.metrics] == [0, 1, 2, 3, 4]
    a, b = _metrics(run), _metrics(tmp_path / "run1")
    # the 3-generation run evaluated at its end, generation 2
    for key in ("eval_return", "eval_return_std", "eval_length_mean"):
        a[2].pop(key)
    _same_metrics(a, b)
    for p, q in zip(resumed.policy.parameters(), straight.policy.parameters()):
        assert torch.equal(p, q)


def test_a_rank_that_raises_ends_every_rank(tmp_path):
    start = time.monotonic()
    proc = _torchrun(str(WORKER), "raise", str(tmp_path), timeout=90)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert elapsed < 45, f"torchrun took {elapsed:.0f} s to end after the fault"  # startup included; no timeout wait
    assert (tmp_path / "rank1.txt").read_text() == "InjectedFault: injected fault on rank 1 at generation 2"
    # rank 0 ends in its next collective, which names the cause
    assert "RuntimeError: rank 0: another rank ended during generation 3" in (tmp_path / "rank0.txt").read_text()


def test_ranks_with_different_configs_refuse_to_start(tmp_path):
    proc = _torchrun(str(WORKER), "mismatch", str(tmp_path), timeout=90)
    assert proc.returncode != 0
    for rank in (0, 1):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert message.startswith("ValueError: the ranks were started with different configs: ranks [1] differ")
        assert "['seed']" in message


@pytest.mark.parametrize(
    ("population", "antithetic", "ok"),
    [(16, True, True), (12, True, True), (10, True, False), (6, False, True), (7, False, False)],
)
def test_population_must_split_into_equal_slices_of_pairs(population, antithetic, ok):
    config = TrainConfig.for_env("CartPole", population=population, antithetic=antithetic, device="cpu")
    ranks = _Ranks(rank=1, world_size=2, device=torch.device("cpu"))
    if ok:
        ranks.check_layout(config)
        assert ranks.members(population) == (population // 2, population // 2)
    else:
        with pytest.raises(ValueError, match=f"population={population} is invalid for 2 ranks"):
            ranks.check_layout(config)


def test_a_window_of_envs_resets_as_those_rows_of_the_whole_batch():
    from eggroll_rl.envs import CartPole

    whole, window = CartPole(num_envs=12, device="cpu", seed=3), CartPole(num_envs=4, device="cpu", seed=3)
    window.set_reset_window(8, 12)
    for seed in (5, 77):
        assert torch.equal(window.reset(seed=seed), whole.reset(seed=seed)[8:])
    with pytest.raises(ValueError, match="offset"):
        window.set_reset_window(9, 12)


@pytest.mark.slow
def test_a_window_of_brax_envs_resets_as_those_rows_of_the_whole_batch():
    pytest.importorskip("brax")
    from eggroll_rl.envs import make_env

    whole = make_env("HalfCheetah", backend="brax", num_envs=8, device="cpu", seed=0)
    window = make_env("HalfCheetah", backend="brax", num_envs=4, device="cpu", seed=0)
    window.set_reset_window(4, 8)
    for seed in (3, 17):
        assert torch.equal(window.reset(seed=seed), whole.reset(seed=seed)[4:])


@pytest.mark.slow
def test_two_ranks_with_the_jax_rollout_give_the_single_process_metrics(tmp_path):
    """``--rollout jax`` under torchrun: each rank runs its window of Brax envs (its members' global noise) in its own
    jitted loop, and the gathered generation equals the single-process one (inverted_pendulum, 30-step episodes)."""
    pytest.importorskip("brax")
    cli = ["-m", "eggroll_rl.cli", "train", "brax:inverted_pendulum", "--out", str(tmp_path / "run2"), "--quiet"]
    flags = ["--device", "cpu", "--backend", "brax", "--rollout", "jax", "--population", "8", "--hidden-sizes", "8",
             "--generations", "2", "--eval-every", "0", "--max-episode-steps", "30", "--no-tensorboard"]  # fmt: skip
    proc = _torchrun(*cli, *flags, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    values = load_config_file(tmp_path / "run2" / "config.yaml")
    config = TrainConfig.from_dict(dict(values, out_dir=str(tmp_path / "run1")))
    assert config.rollout == "jax" and config.backend == "brax"
    train(config)
    two, one = _metrics(tmp_path / "run2"), _metrics(tmp_path / "run1")
    assert [r["generation"] for r in one] == [0, 1] and one[0]["env_steps"] > 0
    _same_metrics(two, one)


@pytest.mark.parametrize(
    ("backend", "device", "world_size", "num_envs", "speedup"),
    [
        ("brax", "cuda", 2, 2048, "1.0"),  # HalfCheetah's defaults on 2 GPUs: 1024 envs each, on the floor
        ("brax", "cuda", 2, 4096, "1.4"),  # 2048 each: faster than one GPU with all 4096, but far from 2x
        ("brax", "cuda", 4, 8192, "2.7"),
        ("brax", "cuda", 2, 2 * _BRAX_FLOOR_ENVS, None),  # enough envs per GPU
        ("brax", "cuda", 1, 2048, None),  # one GPU: nothing to say
        ("brax", "cpu", 2, 2048, None),  # Brax on the CPU has no launch floor of this kind
        ("gym", "cuda", 2, 2048, None),  # CPU-stepped envs
    ],
)
def test_a_multi_gpu_brax_run_on_the_step_floor_is_told_so(backend, device, world_size, num_envs, speedup):
    note = _small_slice_note(backend, torch.device(device), world_size, num_envs)
    assert (note is None) == (speedup is None)
    if speedup is not None:
        assert f"{world_size} ranks x {num_envs // world_size} envs" in note
        # the bound on the generation's speed-up over one GPU with every env (num_envs / floor, at least 1)
        assert f"at most about {speedup}x as fast as with all {num_envs} envs on one GPU" in note
        assert f"larger population: {_BRAX_FLOOR_ENVS} or more envs per GPU" in note and "docs/distributed.md" in note
