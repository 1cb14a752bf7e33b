"""Import a script of ``benchmarks/`` by name in the tests of this folder (``benchmarks/`` is not a package)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    """``benchmarks/<name>.py`` as a module (imported once; ``benchmarks/`` goes on ``sys.path`` so a script's own
    imports of its neighbours, e.g. leaderboard -> leaderboard_agents, resolve)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)
