"""Measure training recipes side by side: one ``bench_train.py`` subprocess per job, all at once, one deadline.

    python benchmarks/run_recipes.py Hopper:0 Walker2d:0 Humanoid:1 Swimmer:1 --results /root/out --deadline-s 540
    python benchmarks/run_recipes.py Hopper:0:reward_shift=0,tag=noshift Hopper:1 --results DIR
    python benchmarks/run_recipes.py HalfCheetah:cpus=0-1 HalfCheetah:cpus=2-17 --device cpu --results DIR

A job is ``ENV[:GPU][:KEY=VALUE,...]``: ``GPU`` is the CUDA device it gets (``CUDA_VISIBLE_DEVICES``; several jobs
may share one), each ``KEY=VALUE`` a ``TrainConfig`` override (``bench_train.py --set``; values are JSON where they
parse, e.g. ``hidden_sizes=[32,32]``), except two keys of the runner's own: ``tag=NAME`` (the result's name suffix;
default ``--tag`` plus the overrides) and ``cpus=LIST`` (``taskset -c LIST``; default ``--taskset``). Without jobs,
``DEFAULT_JOBS`` runs. Every job writes ``<results>/train_<env>_<device>_<tag>.{json,md,png}`` and logs to
``<results>/train_<env>_<device>_<tag>.log``; a job whose json exists is skipped (so the same command continues a
cut session) unless ``--force``.

The deadline: ``--deadline-s`` after the start every job still running gets SIGTERM, which ``bench_train.py`` answers
by writing its results from the generations done; ``--grace-s`` later what is left is killed. Give the runs a
``time_limit_s`` below the deadline so that they end on their own, final evaluation included: the recipes have one,
and ``--max-train-s`` caps it (it counts from the end of the env build, which with several jobs on one host can take
a minute).

At the end (and with ``--summary-only``, from the files alone) a table: eval return of the mean policy at 2, 5 and
10 minutes of training wall clock (the last evaluation at or before; compilation included, env build not), the best
eval, env steps/s over the training loop, generations and how the run ended; also written to
``<results>/recipes_summary.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _report, also when a test loads this file

from _report import parse_value  # noqa: E402  (benchmarks/, the script's folder)

from eggroll_rl.choices import EnvBackend, options  # noqa: E402

BENCH_TRAIN = ROOT / "benchmarks" / "bench_train.py"

DEFAULT_JOBS = (
    "Humanoid:0",
    "Walker2d:0",
    "Reacher:0",
    "InvertedPendulum:0",
    "HumanoidStandup:1",
    "Hopper:1",
    "Pusher:1",
    "Swimmer:1",
    "InvertedDoublePendulum:1",
)
"""Every Brax env without a measured recipe, on two GPUs: one humanoid, one walker/hopper and the light envs each."""

CHECKPOINTS_S = (120.0, 300.0, 600.0)
"""Training wall-clock times (s) at which the summary reads each run's eval return."""

RUNNER_KEYS = ("tag", "cpus")
_KEY = re.compile(r",(?=[A-Za-z_]\w*=)")  # a comma that starts the next KEY=, not one inside [64,64]


@dataclass
class Job:
    """One ``bench_train.py`` run."""

    env: str
    gpu: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    tag: str = ""
    cpus: str | None = None

    def stem(self, device: str) -> str:
        """Result file name without suffix, as ``bench_train.py`` names it."""
        return f"train_{self.env.replace(':', '_').lower()}_{device}{'_' + self.tag if self.tag else ''}"


def _slug(overrides: dict[str, Any]) -> str:
    # {"sigma": 0.05, "hidden_sizes": [32, 32]} -> "sigma0.05_hidden_sizes32-32"
    parts = [f"{k}{v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}" for k, v in overrides.items()]
    return re.sub(r"[^A-Za-z0-9._\-]+", "", "_".join(parts).replace(",", "-"))


def parse_job(text: str, base_tag: str = "recipe", cpus: str | None = None) -> Job:
    """``ENV[:GPU][:KEY=VALUE,...]`` → ``Job``. The env may hold a backend prefix (``brax:hopper:0``)."""
    parts = text.split(":")
    overrides: dict[str, Any] = {}
    if len(parts) > 1 and "=" in parts[-1]:
        for item in _KEY.split(parts.pop()):
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise ValueError(f"job {text!r}: {item!r} is not KEY=VALUE")
            overrides[key.strip()] = parse_value(value.strip())
    gpu = None
    if len(parts) > 1 and re.fullmatch(r"\d+", parts[-1]):
        gpu = parts.pop()
    env = ":".join(parts)
    prefix_ok = len(parts) == 1 or (len(parts) == 2 and parts[0] in options(EnvBackend))
    if not all(parts) or not prefix_ok or any("=" in p for p in parts):
        raise ValueError(
            f"job {text!r}: expected ENV[:GPU][:KEY=VALUE,...] (ENV a name or BACKEND:ID, GPU a device number)"
        )
    tag = overrides.pop("tag", None)
    own_cpus = overrides.pop("cpus", None)
    if tag is None:  # the overrides (and a job's own CPUs) name it, so that variants of one env do not collide
        named = overrides | ({"cpus": own_cpus} if own_cpus is not None else {})
        tag = "_".join(t for t in (base_tag, _slug(named)) if t)
    job_cpus = own_cpus if own_cpus is not None else cpus
    return Job(env, gpu, overrides, str(tag), None if job_cpus is None else str(job_cpus))


def command(job: Job, args: argparse.Namespace) -> list[str]:
    """The job's command line (``taskset -c`` first when it has CPUs)."""
    cmd = [sys.executable, str(BENCH_TRAIN), "--env", job.env, "--device", args.device, "--results", args.results]
    if job.tag:
        cmd += ["--tag", job.tag]
    settings = {**args.set, **job.overrides}
    if args.max_train_s and "time_limit_s" not in settings:
        from eggroll_rl.agents.config import TrainConfig

        own = TrainConfig.for_env(job.env, device=args.device)
        if not own.time_limit_s or own.time_limit_s > args.max_train_s:
            settings["time_limit_s"] = args.max_train_s
            # A budget given replaces the recipe's whole (TrainConfig.for_env): keep its other limits, capped in time.
            for name in ("generations", "total_steps"):
                if getattr(own, name) and name not in settings:
                    settings[name] = getattr(own, name)
    for key, value in settings.items():
        cmd += ["--set", f"{key}={value if isinstance(value, str) else json.dumps(value, separators=(',', ':'))}"]
    return (["taskset", "-c", job.cpus] if job.cpus else []) + cmd


def _eval_at(evals: list[list[float]], t: float) -> float | None:
    """The last eval return at or before training wall time ``t`` (``evals``: generation, steps, wall s, return);
    None when the run never trained that long."""
    if not evals or evals[-1][2] < t:
        return None
    before = [e for e in evals if e[2] <= t]
    return before[-1][3] if before else None


def summarize(jobs: list[Job], results: Path, device: str, status: dict[str, str]) -> list[dict[str, Any]]:
    """One row per job from its json (missing: its status only)."""
    rows = []
    for job in jobs:
        path = results / f"{job.stem(device)}.json"
        row: dict[str, Any] = {"env": job.env, "tag": job.tag, "gpu": job.gpu, "cpus": job.cpus}
        if not path.is_file():
            rows.append(row | {"status": status.get(job.stem(device), "no result")})
            continue
        data = json.loads(path.read_text())
        evals = data.get("evals", [])
        ended = data.get("interrupted") or "budget"
        row |= {
            "status": status.get(job.stem(device), "done") + ("" if ended == "budget" else f" ({ended})"),
            "evals_at": {f"{int(t)}s": _eval_at(evals, t) for t in CHECKPOINTS_S},
            "best_eval_return": data.get("best_eval_return"),
            "final_eval_return": data.get("final_eval_return"),
            "steps_per_s": data.get("mean_steps_per_s"),
            "generations": data.get("generations"),
            "train_wall_s": evals[-1][2] if evals else None,
            "physics": (data.get("env_info") or {}).get("brax_backend") or (data.get("env_info") or {}).get("backend"),
        }
        rows.append(row)
    return rows


def _fmt(v: Any, digits: int = 0) -> str:
    return "—" if v is None else f"{v:,.{digits}f}" if isinstance(v, (int, float)) else str(v)


def table(rows: list[dict[str, Any]]) -> str:
    head = ["env", "tag", "physics", *(f"eval @{int(t // 60)} min" for t in CHECKPOINTS_S)]
    head += ["best eval", "env steps/s", "gens", "train s", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ev = r.get("evals_at", {})
        cells = [r["env"], r["tag"], _fmt(r.get("physics"))]
        cells += [_fmt(ev.get(f"{int(t)}s"), 1) for t in CHECKPOINTS_S]
        cells += [_fmt(r.get("best_eval_return"), 1), _fmt(r.get("steps_per_s")), _fmt(r.get("generations"))]
        cells += [_fmt(r.get("train_wall_s")), r["status"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _stop(proc: subprocess.Popen, sig: int) -> None:
    try:
        if sig == signal.SIGKILL:
            os.killpg(proc.pid, sig)  # the job's whole session: bench_train and whatever it started
        else:
            proc.send_signal(sig)  # bench_train alone: its handler writes the results
    except ProcessLookupError:
        pass


def run(jobs: list[Job], args: argparse.Namespace) -> dict[str, str]:
    """Start every job not yet done, wait for them or the deadline; the status of each job by its stem."""
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    status: dict[str, str] = {}
    procs: dict[str, tuple[Job, subprocess.Popen, Any]] = {}
    stems = [job.stem(args.device) for job in jobs]
    if len(set(stems)) != len(stems):
        dup = sorted({s for s in stems if stems.count(s) > 1})
        raise ValueError(f"two jobs write the same result files {dup}: give them different tag=NAME")
    for job, stem in zip(jobs, stems):
        if (results / f"{stem}.json").is_file() and not args.force:
            status[stem] = "skipped (result exists)"
            print(f"skip {stem}: {results / (stem + '.json')} exists (--force to run it again)", flush=True)
            continue
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if job.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = job.gpu
        cmd = command(job, args)
        log = (results / f"{stem}.log").open("w")
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        print(f"start {stem}: gpu={job.gpu} cpus={job.cpus} {' '.join(cmd[-2 * len(job.overrides) :])}", flush=True)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        procs[stem] = (job, proc, log)
    start = time.monotonic()
    termed_at: float | None = None
    try:
        while any(p.poll() is None for _, p, _ in procs.values()):
            now = time.monotonic() - start
            if termed_at is None and now >= args.deadline_s:
                termed_at = now
                print(f"deadline ({args.deadline_s:.0f} s): SIGTERM to the jobs still running", flush=True)
                for stem, (_, p, _) in procs.items():
                    if p.poll() is None:
                        status[stem] = "cut at deadline"
                        _stop(p, signal.SIGTERM)
            if termed_at is not None and now >= termed_at + args.grace_s:
                for stem, (_, p, _) in procs.items():
                    if p.poll() is None:
                        status[stem] = "killed after grace"
                        _stop(p, signal.SIGKILL)
                break
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("interrupted: SIGTERM to every job (each writes what it has)", flush=True)
        for _, p, _ in procs.values():
            _stop(p, signal.SIGTERM)
        for _, p, _ in procs.values():
            try:
                p.wait(timeout=args.grace_s)
            except subprocess.TimeoutExpired:
                _stop(p, signal.SIGKILL)
        raise
    finally:
        for stem, (_, p, log) in procs.items():
            rc = p.wait()
            log.close()
            if rc != 0 and stem not in status:
                status[stem] = f"failed (exit {rc}, see {stem}.log)"
    return status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("jobs", nargs="*", help=f"ENV[:GPU][:KEY=VALUE,...] (default: {' '.join(DEFAULT_JOBS)})")
    p.add_argument("--results", required=True, help="directory of every job's json/md/png/log and the summary")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="bench_train.py --device")
    p.add_argument("--deadline-s", type=float, default=570.0, help="SIGTERM to the jobs still running after this")
    p.add_argument("--grace-s", type=float, default=25.0, help="SIGKILL this long after the SIGTERM")
    p.add_argument(
        "--max-train-s",
        type=float,
        default=0.0,
        help="cap each job's time_limit_s (its recipe's, unless the job or --set gives one) at this (0: no cap)",
    )
    p.add_argument("--tag", default="recipe", help="result name suffix of jobs without tag=")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every job")
    p.add_argument("--taskset", default=None, metavar="CPUS", help="taskset -c CPUS for jobs without cpus=")
    p.add_argument("--force", action="store_true", help="run jobs whose result exists again")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument("--summary-only", action="store_true", help="summarize the result files, run nothing")
    args = p.parse_args(argv)
    args.set = {k: parse_value(v) for k, _, v in (s.partition("=") for s in args.set)}
    jobs = [parse_job(text, args.tag, args.taskset) for text in (args.jobs or DEFAULT_JOBS)]
    if args.dry_run:
        for job in jobs:
            gpu = f"CUDA_VISIBLE_DEVICES={job.gpu} " if job.gpu is not None else ""
            print(gpu + " ".join(command(job, args)))
        return 0
    status = {} if args.summary_only else run(jobs, args)
    rows = summarize(jobs, Path(args.results), args.device, status)
    text = table(rows)
    print(text, flush=True)
    results = Path(args.results)
    (results / "recipes_summary.md").write_text(text + "\n")
    (results / "recipes_summary.json").write_text(json.dumps(rows, indent=1))
    return 0 if all(not r["status"].startswith("failed") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
