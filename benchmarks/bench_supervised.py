"""One EGGROLLTrainer step, batched path against the iterate() loop, on the digits example's networks.

    python benchmarks/bench_supervised.py --device cuda                 # the issue #17 target: >= 20x at N=512
    python benchmarks/bench_supervised.py --device cpu --threads 1

Times ``train_step`` (evaluate the population, update, the post-update loss) at ``--n-workers`` members on a
random batch of 8x8 images, for the MLP and the CNN of ``examples/supervised_digits.py``; the median of
``--repeats`` steps after one warm-up step. Prints a table and writes ``<results>/bench_supervised_<device>.{json,md}``
(device, versions, shapes, dtype float32). Tests never assert on these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples"))

from supervised_digits import make_model  # noqa: E402

from eggroll_rl import EGGROLLTrainer  # noqa: E402


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    return f"CPU ({cpu}, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores)"


def time_step(model: nn.Module, x, y, batched: bool, args, device: torch.device) -> float:
    """Median seconds of one ``train_step``."""
    trainer = EGGROLLTrainer(
        model, device, rank=args.rank, sigma=0.05, learning_rate=0.02, n_workers=args.n_workers, grad_clip=None,
        log_steps=0, optimizer="adam", loss_fn="cross_entropy", batched=batched,
    )  # fmt: skip
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    trainer.train_step(x, y)  # warm-up: Triton compilation, noise caches, allocator
    sync()
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        trainer.train_step(x, y)
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--n-workers", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="CPU intra-op threads (0: torch's default)")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch_size, 1, 8, 8, generator=gen).to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=gen).to(device)
    rows = []
    for kind in ("mlp", "cnn"):
        torch.manual_seed(0)
        loop = time_step(make_model(kind, 64).to(device), x, y, False, args, device)
        batched = time_step(make_model(kind, 64).to(device), x, y, True, args, device)
        rows.append({"model": kind, "loop_s": loop, "batched_s": batched, "speedup": loop / batched})
    print(f"one train_step, n_workers={args.n_workers}, batch {args.batch_size}, rank {args.rank}, {device}")
    print(f"{'model':6} {'loop (s)':>10} {'batched (s)':>12} {'speedup':>8}")
    for r in rows:
        print(f"{r['model']:6} {r['loop_s']:10.4f} {r['batched_s']:12.4f} {r['speedup']:7.1f}x")
    record = {
        "command": " ".join(["python", *sys.argv]),
        "device": _device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "dtype": "float32",
        "shapes": {"n_workers": args.n_workers, "batch_size": args.batch_size, "rank": args.rank, "x": [1, 8, 8]},
        "repeats": args.repeats,
        "rows": rows,
    }
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bench_supervised_{device.type}.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        f"# One EGGROLLTrainer step: batched vs iterate() loop ({device.type})",
        "",
        f"`{record['command']}` — {record['device']}, torch {record['torch']}, float32, n_workers={args.n_workers}, "
        f"batch {args.batch_size}, rank {args.rank}; median of {args.repeats} steps after a warm-up.",
        "",
        "| model | loop (s/step) | batched (s/step) | speedup |",
        "|---|---|---|---|",
        *(f"| {r['model']} | {r['loop_s']:.4f} | {r['batched_s']:.4f} | {r['speedup']:.1f}x |" for r in rows),
        "",
    ]
    (out / f"bench_supervised_{device.type}.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
