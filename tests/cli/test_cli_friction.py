"""What a newcomer meets first (issue #10): the README's commands, video formats, MuJoCo's noise, progress outside a
terminal and at 80 columns, and one-line errors instead of tracebacks for bad input."""

from __future__ import annotations

import importlib.util
import io
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from eggroll_rl.agents.config import TrainConfig
from eggroll_rl.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--device", "cpu", "--population", "8", "--hidden-sizes", "8", "--eval-episodes", "2"]
TINY += ["--max-episode-steps", "20"]


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "eggroll_rl.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def _err(capsys, argv: list[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def _extras() -> dict[str, list[str]]:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


# ------------------------------------------------------------------------------------------- README and packaging
def test_readme_test_section_installs_what_its_command_needs():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Test\n", 1)[1].split("\n## ", 1)[0]
    command = 'python -m pytest -m "not gpu" -q -n 2'
    assert command in section
    assert command in (ROOT / ".ci" / "run").read_text()  # CI runs the README's command
    installs = re.findall(r'pip install -e "\.\[([a-z,]+)\]"', section)
    assert installs, "the Test section says what to install"
    extras = _extras()
    brings = {req for name in installs[0].split(",") for req in extras[name]}
    assert any(req.startswith("pytest") for req in brings)
    ci_line = re.search(r'pip install -q -e "\.\[([a-z,]+)\]"', (ROOT / ".ci" / "run").read_text())
    assert set(installs[0].split(",")) <= set(ci_line.group(1).split(","))  # CI installs at least as much


def test_readme_pendulum_time_is_the_measured_one():
    readme = (ROOT / "README.md").read_text()
    assert "about a minute" not in readme
    assert "train_pendulum_cpu.md" in readme
    measured = (ROOT / "benchmarks" / "results" / "train_pendulum_cpu.md").read_text()
    assert "156.8 s" in measured and "at 92.9 s" in measured  # the figures the README quotes (157 s, 93 s)


def test_mujoco_log_is_ignored_by_git():
    assert "MUJOCO_LOG.TXT" in (ROOT / ".gitignore").read_text().split()


# ------------------------------------------------------------------------------------------------------------ video
def test_gym_extra_brings_the_classic_control_renderer():
    assert any("classic-control" in req or req.startswith("pygame") for req in _extras()["gym"])


def _cartpole_policy():
    from eggroll_rl.agents.policy import make_policy
    from eggroll_rl.envs import make_env

    env = make_env("CartPole", num_envs=1, device="cpu")
    return make_policy(env.single_observation_space, env.single_action_space, hidden_sizes=(4,))


def test_html_video_of_a_non_brax_run_says_what_to_write(tmp_path):
    from eggroll_rl.agents.video import record_video

    config = TrainConfig.for_env("CartPole", device="cpu")
    with pytest.raises(ValueError, match="Brax") as info:
        record_video(_cartpole_policy(), config, tmp_path / "cartpole.html", backend="torch")
    assert str(tmp_path / "cartpole.mp4") in str(info.value)
    assert not list(tmp_path.iterdir())


def test_classic_control_video_without_pygame_names_the_extra(tmp_path, monkeypatch):
    pytest.importorskip("gymnasium")
    pytest.importorskip("imageio")
    from eggroll_rl.agents.video import record_video

    monkeypatch.setitem(sys.modules, "pygame", None)  # import pygame -> ImportError, as on a machine without it
    config = TrainConfig.for_env("CartPole", device="cpu")
    with pytest.raises(ImportError, match=r"pip install 'eggroll-rl\[gym\]'"):
        record_video(_cartpole_policy(), config, tmp_path / "cartpole.mp4", backend="torch")


# ------------------------------------------------------------------------------------------------------------- MuJoCo
def test_mujoco_envs_leave_no_log_file_and_warn_once(tmp_path, monkeypatch, capfd):
    pytest.importorskip("mujoco")
    pytest.importorskip("gymnasium")
    from eggroll_rl.envs import make_env

    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            make_env("HalfCheetah-v5", backend="gym", num_envs=3, device="cpu").close()
    out, err = capfd.readouterr()
    assert list(tmp_path.iterdir()) == []  # no MUJOCO_LOG.TXT
    printed = (out + err).count("settotalmass")
    warned = sum("settotalmass" in str(w.message) for w in caught)
    assert printed == 0 and warned <= 1


# ----------------------------------------------------------------------------------------------------------- progress
def test_progress_outside_a_terminal_is_plain_lines(tmp_path):
    r = _run_cli("train", "CartPole", *TINY, "--generations", "3", "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    progress = [line for line in lines if re.match(r"gen \d+ \(\d+%\)  return ", line)]
    assert [line.split()[1] for line in progress] == ["0", "1", "2"]
    assert lines.index(progress[-1]) < next(i for i, line in enumerate(lines) if line.startswith("done:"))
    assert "\x1b" not in r.stdout  # no terminal control codes in a log


def test_progress_bar_fits_80_columns():
    from rich.console import Console

    from eggroll_rl.cli import _rich_progress, _si

    bar = _rich_progress(Console(file=io.StringIO(), width=80, force_terminal=True))
    task = bar.add_task("train", total=1000, gen=12345, ret="-12345.6", ev="-12345.6", sps=_si(1_234_567))
    bar.update(task, completed=500)
    screen = Console(file=io.StringIO(), width=80, record=True)
    screen.print(bar.make_tasks_table(bar.tasks))
    (line,) = screen.export_text().splitlines()
    assert len(line) <= 80 and "…" not in line
    assert "12345" in line and "50%" in line and "eval -12345.6" in line and "1.23M steps/s" in line
    assert re.search(r"ETA -:--:--$", line)


# ------------------------------------------------------------------------------------------------ one-line errors
def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eggroll-rl train: error: "), err
    for needle in needles:
        assert needle in lines[0]


def test_yaml_syntax_error_is_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("population: [8, 16\nsigma: 0.1\n")
    _one_line_error(*_err(capsys, ["train", "CartPole", "--config", str(cfg)]), str(cfg), "not valid YAML", "line 2")


def test_yaml_python_tag_is_refused_not_run(tmp_path, capsys):
    marker = tmp_path / "ran"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"population: !!python/object/apply:os.system ['touch {marker}']\n")
    code, err = _err(capsys, ["train", "CartPole", "--config", str(cfg)])
    _one_line_error(code, err, "!!python/object/apply:os.system", "not allowed")
    assert not marker.exists()


def test_json_syntax_error_names_the_file(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text('{"population": 8,}')
    _one_line_error(*_err(capsys, ["train", "CartPole", "--config", str(cfg)]), str(cfg), "not valid JSON")


@pytest.mark.skipif(importlib.util.find_spec("Box2D") is not None, reason="Box2D is installed here")
def test_gym_env_needing_box2d_says_what_to_install(tmp_path, capsys):
    pytest.importorskip("gymnasium")
    argv = ["train", "gym:LunarLander-v3", *TINY, "--generations", "1", "--out", str(tmp_path / "run")]
    _one_line_error(*_err(capsys, argv), 'pip install "gymnasium[box2d]"')


def test_unknown_env_suggests_prefixed_ids_that_work():
    from eggroll_rl.envs import make_env

    with pytest.raises(ValueError, match="unknown env name") as info:
        make_env("NoSuchEnv", device="cpu")
    examples = re.findall(r"'((?:gym|envpool|brax|torch):[^']+)'", str(info.value))
    assert examples
    for example in examples:
        if example.startswith("brax:"):
            continue  # built the same way; skipped for its JAX start-up time
        env = make_env(example, num_envs=2, device="cpu")
        assert env.reset(seed=0).shape[0] == 2
        env.close()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_make_env_cuda_without_a_gpu_is_a_value_error():
    from eggroll_rl.envs import make_env

    with pytest.raises(ValueError, match=r"device='cuda' is not available.*expected 'cpu'"):
        make_env("CartPole", device="cuda")


def test_meta_fitness_is_a_value_error():
    from eggroll_rl import EggrollStrategy

    strategy = EggrollStrategy(sigma=0.1, lr=0.1, rank=1, allow_cpu=True)
    strategy.setup(torch.nn.Linear(3, 2))
    with strategy.perturb(population_size=4, epoch=0):
        pass
    with pytest.raises(ValueError, match="meta device"):
        strategy.step(torch.zeros(4, device="meta"))


def test_config_file_env_must_agree_with_the_command_line(tmp_path, capsys):
    from eggroll_rl.cli import _train_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("env: Pendulum\npopulation: 8\n")
    _one_line_error(*_err(capsys, ["train", "CartPole", "--config", str(cfg)]), "env='Pendulum'", "'CartPole'")
    cfg.write_text("env: cartpole\npopulation: 8\n")  # the same env, spelled otherwise
    config = _train_config(["CartPole", "--config", str(cfg)])
    assert config.env == "CartPole" and config.population == 8


def test_hidden_sizes_as_one_int(tmp_path):
    from eggroll_rl.cli import _train_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("hidden_sizes: 32\n")
    config = _train_config(["CartPole", "--config", str(cfg)])
    assert config.hidden_sizes == (32,)
    assert TrainConfig(hidden_sizes=[16, 8]).hidden_sizes == (16, 8)
    for bad in ("64", [32.5], None, [True]):
        with pytest.raises(ValueError, match=r"hidden_sizes=.* is invalid: expected a layer width"):
            TrainConfig(hidden_sizes=bad)


def test_cpu_threads_above_the_core_count_warns():
    too_many = (os.cpu_count() or 1) + 1
    with pytest.warns(RuntimeWarning, match=f"cpu_threads={too_many} is more than"):
        TrainConfig(cpu_threads=too_many)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrainConfig(cpu_threads=os.cpu_count() or 1)


def test_error_with_raw_device_bytes_is_printed_whole(monkeypatch, capsys):
    """torch's CUDA messages print a device index as a raw byte (NUL for device 0): the line must not stop there."""
    import eggroll_rl.cli as cli

    def fail(argv):
        raise RuntimeError("Event device \x00 does not match recording stream's device \x01.")

    monkeypatch.setattr(cli, "_cmd_train", fail)
    assert main(["train", "HalfCheetah"]) == 2
    err = capsys.readouterr().err
    assert err == "eggroll-rl train: error: Event device \\x00 does not match recording stream's device \\x01.\n"
