"""The Triton kernels against their pure-torch twins under the Triton interpreter (CPU; runs in CI).

``TRITON_INTERPRET`` must be set before Triton decorates the kernels, and must not change how other test folders
run: the checks live in ``interp_cases.py`` and run once, in a subprocess with the variable set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def results() -> dict:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("interp_cases.py"))],
        env=env, capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"interp_cases.py failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_case_within_tolerance(results):
    failures = []
    for name, r in results.items():
        if "error" in r:
            failures.append(f"{name}: raised\n{r['error']}")
        elif not r["err"] <= r["tol"]:
            failures.append(f"{name}: err {r['err']:.3g} > tol {r['tol']:.3g}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(
    "prefix,count",
    [
        ("words", 3), ("stream", 4), ("forward", 35), ("lowrank_update", 4), ("lowrank_apply", 2),
        ("vector_update", 3), ("bad input", 7),
    ],  # fmt: skip
)
def test_case_group(results, prefix, count):
    group = {k: v for k, v in results.items() if k.startswith(prefix)}
    assert len(group) == count, sorted(group)
    bad = {k: v for k, v in group.items() if "error" in v or not v["err"] <= v["tol"]}
    assert not bad, bad
