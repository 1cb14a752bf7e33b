"""RL training with EGGROLL: ``train(config, progress_fn=None) -> TrainResult``.

One generation, top to bottom::

    sigma, lr  <- schedules(progress)
    with strategy.perturb(N, epoch=generation) as pop:       # N perturbed policies, noise regenerated on the fly
        returns <- rollout(env, pop.batched_forward(policy, obs, member_ids))   # one episode per env, masked
                   (config.rollout="jax": jax_rollout, the same episode in one jitted JAX loop)
    policy.obs_norm.update(live observations of the whole population)
    strategy.step(mean return - reward_shift * mean length)   # ES gradient + optimizer
    every eval_every generations: evaluate the mean policy over eval_episodes episodes (with config.rollout's loop)

Reproducibility: every generation resets the environments with a seed derived from ``(config.seed, generation)``
and the policy is deterministic, so a generation depends only on the state saved in a checkpoint (strategy,
optimizer, observation statistics). Resuming from ``checkpoints/last.pt`` therefore gives the same curve as an
uninterrupted run.

A run directory is locked while a run trains into it, holds a checkpoint from before the first generation, and gets
a checkpoint of the last completed generation on SIGINT/SIGTERM (``TrainingInterrupted``); see
``docs/run_directories.md``.

Under ``torchrun`` (``WORLD_SIZE`` > 1, or a process group the caller initialized) one population is spread over
the ranks: each rank steps the envs of its slice of members (``eggroll_rl.distributed.population_slice``; the
noise is that of the global member ids), the fitnesses are all-gathered, the observation sums all-reduced, and
every rank applies the same update, so the replicas stay identical. Rank 0 alone opens the run directory, writes
it and evaluates the mean policy; it broadcasts the run's config, its checkpoint, the stop decision and the
evaluation, so every rank returns the same ``TrainResult``. See ``docs/distributed.md``.
"""

from __future__ import annotations

import contextlib
import math
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

from eggroll_rl.agents.builders import build_env, build_policy, build_strategy, episode_limit, generation_seed
from eggroll_rl.agents.checkpoint import TrainState
from eggroll_rl.agents.config import TrainConfig
from eggroll_rl.agents.jax_rollout import (
    is_xla_out_of_memory,
    jax_policy_rollout,
    jax_rollout,
    start_compiling_evaluation,
)
from eggroll_rl.agents.policy import MLPPolicy
from eggroll_rl.agents.rollout import RolloutResult, rollout
from eggroll_rl.agents.run_dir import RunWriter
from eggroll_rl.agents.schedules import schedule_value
from eggroll_rl.envs.base import resolve_device

SYNC_CHECK_EVERY = 10
"""Under ``torch.distributed``: compare the replicas' checksums every this many generations (and at the end)."""

__all__ = ["TrainResult", "TrainingInterrupted", "train", "evaluate", "training_fitness"]


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
def evaluate(
    policy: MLPPolicy, env: Any, seed: int = 0, max_steps: int = 1000, rollout: str = "torch"
) -> dict[str, float]:
    """Statistics of the deterministic ``policy`` over one episode in each of ``env``'s envs.

    ``rollout``: ``"torch"`` steps the env from torch (any env); ``"jax"`` plays the episodes in one jitted JAX loop
    (``jax_policy_rollout``; a ``BraxVecEnv`` and an ``MLPPolicy`` with continuous actions), the trainer's choice when
    its config trains with ``rollout="jax"``. Both play the same episodes up to float rounding.

    Returns:
        ``{"return_mean", "return_std", "return_min", "return_max", "length_mean", "episodes"}``.
    """
    if rollout not in ("torch", "jax"):
        raise ValueError(f"rollout must be 'torch' or 'jax', got {rollout!r}")
    was_training = policy.training
    policy.eval()
    try:
        if rollout == "jax":
            result = jax_policy_rollout(env, policy, max_steps=max_steps, seed=seed)
        else:
            result = _torch_episodes(policy, env, max_steps, seed)
    finally:
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


def _torch_episodes(policy: MLPPolicy, env: Any, max_steps: int, seed: int) -> RolloutResult:
    return rollout(
        env, lambda obs, ids: policy(obs), num_members=1, envs_per_member=env.num_envs, max_steps=max_steps, seed=seed
    )


def training_fitness(episodes: RolloutResult, reward_shift: float = 0.0) -> torch.Tensor:
    """Each member's ES fitness ``(N,)`` float32: its mean episode return with ``reward_shift`` taken from the reward of
    every live step. The rollout sums rewards over live steps only (masked after an episode ends), so that is
    ``returns - reward_shift * lengths`` exactly, member by member (both are means over the same episodes); the
    rollout itself (and its CUDA graph) stays the same."""
    if not reward_shift:
        return episodes.returns
    shifted = episodes.returns.double() - reward_shift * episodes.lengths.double()
    return shifted.to(episodes.returns.dtype)


def _progress(config: TrainConfig, generation: int, env_steps: int) -> float:
    """Fraction of the budget used; schedules use the reproducible part (generations or steps) only. 0 when a time
    limit is the whole budget (the config then refuses schedules)."""
    if config.total_steps:
        return min(env_steps / config.total_steps, 1.0)
    if config.generations:
        return min(generation / config.generations, 1.0)
    return 0.0


def generation_cap_reached(config: TrainConfig, generations_done: int) -> bool:
    """Whether ``generations_done`` generations use up ``config.generations`` (0: no cap, a time limit is the
    budget). The trainer's rule; loops of one's own (the leaderboard's peers) share it."""
    return bool(config.generations) and generations_done >= config.generations


def _budget_left(config: TrainConfig, generation: int, env_steps: int, wall_time_s: float) -> bool:
    if config.time_limit_s and wall_time_s >= config.time_limit_s:
        return False
    if config.total_steps:
        return env_steps < config.total_steps
    return not generation_cap_reached(config, generation)


def _compile_evaluation_ahead(config: TrainConfig, device: torch.device) -> bool:
    """Whether the evaluation's JAX loop compiles in a background thread from the start of the run: with the JAX
    rollout on a GPU, where XLA compiles on an otherwise idle host core while the GPU trains (on a CPU it would take
    cores from the training)."""
    return config.rollout == "jax" and device.type == "cuda"


def _fraction_done(state: TrainState) -> float:
    """The ``progress`` given to ``progress_fn``: the budget used, a time limit included."""
    config = state.config
    return max(
        _progress(config, state.generation, state.env_steps),
        state.wall_time_s / config.time_limit_s if config.time_limit_s else 0.0,
    )


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
        self.writer: RunWriter | None = None  # where the run stands: its directory and last checkpoint
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
        run_dir, saved = (self.writer.path, self.writer.saved_generation) if self.writer else (None, None)
        exc = TrainingInterrupted(signum, run_dir, saved)
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
            ``progress``, the fraction of the budget used, and ``best_eval_return``); under ``torchrun`` on every
            rank, with the same record.
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
        ranks = _Ranks.join(config, cleanup)
        # Rank 0 alone has a run directory to save on a signal; the others keep the default SIGTERM, which ends a
        # process even while it waits in a collective (a Python handler would run only after the wait).
        interrupts = cleanup.enter_context(_Interrupts() if ranks.rank == 0 else contextlib.nullcontext(_Interrupts()))
        ranks.check_layout(config)  # before a run directory is made (again below: a resumed run's stored config)
        # --- the run directory (checked, locked; to resume: its config and checkpoint), before any work --------
        writer, config, checkpoint = ranks.open_run(config, resume)
        if writer is not None:
            cleanup.callback(writer.close)
            interrupts.writer = writer
        if config.device == "auto" and not torch.cuda.is_available():
            warnings.warn(
                "no CUDA GPU found: running on the CPU through EGGROLL's pure-torch path (much slower on large "
                "populations). Pass --device cpu to silence this warning.",
                RuntimeWarning,
                stacklevel=2,  # the caller of train()
            )
        device = resolve_device(config.device)
        if device.type == "cuda":
            # The run's device is the current one throughout (restored at exit): torch's implicit uses of the
            # current device (CUDA events, the stream Triton launches on) must not follow another library's
            # change of it (JAX's start could leave the other GPU current on a rank of a 2-GPU torchrun).
            cleanup.enter_context(torch.cuda.device(device))

        # --- environment, policy, strategy ---------------------------------------------------------------------
        ranks.check_layout(config)
        first, num_local = ranks.members(config.population)  # this rank's members: first .. first+num_local-1
        global_ids = _OffsetIds(first)  # the rollout's local member ids -> global ones
        env = build_env(config, num_local * config.episodes_per_member, device, seed=config.seed)
        env = cleanup.enter_context(contextlib.closing(env))
        ranks.window_env(env, first * config.episodes_per_member, config.num_envs)
        note = _small_slice_note(getattr(env, "backend", ""), device, ranks.world_size, config.num_envs)
        if note and ranks.rank == 0:
            warnings.warn(note, RuntimeWarning, stacklevel=2)
        if config.members_per_start > 1:
            _share_starts(env, first, num_local, config)
        env_info = {k: getattr(env, k) for k in ("backend", "env_id", "brax_backend") if hasattr(env, k)}
        eval_env = None

        def open_eval_env() -> Any:  # rank 0's evaluation envs, closed with the run
            return cleanup.enter_context(
                contextlib.closing(build_env(config, config.eval_episodes, device, seed=config.seed + 1))
            )

        torch.manual_seed(config.seed)  # the policy's initial weights
        policy = build_policy(config, env, device)
        strategy = build_strategy(config, device)
        strategy.setup(policy)
        max_steps = episode_limit(env, config)
        state = TrainState(config, strategy, policy)
        if checkpoint is not None:
            state.load(checkpoint)

        eval_compile = None
        if (
            ranks.rank == 0
            and _compile_evaluation_ahead(config, device)
            and _budget_left(config, state.generation, state.env_steps, state.wall_time_s)
        ):
            # The evaluation's JAX loop compiles in a thread while the GPU trains, not at the first evaluation.
            eval_env = open_eval_env()
            eval_compile = start_compiling_evaluation(eval_env, policy, episode_limit(eval_env, config))
            cleanup.callback(eval_compile.join)  # before the eval env closes (the stack unwinds last in, first out)

        interrupts.begin_update()  # until the loop starts: a stop now leaves a checkpoint and config.yaml, or neither
        if writer is not None:
            writer.start(state)
        best_policy: MLPPolicy | None = None
        threads_before = torch.get_num_threads()
        if device.type == "cpu" and config.cpu_threads:
            torch.set_num_threads(config.cpu_threads)
        cleanup.callback(torch.set_num_threads, threads_before)
        start = time.perf_counter() - state.wall_time_s
        done = not _budget_left(config, state.generation, state.env_steps, state.wall_time_s)
        try:  # cleanup (on leaving the with block): envs closed, threads restored, run directory closed and unlocked
            interrupts.end_update()
            while not done:
                gen_start = time.perf_counter()
                generation = state.generation
                progress = _progress(config, generation, state.env_steps)
                strategy.sigma = schedule_value(config.sigma_schedule, config.sigma, config.sigma_end_factor, progress)
                strategy.lr = schedule_value(config.lr_schedule, config.lr, config.lr_end_factor, progress)

                # 1. perturb + rollout: member i plays episodes_per_member episodes in its own envs.
                # Under torchrun this rank plays members first .. first+num_local-1, each with its global noise.
                with (
                    _out_of_memory_explained(config, env, device, generation),
                    strategy.perturb(population_size=config.population, epoch=generation) as pop,
                ):
                    kwargs = dict(
                        num_members=num_local,
                        envs_per_member=config.episodes_per_member,
                        max_steps=max_steps,
                        seed=generation_seed(config.seed, generation),
                        record_obs=policy.obs_norm is not None,
                    )
                    if config.rollout == "jax":  # the whole episode in one jitted JAX loop (Brax only)
                        episodes = jax_rollout(env, policy, pop, first_member=first, **kwargs)
                    else:

                        def act(obs: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
                            return pop.batched_forward(policy, obs, member_ids=global_ids(ids))

                        episodes = rollout(env, act, **kwargs)
                episodes = ranks.combine(episodes, config.population)  # the whole population's results
                interrupts.begin_update()  # a signal from here to end_update() waits: the state is being changed
                # 2. observation statistics from the live steps of the whole population.
                if policy.obs_norm is not None and episodes.obs_count > 0:
                    policy.obs_norm.update_moments(episodes.obs_count, episodes.obs_mean, episodes.obs_var)
                # 3. ES update from each member's fitness: its mean return, less the reward shift per live step.
                stats = strategy.step(training_fitness(episodes, config.reward_shift))
                state.generation += 1
                state.env_steps += episodes.num_steps
                record = _record(generation, state.env_steps, episodes, stats)

                # 4. evaluation of the mean policy.
                done = not _budget_left(config, state.generation, state.env_steps, time.perf_counter() - start)
                done = ranks.agree(done)  # rank 0's clock decides a time limit for every rank
                improved = False
                if done or (config.eval_every and state.generation % config.eval_every == 0):
                    eval_start = time.perf_counter()
                    ev = {"return_mean": math.nan, "return_std": math.nan, "length_mean": math.nan, "time_s": math.nan}
                    if ranks.rank == 0:
                        if eval_env is None:
                            eval_env = open_eval_env()
                        if eval_compile is not None:
                            eval_compile.join()  # the loop compiled ahead (or, had that failed, it compiles now)
                            if eval_compile.error is not None:
                                warnings.warn(
                                    f"compiling the evaluation ahead failed ({eval_compile.error!r}); the evaluation "
                                    "compiles its loop itself now",
                                    RuntimeWarning,
                                    stacklevel=2,
                                )
                            eval_compile = None
                        ev = evaluate(
                            policy,
                            eval_env,
                            seed=generation_seed(config.seed, state.generation, salt=1),
                            max_steps=episode_limit(eval_env, config),
                            rollout=config.rollout,
                        )
                        ev["time_s"] = time.perf_counter() - eval_start  # the first: env build / compile, or the wait
                    ev = ranks.share_evaluation(ev)
                    record["eval_return"] = ev["return_mean"]
                    record["eval_return_std"] = ev["return_std"]
                    record["eval_length_mean"] = ev["length_mean"]
                    record["eval_time_s"] = ev["time_s"]
                    if ev["return_mean"] > state.best_eval_return:
                        state.best_eval_return, improved = ev["return_mean"], True
                        best_policy = _clone_policy(policy)
                now = time.perf_counter()
                state.wall_time_s = now - start
                record["wall_time_s"] = state.wall_time_s
                record["steps_per_s"] = episodes.num_steps / max(now - gen_start, 1e-9)
                state.history.append(record)

                if done or state.generation % SYNC_CHECK_EVERY == 0:
                    ranks.check_in_sync(policy, state.generation)
                # 5. emit: the run directory, then the caller's progress_fn.
                if writer is not None:
                    writer.on_generation(state, record, improved=improved, done=done, env_info=env_info)
                interrupts.end_update()
                if progress_fn is not None:
                    progress_fn(dict(record, progress=_fraction_done(state), best_eval_return=state.best_eval_return))
        except TrainingInterrupted as exc:
            if not exc.forced and writer is not None and writer.saved_generation != state.generation:
                writer.save_checkpoint(state)  # between updates: the state in memory is that of `generation` gens
            exc.generation = writer.saved_generation if writer is not None else None
            raise
        except RuntimeError as exc:
            if ranks.world_size > 1 and _peer_gone(exc):
                raise RuntimeError(
                    f"rank {ranks.rank}: another rank ended during generation {state.generation} (its own error is "
                    f"in its output; torchrun names it): {str(exc).splitlines()[0]}"
                ) from exc
            raise

    return TrainResult(
        policy=policy,
        strategy=strategy,
        config=config,
        metrics=state.history,
        best_eval_return=state.best_eval_return,
        best_policy=best_policy if best_policy is not None else policy,
        run_dir=writer.path if writer is not None else None,
        env_info=env_info,
    )


def _record(generation: int, env_steps: int, episodes: Any, stats: dict[str, float]) -> dict[str, Any]:
    """One generation's metrics.jsonl line (without evaluation and timing)."""
    returns = episodes.returns.double()
    record = {
        "generation": generation,
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
        raise FloatingPointError(f"generation {generation}: non-finite training return")
    return record


def _clone_policy(policy: MLPPolicy) -> MLPPolicy:
    clone = MLPPolicy(**policy.spec).to(next(policy.parameters()).device)
    clone.load_state_dict(policy.state_dict())
    return clone


@contextlib.contextmanager
def _out_of_memory_explained(config: TrainConfig, env: Any, device: torch.device, generation: int):
    """A rollout that runs out of device memory (torch's ``OutOfMemoryError``, XLA's ``RESOURCE_EXHAUSTED`` from a
    JAX env) ends the run with a ``RuntimeError`` that says what ran and what to lower; torch's or XLA's first line
    is kept, and the original error is its cause."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise RuntimeError(_out_of_memory_message(config, env, device, generation, "torch", exc)) from exc
    except Exception as exc:
        if not is_xla_out_of_memory(exc):
            raise
        raise RuntimeError(_out_of_memory_message(config, env, device, generation, "XLA", exc)) from exc


def _out_of_memory_message(
    config: TrainConfig, env: Any, device: torch.device, generation: int, who: str, exc: BaseException
) -> str:
    lines = str(exc).strip().splitlines()
    backend = getattr(env, "backend", config.backend)  # the one "auto" resolved to
    return (
        f"out of device memory in generation {generation}'s rollout: {env.num_envs} envs on this process on {device} "
        f"(population {config.population}, episodes_per_member {config.episodes_per_member}, backend {backend!r}, "
        f"rollout {config.rollout!r}); lower --population or --episodes-per-member"
        + (", or use --rollout torch" if config.rollout == "jax" else "")
        + f". {who} said: {lines[0] if lines else type(exc).__name__}"
    )


def _share_starts(env: Any, first: int, num_local: int, config: TrainConfig) -> None:
    """``config.members_per_start``: episode ``e`` of member ``m`` starts where episode ``e`` of the first member
    of ``m``'s group does (row ``group_first * episodes_per_member + e`` of the whole population's batch)."""
    set_rows = getattr(env, "set_start_rows", None)
    if set_rows is None:
        raise ValueError(
            f"members_per_start={config.members_per_start} is invalid with backend "
            f"{getattr(env, 'backend', type(env).__name__)!r}: it cannot give several envs the same initial state; "
            "expected backend 'brax', 'gym' or 'torch', or members_per_start=1"
        )
    e, g = config.episodes_per_member, config.members_per_start
    members = torch.arange(first, first + num_local).repeat_interleave(e)
    episode = torch.arange(num_local * e) % e
    set_rows((members // g) * g * e + episode, config.num_envs)


# --------------------------------------------------------------------------------------------- torch.distributed
def _peer_gone(exc: RuntimeError) -> bool:
    """Whether a collective failed because another rank's process ended (gloo's message; NCCL's errors)."""
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, dist.DistError) or "closed by peer" in text or "reset by peer" in text


class _OffsetIds:
    """``ids + first`` as one tensor per ``ids`` tensor (``ids`` itself when ``first`` is 0).

    ``batched_forward`` checks a member-ids tensor once (a host sync) and remembers it; the rollout passes the same
    ``ids`` at every step. A fresh ``ids + first`` per step made every rank but 0 sync at every step, which also
    failed its CUDA-graph capture (a sync is refused while capturing): under ``torchrun`` on 2 GPUs a generation of
    HalfCheetah took 4.7 s instead of 2.6 s on one GPU.
    """

    def __init__(self, first: int) -> None:
        self.first = first
        self._source: torch.Tensor | None = None
        self._version = -1
        self._shifted: torch.Tensor | None = None

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.first:
            return ids
        if ids is not self._source or ids._version != self._version:
            self._source, self._version, self._shifted = ids, ids._version, ids + self.first
        return self._shifted


def _end_group(dist: Any) -> None:
    # NCCL's barrier is told its device (this rank's, current again once train()'s device context has exited);
    # without it NCCL guesses from the current context and warns.
    nccl = dist.get_backend() == "nccl"
    dist.barrier(device_ids=[torch.cuda.current_device()] if nccl else None)
    dist.destroy_process_group()


# Envs per GPU below which a Brax step costs its floor: on an H200 a HalfCheetah step took the same time at 1024 and
# 2048 envs (1.83-1.88 ms with the JAX rollout, 2.29-2.36 ms with torch's) and 1.26 ms + 0.21 us per env above that
# (benchmarks/results/distributed.md), so the floor holds up to about 3000 envs.
_BRAX_FLOOR_ENVS = 3000


def _small_slice_note(backend: str, device: torch.device, world_size: int, num_envs: int) -> str | None:
    """The warning for a multi-GPU Brax run whose envs per GPU sit on the Brax step's latency floor, where each GPU's
    step costs about what ``_BRAX_FLOOR_ENVS`` envs would, so the GPUs speed a generation up far less than their
    number (None when it does not apply)."""
    per_rank = num_envs // world_size
    if world_size < 2 or backend != "brax" or device.type != "cuda" or per_rank >= _BRAX_FLOOR_ENVS:
        return None
    # Above the floor a step costs a + b * n with a > 0, so one GPU stepping all n envs takes at most
    # n / _BRAX_FLOOR_ENVS times the floor that each GPU pays here: a bound true for any population.
    bound = max(num_envs / _BRAX_FLOOR_ENVS, 1.0)
    return (
        f"{world_size} ranks x {per_rank} envs: below about {_BRAX_FLOOR_ENVS} envs per GPU a Brax step costs about "
        f"as much as with {_BRAX_FLOOR_ENVS} (its kernels' latency, not their work, sets its time), so a generation "
        f"here is at most about {bound:.1f}x as fast as with all {num_envs} envs on one GPU; more GPUs pay off "
        f"through a larger population: {_BRAX_FLOOR_ENVS} or more envs per GPU (population x episodes_per_member / "
        "ranks) (docs/distributed.md)"
    )


class _Ranks:
    """The trainer's side of ``torch.distributed``: which members this rank plays, and the few values that cross
    ranks per generation. With one process every method is the identity, so a single-process run is unchanged."""

    def __init__(self, rank: int, world_size: int, device: torch.device) -> None:
        self.rank, self.world_size = rank, world_size
        self.device = device  # where collectives' tensors live: the CUDA device under NCCL, else the CPU

    @classmethod
    def join(cls, config: TrainConfig, cleanup: contextlib.ExitStack) -> _Ranks:
        """Join torchrun's process group (or the caller's) and check that every rank got the same config."""
        import torch.distributed as dist

        from eggroll_rl.distributed import check_same_config, init_from_environment, world

        cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
        if init_from_environment("cuda" if cuda else "cpu"):
            # Destroyed after a clean end only: after a failure a peer may be gone, and the process exits anyway.
            # The barrier first: rank 0 still closes the run directory when the others are done, and a rank that
            # tore down gloo and exited meanwhile could abort ("terminate called without an active exception").
            cleanup.push(lambda exc_type, *_: _end_group(dist) if exc_type is None else None)
        rank, world_size = world()
        if world_size == 1:
            return cls(0, 1, torch.device("cpu"))
        on_nccl = dist.get_backend() == "nccl"
        ranks = cls(rank, world_size, resolve_device("cuda") if on_nccl else torch.device("cpu"))
        # out_dir may hold a per-rank time stamp (the CLI's default); rank 0's is the one used.
        check_same_config({k: v for k, v in config.to_dict().items() if k != "out_dir"})
        return ranks

    def open_run(self, config: TrainConfig, resume: Any) -> tuple[RunWriter | None, TrainConfig, dict | None]:
        """``RunWriter.open`` on rank 0; the other ranks get its config and checkpoint, or its error."""
        if self.world_size == 1:
            return RunWriter.open(config, resume)
        from eggroll_rl.distributed import broadcast_from_rank0

        writer, checkpoint = None, None
        if self.rank == 0:
            try:
                writer, config, checkpoint = RunWriter.open(config, resume)
            except Exception as exc:  # noqa: BLE001 - every rank raises it, rank 0 with its own traceback
                broadcast_from_rank0((f"{type(exc).__name__}: {exc}", None, None))
                raise
        message, values, checkpoint = broadcast_from_rank0((None, config.to_dict(), checkpoint))
        if message is not None:
            raise RuntimeError(f"rank 0 could not open the run: {message}")
        return writer, TrainConfig.from_dict(values), checkpoint

    def check_layout(self, config: TrainConfig) -> None:
        """Raise ``ValueError`` (on every rank alike) unless the population splits into equal slices of whole
        antithetic pairs."""
        if self.world_size == 1:
            return
        share = 2 * self.world_size if config.antithetic else self.world_size
        if config.population % share:
            pairs = " of antithetic pairs (+/- members on the same rank)" if config.antithetic else ""
            raise ValueError(
                f"population={config.population} is invalid for {self.world_size} ranks: expected a multiple of "
                f"{share}, so that every rank plays an equal slice{pairs}"
            )

    def members(self, population: int) -> tuple[int, int]:
        """``(first, count)``: this rank's members are ``first .. first+count-1``."""
        from eggroll_rl.distributed import population_slice

        ids = population_slice(population, self.rank, self.world_size)
        return int(ids[0]), int(ids.numel())

    def window_env(self, env: Any, offset: int, total: int) -> None:
        """Make ``env``'s resets those of rows ``offset ..`` of the single-process batch of ``total`` envs."""
        if self.world_size == 1:
            return
        set_window = getattr(env, "set_reset_window", None)
        if set_window is not None:
            set_window(offset, total)
        elif self.rank == 0:
            warnings.warn(
                f"the {getattr(env, 'backend', type(env).__name__)} backend cannot reset a slice of envs as the "
                "single-process batch does: initial states depend on the number of ranks (the same distribution, "
                "other draws)",
                RuntimeWarning,
                stacklevel=3,
            )

    def combine(self, episodes: RolloutResult, population: int) -> RolloutResult:
        """The whole population's returns and lengths ``(N,)`` (all-gathered) and step and observation sums
        (all-reduced in float64). The per-episode tables stay this rank's."""
        if self.world_size == 1:
            return episodes
        from eggroll_rl.distributed import all_gather_fitness, all_reduce_sum

        dev = self.device
        counts = torch.tensor([episodes.num_steps, episodes.num_env_steps, episodes.obs_count], dtype=torch.float64)
        parts = [counts.to(dev)]
        if episodes.obs_sum is not None:
            parts += [episodes.obs_sum.to(dev).reshape(-1), episodes.obs_sumsq.to(dev).reshape(-1)]
        total = all_reduce_sum(torch.cat(parts)).cpu()
        num_steps, num_env_steps, obs_count = (int(v) for v in total[:3].tolist())
        obs_sum = obs_sumsq = None
        if episodes.obs_sum is not None:
            shape, d = episodes.obs_sum.shape, episodes.obs_sum.numel()
            obs_sum = total[3 : 3 + d].reshape(shape).to(episodes.obs_sum.device)
            obs_sumsq = total[3 + d :].reshape(shape).to(episodes.obs_sum.device)
        out = episodes.returns.device
        return RolloutResult(
            returns=all_gather_fitness(episodes.returns.to(dev), population).to(out),
            lengths=all_gather_fitness(episodes.lengths.to(dev), population).to(out),
            episode_returns=episodes.episode_returns,
            episode_lengths=episodes.episode_lengths,
            num_episodes=episodes.num_episodes,
            num_steps=num_steps,
            num_env_steps=num_env_steps,
            obs_sum=obs_sum,
            obs_sumsq=obs_sumsq,
            obs_count=obs_count,
        )

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank."""
        if self.world_size == 1:
            return flag
        import torch.distributed as dist

        value = torch.tensor([int(flag)], dtype=torch.int64, device=self.device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    def share_evaluation(self, ev: dict[str, float]) -> dict[str, float]:
        """Rank 0's evaluation (``return_mean``, ``return_std``, ``length_mean``, ``time_s``) on every rank."""
        if self.world_size == 1:
            return ev
        import torch.distributed as dist

        keys = ("return_mean", "return_std", "length_mean", "time_s")
        value = torch.tensor([ev[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.broadcast(value, src=0)
        return dict(zip(keys, value.tolist(), strict=True))

    def check_in_sync(self, policy: MLPPolicy, generation: int) -> None:
        """Raise ``RuntimeError`` on every rank when the replicas' weights or observation statistics differ."""
        if self.world_size == 1:
            return
        from eggroll_rl.distributed import check_replicas_in_sync

        if not check_replicas_in_sync(policy, buffers=True):
            raise RuntimeError(
                f"generation {generation}: the ranks' policies differ (checksums of weights or observation "
                "statistics); every rank must apply the same update. Same torch version and device kind on every "
                "rank?"
            )
