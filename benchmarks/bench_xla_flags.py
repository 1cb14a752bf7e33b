"""Raw Brax step time (jit(vmap(step)), JAX only) under different ``XLA_FLAGS``, each in a fresh process.

The Brax physics step launches on the order of a thousand small kernels; this measures whether XLA's command
buffers (CUDA graphs) cut the host's launch time. Usage:
``python benchmarks/bench_xla_flags.py [--physics spring] [--num-envs 2048] [--flag-sets "|--xla_...=..."]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import os, sys, time, json
import jax, jax.numpy as jnp
from brax import envs
physics, n, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
env = envs.get_environment("halfcheetah", backend=physics)
step = jax.jit(jax.vmap(env.step))
state = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(0), n))
acts = jnp.zeros((n, env.action_size))
t = time.perf_counter(); state = step(state, acts); jax.block_until_ready(state); compile_s = time.perf_counter() - t
out = []
for calls_per_sync in (1, 10, calls):
    for _ in range(3):
        state = step(state, acts)
    jax.block_until_ready(state)
    host = total = 0.0
    for _ in range(max(1, calls // calls_per_sync)):
        t0 = time.perf_counter()
        for _ in range(calls_per_sync):
            state = step(state, acts)
        t1 = time.perf_counter()
        jax.block_until_ready(state)
        t2 = time.perf_counter()
        host += t1 - t0; total += t2 - t0
    k = max(1, calls // calls_per_sync) * calls_per_sync
    out.append(dict(calls_per_sync=calls_per_sync, host_ms=host / k * 1e3, total_ms=total / k * 1e3))
print("RESULT", json.dumps(dict(compile_s=compile_s, timings=out)))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--physics", default="spring")
    p.add_argument("--num-envs", type=int, default=2048)
    p.add_argument("--calls", type=int, default=100)
    p.add_argument(
        "--flag-sets",
        default="|--xla_gpu_enable_command_buffer=",
        help="XLA_FLAGS values to compare, separated by '|' (an empty one is XLA's default)",
    )
    p.add_argument("--out", default=None)
    args = p.parse_args()
    results = []
    for flags in args.flag_sets.split("|"):
        env = dict(os.environ, XLA_FLAGS=flags, XLA_PYTHON_CLIENT_PREALLOCATE="false")
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, args.physics, str(args.num_envs), str(args.calls)],
            env=env,
            capture_output=True,
            text=True,
        )
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if not line:
            print(f"XLA_FLAGS={flags!r}: failed\n{proc.stderr[-2000:]}", flush=True)
            results.append(dict(flags=flags, error=proc.stderr[-2000:]))
            continue
        r = dict(flags=flags, wall_s=time.perf_counter() - t0, **json.loads(line[0][7:]))
        results.append(r)
        print(f"XLA_FLAGS={flags!r}: compile {r['compile_s']:.1f} s", flush=True)
        for t in r["timings"]:
            print(
                f"   sync every {t['calls_per_sync']:4d} calls: host {t['host_ms']:.3f} ms, "
                f"total {t['total_ms']:.3f} ms per step",
                flush=True,
            )
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "xla_flags.json"), "w") as f:
            json.dump(dict(physics=args.physics, num_envs=args.num_envs, results=results), f, indent=1)


if __name__ == "__main__":
    main()
