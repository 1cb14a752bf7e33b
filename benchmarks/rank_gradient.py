"""Does the perturbation rank change the ES gradient estimate's quality? A CPU check at HalfCheetah's default shapes.

The question behind it (issue #12): HalfCheetah's default (rank 4) flattens at ~4600 / ~4200 on seeds 1 and 2, where
evosax's full-rank OpenES with the same population, sigma, optimizer and network went further. Before spending GPU
time on a rank sweep, this measures what the rank changes in one generation's gradient estimate.

Model: the policy's weight matrices (17→64→64→6: ``64x17``, ``64x64``, ``6x64``), a linear objective ``f(θ) = g·θ``
with a random ``g`` (the local model of any smooth return around the current weights), ``N`` members in antithetic
pairs, each member's perturbation of each matrix ``A Bᵀ/√r`` with Gaussian ``A``, ``B`` (the noise contract's law) or a
full-rank Gaussian, fitness raw or centered-rank shaped (the default). Reported: the cosine between the estimate
``Σ_i f_i ε_i`` and ``g`` over all three matrices, mean ± std over trials.

    PYTHONPATH=$PWD python benchmarks/rank_gradient.py [--population 2048] [--trials 20] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from eggroll_rl.fitness import centered_rank  # the trainer's shaping (default fitness_shaping)

SHAPES = ((64, 17), (64, 64), (6, 64))  # HalfCheetah's default policy: 17 → 64 → 64 → 6
RANKS = (1, 2, 4, 8, 16, 0)  # 0: full-rank Gaussian


def perturbations(pairs: int, shape: tuple[int, int], rank: int, gen: torch.Generator) -> torch.Tensor:
    """``(2 * pairs, m, n)``: antithetic pairs of ``A Bᵀ/√rank`` (or full-rank Gaussian for rank 0)."""
    m, n = shape
    if rank == 0:
        eps = torch.randn(pairs, m, n, generator=gen, dtype=torch.float64)
    else:
        a = torch.randn(pairs, m, rank, generator=gen, dtype=torch.float64)
        b = torch.randn(pairs, n, rank, generator=gen, dtype=torch.float64)
        eps = a @ b.transpose(1, 2) / math.sqrt(rank)
    return torch.cat([eps, -eps])


def cosine(population: int, rank: int, shaping: str, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(*s, generator=gen, dtype=torch.float64) for s in SHAPES]
    eps = [perturbations(population // 2, s, rank, gen) for s in SHAPES]
    f = sum((e * g).sum((1, 2)) for e, g in zip(eps, grads, strict=True))
    if shaping == "centered_rank":
        f = centered_rank(f)
    estimate = torch.cat([(f[:, None, None] * e).mean(0).flatten() for e in eps])
    truth = torch.cat([g.flatten() for g in grads])
    return float(torch.nn.functional.cosine_similarity(estimate, truth, dim=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=2048)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args()
    if args.population < 2 or args.population % 2:
        parser.error(f"--population={args.population} is invalid: expected an even number >= 2 (antithetic pairs)")
    t0 = time.perf_counter()
    rows = []
    for shaping in ("raw", "centered_rank"):
        for rank in RANKS:
            cs = torch.tensor([cosine(args.population, rank, shaping, seed) for seed in range(args.trials)])
            rows.append(dict(shaping=shaping, rank="full" if rank == 0 else rank, cos_mean=float(cs.mean()),
                             cos_std=float(cs.std())))  # fmt: skip
            print(f"{shaping:13s} rank {rows[-1]['rank']!s:>4}: {cs.mean():.4f} ± {cs.std():.4f}", flush=True)
    params = sum(m * n for m, n in SHAPES)
    report = dict(
        population=args.population, trials=args.trials, shapes=SHAPES, params=params,
        # For a linear objective a pair's two members carry the same information: N/2 independent directions.
        full_rank_prediction=math.sqrt(args.population / 2 / (args.population / 2 + params)),
        rows=rows, seconds=time.perf_counter() - t0, torch=torch.__version__, python=platform.python_version(),
        command=f"PYTHONPATH=$PWD python benchmarks/rank_gradient.py --population {args.population} "
        f"--trials {args.trials}",
    )  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rank_gradient_cpu.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [
        "# Perturbation rank and the ES gradient estimate (CPU)",
        "",
        f"`{report['command']}` (torch {report['torch']}, python {report['python']}, float64, "
        f"{report['seconds']:.0f} s). Matrices {', '.join(f'{m}x{n}' for m, n in SHAPES)} ({params} weights), "
        f"{args.population} members in antithetic pairs, a linear objective with a random gradient; cosine between "
        f"the estimate and the gradient, mean ± std over {args.trials} trials. For a full-rank Gaussian and raw "
        f"fitness the expected cosine is about sqrt(P / (P + d)) = {report['full_rank_prediction']:.3f}, with P = N/2 "
        "pairs (for a linear objective a pair's two members carry the same information) and d weights.",
        "",
        "| shaping | rank | cosine |",
        "|---|---|---|",
        *(f"| {r['shaping']} | {r['rank']} | {r['cos_mean']:.4f} ± {r['cos_std']:.4f} |" for r in rows),
    ]
    (out / "rank_gradient_cpu.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
