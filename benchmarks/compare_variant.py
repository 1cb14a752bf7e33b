"""A variant's leaderboard cells against the board's, seed by seed: the evidence for changing a default (issue #13).

A variant is a folder written by ``leaderboard.py`` with ``--override`` (e.g.
``benchmarks/results/leaderboard/gpu_h200_variants/halfcheetah_pop4096``). For each seed that both folders hold for
``--env`` and ``--agent``, this prints a markdown table: the return at equal wall clock (``--times``, linear between
evaluations, as the board's equal-wall comparisons are), at equal env steps (``--steps``), the first evaluation at or
above each ``--thresholds`` value, the final return and the cell's env steps/s; then the mean over those seeds.

    python benchmarks/compare_variant.py --base benchmarks/results/leaderboard/gpu_h200 \\
        --variant benchmarks/results/leaderboard/gpu_h200_variants/halfcheetah_pop4096 --env HalfCheetah \\
        --times 120 180 240 300 480 --steps 1e8 2e8 4e8 --thresholds 4000 4800
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import leaderboard as lb  # noqa: E402


def _cells(folder: Path, env: str, agent: str) -> dict[int, dict]:
    """The usable cells of ``env`` x ``agent`` in a board folder, by seed."""
    return {
        c["seed"]: c
        for c in lb._read_jsonl(folder / "cells.jsonl")
        if c["env"] == env and c["agent"] == agent and c["status"] in lb.USABLE
    }


def _runs(folder: Path, cells: dict[int, dict]) -> list[dict]:
    ids = {c["cell_id"] for c in cells.values()}
    return [r for r in lb._read_jsonl(folder / "runs.jsonl") if r["cell_id"] in ids]


def compare(
    base: Path,
    variant: Path,
    env: str,
    agent: str = "eggroll",
    times: list[float] = (),
    steps: list[float] = (),
    thresholds: list[float] = (),
) -> tuple[list[dict], list[int]]:
    """One row per common seed (then a ``"mean"`` row): ``{"seed", "wall": [(base, variant), ...], "steps": [...],
    "first": [(base s, variant s), ...], "final": (base, variant), "steps_per_s": (base, variant)}``; and the seeds
    that only one side holds."""
    sides = []
    for folder in (base, variant):
        cells = _cells(folder, env, agent)
        runs = _runs(folder, cells)
        wall = lb.curves(runs).get((env, agent), {})
        by_steps = lb.curves(runs, key="env_steps").get((env, agent), {})
        sides.append((cells, wall, by_steps))
    common = sorted(set(sides[0][1]) & set(sides[1][1]))
    only = sorted(set(sides[0][1]) ^ set(sides[1][1]))
    rows = []
    for seed in common:
        pair = [(cells[seed], wall[seed], by_steps[seed]) for cells, wall, by_steps in sides]
        rows.append({
            "seed": seed,
            "wall": [tuple(lb.value_at(w, t) for _, w, _ in pair) for t in times],
            "steps": [tuple(lb.value_at(s, n) for _, _, s in pair) for n in steps],
            "first": [tuple(lb.time_to_threshold(w, thr) for _, w, _ in pair) for thr in thresholds],
            "final": tuple(w[-1][1] for _, w, _ in pair),
            "steps_per_s": tuple(c.get("steps_per_s") or math.nan for c, _, _ in pair),
        })  # fmt: skip
    if rows:

        def mean(values: list[float | None]) -> float:  # a seed that never got there: no mean
            return lb.mean_std(values)[0] if all(v is not None and not math.isnan(v) for v in values) else math.nan

        def column(key: str, i: int | None = None) -> tuple[float, float]:
            return tuple(mean([(r[key][i] if i is not None else r[key])[side] for r in rows]) for side in (0, 1))

        rows.append({
            "seed": "mean",
            "wall": [column("wall", i) for i in range(len(times))],
            "steps": [column("steps", i) for i in range(len(steps))],
            "first": [column("first", i) for i in range(len(thresholds))],
            "final": column("final"),
            "steps_per_s": column("steps_per_s"),
        })  # fmt: skip
    return rows, only


def to_markdown(
    rows: list[dict], times: list[float], steps: list[float], thresholds: list[float], names: tuple[str, str]
) -> str:
    head = (
        ["seed"]
        + [f"{t:g} s" for t in times]
        + [f"{n / 1e6:g}M steps" for n in steps]
        + [f"first ≥ {thr:g} (s)" for thr in thresholds]
        + ["final", "env steps/s"]
    )
    lines = [
        f"Each cell: {names[0]} / {names[1]}. Returns at a time or a step count are linear between evaluations "
        "(— before the first); 'first ≥' is the wall clock of the first evaluation at or above (— never); the mean "
        "row has a figure only where every seed has one.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in rows:
        cells = [str(r["seed"])]
        cells += [f"{lb._fmt(a, 0)} / {lb._fmt(b, 0)}" for a, b in r["wall"] + r["steps"]]
        cells += [f"{lb._fmt(a, 0)} / {lb._fmt(b, 0)}" for a, b in r["first"]]
        cells += [f"{lb._fmt(r['final'][0], 0)} / {lb._fmt(r['final'][1], 0)}"]
        cells += [f"{lb._fmt(r['steps_per_s'][0] / 1e6, 2)}M / {lb._fmt(r['steps_per_s'][1] / 1e6, 2)}M"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", type=Path, required=True, help="the board folder (its cells are the reference)")
    p.add_argument("--variant", type=Path, required=True, help="the variant's board folder")
    p.add_argument("--env", required=True)
    p.add_argument("--agent", default="eggroll")
    p.add_argument("--times", type=float, nargs="*", default=[120.0, 240.0, 360.0, 480.0], help="wall seconds")
    p.add_argument("--steps", type=float, nargs="*", default=[], help="env step counts")
    p.add_argument("--thresholds", type=float, nargs="*", default=[], help="returns to time")
    args = p.parse_args(argv)
    for name in ("base", "variant"):
        if not (getattr(args, name) / "cells.jsonl").is_file():
            p.error(f"--{name} {str(getattr(args, name))!r}: no cells.jsonl there (expected a leaderboard folder)")
    rows, only = compare(args.base, args.variant, args.env, args.agent, args.times, args.steps, args.thresholds)
    if not rows:
        p.error(f"no seed of {args.env} x {args.agent} is in both folders (seeds on one side only: {only})")
    print(to_markdown(rows, args.times, args.steps, args.thresholds, ("base", "variant")))
    if only:
        print(f"\nSeeds in one folder only (left out): {only}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
