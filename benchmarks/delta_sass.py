"""Offline SASS of the perturbed forward's delta kernel (``linear.lowrank_delta_kernel``) for sm_90, per noise kind.

Compiles the kernel as the JIT specializes it for a layer's default launch shape (``linear.delta_launch_shape``; unit
strides as constexprs, pointers 16-byte aligned) with ``dump_sass.compile_for_target`` (Triton's bundled ptxas, no
GPU), and prints per case the registers and the counts of the instructions that tell the noise paths apart: ``MUFU``
(the special-function unit: lg2/sin/cos), integer work (``IMAD``, ``LOP3``: Philox), and the shared-memory round trips
of a layout change (``BAR``, ``LDS``, ``STS``). Counts are static (a loop body counts once).

Usage: ``PYTHONPATH=. python benchmarks/delta_sass.py [--shape K M] [--ranks 1 4] [--no-bias]``; with the H200's
Triton side by side: ``PYTHONPATH=/tmp/t36:. python benchmarks/delta_sass.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dump_sass  # noqa: E402

OPS = ("MUFU", "IMAD", "LOP3", "FFMA", "FMUL", "SHFL", "BAR", "LDS", "STS", "LDG", "STG")


def compile_delta(noise: str, rank: int, K: int, M: int, bias_noise: bool = True, arch: int = 90):
    """The compiled delta kernel for a ``K -> M`` layer at ``rank`` (antithetic, paired rows, bias perturbed)."""
    import triton

    from eggroll_rl.kernels import linear
    from eggroll_rl.kernels._launch import noise_code

    block_k, block_m, rows, warps = linear.delta_blocks(K, M)
    args = {
        "x_ptr": ("*bf16", None), "ids_ptr": ("*i64", None), "bias_ptr": ("*bf16", None), "d_ptr": ("*bf16", None),
        "R": ("i32", 1024), "M": ("i32", M), "K": ("i32", K), "stride_xr": ("i32", K), "stride_dr": ("i32", M),
        "seed": ("i32", 77), "w_index": ("i32", 3), "b_index": ("i32", 5), "t_eff": ("i32", 3),
        "scale": ("fp32", None), "sigma": ("fp32", None),
    }  # fmt: skip
    const = dict(
        stride_xk=1, stride_dm=1, RANK=rank, RP=triton.next_power_of_2(rank), ANTITHETIC=True, PAIRED=True,
        NOISE=noise_code(noise), FAST_MATH=True, HAS_BIAS=True, PERTURB_W=True, PERTURB_B=bias_noise, P=rows,
        BLOCK_K=block_k, BLOCK_M=block_m,
    )  # fmt: skip
    return dump_sass.compile_for_target(linear.lowrank_delta_kernel, args, const, {"num_warps": warps}, arch)


def instruction_counts(compiled) -> tuple[int, dict[str, int], str]:
    """(instructions, counts of ``OPS``, cuobjdump's resource line) of a compiled kernel."""
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        sass, usage = dump_sass.sass_and_usage(compiled.asm, cubin)
    instrs = dump_sass.parse_sass(sass)
    ops = Counter(op.split(".")[0] for _, op, _ in instrs)
    return len(instrs), {o: ops.get(o, 0) for o in OPS}, usage.split(" STACK")[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", nargs=2, type=int, default=(8192, 8192), metavar=("K", "M"))
    ap.add_argument("--ranks", nargs="+", type=int, default=(1, 4))
    ap.add_argument("--noises", nargs="+", default=("gaussian", "gaussian_fast", "rademacher"))
    ap.add_argument("--no-bias", action="store_true", help="the bias not perturbed (no vector noise)")
    args = ap.parse_args(argv)
    import triton

    K, M = args.shape
    print(f"lowrank_delta_kernel, {K} -> {M}, bf16, sm_90, Triton {triton.__version__}; static counts")
    print("| rank | noise | instructions | registers | " + " | ".join(OPS) + " |")
    print("|---" * (4 + len(OPS)) + "|")
    for rank in args.ranks:
        for noise in args.noises:
            n, ops, usage = instruction_counts(compile_delta(noise, rank, K, M, not args.no_bias))
            print(f"| {rank} | {noise} | {n} | {usage} | " + " | ".join(str(ops[o]) for o in OPS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
