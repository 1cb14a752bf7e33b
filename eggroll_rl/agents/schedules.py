"""Schedules for the learning rate and sigma over a run's budget."""

from __future__ import annotations

from eggroll_rl.choices import Schedule, options
from eggroll_rl.validation import check_choice

__all__ = ["schedule_value"]


def schedule_value(kind: str, initial: float, end_factor: float, progress: float) -> float:
    """Value of a schedule at ``progress`` in [0, 1] of the budget.

    ``constant``: ``initial``. ``linear``: from ``initial`` to ``initial * end_factor`` in a straight line.
    ``exponential``: the same end points, geometric in between (a constant decay factor per unit of progress).
    """
    check_choice("kind", kind, options(Schedule))
    if initial <= 0 or end_factor <= 0:
        raise ValueError(f"initial={initial} and end_factor={end_factor} must be > 0")
    p = min(max(float(progress), 0.0), 1.0)
    if kind == "constant":
        return float(initial)
    if kind == "linear":
        return float(initial * (1.0 + (end_factor - 1.0) * p))
    return float(initial * end_factor**p)
