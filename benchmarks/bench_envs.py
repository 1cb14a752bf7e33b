"""Env throughput: steps/s per backend and batch size (CPU and GPU), and the Brax adapter against raw JAX.

Measures, in one run, whatever is installed on this machine:
- torch-native CartPole (``eggroll_rl.envs``) on the CPU and on CUDA, several batch sizes;
- gymnasium's own ``SyncVectorEnv`` CartPole (raw numpy, the reference the torch-native env is compared to) and
  the gymnasium adapter;
- EnvPool CartPole and HalfCheetah-v5 through the adapter (CPU);
- Brax halfcheetah at 4096 envs per physics backend: raw ``jit(vmap(step))`` in JAX with a constant (trivial)
  action versus ``BraxVecEnv.step`` with a constant torch action (with and without the NaN check).

A "step" is one env transition: steps/s = num_envs × env.step calls / s. Every policy is trivial (constant or
alternating actions), so the numbers are the env's cost alone.

Usage: ``python benchmarks/bench_envs.py [--quick] [--out benchmarks/results] [--tag NAME]``. Results are merged
into ``<out>/envs.json`` under ``--tag`` (default: the device name) and ``<out>/envs.md`` is rewritten from all
tags.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _report import versions  # noqa: E402  (benchmarks/, the script's folder)

from eggroll_rl.envs import CartPole, make_env  # noqa: E402


def _rate(step: Callable[[], None], sync: Callable[[], None], num_envs: int, min_time: float, warmup: int) -> float:
    """Transitions per second of ``step`` (one call = ``num_envs`` transitions), timed for ``min_time`` s."""
    for _ in range(warmup):
        step()
    sync()
    calls, start = 0, time.perf_counter()
    while True:
        for _ in range(10):
            step()
        calls += 10
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return calls * num_envs / elapsed


def _cuda_sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _noop() -> None:
    pass


def bench_torch_native(rows: list, sizes: list[int], device: str, min_time: float) -> None:
    for n in sizes:
        env = CartPole(num_envs=n, device=device)
        env.reset(seed=0)
        acts = [torch.zeros(n, dtype=torch.long, device=device), torch.ones(n, dtype=torch.long, device=device)]
        i = [0]

        def step(env=env, acts=acts, i=i):
            env.step(acts[i[0] & 1])
            i[0] += 1

        sync = _cuda_sync if device == "cuda" else _noop
        rows.append(
            dict(
                backend="torch",
                env="CartPole-v1",
                device=device,
                num_envs=n,
                steps_per_s=_rate(step, sync, n, min_time, 20),
            )
        )
        # The NaN/range checks cost host syncs; measure without them too.
        env_fast = CartPole(num_envs=n, device=device, check_finite=False, check_actions=False)
        env_fast.reset(seed=0)

        def step_fast(env=env_fast, acts=acts, i=i):
            env.step(acts[i[0] & 1])
            i[0] += 1

        rows.append(
            dict(
                backend="torch (no checks)",
                env="CartPole-v1",
                device=device,
                num_envs=n,
                steps_per_s=_rate(step_fast, sync, n, min_time, 20),
            )
        )
        print(rows[-2], rows[-1], flush=True)


def bench_gym(rows: list, sizes: list[int], min_time: float) -> None:
    import gymnasium as gym

    for n in sizes:
        raw = gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode="sync")
        raw.reset(seed=0)
        acts = np.ones(n, dtype=np.int64)
        rows.append(
            dict(
                backend="gymnasium SyncVectorEnv (raw)",
                env="CartPole-v1",
                device="cpu",
                num_envs=n,
                steps_per_s=_rate(lambda raw=raw, acts=acts: raw.step(acts), _noop, n, min_time, 5),
            )
        )
        raw.close()
        env = make_env("CartPole", backend="gym", num_envs=n, device="cpu")
        env.reset(seed=0)
        tacts = torch.ones(n, dtype=torch.long)
        rows.append(
            dict(
                backend="gym adapter (sync)",
                env="CartPole-v1",
                device="cpu",
                num_envs=n,
                steps_per_s=_rate(lambda env=env, tacts=tacts: env.step(tacts), _noop, n, min_time, 5),
            )
        )
        env.close()
        print(rows[-2], rows[-1], flush=True)


def bench_envpool(rows: list, sizes: list[int], min_time: float) -> None:
    for name, env_id in (("CartPole", "CartPole-v1"), ("HalfCheetah", "HalfCheetah-v5")):
        for n in sizes:
            env = make_env(name, backend="envpool", num_envs=n, device="cpu")
            env.reset(seed=0)
            shape = (n, *env.single_action_space.shape)
            acts = torch.ones(n, dtype=torch.long) if env.is_discrete else torch.zeros(shape)
            rows.append(
                dict(
                    backend="envpool adapter (sync)",
                    env=env_id,
                    device="cpu",
                    num_envs=n,
                    steps_per_s=_rate(lambda env=env, acts=acts: env.step(acts), _noop, n, min_time, 5),
                )
            )
            env.close()
            print(rows[-1], flush=True)


def _adapter_timer(env, acts: torch.Tensor, check_finite: bool, check_every: int) -> tuple[Callable, Callable]:
    """``(setup, step)`` for one adapter variant: setup flushes pending NaN flags and sets the check mode."""

    def setup() -> None:
        env.flush_checks()
        env.check_finite, env.check_every = check_finite, check_every

    return setup, lambda: env.step(acts)


BRAX_VARIANTS = ("raw JAX", "adapter, check_every=1", "adapter, check_every=64 (default)", "adapter, no NaN check")


def bench_brax(
    ratios: list, backends: list[str], n: int, device: str, min_time: float, budget_s: float, rounds: int = 5
) -> None:
    """Brax halfcheetah: raw ``jit(vmap(step))`` against the adapter, timed in interleaved rounds.

    The Brax step's speed drifts by ~12 % between timings on the H100 machine (the same raw step took 2.49 and
    2.21 ms per call in consecutive ``profile_brax.py`` rows, GPU clocks unchanged; it is close to launch-bound on
    that host), so timing each variant once, in sequence, compared different eras.
    Each round times every variant for ``min_time`` seconds, in an order rotated every round; the ratio is taken
    within a round, and the median over rounds is reported with its range.
    """
    import jax
    import jax.numpy as jnp

    from eggroll_rl.envs.brax_adapter import BraxVecEnv

    t_start = time.perf_counter()
    for backend in backends:
        if time.perf_counter() - t_start > budget_s:
            print(f"brax: time budget spent, skipping {backend}", flush=True)
            continue
        t0 = time.perf_counter()
        env = BraxVecEnv("halfcheetah", num_envs=n, device=device, brax_backend=backend, seed=0)
        env.reset(seed=0)
        acts_t = torch.zeros(n, env.single_action_space.shape[0], device=device)
        sync = _cuda_sync if device == "cuda" else _noop

        # Raw JAX: jit(vmap(step)) of the same env, constant action, no autoreset, no torch.
        raw_env = env._env
        step = jax.jit(jax.vmap(raw_env.step))
        with jax.default_device(env._jax_device):
            state = jax.jit(jax.vmap(raw_env.reset))(jax.random.split(jax.random.PRNGKey(0), n))
            acts_j = jnp.zeros((n, env.single_action_space.shape[0]), dtype=jnp.float32)
        holder = [state]

        def raw_step(holder=holder, step=step, acts_j=acts_j):
            holder[0] = step(holder[0], acts_j)

        timers = {
            BRAX_VARIANTS[0]: (_noop, raw_step, lambda holder=holder: holder[0].obs.block_until_ready()),
            BRAX_VARIANTS[1]: (*_adapter_timer(env, acts_t, True, 1), sync),
            BRAX_VARIANTS[2]: (*_adapter_timer(env, acts_t, True, 64), sync),
            BRAX_VARIANTS[3]: (*_adapter_timer(env, acts_t, False, 64), sync),
        }
        names = list(timers)
        per_round: list[dict[str, float]] = []
        for r in range(rounds):
            rates = {}
            for name in names[r % len(names) :] + names[: r % len(names)]:
                setup, fn, fsync = timers[name]
                setup()
                rates[name] = _rate(fn, fsync, n, min_time, 3)
            per_round.append(rates)
        variants = {}
        for name in names:
            rs = [pr[name] / pr[names[0]] for pr in per_round]
            variants[name] = dict(
                steps_per_s=float(np.median([pr[name] for pr in per_round])),
                ratio=float(np.median(rs)),
                ratio_min=min(rs),
                ratio_max=max(rs),
            )
        ratios.append(
            dict(
                env="halfcheetah",
                brax_backend=backend,
                device=device,
                num_envs=n,
                rounds=rounds,
                seconds_per_timing=min_time,
                variants=variants,
                per_round=per_round,
                compile_and_bench_s=time.perf_counter() - t0,
            )
        )
        print(backend, json.dumps(variants, indent=1), flush=True)
        env.close()


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores)"


def _old_brax_table(rows: list) -> list[str]:
    """Runs written before the interleaved rounds (one sequential timing per variant)."""
    lines = [
        "Brax halfcheetah, adapter (`BraxVecEnv.step`, torch in/out by DLPack) vs raw "
        "`jit(vmap(step))` in JAX (one sequential timing per variant):",
        "",
        "| physics | device | num_envs | raw JAX steps/s | adapter (NaN check every step) | ratio | "
        "adapter, check_every=16 | ratio | check_every=64 ratio | adapter, no NaN check | ratio |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['brax_backend']} | {r['device']} | {r['num_envs']} | {r['raw_steps_per_s']:,.0f} "
            f"| {r['adapter_steps_per_s']:,.0f} | {r['ratio']:.2f} | "
            + (
                f"{r['adapter_check16_steps_per_s']:,.0f} | {r['ratio_check16']:.2f} | "
                if "ratio_check16" in r
                else "– | – | "
            )
            + (f"{r['ratio_check64']:.2f} | " if "ratio_check64" in r else "– | ")
            + f"{r['adapter_nocheck_steps_per_s']:,.0f} | {r['ratio_nocheck']:.2f} |"
        )
    return lines + [""]


def write_md(path: Path, runs: dict) -> None:
    lines = [
        "# Environment throughput",
        "",
        "Written by `benchmarks/bench_envs.py`; a step is one env transition "
        "(steps/s = num_envs × step calls / s), trivial constant/alternating actions.",
        "",
    ]
    for tag, run in runs.items():
        m = run["meta"]
        lines += [
            f"## {tag}",
            "",
            f"- date: {m['date']}; device: {m['device']}; CPU cores: {m['cpu_count']}",
            f"- versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
            "",
        ]
        if run.get("summary"):
            for k, v in run["summary"].items():
                lines.append(f"- **{k}**: {v}")
            lines.append("")
        if run["rows"]:
            lines += ["| backend | env | device | num_envs | steps/s |", "|---|---|---|---:|---:|"]
            for r in run["rows"]:
                lines.append(
                    f"| {r['backend']} | {r['env']} | {r['device']} | {r['num_envs']} | {r['steps_per_s']:,.0f} |"
                )
            lines.append("")
        old = [r for r in run["brax"] if "variants" not in r]
        new = [r for r in run["brax"] if "variants" in r]
        if old:
            lines += _old_brax_table(old)
        if new:
            lines += [
                f"Brax halfcheetah, adapter (`BraxVecEnv.step`, torch in/out by DLPack) vs raw `jit(vmap(step))` in "
                f"JAX, in {new[0]['rounds']} interleaved rounds of {new[0]['seconds_per_timing']} s per variant; "
                "ratio = median over rounds of (variant / raw in the same round), range in brackets:",
                "",
                "| physics | device | num_envs | raw JAX steps/s | "
                + " | ".join(f"{v} (ratio)" for v in BRAX_VARIANTS[1:])
                + " |",
                "|---|---|---:|---:|" + "---:|" * (len(BRAX_VARIANTS) - 1),
            ]
            for r in new:
                v = r["variants"]
                cells = [
                    f"{v[k]['steps_per_s']:,.0f} (**{v[k]['ratio']:.3f}** [{v[k]['ratio_min']:.3f}–"
                    f"{v[k]['ratio_max']:.3f}])"
                    for k in BRAX_VARIANTS[1:]
                ]
                lines.append(
                    f"| {r['brax_backend']} | {r['device']} | {r['num_envs']} | "
                    f"{v[BRAX_VARIANTS[0]]['steps_per_s']:,.0f} | " + " | ".join(cells) + " |"
                )
            lines.append("")
        if run.get("notes"):
            lines += [run["notes"], ""]
    path.write_text("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--tag", default=None, help="key of this run in envs.json (default: device name)")
    p.add_argument("--quick", action="store_true", help="short timings, fewer sizes")
    p.add_argument("--brax-backends", default="positional,spring,mjx,generalized")
    p.add_argument("--brax-envs", type=int, default=4096)
    p.add_argument("--brax-budget-s", type=float, default=300.0, help="stop starting Brax backends after this")
    p.add_argument("--brax-rounds", type=int, default=5, help="interleaved timing rounds per Brax backend")
    p.add_argument("--skip", default="", help="comma list of: torch,gym,envpool,brax")
    p.add_argument("--notes", default=None, help="a paragraph written under this run in envs.md")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    min_time = 0.3 if args.quick else 1.0
    rows: list = []
    brax: list = []
    has_cuda = torch.cuda.is_available()
    if "torch" not in skip:
        bench_torch_native(rows, [16, 256, 4096] if args.quick else [16, 256, 4096, 65536], "cpu", min_time)
        if has_cuda:
            bench_torch_native(rows, [256, 4096, 65536] if args.quick else [256, 4096, 65536, 262144], "cuda", min_time)
    if "gym" not in skip:
        try:
            bench_gym(rows, [1, 16] if args.quick else [1, 16, 64, 256], min_time)
        except ImportError as e:
            print("gym skipped:", e)
    if "envpool" not in skip:
        try:
            bench_envpool(rows, [16] if args.quick else [16, 64, 256], min_time)
        except ImportError as e:
            print("envpool skipped:", e)
    if "brax" not in skip:
        try:
            import jax

            dev = "cuda" if has_cuda and any(d.platform == "gpu" for d in jax.devices()) else "cpu"
            n = args.brax_envs if dev == "cuda" else min(args.brax_envs, 128)
            bench_brax(brax, args.brax_backends.split(","), n, dev, min_time / 2, args.brax_budget_s, args.brax_rounds)
        except ImportError as e:
            print("brax skipped:", e)

    summary = {}
    gym_best = max((r["steps_per_s"] for r in rows if r["backend"].startswith("gymnasium Sync")), default=None)
    for r in rows:
        if r["backend"] == "torch" and r["device"] == "cuda" and r["num_envs"] == 65536 and gym_best:
            summary["torch-native CartPole, CUDA, 65536 envs vs gymnasium SyncVectorEnv (best batch)"] = (
                f"{r['steps_per_s']:,.0f} vs {gym_best:,.0f} steps/s = {r['steps_per_s'] / gym_best:,.0f}x"
            )
    for b in brax:
        v = b["variants"]
        summary[f"Brax {b['brax_backend']} adapter / raw JAX at {b['num_envs']} envs ({b['device']})"] = "; ".join(
            f"{k}: {v[k]['ratio']:.3f} [{v[k]['ratio_min']:.3f}–{v[k]['ratio_max']:.3f}]" for k in BRAX_VARIANTS[1:]
        )
    run = {
        "meta": {
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "device": _device_name(),
            "cpu_count": os.cpu_count(),
            "versions": versions("numpy", "gymnasium", "envpool", "jax", "brax", "mujoco"),
            "quick": args.quick,
        },
        "summary": summary,
        "notes": args.notes,
        "rows": rows,
        "brax": brax,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jpath = out / "envs.json"
    runs = json.loads(jpath.read_text())["runs"] if jpath.exists() else {}
    runs[args.tag or _device_name()] = run
    jpath.write_text(json.dumps({"runs": runs}, indent=1))
    write_md(out / "envs.md", runs)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
