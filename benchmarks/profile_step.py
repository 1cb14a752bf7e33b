"""Where the time of ``EggrollStrategy.step()`` goes at the paper shape (Linear 8192x8192 bf16, 1024 members).

python benchmarks/profile_step.py      # needs a CUDA GPU; wall time per step and torch.profiler's kernel table
"""

from __future__ import annotations

import time

import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile

from eggroll_rl import EggrollStrategy


def main() -> None:
    lin = nn.Linear(8192, 8192, device="cuda", dtype=torch.bfloat16)
    f = torch.randn(1024, device="cuda")
    for optimizer in (None, "sgd", "adam"):
        for rank in (1, 4):
            es = EggrollStrategy(sigma=0.01, lr=1e-4, rank=rank, optimizer=optimizer, seed=0)
            es.setup(lin)
            for _ in range(3):
                es.perturb(1024)  # each step() consumes one perturb()
                es.step(f)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(10):
                es.perturb(1024)  # each step() consumes one perturb()
                es.step(f)
            torch.cuda.synchronize()
            wall = (time.perf_counter() - t0) / 10 * 1e3
            print(f"optimizer={optimizer} rank={rank}: {wall:.3f} ms per step (wall, synced)", flush=True)
            if rank in (1, 4):
                with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                    for _ in range(3):
                        es.perturb(1024)
                        es.step(f)
                    torch.cuda.synchronize()
                print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))


if __name__ == "__main__":
    main()
