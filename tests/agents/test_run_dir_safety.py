"""Run directories under bad input (issue #10): poisoned or damaged checkpoints, runs stopped by signals, two runs
into one directory, edited configs, file permissions, and the README's snippet run twice."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from eggroll_rl.agents.checkpoint import CheckpointError, UnsafeCheckpointError, load_checkpoint_file
from eggroll_rl.agents.config import TrainConfig
from eggroll_rl.agents.policy import load_policy
from eggroll_rl.agents.run_dir import RunLock, RunLockedError, read_metrics
from eggroll_rl.agents.trainer import TrainingInterrupted, train
from eggroll_rl.cli import main

ROOT = Path(__file__).resolve().parents[2]
TIMING = ("wall_time_s", "steps_per_s", "eval_time_s")
EVAL = ("eval_return", "eval_return_std", "eval_length_mean")
# The same tiny CartPole run as flags (for the CLI) and as a config (for train()).
TINY_FLAGS = [
    "--device", "cpu", "--population", "8", "--hidden-sizes", "8", "--eval-every", "1000", "--eval-episodes", "2",
    "--max-episode-steps", "30", "--no-tensorboard", "--cpu-threads", "1", "--quiet",
]  # fmt: skip


def tiny(**overrides) -> TrainConfig:
    values = dict(
        device="cpu",
        population=8,
        hidden_sizes=(8,),
        generations=3,
        eval_every=1000,
        eval_episodes=2,
        max_episode_steps=30,
        checkpoint_every=1,
        tensorboard=False,
        cpu_threads=1,
    )
    values.update(overrides)
    return TrainConfig.for_env("CartPole", **values)


def train_curve(records: list[dict]) -> list[dict]:
    """Records without timing and evaluation (an interrupted budget evaluates at other generations)."""
    return [{k: v for k, v in r.items() if k not in TIMING + EVAL} for r in records]


def start_cli(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-m", "eggroll_rl.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_lines(proc: subprocess.Popen, run: Path, lines: int, timeout: float = 60.0) -> None:
    """Wait until ``run``'s metrics.jsonl has ``lines`` lines (the subprocess is then inside its training loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the training subprocess ended early: {proc.communicate()}")
        if (run / "metrics.jsonl").is_file() and len(read_metrics(run)) >= lines:
            return
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no {lines} metrics lines in {timeout} s")


@pytest.fixture(scope="module")
def reference():
    """An uninterrupted 4-generation run without a run directory: the curve that resumed runs must give."""
    return train(tiny(generations=4, eval_every=1))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 3-generation run (copied by tests that damage it)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train(tiny(out_dir=str(run)))
    return run


def copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# ------------------------------------------------------------------------------------------- 1. no code from a file
class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # what a crafted file does: unpickling it calls exec
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_poisoned_checkpoint_is_refused_and_never_runs(tmp_path, finished_run, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    marker = tmp_path / "marker"
    for name in ("best.pt", "last.pt", "last.prev.pt"):
        torch.save({"format": "eggroll_rl.policy/1", "spec": _Payload(marker)}, run / "checkpoints" / name)
    legacy = tmp_path / "legacy.pt"  # a bare pickle (torch's pre-zip format) goes through the same unpickler
    legacy.write_bytes(__import__("pickle").dumps({"x": _Payload(marker)}, protocol=2))

    for path in (run / "checkpoints" / "best.pt", legacy):
        with pytest.raises(UnsafeCheckpointError, match=r"was not loaded: it holds pickled Python objects.*exec"):
            load_checkpoint_file(path)
    with pytest.raises(UnsafeCheckpointError):
        load_policy(run / "checkpoints" / "best.pt")
    assert main(["eval", str(run), "--device", "cpu", "--episodes", "1"]) == 2
    assert "was not loaded" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="was not loaded"):
        train(tiny(), resume=run)
    assert not marker.exists()


def test_package_has_no_unsafe_loader():
    source = "\n".join(p.read_text() for p in (ROOT / "eggroll_rl").rglob("*.py"))
    assert "weights_only=False" not in source
    assert not re.search(r"\bpickle\.loads?\(|yaml\.load\(|yaml\.unsafe_load|\bUnpickler\(", source)


# ------------------------------------------------------------------------------------ 2. stopped runs can continue
def test_run_stopped_in_its_first_generation_resumes(tmp_path, reference):
    run = tmp_path / "run"

    def stop(record):
        raise KeyboardInterrupt  # after generation 0, long before the first scheduled checkpoint

    with pytest.raises(KeyboardInterrupt):
        train(tiny(generations=4, checkpoint_every=100, out_dir=str(run)), progress_fn=stop)
    assert load_checkpoint_file(run / "checkpoints" / "last.pt")["generation"] == 0
    resumed = train(tiny(generations=4, checkpoint_every=100), resume=run)
    assert train_curve(resumed.metrics) == train_curve(reference.metrics)
    assert train_curve(read_metrics(run)) == train_curve(reference.metrics)


def test_directory_of_a_start_stopped_during_setup_can_be_started_again(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pt").write_bytes(b"stale")  # no config.yaml: the run never started
    result = train(tiny(generations=1, out_dir=str(run)))
    assert result.metrics and load_policy(run / "checkpoints" / "best.pt") is not None


@pytest.fixture
def default_sigint():
    """Python's own SIGINT handler for the test: the trainer takes SIGINT over only from it (a caller's handler is
    left alone), and a test process may start without it (a background job of a non-interactive shell ignores
    SIGINT; a library imported by an earlier test may have installed its own)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_sigint_saves_a_checkpoint_of_the_last_generation(tmp_path, reference, default_sigint):
    run = tmp_path / "run"

    def ctrl_c(record):
        if record["generation"] == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted) as info:
        train(tiny(generations=4, checkpoint_every=100, out_dir=str(run)), progress_fn=ctrl_c)
    assert (info.value.signum, info.value.run_dir, info.value.generation) == (signal.SIGINT, run, 2)
    assert load_checkpoint_file(run / "checkpoints" / "last.pt")["generation"] == 2
    assert [r["generation"] for r in read_metrics(run)] == [0, 1] and (run / "learning_curve.png").is_file()
    assert (run / ".lock").read_text() == ""  # released
    resumed = train(tiny(generations=4, checkpoint_every=100), resume=run)
    assert train_curve(resumed.metrics) == train_curve(reference.metrics)


def test_signal_during_an_update_waits_for_its_end(tmp_path, monkeypatch, reference, default_sigint):
    import eggroll_rl.agents.trainer as trainer

    def evaluate_then_ctrl_c(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of generation 0's update
        return real_evaluate(*args, **kwargs)

    real_evaluate = trainer.evaluate
    monkeypatch.setattr(trainer, "evaluate", evaluate_then_ctrl_c)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(tiny(generations=4, eval_every=1, checkpoint_every=100, out_dir=str(run)))
    monkeypatch.undo()
    saved = load_checkpoint_file(run / "checkpoints" / "last.pt")
    assert saved["generation"] == 1 and "eval_return" in saved["history"][0]  # generation 0 completed, evaluated
    assert [r["generation"] for r in read_metrics(run)] == [0]
    resumed = train(tiny(generations=4, eval_every=1, checkpoint_every=100), resume=run)
    assert train_curve(resumed.metrics) == train_curve(reference.metrics)


def test_sigterm_saves_checkpoint_prints_resume_command_and_locks_out_others(tmp_path, capsys):
    run = tmp_path / "run"
    proc = start_cli("train", "CartPole", *TINY_FLAGS, "--generations", "100000", "--checkpoint-every", "1000",
                     "--out", str(run))  # fmt: skip
    try:
        wait_for_lines(proc, run, 3)
        stored = TrainConfig.from_dict(yaml.safe_load((run / "config.yaml").read_text()))
        with pytest.raises(RunLockedError, match=rf"{re.escape(str(run))}.*in use.*pid {proc.pid}"):
            train(stored, resume=run)
        with pytest.raises(ValueError, match="already holds a run"):
            train(tiny(out_dir=str(run)))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    saved = load_checkpoint_file(run / "checkpoints" / "last.pt")
    lines = read_metrics(run)
    assert saved["generation"] == len(lines) >= 3  # every logged generation is in the checkpoint
    assert (run / "learning_curve.png").is_file()
    assert f"after {saved['generation']} generations" in err
    assert f"eggroll-rl train --resume {run}" in err

    target = str(saved["generation"] + 2)
    assert main(["train", "--resume", str(run), "--generations", target, "--quiet"]) == 0
    assert main(["train", "CartPole", *TINY_FLAGS, "--generations", target, "--out", str(tmp_path / "ref")]) == 0
    capsys.readouterr()
    assert train_curve(read_metrics(run)) == train_curve(read_metrics(tmp_path / "ref"))


# ----------------------------------------------------------------------------------- 3. one run per directory
def test_lock_is_exclusive_and_names_its_holder(tmp_path):
    first = RunLock(tmp_path)
    first.acquire()
    with pytest.raises(RunLockedError, match=rf"{re.escape(str(tmp_path))}.*pid {os.getpid()}"):
        RunLock(tmp_path).acquire()
    first.release()
    second = RunLock(tmp_path)
    second.acquire()
    second.release()


HOLD_LOCK = """
import sys, time
from eggroll_rl.agents.run_dir import RunLock
RunLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def test_lock_of_a_killed_run_does_not_block_resume(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path / "run")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            train(tiny(generations=4), resume=run)
    finally:
        holder.kill()  # SIGKILL: nothing runs in the holder, its pid stays in the lock file
        holder.communicate(timeout=60)
    assert f'"pid": {holder.pid}' in (run / ".lock").read_text()
    result = train(tiny(generations=4), resume=run)
    assert [r["generation"] for r in result.metrics] == [0, 1, 2, 3]
    assert (run / ".lock").read_text() == ""


# --------------------------------------------------------------------------- 4. resume checks config and bytes
def test_resume_refuses_config_edited_after_the_checkpoint(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path / "run")
    stored = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**stored, "seed": 5, "sigma": 0.3}, sort_keys=False))
    edited = TrainConfig.from_dict(yaml.safe_load((run / "config.yaml").read_text()))
    with pytest.raises(ValueError, match=r"seed \(config.yaml: 5, checkpoint: 0\).*sigma \(config.yaml: 0.3"):
        train(edited, resume=run)
    # budget fields may differ: the run is extended
    (run / "config.yaml").write_text(yaml.safe_dump({**stored, "generations": 4}, sort_keys=False))
    result = train(TrainConfig.from_dict(yaml.safe_load((run / "config.yaml").read_text())), resume=run)
    assert len(result.metrics) == 4


def _flip_tensor_byte(path: Path, tensor: torch.Tensor) -> None:
    data = bytearray(path.read_bytes())
    raw = tensor.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
    at = data.find(raw)
    assert at >= 0
    data[at + len(raw) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def test_flipped_bytes_fall_back_to_previous_checkpoint(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path / "run")
    last = run / "checkpoints" / "last.pt"
    _flip_tensor_byte(last, load_checkpoint_file(last)["strategy"]["params"]["trunk.0.weight"])
    assert "sha256" not in load_checkpoint_file(run / "checkpoints" / "last.prev.pt")  # checked, then dropped
    with pytest.raises(CheckpointError, match="do not match its sha256"):
        load_checkpoint_file(last)
    with pytest.warns(RuntimeWarning, match="Using the previous checkpoint"):
        resumed = train(tiny(), resume=run)  # from last.prev.pt: generation 2 is run again, with the same result
    assert train_curve(resumed.metrics) == train_curve(read_metrics(finished_run))

    run = copy_run(finished_run, tmp_path / "both")
    for name in ("last.pt", "last.prev.pt"):
        path = run / "checkpoints" / name
        _flip_tensor_byte(path, load_checkpoint_file(path)["policy"]["state_dict"]["obs_norm.mean"])
    with pytest.raises(CheckpointError, match="sha256.*the previous checkpoint cannot be used either"):
        train(tiny(), resume=run)


# ------------------------------------------------------------------------------------- 5. --resume without ENV
def test_cli_resume_without_env_name(tmp_path, finished_run, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    assert main(["train", "--resume", str(run), "--generations", "4", "--quiet"]) == 0
    assert [r["generation"] for r in read_metrics(run)] == [0, 1, 2, 3]
    assert main(["train", "Pendulum", "--resume", str(run), "--quiet"]) == 2
    assert "trained on env='CartPole'" in capsys.readouterr().err
    assert main(["train", "--quiet"]) == 2
    assert "ENV is missing" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- 6. the umask is followed
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_run_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        train(tiny(generations=1, eval_every=1, out_dir=str(tmp_path / "run")))
    finally:
        os.umask(old)
    run = tmp_path / "run"
    names = ["config.yaml", "metrics.jsonl", "metrics.csv", "learning_curve.png"]
    names += ["checkpoints/last.pt", "checkpoints/best.pt"]
    assert {n: oct(stat.S_IMODE((run / n).stat().st_mode)) for n in names} == {n: oct(mode) for n in names}


# -------------------------------------------------------------------------------- 7. the README snippet, twice
def test_readme_snippet_runs_twice(tmp_path):
    readme = (ROOT / "README.md").read_text()
    assert 'train(TrainConfig.for_env("CartPole", out_dir="runs/cartpole"), resume=True)' in readme
    config = tiny(out_dir=str(tmp_path / "cartpole"))
    first = train(config, resume=True)
    again = train(config, resume=True)  # finished: returns the run as it is
    assert train_curve(again.metrics) == train_curve(first.metrics)
    for name, value in first.policy.state_dict().items():
        assert torch.equal(value, again.policy.state_dict()[name]), name
    longer = train(config.replace(generations=4), resume=True)  # a larger budget continues it
    assert [r["generation"] for r in longer.metrics] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="sigma"):  # a genuine conflict is still an error
        train(config.replace(sigma=0.5), resume=True)
    with pytest.raises(ValueError, match="resume=True continues the run in config.out_dir"):
        train(tiny(), resume=True)
    with pytest.raises(TypeError, match="resume=1 is invalid"):
        train(config, resume=1)
