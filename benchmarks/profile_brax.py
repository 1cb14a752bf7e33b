"""Where the Brax adapter's time goes, against raw ``jit(vmap(step))``, at one batch size.

For each physics backend, times (per step call, median of ``--repeats`` runs of ``--calls`` calls each):

- ``raw``: ``jit(vmap(env.step))`` with a constant JAX action (what ``bench_envs.py`` compares against);
- ``raw+autoreset``: the same plus the adapter's same-step autoreset (``where`` over the state);
- ``adapter jax``: the adapter's jitted step (autoreset, counters, NaN flags, packed outputs) on JAX arrays only;
- ``adapter jax+donate``: the same with the state buffers donated;
- ``adapter``: ``BraxVecEnv.step`` on a torch action, NaN checks off / every 64 steps (default).

Two numbers per row: ``host`` is the Python time to issue the calls (JAX and torch dispatch asynchronously), and
``total`` is the time until the GPU has finished them. When ``host`` < ``total`` the GPU is the bottleneck and the
difference between rows is GPU work; when they are close the host is.

Usage: ``python benchmarks/profile_brax.py [--backends spring,positional] [--num-envs 4096] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _timing import host_and_total  # noqa: E402  (benchmarks/, the script's folder)

from eggroll_rl.envs.brax_adapter import BraxVecEnv  # noqa: E402


def _time(fn, sync, calls: int, repeats: int) -> dict:
    host, total = host_and_total(fn, sync, calls, repeats)
    return {
        "host_us": host * 1e6,
        "total_us": total * 1e6,
        "end_unix_s": time.time(),  # to line up with a clock log (nvidia-smi --query-gpu=clocks.sm ... -lms)
    }


def _host_only(fn, calls: int = 2000) -> float:
    for _ in range(10):
        fn()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls * 1e6


def profile(backend: str, n: int, calls: int, repeats: int, device: str) -> dict:
    import jax
    import jax.numpy as jnp

    env = BraxVecEnv("halfcheetah", num_envs=n, device=device, brax_backend=backend, seed=0)
    env.reset(seed=0)
    act = env.single_action_space.shape[0]
    acts_t = torch.zeros(n, act, device=device)
    with jax.default_device(env._jax_device):
        acts_j = jnp.zeros((n, act), dtype=jnp.float32)
    rows: dict[str, dict] = {}

    def jsync(holder):
        return lambda: jax.block_until_ready(holder[0])

    # raw
    raw_step = jax.jit(jax.vmap(env._env.step))
    h = [env._state]
    rows["raw"] = _time(lambda: h.__setitem__(0, raw_step(h[0], acts_j)), jsync(h), calls, repeats)

    # raw from fresh initial states, as bench_envs.py times it
    with jax.default_device(env._jax_device):
        fresh = jax.jit(jax.vmap(env._env.reset))(jax.random.split(jax.random.PRNGKey(0), n))
    h = [fresh]
    rows["raw, fresh states"] = _time(lambda: h.__setitem__(0, raw_step(h[0], acts_j)), jsync(h), calls, repeats)
    h = [fresh]
    rows["raw, fresh states, sync every 10"] = _time(
        lambda: h.__setitem__(0, raw_step(h[0], acts_j)), jsync(h), 10, 10 * repeats
    )
    h = [env._state]
    rows["raw, adapter's states, again"] = _time(
        lambda: h.__setitem__(0, raw_step(h[0], acts_j)), jsync(h), calls, repeats
    )

    # raw + autoreset
    first = env._first_state

    def step_reset(state, actions):
        nxt = jax.vmap(env._env.step)(state, actions)
        done = nxt.done > 0.5

        def restart(a, b):
            return jnp.where(done.reshape(done.shape + (1,) * (b.ndim - 1)), a, b)

        return nxt.replace(pipeline_state=jax.tree_util.tree_map(restart, first.pipeline_state, nxt.pipeline_state))

    raw_reset = jax.jit(step_reset)
    h = [env._state]
    rows["raw+autoreset"] = _time(lambda: h.__setitem__(0, raw_reset(h[0], acts_j)), jsync(h), calls, repeats)

    # the adapter's jitted step on JAX arrays
    fn = env._step_fn
    s = [env._state, env._steps, env._flags]

    def call(fn=fn):
        s[0], s[1], floats, bools, s[2] = fn(s[0], first, s[1], acts_j, s[2])

    rows["adapter jax"] = _time(call, lambda: jax.block_until_ready(s), calls, repeats)
    donated = jax.jit(fn.__wrapped__, donate_argnums=(0, 2))
    s[0] = jax.tree_util.tree_map(jnp.copy, s[0])
    rows["adapter jax+donate"] = _time(lambda: call(donated), lambda: jax.block_until_ready(s), calls, repeats)

    # the adapter's jitted step with the torch action crossing by DLPack (outputs stay in JAX)
    def call_dl(fn=fn):
        a = env._bridge.to_jax(acts_t)
        s[0], s[1], floats, bools, s[2] = fn(s[0], first, s[1], a, s[2])

    s[0] = env._state
    rows["adapter jax, torch action in"] = _time(call_dl, lambda: jax.block_until_ready(s), calls, repeats)

    # the full adapter
    cuda = device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    env.check_finite = False
    rows["adapter, no check"] = _time(lambda: env.step(acts_t), sync, calls, repeats)
    env.check_finite = True
    env.check_every = 64
    rows["adapter, check_every=64"] = _time(lambda: env.step(acts_t), sync, calls, repeats)
    # bench_envs.py syncs every 10 calls: the pipeline drains each time, and host time per call shows.
    rows["adapter, check_every=64, sync every 10"] = _time(lambda: env.step(acts_t), sync, 10, 10 * repeats)
    h = [env._state]
    rows["raw, sync every 10"] = _time(lambda: h.__setitem__(0, raw_step(h[0], acts_j)), jsync(h), 10, 10 * repeats)

    # host costs of the pieces, on ready arrays
    jax.block_until_ready(s)
    _, _, floats, bools, _ = fn(s[0], first, s[1], acts_j, s[2])
    jax.block_until_ready(floats)
    pieces = {
        "jax.dlpack.from_dlpack(torch action)": _host_only(lambda: jax.dlpack.from_dlpack(acts_t)),
        "torch.from_dlpack(jax output)": _host_only(lambda: torch.from_dlpack(floats)),
        f"adapter's to_jax (fast={env._bridge.fast})": _host_only(lambda: env._bridge.to_jax(acts_t)),
        f"adapter's to_torch (fast={env._bridge.fast})": _host_only(lambda: env._bridge.to_torch(floats)),
        "_check_actions": _host_only(lambda: env._check_actions(acts_t, check_values=False)),
        "tree leaves of the state": len(jax.tree_util.tree_leaves(env._state)),
    }
    env.close()
    return {"backend": backend, "num_envs": n, "rows": rows, "host_pieces_us": pieces}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="spring,positional")
    p.add_argument("--num-envs", type=int, default=4096)
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    results = []
    for backend in args.backends.split(","):
        r = profile(backend, args.num_envs, args.calls, args.repeats, args.device)
        results.append(r)
        print(f"\n{backend}, {args.num_envs} envs ({args.device})")
        for name, v in r["rows"].items():
            raw = r["rows"]["raw, sync every 10" if "sync every 10" in name else "raw"]["total_us"]
            ratio = raw / v["total_us"]
            print(f"  {name:40s} host {v['host_us']:8.1f} us  total {v['total_us']:8.1f} us  raw/this {ratio:.3f}")
        for name, v in r["host_pieces_us"].items():
            print(f"  {name:40s} {v:.1f}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "profile_brax.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
