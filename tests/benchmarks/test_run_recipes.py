"""benchmarks/run_recipes.py: job parsing, and real runs on the CPU with tiny budgets — results and summary,
skipping finished jobs on a second call, and a deadline that stops a run which still leaves its results."""

from __future__ import annotations

import json

import pytest
from bench_modules import load

rr = load("run_recipes")

TINY = "population=8,hidden_sizes=[8],eval_every=1,eval_episodes=2,max_episode_steps=50,tensorboard=false"


def test_parse_job():
    job = rr.parse_job("Hopper")
    assert (job.env, job.gpu, job.overrides, job.tag, job.cpus) == ("Hopper", None, {}, "recipe", None)
    job = rr.parse_job("brax:hopper:1:reward_shift=0,hidden_sizes=[32,32],sigma=0.05", "t", cpus="0-3")
    assert (job.env, job.gpu, job.cpus) == ("brax:hopper", "1", "0-3")
    assert job.overrides == {"reward_shift": 0, "hidden_sizes": [32, 32], "sigma": 0.05}
    assert job.tag == "t_reward_shift0_hidden_sizes32-32_sigma0.05"
    job = rr.parse_job("HalfCheetah:cpus=0-1,tag=two,activation=tanh")
    assert (job.gpu, job.cpus, job.tag, job.overrides) == (None, "0-1", "two", {"activation": "tanh"})
    assert rr.parse_job("Ant:cpus=4-7").tag == "recipe_cpus4-7"  # jobs on other CPUs do not collide
    assert job.stem("cpu") == "train_halfcheetah_cpu_two"
    for bad in ("Hopper:0:sigma", "sigma=1", ":0"):
        with pytest.raises(ValueError, match="job"):
            rr.parse_job(bad)


def test_dry_run_commands(capsys):
    argv = ["Hopper:1", "Reacher:0:time_limit_s=600", "Pendulum:cpus=0-1", "--results", "R", "--max-train-s", "300"]
    assert rr.main([*argv, "--set", "seed=3", "--dry-run"]) == 0
    hopper, reacher, pendulum = capsys.readouterr().out.splitlines()
    assert hopper.startswith("CUDA_VISIBLE_DEVICES=1 ") and "--env Hopper --device cuda --results R" in hopper
    # The recipe's 540 s, capped; its generation cap stays (a budget given replaces the recipe's whole).
    assert hopper.endswith("--tag recipe --set seed=3 --set time_limit_s=300.0 --set generations=1000")
    assert reacher.endswith("--set seed=3 --set time_limit_s=600")  # the job's own budget wins
    assert pendulum.startswith("taskset -c 0-1 ")
    assert pendulum.endswith("--set seed=3 --set time_limit_s=300.0 --set generations=300")  # 300 generations or 300 s


def test_eval_at_reads_the_last_evaluation_before():
    evals = [[9, 100, 50.0, 1.0], [19, 200, 110.0, 2.0], [29, 300, 170.0, 3.0]]
    assert rr._eval_at(evals, 120.0) == 2.0
    assert rr._eval_at(evals, 170.0) == 3.0
    assert rr._eval_at(evals, 300.0) is None  # the run ended before 5 minutes
    assert rr._eval_at(evals, 30.0) is None and rr._eval_at([], 10.0) is None


def test_runs_summarizes_and_skips_finished_jobs(tmp_path, capsys):
    jobs = [f"CartPole:{TINY},generations=3", f"Pendulum:{TINY},generations=2,tag=short"]
    argv = [*jobs, "--device", "cpu", "--results", str(tmp_path), "--deadline-s", "240", "--set", "cpu_threads=1"]
    assert rr.main(argv) == 0
    stems = ["train_cartpole_cpu_recipe_population8_hidden_sizes8_eval_every1_eval_episodes2_max_episode_steps50_"
             "tensorboardfalse_generations3", "train_pendulum_cpu_short"]  # fmt: skip
    for stem in stems:
        for suffix in (".json", ".md", ".png", ".log"):
            assert (tmp_path / (stem + suffix)).is_file(), stem + suffix
    cartpole = json.loads((tmp_path / f"{stems[0]}.json").read_text())
    assert cartpole["generations"] == 3 and cartpole["interrupted"] is None
    assert cartpole["config"]["cpu_threads"] == 1 and cartpole["config"]["population"] == 8
    rows = json.loads((tmp_path / "recipes_summary.json").read_text())
    assert [(r["env"], r["status"], r["generations"]) for r in rows] == [
        ("CartPole", "done", 3),
        ("Pendulum", "done", 2),
    ]
    assert rows[0]["best_eval_return"] == cartpole["best_eval_return"]
    assert "| CartPole |" in (tmp_path / "recipes_summary.md").read_text()

    mtimes = [(tmp_path / f"{s}.json").stat().st_mtime_ns for s in stems]
    capsys.readouterr()
    assert rr.main(argv) == 0  # again: both results exist, nothing runs
    out = capsys.readouterr().out
    assert out.count("skip ") == 2 and "start " not in out
    assert [(tmp_path / f"{s}.json").stat().st_mtime_ns for s in stems] == mtimes
    rows = json.loads((tmp_path / "recipes_summary.json").read_text())
    assert all(r["status"] == "skipped (result exists)" and r["generations"] for r in rows)

    assert rr.main([*argv[:1], *argv[2:], "--force"]) == 0  # --force runs it again
    assert (tmp_path / f"{stems[0]}.json").stat().st_mtime_ns != mtimes[0]


def test_deadline_stops_a_run_that_keeps_its_results(tmp_path):
    job = f"Pendulum:{TINY},generations=100000,tag=long"
    # the deadline must fall after the first generation (a job cut before it writes nothing, as documented): 30 s,
    # since under the suite's load (2 workers on 2 cores) the job's start-up alone once took more than 15 s
    argv = [job, "--device", "cpu", "--results", str(tmp_path), "--deadline-s", "30", "--grace-s", "60"]
    assert rr.main(argv) == 0
    data = json.loads((tmp_path / "train_pendulum_cpu_long.json").read_text())
    assert data["interrupted"] == "SIGTERM" and 0 < data["generations"] < 100000
    assert len(data["metrics"]) == data["generations"] and data["evals"]
    (row,) = json.loads((tmp_path / "recipes_summary.json").read_text())
    assert row["status"] == "cut at deadline (SIGTERM)"
