"""Atomic checkpoint files and their loading, with a clear error for a truncated or foreign file.

A file is written to a temporary name in the same directory, flushed and fsynced, then moved over the target with
``os.replace`` — so a reader sees either the previous complete file or the new complete one, never a torn one. The
trainer keeps ``last.pt`` and the one before it (``last.prev.pt``) so that a damaged ``last.pt`` (a disk filled up, a
file copied half-way) can still be resumed from the previous generation's state.

Loading never runs code: files are read with ``torch.load(..., weights_only=True)``, so they may hold only tensors
and plain data (dicts, lists, tuples, str, numbers, None) — what the trainer and ``save_policy`` write. A dict
payload carries ``sha256``, a digest of everything else in it (tensor bytes, dtypes, shapes and values), checked on
load: flipped bytes that still unpickle are a ``CheckpointError`` like a truncated file, not a silently different run.
Files are created with the permissions of any other file the process writes (``0o666`` less the umask).

A training checkpoint (``TrainState.checkpoint()``) holds everything a generation depends on — strategy, optimizer
and observation statistics — so resuming from it gives the same curve as an uninterrupted run. The resume rules live
here too: which config fields a resumed run may change (``RESUMABLE_OVERRIDES``), the checks of ``config.yaml``
against the checkpoint, and which checkpoint a run continues from.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import struct
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from eggroll_rl.agents.config import TrainConfig
from eggroll_rl.agents.policy import MLPPolicy, policy_payload

__all__ = [
    "CHECKPOINT_FORMAT",
    "RESUMABLE_OVERRIDES",
    "TrainState",
    "check_checkpoint_config",
    "check_resume_config",
    "load_resume_checkpoint",
    "resume_dir",
    "CheckpointError",
    "UnsafeCheckpointError",
    "CHECKSUM_KEY",
    "payload_digest",
    "atomic_torch_save",
    "atomic_write_text",
    "load_checkpoint_file",
    "rotate_and_save",
    "load_latest_checkpoint",
]


CHECKSUM_KEY = "sha256"
"""Key of a saved dict's digest of its other entries (``payload_digest``)."""


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or not one of ours."""


class UnsafeCheckpointError(CheckpointError):
    """A file holds pickled Python objects other than tensors and plain data; it is refused, never unpickled."""


def _current_umask() -> int:
    try:  # Linux: read it without changing it (os.umask would, for a moment, for every thread)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write_bytes(data: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_current_umask())  # mkstemp makes 0600; a run's files follow the umask like the PNG
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _digest_update(h: Any, obj: Any) -> None:
    # Type tags keep 1 / 1.0 / "1" / True apart; dict order is part of the digest (pickle keeps it).
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous().reshape(-1)
        h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key, value in obj.items():
            _digest_update(h, key)
            _digest_update(h, value)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}".encode())
        for value in obj:
            _digest_update(h, value)
    elif isinstance(obj, bool) or obj is None:
        h.update(f"B{obj}".encode())
    elif isinstance(obj, float):
        h.update(b"F" + struct.pack("<d", obj))
    elif isinstance(obj, (int, str)):
        h.update(f"{type(obj).__name__[0]}{len(str(obj))}:{obj}".encode())
    else:
        raise TypeError(
            f"cannot checksum a {type(obj).__name__} in a checkpoint: expected tensors and plain data "
            "(dict, list, tuple, str, int, float, bool, None)"
        )


def payload_digest(obj: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint dict's entries other than ``CHECKSUM_KEY`` (tensors by dtype, shape and bytes)."""
    h = hashlib.sha256()
    _digest_update(h, {k: v for k, v in obj.items() if k != CHECKSUM_KEY})
    return h.hexdigest()


def _serialize(obj: Any) -> bytes:
    if isinstance(obj, dict):
        obj = {**{k: v for k, v in obj.items() if k != CHECKSUM_KEY}, CHECKSUM_KEY: payload_digest(obj)}
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through a temporary file and ``os.replace``; a dict gets its ``sha256``."""
    _atomic_write_bytes(_serialize(obj), Path(path))


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    _atomic_write_bytes(text.encode(), Path(path))


def _corrupt(path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {str(path)!r} ({path.stat().st_size} bytes) is truncated or corrupt and cannot be loaded: "
        f"{type(exc).__name__}: {exc}"
    )


def load_checkpoint_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a file written by ``atomic_torch_save`` without running any code from it.

    Raises:
        UnsafeCheckpointError: the file pickles Python objects other than tensors and plain data (a crafted file,
            or one from another program); nothing in it was executed.
        CheckpointError: the file is missing, truncated or corrupt, fails its checksum, or is not a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "WeightsUnpickler" not in str(exc):  # garbage that is not a pickle at all: a corrupt file
            raise _corrupt(path, exc) from exc
        # The weights-only unpickler refused a global before calling anything: nothing from the file was run.
        reason = str(exc).split("WeightsUnpickler error:")[-1].strip().split("\n")[0]
        raise UnsafeCheckpointError(
            f"checkpoint {str(path)!r} was not loaded: it holds pickled Python objects, not only tensors and plain "
            f"data ({reason}). eggroll_rl never writes such files and does not unpickle them, since that could run "
            "arbitrary code; use a checkpoint written by eggroll_rl"
        ) from None
    except Exception as exc:  # torch raises several types for a torn zip file
        raise _corrupt(path, exc) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, expected a dict")
    stored = obj.pop(CHECKSUM_KEY, None)  # files from before checksums have none; they load as they are
    if stored is not None:
        try:
            actual = payload_digest(obj)
        except TypeError as exc:
            raise CheckpointError(f"checkpoint {str(path)!r} cannot be checked: {exc}") from exc
        if actual != stored:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is corrupt: its contents do not match its sha256 (stored {stored[:16]}..., "
                f"computed {actual[:16]}...); bytes were changed after it was written"
            )
    return obj


def rotate_and_save(obj: Any, path: str | os.PathLike) -> None:
    """Save ``obj`` to ``path`` atomically, keeping the file it replaces as ``<stem>.prev<suffix>``."""
    path = Path(path)
    data = _serialize(obj)
    if path.exists():
        os.replace(path, path.with_name(f"{path.stem}.prev{path.suffix}"))
    _atomic_write_bytes(data, path)


def load_latest_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[dict, Path]:
    """Load ``path``, or — if it is damaged or missing — the previous one kept by ``rotate_and_save``, with a warning.

    Returns the checkpoint and the file it came from. Raises ``CheckpointError`` if neither can be loaded.
    """
    path = Path(path)
    prev = path.with_name(f"{path.stem}.prev{path.suffix}")
    try:
        return load_checkpoint_file(path, map_location), path
    except CheckpointError as first:
        if not prev.is_file():
            raise
        try:
            ckpt = load_checkpoint_file(prev, map_location)
        except CheckpointError as second:
            raise CheckpointError(f"{first}; the previous checkpoint cannot be used either: {second}") from second
        warnings.warn(f"{first}. Using the previous checkpoint {str(prev)!r} instead.", RuntimeWarning, stacklevel=2)
        return ckpt, prev


# ----------------------------------------------------------------------------------------------- training state
CHECKPOINT_FORMAT = "eggroll_rl.train_checkpoint/1"
# Fields a resumed run may change: they alter the budget or the outputs, not the curve.
RESUMABLE_OVERRIDES = frozenset(
    {
        "generations",
        "total_steps",
        "time_limit_s",
        "eval_every",
        "eval_episodes",
        "checkpoint_every",
        "out_dir",
        "tensorboard",
        "device",
    }
)


@dataclass
class TrainState:
    """Where a training run stands after ``generation`` completed generations: what a checkpoint holds."""

    config: TrainConfig
    strategy: Any
    policy: MLPPolicy
    generation: int = 0
    env_steps: int = 0
    wall_time_s: float = 0.0
    best_eval_return: float = -math.inf
    history: list[dict[str, Any]] = field(default_factory=list)
    """One record (the metrics.jsonl line) per completed generation."""

    def checkpoint(self) -> dict[str, Any]:
        """The training checkpoint of this state (tensors and plain data only, see the module docstring)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "generation": self.generation,
            "env_steps": self.env_steps,
            "wall_time_s": self.wall_time_s,
            "best_eval_return": self.best_eval_return,
            "history": self.history,
            "strategy": self.strategy.state_dict(),
            "policy": policy_payload(self.policy),
        }

    def load(self, checkpoint: dict[str, Any]) -> None:
        """Continue from ``checkpoint`` (the strategy must already be ``setup`` on the policy)."""
        self.strategy.load_state_dict(checkpoint["strategy"])
        self.policy.load_state_dict(checkpoint["policy"]["state_dict"])
        self.generation, self.env_steps = checkpoint["generation"], checkpoint["env_steps"]
        self.wall_time_s, self.best_eval_return = checkpoint["wall_time_s"], checkpoint["best_eval_return"]
        self.history = list(checkpoint["history"])


# ------------------------------------------------------------------------------------------------------ resuming
def resume_dir(config: TrainConfig, resume: str | os.PathLike | bool | None) -> Path | None:
    """The run directory ``train(config, resume=resume)`` continues, or None for a new run (``resume=True``:
    ``config.out_dir`` if it holds a run, i.e. its ``config.yaml`` exists)."""
    if resume is None or resume is False:
        return None
    if resume is True:
        if not config.out_dir:
            raise ValueError(
                "resume=True continues the run in config.out_dir, but out_dir='' (no run directory); set out_dir "
                "or leave resume=None"
            )
        return Path(config.out_dir) if (Path(config.out_dir) / "config.yaml").is_file() else None
    if isinstance(resume, (str, os.PathLike)):
        return Path(resume)
    raise TypeError(f"resume={resume!r} is invalid: expected a run directory (str or Path), True or None")


def check_resume_config(stored: dict[str, Any], config: TrainConfig) -> TrainConfig:
    """The config a resumed run continues with: the stored one, with budget/output overrides from ``config``.

    Raises ``ValueError`` when ``config`` is for another environment or changes a field that alters the curve.
    """
    stored_cfg = TrainConfig.from_dict(stored)
    if stored_cfg.env != config.env:
        raise ValueError(
            f"resume: the run directory was trained on env={stored_cfg.env!r}, but env={config.env!r} was given; "
            "resume it with the same env or start a new run in another directory"
        )
    changes = {}
    for name, value in config.to_dict().items():
        old = stored_cfg.to_dict()[name]
        if value == old:
            continue
        if name not in RESUMABLE_OVERRIDES:
            raise ValueError(
                f"resume: {name}={value!r} differs from the run being resumed ({name}={old!r}); a resumed run keeps "
                f"its settings except {sorted(RESUMABLE_OVERRIDES)}"
            )
        changes[name] = value
    return stored_cfg.replace(**changes) if changes else stored_cfg


def check_checkpoint_config(stored: dict[str, Any], checkpoint_config: Any, source: str | Path) -> None:
    """Raise ``ValueError`` listing the fields where ``config.yaml`` (``stored``) and the checkpoint's config differ.

    Only ``RESUMABLE_OVERRIDES`` may differ: the checkpoint holds the state the run reached with its own settings,
    so an edited seed, sigma, ... in ``config.yaml`` would continue it as another run.
    """
    if not isinstance(checkpoint_config, dict):
        raise CheckpointError(f"checkpoint {str(source)!r} holds no config: not an eggroll_rl training checkpoint")
    yaml_cfg = TrainConfig.from_dict(stored).to_dict()
    ckpt_cfg = TrainConfig.from_dict(checkpoint_config).to_dict()
    diffs = [
        f"{name} (config.yaml: {value!r}, checkpoint: {ckpt_cfg[name]!r})"
        for name, value in yaml_cfg.items()
        if name not in RESUMABLE_OVERRIDES and value != ckpt_cfg[name]
    ]
    if diffs:
        raise ValueError(
            f"resume: config.yaml differs from the checkpoint {str(source)!r} in {'; '.join(diffs)}. The checkpoint "
            "holds the run as trained with its own settings: put them back in config.yaml (only "
            f"{sorted(RESUMABLE_OVERRIDES)} may change on resume) or start a new run in another directory"
        )


def load_resume_checkpoint(last: str | os.PathLike, stored: dict[str, Any]) -> dict[str, Any] | None:
    """The training checkpoint a run continues from: ``last`` (its ``checkpoints/last.pt``) or, if that is damaged,
    the one before it; checked against the run's ``config.yaml`` (``stored``). None: the run never wrote one, it
    starts at generation 0."""
    last = Path(last)
    if not last.exists() and not last.with_name(f"{last.stem}.prev{last.suffix}").exists():
        # Only a run from before generation-0 checkpoints can be in this state; its config.yaml says it all.
        warnings.warn(
            f"{str(last.parent.parent)!r} holds no checkpoint (a run stopped before its first one): it starts again "
            "from generation 0 with its config.yaml",
            RuntimeWarning,
            stacklevel=4,  # the caller of train() (train -> RunWriter.open -> here)
        )
        return None
    checkpoint, source = load_latest_checkpoint(last)
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{source} is not an eggroll_rl training checkpoint")
    check_checkpoint_config(stored, checkpoint.get("config"), source)
    return checkpoint
