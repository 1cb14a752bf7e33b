"""Training rollout of an ``MLPPolicy`` population on Brax with the whole episode inside one jitted JAX loop.

``rollout`` (``agents/rollout.py``) runs an episode one step at a time: the torch forward (a CUDA graph), DLPack,
the jitted Brax step, DLPack back; on a GPU that loop is bound by host launch latency, not by the GPU. Here the
population's factors are built once per generation in torch (the counter-based noise of ``eggroll_rl.noise``,
unchanged), handed to JAX by DLPack, and one ``jax.jit`` runs the episode: every member's policy forward, the Brax
step, done masking and the bookkeeping, in a ``lax.while_loop`` of ``lax.scan`` chunks.

``jax_rollout(env, policy, pop, num_members, ...)`` returns the ``RolloutResult`` that
``rollout(env, lambda obs, ids: pop.batched_forward(policy, obs, ids), num_members, ...)`` returns, with the same
meaning field for field, for one episode per env (the trainer's case). What differs:

- floats: the member forward is ``x W^T + b + (x B) A'^T + delta_b`` in float32 (matmuls at
  ``Precision.HIGHEST``; XLA's GPU default would be TF32), where torch's kernels sum in another order; returns are
  summed in float32 with Kahan compensation (torch sums in float64) and the observation sums per step in float32,
  then over steps in float64 in torch. Both agree to float rounding, but Brax's dynamics amplify rounding: on
  HalfCheetah (spring, an untrained policy, CPU) the two paths' observations parted by ~1e-7 relative after one step,
  ~1e-4 after ten and fully within twenty to fifty, as much as the JAX path against itself with one bias nudged by
  1e-7. Per-member returns of an episode are then equally valid samples, not the same numbers;
- a generation repeats bit for bit, on the CPU (tested) and on an H200 (``benchmarks/bench_rollout_jax.py``,
  ``benchmarks/results/rollout_jax_2026-11-30.md``), as the trainer's bit-exact resume needs;
- NaN checks (``env.check_finite``) look at the live envs only, once, after the episode;
- the env is left as ``reset`` left it (its own ``step`` is never called);
- a finished env is frozen (its state kept, the step's result dropped) instead of restarted.

``jax_policy_rollout(env, policy, ...)`` plays the unperturbed policy the same way (the trainer's evaluation when
``rollout="jax"``): ``rollout(env, lambda obs, ids: policy(obs), num_members=1, envs_per_member=env.num_envs, ...)``,
with the same differences.

``jax_rows_rollout(env, policy, layers, ...)`` plays rows whose perturbations are given explicitly (a dense ``dW`` per
row, say), with the same differences.

The policy must be an ``MLPPolicy`` with continuous actions and float32 weights, the env a ``BraxVecEnv``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from eggroll_rl.agents.policy import MLPPolicy
from eggroll_rl.agents.rollout import RolloutResult, _aggregate, _member_ids
from eggroll_rl.envs.base import NonFiniteError
from eggroll_rl.noise import member_noise_and_sign

__all__ = [
    "jax_rollout",
    "jax_policy_rollout",
    "jax_rows_rollout",
    "population_layers",
    "policy_layers",
    "policy_forward",
    "start_compiling_evaluation",
]

_LAYER_NORM_EPS = 1e-5  # F.layer_norm's default, which PQNActivation uses


def _check_policy(policy: Any, pop: Any | None) -> list[torch.nn.Linear]:
    if not isinstance(policy, MLPPolicy) or policy.discrete:
        raise ValueError(
            f"the JAX rollout runs an MLPPolicy with continuous actions; got {type(policy).__name__}"
            f"{' with discrete actions' if isinstance(policy, MLPPolicy) else ''}. Use rollout=torch for other "
            "policies"
        )
    if pop is not None:
        if policy is not pop.strategy.model:
            raise ValueError("policy is not the module the strategy was set up with; pass the model given to setup()")
        pop._check_active("jax_rollout()")
    linears = [m for m in policy.trunk if isinstance(m, torch.nn.Linear)] + [policy.head]
    for layer in linears:
        if layer.weight.dtype != torch.float32:
            raise ValueError(f"the JAX rollout needs float32 policy weights, got {layer.weight.dtype}")
    return linears


@torch.no_grad()
def population_layers(policy: MLPPolicy, pop: Any, member_ids: torch.Tensor) -> dict[str, Any]:
    """The policy of every row as torch tensors, for ``policy_forward``: what ``pop.batched_forward`` applies.

    Args:
        policy: the ``MLPPolicy`` the strategy was set up with.
        pop: the active ``PerturbationContext``.
        member_ids: ``(R,)`` long, the (global) member of each row.
    Returns:
        ``{"layers": [{"W", "b", "A", "B", "db"}, ...], "norm": {"mean", "std", "clip"} | None, "low", "high"}``:
        per Linear ``W`` ``(m, n)``, ``b`` ``(m,)``, and of each row ``A`` ``(R, m, r)`` = ``A'`` of ``get_factors``
        (sigma * sign / sqrt(r) included), ``B`` ``(R, n, r)``, ``db`` ``(R, m)`` = ``sigma * sign * eps`` (``None``
        where that parameter is not evolved); the normalizer's ``mean`` and ``std = sqrt(var + eps)`` as float32,
        as ``ObservationNormalizer.forward`` casts them; the action bounds ``(action_dim,)``.
    """
    linears = _check_policy(policy, pop)
    st = pop.strategy
    j, s = member_noise_and_sign(member_ids.long(), st.antithetic)
    uniq, inv = torch.unique(j, return_inverse=True)  # each noise index generated once
    layers = []
    for layer in linears:
        ws, bs = pop.spec_of(layer.weight), pop.spec_of(layer.bias)
        entry: dict[str, Any] = {"W": layer.weight.detach(), "b": layer.bias.detach(), "A": None, "B": None}
        if ws is not None:
            if ws.kind != "matrix":
                raise ValueError(f"parameter {ws.name!r} is perturbed full-rank; the JAX rollout expects low rank")
            scale = (st.sigma / math.sqrt(st.rank)) * s
            entry["A"] = pop.noise_of(ws, "A", uniq)[inv] * scale[:, None, None]
            entry["B"] = pop.noise_of(ws, "B", uniq)[inv]
        entry["db"] = (st.sigma * s)[:, None] * pop.noise_of(bs, "eps", uniq)[inv] if bs is not None else None
        layers.append(entry)
    return _with_normalizer_and_bounds(policy, layers)


@torch.no_grad()
def policy_layers(policy: MLPPolicy) -> dict[str, Any]:
    """The unperturbed policy as torch tensors, for ``policy_forward``: ``population_layers``' structure with every
    ``A``, ``B`` and ``db`` ``None`` (what ``policy(obs)`` applies to every row)."""
    linears = _check_policy(policy, None)
    layers = [{"W": m.weight.detach(), "b": m.bias.detach(), "A": None, "B": None, "db": None} for m in linears]
    return _with_normalizer_and_bounds(policy, layers)


def _with_normalizer_and_bounds(policy: MLPPolicy, layers: list[dict[str, Any]]) -> dict[str, Any]:
    norm = None
    if policy.obs_norm is not None:
        n = policy.obs_norm
        norm = {
            "mean": n.mean.to(torch.float32),
            "std": torch.sqrt(n.var + n.eps).to(torch.float32),
            "clip": torch.tensor(n.clip, dtype=torch.float32, device=n.mean.device),
        }
    return {"layers": layers, "norm": norm, "low": policy.action_low, "high": policy.action_high}


def policy_forward(params: Any, obs: Any, activation: str, action_mode: str, clip: bool) -> Any:
    """``MLPPolicy.forward`` of every row in JAX: ``obs`` ``(R, obs_dim)`` -> actions ``(R, action_dim)``.

    ``params`` is ``population_layers``' structure with JAX arrays; ``activation``/``action_mode`` as in
    ``MLPPolicy``; ``clip``: whether the normalizer clips (its ``clip > 0``).
    """
    import jax
    import jax.numpy as jnp

    hi = jax.lax.Precision.HIGHEST
    x = obs
    norm = params["norm"]
    if norm is not None:
        x = (x - norm["mean"]) / norm["std"]
        if clip:
            x = jnp.clip(x, -norm["clip"], norm["clip"])
    layers = params["layers"]
    for i, layer in enumerate(layers):
        y = jnp.matmul(x, layer["W"].T, precision=hi) + layer["b"]
        if layer["A"] is not None:
            # Each row has its own factors: a batched mat-vec, written as a product and a sum (exact float32).
            t = jnp.sum(x[:, :, None] * layer["B"], axis=1)  # (R, r)
            y = y + jnp.sum(t[:, None, :] * layer["A"], axis=2)
        if layer.get("dW") is not None:  # a dense perturbation of each row (jax_rows_rollout), exact float32 too
            y = y + jnp.sum(x[:, None, :] * layer["dW"], axis=2)
        if layer["db"] is not None:
            y = y + layer["db"]
        x = y if i == len(layers) - 1 else _activate(x=y, name=activation)
    low, high = params["low"], params["high"]
    if action_mode == "tanh":
        return low + (jnp.tanh(x) + 1.0) * (0.5 * (high - low))
    return jnp.maximum(jnp.minimum(x, high), low)


def _activate(x: Any, name: str) -> Any:
    import jax
    import jax.numpy as jnp

    if name == "tanh":
        return jnp.tanh(x)
    if name == "relu":
        return jnp.maximum(x, 0.0)
    if name == "silu":
        return jax.nn.silu(x)
    if name == "pqn":  # relu(layer_norm(x)) without affine, biased variance as torch's
        mu = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True)
        return jnp.maximum((x - mu) / jnp.sqrt(var + _LAYER_NORM_EPS), 0.0)
    raise ValueError(f"activation={name!r} is not supported by the JAX rollout; expected pqn, tanh, relu or silu")


_EPISODE_FNS: dict[tuple, Any] = {}


def _episode_fn(brax_env: Any, episode_length: int, max_steps: int, every: int, record_obs: bool,
                activation: str, action_mode: str, clip: bool) -> Any:  # fmt: skip
    """``jit(run(params, state, steps))``: one episode of every env, cached per configuration."""
    key = (brax_env, episode_length, max_steps, every, record_obs, activation, action_mode, clip)
    if key in _EPISODE_FNS:
        return _EPISODE_FNS[key]
    import jax
    import jax.numpy as jnp

    padded = -(-max_steps // every) * every  # per-step sums buffer: whole chunks, so every write is in bounds

    def one_step(c: dict[str, Any], _: Any) -> tuple[dict[str, Any], None]:
        state, live = c["state"], c["live"]
        active = live & (c["t"] < max_steps)  # a chunk may run past max_steps: those steps count for nothing
        obs = state.obs
        actions = policy_forward(c["params"], obs, activation, action_mode, clip)
        if record_obs:
            w = active.astype(obs.dtype)[:, None]
            c["s1"] = c["s1"].at[c["t"]].set(jnp.sum(obs * w, axis=0))
            c["s2"] = c["s2"].at[c["t"]].set(jnp.sum(jnp.square(obs) * w, axis=0))
        nxt = jax.vmap(brax_env.step)(state, actions)
        steps = c["steps"] + 1
        done = ((nxt.done > 0.5) | (steps >= episode_length)) & active
        # Kahan-compensated sum: a float32 return over 1000 steps would lose ~1e-5 relative against torch's float64.
        y = jnp.where(active, nxt.reward, 0.0) - c["comp"]
        total = c["ret"] + y
        c["comp"] = (total - c["ret"]) - y
        c["ret"] = total
        c["length"] = c["length"] + active.astype(jnp.int32)
        c["live"] = live & ~done
        bad_actions = jnp.any(active & ~jnp.isfinite(actions).all(axis=1))
        bad_outputs = jnp.any(active & ~(jnp.isfinite(nxt.obs).all(axis=1) & jnp.isfinite(nxt.reward)))
        c["flags"] = c["flags"] | jnp.stack([bad_actions, bad_outputs])

        def keep(new: Any, old: Any) -> Any:  # a finished env stays as it ended
            return jnp.where(active.reshape(active.shape + (1,) * (new.ndim - 1)), new, old)

        c["state"] = jax.tree_util.tree_map(keep, nxt, state)
        c["steps"] = steps
        c["t"] = c["t"] + 1
        return c, None

    def run(params: Any, state: Any, steps: Any) -> tuple[Any, ...]:
        num_envs, obs_dim = state.obs.shape
        zeros = jnp.zeros(num_envs, jnp.float32)
        sums = jnp.zeros((padded if record_obs else 0, obs_dim), jnp.float32)
        carry = dict(params=params, state=state, steps=steps, live=jnp.ones(num_envs, bool), ret=zeros, comp=zeros,
                     length=jnp.zeros(num_envs, jnp.int32), t=jnp.zeros((), jnp.int32),
                     flags=jnp.zeros(2, bool), s1=sums, s2=sums)  # fmt: skip

        def chunk(c: dict[str, Any]) -> dict[str, Any]:
            return jax.lax.scan(one_step, c, None, length=every)[0]

        # "All done?" is read once per chunk (on a GPU, each read is a small device-to-host copy), as rollout does.
        c = jax.lax.while_loop(lambda c: (c["t"] < max_steps) & jnp.any(c["live"]), chunk, carry)
        calls = jnp.minimum(c["t"], max_steps)
        return c["ret"], c["comp"], c["length"], calls, c["flags"], c["s1"], c["s2"]

    fn = jax.jit(run)
    _EPISODE_FNS[key] = fn
    return fn


@torch.no_grad()
def jax_rollout(
    env: Any,
    policy: MLPPolicy,
    pop: Any,
    num_members: int,
    envs_per_member: int = 1,
    max_steps: int = 1000,
    seed: int | None = None,
    record_obs: bool = False,
    member_ids: torch.Tensor | None = None,
    first_member: int = 0,
    exit_check_every: int | None = None,
) -> RolloutResult:
    """Evaluate ``num_members`` members of ``pop`` on a Brax env, one episode per env, in one JAX loop.

    The same result as ``rollout(env, lambda obs, ids: pop.batched_forward(policy, obs, ids + first_member), ...)``
    with these arguments (see the module docstring for what differs in the floats).

    Args:
        env: a ``BraxVecEnv``; it is reset with ``env.reset(seed=seed)`` first, as ``rollout`` does.
        policy: the ``MLPPolicy`` (continuous actions) given to ``strategy.setup``.
        pop: the active context of ``strategy.perturb(...)``.
        num_members, envs_per_member, max_steps, seed, record_obs, member_ids: as in ``rollout``
            (``member_ids`` local, in ``[0, num_members)``).
        first_member: added to the local member ids to give the global ones whose noise is used (``torchrun``:
            the first member of this rank's slice).
        exit_check_every: steps per loop iteration between "all envs done?" tests; ``None``: 8 on CUDA, 1 on the
            CPU, as ``rollout``, so ``num_env_steps`` is the same as its.

    Returns:
        ``RolloutResult`` with ``returns``/``lengths`` ``(num_members,)``.
    """
    exit_check_every = _check_arguments(env, max_steps, exit_check_every)
    if not isinstance(first_member, int) or first_member < 0:
        raise ValueError(f"first_member must be a non-negative int, got {first_member!r}")
    _check_policy(policy, pop)
    ids = _member_ids(env, num_members, envs_per_member, member_ids)
    if first_member + num_members > pop.population_size:
        raise ValueError(
            f"first_member + num_members = {first_member} + {num_members} exceeds population_size {pop.population_size}"
        )
    params = population_layers(policy, pop, ids + first_member)  # torch tensors: kept alive until the results are read
    what = f"{num_members} members on this process, {envs_per_member} episode(s) each"
    return _play(env, policy, params, ids, num_members, max_steps, seed, record_obs, exit_check_every, what)


@torch.no_grad()
def jax_rows_rollout(
    env: Any,
    policy: MLPPolicy,
    layers: dict[str, Any],
    num_members: int,
    envs_per_member: int = 1,
    max_steps: int = 1000,
    seed: int | None = None,
    record_obs: bool = False,
    member_ids: torch.Tensor | None = None,
    exit_check_every: int | None = None,
) -> RolloutResult:
    """``jax_rollout`` with each env's policy given explicitly instead of by a strategy's population: for a
    perturbation scheme of one's own (the leaderboard's full-rank OpenES peer).

    Args:
        env, policy, num_members, envs_per_member, max_steps, seed, record_obs, member_ids, exit_check_every: as in
            ``jax_rollout``; ``policy`` gives the architecture, the normalizer and the action bounds.
        layers: ``policy_layers(policy)``'s structure, one row per env: per Linear ``W`` ``(m, n)`` and ``b``
            ``(m,)`` shared, and optionally per row low-rank ``A`` ``(R, m, r)`` / ``B`` ``(R, n, r)``, a dense
            ``dW`` ``(R, m, n)`` and ``db`` ``(R, m)``, each added to the row's output as ``policy_forward`` says.
            Torch tensors on ``env``'s device, float32.
    """
    exit_check_every = _check_arguments(env, max_steps, exit_check_every)
    _check_policy(policy, None)
    ids = _member_ids(env, num_members, envs_per_member, member_ids)
    what = f"{num_members} members, {envs_per_member} episode(s) each"
    return _play(env, policy, layers, ids, num_members, max_steps, seed, record_obs, exit_check_every, what)


@torch.no_grad()
def jax_policy_rollout(
    env: Any, policy: MLPPolicy, max_steps: int = 1000, seed: int | None = None, exit_check_every: int | None = None
) -> RolloutResult:
    """One episode of the unperturbed ``policy`` in each of ``env``'s envs, in one JAX loop.

    The same result as ``rollout(env, lambda obs, ids: policy(obs), num_members=1, envs_per_member=env.num_envs,
    max_steps=max_steps, seed=seed)`` (the trainer's evaluation), with the floats of ``jax_rollout`` (module
    docstring): ``episode_returns`` / ``episode_lengths`` ``(1, num_envs)``, one episode per env in env order.
    ``env`` is a ``BraxVecEnv``, reset with ``env.reset(seed=seed)`` first; ``policy`` an ``MLPPolicy`` with continuous
    actions and float32 weights (no strategy needed); ``exit_check_every`` as in ``jax_rollout``.
    """
    exit_check_every = _check_arguments(env, max_steps, exit_check_every)
    _check_policy(policy, None)
    ids = torch.zeros(env.num_envs, dtype=torch.long, device=env.device)
    params = policy_layers(policy)
    return _play(env, policy, params, ids, 1, max_steps, seed, False, exit_check_every, "an evaluation",
                 "eval_episodes")  # fmt: skip


class EvaluationCompile:
    """The evaluation's reset and loop compiling in a daemon thread (``start_compiling_evaluation``). ``join()`` waits
    for it; ``error`` is what it raised, if anything: then nothing is compiled ahead and the evaluation compiles as
    usual."""

    def __init__(self, env: Any, policy: MLPPolicy, max_steps: int, exit_check_every: int | None = None) -> None:
        import threading

        import jax

        self.error: BaseException | None = None
        exit_check_every = _check_arguments(env, max_steps, exit_check_every)
        _check_policy(policy, None)
        # The parameters' shapes are read here, not in the thread: the training changes the policy in place.
        params = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
            _tree_to_jax(env, policy_layers(policy)),
        )
        args = (env, policy, params, max_steps, exit_check_every)
        self._thread = threading.Thread(target=self._run, args=args, name="eggroll-eval-compile", daemon=True)
        self._thread.start()

    def _run(self, env: Any, policy: MLPPolicy, params: Any, max_steps: int, exit_check_every: int) -> None:
        try:
            brax_env, state, steps = env.compile_reset()
            fn = _policy_episode_fn(env, brax_env, policy, max_steps, exit_check_every, record_obs=False)
            with env.jax_scope():
                fn.lower(params, state, steps).compile()  # what jax_policy_rollout's _play will call
        except BaseException as exc:  # noqa: BLE001 - reported in .error; the evaluation then compiles itself
            self.error = exc

    def join(self) -> None:
        self._thread.join()


def start_compiling_evaluation(
    env: Any, policy: MLPPolicy, max_steps: int = 1000, exit_check_every: int | None = None
) -> EvaluationCompile:
    """Compile what ``jax_policy_rollout(env, policy, max_steps, exit_check_every=...)`` runs (the env's batched
    reset and the episode loop) from the shapes alone, in a background thread; ``join()`` the result before
    evaluating on ``env``. Nothing runs, ``env`` and ``policy`` are unchanged; the later evaluation with these shapes
    and settings is served by JAX's compilation cache.

    XLA compiles on the host while the GPU trains: the trainer starts it at the beginning of a ``rollout="jax"`` run
    on a GPU, so that the first evaluation finds its loop compiled instead of compiling it then (13-18 s of a Brax
    locomotion run on an H200, measured as the first evaluation's extra time)."""
    return EvaluationCompile(env, policy, max_steps, exit_check_every)


def _policy_episode_fn(env: Any, brax_env: Any, policy: MLPPolicy, max_steps: int, exit_check_every: int,
                       record_obs: bool) -> Any:  # fmt: skip
    """``_episode_fn`` for ``policy``'s forward on ``env`` (the one program ``_play`` and the compile ahead share)."""
    clip = policy.obs_norm is not None and policy.obs_norm.clip > 0
    return _episode_fn(brax_env, env.episode_length, max_steps, exit_check_every, record_obs,
                       policy.spec["activation"], policy.action_mode, clip)  # fmt: skip


def _check_arguments(env: Any, max_steps: Any, exit_check_every: Any) -> int:
    """Checks shared by both entry points; returns ``exit_check_every`` resolved (8 on CUDA, 1 on the CPU)."""
    from eggroll_rl.envs.brax_adapter import BraxVecEnv

    if not isinstance(env, BraxVecEnv):
        raise ValueError(f"the JAX rollout needs a BraxVecEnv (backend='brax'), got {type(env).__name__}")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    if exit_check_every is None:
        exit_check_every = 8 if env.device.type == "cuda" else 1
    if not isinstance(exit_check_every, int) or exit_check_every < 1:
        raise ValueError(f"exit_check_every must be a positive int or None, got {exit_check_every!r}")
    return exit_check_every


def _play(env: Any, policy: MLPPolicy, params: dict[str, Any], ids: torch.Tensor, num_members: int, max_steps: int,
          seed: int | None, record_obs: bool, exit_check_every: int, what: str,
          lower: str = "the population or episodes_per_member") -> RolloutResult:  # fmt: skip
    """One episode of every env, reset first with ``env.reset(seed=seed)`` as ``rollout`` does, with the rows'
    policies ``params``; ``what`` ran and what to ``lower`` name themselves in the out-of-memory error."""
    env.reset(seed=seed)
    brax_env, state, steps = env.jax_reset_state()
    jax_params = _tree_to_jax(env, params)
    fn = _policy_episode_fn(env, brax_env, policy, max_steps, exit_check_every, record_obs)
    try:
        with env.jax_scope():
            ret, comp, length, calls, flags, s1, s2 = fn(jax_params, state, steps)
        ret, comp, length = env.to_torch(ret), env.to_torch(comp), env.to_torch(length)
    except Exception as exc:  # XLA's out-of-memory error, made actionable
        if not is_xla_out_of_memory(exc):
            raise
        raise RuntimeError(
            f"the JAX rollout ran out of device memory with {env.num_envs} envs ({what}) on {env.device}: lower "
            f"{lower}, or use rollout='torch' (--rollout torch). JAX shares the GPU with torch; XLA said: "
            f"{str(exc).splitlines()[0]}"
        ) from exc
    if env.check_finite:
        bad_actions, bad_outputs = env.to_torch(flags).tolist()
        if bad_actions:
            raise ValueError("actions contained NaN/inf during the JAX rollout; expected finite values")
        if bad_outputs:
            raise NonFiniteError(
                f"BraxVecEnv({env.env_id!r}): the env returned NaN/inf observations or rewards during the JAX "
                "rollout; expected finite values. The simulation probably diverged (check the actions' scale)."
            )
    obs_sum = obs_sumsq = None
    if record_obs:
        obs_sum = env.to_torch(s1).to(torch.float64).sum(0)
        obs_sumsq = env.to_torch(s2).to(torch.float64).sum(0)
    table_return = (ret.to(torch.float64) - comp.to(torch.float64))[:, None]  # Kahan: the sum is s - c
    table_length = length.to(torch.int64)[:, None]
    num_calls = int(env.to_torch(calls))
    del params, jax_params
    return _aggregate(table_return, table_length, ids, num_members, num_calls * env.num_envs, obs_sum, obs_sumsq,
                      int(table_length.sum()) if record_obs else 0)  # fmt: skip


def is_xla_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is XLA's out-of-device-memory error (a ``jax.errors.JaxRuntimeError`` saying
    ``RESOURCE_EXHAUSTED``), told apart without importing JAX."""
    return type(exc).__name__ == "JaxRuntimeError" and "RESOURCE_EXHAUSTED" in str(exc)


def _tree_to_jax(env: Any, tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _tree_to_jax(env, v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_tree_to_jax(env, v) for v in tree]
    if tree is None:
        return None
    return env.to_jax(tree.to(torch.float32))
