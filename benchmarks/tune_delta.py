"""Sweep the delta kernel's launch shape (feature block, rows per program, warps) on the benchmark's layers.

python benchmarks/tune_delta.py        # needs a CUDA GPU; prints one line per (shape, noise, config)
"""

from __future__ import annotations

import itertools

import torch
import triton

from eggroll_rl.kernels import triton_ops

WIDE = [(1024, 1024, 8), (512, 512, 4), (2048, 2048, 16), (1024, 2048, 8), (2048, 2048, 8)]
SHAPES = [  # rows, features, dtype, rank, configs (block_max, tile, warps); the first is the default of each shape
    (1024, 8192, torch.bfloat16, 1, WIDE),
    (1024, 8192, torch.bfloat16, 4, WIDE),
    (65536, 256, torch.float32, 4, [(512, 512, 4), (1024, 1024, 8), (256, 256, 2), (1024, 1024, 4)]),
]


def main() -> None:
    torch.manual_seed(0)
    for (rows, feat, dtype, rank, configs), noise in itertools.product(SHAPES, ("gaussian", "rademacher")):
        x = torch.randn(rows, feat, device="cuda", dtype=dtype)
        w = torch.randn(feat, feat, device="cuda", dtype=dtype) / feat**0.5
        b = torch.randn(feat, device="cuda", dtype=dtype)
        ids = torch.arange(rows, device="cuda")
        kw = dict(seed=1, weight_index=0, bias_index=1, t_eff=0, sigma=0.1, rank=rank, antithetic=True, noise=noise,
                  paired=True)  # fmt: skip
        plain = triton.testing.do_bench(lambda x=x, w=w, b=b: torch.nn.functional.linear(x, w, b), return_mode="median")
        for block, tile, warps in configs:
            triton_ops.DELTA_BLOCK_MAX, triton_ops.DELTA_TILE, triton_ops.DELTA_WARPS = block, tile, warps

            def fwd(x=x, w=w, b=b, ids=ids, kw=kw):
                return triton_ops.perturbed_linear_triton(x, w, b, ids, **kw)

            ms = triton.testing.do_bench(fwd, return_mode="median")
            print(f"rows={rows} feat={feat} {str(dtype)[6:]} r={rank} {noise:10s} block={block} tile={tile} "
                  f"warps={warps}: {ms * 1e3:8.1f} us  plain {plain * 1e3:7.1f} us  ratio {plain / ms:.3f}",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
