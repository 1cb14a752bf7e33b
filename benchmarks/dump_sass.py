"""SASS of the fused update GEMMs (``update.lowrank_addmm_kernel``, ``update.lowrank_adam_kernel``) for sm_90.

Compiles each kernel the way the JIT would specialize it for the paper shape (m = n = 8192, K = J r with 512 noise
indices, bf16 factors, float32 master with a bf16 copy): pointers 16-byte aligned, the sizes and ``stride_cm``
divisible by 16 (``tt.divisibility``), the launch shape's meta-parameters as constexprs. Two modes:

* ``offline`` (default without a GPU): ``triton.compile(ASTSource(...), target=GPUTarget("cuda", 90, 32))``, no
  driver needed (Triton's bundled ``ptxas`` and ``cuobjdump``).
* ``jit`` (default with a CUDA GPU): launches the kernel on real tensors and takes the compiled kernel the launch
  returns: the binary the benchmarks run.

Per case it writes ``<case>.sass`` (full), ``<case>.ttgir``, ``<case>.ptx``, and ``summary.md`` / ``summary.json``:
registers, spills, shared memory, the counts of key instructions (whole kernel and main loop), the main loop's
excerpt, and the TTGIR facts that decide the lowering (``warp_group_dot`` = wgmma, async copies / TMA, pipeline
buffers, layout conversions).

Usage: ``PYTHONPATH=. python benchmarks/dump_sass.py --out DIR`` (``--mode offline|jit``, ``--cases``). Triton
3.6 side by side: ``PYTHONPATH=/tmp/t36:. python benchmarks/dump_sass.py --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

# Instruction families counted (a SASS opcode counts for the first family it starts with).
FAMILIES = (
    "HGMMA", "HMMA", "LDGSTS", "UTMALDG", "UTMASTG", "UBLKCP", "UTMAPF", "LDGDEPBAR", "DEPBAR", "LDSM", "LDS",
    "STSM", "STS", "LDG", "STG", "STL", "LDL", "BAR", "WARPGROUP", "SYNCS", "WARPSYNC", "RED", "ATOM", "SHFL", "BRA",
)  # fmt: skip
# TTGIR ops that decide the lowering.
TTGIR_OPS = (
    "ttng.warp_group_dot", "ttng.warp_group_dot_wait", "tt.dot", "ttg.async_copy_global_to_local",
    "ttg.async_commit_group", "ttg.async_wait", "ttng.async_tma_copy_global_to_local", "ttng.tensormap_create",
    "tt.descriptor_load", "ttg.local_alloc", "ttg.local_load", "ttg.local_store", "ttg.memdesc_index",
    "ttg.memdesc_subview", "ttg.convert_layout", "ttng.fence_async_shared", "ttg.warp_specialize", "scf.for",
)  # fmt: skip
M = N = 8192
J = 512  # noise indices of the paper shape (1024 members = 512 antithetic pairs)
EXCERPT_LINES = 40
H200_SMS = 132


def _tma_shapes(update) -> dict:
    """The persistent TMA kernel's candidates (``update.TMA_GEMM_SHAPES``), by name."""
    return {f"tma{shape.block_m}x{shape.block_n}": shape for shape in update.TMA_GEMM_SHAPES}


def _cases(update):
    """(name, kernel, args, constexprs, launch shape, note) per case; args: name -> (signature type, value)."""
    out = []
    addmm_shapes = {"gemm0": update.GEMM_SHAPES[0]}
    TMA_SHAPES = _tma_shapes(update)
    for rank in (1, 4):
        for tag, shape in addmm_shapes.items():
            args = {
                "at_ptr": ("*bf16", None), "bt_ptr": ("*bf16", None), "c_ptr": ("*fp32", None),
                "copy_ptr": ("*bf16", None), "sq_ptr": ("*fp32", None), "M": ("i32", M), "N": ("i32", N),
                "K": ("i32", J * rank), "stride_cm": ("i32", N), "alpha": ("fp32", 1e-3), "beta": ("fp32", 1.0),
                "round_k0": ("i32", 12345), "round_k1": ("i32", 54321),  # do_not_specialize: plain i32 (odd values)
            }  # fmt: skip
            const = dict(READ_C=True, HAS_COPY=True, UPCAST=False, PREFETCH_C=shape.prefetch_c)
            out.append((f"addmm_{tag}_r{rank}", update.lowrank_addmm_kernel, args, const, shape))
            # low_precision="stochastic": C is the bf16 weight itself, rounded stochastically, no copy
            sr_args = {**args, "c_ptr": ("*bf16", None)}
            sr_const = dict(const, HAS_COPY=False, STOCHASTIC=True)
            out.append((f"addmm_{tag}_sr_r{rank}", update.lowrank_addmm_kernel, sr_args, sr_const, shape))
        for tag, shape in TMA_SHAPES.items():  # the persistent TMA kernel (GemmShape.persistent), 132 SMs
            args = {
                "at_desc": (f"tensordesc<bf16[{shape.block_k}, {shape.block_m}]>", None),
                "bt_desc": (f"tensordesc<bf16[{shape.block_k}, {shape.block_n}]>", None), "c_ptr": ("*fp32", None),
                "copy_ptr": ("*bf16", None), "sq_ptr": ("*fp32", None), "M": ("i32", M), "N": ("i32", N),
                "K": ("i32", J * rank), "stride_cm": ("i32", N), "alpha": ("fp32", 1e-3), "beta": ("fp32", 1.0),
                "round_k0": ("i32", 12345), "round_k1": ("i32", 54321),  # do_not_specialize: plain i32 (odd values)
            }  # fmt: skip
            const = dict(READ_C=True, HAS_COPY=True, UPCAST=False, PROGRAMS=shape.persistent * H200_SMS, FLATTEN=True)
            out.append((f"addmm_{tag}_r{rank}", update.lowrank_addmm_tma_kernel, args, const, shape))
    shape = update.ADAM_GEMM_SHAPES[0]
    for rank in (1, 4):
        args = {
            "at_ptr": ("*bf16", None), "bt_ptr": ("*bf16", None), "p_ptr": ("*fp32", None), "m_ptr": ("*fp32", None),
            "v_ptr": ("*fp32", None), "copy_ptr": ("*bf16", None), "sq_ptr": ("*fp32", None), "M": ("i32", M),
            "N": ("i32", N), "K": ("i32", J * rank),
        }  # fmt: skip
        for s in ("grad_sign", "one_minus_beta1", "beta2", "one_minus_beta2", "eps", "weight_decay", "decay",
                  "neg_step_size", "bias_correction2_sqrt"):  # fmt: skip
            args[s] = ("fp32", 0.5)
        const = dict(WEIGHT_DECAY=0, HAS_COPY=True, UPCAST=False)
        out.append((f"adam_adam0_r{rank}", update.lowrank_adam_kernel, args, const, shape))
    return out


def _meta(shape):
    return dict(BLOCK_M=shape.block_m, BLOCK_N=shape.block_n, BLOCK_K=shape.block_k, GROUP_M=shape.group_m)


def _options(shape):
    opts = dict(num_warps=shape.num_warps, num_stages=shape.num_stages)
    if shape.maxnreg is not None:
        opts["maxnreg"] = shape.maxnreg
    return opts


def compile_for_target(kernel, args, constexprs, options, arch: int, int_attrs: bool = True):
    """``triton.compile`` of ``kernel`` for ``GPUTarget("cuda", arch, 32)`` (same API in 3.6 and 3.9: signature by
    name with ``"constexpr"`` for constexprs, attrs keyed by argument index tuples).

    ``args``: name -> (signature type, value or None) of the runtime arguments; ``constexprs``: name -> value; a
    constexpr in neither takes its default. Pointers get ``tt.divisibility`` 16 (the caching allocator aligns them);
    with ``int_attrs``, as the JIT specializes the GEMMs' sizes, ints divisible by 16 get it too and an int equal to 1
    (which the JIT would make a constexpr) is refused; without it ints stay plain (kernels whose ints the JIT does not
    specialize, ``do_not_specialize``)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    constexprs = dict(constexprs)
    signature, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name not in constexprs and name not in args:
            constexprs[name] = kernel.params[i].default
        if name in constexprs:
            signature[name] = "constexpr"
            continue
        ty, value = args[name]
        signature[name] = ty
        if ty.startswith("*") or (int_attrs and ty == "i32" and value % 16 == 0):
            attrs[(i,)] = [["tt.divisibility", 16]]
        assert not (int_attrs and ty == "i32" and value == 1), name
    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)


def compile_offline(kernel, args, const, shape, arch: int):
    """``compile_for_target`` with a GEMM launch shape's meta-parameters and options."""
    return compile_for_target(kernel, args, {**const, **_meta(shape)}, _options(shape), arch)


def compile_jit(kernel, args, const, shape):
    """Launch ``kernel`` once on real CUDA tensors (the sizes of ``args``) and return the compiled kernel."""
    import torch
    import triton
    from triton.tools.tensor_descriptor import TensorDescriptor

    dtypes = {"*bf16": torch.bfloat16, "*fp32": torch.float32}
    Mv, Nv, Kv = args["M"][1], args["N"][1], args["K"][1]
    tiles = triton.cdiv(Mv, shape.block_m) * triton.cdiv(Nv, shape.block_n)
    sizes = {"at_ptr": (Kv, Mv), "bt_ptr": (Kv, Nv), "sq_ptr": (2, tiles), "at_desc": (Kv, Mv), "bt_desc": (Kv, Nv)}
    call = []
    for i, name in enumerate(kernel.arg_names):
        if name in const or name in _meta(shape) or (name not in args and kernel.params[i].is_constexpr):
            continue  # a constexpr given here, or left to its default (as compile_for_target does)
        ty, value = args[name]
        if ty.startswith("tensordesc"):  # "tensordesc<bf16[BK, BM]>": a descriptor of a random bf16 operand
            block = [int(b) for b in ty[ty.index("[") + 1 : ty.index("]")].split(",")]
            t = torch.randn(sizes[name], device="cuda").to(torch.bfloat16)
            call.append(TensorDescriptor.from_tensor(t, block))
        elif ty.startswith("*"):
            t = torch.randn(sizes.get(name, (Mv, Nv)), device="cuda").to(dtypes[ty])
            call.append(t.abs_() if name == "v_ptr" else t)
        else:
            call.append(value)
    grid = const.get("PROGRAMS", tiles)  # the persistent kernel's grid
    compiled = kernel[(grid,)](*call, **const, **_meta(shape), **_options(shape))
    torch.cuda.synchronize()
    return compiled


def _tool(name: str) -> str | None:
    env = os.environ.get(f"TRITON_{name.upper()}_PATH")
    if env and Path(env).exists():
        return env
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(bundled) if bundled.exists() else shutil.which(name)


def _run(cmd) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;?\s*(?:/\*.*)?$")


def parse_sass(sass: str):
    """[(address, opcode, text)] of the instructions of the (single) kernel in ``sass``."""
    out = []
    for line in sass.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        text = m.group(2).rstrip(" ;")
        toks = text.split()
        if toks and toks[0].startswith("@"):
            toks = toks[1:]
        if toks:
            out.append((int(m.group(1), 16), toks[0], text))
    return out


def family(op: str) -> str | None:
    for f in FAMILIES:
        if op == f or op.startswith(f + "."):
            return f
    return None


def counts(instrs) -> dict[str, int]:
    c = Counter(family(op) for _, op, _ in instrs)
    return {f: c.get(f, 0) for f in FAMILIES}


def main_loop(instrs):
    """(start, end) indices of the innermost backward branch's body that holds the MMA (HGMMA or HMMA), else of
    the one with the most loads to shared memory."""
    addr_index = {a: i for i, (a, _, _) in enumerate(instrs)}
    loops = []
    for i, (a, op, text) in enumerate(instrs):
        if not op.startswith("BRA"):
            continue
        tm = re.search(r"0x([0-9a-f]+)", text)
        target = int(tm.group(1), 16) if tm else None
        if target is not None and target < a and target in addr_index:
            loops.append((addr_index[target], i))

    def score(lp):
        body = instrs[lp[0] : lp[1] + 1]
        mma = sum(op.startswith(("HGMMA", "HMMA")) for _, op, _ in body)
        return (mma > 0, -(lp[1] - lp[0]) if mma else sum(op.startswith("LDGSTS") for _, op, _ in body))

    return max(loops, key=score) if loops else None


def _labels_to_addresses(sass: str) -> str:
    """cuobjdump prints branch targets as ``0x...`` already; nvdisasm-style ``.L_x_N`` labels are resolved."""
    labels = {}
    for m in re.finditer(r"^\.L_x_(\d+):\s*\n\s*/\*([0-9a-f]+)\*/", sass, re.M):
        labels[m.group(1)] = m.group(2)
    return re.sub(r"`\(\.L_x_(\d+)\)", lambda m: "0x" + labels.get(m.group(1), "ffffffff"), sass)


def excerpt(instrs, lo: int, hi: int, n: int = EXCERPT_LINES) -> list[str]:
    """At most ``n`` lines of the loop ``[lo, hi]``: all of it if it fits, else its counted instructions (MMA,
    copies, barriers, shared/local memory, branches) in order, each run of the others (address and predicate
    arithmetic) folded into one ``...`` line."""
    body = instrs[lo : hi + 1]
    fmt = [f"/*{a:04x}*/ {t}" for a, _, t in body]
    if len(fmt) <= n:
        return fmt
    out, skipped = [], 0
    for (_, op, _), line in zip(body, fmt):
        if family(op) is None:
            skipped += 1
            continue
        if skipped:
            out.append(f"   ... {skipped} other")
            skipped = 0
        out.append(line)
    if skipped:
        out.append(f"   ... {skipped} other")
    if len(out) > n:
        out = out[: n - 1] + [f"   ... ({len(out) - n + 1} more lines)"]
    return out


def ttgir_facts(ttgir: str) -> dict:
    ops = {op: len(re.findall(rf"(?<![\w.]){re.escape(op)}\b", ttgir)) for op in TTGIR_OPS}
    bufs = sorted(set(re.findall(r"!ttg\.memdesc<(\d+x\d+x\d+x\w+)", ttgir)))
    mma = sorted(set(re.findall(r"#ttg\.nvidia_mma<\{[^}]*\}>", ttgir)))
    dots = [line.strip()[:220] for line in ttgir.splitlines() if "warp_group_dot " in line or " tt.dot " in line]
    return {"ops": ops, "shared_buffers": bufs, "mma_layouts": mma, "dot_lines": dots}


def ptxas_path(arch: int = 90) -> str | None:
    """The ptxas this Triton runs for ``sm_<arch>`` (3.6: ``ptxas``, CUDA 12.8; 3.9: ``ptxas-blackwell``, 13.x)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return get_ptxas(arch).path
    except Exception:  # noqa: BLE001 - older layouts: the bundled or the system ptxas
        return _tool("ptxas")


def ptxas_report(ptx: str, arch: str, maxnreg: int | None) -> str:
    """ptxas -v's register and spill lines for ``ptx`` (the same ptxas and target the compile used)."""
    ptxas = ptxas_path(int(re.sub(r"\D", "", arch) or 90))
    if ptxas is None:
        return "ptxas not found"
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "k.ptx"
        p.write_text(ptx)
        cmd = [ptxas, "-v", f"--gpu-name={arch}", str(p), "-o", str(Path(d) / "k.cubin")]
        if maxnreg:
            cmd.insert(1, f"--maxrregcount={maxnreg}")
        r = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line.split(":", 1)[-1].strip() for line in (r.stdout + r.stderr).splitlines()]
        return "; ".join(line for line in lines if "Used" in line or "spill" in line or "fatal" in line)


def sass_and_usage(asm: dict, cubin: Path) -> tuple[str, str]:
    """A compiled kernel's SASS (``asm["sass"]``, else ``cuobjdump -sass`` of the ``cubin`` file written from it) and
    cuobjdump's resource line (registers, stack, shared memory; "" without cuobjdump)."""
    cuobjdump = _tool("cuobjdump")
    if "sass" in asm and asm["sass"]:
        sass = asm["sass"]
    elif cuobjdump:
        sass = _run([cuobjdump, "-sass", str(cubin)])
    else:
        raise SystemExit("no cuobjdump (set TRITON_CUOBJDUMP_PATH) and no asm['sass']")
    if not cuobjdump:
        return sass, ""
    usage = _run([cuobjdump, "-res-usage", str(cubin)]).splitlines()
    return sass, " ".join(line.strip() for line in usage if "REG:" in line)


def analyse(name, compiled, shape, out: Path) -> dict:
    asm = compiled.asm
    cubin = asm["cubin"]
    (out / f"{name}.cubin").write_bytes(cubin)
    (out / f"{name}.ttgir").write_text(asm["ttgir"])
    (out / f"{name}.ptx").write_text(asm["ptx"])
    sass, res_usage = sass_and_usage(asm, out / f"{name}.cubin")
    sass = _labels_to_addresses(sass)
    (out / f"{name}.sass").write_text(sass)
    instrs = parse_sass(sass)
    md = compiled.metadata
    md = md._asdict() if hasattr(md, "_asdict") else dict(md)
    arch = re.search(r"\.target\s+(\w+)", asm["ptx"])
    loop = main_loop(instrs)
    info = {
        "case": name,
        "launch_shape": shape._asdict(),
        "instructions": len(instrs),
        "res_usage": res_usage,
        "ptxas": ptxas_report(asm["ptx"], arch.group(1) if arch else "sm_90a", shape.maxnreg),
        "metadata": {
            k: md.get(k) for k in ("num_warps", "num_stages", "shared", "n_regs", "n_spills", "maxnreg") if k in md
        },  # fmt: skip
        # After a launch (jit mode) the kernel carries the driver's figures.
        "driver": {k: getattr(compiled, k) for k in ("n_regs", "n_spills", "n_max_threads") if hasattr(compiled, k)},
        "ptx_target": arch.group(1) if arch else None,
        "counts": counts(instrs),
        "ttgir": ttgir_facts(asm["ttgir"]),
    }
    if loop:
        lo, hi = loop
        body = instrs[lo : hi + 1]
        info["main_loop"] = {
            "from": f"{instrs[lo][0]:04x}",
            "to": f"{instrs[hi][0]:04x}",
            "instructions": len(body),
            "counts": {k: v for k, v in counts(body).items() if v},
            "mma": sorted({op for _, op, _ in body if op.startswith(("HGMMA", "HMMA"))}),
            "excerpt": excerpt(instrs, lo, hi),
        }
    # The epilogue: the instructions after the main loop.
    if loop:
        tail = instrs[loop[1] + 1 :]
        info["after_loop_counts"] = {k: v for k, v in counts(tail).items() if v}
        info["after_loop_stores"] = sorted({op for _, op, _ in tail if op.startswith(("STG", "STS", "STSM"))})
    return info


def summary_md(results, header: str) -> str:
    lines = [header, ""]
    cols = ("HGMMA", "HMMA", "LDGSTS", "UTMALDG", "UBLKCP", "LDSM", "LDS", "STS", "STSM", "BAR", "WARPGROUP",
            "SYNCS", "DEPBAR", "LDG", "STG", "STL", "LDL")  # fmt: skip
    lines.append("| case | regs / stack (res-usage) | ptxas | shared | " + " | ".join(cols) + " |")
    lines.append("|---" * (4 + len(cols)) + "|")
    for r in results:
        c = r["counts"]
        shared = r["metadata"].get("shared")
        lines.append(
            f"| {r['case']} | {r['res_usage']} | {r['ptxas'].replace(chr(10), ' ')} | {shared} | "
            + " | ".join(str(c[k]) for k in cols) + " |"
        )  # fmt: skip
    for r in results:
        lines += ["", f"### {r['case']}", ""]
        shape, n_instr, target = r["launch_shape"], r["instructions"], r["ptx_target"]
        lines.append(f"launch shape {shape}; {n_instr} instructions; PTX target {target}; driver {r['driver']}")
        t = r["ttgir"]
        ops = ", ".join(f"{k} {v}" for k, v in t["ops"].items() if v)
        lines += ["", f"TTGIR: {ops}", f"shared buffers: {', '.join(t['shared_buffers']) or 'none'}"]
        lines += [f"mma layouts: {'; '.join(t['mma_layouts']) or 'none'}"]
        lines += [f"dot: `{d}`" for d in t["dot_lines"]]
        if "main_loop" in r:
            lp = r["main_loop"]
            lines += ["", f"main loop {lp['from']}–{lp['to']}: {lp['instructions']} instructions, MMA {lp['mma']},"]
            lines += [f"counts in the loop {lp['counts']}; after it {r['after_loop_counts']} (stores "
                      f"{r['after_loop_stores']})", "", "```"]  # fmt: skip
            lines += lp["excerpt"] + ["```"]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="output folder (full SASS, TTGIR, PTX, summary.md/json)")
    p.add_argument(
        "--mode",
        choices=("auto", "offline", "jit"),
        default="auto",
        help="offline: triton.compile for sm_90 (no GPU); jit: launch on the GPU; auto: jit with CUDA",
    )
    p.add_argument("--arch", type=int, default=90, help="offline target's compute capability (90: H100/H200)")
    p.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    args = p.parse_args(argv)

    import triton

    from eggroll_rl.kernels import update

    mode = args.mode
    if mode == "auto":
        import torch

        mode = "jit" if torch.cuda.is_available() else "offline"
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = {c for c in args.cases.split(",") if c}
    results = []
    for name, kernel, kargs, const, shape in _cases(update):
        if wanted and name not in wanted:
            continue
        print(f"compiling {name} ({mode}) ...", file=sys.stderr, flush=True)
        if mode == "offline":
            compiled = compile_offline(kernel, kargs, const, shape, args.arch)
        else:
            compiled = compile_jit(kernel, kargs, const, shape)
        results.append(analyse(name, compiled, shape, args.out))
        r = results[-1]
        print(f"  {r['res_usage']} | {r['ptxas']} | {r.get('main_loop', {}).get('mma')}", file=sys.stderr)
    ptxas = ptxas_path(args.arch)
    ptxas_version = _run([ptxas, "--version"]).strip().splitlines()[-1] if ptxas else "?"
    header = (f"## Triton {triton.__version__} ({mode}, sm_{args.arch}; ptxas: {ptxas_version}; "
              f"python {sys.version.split()[0]})")  # fmt: skip
    (args.out / "summary.md").write_text(summary_md(results, header))
    (args.out / "summary.json").write_text(json.dumps({"triton": triton.__version__, "mode": mode,
                                                       "results": results}, indent=1))  # fmt: skip
    print(args.out / "summary.md")


if __name__ == "__main__":
    main()
