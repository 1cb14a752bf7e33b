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
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = [
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
