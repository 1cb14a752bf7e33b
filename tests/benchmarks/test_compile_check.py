"""Every Triton kernel launch compiles for the H100/H200 (sm_90) with this machine's Triton, no GPU needed
(benchmarks/compile_check.py): the interpreter runs these kernels as Python and cannot see compile errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from bench_modules import BENCHMARKS

pytest.importorskip("triton")


def test_every_kernel_branch_compiles_for_sm90(tmp_path):
    # the compile phase needs Triton's compiler: a process without the test session's TRITON_INTERPRET
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(BENCHMARKS.parent), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, str(BENCHMARKS / "compile_check.py"), "--quick", "--out", str(tmp_path)],
                         env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((tmp_path / "compile_check.json").read_text())["results"]
    assert all(r["ok"] for r in results)
    compiled = {(r["kernel"], r["constexprs"].get("NOISE")) for r in results}
    for noise in (0, 1, 2):  # the forward and the factor generator of every noise kind, on the GPU's constexprs
        assert {("lowrank_delta_kernel", noise), ("factor_stack_kernel", noise)} <= compiled
    kernels = {r["kernel"] for r in results}
    assert {"lowrank_addmm_kernel", "lowrank_adam_kernel", "vector_update_kernel"} <= kernels
    assert all(r["constexprs"]["FAST_MATH"] for r in results if "FAST_MATH" in r["constexprs"])
    assert any(r["constexprs"].get("PREFETCH_C") for r in results)
