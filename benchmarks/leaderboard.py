"""Leaderboard: eggroll_rl against the agents a user would pick instead, env x agent x seed, side by side.

Every cell (one env, one agent, one seed) runs in its own subprocess with the same wall-clock budget, env, physics
backend and episode length; its clock starts before the peer's package is imported, so imports, env construction
and compilation all count. Cells are resumable (a finished cell is never rerun unless ``--rerun``), a failing peer
records its error and the board goes on, and with ``--gpus N`` N cells run at once, one per GPU (the first N of
``CUDA_VISIBLE_DEVICES``). A board built in parts (several invocations, GPUs or machines, each with its own
``--out``) is folded into one folder with ``--merge``.

    python benchmarks/leaderboard.py --quick                      # CPU tier: CartPole, Pendulum; eggroll, openes
    python benchmarks/leaderboard.py --tier gpu --gpus 8          # Brax locomotion suite, every agent, 600 s cells
    python benchmarks/leaderboard.py --tier gpu --merge A B --out C   # fold boards built in parts into one

Outputs (``--out``, default ``benchmarks/results/leaderboard/``): ``runs.jsonl`` (one line per evaluation),
``cells.jsonl`` (one line per finished or failed cell), ``board.json`` (machine and versions), ``compare.md`` /
``compare.csv`` (per env x agent) and ``<env>.png`` (return vs wall clock and vs env steps). The adapters are in
``leaderboard_agents.py``; docs/leaderboard.md explains the columns.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import importlib
import json
import math
import os
import queue
import shlex
import shutil
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "results" / "leaderboard"

# Return at which an env counts as solved (gymnasium's reward thresholds), as data.
THRESHOLDS: dict[str, float] = {
    "CartPole": 475.0,
    "Pendulum": -200.0,
    "HalfCheetah": 4800.0,
    "Ant": 6000.0,
    "Hopper": 3000.0,
    "Walker2d": 3000.0,
    "Humanoid": 5000.0,
}
# Brax's alive bonus per step (``healthy_reward``) of the envs that pay one: a return without it says whether the
# policy moves or only stays up. Taken out of the mean return with the evaluation's mean length (``eval_length``).
ALIVE_BONUS: dict[str, float] = {"Ant": 1.0, "Hopper": 1.0, "Walker2d": 1.0, "Humanoid": 5.0}
# Episode length of the torch-native envs (their own time limits); Brax envs get BRAX_EPISODE_LENGTH.
EPISODE_LENGTHS: dict[str, int] = {"CartPole": 500, "Pendulum": 200, "Acrobot": 500, "MountainCarContinuous": 999}
BRAX_EPISODE_LENGTH = 1000


@dataclass(frozen=True)
class Tier:
    """A preset grid."""

    envs: tuple[str, ...]
    agents: tuple[str, ...]
    seeds: int
    budget_s: float
    backend: str
    device: str
    overrides: dict[str, Any] = field(default_factory=dict)
    """TrainConfig fields set for every agent of the tier."""
    agent_envs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Agents planned on only these envs (canonical names; the other agents run on every env). It holds unless the
    command line names both the envs and the agents: ``--envs Ant --agents brax_sac`` runs brax_sac on Ant."""


TIERS: dict[str, Tier] = {
    # One torch thread for every agent: with torch's default threads eggroll's CPU path ran a Pendulum generation
    # about 30x slower on a 2-core machine (see quick_cpu/compare.md), which would measure the threading, not ES.
    "quick": Tier(
        ("CartPole", "Pendulum"), ("eggroll", "openes"), seeds=2, budget_s=10.0, backend="torch", device="cpu",
        overrides={"cpu_threads": 1},
    ),
    # brax_sac only where Brax publishes SAC settings (leaderboard_agents.BRAX_SAC_SETTINGS).
    "gpu": Tier(
        ("HalfCheetah", "Ant", "Hopper", "Walker2d", "Humanoid"),
        ("eggroll", "openes", "brax_ppo", "brax_sac", "brax_es", "evosax"),
        seeds=3, budget_s=600.0, backend="brax", device="cuda", agent_envs={"brax_sac": ("Hopper", "Walker2d")},
    ),
}  # fmt: skip


@dataclass
class Cell:
    """One run of the board: what every agent of an env shares, plus the agent and the seed."""

    env: str
    agent: str
    """A name in ``leaderboard_agents.AGENTS`` or ``module:function`` (an adapter outside this file)."""
    seed: int
    budget_s: float
    backend: str
    """Env backend: torch (torch-native) or brax."""
    brax_backend: str | None
    episode_length: int
    device: str
    overrides: dict[str, Any] = field(default_factory=dict)
    """TrainConfig fields changed for every ES agent (and the Brax PPO/SAC settings of the same name), e.g. a small
    population for a CPU smoke test."""

    @property
    def cell_id(self) -> str:
        return f"{self.env}__{self.agent.replace(':', '.')}__s{self.seed}"

    def spec(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def make_cells(
    envs: list[str], agents: list[str], seeds: list[int], budget_s: float, backend: str, device: str,
    brax_backend: str | None = None, episode_length: int = 0, overrides: dict[str, Any] | None = None,
    agent_envs: dict[str, tuple[str, ...]] | None = None,
) -> list[Cell]:  # fmt: skip
    """The grid, env-major, seeds innermost; each env's physics backend is eggroll_rl's default for it unless
    ``brax_backend`` is given. An agent in ``agent_envs`` runs only on the envs it lists (canonical names)."""
    from eggroll_rl.agents.config import ENV_DEFAULTS, TrainConfig, _canonical_env_key
    from eggroll_rl.envs.registry import resolve_env

    cells = []
    for name in envs:
        spec = resolve_env(name)
        env = spec.name if spec is not None else name  # "halfcheetah" -> "HalfCheetah": one cell id, one threshold
        phys = None
        if backend == "brax":
            phys = brax_backend or ENV_DEFAULTS.get(_canonical_env_key(env), {}).get(
                "brax_backend", TrainConfig.brax_backend
            )
        length = episode_length or (BRAX_EPISODE_LENGTH if backend == "brax" else EPISODE_LENGTHS.get(env, 1000))
        for agent in agents:
            if env not in (agent_envs or {}).get(agent, (env,)):
                continue
            for seed in seeds:
                cells.append(Cell(env, agent, seed, budget_s, backend, phys, length, device, dict(overrides or {})))
    return cells


# ======================================================================================= the cell's subprocess
class _Emitter:
    """``emit(env_steps, eval_return, eval_length=None)``: one evaluation, stamped with the cell's clock, streamed to
    a file. ``eval_length`` (the evaluation's mean episode length, where the agent reports it) lets the board take
    an alive bonus out of the return: its mean is ``eval_return - bonus * eval_length``."""

    def __init__(self, t0: float, path: Path) -> None:
        self.t0, self.file, self.count = t0, path.open("w"), 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def __call__(self, env_steps: int, eval_return: float, eval_length: float | None = None) -> None:
        line = {"wall_s": self.elapsed(), "env_steps": int(env_steps), "eval_return": float(eval_return)}
        if eval_length is not None and math.isfinite(eval_length):
            line["eval_length"] = float(eval_length)
        self.file.write(json.dumps(line) + "\n")
        self.file.flush()
        self.count += 1


def _resolve_agent(name: str) -> Any:
    import leaderboard_agents

    if name in leaderboard_agents.AGENTS:
        return leaderboard_agents.AGENTS[name]
    module, sep, func = name.partition(":")
    if not sep:
        raise ValueError(f"agent {name!r} is unknown: expected one of {list(leaderboard_agents.AGENTS)} or module:fn")
    return getattr(importlib.import_module(module), func)


def _peak_memory_mb() -> dict[str, float | None]:
    peak: dict[str, float | None] = {"peak_mem_torch_mb": None, "peak_mem_jax_mb": None}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        peak["peak_mem_torch_mb"] = torch.cuda.max_memory_allocated() / 2**20
    jax = sys.modules.get("jax")
    if jax is not None:
        try:
            stats = [d.memory_stats() or {} for d in jax.devices() if d.platform == "gpu"]
            if stats:
                peak["peak_mem_jax_mb"] = sum(s.get("peak_bytes_in_use", 0) for s in stats) / 2**20
        except Exception:  # a jax without memory_stats: leave None
            pass
    return peak


def _matmul_precision() -> dict[str, Any]:
    """How float32 matmuls ran in the frameworks the cell imported. jax's ``None`` is XLA's default, which computes
    float32 dots in TF32 on Ampere-or-later GPUs; torch's default is full float32 (``allow_tf32`` False)."""
    out: dict[str, Any] = {}
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch_tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        out["torch_float32_matmul_precision"] = torch.get_float32_matmul_precision()
    jax = sys.modules.get("jax")
    if jax is not None:
        out["jax_default_matmul_precision"] = getattr(jax.config, "jax_default_matmul_precision", None)
        try:
            out["jax_backend"] = jax.default_backend()
        except RuntimeError:
            out["jax_backend"] = None
    return out


def _package_versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in ("torch", "triton", "jax", "jaxlib", "brax", "evosax"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def worker_main(cell_dir: Path) -> int:
    """Run the cell in ``cell_dir/spec.json``; write ``evals.jsonl`` as it goes and ``result.json`` at the end."""
    t0 = time.perf_counter()  # before the peer's imports: they count
    import leaderboard_agents as la

    cell = Cell(**json.loads((cell_dir / "spec.json").read_text()))
    emit = _Emitter(t0, cell_dir / "evals.jsonl")
    result: dict[str, Any] = {"status": "ok", "error": None, "config": None, "chunks": [], "stopped": None}
    try:
        out = _resolve_agent(cell.agent)(cell, cell.budget_s, emit)
        result.update({k: out.get(k) for k in ("config", "chunks", "stopped", "eval_s")})  # eval_s: eggroll only
    except la.AgentNotInstalled as exc:
        result.update(status="skipped", error=f"not installed: {exc}")
    except Exception as exc:
        result.update(status="error", error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}")
    result["wall_s"] = emit.elapsed()
    chunks = [tuple(c) for c in result["chunks"] or []]
    result["compile_s"] = la.compile_estimate(chunks)
    result["steps_per_s"] = la.steady_steps_per_s(chunks)
    result.update(_peak_memory_mb())
    result["precision"] = _matmul_precision()
    result["versions"] = _package_versions()
    result["git_sha"] = git_sha()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        result["versions"]["device_name"] = torch.cuda.get_device_name()
    emit.file.close()
    (cell_dir / "result.json").write_text(json.dumps(result, default=str))
    return 0


# ============================================================================================ the board runner
def _launch_cell(cell_dir: Path, env: dict[str, str], timeout_s: float) -> tuple[int | None, str]:
    """Run one cell's subprocess; ``(returncode, stderr tail)``, returncode None on timeout."""
    cmd = [sys.executable, str(HERE / "leaderboard.py"), "_cell", str(cell_dir)]
    with (cell_dir / "stderr.log").open("w") as err:
        try:
            proc = subprocess.run(cmd, env=env, stdout=err, stderr=subprocess.STDOUT, timeout=timeout_s)
            code: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            code = None
    return code, (cell_dir / "stderr.log").read_text()[-2000:]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))
    tmp.replace(path)


def git_sha() -> str:
    """``$LEADERBOARD_GIT_SHA`` when the launcher set it (a lent GPU machine's copy of the tree); else HEAD's SHA
    (``+dirty`` when the package or the leaderboard scripts differ from it), else "unknown"."""
    recorded = os.environ.get("LEADERBOARD_GIT_SHA", "").strip()
    if recorded:  # the launcher knows best: a lent machine's copy may carry a stale .git of its own
        return f"{recorded} (LEADERBOARD_GIT_SHA)"
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "eggroll_rl", "benchmarks/leaderboard*.py"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()  # fmt: skip
        if head.returncode == 0 and head.stdout.strip():
            return head.stdout.strip() + ("+dirty" if dirty else "")
    except OSError:
        pass
    return "unknown (no .git here)"


def board_info(gpus: int) -> dict[str, Any]:
    """The machine and software of the board: GPU model/count, driver, CUDA, versions, TF32, git SHA."""
    import torch

    info: dict[str, Any] = {"git_sha": git_sha(), "versions": _package_versions(), "gpus_used": gpus}
    info["cuda"] = torch.version.cuda
    info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    info["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    info["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    info["jax_default_matmul_precision"] = os.environ.get("JAX_DEFAULT_MATMUL_PRECISION")  # None: XLA's default
    info["cpu_count"] = os.cpu_count()
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip().splitlines()  # fmt: skip
        info["gpu_models"] = [s.split(",")[0].strip() for s in smi]
        info["driver"] = smi[0].split(",")[1].strip() if smi else None
    except (OSError, subprocess.TimeoutExpired):
        info["gpu_models"], info["driver"] = [], None
    return info


def _cell_record(
    cell: Cell, cell_dir: Path, code: int | None, log_tail: str, timeout_s: float, deadline: bool = False
) -> dict[str, Any]:
    """The ``cells.jsonl`` record of a cell whose worker returned ``code`` (None: killed after ``timeout_s``;
    ``deadline``: that limit was the invocation's ``--deadline-s``, not the cell's own), and its evaluations."""
    evals = _read_jsonl(cell_dir / "evals.jsonl")
    path = cell_dir / "result.json"
    result = json.loads(path.read_text()) if path.exists() else None
    if result is None and code is None and deadline:
        # Cut short by the lane, not by its own time limit: it measured nothing about the agent within its budget.
        why = f"killed at the invocation's deadline after {timeout_s:.0f} s (--deadline-s); rerun next time"
        result = {"status": "deadline", "error": f"{why}; log tail:\n{log_tail}", "config": None, "wall_s": timeout_s}
    elif result is None:
        why = f"timed out after {timeout_s:.0f} s" if code is None else f"worker exited with code {code}"
        # A killed cell's streamed evaluations are real measurements: it counts (marked) until it is rerun.
        status = "timeout" if code is None and evals else "error"
        result = {"status": status, "error": f"{why}; log tail:\n{log_tail}", "config": None}
        if code is None:
            result["wall_s"] = timeout_s
    returns = [e["eval_return"] for e in evals]
    return {
        "cell_id": cell.cell_id, "env": cell.env, "agent": cell.agent, "seed": cell.seed, "spec": cell.spec(),
        **{k: v for k, v in result.items() if k != "chunks"},
        "num_evals": len(evals), "first_eval_s": evals[0]["wall_s"] if evals else None,
        "env_steps": evals[-1]["env_steps"] if evals else None, "final_return": returns[-1] if returns else None,
        "best_return": max(returns) if returns else None, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }, evals  # fmt: skip


MIN_CELL_S = 30.0  # with a deadline, a cell is not started with less time left than this
# Statuses of a cell that resume keeps (the rest are retried: "skipped" too, whose agent may be installed now);
# "timeout" cells (killed at their own time limit) count on the board until rerun; "deadline" cells (killed at an
# invocation's --deadline-s) do not count.
DONE = ("ok",)
USABLE = ("ok", "timeout")


def _gpu_slots(gpus: int) -> list[str]:
    """The GPU ids the cells run on: the first ``gpus`` of this process's ``CUDA_VISIBLE_DEVICES`` when it is set
    (so two invocations can share a machine, e.g. ``CUDA_VISIBLE_DEVICES=1 ... --gpus 1``), else 0..gpus-1."""
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if not visible:
        return [str(i) for i in range(gpus)]
    if gpus > len(visible):
        raise ValueError(f"--gpus {gpus}: only {len(visible)} GPUs in CUDA_VISIBLE_DEVICES={','.join(visible)}")
    return visible[:gpus]


def run_board(
    cells: list[Cell], out: Path, gpus: int = 0, workers: int = 1, rerun: bool = False,
    timeout_s: float | None = None, log: Any = print, max_cells: int | None = None, deadline_s: float | None = None,
) -> dict[str, int]:  # fmt: skip
    """Run every cell not already finished (all with ``rerun``; the first ``max_cells`` of them when given);
    returns counts of ok/error/skipped/timeout/kept cells (and ``left``: not started before the deadline).

    ``deadline_s``: seconds from this call after which nothing runs (a lent machine's time limit). A cell starts only
    while at least ``MIN_CELL_S`` are left, and is killed at the deadline (status "deadline": its evaluations are
    kept in its folder but do not count on the board, and the next invocation reruns it), so short cells (PPO stops
    at its step budget) fill a lane back to back."""
    start = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    finished = {r["cell_id"]: r for r in _read_jsonl(out / "cells.jsonl")}
    todo = []
    for c in cells:
        old = finished.get(c.cell_id)
        if rerun or old is None or old["status"] not in DONE or old["spec"] != c.spec():
            todo.append(c)
    counts = {"ok": 0, "error": 0, "skipped": 0, "timeout": 0, "deadline": 0, "kept": len(cells) - len(todo), "left": 0}
    if max_cells is not None:
        todo = todo[:max_cells]  # the rest waits for the next invocation
    log(f"board: {len(cells)} cells, {counts['kept']} already finished, {len(todo)} to run -> {out}")
    jobs: queue.Queue[Cell] = queue.Queue()
    for c in todo:
        jobs.put(c)
    slots = _gpu_slots(gpus) if gpus else [None] * max(workers, 1)
    done_count = [0]

    def worker(slot: str | None) -> None:
        while True:
            try:
                cell = jobs.get_nowait()
            except queue.Empty:
                return
            left = None if deadline_s is None else deadline_s - (time.monotonic() - start)
            if left is not None and left < MIN_CELL_S:
                with lock:
                    counts["left"] += 1
                    log(f"{cell.cell_id}: not started, {max(left, 0):.0f} s left before the deadline")
                continue
            cell_dir = out / "cells" / cell.cell_id
            cell_dir.mkdir(parents=True, exist_ok=True)
            for name in ("evals.jsonl", "result.json"):
                (cell_dir / name).unlink(missing_ok=True)
            (cell_dir / "spec.json").write_text(json.dumps(cell.spec()))
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE), os.environ.get("PYTHONPATH", "")]))
            env["CUDA_VISIBLE_DEVICES"] = (
                "" if cell.device == "cpu" else (slot if slot is not None else _gpu_slots(1)[0])
            )
            env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch and jax share a GPU in some cells
            if cell.device == "cpu":
                env["JAX_PLATFORMS"] = "cpu"
            limit = timeout_s if timeout_s is not None else 1.5 * cell.budget_s + 120.0
            by_deadline = left is not None and left < limit
            if by_deadline:
                limit = left  # killed at the deadline
            started = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "limit_s": limit}
            (cell_dir / "started.json").write_text(json.dumps(started))  # for recover_killed_cells
            code, tail = _launch_cell(cell_dir, env, limit)
            record, evals = _cell_record(cell, cell_dir, code, tail, limit, deadline=by_deadline)
            with lock:
                _store_cell(out, cell, record, evals)
                counts[record["status"]] += 1
                done_count[0] += 1
                final = record["final_return"]
                what = f"final {final:.1f}" if final is not None else "no evaluation"
                err = f" — {record['error'].splitlines()[0]}" if record.get("error") else ""
                log(f"[{done_count[0]}/{len(todo)}] {cell.cell_id}: {record['status']}, {what}, "
                    f"{record.get('wall_s') or 0:.1f} s{err}")  # fmt: skip

    threads = [threading.Thread(target=worker, args=(s,)) for s in slots]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return counts


def _store_cell(folder: Path, cell: Cell, record: dict[str, Any], evals: list[dict[str, Any]]) -> None:
    """Put a cell's record in ``cells.jsonl`` and its evaluations in ``runs.jsonl``, replacing any it had there."""
    runs = [r for r in _read_jsonl(folder / "runs.jsonl") if r["cell_id"] != cell.cell_id]
    runs += [{"cell_id": cell.cell_id, "env": cell.env, "agent": cell.agent, "seed": cell.seed, **e} for e in evals]
    _write_jsonl(folder / "runs.jsonl", runs)
    rows = [r for r in _read_jsonl(folder / "cells.jsonl") if r["cell_id"] != cell.cell_id] + [record]
    _write_jsonl(folder / "cells.jsonl", rows)


RECOVERED_SHARE = 0.9  # a cell killed from outside counts when its last evaluation is past this share of its budget


def recover_killed_cells(folder: Path, log: Any = print) -> list[str]:
    """Write the records of cells that were killed from outside the harness (the machine's time limit, the
    harness itself killed): their folder has ``started.json`` and streamed evaluations but no ``result.json`` and
    no record newer than that start. Such a cell is recorded as "timeout" (counted, marked, rerun on resume) when
    its last evaluation is past ``RECOVERED_SHARE`` of its budget, else as "deadline" (kept, not counted); its
    ``error`` says what happened. A cell with no evaluation is left alone (the next invocation reruns it).
    Returns the ids recovered."""
    records = {r["cell_id"]: r for r in _read_jsonl(folder / "cells.jsonl")}
    recovered = []
    for cell_dir in sorted((folder / "cells").glob("*/")):
        started_path = cell_dir / "started.json"
        if not started_path.exists() or (cell_dir / "result.json").exists():
            continue
        started = json.loads(started_path.read_text())
        held = records.get(cell_dir.name)
        if held is not None and (held.get("finished_at") or "") >= started["started_at"]:
            continue  # the harness recorded this run itself
        evals = _read_jsonl(cell_dir / "evals.jsonl")
        if not evals:
            continue
        cell = Cell(**json.loads((cell_dir / "spec.json").read_text()))
        log_path = cell_dir / "stderr.log"
        tail = log_path.read_text()[-2000:] if log_path.exists() else ""
        last = evals[-1]["wall_s"]
        record, _ = _cell_record(cell, cell_dir, None, tail, last)
        counted = last >= RECOVERED_SHARE * cell.budget_s
        record["status"] = "timeout" if counted else "deadline"
        record["error"] = (
            f"killed from outside the harness (no result written; e.g. the machine's time limit) after its last "
            f"evaluation at {last:.0f} s of its {cell.budget_s:.0f} s budget; its evaluations are kept and "
            + ("count until it is rerun" if counted else f"do not count (less than {RECOVERED_SHARE:.0%} of the "
               "budget); rerun next time") + f"; log tail:\n{tail}"
        )  # fmt: skip
        mtime = (cell_dir / "evals.jsonl").stat().st_mtime
        record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(mtime))
        _store_cell(folder, cell, record, evals)
        recovered.append(cell.cell_id)
        log(f"recovered {cell.cell_id}: killed from outside after {last:.0f} s, recorded as {record['status']}")
    return recovered


def merge_boards(out: Path, sources: list[Path], log: Any = print) -> dict[str, int]:
    """Fold the cells of the board folders ``sources`` into ``out`` (which may hold cells already): per cell id the
    best record wins (ok > timeout > skipped > error, then the later one), with its evaluations and its
    ``cells/<id>/`` folder; board.json's parts are concatenated. A source's cells killed from outside the harness
    are recorded first (``recover_killed_cells``). Returns counts of cells taken from the sources and of cells in
    ``out`` after the merge."""
    out.mkdir(parents=True, exist_ok=True)
    rank = {"ok": 3, "timeout": 2, "skipped": 1}

    def key(rec: dict[str, Any]) -> tuple[int, str]:
        return rank.get(rec["status"], 0), rec.get("finished_at") or ""

    best = {r["cell_id"]: (r, out) for r in _read_jsonl(out / "cells.jsonl")}
    parts = _board_parts(out)
    for src in sources:
        if src.resolve() == out.resolve():
            continue
        recover_killed_cells(src, log)  # first: a lane whose only cell was killed has no cells.jsonl until then
        if not (src / "cells.jsonl").exists():
            raise FileNotFoundError(f"--merge {src}: no cells.jsonl there; expected a board folder written by --out")
        for rec in _read_jsonl(src / "cells.jsonl"):
            held = best.get(rec["cell_id"])
            if held is None or key(rec) > key(held[0]):
                best[rec["cell_id"]] = (rec, src)
        parts += _board_parts(src)
    runs_of = {folder: _read_jsonl(folder / "runs.jsonl") for folder in {src for _, src in best.values()}}
    taken = 0
    for cell_id, (_, src) in best.items():
        if src == out:
            continue
        taken += 1
        if (src / "cells" / cell_id).is_dir():
            shutil.rmtree(out / "cells" / cell_id, ignore_errors=True)
            shutil.copytree(src / "cells" / cell_id, out / "cells" / cell_id)
    _write_jsonl(out / "runs.jsonl", [r for cid, (_, src) in best.items() for r in runs_of[src] if r["cell_id"] == cid])
    _write_jsonl(out / "cells.jsonl", [rec for rec, _ in best.values()])
    _write_board_parts(out, parts)
    log(f"merge: {taken} cells taken from {len(sources)} folders; {len(best)} cells in {out}")
    return {"taken": taken, "cells": len(best)}


# ================================================================================================ aggregation
def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN for one value)."""
    n = len(xs)
    if n == 0:
        return math.nan, math.nan
    m = sum(xs) / n
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else math.nan


def iqm(xs: list[float]) -> float:
    """Interquartile mean: the mean after dropping floor(n/4) values from each end (rliable's trimmed mean)."""
    s = sorted(xs)
    k = len(s) // 4
    mid = s[k : len(s) - k]
    return sum(mid) / len(mid) if mid else math.nan


def value_at(curve: list[tuple[float, float]], x: float) -> float:
    """Return at ``x`` (wall seconds or env steps) of a curve ``[(x, return), ...]`` sorted by x: linear between
    evaluations, NaN before the first, the last value after the last."""
    if not curve or x < curve[0][0]:
        return math.nan
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return curve[-1][1]


def time_to_threshold(curve: list[tuple[float, float]], threshold: float) -> float | None:
    """First x at which an evaluation reached ``threshold`` (None: never)."""
    return next((x for x, y in curve if y >= threshold), None)


def curves(runs: list[dict[str, Any]], key: str = "wall_s") -> dict[tuple[str, str], dict[int, list]]:
    """``{(env, agent): {seed: [(x, return), ...]}}`` with x = ``key`` (wall_s or env_steps)."""
    out: dict[tuple[str, str], dict[int, list]] = {}
    for r in runs:
        out.setdefault((r["env"], r["agent"]), {}).setdefault(r["seed"], []).append((r[key], r["eval_return"]))
    for seeds in out.values():
        for c in seeds.values():
            c.sort()
    return out


def _equal_wall(mine: dict[int, list], eggroll: dict[int, list]) -> dict[str, float]:
    """This agent's and eggroll's mean return at the same wall clock: the latest time both have evaluated on every
    seed (the earliest last evaluation among both agents' seeds), so a cell killed early or overrunning its budget is
    compared with eggroll where both were measured. NaN when there is no such time."""
    nan = {"equal_wall_s": math.nan, "at_equal_wall": math.nan, "eggroll_at_equal_wall": math.nan}
    if not mine or not eggroll:
        return nan
    t = min(c[-1][0] for c in [*mine.values(), *eggroll.values()])
    at = mean_std([value_at(c, t) for c in mine.values()])[0]
    egg = mean_std([value_at(c, t) for c in eggroll.values()])[0]
    return nan if math.isnan(at) or math.isnan(egg) else {"equal_wall_s": t, "at_equal_wall": at,
                                                          "eggroll_at_equal_wall": egg}  # fmt: skip


def summarize(runs: list[dict], cells: list[dict], planned: dict[tuple[str, str], int] | None = None) -> list[dict]:
    """One row per env x agent from the ok cells (and timed-out ones, marked): seeds, final return mean/std/IQM,
    return at half the budget, time to the env's threshold and to Brax PPO's best, compile time, steps/s, peak
    memory, minutes; ``status`` says what failed, timed out or has not run (``planned`` minus recorded cells)."""
    ok = [c for c in cells if c["status"] in USABLE]
    by_wall = curves([r for r in runs if any(c["cell_id"] == r["cell_id"] for c in ok)])
    ppo_best: dict[str, float] = {}
    for (env, agent), seeds in by_wall.items():
        if agent == "brax_ppo":
            ppo_best[env] = mean_std([max(y for _, y in c) for c in seeds.values()])[0]
    keys = sorted({(c["env"], c["agent"]) for c in cells} | set(planned or {}))
    last_of = {r["cell_id"]: r for r in runs}  # runs are in evaluation order: the last one per cell wins
    rows = []
    for env, agent in keys:
        group = [c for c in ok if (c["env"], c["agent"]) == (env, agent)]
        seeds = by_wall.get((env, agent), {})
        finals = [seeds[c["seed"]][-1][1] for c in group if c["seed"] in seeds]
        lasts = [last_of[c["cell_id"]] for c in group if c["cell_id"] in last_of]
        # the seeds whose last evaluation reports its mean episode length (older cells and some peers do not)
        measured = [r for r in lasts if r.get("eval_length") is not None] if env in ALIVE_BONUS else []
        budget = group[0]["spec"]["budget_s"] if group else math.nan
        thr = THRESHOLDS.get(env)
        reach = [time_to_threshold(seeds[s], thr) for s in seeds] if thr is not None else []
        reach_ppo = [time_to_threshold(seeds[s], ppo_best[env]) for s in seeds] if env in ppo_best else []
        m, sd = mean_std(finals)
        failed = [c for c in cells if (c["env"], c["agent"]) == (env, agent) and c["status"] not in USABLE]
        killed = [c for c in group if c["status"] == "timeout"]
        cut = {c["seed"] for c in killed}
        planned_n = (planned or {}).get((env, agent), len(finals))
        budgets = {c["spec"]["budget_s"] for c in ok if c["env"] == env}
        notes = sorted({f"{c['status']}: {(c['error'] or '').splitlines()[0][:80]}" for c in failed})
        if killed:
            notes.append(f"{len(killed)} killed at the cell time limit (evaluations up to then kept)")
        if planned_n > len(group) + len(failed):
            notes.append(f"not run: {planned_n - len(group) - len(failed)}")
        if len(budgets) > 1:
            notes.append(f"budgets differ across this env's cells: {sorted(budgets)}")

        def avg(name: str, group: list[dict] = group) -> float:
            xs = [c[name] for c in group if c.get(name) is not None]
            return sum(xs) / len(xs) if xs else math.nan

        rows.append({
            "env": env, "agent": agent, "seeds": len(finals), "planned": planned_n,
            "missing": max(planned_n - len(group) - sum(c["status"] == "skipped" for c in failed), 0),
            "final_mean": m, "final_std": sd, "iqm": iqm(finals) if len(finals) >= 5 else math.nan,
            # a killed seed's return is unknown after its last evaluation: it is not held there
            "at_half_budget": mean_std([value_at(c, budget / 2) for s, c in seeds.items()
                                        if s not in cut or c[-1][0] >= budget / 2])[0],
            "threshold": thr, "reached": sum(t is not None for t in reach),
            "time_to_threshold_s": mean_std([t for t in reach if t is not None])[0],
            "ppo_best": ppo_best.get(env), "reached_ppo_best": sum(t is not None for t in reach_ppo),
            "time_to_ppo_best_s": mean_std([t for t in reach_ppo if t is not None])[0],
            "compile_s": avg("compile_s"), "first_eval_s": avg("first_eval_s"), "steps_per_s": avg("steps_per_s"),
            "peak_mem_torch_mb": avg("peak_mem_torch_mb"), "peak_mem_jax_mb": avg("peak_mem_jax_mb"),
            "last_eval_s": mean_std([c[-1][0] for c in seeds.values()])[0],
            **_equal_wall(seeds, by_wall.get((env, "eggroll"), {})),
            "minutes": avg("wall_s") / 60, "budget_s": budget, "status": "; ".join(notes),
            # the last evaluation less the alive bonus, over the seeds that report their length (NaN if none does)
            "no_bonus_seeds": len(measured),
            "final_length": mean_std([r["eval_length"] for r in measured])[0],
            "final_measured": mean_std([r["eval_return"] for r in measured])[0],
            "final_no_bonus": mean_std([r["eval_return"] - ALIVE_BONUS[env] * r["eval_length"] for r in measured])[0],
        })  # fmt: skip
    return rows


# ==================================================================================================== report
def _fmt(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:,.{digits}f}" if isinstance(x, float) else str(x)


def _eggroll_and_peers(rows: list[dict]):
    """``(env, eggroll's row, the rows of the peers with seeds)`` for every env where eggroll has seeds."""
    for env in sorted({r["env"] for r in rows}):
        mine = next((r for r in rows if r["env"] == env and r["agent"] == "eggroll" and r["seeds"]), None)
        if mine is not None:
            yield env, mine, [r for r in rows if r["env"] == env and r["agent"] != "eggroll" and r["seeds"]]


def _threshold_lead(a: dict, b: dict) -> str | None:
    """How row ``a`` reaches the env's threshold ahead of row ``b``: "on more seeds" (a larger share of its seeds:
    rows may have run different numbers), "sooner" (the same share, above 0, in a smaller mean time), or None."""
    share_a, share_b = a["reached"] / max(a["seeds"], 1), b["reached"] / max(b["seeds"], 1)
    if share_a > share_b:
        return "on more seeds"
    if share_a == share_b > 0 and a["time_to_threshold_s"] < b["time_to_threshold_s"]:
        return "sooner"
    return None


def losses(rows: list[dict]) -> list[str]:
    """Plain sentences: every env where a peer is ahead of eggroll at equal wall clock (``_equal_wall``), or reaches
    the threshold with more seeds, or with as many seeds sooner; and where eggroll does not reach Brax PPO's best on
    every seed."""
    out = []
    for env, mine, peers in _eggroll_and_peers(rows):
        for r in peers:
            if r["at_equal_wall"] > r["eggroll_at_equal_wall"]:  # NaN compares False: no common time, no claim
                out.append(f"{env}: {r['agent']} is ahead at equal wall clock ({_fmt(r['at_equal_wall'])} vs eggroll "
                           f"{_fmt(r['eggroll_at_equal_wall'])} at {r['equal_wall_s']:.0f} s).")  # fmt: skip
            how = _threshold_lead(r, mine)
            if how:
                out.append(f"{env}: {r['agent']} reaches {_fmt(r['threshold'], 0)} {how} "
                           f"({_fmt(r['time_to_threshold_s'])} s vs eggroll {_fmt(mine['time_to_threshold_s'])} s, "
                           f"{r['reached']}/{r['seeds']} vs {mine['reached']}/{mine['seeds']} seeds).")  # fmt: skip
        if mine["ppo_best"] is not None and mine["reached_ppo_best"] < mine["seeds"]:
            out.append(f"{env}: eggroll reaches Brax PPO's best ({_fmt(mine['ppo_best'])}) on only "
                       f"{mine['reached_ppo_best']}/{mine['seeds']} seeds in {mine['budget_s']:.0f} s.")  # fmt: skip
    return out


def wins(rows: list[dict]) -> list[str]:
    """The other side of ``losses``: every env where eggroll is ahead of a peer at equal wall clock, ends the
    same budget higher (mean final return over seeds), or reaches the threshold with more seeds, or with as many
    seeds sooner; and where it reaches Brax PPO's best on every seed."""
    out = []
    for env, mine, peers in _eggroll_and_peers(rows):
        for r in peers:
            if r["eggroll_at_equal_wall"] > r["at_equal_wall"]:  # NaN compares False
                out.append(f"{env}: eggroll is ahead of {r['agent']} at equal wall clock "
                           f"({_fmt(r['eggroll_at_equal_wall'])} vs {_fmt(r['at_equal_wall'])} at "
                           f"{r['equal_wall_s']:.0f} s).")  # fmt: skip
            if mine["final_mean"] > r["final_mean"]:
                out.append(f"{env}: eggroll ends the {mine['budget_s']:.0f} s budget higher than {r['agent']} "
                           f"({_fmt(mine['final_mean'])} vs {_fmt(r['final_mean'])}, mean final return of "
                           f"{mine['seeds']} vs {r['seeds']} seeds).")  # fmt: skip
            how = _threshold_lead(mine, r)
            if how:
                out.append(f"{env}: eggroll reaches {_fmt(mine['threshold'], 0)} {how} than {r['agent']} "
                           f"({_fmt(mine['time_to_threshold_s'])} s vs {_fmt(r['time_to_threshold_s'])} s, "
                           f"{mine['reached']}/{mine['seeds']} vs {r['reached']}/{r['seeds']} seeds).")  # fmt: skip
        if mine["ppo_best"] is not None and mine["reached_ppo_best"] == mine["seeds"]:
            out.append(f"{env}: eggroll reaches Brax PPO's best ({_fmt(mine['ppo_best'])}) on every seed "
                       f"({mine['seeds']}), at {_fmt(mine['time_to_ppo_best_s'])} s (mean).")  # fmt: skip
    return out


COLUMNS = [
    "env", "agent", "seeds", "planned", "missing", "final_mean", "final_std", "iqm", "at_half_budget", "threshold",
    "reached", "time_to_threshold_s", "ppo_best", "reached_ppo_best", "time_to_ppo_best_s", "compile_s", "first_eval_s",
    "steps_per_s", "peak_mem_torch_mb", "peak_mem_jax_mb", "last_eval_s", "equal_wall_s",
    "at_equal_wall", "eggroll_at_equal_wall", "minutes", "budget_s", "status", "final_length", "final_measured",
    "final_no_bonus", "no_bonus_seeds",
]  # fmt: skip


def _board_parts(out: Path) -> list[dict[str, Any]]:
    """Every invocation (or merged folder) that ran cells into ``out``, oldest first (``board.json``'s ``parts``)."""
    path = out / "board.json"
    board = json.loads(path.read_text()) if path.exists() else {}
    return board.get("parts") or ([board] if board else [])


def _write_board_parts(out: Path, parts: list[dict[str, Any]]) -> None:
    unique: dict[str, dict[str, Any]] = {}
    for p in parts:
        unique.setdefault(json.dumps({k: v for k, v in p.items() if k != "parts"}, sort_keys=True, default=str), p)
    parts = [{k: v for k, v in p.items() if k != "parts"} for p in unique.values()]
    # the top level is the latest part, as older readers of board.json expect
    (out / "board.json").write_text(json.dumps({**(parts[-1] if parts else {}), "parts": parts}, indent=1))


def _machine_line(part: dict[str, Any]) -> str:
    v = part.get("versions", {})
    return (
        f"GPUs {part.get('gpu_models') or 'none (CPU)'} × {part.get('gpus_used', 0)} used, driver "
        f"{part.get('driver')}, CUDA {part.get('cuda')}, {part.get('cpu_count')} CPU cores. torch {v.get('torch')}, "
        f"triton {v.get('triton')}, jax {v.get('jax')}, brax {v.get('brax')}, evosax {v.get('evosax')}. "
        f"Git {part.get('git_sha')}."
    )  # fmt: skip


def _precision_line(cells: list[dict[str, Any]], parts: list[dict[str, Any]]) -> str:
    """Per agent, how its float32 matmuls ran (from its cells' ``precision``), in one sentence."""
    per_agent: dict[str, set[str]] = {}
    for c in cells:
        prec = c.get("precision")
        if c["status"] not in USABLE or not prec:
            continue
        bits = []
        if "torch_tf32_matmul" in prec:
            bits.append(f"torch TF32 {'on' if prec['torch_tf32_matmul'] else 'off'}")
        if "jax_default_matmul_precision" in prec:
            jp = prec["jax_default_matmul_precision"]
            bits.append(f"jax on {prec.get('jax_backend')} precision {jp or 'XLA default'}")
        per_agent.setdefault(c["agent"], set()).add(", ".join(bits) or "neither torch nor jax")
    said = "; ".join(f"{a}: {' | '.join(sorted(v))}" for a, v in sorted(per_agent.items()))
    if not said and parts:  # cells from before the harness recorded it: the launcher's own torch setting
        said = f"not recorded by the cells; the launcher's torch TF32 matmul was {parts[-1].get('tf32_matmul')}"
    return (
        f"Float32 matmuls as the cells ran them — {said or 'not recorded'}. (XLA's default computes float32 dots "
        "in TF32 on Ampere-or-later GPUs; torch's default is full float32.)"
    )


def _ppo_cell(r: dict[str, Any]) -> str:
    return "—" if r["ppo_best"] is None else f"{_fmt(r['time_to_ppo_best_s'])} ({r['reached_ppo_best']}/{r['seeds']})"


def _vs_eggroll(r: dict[str, Any]) -> str:
    if r["agent"] == "eggroll" or math.isnan(r["equal_wall_s"]):
        return "—"
    return f"{_fmt(r['at_equal_wall'])} vs {_fmt(r['eggroll_at_equal_wall'])} @ {r['equal_wall_s']:.0f} s"


def write_report(out: Path, planned: dict[tuple[str, str], int] | None = None, plot: bool = True) -> list[dict]:
    """compare.csv, compare.md and one PNG per env from runs.jsonl, cells.jsonl and board.json (whose parts carry
    each invocation's command and machine); returns the rows."""
    runs, cells = _read_jsonl(out / "runs.jsonl"), _read_jsonl(out / "cells.jsonl")
    rows = summarize(runs, cells, planned)
    with (out / "compare.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    parts = _board_parts(out)
    lines = ["# Leaderboard", ""]
    if len(parts) <= 1:
        part = parts[0] if parts else {}
        lines += [f"Command: `{part.get('command', '?')}`", "", f"Machine: {_machine_line(part)}", ""]
    else:
        lines += [f"Built in {len(parts)} parts (invocations, or folders merged with `--merge`):", ""]
        lines += [f"{i}. `{p.get('command', '?')}` ({p.get('started_at', '?')}): {_machine_line(p)}"
                  for i, p in enumerate(parts, 1)] + [""]  # fmt: skip
    shas = sorted({c.get("git_sha") or "?" for c in cells if c["status"] in USABLE})
    if len(shas) > 1:
        lines += [f"Cells ran at {len(shas)} git revisions: {', '.join(shas)}.", ""]
    lines += [_precision_line(cells, parts), ""]
    if any(r["missing"] for r in rows):
        missing = [f"{r['env']}/{r['agent']} ×{r['missing']}" for r in rows if r["missing"]]
        lines += [f"**Partial board**: {sum(r['missing'] for r in rows)} of {sum(r['planned'] for r in rows)} "
                  f"planned cells have no result yet (not run, failed or killed before an evaluation): "
                  f"{', '.join(missing)}. Rows with seeds k/n < n are incomplete.", ""]  # fmt: skip
    lines += [
        "Final return: the last evaluation of each seed (mean ± sample std over seeds; IQM with ≥ 5 seeds); "
        "'last eval s' is when it happened (past the budget: the peer's evaluation interval overran it). "
        "Times are the cell's wall clock from process start (imports, env build and compilation included). "
        "See docs/leaderboard.md for every column.", "",
        "| env | agent | seeds | final return | IQM | @ ½ budget | time to threshold (s, seeds) | "
        "time to PPO best (s, seeds) | vs eggroll @ equal wall clock | compile s | first eval s | last eval s | "
        "steps/s | peak MB torch/jax | min | failed / missing |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['env']} | {r['agent']} | {r['seeds']}/{r['planned']} | {_fmt(r['final_mean'])} ± "
            f"{_fmt(r['final_std'])} | {_fmt(r['iqm'])} | {_fmt(r['at_half_budget'])} | "
            f"{_fmt(r['time_to_threshold_s'])} ({r['reached']}/{r['seeds']} ≥ {_fmt(r['threshold'], 0)}) | "
            f"{_ppo_cell(r)} | {_vs_eggroll(r)} | "
            f"{_fmt(r['compile_s'])} | "
            f"{_fmt(r['first_eval_s'])} | {_fmt(r['last_eval_s'])} | {_fmt(r['steps_per_s'], 0)} | "
            f"{_fmt(r['peak_mem_torch_mb'], 0)}/{_fmt(r['peak_mem_jax_mb'], 0)} | {_fmt(r['minutes'], 2)} | "
            f"{r['status'] or ''} |"
        )
    bonus = [r for r in rows if not math.isnan(r["final_no_bonus"])]
    if bonus:
        lines += ["", "## Without the alive bonus", "",
                  "The final return less the env's alive bonus per step times the evaluation's mean episode length "
                  "(mean over the seeds whose evaluations report it; older cells do not): what the policy earns by "
                  "moving.", ""]  # fmt: skip
        lines += [f"- {r['env']} {r['agent']}: {_fmt(r['final_no_bonus'])} ({_fmt(r['final_measured'])} less "
                  f"{_fmt(ALIVE_BONUS[r['env']], 0)} × {_fmt(r['final_length'])} steps; {r['no_bonus_seeds']} of "
                  f"{r['seeds']} seeds)" for r in bonus]  # fmt: skip
    won, lost = wins(rows), losses(rows)
    lines += ["", "## Where eggroll wins", ""] + ([f"- {s}" for s in won] or ["- nowhere on this board."])
    lines += ["", "## Where eggroll loses", ""] + ([f"- {s}" for s in lost] or ["- nowhere on this board."])
    if (out / "notes.md").exists():  # a person's reading of this board, kept across regenerations
        lines += ["", (out / "notes.md").read_text().strip()]
    if plot:
        pngs = plot_curves(out, runs, cells)
        lines += ["", "## Curves", ""] + [f"![{p.stem}]({p.name})" for p in pngs]
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    return rows


def plot_curves(out: Path, runs: list[dict], cells: list[dict]) -> list[Path]:
    """One PNG per env: every agent's return vs wall clock and vs env steps (mean over seeds, min–max band)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    ok = {c["cell_id"] for c in cells if c["status"] == "ok"}
    runs = [r for r in runs if r["cell_id"] in ok]
    paths = []
    for env in sorted({r["env"] for r in runs}):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, key, label in ((axes[0], "wall_s", "wall clock (s)"), (axes[1], "env_steps", "env steps")):
            for (e, agent), seeds in sorted(curves(runs, key).items()):
                if e != env:
                    continue
                hi = max(c[-1][0] for c in seeds.values())
                grid = [hi * i / 200 for i in range(201)]
                ys = [[value_at(c, x) for c in seeds.values()] for x in grid]
                xs = [x for x, y in zip(grid, ys) if not any(math.isnan(v) for v in y)]
                ys = [y for y in ys if not any(math.isnan(v) for v in y)]
                (line,) = ax.plot(xs, [sum(y) / len(y) for y in ys], label=f"{agent} ({len(seeds)} seeds)")
                ax.fill_between(xs, [min(y) for y in ys], [max(y) for y in ys], color=line.get_color(), alpha=0.2)
            if env in THRESHOLDS:
                ax.axhline(THRESHOLDS[env], color="gray", ls=":", lw=1)
            ax.set_xlabel(label)
            ax.set_ylabel("eval return")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{env}: mean over seeds, band = min–max")
        fig.tight_layout()
        path = out / f"{env}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


# ======================================================================================================= CLI
def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--override {text!r}: expected KEY=VALUE (VALUE as JSON, e.g. population=32)")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tier", choices=sorted(TIERS), help="preset grid (default quick; with --report-only, the board's)")
    p.add_argument("--quick", action="store_const", const="quick", dest="tier", help="same as --tier quick")
    p.add_argument("--envs", nargs="+", help="env names (default: the tier's)")
    p.add_argument("--agents", nargs="+", help="agent names or module:function (default: the tier's)")
    p.add_argument("--seeds", type=int, help="number of seeds 0..N-1 (default: the tier's)")
    p.add_argument(
        "--only-seeds",
        type=int,
        nargs="+",
        metavar="S",
        help="run only these seeds of the grid's 0..N-1 (e.g. one seed per GPU lane); the others are left as they are",
    )
    p.add_argument("--budget-s", type=float, help="wall-clock budget of every cell in seconds (default: the tier's)")
    p.add_argument("--backend", choices=("torch", "brax"), help="env backend (default: the tier's)")
    p.add_argument("--brax-backend", help="Brax physics for every env (default: eggroll_rl's default per env)")
    p.add_argument("--episode-length", type=int, default=0, help="episode length (0: the env's own, Brax 1000)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="device of every cell (default: the tier's)")
    p.add_argument(
        "--override",
        type=_parse_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="TrainConfig field for every ES agent (and same-named Brax PPO/SAC settings), e.g. population=32",
    )
    p.add_argument("--gpus", type=int, default=0, help="run N cells at once, one per GPU (CUDA_VISIBLE_DEVICES)")
    p.add_argument("--workers", type=int, default=1, help="cells at once without --gpus (CPU)")
    p.add_argument("--timeout-s", type=float, help="kill a cell after this long (default 1.5 x budget + 120 s)")
    p.add_argument("--max-cells", type=int, help="run at most this many cells now (a machine's time limit)")
    p.add_argument(
        "--deadline-s",
        type=float,
        help="stop this invocation after this many seconds: no cell starts with less than 30 s left, running cells "
        "are killed at the deadline (status 'deadline': not counted on the board, rerun next time)",
    )
    p.add_argument("--rerun", action="store_true", help="rerun finished cells too")
    p.add_argument("--report-only", action="store_true", help="only rebuild compare.md/.csv and the plots")
    p.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="DIR",
        help="fold the cells of these board folders (e.g. one per GPU or per machine) into --out, then "
        "rebuild the report; runs no cell",
    )
    p.add_argument("--no-plot", action="store_true", help="skip the PNGs")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    return p.parse_args(argv)  # fmt: skip


# The flags that decide which cells a board plans (and so which count as missing in its report).
GRID_FLAGS = ("tier", "envs", "agents", "seeds")


def grid_of_board(out: Path, args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with each grid flag it leaves unset taken from the board's own invocations (``board.json``'s parts)
    where they all gave the same value; the rest keep the tier's defaults. So ``--report-only --out DIR`` rebuilds a
    board against the grid it was run with."""
    commands = [part.get("command", "") for part in _board_parts(out)]
    prefix = "python benchmarks/leaderboard.py"
    if not commands or any(not c.startswith(prefix) for c in commands):
        return args
    try:
        recorded = [parse_args(shlex.split(c.removeprefix(prefix))) for c in commands]
    except SystemExit:  # a command of an older harness with flags this one does not know
        return args
    resolved = argparse.Namespace(**vars(args))
    for flag in GRID_FLAGS:
        values = {json.dumps(getattr(r, flag)) for r in recorded}
        if getattr(args, flag) is None and len(values) == 1:
            setattr(resolved, flag, getattr(recorded[0], flag))
    return resolved


def _seeds(args: argparse.Namespace, tier: Tier) -> list[int]:
    """The seeds to plan: 0..N-1 (``--seeds`` or the tier's), or the ``--only-seeds`` among them."""
    seeds = list(range(args.seeds or tier.seeds))
    if not args.only_seeds:
        return seeds
    outside = sorted(set(args.only_seeds) - set(seeds))
    if outside:
        raise SystemExit(f"--only-seeds {outside}: outside the grid's seeds {seeds} (--seeds {len(seeds)})")
    return sorted(set(args.only_seeds))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        counts = merge_boards(args.out, args.merge)
        print(f"merged into {args.out}: {counts}")
    if args.report_only or args.merge:
        args = grid_of_board(args.out, args)  # the grid the (merged) board was run with, where flags leave it open
    tier = TIERS[args.tier or "quick"]
    cells = make_cells(
        args.envs or list(tier.envs), args.agents or list(tier.agents), _seeds(args, tier),
        args.budget_s or tier.budget_s, args.backend or tier.backend, args.device or tier.device,
        brax_backend=args.brax_backend, episode_length=args.episode_length,
        overrides={**tier.overrides, **dict(args.override)},
        agent_envs=None if args.envs and args.agents else tier.agent_envs,
    )  # fmt: skip
    import dataclasses as dc

    import leaderboard_agents as la

    from eggroll_rl.agents import TrainConfig

    known = {f.name for f in dc.fields(TrainConfig)} | la.BRAX_SETTING_KEYS
    unknown = sorted(k for k, _ in args.override if k not in known)
    if unknown:
        raise SystemExit(
            f"--override {unknown}: not a TrainConfig field or a Brax PPO/SAC setting; known: {sorted(known)}"
        )
    planned: dict[tuple[str, str], int] = {}
    for c in cells:
        planned[(c.env, c.agent)] = planned.get((c.env, c.agent), 0) + 1
    command = "python benchmarks/leaderboard.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.report_only or args.merge):
        before = _board_parts(args.out)
        part = dict(board_info(args.gpus), command=command, started_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        _write_board_parts(args.out, before + [part])  # before the cells: a killed invocation still says what ran
        counts = run_board(
            cells, args.out, args.gpus, args.workers, args.rerun, args.timeout_s, max_cells=args.max_cells,
            deadline_s=args.deadline_s,
        )  # fmt: skip
        if counts["kept"] == len(cells):  # nothing ran: this invocation is no part of the board
            _write_board_parts(args.out, before)
        print(f"cells: {counts}")
    write_report(args.out, planned, plot=not args.no_plot)
    print((args.out / "compare.md").read_text())
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_cell":
        sys.exit(worker_main(Path(sys.argv[2])))
    sys.exit(main())
