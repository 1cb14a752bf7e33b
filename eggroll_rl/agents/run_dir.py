"""The run directory of a training run: config, metrics (JSONL, CSV, TensorBoard), checkpoints, learning curve.

Layout::

    RUN_DIR/
      config.yaml            the resolved TrainConfig (what `--resume` and `eval` read back)
      metrics.jsonl          one JSON object per generation, flushed as it is written
      metrics.csv            the same, one row per generation
      tb/                    TensorBoard events (when tensorboard is installed)
      checkpoints/last.pt    full training state, written atomically; last.prev.pt is the one before
      checkpoints/best.pt    the policy with the best evaluation so far (a self-contained policy file)
      learning_curve.png     train and eval return against environment steps
      .lock                  held (flock) by the process training into the directory; its pid, host and start time

A run directory is a run once ``config.yaml`` exists, and from then on ``checkpoints/last.pt`` exists too (the
trainer writes a generation-0 checkpoint before the config), so every run can be resumed. ``docs/run_directories.md``
has the whole story: locking, the checks on resume, signals.

``RunWriter`` is what ``train`` calls to write all of this: it opens (or resumes) the directory and then, like a
``progress_fn``, takes each generation's record.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from eggroll_rl.agents.checkpoint import (
    TrainState,
    atomic_write_text,
    check_resume_config,
    load_resume_checkpoint,
    resume_dir,
    rotate_and_save,
)
from eggroll_rl.agents.config import TrainConfig
from eggroll_rl.agents.policy import save_policy

__all__ = [
    "RunDirectory",
    "RunLock",
    "RunLockedError",
    "RunWriter",
    "CSV_COLUMNS",
    "read_metrics",
    "plot_learning_curve",
]

CSV_COLUMNS = (
    "generation", "env_steps", "wall_time_s", "train_return_mean", "train_return_max", "train_return_min",
    "train_return_std", "episode_length_mean", "eval_return", "eval_return_std", "lr", "sigma", "grad_norm",
    "update_norm", "steps_per_s",
)  # fmt: skip


class RunLockedError(RuntimeError):
    """The run directory is held by another live training process."""


class RunLock:
    """An exclusive ``flock`` on ``DIR/.lock`` for the life of one training run.

    The kernel drops the lock when its process ends in any way (kill -9 included), so a stale lock file never blocks
    a later run; the pid, host and start time written into the file only name the holder in the error message.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.path = self.directory / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``RunLockedError`` naming the directory and the holder; no-op without ``fcntl``."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking (documented in docs/run_directories.md)
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # no O_TRUNC: the holder's record must survive
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 4096).decode(errors="replace").strip()
            os.close(fd)
            try:
                info = json.loads(holder)
                who = f"pid {info['pid']} on {info['host']}, started {info['started']}"
            except (ValueError, KeyError, TypeError):
                who = "a process that has not written its pid yet"
            raise RunLockedError(
                f"run directory {str(self.directory)!r} is in use by another training run ({who}); wait for it to "
                "finish or stop it (it saves a checkpoint on Ctrl-C/SIGTERM), or choose another directory"
            ) from None
        except OSError as exc:  # a filesystem without flock (some network mounts): train unlocked, but say so
            os.close(fd)
            warnings.warn(
                f"run directory {str(self.directory)!r} cannot be locked ({exc.strerror or exc}); nothing stops "
                "a second training run from writing into it at the same time",
                RuntimeWarning,
                stacklevel=3,
            )
            return
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode() + b"\n", 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # the file stays (unlinking a flock file races with a waiting opener)
        finally:
            os.close(fd)  # closing drops the flock

    @property
    def held(self) -> bool:
        return self._fd is not None


class RunDirectory:
    """Writes one run's files. ``check_writable`` fails early, before any environment is built."""

    def __init__(self, path: str | os.PathLike, tensorboard: bool = True) -> None:
        self.path = Path(path)
        self.tensorboard = tensorboard
        self._jsonl: io.TextIOBase | None = None
        self._tb: Any = None

    # --- paths --------------------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def csv_path(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def last_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def prev_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.prev.pt"

    @property
    def best_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "best.pt"

    @property
    def curve_path(self) -> Path:
        return self.path / "learning_curve.png"

    # --- setup --------------------------------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Create the directory and probe that files can be written there; ``PermissionError``/``OSError`` if not."""
        try:
            (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write_test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise OSError(f"out_dir={str(self.path)!r} cannot be written: {exc.strerror or exc}") from exc

    def holds_run(self) -> bool:
        """Whether a run was started here: its ``config.yaml`` exists."""
        return self.config_path.is_file()

    def remove_stale_checkpoints(self) -> None:
        """Delete checkpoints of a start that never wrote ``config.yaml`` (stopped during setup), before a new start."""
        for path in (self.last_checkpoint, self.prev_checkpoint, self.best_checkpoint):
            path.unlink(missing_ok=True)

    def write_config(self, config: dict[str, Any]) -> None:
        try:
            import yaml

            text = yaml.safe_dump(config, sort_keys=False)
        except ImportError:  # JSON is valid YAML
            text = json.dumps(config, indent=2)
        atomic_write_text(text, self.config_path)

    def read_config(self) -> dict[str, Any]:
        if not self.config_path.is_file():
            raise FileNotFoundError(f"{str(self.path)!r} is not a run directory: {self.config_path.name} is missing")
        text = self.config_path.read_text()
        try:
            import yaml

            return yaml.safe_load(text)
        except ImportError:
            return json.loads(text)

    # --- metrics ------------------------------------------------------------------------------------------------
    def start_metrics(self, history: list[dict[str, Any]], start_generation: int) -> None:
        """Open the metrics files for a run that continues after ``history`` (generations < start_generation).

        Lines of generations at or after ``start_generation`` (written after the last checkpoint of an interrupted
        run) are dropped: those generations are run again and give the same values.
        """
        kept = [r for r in history if r["generation"] < start_generation]
        atomic_write_text("".join(json.dumps(r) + "\n" for r in kept), self.metrics_path)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in kept:
            writer.writerow(r)
        atomic_write_text(buf.getvalue(), self.csv_path)
        self._jsonl = open(self.metrics_path, "a", buffering=1)  # noqa: SIM115 - kept open for the run
        self._csv_file = open(self.csv_path, "a", buffering=1, newline="")  # noqa: SIM115
        self._csv = csv.DictWriter(self._csv_file, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        if self.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                self._tb = None
            else:
                self._tb = SummaryWriter(str(self.path / "tb"), purge_step=start_generation)

    def log(self, record: dict[str, Any]) -> None:
        """Append one generation's record to every metrics sink and flush it."""
        if self._jsonl is None:
            raise RuntimeError("RunDirectory.log() before start_metrics()")
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        self._csv.writerow(record)
        self._csv_file.flush()
        if self._tb is not None:
            step = record["generation"]
            for key, value in record.items():
                if key != "generation" and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        for f in (self._jsonl, getattr(self, "_csv_file", None)):
            if f is not None:
                f.close()
        self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class RunWriter:
    """The run-directory callback of ``train``: holds the directory's lock and writes config, metrics, checkpoints
    and the learning curve.

    ``open`` checks the directory (and, to resume, its config and checkpoint) before any environment is built;
    ``start`` writes the generation-0 checkpoint and ``config.yaml``; ``on_generation`` logs each generation and
    saves the best policy and the periodic checkpoint; ``close`` writes the curve and releases the lock.
    """

    def __init__(self, run: RunDirectory, lock: RunLock, saved_generation: int | None, title: str = "") -> None:
        self.run, self._lock, self._title = run, lock, title
        self._history: list[dict[str, Any]] = []
        self.saved_generation = saved_generation
        """Generations completed in ``checkpoints/last.pt`` (None: no checkpoint yet)."""

    @property
    def path(self) -> Path:
        return self.run.path

    @classmethod
    def open(
        cls, config: TrainConfig, resume: str | os.PathLike | bool | None
    ) -> tuple[RunWriter | None, TrainConfig, dict[str, Any] | None]:
        """Check and lock the run directory of ``train(config, resume=resume)``.

        Returns the writer (None when ``config.out_dir`` is ''), the config the run trains with (a resumed run's
        stored config with the allowed overrides) and the checkpoint it continues from (None: generation 0).
        """
        from eggroll_rl.envs import resolve_env

        checkpoint, lock = None, None
        try:
            continued = resume_dir(config, resume)
            if continued is not None:
                stored_run = RunDirectory(continued)
                stored_run.read_config()  # "not a run directory" before anything is created there
                lock = RunLock(continued)
                lock.acquire()  # before reading: a run still training there would change what is read
                stored = stored_run.read_config()
                config = check_resume_config(stored, config.replace(out_dir=str(continued)))
                checkpoint = load_resume_checkpoint(stored_run.last_checkpoint, stored)
            resolve_env(config.env)  # an unknown name fails here, with close matches
            if not config.out_dir:
                return None, config, checkpoint
            run = RunDirectory(config.out_dir, tensorboard=config.tensorboard)
            if continued is None and run.holds_run():
                raise ValueError(
                    f"out_dir={config.out_dir!r} already holds a run (config.yaml); resume it with resume=/--resume "
                    "or choose another directory"
                )
            run.check_writable()
            if continued is None:
                lock = RunLock(run.path)
                lock.acquire()
                if run.holds_run():  # started by another process between the check above and the lock
                    raise ValueError(f"out_dir={config.out_dir!r} already holds a run (config.yaml) started just now")
                run.remove_stale_checkpoints()
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        saved = checkpoint["generation"] if checkpoint is not None else None
        return cls(run, lock, saved, title=f"EGGROLL on {config.env}"), config, checkpoint

    def start(self, state: TrainState) -> None:
        """Before the first generation: the generation-0 checkpoint (before config.yaml, so a directory that holds
        a run can always be resumed), config.yaml and the metrics files."""
        self._history = state.history  # the learning curve's records, appended to by the trainer
        if self.saved_generation is None:
            self.save_checkpoint(state)
        self.run.write_config(state.config.to_dict())
        self.run.start_metrics(state.history, state.generation)

    def on_generation(
        self, state: TrainState, record: dict[str, Any], improved: bool, done: bool, env_info: dict[str, Any]
    ) -> None:
        """After each generation: the best policy (``improved``: this generation's evaluation is the best so far),
        the metrics line, and the checkpoint every ``checkpoint_every`` generations and at the end (``done``)."""
        config = state.config
        if improved:
            save_policy(
                state.policy,
                self.run.best_checkpoint,
                extra={
                    "eval_return": state.best_eval_return,
                    "generation": record["generation"],
                    "env": config.env,
                    "backend": env_info.get("backend", config.backend),
                    "env_id": env_info.get("env_id", config.env),
                },
            )
        self.run.log(record)
        if done or state.generation % config.checkpoint_every == 0:
            self.save_checkpoint(state)

    def save_checkpoint(self, state: TrainState) -> None:
        rotate_and_save(state.checkpoint(), self.run.last_checkpoint)
        self.saved_generation = state.generation

    def close(self) -> None:
        """Close the metrics files, write the learning curve and release the lock."""
        try:
            self.run.close()
            plot_learning_curve(self._history, self.run.curve_path, title=self._title)
        finally:
            self._lock.release()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl (a run directory or the file); a torn last line (a killed run) is skipped."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def plot_learning_curve(records: list[dict[str, Any]], path: str | os.PathLike, title: str = "") -> bool:
    """Write a PNG of train (mean, max) and eval return against env steps; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    if not records:
        return False
    steps = [r["env_steps"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    ax.plot(steps, [r["train_return_mean"] for r in records], label="train return (population mean)", lw=1.2)
    ax.plot(steps, [r["train_return_max"] for r in records], label="train return (population max)", lw=0.8, alpha=0.6)
    ev = [(r["env_steps"], r["eval_return"]) for r in records if r.get("eval_return") is not None]
    if ev:
        ax.plot(*zip(*ev), "o-", label="eval return (mean policy)", lw=1.6, ms=3)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return True
