"""``eggroll-rl``: train, evaluate and list environments from the command line.

    eggroll-rl train CartPole                       # tuned defaults, run directory under runs/
    eggroll-rl train HalfCheetah --population 2048 --generations 300 --out runs/cheetah
    eggroll-rl train HalfCheetah --time-limit-s 480  # a budget replaces the default one: 480 s, no generation cap
    eggroll-rl train Ant --help                     # every setting, with Ant's defaults
    eggroll-rl train Ant --print-config             # the resolved config as YAML (a --config FILE)
    eggroll-rl train --resume runs/cheetah --generations 600   # the run directory knows its env
    eggroll-rl eval runs/cheetah --episodes 20 --video cheetah.html   # Brax runs; the others: .mp4 or .gif
    eggroll-rl envs

The flags are made by tyro from ``TrainConfig``'s fields; each field's docstring is its help (``--hidden-sizes 64 64``,
``--lr-schedule linear``, ...). Precedence: per-env defaults < ``--config FILE`` < flags. Bad input (unknown flag or
env, invalid values, an unwritable output directory, a ``--resume`` directory of another env) stops with exit
status 2 before any environment is built: tyro's message for what it cannot parse, a one-line
``eggroll-rl train: error: ...`` for the rest.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from eggroll_rl.agents.config import TrainConfig, load_config_file, with_overrides
from eggroll_rl.choices import Device

__all__ = ["main"]

_PROG = "eggroll-rl"
_COMMANDS = {
    "train": "train a policy",
    "eval": "evaluate a trained run",
    "envs": "list environment names and installed backends",
}


class _UsageError(ValueError):
    """Bad command-line input found outside tyro (reported like every other ``ValueError``: one line, exit 2)."""


# ------------------------------------------------------------------------------------------------------- the flags
def _json_dict(args: list[str]) -> dict:
    try:
        value = json.loads(args[0])
    except json.JSONDecodeError as exc:
        raise ValueError(f"expected a JSON object, got {args[0]!r} ({exc.msg})") from exc
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {args[0]!r}")
    return value


_JsonDict = Annotated[
    dict,
    tyro.constructors.PrimitiveConstructorSpec(
        nargs=1,
        metavar="JSON",
        instance_from_str=_json_dict,
        is_instance=lambda value: isinstance(value, dict),
        str_from_instance=lambda value: [json.dumps(value)],
    ),
]


# TrainConfig as tyro parses it: the env is the ENV argument, --out names the run directory, and the values are
# checked once, by TrainConfig, after the per-env defaults, the config file and the flags are merged.
@dataclass
class _Settings(TrainConfig):
    env: tyro.conf.Suppress[str] = "CartPole"
    env_kwargs: _JsonDict = dataclasses.field(default_factory=dict)
    out_dir: Annotated[
        str,
        tyro.conf.arg(
            name="out",
            metavar="DIR",
            help="Run directory (default: runs/<ENV>_s<seed>_<date-time>)",
            help_behavior_hint="",
        ),
    ] = ""

    def __post_init__(self) -> None:  # no checks here: see the class docstring
        pass


@dataclass
class _TrainArgs:
    env: tyro.conf.Positional[Annotated[str | None, tyro.conf.arg(metavar="ENV")]] = None
    """Environment name (see `eggroll-rl envs`), e.g. CartPole (optional with --resume)."""
    config: Annotated[str | None, tyro.conf.arg(metavar="FILE")] = None
    """YAML or JSON file of settings (field names as keys)."""
    resume: Annotated[str | None, tyro.conf.arg(metavar="DIR")] = None
    """Continue the run in DIR from its last checkpoint (ENV may be left out)."""
    quiet: tyro.conf.FlagCreatePairsOff[bool] = False
    """No progress bar (errors and the summary only)."""
    print_config: tyro.conf.FlagCreatePairsOff[bool] = False
    """Print the resolved config (YAML, usable as --config FILE) and exit."""
    settings: tyro.conf.OmitArgPrefixes[_Settings] = dataclasses.field(default_factory=_Settings)
    """Every field of TrainConfig; the defaults shown are those of ENV (or of the --resume run) and --config FILE."""


@dataclass
class _EvalArgs:
    run_dir: tyro.conf.Positional[Annotated[str, tyro.conf.arg(metavar="RUN_DIR")]]
    """A run directory written by `eggroll-rl train`."""
    episodes: Annotated[int, tyro.conf.arg(metavar="K")] = 10
    """Episodes to evaluate."""
    video: Annotated[str | None, tyro.conf.arg(metavar="FILE")] = None
    """Record one episode: .html for Brax runs, .mp4/.gif for the others (gymnasium)."""
    policy: Literal["best", "last"] = "best"
    """Which checkpoint."""
    device: Device = "auto"
    """Device."""
    seed: int = 12345
    """Seed of the evaluation episodes."""
    json: tyro.conf.FlagCreatePairsOff[bool] = False
    """Print the result as JSON."""


def _flags(f: dataclasses.Field) -> tuple[str, ...]:
    """The flags that set field ``f`` of ``TrainConfig``."""
    name = "--out" if f.name == "out_dir" else "--" + f.name.replace("_", "-")
    return (name, "--no-" + name[2:]) if f.type in (bool, "bool") else (name,)


def _given(argv: list[str], flags: tuple[str, ...]) -> bool:
    return any(arg in flags or arg.split("=", 1)[0] in flags for arg in argv)


def _parse_train(argv: list[str]) -> tuple[_TrainArgs, TrainConfig]:
    """The train command's arguments and the run's config: per-env defaults (or, with --resume, the run's stored
    config) < --config FILE < flags."""
    from eggroll_rl.agents.run_dir import RunDirectory

    # Pass 1 finds ENV, --config and --resume (with generic defaults and no checks; --help waits for pass 2).
    helping = any(a in ("-h", "--help") for a in argv)
    first = _tyro(_TrainArgs, [a for a in argv if a not in ("-h", "--help")], "train")
    if helping and not (first.config is None or Path(first.config).is_file()):
        first = dataclasses.replace(first, config=None)  # the help does not need it: shown without it
    if helping and not (first.resume is None or (Path(first.resume) / "config.yaml").is_file()):
        first = dataclasses.replace(first, resume=None)
    values: dict[str, Any] = {}
    if first.config:
        values.update(load_config_file(first.config))
        file_env = values.pop("env", None)
        if file_env is not None and first.env is not None and not _same_env(file_env, first.env):
            raise ValueError(
                f"config file {first.config!r} has env={file_env!r} but the command line says {first.env!r}: "
                "make them agree or remove env from the file"
            )
    stored = RunDirectory(first.resume).read_config() if first.resume else None
    # Pass 2: the same arguments over the defaults that apply (so --help shows them), then the flags given win.
    shown = _defaults(first.env, stored, values)
    args = _tyro(_TrainArgs, argv, "train", default=_TrainArgs(settings=_Settings(**shown)))
    for f in dataclasses.fields(TrainConfig):
        if f.name != "env" and _given(argv, _flags(f)):
            values[f.name] = getattr(args.settings, f.name)
    if _given(argv, ("--generations",)) and _given(argv, ("--total-steps",)):
        raise _UsageError("argument --total-steps: not allowed with argument --generations")
    if args.env is None and not args.resume:
        raise _UsageError("ENV is missing: give an environment name (e.g. `eggroll-rl train CartPole`) or --resume DIR")
    # An explicit budget (flags and config file) replaces the default or stored one whole: the limits given apply,
    # the others are off (generations=0: no cap), so `--time-limit-s 480` alone trains for 480 s (with_overrides).
    if not args.resume:
        return args, TrainConfig.for_env(args.env, **values)
    if "out_dir" in values and Path(values["out_dir"]).resolve() != Path(args.resume).resolve():
        raise ValueError(
            f"--out {values['out_dir']} and --resume {args.resume} differ; a resumed run writes to its own directory"
        )
    env = args.env or stored.get("env")  # a different ENV is refused by train() with both names
    return args, TrainConfig.from_dict(with_overrides(stored, values) | {"env": env, "out_dir": args.resume})


def _defaults(env: str | None, stored: dict[str, Any] | None, file_values: dict[str, Any]) -> dict[str, Any]:
    """The settings --help shows: the env's (or the resumed run's) defaults and the config file, where valid."""
    base = TrainConfig.from_dict(stored) if stored else TrainConfig.for_env(env) if env else TrainConfig()
    try:
        merged = base.replace(**{k: v for k, v in file_values.items() if k in base.to_dict()})
    except (ValueError, TypeError):  # reported once the flags are in (a flag may fix it)
        merged = base
    return {k: v for k, v in merged.to_dict().items() if k != "env"} | {"hidden_sizes": merged.hidden_sizes}


def _tyro(cls: type, argv: list[str], command: str, **kwargs: Any) -> Any:
    return tyro.cli(cls, args=argv, prog=f"{_PROG} {command}", description=_COMMANDS[command] + ".", **kwargs)


def _train_config(argv: list[str]) -> TrainConfig:
    """The config ``eggroll-rl train ARGV`` trains with."""
    return _parse_train(argv)[1]


# --------------------------------------------------------------------------------------------------------- train
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
    """A ``progress_fn`` for ``train`` and its closer: a rich bar on a terminal, plain lines otherwise."""
    if quiet:
        return None, lambda: None
    try:
        from rich.console import Console
    except ImportError:  # rich comes with the cli extra
        return _plain_lines(sys.stdout), lambda: None
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


def _cmd_train(argv: list[str]) -> int:
    from eggroll_rl.agents.trainer import TrainingInterrupted, train

    args, config = _parse_train(argv)
    if args.print_config:
        print(_yaml(config.to_dict()), end="")
        return 0
    if not config.out_dir:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        config = config.replace(out_dir=str(Path("runs") / f"{config.env.replace(':', '_')}_s{config.seed}_{stamp}"))
    lead = int(os.environ.get("RANK", "0")) == 0  # under torchrun rank 0 alone shows progress and the summary
    update, close = _progress_bar(args.quiet or not lead)
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
    if not lead:
        return 0
    last = result.metrics[-1] if result.metrics else {}
    print(
        f"done: {len(result.metrics)} generations recorded, {last.get('env_steps', 0):,} env steps, "
        f"{last.get('wall_time_s', 0.0):.1f} s; final eval return {result.final_eval_return}, "
        f"best {result.best_eval_return:.2f}{_without_shift(config, result.metrics)}\nrun directory: {result.run_dir}"
    )
    return 0


def _without_shift(config, metrics: list[dict[str, Any]]) -> str:
    """With a ``reward_shift`` (the alive bonus the recipes take out of the fitness): the final evaluation's return
    less that shift per step, what the policy earns by moving rather than by staying up ("" without one)."""
    evals = [r for r in metrics if r.get("eval_return") is not None and r.get("eval_length_mean") is not None]
    if not config.reward_shift or not evals:
        return ""
    ret, length = evals[-1]["eval_return"], evals[-1]["eval_length_mean"]
    moving = ret - config.reward_shift * length
    shift = f"reward_shift={config.reward_shift:g}"
    return f"; less {shift} a step (the alive bonus): {moving:.2f} over {length:.0f}-step episodes"


# ------------------------------------------------------------------------------------------------------------- eval
def _cmd_eval(argv: list[str]) -> int:
    from eggroll_rl.agents.builders import build_env, episode_limit
    from eggroll_rl.agents.policy import load_policy
    from eggroll_rl.agents.run_dir import RunDirectory
    from eggroll_rl.agents.trainer import evaluate
    from eggroll_rl.envs import resolve_device

    args = _tyro(_EvalArgs, argv, "eval")
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
def _cmd_envs(argv: list[str]) -> int:
    from eggroll_rl.envs import ENV_SPECS, available_backends

    _tyro(_EnvsArgs, argv, "envs")

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


def _yaml(values: dict[str, Any]) -> str:
    try:
        import yaml
    except ImportError:  # JSON is valid YAML
        return json.dumps(values, indent=2) + "\n"
    return yaml.safe_dump(values, sort_keys=False)


@dataclass
class _EnvsArgs:
    pass


def _usage(file: typing.TextIO) -> None:
    print(f"usage: {_PROG} [-h] {{{','.join(_COMMANDS)}}} ...", file=file)


def _printable(text: str) -> str:
    """``text`` with control characters escaped: some CUDA messages hold a device index as a raw byte (a NUL for
    device 0), which cut the printed error short."""
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    if command in (None, "-h", "--help"):  # like tyro's --help and parse errors: SystemExit
        _usage(sys.stdout if command else sys.stderr)
        if command is None:
            print(f"{_PROG}: error: a command is required: {', '.join(_COMMANDS)}", file=sys.stderr)
            raise SystemExit(2)
        print("\nEGGROLL low-rank evolution strategies for RL.\n\ncommands:")
        for name, text in _COMMANDS.items():
            print(f"  {name:<8}{text} (`{_PROG} {name} --help`)")
        raise SystemExit(0)
    if command not in _COMMANDS:
        _usage(sys.stderr)
        print(f"{_PROG}: error: invalid command {command!r} (choose from {', '.join(_COMMANDS)})", file=sys.stderr)
        raise SystemExit(2)
    handlers = {"train": _cmd_train, "eval": _cmd_eval, "envs": _cmd_envs}
    formatwarning = warnings.formatwarning
    warnings.formatwarning = lambda message, *_, **__: f"{_PROG} {command}: warning: {message}\n"
    try:
        return handlers[command](argv[1:])
    except KeyboardInterrupt:
        # A run that had started is reported by _cmd_train (TrainingInterrupted): this is before or after one.
        print(f"{_PROG} {command}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, ImportError, RuntimeError) as exc:
        if os.environ.get("EGGROLL_RL_DEBUG"):
            raise
        print(f"{_PROG} {command}: error: {_printable(str(exc))}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = formatwarning


if __name__ == "__main__":
    sys.exit(main())
