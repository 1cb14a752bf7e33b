"""benchmarks/leaderboard.py: the aggregation maths on fixed inputs, and the quick tier end to end on the CPU with
tiny budgets (a peer that fails, resume skipping finished cells). Timings are never asserted."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from bench_modules import load

lb = load("leaderboard")
la = load("leaderboard_agents")


# ------------------------------------------------------------------------------------------------ the maths
def test_mean_std_is_the_sample_std():
    m, sd = lb.mean_std([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5
    assert sd == pytest.approx(math.sqrt((1.5**2 + 0.5**2 + 0.5**2 + 1.5**2) / 3))
    assert math.isnan(lb.mean_std([7.0])[1])
    assert all(math.isnan(v) for v in lb.mean_std([]))


def test_iqm_drops_a_quarter_from_each_end():
    assert lb.iqm([100.0, 1.0, 3.0, 2.0, 4.0]) == 3.0  # n=5: drop 1 each end -> mean(2, 3, 4)
    assert lb.iqm([8.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]) == 4.5  # n=8: drop 2 each end -> mean(3..6)
    assert lb.iqm([2.0, 4.0]) == 3.0  # n < 4: nothing dropped


def test_value_at_interpolates_at_equal_wall_clock():
    curve = [(10.0, 0.0), (20.0, 100.0), (40.0, 50.0)]
    assert math.isnan(lb.value_at(curve, 5.0))  # before the first evaluation (still compiling)
    assert lb.value_at(curve, 10.0) == 0.0
    assert lb.value_at(curve, 15.0) == 50.0
    assert lb.value_at(curve, 30.0) == 75.0
    assert lb.value_at(curve, 99.0) == 50.0  # after the last: held
    assert math.isnan(lb.value_at([], 1.0))


def test_time_to_threshold_is_the_first_evaluation_at_or_above():
    curve = [(10.0, 0.0), (20.0, 100.0), (40.0, 150.0)]
    assert lb.time_to_threshold(curve, 100.0) == 20.0
    assert lb.time_to_threshold(curve, 120.0) == 40.0
    assert lb.time_to_threshold(curve, 151.0) is None


def test_compile_estimate_and_steady_rate():
    chunks = [(5.0, 100), (1.0, 100), (2.0, 100), (1.0, 100)]  # median later rate 0.01 s/step
    assert la.compile_estimate(chunks) == pytest.approx(4.0)
    assert la.steady_steps_per_s(chunks) == pytest.approx(300 / 4.0)
    assert la.compile_estimate(chunks[:1]) is None


def _cell(env, agent, seed, status="ok", budget=40.0, **kw):
    return {"cell_id": f"{env}__{agent}__s{seed}", "env": env, "agent": agent, "seed": seed, "status": status,
            "error": kw.pop("error", None), "spec": {"budget_s": budget}, **kw}  # fmt: skip


def _runs(env, agent, seed, points):
    return [{"cell_id": f"{env}__{agent}__s{seed}", "env": env, "agent": agent, "seed": seed, "wall_s": t,
             "env_steps": 1000 * i, "eval_return": r} for i, (t, r) in enumerate(points)]  # fmt: skip


def test_summarize_on_fixed_inputs():
    runs = (
        _runs("Hopper", "eggroll", 0, [(10, 1000), (20, 3000), (40, 3500)])
        + _runs("Hopper", "eggroll", 1, [(10, 500), (30, 2500), (40, 3100)])
        + _runs("Hopper", "brax_ppo", 0, [(5, 2000), (25, 3200), (40, 3000)])
        + _runs("Hopper", "brax_ppo", 1, [(5, 1000), (25, 2800), (40, 2900)])
        + _runs("Hopper", "openes", 0, [(10, 7)])
    )
    cells = [_cell("Hopper", "eggroll", 0, compile_s=3.0, wall_s=60.0), _cell("Hopper", "eggroll", 1, compile_s=5.0),
             _cell("Hopper", "brax_ppo", 0), _cell("Hopper", "brax_ppo", 1),
             _cell("Hopper", "openes", 0, status="error", error="RuntimeError: boom\ntrace")]  # fmt: skip
    rows = {r["agent"]: r for r in lb.summarize(runs, cells, {("Hopper", "eggroll"): 3})}
    egg, ppo, es = rows["eggroll"], rows["brax_ppo"], rows["openes"]
    assert (egg["seeds"], egg["planned"]) == (2, 3)
    assert egg["final_mean"] == 3300.0 and egg["final_std"] == pytest.approx(math.sqrt(2 * 200**2))
    assert math.isnan(egg["iqm"])  # fewer than 5 seeds
    # at 20 s (half the budget): seed 0 evaluated 3000 there; seed 1 interpolates 500 -> 2500 over 10..30 s: 1500.
    assert egg["at_half_budget"] == 2250.0
    # threshold 3000: seed 0 at 20 s, seed 1 at 40 s
    assert (egg["reached"], egg["time_to_threshold_s"]) == (2, 30.0)
    # PPO's best: mean over PPO seeds of each seed's best, (3200 + 2900) / 2 = 3050; eggroll passes it at 40 s on
    # both seeds, PPO's seed 0 at 25 s and seed 1 never.
    assert ppo["ppo_best"] == 3050.0 and (egg["reached_ppo_best"], egg["time_to_ppo_best_s"]) == (2, 40.0)
    assert (ppo["reached_ppo_best"], ppo["time_to_ppo_best_s"]) == (1, 25.0)
    assert egg["compile_s"] == 4.0 and egg["minutes"] == 1.0
    assert es["seeds"] == 0 and "boom" in es["status"] and "trace" not in es["status"]
    assert lb.losses(list(rows.values())) == []  # eggroll ends higher; PPO reaches 3000 sooner but on 1/2 seeds
    # the other side: eggroll 3300 vs PPO (3000 + 2900) / 2 = 2950 at the end; at 40 s (their last common time)
    # eggroll 3300 vs PPO 2950; 3000 on 2/2 seeds vs 1/2; PPO's best on both seeds, at 40 s
    assert lb.wins(list(rows.values())) == [
        "Hopper: eggroll is ahead of brax_ppo at equal wall clock (3,300.0 vs 2,950.0 at 40 s).",
        "Hopper: eggroll ends the 40 s budget higher than brax_ppo (3,300.0 vs 2,950.0, mean final return of 2 vs 2 "
        "seeds).",
        "Hopper: eggroll reaches 3,000 on more seeds than brax_ppo (30.0 s vs 25.0 s, 2/2 vs 1/2 seeds).",
        "Hopper: eggroll reaches Brax PPO's best (3,050.0) on every seed (2), at 40.0 s (mean).",
    ]


def test_the_alive_bonus_is_taken_out_over_the_seeds_that_report_their_length(tmp_path):
    # Humanoid pays 5 a step: seed 0 ends at 8000 over 1000-step episodes (3000 by moving), seed 1 at 6000 over 900
    # steps (1500); PPO's seed 0 ends at 7000 over 1000 steps (2000) and its seed 1 (7500) reports no length, so its
    # figure rests on seed 0 alone and says so; HalfCheetah pays no bonus.
    def with_lengths(rows, lengths):
        return [dict(r, eval_length=n) if n is not None else r for r, n in zip(rows, lengths)]

    runs = with_lengths(_runs("Humanoid", "eggroll", 0, [(10, 100.0), (40, 8000.0)]), [50.0, 1000.0])
    runs += with_lengths(_runs("Humanoid", "eggroll", 1, [(10, 200.0), (40, 6000.0)]), [60.0, 900.0])
    runs += with_lengths(_runs("Humanoid", "brax_ppo", 0, [(40, 7000.0)]), [1000.0])
    runs += _runs("Humanoid", "brax_ppo", 1, [(40, 7500.0)])
    runs += with_lengths(_runs("HalfCheetah", "eggroll", 0, [(40, 5000.0)]), [1000.0])
    cells = [_cell(e, a, s) for e, a, s in [("Humanoid", "eggroll", 0), ("Humanoid", "eggroll", 1),
             ("Humanoid", "brax_ppo", 0), ("Humanoid", "brax_ppo", 1), ("HalfCheetah", "eggroll", 0)]]  # fmt: skip
    rows = {(r["env"], r["agent"]): r for r in lb.summarize(runs, cells)}
    egg = rows[("Humanoid", "eggroll")]
    assert egg["final_no_bonus"] == ((8000 - 5 * 1000) + (6000 - 5 * 900)) / 2 and egg["final_length"] == 950.0
    assert egg["no_bonus_seeds"] == 2 and egg["final_measured"] == 7000.0
    ppo = rows[("Humanoid", "brax_ppo")]
    assert ppo["final_no_bonus"] == 7000 - 5 * 1000 and ppo["no_bonus_seeds"] == 1 and ppo["final_mean"] == 7250.0
    assert math.isnan(rows[("HalfCheetah", "eggroll")]["final_no_bonus"])
    out = tmp_path / "board"
    _part(out, cells, runs, "python benchmarks/leaderboard.py --tier gpu")
    lb.write_report(out, {}, plot=False)
    md = (out / "compare.md").read_text()
    section = md.split("## Without the alive bonus")[1].split("##")[0]
    assert "- Humanoid eggroll: 2,250.0 (7,000.0 less 5 × 950.0 steps; 2 of 2 seeds)" in section
    assert "- Humanoid brax_ppo: 2,000.0 (7,000.0 less 5 × 1,000.0 steps; 1 of 2 seeds)" in section
    assert "HalfCheetah" not in section
    row = next(
        r for r in csv.DictReader((out / "compare.csv").open()) if r["agent"] == "eggroll" and r["env"] == "Humanoid"
    )
    assert float(row["final_no_bonus"]) == 2250.0


def test_threshold_lead_compares_shares_of_seeds():
    """Rows with different seed counts: 2/2 against 1/1 is the same share, so only time decides."""
    ppo = {"reached": 2, "seeds": 2, "time_to_threshold_s": 80.7}
    egg = {"reached": 1, "seeds": 1, "time_to_threshold_s": 212.2}
    assert lb._threshold_lead(ppo, egg) == "sooner" and lb._threshold_lead(egg, ppo) is None
    assert lb._threshold_lead({**egg, "seeds": 3}, {**ppo, "reached": 0, "seeds": 1}) == "on more seeds"
    assert lb._threshold_lead({**egg, "reached": 1, "seeds": 3}, {**ppo, "reached": 1, "seeds": 2}) is None  # 1/3 < 1/2
    none = {"reached": 0, "seeds": 0, "time_to_threshold_s": math.nan}
    assert lb._threshold_lead(none, none) is None


# ----------------------------------------------------------------------------------------- end to end (CPU)
FAKE_PEER = """
def run_failing(cell, budget_s, emit):
    emit(10, 1.0)
    raise RuntimeError("fake peer broke")
"""


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """The quick tier with a failing peer, 1 seed, 2 s cells; and a count of subprocess launches."""
    root = tmp_path_factory.mktemp("board")
    (root / "fake_peer.py").write_text(FAKE_PEER)
    mp = pytest.MonkeyPatch()
    mp.setenv("PYTHONPATH", str(root))
    launches = []
    real = lb._launch_cell

    def counting(cell_dir, env, timeout_s):
        launches.append(Path(cell_dir).name)
        return real(cell_dir, env, timeout_s)

    mp.setattr(lb, "_launch_cell", counting)
    argv = ["--quick", "--agents", "eggroll", "openes", "fake_peer:run_failing", "--seeds", "1", "--budget-s", "2",
            "--workers", "2", "--override", "population=16", "--override", "eval_episodes=4",
            "--out", str(root / "lb")]  # fmt: skip
    assert lb.main(argv) == 0
    first = list(launches)
    launches.clear()
    assert lb.main(argv) == 0  # resume
    yield root / "lb", first, list(launches)
    mp.undo()


def test_quick_tier_runs_every_cell_and_records_the_failing_peer(board):
    out, first, _ = board
    assert len(first) == 6
    cells = {c["cell_id"]: c for c in lb._read_jsonl(out / "cells.jsonl")}
    assert len(cells) == 6
    for env in ("CartPole", "Pendulum"):
        for agent in ("eggroll", "openes"):
            c = cells[f"{env}__{agent}__s0"]
            assert c["status"] == "ok", c["error"]
            assert c["config"]["population"] == 16 and c["config"]["cpu_threads"] == 1
            assert c["num_evals"] >= 1 and c["final_return"] is not None
            assert c["peak_mem_torch_mb"] is None  # CPU
            assert c["spec"]["episode_length"] == lb.EPISODE_LENGTHS[env]
        fake = cells[f"{env}__fake_peer.run_failing__s0"]
        assert fake["status"] == "error" and "fake peer broke" in fake["error"]
    runs = lb._read_jsonl(out / "runs.jsonl")
    egg = [r for r in runs if r["cell_id"] == "CartPole__eggroll__s0"]
    assert egg and all(a["wall_s"] < b["wall_s"] for a, b in zip(egg, egg[1:]))
    # the ES agents report their evaluations' mean episode length: on CartPole (1 per step) it is the return
    for agent in ("eggroll", "openes"):
        rows = [r for r in runs if r["cell_id"] == f"CartPole__{agent}__s0"]
        assert rows and all(r["eval_length"] == pytest.approx(r["eval_return"]) for r in rows)
    md = (out / "compare.md").read_text()
    assert "fake peer broke" in md and "Where eggroll loses" in md
    header = (out / "compare.csv").read_text().splitlines()[0].split(",")
    assert header == lb.COLUMNS
    assert (out / "CartPole.png").exists() and (out / "Pendulum.png").exists()
    assert json.loads((out / "board.json").read_text())["git_sha"]


def test_resume_skips_finished_cells_and_retries_failed_ones(board):
    out, _, second = board
    assert sorted(second) == ["CartPole__fake_peer.run_failing__s0", "Pendulum__fake_peer.run_failing__s0"]
    runs = lb._read_jsonl(out / "runs.jsonl")
    fake = [r for r in runs if r["cell_id"] == "CartPole__fake_peer.run_failing__s0"]
    assert len(fake) == 1  # the retried cell's old evaluations were replaced, not duplicated


# ------------------------------------------------------------------------------- boards built in parts, merged
def _part(folder, cells, runs, command):
    folder.mkdir(parents=True)
    lb._write_jsonl(folder / "cells.jsonl", cells)
    lb._write_jsonl(folder / "runs.jsonl", runs)
    (folder / "board.json").write_text(json.dumps({"command": command, "git_sha": "abc", "versions": {}}))
    for c in cells:
        (folder / "cells" / c["cell_id"]).mkdir(parents=True)
        (folder / "cells" / c["cell_id"] / "spec.json").write_text(json.dumps({"from": folder.name}))


def test_merge_folds_two_partial_boards_into_one(tmp_path):
    # GPU 0 ran eggroll's two seeds; GPU 1 ran PPO's seed 0 and a PPO seed 1 that failed there but finished in a
    # third folder (a retry): the ok record wins, with its evaluations only.
    egg = _runs("Hopper", "eggroll", 0, [(10, 1000), (40, 3500)])
    egg += _runs("Hopper", "eggroll", 1, [(10, 500), (40, 3100)])
    prec = {"torch_tf32_matmul": False, "jax_default_matmul_precision": None, "jax_backend": "gpu"}
    egg_cells = [_cell("Hopper", "eggroll", 0, precision=prec), _cell("Hopper", "eggroll", 1)]
    _part(tmp_path / "gpu0", egg_cells, egg, "gpu0")
    ppo = _runs("Hopper", "brax_ppo", 0, [(5, 2000), (40, 3000)]) + _runs("Hopper", "brax_ppo", 1, [(5, -1)])
    failed = _cell("Hopper", "brax_ppo", 1, status="error", error="x")
    _part(tmp_path / "gpu1", [_cell("Hopper", "brax_ppo", 0), failed], ppo, "gpu1")
    _part(tmp_path / "retry", [_cell("Hopper", "brax_ppo", 1)], _runs("Hopper", "brax_ppo", 1, [(5, 1000), (40, 2900)]),
          "retry")  # fmt: skip
    board = tmp_path / "board"
    planned = {("Hopper", a): 3 for a in ("eggroll", "brax_ppo", "openes")}
    counts = lb.merge_boards(board, [tmp_path / "gpu0", tmp_path / "gpu1", tmp_path / "retry"], log=lambda *_: None)
    assert counts == {"taken": 4, "cells": 4}
    cells = {c["cell_id"]: c for c in lb._read_jsonl(board / "cells.jsonl")}
    assert sorted(cells) == ["Hopper__brax_ppo__s0", "Hopper__brax_ppo__s1", "Hopper__eggroll__s0",
                             "Hopper__eggroll__s1"]  # fmt: skip
    assert cells["Hopper__brax_ppo__s1"]["status"] == "ok"
    runs = lb._read_jsonl(board / "runs.jsonl")
    assert [r["eval_return"] for r in runs if r["cell_id"] == "Hopper__brax_ppo__s1"] == [1000, 2900]
    assert json.loads((board / "cells" / "Hopper__brax_ppo__s1" / "spec.json").read_text()) == {"from": "retry"}
    parts = json.loads((board / "board.json").read_text())["parts"]
    assert [p["command"] for p in parts] == ["gpu0", "gpu1", "retry"]
    # merging again changes nothing (the same records, parts deduplicated)
    assert lb.merge_boards(board, [tmp_path / "gpu0", tmp_path / "gpu1"], log=lambda *_: None)["cells"] == 4
    assert len(json.loads((board / "board.json").read_text())["parts"]) == 3
    rows = {r["agent"]: r for r in lb.write_report(board, planned, plot=False)}
    assert (rows["eggroll"]["seeds"], rows["eggroll"]["missing"], rows["openes"]["missing"]) == (2, 1, 3)
    assert rows["brax_ppo"]["ppo_best"] == (3000 + 2900) / 2 and "not run: 3" in rows["openes"]["status"]
    md = (board / "compare.md").read_text()
    assert "Built in 3 parts" in md and "**Partial board**: 5 of 9" in md and "openes ×3" in md
    assert "eggroll: torch TF32 off, jax on gpu precision XLA default" in md
    with pytest.raises(FileNotFoundError, match="no cells.jsonl"):
        lb.merge_boards(board, [tmp_path / "nowhere"])


def test_merge_from_the_command_line(tmp_path):
    _part(tmp_path / "a", [_cell("CartPole", "eggroll", 0)], _runs("CartPole", "eggroll", 0, [(1, 10), (2, 500)]), "a")
    _part(tmp_path / "b", [_cell("CartPole", "openes", 0)], _runs("CartPole", "openes", 0, [(1, 20), (3, 480)]), "b")
    out = tmp_path / "board"
    assert lb.main(["--quick", "--seeds", "1", "--merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out),
                    "--no-plot"]) == 0  # fmt: skip
    rows = list(csv.DictReader((out / "compare.csv").open()))
    assert {(r["env"], r["agent"], r["seeds"]) for r in rows} == {
        ("CartPole", "eggroll", "1"), ("CartPole", "openes", "1"), ("Pendulum", "eggroll", "0"),
        ("Pendulum", "openes", "0"),
    }  # fmt: skip
    assert not (out / "cells" / "Pendulum__eggroll__s0").exists()
    # without grid flags, the merged board is reported against the grid its parts were run with (as --report-only)
    run = "python benchmarks/leaderboard.py --tier gpu --envs Hopper --agents eggroll brax_ppo --seeds 2"
    _part(tmp_path / "c", [_cell("Hopper", "eggroll", 0)], _runs("Hopper", "eggroll", 0, [(1, 10), (2, 900)]), run)
    assert lb.main(["--merge", str(tmp_path / "c"), "--out", str(tmp_path / "gpu"), "--no-plot"]) == 0
    rows = list(csv.DictReader((tmp_path / "gpu" / "compare.csv").open()))
    assert {(r["env"], r["agent"], r["seeds"], r["planned"]) for r in rows} == {
        ("Hopper", "eggroll", "1", "2"), ("Hopper", "brax_ppo", "0", "2"),
    }  # fmt: skip


def test_a_killed_cell_keeps_its_evaluations_and_is_retried(tmp_path):
    cell = lb.Cell("CartPole", "eggroll", 0, 10.0, "torch", None, 500, "cpu")
    (tmp_path / "evals.jsonl").write_text('{"wall_s": 3.0, "env_steps": 100, "eval_return": 42.0}\n')
    record, _ = lb._cell_record(cell, tmp_path, None, "log", 20.0)
    assert record["status"] == "timeout" and record["final_return"] == 42.0 and "timed out" in record["error"]
    assert record["wall_s"] == 20.0  # it ran until the limit
    assert "timeout" in lb.USABLE and "timeout" not in lb.DONE  # counts on the board, rerun on resume
    (tmp_path / "evals.jsonl").write_text("")
    assert lb._cell_record(cell, tmp_path, None, "log", 20.0)[0]["status"] == "error"  # nothing measured
    runs = _runs("CartPole", "eggroll", 0, [(3.0, 42.0)])
    row = lb.summarize(runs, [_cell("CartPole", "eggroll", 0, status="timeout", error="timed out")])[0]
    assert row["seeds"] == 1 and row["final_mean"] == 42.0 and "1 killed" in row["status"]
    assert math.isnan(row["at_half_budget"])  # killed at 3 s of a 40 s budget: nothing known at 20 s


def _killed_cell(folder, seed, evals, started_at="2026-12-02T10:00:00"):
    """A cell folder as the harness leaves it when something outside kills it mid-run: spec, start, evaluations."""
    cell = lb.Cell("Hopper", "eggroll", seed, 480.0, "brax", "spring", 1000, "cuda")
    cell_dir = folder / "cells" / cell.cell_id
    cell_dir.mkdir(parents=True)
    (cell_dir / "spec.json").write_text(json.dumps(cell.spec()))
    (cell_dir / "started.json").write_text(json.dumps({"started_at": started_at, "limit_s": 840.0}))
    (cell_dir / "evals.jsonl").write_text("".join(
        json.dumps({"wall_s": t, "env_steps": 1000 * t, "eval_return": r}) + "\n" for t, r in evals))  # fmt: skip
    return cell


def test_cells_killed_from_outside_are_recovered_at_merge(tmp_path):
    """A lane whose machine was taken back mid-cell: the cell wrote evaluations but no result and no record. The merge
    records it: counted ("timeout") when its last evaluation is past 90 % of the budget, else kept uncounted
    ("deadline"); a cell the harness recorded after its start, or one with no evaluation, is left as it is."""
    lane = tmp_path / "lane0"
    # the lane started from the board's records: seed 2 was recorded (an older run) before this start
    older = _cell("Hopper", "eggroll", 2, finished_at="2026-12-01T09:00:00", final_return=1.0)
    _part(lane, [], [], "lane")
    lb._write_jsonl(lane / "cells.jsonl", [older])
    lb._write_jsonl(lane / "runs.jsonl", _runs("Hopper", "eggroll", 2, [(400, 1.0)]))
    _killed_cell(lane, 0, [(60, 500.0), (300, 2500.0), (460, 3100.0)])
    _killed_cell(lane, 1, [(60, 400.0), (100, 900.0)])
    _killed_cell(lane, 2, [(60, 700.0), (470, 3300.0)])
    _killed_cell(lane, 3, [])
    recorded = _killed_cell(lane, 4, [(60, 1.0)])
    (lane / "cells" / recorded.cell_id / "result.json").write_text("{}")  # it ended normally
    board = tmp_path / "board"
    lb.merge_boards(board, [lane], log=lambda *_: None)
    cells = {c["seed"]: c for c in lb._read_jsonl(board / "cells.jsonl")}
    assert sorted(cells) == [0, 1, 2]
    assert cells[0]["status"] == "timeout" and cells[0]["final_return"] == 3100.0 and cells[0]["wall_s"] == 460
    assert "killed from outside" in cells[0]["error"] and "460 s of its 480 s" in cells[0]["error"]
    assert cells[1]["status"] == "deadline" and cells[1]["final_return"] == 900.0
    assert cells[2]["status"] == "timeout" and cells[2]["final_return"] == 3300.0  # newer than the older record
    runs = lb._read_jsonl(board / "runs.jsonl")
    assert [r["eval_return"] for r in runs if r["seed"] == 2] == [700.0, 3300.0]
    assert [r["eval_return"] for r in runs if r["seed"] == 0] == [500.0, 2500.0, 3100.0]
    row = lb.summarize(runs, list(cells.values()), {("Hopper", "eggroll"): 3})[0]
    assert row["seeds"] == 2 and row["final_mean"] == (3100.0 + 3300.0) / 2  # the deadline cell does not count
    # merging again recovers nothing new: the records are newer than the starts now
    assert lb.recover_killed_cells(lane, log=lambda *_: None) == []
    # a lane that started from no board and whose only cell was killed has no cells.jsonl: merged all the same
    fresh = tmp_path / "fresh"
    _killed_cell(fresh, 5, [(450, 2000.0)])
    lb.merge_boards(board, [fresh], log=lambda *_: None)
    assert {c["seed"]: c["status"] for c in lb._read_jsonl(board / "cells.jsonl")}[5] == "timeout"


def test_run_board_marks_each_cell_start(tmp_path, monkeypatch):
    monkeypatch.setattr(lb, "_launch_cell", lambda cell_dir, env, limit: (1, "stub"))
    cells = lb.make_cells(["CartPole"], ["eggroll"], [0], 10.0, "torch", "cpu")
    lb.run_board(cells, tmp_path / "lb", log=lambda *_: None)
    started = json.loads((tmp_path / "lb" / "cells" / "CartPole__eggroll__s0" / "started.json").read_text())
    (record,) = lb._read_jsonl(tmp_path / "lb" / "cells.jsonl")
    assert started["limit_s"] == 1.5 * 10.0 + 120.0 and record["finished_at"] >= started["started_at"]
    assert lb.recover_killed_cells(tmp_path / "lb", log=lambda *_: None) == []


def test_env_names_are_canonical_and_gpu_slots_follow_cuda_visible_devices(monkeypatch):
    cells = lb.make_cells(["halfcheetah"], ["eggroll"], [0], 10.0, "brax", "cuda")
    assert cells[0].cell_id == "HalfCheetah__eggroll__s0" and cells[0].brax_backend == "spring"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert lb._gpu_slots(2) == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert lb._gpu_slots(1) == ["1"]  # a second invocation pinned to GPU 1 stays there
    with pytest.raises(ValueError, match="--gpus 2"):
        lb._gpu_slots(2)


def test_losses_compare_at_equal_wall_clock():
    # openes was killed at 20 s, eggroll ran to 60 s and ends higher; at 20 s (the latest time both were measured)
    # eggroll interpolates 0 -> 200 over 10..30 s: 100, openes evaluated 250 there.
    runs = _runs("Ant", "eggroll", 0, [(10, 0), (30, 200), (60, 300)])
    runs += _runs("Ant", "openes", 0, [(10, 100), (20, 250)])
    cells = [_cell("Ant", "eggroll", 0), _cell("Ant", "openes", 0, status="timeout", error="timed out")]
    rows = {r["agent"]: r for r in lb.summarize(runs, cells)}
    es = rows["openes"]
    assert (es["equal_wall_s"], es["at_equal_wall"], es["eggroll_at_equal_wall"]) == (20, 250, 100)
    assert (es["final_mean"], es["last_eval_s"]) == (250, 20)
    assert lb.losses(list(rows.values())) == [
        "Ant: openes is ahead at equal wall clock (250.0 vs eggroll 100.0 at 20 s)."
    ]
    assert lb._vs_eggroll(es) == "250.0 vs 100.0 @ 20 s" and lb._vs_eggroll(rows["eggroll"]) == "—"
    # eggroll ends its budget higher (300 vs openes' 250 when it was killed), though behind at equal wall clock
    assert lb.wins(list(rows.values())) == [
        "Ant: eggroll ends the 40 s budget higher than openes (300.0 vs 250.0, mean final return of 1 vs 1 seeds)."
    ]


class _FakeClock:
    """An ``emit`` whose clock is the number of generations reported so far (one 'second' per progress call)."""

    def __init__(self) -> None:
        self.evals: list[tuple[int, float]] = []
        self.ticks = 0

    def elapsed(self) -> float:
        return float(self.ticks)

    def __call__(self, env_steps: int, eval_return: float, eval_length: float | None = None) -> None:
        self.evals.append((env_steps, eval_return))


def test_eggroll_stops_on_the_cells_clock_not_its_training_loops(monkeypatch):
    # train()'s time limit starts after env build and compilation; the cell's budget counts them, so the adapter
    # stops the run from its progress callback at the first evaluation past the budget (as the Brax peers stop).
    import eggroll_rl.agents as agents

    clock = _FakeClock()
    real_train = agents.train

    def train(config, progress_fn):
        def tick(record):
            clock.ticks += 1
            progress_fn(record)

        return real_train(config, progress_fn=tick)

    monkeypatch.setattr(agents, "train", train)
    cell = lb.Cell(env="CartPole", agent="eggroll", seed=0, budget_s=3.0, backend="torch", brax_backend=None,
                   episode_length=0, device="cpu",
                   overrides={"population": 8, "eval_every": 2, "eval_episodes": 2, "generations": 50})  # fmt: skip
    out = la.run_eggroll(cell, cell.budget_s, clock)
    assert out["stopped"] == "budget"
    # generation 3 ends at 'second' 3 = the budget without an evaluation; generation 4's evaluation is the stop
    assert clock.ticks == 4 and len(out["chunks"]) == 4
    # the seconds of the two evaluations (generations 1 and 3), part of those generations' chunks
    assert 0 < out["eval_s"] < out["chunks"][1][0] + out["chunks"][3][0]
    assert [steps for steps, _ in clock.evals] == [
        out["chunks"][0][1] + out["chunks"][1][1],
        sum(c[1] for c in out["chunks"]),
    ]


def test_openes_trains_on_the_same_shifted_fitness_as_eggroll(monkeypatch):
    import eggroll_rl.agents as agents
    import eggroll_rl.fitness as fitness

    seen = {}
    real_rollout, real_shape = agents.rollout, fitness.shape_fitness

    def rollout(*args, **kwargs):
        seen["episodes"] = real_rollout(*args, **kwargs)
        return seen["episodes"]

    def shape_fitness(values, method):
        seen["fitness"] = values.clone()
        return real_shape(values, method)

    monkeypatch.setattr(agents, "rollout", rollout)
    monkeypatch.setattr(fitness, "shape_fitness", shape_fitness)
    cell = lb.Cell(env="CartPole", agent="openes", seed=0, budget_s=60.0, backend="torch", brax_backend=None,
                   episode_length=0, device="cpu",
                   overrides={"population": 8, "eval_episodes": 2, "generations": 1, "reward_shift": 0.5})  # fmt: skip
    la.run_openes(cell, cell.budget_s, _FakeClock())
    episodes = seen["episodes"]
    expected = episodes.returns.double() - 0.5 * episodes.lengths.double()
    assert episodes.lengths.min() > 0
    assert torch.allclose(seen["fitness"].double(), expected)


SLOW_PEER = """
import time

def run_slow(cell, budget_s, emit):
    emit(10, 1.0)
    time.sleep(120)
"""


def test_a_deadline_kills_the_running_cell_and_starts_no_other(tmp_path, monkeypatch):
    """``--deadline-s``: the running cell is killed at the deadline (status "deadline": its evaluation stays in
    runs.jsonl but the board does not count it, and the next invocation reruns it) and a cell with less than
    ``MIN_CELL_S`` left is not started."""
    (tmp_path / "slow_peer.py").write_text(SLOW_PEER)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setattr(lb, "MIN_CELL_S", 5.0)
    cells = lb.make_cells(["CartPole"], ["slow_peer:run_slow"], [0, 1], 300.0, "torch", "cpu")
    logged = []
    counts = lb.run_board(cells, tmp_path / "lb", workers=1, deadline_s=15.0, log=logged.append)
    assert counts["deadline"] == 1 and counts["left"] == 1 and counts["ok"] == counts["timeout"] == 0
    (record,) = lb._read_jsonl(tmp_path / "lb" / "cells.jsonl")
    assert record["seed"] == 0 and record["status"] == "deadline" and record["final_return"] == 1.0
    assert "--deadline-s" in record["error"]
    assert record["wall_s"] <= 15.0  # the cell's limit was the time left, not its 1.5 x 300 s + 120 s default
    assert any("not started" in line for line in logged)
    assert "deadline" not in lb.USABLE and "deadline" not in lb.DONE
    planned = {(record["env"], record["agent"]): 1}
    row = lb.summarize(lb._read_jsonl(tmp_path / "lb" / "runs.jsonl"), [record], planned)[0]
    assert row["seeds"] == 0 and row["missing"] == 1 and "deadline" in row["status"]  # not a measurement
    # the next invocation (no deadline) runs it again, and the seed it never started
    monkeypatch.setattr(lb, "_launch_cell", lambda cell_dir, env, limit: (1, "stub"))
    assert lb.run_board(cells, tmp_path / "lb", workers=1, log=logged.append)["error"] == 2


def test_a_skipped_cell_is_retried_once_its_agent_is_installed(tmp_path, monkeypatch):
    """A cell skipped because its agent was not installed is not "finished": the next invocation tries it again."""
    cells = lb.make_cells(["CartPole"], ["eggroll"], [0], 10.0, "torch", "cpu")
    out = tmp_path / "lb"
    out.mkdir()
    skipped = {"cell_id": cells[0].cell_id, "status": "skipped", "spec": cells[0].spec(), "error": "not installed"}
    (out / "cells.jsonl").write_text(json.dumps(skipped) + "\n")
    launched = []
    monkeypatch.setattr(lb, "_launch_cell", lambda cell_dir, env, limit: launched.append(cell_dir.name) or (1, "x"))
    counts = lb.run_board(cells, out, workers=1, log=lambda _: None)
    assert launched == [cells[0].cell_id] and counts["kept"] == 0


def test_report_only_takes_the_grid_its_board_was_run_with(tmp_path):
    """``--report-only --out DIR`` without grid flags plans the board's own grid: each of --tier/--envs/--agents/
    --seeds that every recorded invocation gave alike, the tier's default for the rest; flags given still win."""
    run = "python benchmarks/leaderboard.py --tier gpu --agents eggroll brax_ppo --seeds 1 --budget-s 480 --envs "
    parts = [{"command": run + "Ant"}, {"command": run + "Humanoid --gpus 2"}]
    (tmp_path / "board.json").write_text(json.dumps({"parts": parts}))
    args = lb.grid_of_board(tmp_path, lb.parse_args(["--report-only", "--out", str(tmp_path)]))
    assert (args.tier, args.agents, args.seeds, args.envs) == ("gpu", ["eggroll", "brax_ppo"], 1, None)
    given = lb.grid_of_board(tmp_path, lb.parse_args(["--report-only", "--quick", "--seeds", "3"]))
    assert (given.tier, given.seeds, given.agents) == ("quick", 3, ["eggroll", "brax_ppo"])
    (tmp_path / "board.json").write_text(json.dumps({"parts": [{"command": run + "Ant --flag-of-the-future"}]}))
    unknown = lb.grid_of_board(tmp_path, lb.parse_args(["--report-only"]))
    assert unknown.tier is None and unknown.agents is None  # an unparsable record changes nothing


# ----------------------------------------------------------------------------------------------- the SAC peer
def test_brax_sac_settings_are_the_notebooks():
    # google/brax notebooks/training.ipynb (v0.14.2), the ``train_fn`` table's ``sac.train`` entries; its seed=1 is
    # left out (each cell has its own seed).
    shared = dict(num_evals=20, episode_length=1000, normalize_observations=True, action_repeat=1,
                  discounting=0.997, learning_rate=6e-4, num_envs=128, max_devices_per_host=1,
                  max_replay_size=1048576, min_replay_size=8192, source="brax training notebook")  # fmt: skip
    assert la.BRAX_SAC_SETTINGS == {
        "hopper": dict(shared, num_timesteps=6_553_600, reward_scaling=30, batch_size=512, grad_updates_per_step=64),
        "walker2d": dict(shared, num_timesteps=7_864_320, reward_scaling=5, batch_size=128, grad_updates_per_step=32),
    }
    assert la._SAC_FALLBACK == dict(la.BRAX_SAC_SETTINGS["walker2d"], reward_scaling=1,
                                    source="no published SAC setting: walker2d's recipe, reward_scaling 1")  # fmt: skip
    assert {"grad_updates_per_step", "min_replay_size", "unroll_length"} <= la.BRAX_SETTING_KEYS
    assert "source" not in la.BRAX_SETTING_KEYS


def test_the_sac_settings_are_arguments_of_brax_sac_train():
    pytest.importorskip("brax")
    import inspect

    from brax.training.agents.sac import train as sac

    params = inspect.signature(sac.train).parameters
    for settings in [*la.BRAX_SAC_SETTINGS.values(), la._SAC_FALLBACK]:
        assert set(settings) - {"source"} <= set(params)


def _planned(tmp_path, *flags):
    out = tmp_path / ("_".join(flags).replace("-", "") or "plain")
    assert lb.main(["--tier", "gpu", "--seeds", "1", "--report-only", "--no-plot", "--out", str(out), *flags]) == 0
    return {(r["env"], r["agent"]) for r in csv.DictReader((out / "compare.csv").open())}


def test_gpu_tier_plans_brax_sac_where_brax_publishes_sac_settings(tmp_path):
    plan = _planned(tmp_path)
    assert {env for env, agent in plan if agent == "brax_sac"} == {"Hopper", "Walker2d"}
    assert {env for env, agent in plan if agent == "brax_ppo"} == set(lb.TIERS["gpu"].envs)
    assert _planned(tmp_path, "--agents", "brax_sac") == {("Hopper", "brax_sac"), ("Walker2d", "brax_sac")}
    assert ("Ant", "brax_sac") not in _planned(tmp_path, "--envs", "ant")
    # named both ways on the command line: run as asked, with the generic recipe
    assert _planned(tmp_path, "--envs", "Ant", "--agents", "brax_sac") == {("Ant", "brax_sac")}


def test_override_accepts_sac_settings_and_names_the_unknown(tmp_path):
    assert ("Hopper", "brax_sac") in _planned(tmp_path, "--override", "grad_updates_per_step=2")
    with pytest.raises(SystemExit, match=r"\['replay_ratio'\]: not a TrainConfig field or a Brax PPO/SAC setting"):
        _planned(tmp_path, "--override", "replay_ratio=2")


def test_brax_progress_stops_at_the_first_evaluation_past_the_budget():
    clock, chunks = _FakeClock(), []
    progress = la._brax_progress(10.0, clock, chunks)
    progress(0, {"eval/episode_reward": 1.5})  # SAC's evaluation before training: no training time yet
    clock.ticks = 6
    progress(1000, {"eval/episode_reward": 2.5, "training/walltime": 4.0})
    clock.ticks = 11
    with pytest.raises(la.BudgetReached):
        progress(3000, {"eval/episode_reward": 3.5, "training/walltime": 7.0})
    assert clock.evals == [(0, 1.5), (1000, 2.5), (3000, 3.5)]  # the evaluation past the budget is kept
    assert chunks == [(4.0, 1000), (3.0, 2000)]


def test_report_with_a_sac_peer():
    # Hopper: SAC evaluates at 0 s (before training), passes PPO's best (400) at 20 s and ends ahead of eggroll.
    runs = _runs("Hopper", "eggroll", 0, [(10, 1000), (40, 2000)]) + _runs("Hopper", "brax_ppo", 0, [(5, 300),
            (30, 400)]) + _runs("Hopper", "brax_sac", 0, [(0, 10), (20, 1500), (40, 3100)])  # fmt: skip
    cells = [_cell("Hopper", a, 0) for a in ("eggroll", "brax_ppo", "brax_sac")]
    rows = {r["agent"]: r for r in lb.summarize(runs, cells)}
    sac = rows["brax_sac"]
    assert sac["ppo_best"] == 400 and (sac["reached_ppo_best"], sac["time_to_ppo_best_s"]) == (1, 20)
    assert (sac["equal_wall_s"], sac["at_equal_wall"], sac["eggroll_at_equal_wall"]) == (40, 3100, 2000)
    assert lb.losses(list(rows.values())) == [
        "Hopper: brax_sac is ahead at equal wall clock (3,100.0 vs eggroll 2,000.0 at 40 s).",
        "Hopper: brax_sac reaches 3,000 on more seeds (40.0 s vs eggroll — s, 1/1 vs 0/1 seeds).",
    ]
    assert "Hopper: eggroll reaches Brax PPO's best (400.0) on every seed (1), at 10.0 s (mean)." in lb.wins(
        list(rows.values())
    )


def test_brax_sac_cell_on_the_cpu(tmp_path):
    """One brax_sac cell end to end through the harness's subprocess, on Brax's trivial ``fast`` env (an episode's
    return is known in closed form; the physics envs spend about a minute compiling on a CPU): three evaluations, at
    0 steps (before training), after the prefill of 8 x 16 steps and 60 x 16 training steps, and at 2048."""
    pytest.importorskip("brax")
    overrides = dict(num_timesteps=2048, num_evals=3, num_envs=16, batch_size=32, grad_updates_per_step=2,
                     min_replay_size=128, max_replay_size=4096)  # fmt: skip
    argv = ["--tier", "gpu", "--envs", "brax:fast", "--agents", "brax_sac", "--seeds", "1", "--budget-s", "300",
            "--backend", "brax", "--device", "cpu", "--episode-length", "20", "--no-plot", "--out", str(tmp_path),
            *[f for k, v in overrides.items() for f in ("--override", f"{k}={v}")]]  # fmt: skip
    assert lb.main(argv) == 0
    (cell,) = lb._read_jsonl(tmp_path / "cells.jsonl")
    assert cell["status"] == "ok", cell["error"]
    assert cell["stopped"] == "num_timesteps" and cell["num_evals"] == 3
    assert cell["config"] == dict(la._SAC_FALLBACK, **overrides, episode_length=20, env="fast",
                                  brax_backend=cell["spec"]["brax_backend"], seed=0)  # fmt: skip
    runs = lb._read_jsonl(tmp_path / "runs.jsonl")
    assert [r["env_steps"] for r in runs] == [0, 128 + 960, 2048]
    # fast: reward = position, which only grows, by at most dt * dt * t at step t (dt 0.02): over 20 steps the return
    # is at most dt^2 * 20 * 21 * 22 / 6 = 0.616
    assert all(0.0 <= r["eval_return"] <= 0.02**2 * 20 * 21 * 22 / 6 + 1e-6 for r in runs)
    assert [r["eval_length"] for r in runs] == [20.0] * 3  # Brax's evaluator: fast never ends early
    assert cell["steps_per_s"] > 0 and cell["compile_s"] is not None


def test_only_seeds_picks_seeds_of_the_grid():
    gpu = lb.TIERS["gpu"]
    assert lb._seeds(lb.parse_args(["--tier", "gpu"]), gpu) == [0, 1, 2]
    assert lb._seeds(lb.parse_args(["--tier", "gpu", "--only-seeds", "2", "1", "2"]), gpu) == [1, 2]
    assert lb._seeds(lb.parse_args(["--seeds", "5", "--only-seeds", "4"]), gpu) == [4]
    with pytest.raises(SystemExit, match=r"--only-seeds \[3\]: outside the grid's seeds \[0, 1, 2\]"):
        lb._seeds(lb.parse_args(["--tier", "gpu", "--only-seeds", "1", "3"]), gpu)


@pytest.mark.slow
def test_openes_trains_in_the_jax_loop_where_eggroll_does(tmp_path):
    """Where eggroll's config takes the JAX rollout (Brax), the full-rank peer plays its dense members through
    ``jax_rows_rollout`` and evaluates in the JAX loop, so the two differ in the noise's rank alone. On short
    InvertedPendulum episodes (return = steps alive: whole numbers) the same cell stepped from torch gives the same
    training and so the same evaluations."""
    pytest.importorskip("brax")
    import time

    def run(rollout):
        overrides = dict(rollout=rollout, population=8, hidden_sizes=(8,), sigma=0.5, lr=1.0, eval_episodes=4,
                         generations=3, eval_every=1, cpu_threads=1)  # fmt: skip
        cell = lb.Cell("InvertedPendulum", "openes", 0, 1e9, "brax", "spring", 30, "cpu", overrides)
        emit = lb._Emitter(time.perf_counter(), tmp_path / f"{rollout}.jsonl")
        result = la.run_openes(cell, 1e9, emit)
        emit.file.close()
        return result, [(r["env_steps"], r["eval_return"]) for r in lb._read_jsonl(tmp_path / f"{rollout}.jsonl")]

    jax_result, jax_evals = run("jax")
    torch_result, torch_evals = run("torch")
    assert (jax_result["config"]["rollout"], torch_result["config"]["rollout"]) == ("jax", "torch")
    assert len(jax_evals) == 3 and jax_evals == torch_evals
    assert len({ret for _, ret in jax_evals}) > 1  # the policy changed between evaluations: updates were applied
