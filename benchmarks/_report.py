"""Small pieces the benchmark scripts share: the versions a report records, and ``KEY=VALUE`` override values."""

from __future__ import annotations

import json
import platform
from typing import Any


def versions(*modules: str) -> dict[str, str]:
    """``python`` and ``torch`` versions, then each of ``modules`` that imports and has a ``__version__``."""
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in modules:
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # not installed, broken, or no version attribute: left out
            pass
    return out


def parse_value(text: str) -> Any:
    """A ``--set KEY=VALUE`` value: JSON where it parses (numbers, lists, true/false), else the text itself."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
