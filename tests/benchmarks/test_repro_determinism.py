"""benchmarks/repro_determinism.py: two runs of one config in fresh processes agree in every generation on the CPU
(the reference the GPU is checked against), and the comparison names the first generation that differs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from bench_modules import BENCHMARKS, load

rd = load("repro_determinism")


def _gen(g, mean, **changes):
    row = {"generation": g, "train_return_mean": mean, "train_return_max": 2.0, "train_return_min": 0.0,
           "grad_norm": 1.0, "update_norm": 0.5, "env_steps": 10 * (g + 1)}  # fmt: skip
    return {**row, **changes}


def test_first_difference_names_the_generation_and_the_values():
    base = [_gen(0, 1.0), _gen(1, 1.5), _gen(2, 2.0)]
    assert rd.first_difference(base, [dict(r) for r in base]) is None
    other = [_gen(0, 1.0), _gen(1, 1.5, grad_norm=1.25), _gen(2, 2.5)]
    assert rd.first_difference(base, other) == {"generation": 1, "differences": {"grad_norm": (1.0, 1.25)}}
    assert rd.first_difference(base, base[:2]) == {"generation": 2, "differences": {"length": (3, 2)}}


@pytest.mark.slow
def test_two_cpu_runs_are_identical(tmp_path):
    out = tmp_path / "repro"
    cmd = [sys.executable, str(BENCHMARKS / "repro_determinism.py"), "--env", "CartPole", "--generations", "2",
           "--runs", "2", "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((out / "report.json").read_text()) == {"run 1": None}
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [len(r["metrics"]) for r in runs] == [2, 2]
    assert runs[0]["metrics"][1]["env_steps"] > runs[0]["metrics"][0]["env_steps"] > 0
