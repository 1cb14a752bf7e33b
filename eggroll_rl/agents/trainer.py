"""RL training with EGGROLL: ``train(config, progress_fn=None) -> TrainResult``.

One generation, top to bottom::

    sigma, lr  <- schedules(progress)
    with strategy.perturb(N, epoch=generation) as pop:       # N perturbed policies, noise regenerated on the fly
        returns <- rollout(env, pop.batched_forward(policy, obs, member_ids))   # one episode per env, masked
    policy.obs_norm.update(live observations of the whole population)
    strategy.step(mean return of each member)                # ES gradient + optimizer
    every eval_every generations: evaluate the mean policy over eval_episodes episodes

Reproducibility: every generation resets the environments with a seed derived from ``(config.seed, generation)``
and the policy is deterministic, so a generation depends only on the state saved in a checkpoint (strategy,
optimizer, observation statistics). Resuming from ``checkpoints/last.pt`` therefore gives the same curve as an
uninterrupted run.

A run directory is locked while a run trains into it, holds a checkpoint from before the first generation, and gets
a checkpoint of the last completed generation on SIGINT/SIGTERM (``TrainingInterrupted``); see
``docs/run_directories.md``.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from eggroll_rl.agents.checkpoint import CheckpointError, load_latest_checkpoint, rotate_and_save
from eggroll_rl.agents.config import TrainConfig
from eggroll_rl.agents.policy import POLICY_FORMAT, MLPPolicy, make_policy, save_policy
from eggroll_rl.agents.rollout import rollout
from eggroll_rl.agents.run_dir import RunDirectory, RunLock, plot_learning_curve
from eggroll_rl.agents.schedules import schedule_value

__all__ = [
    "TrainResult",
    "TrainingInterrupted",
    "train",
    "evaluate",
    "resolve_device",
    "build_env",
    "generation_seed",
    "CHECKPOINT_FORMAT",
    "RESUMABLE_OVERRIDES",
]

CHECKPOINT_FORMAT = "eggroll_rl.train_checkpoint/1"
# Fields a resumed run may change: they alter the budget or the outputs, not the curve.
RESUMABLE_OVERRIDES = frozenset(
    {
        "generations",
        "total_steps",
        "time_limit_s",
        "eval_every",
        "eval_episodes",
        "checkpoint_every",
        "out_dir",
        "tensorboard",
        "device",
    }
)


@dataclass
class TrainResult:
    """What ``train`` made: the trained policy (mean of the search distribution), its strategy and the metrics."""

    policy: MLPPolicy
    strategy: Any
    config: TrainConfig
    metrics: list[dict[str, Any]] = field(default_factory=list)
    best_eval_return: float = -math.inf
    best_policy: MLPPolicy | None = None
    run_dir: Path | None = None
    env_info: dict[str, Any] = field(default_factory=dict)
    """The env that was built: ``backend``, ``env_id`` and (Brax) ``brax_backend``."""

    @property
    def final_eval_return(self) -> float | None:
        evals = [r["eval_return"] for r in self.metrics if r.get("eval_return") is not None]
        return evals[-1] if evals else None


# --------------------------------------------------------------------------------------------------- helpers
def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda if available else cpu (with a ``RuntimeWarning``); ``cuda`` without a GPU is an error."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        warnings.warn(
            "no CUDA GPU found: running on the CPU through EGGROLL's pure-torch path (much slower on large "
            "populations). Pass --device cpu to silence this warning.",
            RuntimeWarning,
            stacklevel=4,  # the caller of train() (train -> _train -> resolve_device)
        )
        return torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device='cuda' was requested but torch sees no CUDA GPU; use device='cpu' or 'auto'")
        return torch.device("cuda", torch.cuda.current_device())
    if device == "cpu":
        return torch.device("cpu")
    raise ValueError(f"device={device!r} is invalid: expected 'auto', 'cuda' or 'cpu'")


def generation_seed(seed: int, generation: int, salt: int = 0) -> int:
    """Seed of the env resets of one generation (``salt`` separates evaluation from training)."""
    return (seed * 1_000_003 + generation * 7_919 + salt * 104_729 + 12_345) % (2**31 - 1)


def build_env(config: TrainConfig, num_envs: int, device: torch.device, seed: int) -> Any:
    """The environment of ``config`` with ``num_envs`` parallel copies (``eggroll_rl.envs.make_env``).

    ``config.brax_backend`` reaches the env only when it runs on Brax (``backend="auto"`` may pick Brax on a GPU
    and EnvPool or gymnasium on a CPU, which do not take that argument).
    """
    from eggroll_rl.envs import make_env

    kwargs = dict(config.env_kwargs)
    kwargs.setdefault("check_finite", config.env_checks)
    brax_kwargs = {"brax_backend": config.brax_backend} if "brax_backend" not in kwargs else {}
    if config.backend == "brax" or config.env.startswith("brax:"):
        kwargs.update(brax_kwargs)
    env = make_env(config.env, backend=config.backend, num_envs=num_envs, device=device, seed=seed, **kwargs)
    if getattr(env, "backend", "") == "brax" and brax_kwargs and env.brax_backend != config.brax_backend:
        env.close()  # auto picked Brax: build it again with the configured physics pipeline (nothing compiled yet)
        env = make_env(config.env, backend="brax", num_envs=num_envs, device=device, seed=seed, **kwargs, **brax_kwargs)
    return env


def build_policy(config: TrainConfig, env: Any, device: torch.device) -> MLPPolicy:
    """The policy of ``config`` for ``env``'s spaces, on ``device`` (weights from torch's current RNG)."""
    return make_policy(
        env.single_observation_space,
        env.single_action_space,
        hidden_sizes=config.hidden_sizes,
        activation=config.activation,
        action_mode=config.action_mode,
        obs_norm=config.obs_norm,
        obs_clip=config.obs_clip,
    ).to(device)


def _check_env_name(name: str) -> None:
    """Raise ``ValueError`` (with close matches) for a name the env registry does not know."""
    from eggroll_rl.envs import resolve_env

    resolve_env(name)


def episode_limit(env: Any, config: TrainConfig) -> int:
    """Most env steps of one rollout: ``config.max_episode_steps`` or the env's own time limit."""
    limit = config.max_episode_steps or getattr(env, "max_episode_steps", 0) or getattr(env, "episode_length", 0)
    if not limit and getattr(env, "backend", "") in ("gym", "envpool"):
        limit = 100_000  # gymnasium/EnvPool envs truncate themselves (TimeLimit); this is only a safety cap
    return int(limit) if limit else 1000


def evaluate(policy: MLPPolicy, env: Any, seed: int = 0, max_steps: int = 1000) -> dict[str, float]:
    """Statistics of the deterministic ``policy`` over one episode in each of ``env``'s envs.

    Returns:
        ``{"return_mean", "return_std", "return_min", "return_max", "length_mean", "episodes"}``.
    """
    from eggroll_rl.agents.rollout import rollout

    was_training = policy.training
    policy.eval()
    result = rollout(
        env, lambda obs, ids: policy(obs), num_members=1, envs_per_member=env.num_envs, max_steps=max_steps, seed=seed
    )
    policy.train(was_training)
    r = result.episode_returns.reshape(-1).double()
    return {
        "return_mean": float(r.mean()),
        "return_std": float(r.std(unbiased=False)),
        "return_min": float(r.min()),
        "return_max": float(r.max()),
        "length_mean": float(result.episode_lengths.double().mean()),
        "episodes": int(r.numel()),
    }


def _strategy(config: TrainConfig, device: torch.device):
    from eggroll_rl import EggrollStrategy

    return EggrollStrategy(
        sigma=config.sigma,
        lr=config.lr,
        rank=config.rank,
        optimizer=None if config.optimizer == "none" else config.optimizer,
        antithetic=config.antithetic,
        noise_reuse=config.noise_reuse,
        fitness_shaping=config.fitness_shaping,
        group_size=config.group_size,
        grad_clip=config.grad_clip or None,
        weight_decay=config.weight_decay,
        seed=config.seed,
        allow_cpu=device.type == "cpu",
        noise=config.noise,
    )


def _progress(config: TrainConfig, generation: int, env_steps: int, wall_time_s: float) -> float:
    """Fraction of the budget used; schedules use the reproducible part (generations or steps) only."""
    if config.total_steps:
        return min(env_steps / config.total_steps, 1.0)
    return min(generation / config.generations, 1.0)


def _budget_left(config: TrainConfig, generation: int, env_steps: int, wall_time_s: float) -> bool:
    if config.time_limit_s and wall_time_s >= config.time_limit_s:
        return False
    if config.total_steps:
        return env_steps < config.total_steps
    return generation < config.generations


def check_resume_config(stored: dict[str, Any], config: TrainConfig) -> TrainConfig:
    """The config a resumed run continues with: the stored one, with budget/output overrides from ``config``.

    Raises ``ValueError`` when ``config`` is for another environment or changes a field that alters the curve.
    """
    stored_cfg = TrainConfig.from_dict(stored)
    if stored_cfg.env != config.env:
        raise ValueError(
            f"resume: the run directory was trained on env={stored_cfg.env!r}, but env={config.env!r} was given; "
            "resume it with the same env or start a new run in another directory"
        )
    changes = {}
    for name, value in config.to_dict().items():
        old = stored_cfg.to_dict()[name]
        if value == old:
            continue
        if name not in RESUMABLE_OVERRIDES:
            raise ValueError(
                f"resume: {name}={value!r} differs from the run being resumed ({name}={old!r}); a resumed run keeps "
                f"its settings except {sorted(RESUMABLE_OVERRIDES)}"
            )
        changes[name] = value
    return stored_cfg.replace(**changes) if changes else stored_cfg


def check_checkpoint_config(stored: dict[str, Any], checkpoint_config: Any, source: str | Path) -> None:
    """Raise ``ValueError`` listing the fields where ``config.yaml`` (``stored``) and the checkpoint's config differ.

    Only ``RESUMABLE_OVERRIDES`` may differ: the checkpoint holds the state the run reached with its own settings,
    so an edited seed, sigma, ... in ``config.yaml`` would continue it as another run.
    """
    if not isinstance(checkpoint_config, dict):
        raise CheckpointError(f"checkpoint {str(source)!r} holds no config: not an eggroll_rl training checkpoint")
    yaml_cfg = TrainConfig.from_dict(stored).to_dict()
    ckpt_cfg = TrainConfig.from_dict(checkpoint_config).to_dict()
    diffs = [
        f"{name} (config.yaml: {value!r}, checkpoint: {ckpt_cfg[name]!r})"
        for name, value in yaml_cfg.items()
        if name not in RESUMABLE_OVERRIDES and value != ckpt_cfg[name]
    ]
    if diffs:
        raise ValueError(
            f"resume: config.yaml differs from the checkpoint {str(source)!r} in {'; '.join(diffs)}. The checkpoint "
            "holds the run as trained with its own settings: put them back in config.yaml (only "
            f"{sorted(RESUMABLE_OVERRIDES)} may change on resume) or start a new run in another directory"
        )


def _resume_dir(config: TrainConfig, resume: str | os.PathLike | bool | None) -> Path | None:
    """The run directory to continue, or None for a new run (``resume=True``: ``out_dir`` if it holds a run)."""
    if resume is None or resume is False:
        return None
    if resume is True:
        if not config.out_dir:
            raise ValueError(
                "resume=True continues the run in config.out_dir, but out_dir='' (no run directory); set out_dir "
                "or leave resume=None"
            )
        return Path(config.out_dir) if RunDirectory(config.out_dir).holds_run() else None
    if isinstance(resume, (str, os.PathLike)):
        return Path(resume)
    raise TypeError(f"resume={resume!r} is invalid: expected a run directory (str or Path), True or None")


def _load_resume_checkpoint(run: RunDirectory, stored: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint to continue ``run`` from (None: none was ever written, start at generation 0)."""
    if not run.last_checkpoint.exists() and not run.prev_checkpoint.exists():
        # Only a run from before generation-0 checkpoints can be in this state; its config.yaml says it all.
        warnings.warn(
            f"{str(run.path)!r} holds no checkpoint (a run stopped before its first one): it starts again from "
            "generation 0 with its config.yaml",
            RuntimeWarning,
            stacklevel=4,
        )
        return None
    checkpoint, source = load_latest_checkpoint(run.last_checkpoint)
    if checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{source} is not an eggroll_rl training checkpoint")
    check_checkpoint_config(stored, checkpoint.get("config"), source)
    return checkpoint


def _lock(run: RunDirectory, cleanup: contextlib.ExitStack) -> None:
    lock = RunLock(run.path)
    lock.acquire()
    cleanup.callback(lock.release)


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped ``train`` (a ``KeyboardInterrupt``, so ``except Exception`` lets it through).

    Attributes:
        signum: the signal.
        run_dir: the run directory (None when the run has none).
        generation: generations completed in the run directory's last checkpoint — metrics, the learning curve and
            that checkpoint are written, and ``train(..., resume=run_dir)`` continues from it; None when nothing can
            be resumed (stopped while setting up a new run: start it again).
    """

    def __init__(self, signum: int, run_dir: Path | None = None, generation: int | None = None) -> None:
        super().__init__(signum)
        self.signum, self.run_dir, self.generation = signum, run_dir, generation
        self.forced = False  # a second signal during an update: the state in memory was not saved

    def __str__(self) -> str:
        return f"training interrupted by {signal.Signals(self.signum).name}"


class _Interrupts:
    """SIGINT/SIGTERM -> ``TrainingInterrupted``, in the main thread. A signal during an update (obs statistics,
    step, evaluation, logging, checkpoint) waits for the update's end, so the saved state is never half-updated; a
    second one during the same update is raised at once (``forced``)."""

    def __init__(self) -> None:
        self.run_dir: Path | None = None
        self.saved_generation: int | None = None
        self._updating = False
        self._pending: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Interrupts:
        if threading.current_thread() is threading.main_thread():
            for sig, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
                if signal.getsignal(sig) is default:  # a caller's own handler is left alone
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _raise(self, signum: int, forced: bool) -> typing.NoReturn:
        exc = TrainingInterrupted(signum, self.run_dir, self.saved_generation)
        exc.forced = forced
        raise exc

    def _handle(self, signum: int, frame: Any) -> None:
        if self._updating and self._pending is None:
            self._pending = signum
            return
        self._raise(signum, forced=self._updating)

    def begin_update(self) -> None:
        self._updating = True

    def end_update(self) -> None:
        self._updating = False
        if self._pending is not None:
            signum, self._pending = self._pending, None
            self._raise(signum, forced=False)


# ----------------------------------------------------------------------------------------------------- train
def train(
    config: TrainConfig,
    progress_fn: Callable[[dict[str, Any]], None] | None = None,
    resume: str | Path | bool | None = None,
) -> TrainResult:
    """Train an MLP policy on ``config.env`` with EGGROLL.

    Args:
        config: the run's settings (``TrainConfig.for_env(name)`` gives tuned defaults).
        progress_fn: called after every generation with that generation's record (the metrics.jsonl line plus
            ``progress``, the fraction of the budget used, and ``best_eval_return``).
        resume: a run directory to continue from its last checkpoint (``config`` must be for the same env and
            may change only the budget and output fields, see ``RESUMABLE_OVERRIDES``). The run keeps writing to
            that directory. ``True``: continue ``config.out_dir`` if it holds a run, else start one there — so a
            script can be run again (a finished run returns at once, a stopped one continues, a changed config is
            an error).
    Returns:
        ``TrainResult`` with the final mean policy, the best evaluated policy, the strategy and all metrics.
    Raises:
        RunLockedError: another process is training into the run directory.
        TrainingInterrupted: SIGINT or SIGTERM (when ``train`` runs in the main thread and the signal has its
            default handler); the run directory then holds flushed metrics, the learning curve and a checkpoint
            of the last completed generation.
    """
    with contextlib.ExitStack() as cleanup:
        return _train(config, progress_fn, resume, cleanup)


def _train(
    config: TrainConfig,
    progress_fn: Callable[[dict[str, Any]], None] | None,
    resume: str | Path | bool | None,
    cleanup: contextlib.ExitStack,
) -> TrainResult:
    # --- everything that can fail on bad input, before any work -------------------------------------------------
    checkpoint = None
    resume_dir = _resume_dir(config, resume)
    interrupts = cleanup.enter_context(_Interrupts())
    if resume_dir is not None:
        run = RunDirectory(resume_dir, tensorboard=config.tensorboard)
        run.read_config()  # "not a run directory" before anything is created there
        _lock(run, cleanup)  # before reading: a run still training there would change what is read
        stored = run.read_config()
        config = check_resume_config(stored, config.replace(out_dir=str(resume_dir)))
        checkpoint = _load_resume_checkpoint(run, stored)
    _check_env_name(config.env)
    run = RunDirectory(config.out_dir, tensorboard=config.tensorboard) if config.out_dir else None
    if run is not None:
        if resume_dir is None and run.holds_run():
            raise ValueError(
                f"out_dir={config.out_dir!r} already holds a run (config.yaml); resume it with resume=/--resume "
                "or choose another directory"
            )
        run.check_writable()
        if resume_dir is None:
            _lock(run, cleanup)
            if run.holds_run():  # started by another process between the check above and the lock
                raise ValueError(f"out_dir={config.out_dir!r} already holds a run (config.yaml) started just now")
            run.remove_stale_checkpoints()
        interrupts.run_dir = run.path
        interrupts.saved_generation = checkpoint["generation"] if checkpoint is not None else None
    device = resolve_device(config.device)

    # --- environment, policy, strategy ---------------------------------------------------------------------------
    env = build_env(config, config.num_envs, device, seed=config.seed)
    eval_env = None
    torch.manual_seed(config.seed)  # the policy's initial weights
    policy = build_policy(config, env, device)
    strategy = _strategy(config, device)
    strategy.setup(policy)
    max_steps = episode_limit(env, config)

    generation, env_steps, wall_offset = 0, 0, 0.0
    history: list[dict[str, Any]] = []
    best_eval = -math.inf
    if checkpoint is not None:
        strategy.load_state_dict(checkpoint["strategy"])
        policy.load_state_dict(checkpoint["policy"]["state_dict"])
        generation, env_steps = checkpoint["generation"], checkpoint["env_steps"]
        wall_offset, best_eval = checkpoint["wall_time_s"], checkpoint["best_eval_return"]
        history = list(checkpoint["history"])
    wall_time_s = wall_offset

    def save_last() -> None:
        if run is None:
            return
        rotate_and_save(
            {
                "format": CHECKPOINT_FORMAT,
                "config": config.to_dict(),
                "generation": generation,
                "env_steps": env_steps,
                "wall_time_s": wall_time_s,
                "best_eval_return": best_eval,
                "history": history,
                "strategy": strategy.state_dict(),
                "policy": _policy_payload(policy),
            },
            run.last_checkpoint,
        )
        interrupts.saved_generation = generation

    interrupts.begin_update()  # until the loop starts: a stop now leaves a checkpoint and config.yaml, or neither
    if run is not None:
        if checkpoint is None:
            save_last()  # before config.yaml: a directory that holds a run can always be resumed
        run.write_config(config.to_dict())
        run.start_metrics(history, generation)

    best_policy: MLPPolicy | None = None
    threads_before = torch.get_num_threads()
    if device.type == "cpu" and config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)
    start = time.perf_counter() - wall_offset
    done = not _budget_left(config, generation, env_steps, wall_time_s)
    try:
        interrupts.end_update()
        while not done:
            gen_start = time.perf_counter()
            progress = _progress(config, generation, env_steps, wall_time_s)
            strategy.sigma = schedule_value(config.sigma_schedule, config.sigma, config.sigma_end_factor, progress)
            strategy.lr = schedule_value(config.lr_schedule, config.lr, config.lr_end_factor, progress)

            # 1. perturb + rollout: member i plays episodes_per_member episodes in its own envs.
            with strategy.perturb(population_size=config.population, epoch=generation) as pop:
                episodes = rollout(
                    env,
                    lambda obs, ids: pop.batched_forward(policy, obs, member_ids=ids),
                    num_members=config.population,
                    envs_per_member=config.episodes_per_member,
                    max_steps=max_steps,
                    seed=generation_seed(config.seed, generation),
                    record_obs=policy.obs_norm is not None,
                )
            interrupts.begin_update()  # a signal from here to end_update() waits: the state is being changed
            # 2. observation statistics from the live steps of the whole population.
            if policy.obs_norm is not None and episodes.obs_count > 0:
                policy.obs_norm.update_moments(episodes.obs_count, episodes.obs_mean, episodes.obs_var)
            # 3. ES update from each member's mean return.
            stats = strategy.step(episodes.returns)

            generation += 1
            gen_steps = episodes.num_steps
            env_steps += gen_steps
            returns = episodes.returns.double()
            record: dict[str, Any] = {
                "generation": generation - 1,
                "env_steps": env_steps,
                "train_return_mean": float(returns.mean()),
                "train_return_max": float(returns.max()),
                "train_return_min": float(returns.min()),
                "train_return_std": float(returns.std(unbiased=False)),
                "episode_length_mean": float(episodes.lengths.double().mean()),
                "lr": stats["lr"],
                "sigma": stats["sigma"],
                "grad_norm": stats["grad_norm"],
                "update_norm": stats["update_norm"],
            }
            if not math.isfinite(record["train_return_mean"]):
                raise FloatingPointError(f"generation {generation - 1}: non-finite training return")

            # 4. evaluation of the mean policy.
            done = not _budget_left(config, generation, env_steps, time.perf_counter() - start)
            if done or (config.eval_every and generation % config.eval_every == 0):
                if eval_env is None:
                    eval_env = build_env(config, config.eval_episodes, device, seed=config.seed + 1)
                ev = evaluate(
                    policy,
                    eval_env,
                    seed=generation_seed(config.seed, generation, salt=1),
                    max_steps=episode_limit(eval_env, config),
                )
                record["eval_return"] = ev["return_mean"]
                record["eval_return_std"] = ev["return_std"]
                if ev["return_mean"] > best_eval:
                    best_eval = ev["return_mean"]
                    best_policy = _clone_policy(policy)
                    if run is not None:
                        save_policy(
                            policy,
                            run.best_checkpoint,
                            extra={
                                "eval_return": best_eval,
                                "generation": generation - 1,
                                "env": config.env,
                                "backend": getattr(env, "backend", config.backend),
                                "env_id": getattr(env, "env_id", config.env),
                            },
                        )
            now = time.perf_counter()
            wall_time_s = now - start
            record["wall_time_s"] = wall_time_s
            record["steps_per_s"] = gen_steps / max(now - gen_start, 1e-9)
            history.append(record)
            if run is not None:
                run.log(record)
                if done or generation % config.checkpoint_every == 0:
                    save_last()
            interrupts.end_update()
            if progress_fn is not None:
                progress_fn(
                    dict(
                        record,
                        progress=max(
                            _progress(config, generation, env_steps, wall_time_s),
                            wall_time_s / config.time_limit_s if config.time_limit_s else 0.0,
                        ),
                        best_eval_return=best_eval,
                    )
                )
    except TrainingInterrupted as exc:
        if not exc.forced and run is not None and interrupts.saved_generation != generation:
            save_last()  # between updates: the state in memory is that of `generation` completed generations
        exc.generation = interrupts.saved_generation
        raise
    finally:
        torch.set_num_threads(threads_before)
        if run is not None:
            run.close()
            plot_learning_curve(history, run.curve_path, title=f"EGGROLL on {config.env}")
        env.close()
        if eval_env is not None:
            eval_env.close()

    return TrainResult(
        policy=policy,
        strategy=strategy,
        config=config,
        metrics=history,
        best_eval_return=best_eval,
        best_policy=best_policy if best_policy is not None else policy,
        run_dir=run.path if run is not None else None,
        env_info={k: getattr(env, k) for k in ("backend", "env_id", "brax_backend") if hasattr(env, k)},
    )


def _policy_payload(policy: MLPPolicy) -> dict[str, Any]:
    return {
        "format": POLICY_FORMAT,
        "spec": dict(policy.spec),
        "state_dict": {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()},
        "extra": {},
    }


def _clone_policy(policy: MLPPolicy) -> MLPPolicy:
    clone = MLPPolicy(**policy.spec).to(next(policy.parameters()).device)
    clone.load_state_dict(policy.state_dict())
    return clone
