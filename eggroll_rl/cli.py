"""``eggroll-rl``: train, evaluate and list environments from the command line.

    eggroll-rl train CartPole                       # tuned defaults, run directory under runs/
    eggroll-rl train HalfCheetah --population 2048 --generations 300 --out runs/cheetah
    eggroll-rl train --resume runs/cheetah --generations 600   # the run directory knows its env
    eggroll-rl eval runs/cheetah --episodes 20 --video cheetah.html
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
    ev.add_argument("--video", metavar="FILE", help="record one episode: .mp4/.gif (gymnasium, MuJoCo), .html (brax)")
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
        values.pop("env", None)
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


def _progress_bar(quiet: bool):
    """A ``progress_fn`` drawing a rich (or tqdm) bar with return, eval, steps/s and ETA; and its closer."""
    if quiet:
        return None, lambda: None
    try:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    except ImportError:
        rich_ok = False
    else:
        rich_ok = True
    if rich_ok:
        bar = Progress(
            TextColumn("[bold]gen {task.fields[gen]:>5}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("return {task.fields[ret]:>9}  eval {task.fields[ev]:>9}  {task.fields[sps]:>8} steps/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            transient=False,
        )
        bar.start()
        task = bar.add_task("train", total=1000, gen=0, ret="-", ev="-", sps="-")

        def update(record: dict[str, Any]) -> None:
            ev = record.get("eval_return")
            fields = dict(
                gen=record["generation"], ret=f"{record['train_return_mean']:.1f}", sps=f"{record['steps_per_s']:,.0f}"
            )
            if ev is not None:
                fields["ev"] = f"{ev:.1f}"
            bar.update(task, completed=int(1000 * record["progress"]), **fields)

        return update, bar.stop
    try:
        from tqdm import tqdm
    except ImportError:

        def update(record: dict[str, Any]) -> None:
            print(
                f"gen {record['generation']} return {record['train_return_mean']:.1f} "
                f"eval {record.get('eval_return', '-')}",
                file=sys.stderr,
            )

        return update, lambda: None
    t = tqdm(total=1000, unit="‰", bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")

    def update(record: dict[str, Any]) -> None:
        t.n = int(1000 * record["progress"])
        t.set_postfix(
            ret=f"{record['train_return_mean']:.1f}", eval=record.get("eval_return"), sps=f"{record['steps_per_s']:.0f}"
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


if __name__ == "__main__":
    sys.exit(main())
