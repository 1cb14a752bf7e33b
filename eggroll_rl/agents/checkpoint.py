"""Atomic checkpoint files and their loading, with a clear error for a truncated or foreign file.

A file is written to a temporary name in the same directory, flushed and fsynced, then moved over the target with
``os.replace`` — so a reader sees either the previous complete file or the new complete one, never a torn one. The
trainer keeps ``last.pt`` and the one before it (``last.prev.pt``) so that a damaged ``last.pt`` (a disk filled up, a
file copied half-way) can still be resumed from the previous generation's state.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointError",
    "atomic_torch_save",
    "atomic_write_text",
    "load_checkpoint_file",
    "rotate_and_save",
    "load_latest_checkpoint",
]


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt or not one of ours."""


def _atomic_write_bytes(data: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` through a temporary file and ``os.replace``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    _atomic_write_bytes(buf.getvalue(), Path(path))


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    _atomic_write_bytes(text.encode(), Path(path))


def load_checkpoint_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a file written by ``atomic_torch_save``; a missing, truncated or corrupt file is a ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises several types for a torn zip file
        size = path.stat().st_size
        raise CheckpointError(
            f"checkpoint {str(path)!r} ({size} bytes) is truncated or corrupt and cannot be loaded: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, expected a dict")
    return obj


def rotate_and_save(obj: Any, path: str | os.PathLike) -> None:
    """Save ``obj`` to ``path`` atomically, keeping the file it replaces as ``<stem>.prev<suffix>``."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)
    if path.exists():
        os.replace(path, path.with_name(f"{path.stem}.prev{path.suffix}"))
    _atomic_write_bytes(buf.getvalue(), path)


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
