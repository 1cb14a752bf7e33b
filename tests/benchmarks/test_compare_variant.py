"""benchmarks/compare_variant.py: a variant's cells against the board's, seed by seed, on fixed inputs."""

from __future__ import annotations

import json
import math

import pytest
from bench_modules import load

cv = load("compare_variant")


def _board(folder, cells):
    """A board folder: ``cells`` = {seed: (status, steps_per_s, [(wall_s, env_steps, return), ...])} of
    HalfCheetah x eggroll, plus a Hopper cell that must be ignored."""
    folder.mkdir()
    records, runs = [], []
    for seed, (status, rate, points) in cells.items():
        cid = f"HalfCheetah__eggroll__s{seed}"
        records.append({"cell_id": cid, "env": "HalfCheetah", "agent": "eggroll", "seed": seed, "status": status,
                        "steps_per_s": rate})  # fmt: skip
        runs += [{"cell_id": cid, "env": "HalfCheetah", "agent": "eggroll", "seed": seed, "wall_s": t,
                  "env_steps": n, "eval_return": r} for t, n, r in points]  # fmt: skip
    records.append({"cell_id": "Hopper__eggroll__s0", "env": "Hopper", "agent": "eggroll", "seed": 0, "status": "ok"})
    runs.append({"cell_id": "Hopper__eggroll__s0", "env": "Hopper", "agent": "eggroll", "seed": 0, "wall_s": 1.0,
                 "env_steps": 1, "eval_return": 1e9})  # fmt: skip
    (folder / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (folder / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    return folder


@pytest.fixture
def boards(tmp_path):
    base = _board(tmp_path / "base", {
        0: ("ok", 1e6, [(60, 100, 1000.0), (120, 200, 3000.0), (180, 300, 5000.0)]),
        1: ("timeout", 1e6, [(60, 100, 500.0), (120, 200, 1500.0), (180, 300, 2500.0)]),
        2: ("ok", 1e6, [(60, 100, 9.0)]),  # only in the base: left out
    })  # fmt: skip
    variant = _board(tmp_path / "variant", {
        0: ("ok", 2e6, [(60, 200, 2000.0), (120, 400, 4000.0), (180, 600, 4500.0)]),
        1: ("ok", 2e6, [(90, 200, 1000.0), (150, 400, 3000.0)]),
        3: ("error", 2e6, [(60, 200, 7.0)]),  # a failed cell: not usable
    })  # fmt: skip
    return base, variant


def test_rows_pair_each_common_seed_at_equal_wall_clock_and_env_steps(boards):
    rows, only = cv.compare(*boards, "HalfCheetah", times=[90.0, 150.0], steps=[200.0], thresholds=[2000.0, 4800.0])
    assert only == [2]
    s0, s1, mean = rows
    assert s0["seed"] == 0 and s1["seed"] == 1 and mean["seed"] == "mean"
    # seed 0 at 90 s: base halfway from 1000 to 3000, variant halfway from 2000 to 4000; at 150 s: 4000 / 4250
    assert s0["wall"] == [(2000.0, 3000.0), (4000.0, 4250.0)]
    assert s0["steps"] == [(3000.0, 2000.0)]  # at 200 env steps
    assert s0["first"] == [(120, 60), (180, None)]
    assert s0["final"] == (5000.0, 4500.0) and s0["steps_per_s"] == (1e6, 2e6)
    # seed 1: the variant's first evaluation is at 90 s, so at 90 s it has 1000; at 150 s base 2000, variant 3000
    assert s1["wall"] == [(1000.0, 1000.0), (2000.0, 3000.0)]
    assert s1["first"] == [(180, 150), (None, None)]
    assert mean["wall"] == [(1500.0, 2000.0), (3000.0, 3625.0)]
    assert mean["first"][0] == (150.0, 105.0)
    assert all(math.isnan(v) for v in mean["first"][1])  # no seed reached 4800: no mean
    assert mean["final"] == (3750.0, 3750.0)


def test_markdown_and_command_line(boards, capsys):
    base, variant = boards
    assert cv.main(["--base", str(base), "--variant", str(variant), "--env", "HalfCheetah", "--times", "150",
                    "--thresholds", "4800"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "| seed | 150 s | first ≥ 4800 (s) | final | env steps/s |" in out
    assert "| 0 | 4,000 / 4,250 | 180 / — | 5,000 / 4,500 | 1.00M / 2.00M |" in out
    assert "| mean | 3,000 / 3,625 | — / — | 3,750 / 3,750 | 1.00M / 2.00M |" in out
    assert "Seeds in one folder only (left out): [2]" in out


def test_a_folder_without_cells_or_common_seeds_is_an_error(boards, tmp_path, capsys):
    base, variant = boards
    with pytest.raises(SystemExit):
        cv.main(["--base", str(tmp_path / "nowhere"), "--variant", str(variant), "--env", "HalfCheetah"])
    assert "--base" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cv.main(["--base", str(base), "--variant", str(variant), "--env", "Ant"])
    assert "no seed of Ant x eggroll is in both folders" in capsys.readouterr().err
