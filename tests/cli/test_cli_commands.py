"""The eggroll-rl CLI: a subprocess smoke test of every command with a tiny budget, and bad input in process."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eggroll_rl.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--device",
    "cpu",
    "--population",
    "8",
    "--hidden-sizes",
    "8",
    "--generations",
    "3",
    "--eval-every",
    "2",
    "--eval-episodes",
    "3",
    "--max-episode-steps",
    "40",
    "--quiet",
]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "eggroll_rl.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_summary_takes_the_reward_shift_out_of_the_final_return(tmp_path, capsys):
    # CartPole pays 1 a step, so its return is its length: less a shift of 1 a step, nothing is left.
    assert main(["train", "CartPole", *TINY, "--reward-shift", "1", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    last = [x for x in lines if x.get("eval_return") is not None][-1]
    assert last["eval_return"] == pytest.approx(last["eval_length_mean"])
    assert f"less reward_shift=1 a step (the alive bonus): 0.00 over {last['eval_length_mean']:.0f}-step" in out
    assert main(["train", "CartPole", *TINY, "--out", str(tmp_path / "plain")]) == 0
    assert "alive bonus" not in capsys.readouterr().out  # no shift: no such figure


def test_smoke_train_resume_eval_envs(tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "CartPole", *TINY, "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "run directory" in r.stdout
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["generation"] for x in lines] == [0, 1, 2]
    assert "eval_return" in lines[1] and "eval_return" in lines[2]

    r = run_cli(
        "train", "CartPole", "--resume", str(out), "--generations", "5", "--quiet", "--device", "cpu", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 5

    r = run_cli("eval", str(out), "--episodes", "4", "--device", "cpu", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout)
    assert stats["episodes"] == 4 and stats["backend"] == "torch" and 0 < stats["return_mean"] <= 40

    r = run_cli("envs", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "HalfCheetah" in r.stdout and "CartPole-v1" in r.stdout and "installed backends: torch" in r.stdout


def test_smoke_mujoco_video(tmp_path):
    pytest.importorskip("mujoco")
    pytest.importorskip("imageio_ffmpeg")
    out = tmp_path / "hc"
    r = run_cli(
        "train",
        "HalfCheetah",
        "--backend",
        "gym",
        *TINY[:-7],
        "--generations",
        "1",
        "--eval-episodes",
        "2",
        "--max-episode-steps",
        "20",
        "--quiet",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    r = run_cli(
        "eval", str(out), "--episodes", "2", "--device", "cpu", "--video", str(tmp_path / "v.mp4"), cwd=tmp_path
    )
    if r.returncode != 0 and "rendering" in r.stderr:
        pytest.skip(f"no MuJoCo renderer here: {r.stderr.strip()[-200:]}")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "v.mp4").stat().st_size > 1000


def _err(capsys, argv) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        code = main(argv)
        raise SystemExit(code)
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "CartPole", "--sigmaa", "1"], "Unrecognized options: --sigmaa"),  # tyro's message
        (["train", "CartPol", "--device", "cpu"], "unknown env name 'CartPol'"),
        (["train", "CartPole", "--sigma", "-0.1"], "sigma=-0.1 is invalid"),
        (["train", "CartPole", "--population", "7"], "population=7 is invalid: expected an even number"),
        (["train", "CartPole", "--rank", "0"], "rank=0 is invalid"),
        (["train", "CartPole", "--generations", "3", "--total-steps", "10"], "not allowed with argument"),
        (["train", "CartPole", "--device", "tpu"], "invalid choice 'tpu' for argument '--device'"),  # tyro's
        (["eval", "/nonexistent/run"], "is not a run directory"),
    ],
)
def test_bad_input_is_a_clear_error(capsys, argv, message):
    code, err = _err(capsys, argv)
    assert code == 2
    assert message in err


def test_bad_directories(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, err = _err(capsys, ["train", "CartPole", "--device", "cpu", "--out", str(blocker / "run")])
    assert code == 2 and "cannot be written" in err
    run = tmp_path / "run"
    assert main(["train", "CartPole", *TINY, "--generations", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    code, err = _err(capsys, ["train", "Pendulum", "--device", "cpu", "--resume", str(run)])
    assert code == 2 and "trained on env='CartPole'" in err
    code, err = _err(capsys, ["train", "CartPole", "--device", "cpu", "--out", str(run)])
    assert code == 2 and "already holds a run" in err


def test_config_file_and_precedence(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("population: 6\nhidden_sizes: [4]\nsigma: 0.2\ngenerations: 2\n")
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "CartPole",
                "--config",
                str(cfg),
                "--sigma",
                "0.3",
                "--device",
                "cpu",
                "--quiet",
                "--max-episode-steps",
                "20",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["population"] == 6 and saved["sigma"] == 0.3 and saved["hidden_sizes"] == [4]
    assert saved["generations"] == 2 and saved["env"] == "CartPole"
    bad = tmp_path / "bad.yaml"
    bad.write_text("sigmaa: 1\n")
    code, err = _err(capsys, ["train", "CartPole", "--config", str(bad)])
    assert code == 2 and "unknown config keys ['sigmaa']" in err


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["envs"]])
def test_help_lists_every_setting(command, capsys):
    """``--help`` prints (argparse %-formats help text, so a "%" in a field's docstring once crashed it)."""
    from eggroll_rl.agents.config import TrainConfig

    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: eggroll-rl")
    if command == ["train"]:
        words = [w for w in out.split() if w != "│"]  # tyro draws boxes around the help
        assert "about 1 % of Brax's throughput" in " ".join(words)  # the docstring's "%" survives
        documented = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("env", "out_dir")]
        assert [name for name in documented if f"--{name.replace('_', '-')}" not in out] == []
        assert "--out" in out
