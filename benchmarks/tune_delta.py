"""Sweep the delta kernel's launch shape on the benchmark's layers: feature block, rows per program, warps.

python benchmarks/tune_delta.py [--shapes wide,rl] [--noises gaussian,rademacher]   # needs a CUDA GPU; one line
per (shape, noise, config)
"""

from __future__ import annotations

import argparse
import functools
import itertools

import torch
import triton

from eggroll_rl.kernels import linear

WIDE = [(1024, 1024, 8), (512, 512, 4), (2048, 2048, 16), (2048, 2048, 8)]
SHAPES = {  # rows, features, dtype, rank, configs (block_max, tile, warps); the first is the default
    "wide": [(1024, 8192, torch.bfloat16, 1, WIDE), (1024, 8192, torch.bfloat16, 4, WIDE)],
    "rl": [(65536, 256, torch.float32, 4, [(512, 512, 4), (1024, 1024, 8), (256, 256, 2), (1024, 1024, 4)])],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="wide,rl")
    ap.add_argument("--noises", default="gaussian,rademacher")
    args = ap.parse_args()
    torch.manual_seed(0)
    shapes = [s for name in args.shapes.split(",") for s in SHAPES[name]]
    for (rows, feat, dtype, rank, configs), noise in itertools.product(shapes, args.noises.split(",")):
        x = torch.randn(rows, feat, device="cuda", dtype=dtype)
        w = torch.randn(feat, feat, device="cuda", dtype=dtype) / feat**0.5
        b = torch.randn(feat, device="cuda", dtype=dtype)
        ids = torch.arange(rows, device="cuda")
        kw = dict(seed=1, weight_index=0, bias_index=1, t_eff=0, sigma=0.1, rank=rank, antithetic=True, noise=noise,
                  paired=True, check_paired=False)  # fmt: skip

        def plain(x=x, w=w, b=b):
            return torch.nn.functional.linear(x, w, b)

        for block, tile, warps in configs:
            launch = dict(block_max=block, tile=tile, num_warps=warps)
            fwd = functools.partial(linear.perturbed_linear_triton, x, w, b, ids, **kw, **launch)
            fwd()  # compile outside the timing
            ratios, times = [], []
            for _ in range(3):  # interleaved, to see the drift of the clocks
                p = triton.testing.do_bench(plain, return_mode="median")
                e = triton.testing.do_bench(fwd, return_mode="median")
                ratios.append(p / e)
                times.append((p, e))
            r = sorted(ratios)[1]
            p, e = times[ratios.index(r)]
            print(f"rows={rows} feat={feat} {str(dtype)[6:]} r={rank} {noise:10s} block={block} tile={tile} "
                  f"warps={warps}: {e * 1e3:7.1f} us  plain {p * 1e3:6.1f} us  ratio {r:.3f} "
                  f"(min {min(ratios):.3f} max {max(ratios):.3f})", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
