"""Split one perturbed wide layer into its parts, on the GPU: the delta kernel alone, the addmm alone, both.

python benchmarks/profile_delta.py            # medians in us, one line per (rank, noise)
python benchmarks/profile_delta.py --once     # one launch of each (for ncu --kernel-name lowrank_delta_kernel)
"""

from __future__ import annotations

import argparse

import torch
import triton

from eggroll_rl.kernels import linear


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--once", action="store_true")
    ap.add_argument("--ranks", default="1,4")
    ap.add_argument("--noises", default="gaussian,rademacher")
    args = ap.parse_args()
    torch.manual_seed(0)
    R, F = 1024, 8192
    x = torch.randn(R, F, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(F, F, device="cuda", dtype=torch.bfloat16) / F**0.5
    b = torch.randn(F, device="cuda", dtype=torch.bfloat16)
    ids = torch.arange(R, device="cuda")
    d = torch.empty(R, F, device="cuda", dtype=torch.bfloat16)  # addmm target for the GEMM-alone timing
    for rank in map(int, args.ranks.split(",")):
        for noise in args.noises.split(","):

            def delta(rank=rank, noise=noise):  # the production launch (shape, unroll) without the GEMM
                return linear.lowrank_delta(
                    x, F, b, ids, seed=1, weight_index=0, bias_index=1, t_eff=0, sigma=0.1, rank=rank,
                    antithetic=True, noise=noise, paired=True,
                )  # fmt: skip

            def both(delta=delta):  # what the forward does: the delta, then cuBLAS adds x W^T into it
                return delta().addmm_(x, w.T)

            if args.once:
                delta()
                torch.cuda.synchronize()
                continue
            delta()  # compile, then capture: replaying a CUDA graph times the kernel without the host's launch cost
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                delta()
            t_delta = triton.testing.do_bench(graph.replay, return_mode="median") * 1e3
            t_mm = triton.testing.do_bench(lambda: d.addmm_(x, w.T), return_mode="median") * 1e3
            t_both = triton.testing.do_bench(both, return_mode="median") * 1e3
            t_plain = triton.testing.do_bench(lambda: torch.nn.functional.linear(x, w, b), return_mode="median") * 1e3
            print(f"r={rank} {noise:10s} delta {t_delta:6.1f} us  addmm {t_mm:6.1f}  both {t_both:6.1f}  "
                  f"plain {t_plain:6.1f}  ratio {t_plain / t_both:.3f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
