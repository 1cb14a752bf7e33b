"""``eggroll-rl``: train, evaluate and list environments from the command line.

    eggroll-rl train CartPole                       # tuned defaults, run directory under runs/
    eggroll-rl train HalfCheetah --population 2048 --generations 300 --out runs/cheetah
    eggroll-rl train --resume runs/cheetah --generations 600   # the run directory knows its env
    eggroll-rl eval runs/cheetah --episodes 20 --video cheetah.html   # Brax runs; the others: .mp4 or .gif
    eggroll-rl envs

Every ``TrainConfig`` field is a ``train`` flag (``--hidden-sizes 64 64``, ``--lr-schedule linear``, ...); its
docstring is the help. Precedence: per-env defaults < ``--config FILE`` < flags. Bad input (unknown flag or env,
invalid values, an unwritable output directory, a ``--resume`` directory of another env) stops with an error
message and exit status 2 before any environment is built.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
import typing
import warnings
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser"]

# Flags whose name differs from the field name.
_FLAG_NAMES = {"out_dir": "--out"}
# The short list in the usage line; every other field is in the help under "all settings".
_MAIN_FIELDS = ("backend", "device", "population", "rank", "sigma", "lr", "optimizer", "seed")
_BUDGET_FIELDS = ("generations", "total_steps", "time_limit_s")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # exit status 2 with the usage, as argparse does
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _field_type(f: dataclasses.Field) -> Any:
    hints = typing.get_type_hints(_config_cls())
    return hints[f.name]


def _config_cls():
    from eggroll_rl.agents.config import TrainConfig

    return TrainConfig


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r} ({exc.msg})") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _add_field(group: argparse._ArgumentGroup, f: dataclasses.Field, doc: str, flag: str) -> None:
    tp = _field_type(f)
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    # argparse %-formats help strings: a literal "%" in a docstring must reach it as "%%".
    help_text = f"{doc} (default: {default!r})".replace("%", "%%") if doc else None
    kwargs: dict[str, Any] = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
    if tp is bool:
        group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
    elif tp is int:
        group.add_argument(flag, type=int, metavar="N", **kwargs)
    elif tp is float:
        group.add_argument(flag, type=float, metavar="X", **kwargs)
    elif typing.get_origin(tp) is tuple:
        group.add_argument(flag, type=int, nargs="+", metavar="N", **kwargs)
    elif tp is dict or typing.get_origin(tp) is dict:
        group.add_argument(flag, type=_json_dict, metavar="JSON", **kwargs)
    else:
        group.add_argument(flag, type=str, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from eggroll_rl.agents.config import field_docs

    cls = _config_cls()
    docs = field_docs(cls)
    parser = _Parser(prog="eggroll-rl", description="EGGROLL low-rank evolution strategies for RL.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train a policy", description="Train an MLP policy with EGGROLL.")
    train.add_argument(
        "env",
        metavar="ENV",
        nargs="?",
        help="environment name (see `eggroll-rl envs`), e.g. CartPole (optional with --resume)",
    )
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "env"}
    main = train.add_argument_group("main settings")
    for name in _MAIN_FIELDS:
        _add_field(main, fields[name], docs.get(name, ""), "--" + name.replace("_", "-"))
    budget = main.add_mutually_exclusive_group()
    _add_field(budget, fields["generations"], docs["generations"], "--generations")
    _add_field(budget, fields["total_steps"], docs["total_steps"], "--total-steps")
    main.add_argument("--config", metavar="FILE", help="YAML or JSON file of settings (field names as keys)")
    _add_field(main, fields["out_dir"], "Run directory (default: runs/<ENV>_s<seed>_<date-time>)", "--out")
    main.add_argument(
        "--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint (ENV may be left out)"
    )
    rest = train.add_argument_group("all settings")
    for name, f in fields.items():
        if name in _MAIN_FIELDS or name in ("generations", "total_steps", "out_dir"):
            continue
        _add_field(rest, f, docs.get(name, ""), _FLAG_NAMES.get(name, "--" + name.replace("_", "-")))
    train.add_argument("--quiet", action="store_true", help="no progress bar (errors and the summary only)")

    ev = sub.add_parser("eval", help="evaluate a trained run", description="Evaluate the policy of a run.")
    ev.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `eggroll-rl train`")
    ev.add_argument("--episodes", type=int, default=10, metavar="K", help="episodes to evaluate (default: 10)")
    ev.add_argument(
        "--video", metavar="FILE", help="record one episode: .html for Brax runs, .mp4/.gif for the others (gymnasium)"
    )
    ev.add_argument("--policy", choices=("best", "last"), default="best", help="which checkpoint (default: best)")
    ev.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto", help="device (default: auto)")
    ev.add_argument("--seed", type=int, default=12345, help="seed of the evaluation episodes (default: 12345)")
    ev.add_argument("--json", action="store_true", help="print the result as JSON")

    sub.add_parser(
        "envs",
        help="list environment names and installed backends",
        description="List environment names and which backends are installed.",
    )
    return parser


# ------------------------------------------------------------------------------------------------------------ train
def _train_config(args: argparse.Namespace):
    """The run's config: per-env defaults (or, with --resume, the run's stored config) < --config FILE < flags."""
    from eggroll_rl.agents.config import TrainConfig, load_config_file
    from eggroll_rl.agents.run_dir import RunDirectory

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values: dict[str, Any] = {}
    if args.config:
        values.update(load_config_file(args.config))
        file_env = values.pop("env", None)
        if file_env is not None and args.env is not None and not _same_env(file_env, args.env):
            raise ValueError(
                f"config file {args.config!r} has env={file_env!r} but the command line says {args.env!r}: "
                "make them agree or remove env from the file"
            )
    values.update({k: v for k, v in vars(args).items() if k != "env" and k in names})
    # An explicit budget replaces the default budget (steps, generations and time limit together).
    if any(k in values for k in _BUDGET_FIELDS):
        values.setdefault("total_steps", 0)
        values.setdefault("time_limit_s", 0.0)
        if values["total_steps"] == 0:
            values.setdefault("generations", TrainConfig.generations)
    if not args.resume:
        return TrainConfig.for_env(args.env, **values)
    if "out_dir" in values and Path(values["out_dir"]).resolve() != Path(args.resume).resolve():
        raise ValueError(
            f"--out {values['out_dir']} and --resume {args.resume} differ; a resumed run writes to its own directory"
        )
    stored = RunDirectory(args.resume).read_config()
    env = args.env or stored.get("env")  # a different ENV is refused by train() with both names
    return TrainConfig.from_dict({**stored, **values, "env": env, "out_dir": args.resume})


def _same_env(a: Any, b: Any) -> bool:
    """Whether two env names mean the same env (``"cartpole"``, ``"CartPole-v1"``, ``"CartPole"``)."""
    from eggroll_rl.envs.registry import resolve_env

    if a == b:
        return True
    try:
        spec_a, spec_b = resolve_env(a), resolve_env(b)
    except ValueError:
        return False
    return spec_a is not None and spec_a == spec_b and a.rpartition(":")[0] == b.rpartition(":")[0]


# Outside a terminal, one plain line per this fraction of the budget (about 20 lines a run), or sooner when this
# many seconds have passed since the last line.
_PLAIN_LINE_FRACTION = 0.05
_PLAIN_LINE_EVERY_S = 30.0


def _si(value: float) -> str:
    """``642123`` -> ``"642k"``: at most five characters, for the progress bar."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.0f}"


def _rich_progress(console: Any = None):
    """The rich progress bar of ``train``: fits an 80-column terminal (gen, bar, %, returns, steps/s, ETA)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]gen {task.fields[gen]:>5}"),
        BarColumn(bar_width=12),
        TextColumn("{task.percentage:>3.0f}%"),
        TextColumn("ret {task.fields[ret]:>8} eval {task.fields[ev]:>8} {task.fields[sps]:>5} steps/s"),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        transient=False,
        console=console,
    )


def _plain_lines(file: typing.TextIO):
    """A ``progress_fn`` printing one line per ``_PLAIN_LINE_FRACTION`` of the budget (for logs and pipes)."""
    state = {"bucket": -1, "printed_at": -math.inf, "eval": "-"}

    def update(record: dict[str, Any]) -> None:
        if record.get("eval_return") is not None:
            state["eval"] = f"{record['eval_return']:.1f}"
        progress = min(record["progress"], 1.0)  # a time limit can overshoot
        bucket = int(progress / _PLAIN_LINE_FRACTION)
        now = time.monotonic()
        if bucket == state["bucket"] and now - state["printed_at"] < _PLAIN_LINE_EVERY_S:
            return
        state.update(bucket=bucket, printed_at=now)
        print(
            f"gen {record['generation']} ({100 * progress:.0f}%)  return "
            f"{record['train_return_mean']:.1f}  eval {state['eval']}  {record['steps_per_s']:,.0f} steps/s  "
            f"{record.get('wall_time_s', 0.0):.0f} s",
            file=file,
            flush=True,
        )

    return update


def _progress_bar(quiet: bool):
    """A ``progress_fn`` for ``train`` and its closer: a rich (or tqdm) bar on a terminal, plain lines otherwise."""
    if quiet:
        return None, lambda: None
    try:
        from rich.console import Console
    except ImportError:
        Console = None
    if Console is not None:
        console = Console()
        if not console.is_terminal:
            return _plain_lines(sys.stdout), lambda: None
        bar = _rich_progress(console)
        bar.start()
        task = bar.add_task("train", total=1000, gen=0, ret="-", ev="-", sps="-")

        def update(record: dict[str, Any]) -> None:
            ev = record.get("eval_return")
            fields = dict(
                gen=record["generation"], ret=f"{record['train_return_mean']:.1f}", sps=_si(record["steps_per_s"])
            )
            if ev is not None:
                fields["ev"] = f"{ev:.1f}"
            bar.update(task, completed=int(1000 * min(record["progress"], 1.0)), **fields)

        return update, bar.stop
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is None or not sys.stderr.isatty():
        return _plain_lines(sys.stdout), lambda: None
    t = tqdm(total=1000, unit="‰", bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")

    def update(record: dict[str, Any]) -> None:
        t.n = int(1000 * record["progress"])
        t.set_postfix(
            ret=f"{record['train_return_mean']:.1f}", eval=record.get("eval_return"), sps=_si(record["steps_per_s"])
        )

    return update, t.close


def _interrupted_message(exc) -> str:
    """Where an interrupted run stands and the exact command that continues it."""
    import shlex
    import signal

    name = signal.Signals(exc.signum).name
    if exc.run_dir is None or exc.generation is None:
        return f"interrupted by {name} before the run started: nothing to resume; run the same command again"
    return (
        f"interrupted by {name}: {exc.run_dir} holds the metrics, the learning curve and a checkpoint after "
        f"{exc.generation} generations. Continue with:\n  eggroll-rl train --resume {shlex.quote(str(exc.run_dir))}"
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from eggroll_rl.agents.trainer import TrainingInterrupted, train

    if args.env is None and not args.resume:
        raise ValueError("ENV is missing: give an environment name (e.g. `eggroll-rl train CartPole`) or --resume DIR")
    config = _train_config(args)
    if not config.out_dir:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        config = config.replace(out_dir=str(Path("runs") / f"{config.env.replace(':', '_')}_s{config.seed}_{stamp}"))
    update, close = _progress_bar(args.quiet)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            result = train(config, progress_fn=update, resume=args.resume)
    except TrainingInterrupted as exc:
        close()  # the bar first, then the message (closing twice is harmless)
        print(_interrupted_message(exc), file=sys.stderr)
        return 128 + exc.signum
    finally:
        close()
    last = result.metrics[-1] if result.metrics else {}
    print(
        f"done: {len(result.metrics)} generations recorded, {last.get('env_steps', 0):,} env steps, "
        f"{last.get('wall_time_s', 0.0):.1f} s; final eval return {result.final_eval_return}, "
        f"best {result.best_eval_return:.2f}\nrun directory: {result.run_dir}"
    )
    return 0


# ------------------------------------------------------------------------------------------------------------- eval
def _cmd_eval(args: argparse.Namespace) -> int:
    from eggroll_rl.agents.config import TrainConfig
    from eggroll_rl.agents.policy import load_policy
    from eggroll_rl.agents.run_dir import RunDirectory
    from eggroll_rl.agents.trainer import build_env, episode_limit, evaluate, resolve_device

    if args.episodes < 1:
        raise ValueError(f"--episodes {args.episodes} is invalid: expected an integer >= 1")
    run = RunDirectory(args.run_dir)
    config = TrainConfig.from_dict(run.read_config())
    path = run.best_checkpoint if args.policy == "best" else run.last_checkpoint
    if args.policy == "best" and not path.is_file():
        path = run.last_checkpoint
    device = resolve_device(args.device)
    policy = load_policy(path, map_location=device)
    env = build_env(config, args.episodes, device, seed=args.seed)
    try:
        if args.video:  # a wrong format fails before the evaluation, not after
            from eggroll_rl.agents.video import check_video_path

            check_video_path(config, args.video, backend=getattr(env, "backend", None))
        stats = evaluate(policy, env, seed=args.seed, max_steps=episode_limit(env, config))
    finally:
        env.close()
    stats.update(run_dir=str(run.path), checkpoint=str(path), env=config.env, backend=getattr(env, "backend", ""))
    if args.video:
        from eggroll_rl.agents.video import record_video

        video = record_video(
            policy.cpu(),
            config,
            args.video,
            seed=args.seed,
            max_steps=episode_limit(env, config),
            backend=stats["backend"],
        )
        stats["video"] = video
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        print(
            f"{config.env} ({stats['backend']}), {stats['episodes']} episodes of {path.name}: return "
            f"{stats['return_mean']:.2f} +- {stats['return_std']:.2f} (min {stats['return_min']:.2f}, max "
            f"{stats['return_max']:.2f}), mean length {stats['length_mean']:.1f}"
        )
        if args.video:
            print(f"video: {stats['video']['path']} (return {stats['video']['return']:.2f})")
    return 0


# ------------------------------------------------------------------------------------------------------------- envs
def _cmd_envs(args: argparse.Namespace) -> int:
    from eggroll_rl.envs import ENV_SPECS, available_backends

    installed = set(available_backends())
    backends = ("torch", "gym", "envpool", "brax")
    rows = [("env", *backends)]
    for name in sorted(ENV_SPECS):
        spec = ENV_SPECS[name]
        cells = []
        for b in backends:
            ident = spec.id_for(b)
            cells.append("-" if ident is None else (ident if b in installed else f"({ident})"))
        rows.append((name, *cells))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print(
        f"\ninstalled backends: {', '.join(b for b in backends if b in installed)}; "
        "(id) = backend not installed, - = not available in that backend"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"train": _cmd_train, "eval": _cmd_eval, "envs": _cmd_envs}
    formatwarning = warnings.formatwarning
    warnings.formatwarning = lambda message, *_, **__: f"eggroll-rl {args.command}: warning: {message}\n"
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        # A run that had started is reported by _cmd_train (TrainingInterrupted): this is before or after one.
        print(f"eggroll-rl {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, ImportError, RuntimeError) as exc:
        if os.environ.get("EGGROLL_RL_DEBUG"):
            raise
        print(f"eggroll-rl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = formatwarning


if __name__ == "__main__":
    sys.exit(main())
