"""benchmarks/gpu_lanes.sh on a CPU, with stand-ins for nvidia-smi, taskset and python3: each lane gets its GPU and
its share of the cores, resumes from the board, a lane beyond the machine's GPUs is skipped, and the lanes come back
packed in $OUT/lanes.tgz."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

STUBS = {
    # nvidia-smi -L lists $FAKE_GPUS GPUs
    "nvidia-smi": 'if [ "$1" = "-L" ]; then for i in $(seq 0 $((FAKE_GPUS - 1))); do echo "GPU $i: H200"; done; '
    "else echo fake; fi",
    # taskset -c CORES CMD...: records the cores, runs CMD
    "taskset": 'echo "$2" > "$STUB_LOG/cores_$CUDA_VISIBLE_DEVICES"; shift 2; exec "$@"',
    # python3 benchmarks/leaderboard.py ... --out DIR ...: records its arguments and writes a cell into DIR
    "python3": 'out=""; prev=""; for a in "$@"; do [ "$prev" = "--out" ] && out=$a; prev=$a; done; '
    'echo "$@" > "$STUB_LOG/args_$CUDA_VISIBLE_DEVICES"; echo "{\\"lane\\": \\"$CUDA_VISIBLE_DEVICES\\"}" '
    '>> "$out/cells.jsonl"; echo "[1/1] cell: ok"; echo "cells: {}"',
    "nproc": "echo 32",
}


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("tar") is None, reason="needs bash and tar")
def test_lanes_run_one_per_gpu_with_their_share_of_the_cores(tmp_path):
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, body in STUBS.items():
        (stubs / name).write_text("#!/usr/bin/env bash\n" + body + "\n")
        (stubs / name).chmod(0o755)
    log, base, out, rdir = tmp_path / "log", tmp_path / "board", tmp_path / "out", tmp_path / "lanes"
    log.mkdir()
    base.mkdir()
    (base / "cells.jsonl").write_text('{"from": "board"}\n')
    (base / "runs.jsonl").write_text("")
    env = dict(os.environ, PATH=f"{stubs}{os.pathsep}{os.environ['PATH']}", FAKE_GPUS="2", STUB_LOG=str(log),
               BASE=str(base), OUT=str(out), RDIR=str(rdir), DEADLINE="100", LEADERBOARD_GIT_SHA="abc",
               LANE0="--envs Hopper --only-seeds 1", LANE1="--envs Ant", LANE2="--envs Humanoid")  # fmt: skip
    r = subprocess.run(["bash", "benchmarks/gpu_lanes.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "lane2: not run, this machine has 2 GPU(s)" in r.stdout
    assert (log / "cores_0").read_text().split() == ["0-15"] and (log / "cores_1").read_text().split() == ["16-31"]
    args0 = (log / "args_0").read_text().split()
    assert args0[:2] == ["benchmarks/leaderboard.py", "--tier"] and args0[-4:] == [
        "--envs",
        "Hopper",
        "--only-seeds",
        "1",
    ]
    assert ["--deadline-s", "100"] == args0[args0.index("--deadline-s") : args0.index("--deadline-s") + 2]
    assert not (log / "args_2").exists()
    # each lane resumed from the board, then its cell was added; all of it came back in lanes.tgz
    with tarfile.open(out / "lanes.tgz") as tar:
        tar.extractall(tmp_path / "back", filter="data")
    for lane in ("0", "1"):
        lines = (tmp_path / "back" / f"lane{lane}" / "cells.jsonl").read_text().splitlines()
        assert lines == ['{"from": "board"}', f'{{"lane": "{lane}"}}']
