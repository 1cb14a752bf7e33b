"""Evaluate a population on a batched env: per-member returns and episode lengths, done masking, obs statistics.

Two paths:

``rollout(env, act, num_members, ...)`` — the batched path. The env's ``B = num_envs`` envs are split among the
members: by default member ``i`` owns envs ``i*E .. i*E+E-1`` (``E = envs_per_member``), or any mapping given
as ``member_ids`` ``(B,)``. Every step calls ``act(obs, member_ids) -> actions`` once for the whole batch::

    obs: (B, *obs_shape) float32, member_ids: (B,) long  ->  actions: (B,) long | (B, act_dim) float

so a population policy is one batched forward (``population_act(pop, model, action_fn)`` builds that
callable from ``pop.batched_forward``), and the trainer can wrap it with observation normalization and action
squashing. Each env plays ``episodes_per_env`` consecutive episodes (the env's same-step autoreset starts the
next one). An env is *live* until its episodes are done; after that its rewards are masked out and its
observations are not recorded — no reward after an episode ends, no episode counted twice. The loop stops
when every env is done or after ``max_steps`` steps; an episode still running then is counted as it stands
(its return so far, its length so far).

``rollout_iterate(env, pop, model, ...)`` — for an env that cannot batch a population (e.g. a single env):
members are evaluated one after another inside ``pop.iterate()``, where a plain ``model(obs)`` runs as that
member, each on all of the env's envs, with the same reset seed (common random numbers).

Both return a ``RolloutResult`` (all tensors on the env's device):

- ``returns`` ``(N,)`` float32 — mean episode return of each member (the fitness to give ``strategy.step``);
- ``lengths`` ``(N,)`` float32 — mean episode length of each member;
- ``episode_returns`` ``(N, K)`` float32 / ``episode_lengths`` ``(N, K)`` long — every episode of every member
  (``K`` = episodes per member; NaN / 0 where an episode never started because ``max_steps`` ran out);
- ``num_episodes`` ``(N,)`` long — episodes counted per member;
- ``num_steps`` — live transitions (sum of all episode lengths), ``num_env_steps`` — transitions simulated
  (``env.step`` calls × ``num_envs``, masked ones included);
- ``obs_sum``, ``obs_sumsq`` ``(*obs_shape,)`` float64 and ``obs_count`` — sums over the observations the
  policy acted on in live envs (``record_obs=True``), for running normalization statistics.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from eggroll_rl.envs.base import Box, Discrete, Space, VecEnv

__all__ = ["RolloutResult", "rollout", "rollout_iterate", "population_act", "default_action_fn", "ActFn"]

#: ``act(obs (B, *obs_shape), member_ids (B,)) -> actions (B,) | (B, act_dim)``.
ActFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class RolloutResult:
    """What a rollout measured; see the module docstring for shapes."""

    returns: torch.Tensor
    lengths: torch.Tensor
    episode_returns: torch.Tensor
    episode_lengths: torch.Tensor
    num_episodes: torch.Tensor
    num_steps: int
    num_env_steps: int
    obs_sum: torch.Tensor | None = None
    obs_sumsq: torch.Tensor | None = None
    obs_count: int = 0

    @property
    def obs_mean(self) -> torch.Tensor | None:
        """Mean of the recorded observations ``(*obs_shape,)`` float64, or None."""
        if self.obs_sum is None or self.obs_count == 0:
            return None
        return self.obs_sum / self.obs_count

    @property
    def obs_var(self) -> torch.Tensor | None:
        """Population variance of the recorded observations ``(*obs_shape,)`` float64, or None."""
        mean = self.obs_mean
        if mean is None or self.obs_sumsq is None:
            return None
        return (self.obs_sumsq / self.obs_count - mean.square()).clamp_min(0.0)


def default_action_fn(space: Space) -> Callable[[torch.Tensor], torch.Tensor]:
    """Map a policy's raw output to valid actions: ``argmax`` of ``(B, n)`` logits for ``Discrete(n)``,
    clamp to the bounds for a ``Box`` (unbounded dimensions are left as they are)."""
    if isinstance(space, Discrete):
        return lambda out: out.argmax(-1)
    if isinstance(space, Box):
        low, high = space.low, space.high
        if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
            return lambda out: out
        cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

        def clamp(out: torch.Tensor) -> torch.Tensor:
            if out.device not in cache:
                cache[out.device] = (low.to(out.device), high.to(out.device))
            lo, hi = cache[out.device]
            return torch.maximum(torch.minimum(out, hi.to(out.dtype)), lo.to(out.dtype))

        return clamp
    raise TypeError(f"space must be a Box or Discrete, got {space!r}")


def population_act(
    pop: Any, model: torch.nn.Module, action_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> ActFn:
    """``act(obs, member_ids)`` that runs ``model`` for every row as its member in one batched forward.

    Args:
        pop: the context of ``strategy.perturb(population_size=N, epoch=t)``.
        model: the policy given to ``strategy.setup``; maps ``(B, *obs_shape)`` to ``(B, out_dim)``.
        action_fn: maps the model's output to actions (e.g. ``default_action_fn(env.single_action_space)``);
            ``None`` uses the output as it is.
    """
    fn = action_fn if action_fn is not None else (lambda out: out)

    def act(obs: torch.Tensor, member_ids: torch.Tensor) -> torch.Tensor:
        return fn(pop.batched_forward(model, obs, member_ids=member_ids))

    return act


def _member_ids(env: VecEnv, num_members: int, envs_per_member: int, member_ids: Any) -> torch.Tensor:
    if not isinstance(num_members, int) or num_members < 1:
        raise ValueError(f"num_members must be a positive int, got {num_members!r}")
    if member_ids is None:
        if not isinstance(envs_per_member, int) or envs_per_member < 1:
            raise ValueError(f"envs_per_member must be a positive int, got {envs_per_member!r}")
        if env.num_envs != num_members * envs_per_member:
            raise ValueError(
                f"env.num_envs={env.num_envs} must equal num_members * envs_per_member = {num_members} * "
                f"{envs_per_member} = {num_members * envs_per_member}; make the env with that many envs or pass "
                "member_ids"
            )
        return torch.arange(num_members, device=env.device).repeat_interleave(envs_per_member)
    ids = torch.as_tensor(member_ids, device=env.device)
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.shape != (env.num_envs,):
        raise ValueError(
            f"member_ids must be an integer tensor of shape ({env.num_envs},) (one member per env), got "
            f"dtype {ids.dtype}, shape {tuple(ids.shape)}"
        )
    ids = ids.long()
    counts = torch.bincount(ids.clamp(0, num_members - 1), minlength=num_members)
    if int(ids.min()) < 0 or int(ids.max()) >= num_members or bool((counts == 0).any()):
        raise ValueError(
            f"member_ids must lie in [0, {num_members}) and give every member at least one env; got values in "
            f"[{int(ids.min())}, {int(ids.max())}], members without env: "
            f"{(counts == 0).nonzero().flatten()[:8].tolist()}"
        )
    return ids


class _Tally:
    """A rollout's running per-env bookkeeping, updated in place (so a CUDA graph can replay the updates)."""

    def __init__(self, num_envs: int, k: int, obs_shape: torch.Size, record_obs: bool, dev: torch.device) -> None:
        self.k = k
        self.rows = torch.arange(num_envs, device=dev)
        self.live = torch.ones(num_envs, dtype=torch.bool, device=dev)
        self.ep_return = torch.zeros(num_envs, dtype=torch.float64, device=dev)
        self.ep_length = torch.zeros(num_envs, dtype=torch.int64, device=dev)
        self.finished = torch.zeros(num_envs, dtype=torch.int64, device=dev)
        self.table_return = torch.full((num_envs, k), math.nan, dtype=torch.float64, device=dev)
        self.table_length = torch.zeros((num_envs, k), dtype=torch.int64, device=dev)
        self.obs_count = torch.zeros((), dtype=torch.int64, device=dev)
        self.obs_sum = torch.zeros(obs_shape, dtype=torch.float64, device=dev) if record_obs else None
        self.obs_sumsq = torch.zeros(obs_shape, dtype=torch.float64, device=dev) if record_obs else None

    def record(self, obs: torch.Tensor) -> None:
        """Add the observations the policy acts on, in live envs only, to the sums."""
        w = self.live.to(torch.float64).reshape(-1, *([1] * (obs.dim() - 1)))
        o = obs.to(torch.float64)
        self.obs_sum += (o * w).sum(0)
        self.obs_sumsq += (o.square() * w).sum(0)
        self.obs_count += self.live.sum()

    def update(self, reward: torch.Tensor, terminated: torch.Tensor, truncated: torch.Tensor) -> None:
        """One step's rewards and episode ends: live envs only, a finished episode goes to its table slot."""
        live, rows = self.live, self.rows
        self.ep_return += torch.where(live, reward.to(torch.float64), 0.0)
        self.ep_length += live.long()
        done = (terminated | truncated) & live
        slot = self.finished.clamp(max=self.k - 1)
        self.table_return[rows, slot] = torch.where(done, self.ep_return, self.table_return[rows, slot])
        self.table_length[rows, slot] = torch.where(done, self.ep_length, self.table_length[rows, slot])
        self.finished += done.long()
        self.ep_return.masked_fill_(done, 0.0)
        self.ep_length.masked_fill_(done, 0)
        torch.lt(self.finished, self.k, out=self.live)


@contextlib.contextmanager
def _syncs_refused() -> Iterator[None]:
    """torch's sync debug mode set to ``"error"`` for the block (a host sync raises), then restored; without torch's
    "prototype feature" UserWarning, which would otherwise reach the user's console on every GPU training run."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Synchronization debug mode", category=UserWarning)
        mode = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Synchronization debug mode", category=UserWarning)
            torch.cuda.set_sync_debug_mode(mode)


class _GraphedStep:
    """The torch side of a rollout step as two CUDA graphs around ``env.step``.

    Graph 1 runs ``act`` (and the observation sums) on a fixed observation buffer; graph 2 runs the bookkeeping
    on fixed reward/termination buffers. Per step the host then issues 2 replays and 4 copies instead of one
    launch per torch op: the policy's forward alone took ~2.2 ms of host time per step at 2048 envs on the H100
    machine, more than its GPU time (``benchmarks/profile_rollout.py``).

    ``act`` must be a function of its inputs and of tensors that keep their memory during the rollout (parameters,
    buffers), with no host sync; otherwise capturing fails and ``rollout`` runs eagerly (or raises, if asked for
    graphs explicitly). The env's outputs are copied in, so the env may return new tensors every step.
    """

    def __init__(self, act: ActFn, ids: torch.Tensor, tally: _Tally, obs, reward, terminated, truncated,
                 record_obs: bool) -> None:  # fmt: skip
        dev = obs.device
        self.obs_in = obs.clone()
        self.reward_in = reward.clone()
        self.terminated_in = terminated.clone()
        self.truncated_in = truncated.clone()
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        # One eager call first: lazy initialisation (kernel compilation, library handles) stays out of the capture,
        # and a host sync in ``act`` raises here, before capturing starts: a capture that fails midway leaves
        # torch's CUDA RNG in capture mode, and later random draws in the process fail.
        try:
            with _syncs_refused(), torch.cuda.stream(side):
                act(self.obs_in, ids)
        finally:
            torch.cuda.current_stream(dev).wait_stream(side)
        # Capture in thread-local mode: the env's backend may have threads of its own issuing CUDA calls
        # meanwhile (JAX's dispatch threads run Brax's step asynchronously). In the default global mode such a
        # call, legal outside a capture, fails in that thread and invalidates the capture: torch fell back to
        # eager and JAX was left with a failed stream ("Callback registry is closed" a few steps later).
        # Both graphs are captured on ``side``, a stream of the env's GPU: torch's default capture stream is one per
        # process, made on whichever GPU was current at the first capture; a rollout on another GPU must not capture
        # on it (the env GPU's work would run outside the capture).
        self.act_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.act_graph, stream=side, capture_error_mode="thread_local"):
            self.actions = act(self.obs_in, ids)
            if record_obs:
                tally.record(self.obs_in)
        self.update_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.update_graph, stream=side, capture_error_mode="thread_local"):
            tally.update(self.reward_in, self.terminated_in, self.truncated_in)

    def step(self, env: VecEnv, obs: torch.Tensor) -> torch.Tensor:
        self.obs_in.copy_(obs)
        self.act_graph.replay()
        obs, reward, terminated, truncated, _ = env.step(self.actions)
        self.reward_in.copy_(reward)
        self.terminated_in.copy_(terminated)
        self.truncated_in.copy_(truncated)
        self.update_graph.replay()
        return obs


def _build_graphs(env: VecEnv, strict: bool, *args: Any) -> _GraphedStep | None:
    try:
        sync = getattr(env, "synchronize", None)  # duck-typed envs may lack the hook
        if sync is not None:
            sync()  # the backend's own queued work (JAX's step) is done before the capture starts
        return _GraphedStep(*args)
    except Exception as e:  # noqa: BLE001 - any capture failure: run eagerly (or raise when graphs were asked for)
        torch.cuda.synchronize()
        if strict:
            raise RuntimeError(
                f"rollout(cuda_graph=True): capturing the policy step as a CUDA graph failed ({e}); the act "
                "callable must not sync with the host or change shapes. Pass cuda_graph=False to run eagerly."
            ) from e
        warnings.warn(
            f"rollout: capturing the step as a CUDA graph failed ({type(e).__name__}: {e}); running eagerly. "
            "Pass cuda_graph=False to skip the attempt.",
            stacklevel=3,
        )
        return None


@torch.no_grad()
def rollout(
    env: VecEnv,
    act: ActFn,
    num_members: int,
    envs_per_member: int = 1,
    episodes_per_env: int = 1,
    max_steps: int = 1000,
    seed: int | None = None,
    record_obs: bool = False,
    member_ids: torch.Tensor | None = None,
    exit_check_every: int | None = None,
    cuda_graph: bool | None = None,
) -> RolloutResult:
    """Evaluate ``num_members`` members on ``env`` (batched); see the module docstring.

    Args:
        env: a ``VecEnv`` (``eggroll_rl.envs.make_env``); it is reset at the start.
        act: ``act(obs (B, *obs_shape), member_ids (B,)) -> actions`` (e.g. ``population_act(pop, model, fn)``).
        num_members: population size ``N``.
        envs_per_member: ``E``; member ``i`` owns envs ``i*E .. i*E+E-1`` (needs ``env.num_envs == N*E``).
        episodes_per_env: consecutive episodes each env plays; each member gets ``E * episodes_per_env``.
        max_steps: at most this many ``env.step`` calls; episodes still running then count as they stand.
        seed: passed to ``env.reset(seed)`` (``None``: continue the env's random stream).
        record_obs: accumulate ``obs_sum``/``obs_sumsq``/``obs_count`` over the live observations acted on.
        member_ids: ``(B,)`` long, the member of each env, instead of the ``envs_per_member`` layout.
        exit_check_every: test "all envs done?" every this many steps (each test is a host sync); ``None``: 1 on
            the CPU, 8 on CUDA. Later tests only cost masked steps, never change the result.
        cuda_graph: replay ``act`` and the bookkeeping as CUDA graphs after the first step (CUDA only; the
            results are the same). ``None``: on CUDA when ``max_steps > 8``, falling back to eager execution with
            a warning if capturing fails; ``True``: raise instead; ``False``: never.

    Returns:
        ``RolloutResult`` with ``returns``/``lengths`` ``(N,)``.
    """
    if not isinstance(episodes_per_env, int) or episodes_per_env < 1:
        raise ValueError(f"episodes_per_env must be a positive int, got {episodes_per_env!r}")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    if cuda_graph not in (None, True, False):
        raise ValueError(f"cuda_graph must be None, True or False, got {cuda_graph!r}")
    ids = _member_ids(env, num_members, envs_per_member, member_ids)
    dev, num_envs, k = env.device, env.num_envs, episodes_per_env
    if cuda_graph is True and dev.type != "cuda":
        raise ValueError(f"cuda_graph=True needs an env on a CUDA device, got env.device={dev}")
    if exit_check_every is None:
        exit_check_every = 8 if dev.type == "cuda" else 1
    if not isinstance(exit_check_every, int) or exit_check_every < 1:
        raise ValueError(f"exit_check_every must be a positive int or None, got {exit_check_every!r}")
    want_graph = dev.type == "cuda" and (cuda_graph is True or (cuda_graph is None and max_steps > 8))

    # The rollout runs with the env's GPU current: implicit uses of the current device in ``act`` and the env (Triton
    # launches, new streams, events) follow it, and another library (JAX) or the caller may have left another GPU
    # current.
    with torch.cuda.device(dev) if dev.type == "cuda" else contextlib.nullcontext():
        obs = env.reset(seed=seed)
        tally = _Tally(num_envs, k, obs.shape[1:], record_obs, dev)
        graphed: _GraphedStep | None = None
        calls = 0
        for _ in range(max_steps):
            if graphed is not None:
                obs = graphed.step(env, obs)
            else:
                actions = act(obs, ids)
                if record_obs:
                    tally.record(obs)
                obs, reward, terminated, truncated, _ = env.step(actions)
                tally.update(reward, terminated, truncated)
                if want_graph:
                    want_graph = False
                    graphed = _build_graphs(env, cuda_graph is True, act, ids, tally, obs, reward, terminated,
                                            truncated, record_obs)  # fmt: skip
            calls += 1
            if calls % exit_check_every == 0 and not bool(tally.live.any()):
                break
        del graphed  # frees the graphs' memory pool
        flush = getattr(env, "flush_checks", None)
        if flush is not None:
            flush()  # deferred NaN checks of the env (if any) raise before a result is returned

    # Episodes cut by max_steps count as they stand; those that never started stay NaN / 0.
    t = tally
    cut = t.live & (t.ep_length > 0)
    slot = t.finished.clamp(max=k - 1)
    t.table_return[t.rows, slot] = torch.where(cut, t.ep_return, t.table_return[t.rows, slot])
    t.table_length[t.rows, slot] = torch.where(cut, t.ep_length, t.table_length[t.rows, slot])
    return _aggregate(
        t.table_return, t.table_length, ids, num_members, calls * num_envs, t.obs_sum, t.obs_sumsq, int(t.obs_count)
    )


def _aggregate(
    table_return: torch.Tensor,
    table_length: torch.Tensor,
    ids: torch.Tensor,
    num_members: int,
    num_env_steps: int,
    obs_sum: torch.Tensor | None,
    obs_sumsq: torch.Tensor | None,
    obs_count: int,
) -> RolloutResult:
    """Per-env episode tables ``(B, k)`` → per-member results (members' envs in env order)."""
    dev = table_return.device
    counted = ~torch.isnan(table_return)
    per_env_count = counted.sum(1)
    num_episodes = torch.zeros(num_members, dtype=torch.int64, device=dev).index_add_(0, ids, per_env_count)
    ret_sum = torch.zeros(num_members, dtype=torch.float64, device=dev).index_add_(
        0, ids, torch.where(counted, table_return, 0.0).sum(1)
    )
    len_sum = torch.zeros(num_members, dtype=torch.float64, device=dev).index_add_(
        0, ids, table_length.sum(1).to(torch.float64)
    )
    denom = num_episodes.clamp_min(1).to(torch.float64)
    # (N, K) tables: a member's envs in env order, each env's episodes in play order.
    order = torch.argsort(ids, stable=True)
    per_member = int(torch.bincount(ids, minlength=num_members).max())
    k = table_return.shape[1]
    ep_ret = torch.full((num_members, per_member * k), math.nan, dtype=torch.float32, device=dev)
    ep_len = torch.zeros((num_members, per_member * k), dtype=torch.int64, device=dev)
    sorted_ids = ids[order]
    first = torch.searchsorted(sorted_ids, sorted_ids)  # index of each member's first env in sorted order
    pos = torch.arange(ids.numel(), device=dev) - first
    cols = (pos[:, None] * k + torch.arange(k, device=dev)[None, :]).reshape(-1)
    mrow = sorted_ids.repeat_interleave(k)
    ep_ret[mrow, cols] = table_return[order].reshape(-1).to(torch.float32)
    ep_len[mrow, cols] = table_length[order].reshape(-1)
    return RolloutResult(
        returns=(ret_sum / denom).to(torch.float32),
        lengths=(len_sum / denom).to(torch.float32),
        episode_returns=ep_ret,
        episode_lengths=ep_len,
        num_episodes=num_episodes,
        num_steps=int(table_length.sum()),
        num_env_steps=num_env_steps,
        obs_sum=obs_sum,
        obs_sumsq=obs_sumsq,
        obs_count=obs_count,
    )


@torch.no_grad()
def rollout_iterate(
    env: VecEnv,
    pop: Any,
    model: torch.nn.Module,
    action_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    episodes_per_env: int = 1,
    max_steps: int = 1000,
    seed: int | None = None,
    record_obs: bool = False,
) -> RolloutResult:
    """Evaluate every member of ``pop`` one after another (``pop.iterate()``), each on all of ``env``'s envs.

    For envs that cannot batch a population. Each member plays ``env.num_envs * episodes_per_env`` episodes;
    ``env`` is reset with the same ``seed`` for every member (``None``: one stream continued across members).

    Args:
        env: a ``VecEnv`` of any ``num_envs`` (often 1).
        pop: the context of ``strategy.perturb(...)``; ``model(obs)`` runs as the current member inside it.
        model: the policy given to ``strategy.setup``.
        action_fn: maps ``model(obs)`` to actions; ``None`` uses the output as it is.
        episodes_per_env, max_steps, record_obs: as in ``rollout`` (``max_steps`` per member).
        seed: reset seed used for every member.

    Returns:
        ``RolloutResult`` with ``returns``/``lengths`` ``(pop.population_size,)``.
    """
    fn = action_fn if action_fn is not None else (lambda out: out)
    parts: list[RolloutResult] = []
    for _member in pop.iterate():
        parts.append(
            rollout(
                env,
                lambda obs, _ids: fn(model(obs)),
                num_members=1,
                envs_per_member=env.num_envs,
                episodes_per_env=episodes_per_env,
                max_steps=max_steps,
                seed=seed,
                record_obs=record_obs,
            )
        )
    if not parts:
        raise ValueError("pop.iterate() yielded no members; expected population_size >= 1")
    return RolloutResult(
        returns=torch.cat([p.returns for p in parts]),
        lengths=torch.cat([p.lengths for p in parts]),
        episode_returns=torch.cat([p.episode_returns for p in parts]),
        episode_lengths=torch.cat([p.episode_lengths for p in parts]),
        num_episodes=torch.cat([p.num_episodes for p in parts]),
        num_steps=sum(p.num_steps for p in parts),
        num_env_steps=sum(p.num_env_steps for p in parts),
        obs_sum=torch.stack([p.obs_sum for p in parts]).sum(0) if record_obs else None,
        obs_sumsq=torch.stack([p.obs_sumsq for p in parts]).sum(0) if record_obs else None,
        obs_count=sum(p.obs_count for p in parts),
    )
