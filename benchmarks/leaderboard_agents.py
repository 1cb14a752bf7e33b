"""The leaderboard's agents: one adapter per peer, each ``run(cell, budget_s, emit) -> dict``.

An adapter trains on ``cell.env`` (same env, physics backend and episode length for every agent) until
``budget_s`` seconds of the harness's clock have passed, and calls ``emit(env_steps, eval_return)`` (with the mean
episode length as a third argument where the peer reports it) after every
evaluation of its current policy (``emit.elapsed()`` is that clock: it starts before the adapter is called, so
imports of the peer's package, env construction and compilation all count). It returns::

    {"config": the exact settings it ran with,
     "chunks": [(seconds, env_steps), ...] of training between evaluations (for the compile-time estimate),
     "stopped": why it stopped ("budget", "num_timesteps", "generations")}

and raises on failure; ``AGENTS`` maps a name to its adapter. An adapter imports its peer's package inside ``run``
so a missing one fails that cell alone; ``AgentNotInstalled`` marks a peer that is absent, not broken.

The shared hyperparameters (population, sigma, learning rate, shaping, widths) come from
``TrainConfig.for_env(env)`` — eggroll_rl's defaults — so OpenES and Brax ES differ from eggroll only where the
method does.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "AGENTS",
    "BRAX_PPO_SETTINGS",
    "BRAX_SAC_SETTINGS",
    "BRAX_SETTING_KEYS",
    "AgentNotInstalled",
    "BudgetReached",
    "shared_config",
]


class AgentNotInstalled(ImportError):
    """The peer's package is not importable here; the cell is recorded as skipped, not failed."""


class BudgetReached(Exception):
    """Raised from a peer's progress callback to stop it at the wall-clock budget."""


# Brax's published PPO settings (the Brax training notebook's ``train_fn`` table) for the locomotion suite, as data.
# The notebook trains hopper and walker2d with SAC, not PPO: for those two no PPO recipe is published, and the board
# runs ant's recipe with reward_scaling 1 (``source`` says so in every cell's config).
_PPO_COMMON = dict(episode_length=1000, normalize_observations=True, action_repeat=1, learning_rate=3e-4)
BRAX_PPO_SETTINGS: dict[str, dict[str, Any]] = {
    "halfcheetah": dict(
        _PPO_COMMON, num_timesteps=50_000_000, num_evals=20, reward_scaling=1, unroll_length=20, num_minibatches=32,
        num_updates_per_batch=8, discounting=0.95, entropy_cost=1e-3, num_envs=2048, batch_size=512,
        source="brax training notebook",
    ),
    "ant": dict(
        _PPO_COMMON, num_timesteps=50_000_000, num_evals=10, reward_scaling=10, unroll_length=5, num_minibatches=32,
        num_updates_per_batch=4, discounting=0.97, entropy_cost=1e-2, num_envs=4096, batch_size=2048,
        source="brax training notebook",
    ),
    "humanoid": dict(
        _PPO_COMMON, num_timesteps=50_000_000, num_evals=10, reward_scaling=0.1, unroll_length=10, num_minibatches=32,
        num_updates_per_batch=8, discounting=0.97, entropy_cost=1e-3, num_envs=2048, batch_size=1024,
        source="brax training notebook",
    ),
}  # fmt: skip
for _name in ("hopper", "walker2d"):
    BRAX_PPO_SETTINGS[_name] = dict(
        BRAX_PPO_SETTINGS["ant"], reward_scaling=1,
        source="not published for PPO (notebook uses SAC): ant's recipe, reward_scaling 1",
    )  # fmt: skip
# Any other Brax env (the CPU smoke tests' inverted_pendulum, ...): a small generic recipe.
_PPO_FALLBACK = dict(
    _PPO_COMMON, num_timesteps=10_000_000, num_evals=10, reward_scaling=1, unroll_length=10, num_minibatches=8,
    num_updates_per_batch=4, discounting=0.97, entropy_cost=1e-2, num_envs=256, batch_size=256,
    source="no published setting: generic small recipe",
)  # fmt: skip


# Brax's published SAC settings (the same notebook's ``train_fn`` table: notebooks/training.ipynb in google/brax, the
# same at v0.14.2 and main), as data: it trains hopper and walker2d with SAC. Every key is an argument of brax 0.14.2's
# ``sac.train``; the notebook's ``seed`` is left out (each cell has its own). train()'s other arguments keep brax's
# defaults, as PPO's do (tau 0.005, 128 eval envs, stochastic evaluation, (256, 256) networks).
_SAC_COMMON = dict(
    num_evals=20, episode_length=1000, normalize_observations=True, action_repeat=1, discounting=0.997,
    learning_rate=6e-4, num_envs=128, max_devices_per_host=1, max_replay_size=1_048_576, min_replay_size=8192,
)  # fmt: skip
BRAX_SAC_SETTINGS: dict[str, dict[str, Any]] = {
    "hopper": dict(
        _SAC_COMMON, num_timesteps=6_553_600, reward_scaling=30, batch_size=512, grad_updates_per_step=64,
        source="brax training notebook",
    ),
    "walker2d": dict(
        _SAC_COMMON, num_timesteps=7_864_320, reward_scaling=5, batch_size=128, grad_updates_per_step=32,
        source="brax training notebook",
    ),
}  # fmt: skip
# Any other Brax env (the CPU smoke test's, ...): walker2d's recipe, the cheaper of the two, with reward_scaling 1.
_SAC_FALLBACK = dict(
    BRAX_SAC_SETTINGS["walker2d"], reward_scaling=1,
    source="no published SAC setting: walker2d's recipe, reward_scaling 1",
)  # fmt: skip
# The peers' setting names, which ``--override`` accepts besides TrainConfig's fields.
BRAX_SETTING_KEYS = frozenset(
    k for settings in [*BRAX_PPO_SETTINGS.values(), _PPO_FALLBACK, *BRAX_SAC_SETTINGS.values(), _SAC_FALLBACK]
    for k in settings
) - {"source"}  # fmt: skip


def shared_config(cell: Any) -> Any:
    """eggroll_rl's ``TrainConfig`` for the cell: ``for_env`` defaults, the cell's env/backend/episode length,
    seed, device and overrides; every ES agent takes its population, sigma, lr, shaping and widths from it."""
    from eggroll_rl.agents import TrainConfig

    values: dict[str, Any] = dict(
        backend=cell.backend, device=cell.device, seed=cell.seed, max_episode_steps=cell.episode_length,
        time_limit_s=cell.budget_s, out_dir="", tensorboard=False,
    )  # fmt: skip
    if cell.backend == "brax":
        values.update(brax_backend=cell.brax_backend, env_kwargs={"episode_length": cell.episode_length})
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values.update({k: v for k, v in cell.overrides.items() if k in fields})  # the rest are PPO settings
    return TrainConfig.for_env(cell.env, **values)


# --------------------------------------------------------------------------------------------------- eggroll
def run_eggroll(cell: Any, budget_s: float, emit: Callable[..., None]) -> dict[str, Any]:
    """eggroll_rl's ``train`` with its defaults for the env, stopped by the cell's clock.

    ``time_limit_s`` counts the training loop only (env build and compilation come before it), so alone it would let
    the cell run past its budget by the setup time: the progress callback stops the run at the first evaluation
    that ends past the budget, the rule the Brax peers follow (their progress callbacks run at evaluations only).
    The time limit stays as a backstop."""
    from eggroll_rl.agents import train
    from eggroll_rl.agents.trainer import generation_cap_reached

    config = shared_config(cell).replace(time_limit_s=max(budget_s - emit.elapsed(), 1.0))
    chunks: list[tuple[float, int]] = []
    last = {"wall": 0.0, "steps": 0, "generations": 0, "eval_s": 0.0}

    def progress(record: dict[str, Any]) -> None:
        chunks.append((record["wall_time_s"] - last["wall"], record["env_steps"] - last["steps"]))
        last.update(wall=record["wall_time_s"], steps=record["env_steps"], generations=last["generations"] + 1)
        last["eval_s"] += record.get("eval_time_s") or 0.0  # within the chunks: the evaluations' share of them
        if record.get("eval_return") is not None:
            emit(record["env_steps"], record["eval_return"], record.get("eval_length_mean"))
            if emit.elapsed() >= budget_s:
                raise BudgetReached

    try:
        train(config, progress_fn=progress)
    except BudgetReached:
        pass
    stopped = "generations" if generation_cap_reached(config, last["generations"]) else "budget"
    return {"config": config.to_dict(), "chunks": chunks, "stopped": stopped, "eval_s": last["eval_s"]}


# ---------------------------------------------------------------------------------------------------- openes
def run_openes(cell: Any, budget_s: float, emit: Callable[..., None]) -> dict[str, Any]:
    """Full-rank OpenES: eggroll's population, optimizer, shaping, sigma, reward shift, policy, rollout and
    evaluation, but each member's weights are ``W + sigma * s * E_j`` with a dense Gaussian ``E_j`` drawn and stored
    per generation. Where eggroll's config trains with the JAX rollout (Brax), so does this peer: the members' dense
    perturbations go to ``jax_rows_rollout`` and the evaluation plays in the JAX loop, compiled ahead on a GPU as
    the trainer does; elsewhere both step the env from torch."""
    import torch
    from torch.func import functional_call

    from eggroll_rl.agents import evaluate, rollout
    from eggroll_rl.agents.builders import build_env, build_policy, episode_limit, generation_seed
    from eggroll_rl.agents.trainer import generation_cap_reached, training_fitness
    from eggroll_rl.envs import resolve_device
    from eggroll_rl.fitness import shape_fitness

    config = shared_config(cell)
    jax_loop = config.rollout == "jax"
    if config.lr_schedule != "constant" or config.sigma_schedule != "constant" or config.noise_reuse:
        raise ValueError("openes implements constant lr/sigma and fresh noise only; the env's defaults differ")
    if config.episodes_per_member != 1 or config.group_size:
        raise ValueError("openes implements one episode per member and global shaping only")
    device = resolve_device(config.device)
    if device.type == "cpu" and config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)
    n = config.population
    env = build_env(config, n, device, seed=config.seed)  # one episode per member
    eval_env = build_env(config, config.eval_episodes, device, seed=config.seed + 1)
    torch.manual_seed(config.seed)
    policy = build_policy(config, env, device)
    params = {k: p for k, p in policy.named_parameters()}
    eval_compile = None
    if jax_loop:
        from eggroll_rl.agents.jax_rollout import jax_rows_rollout, policy_layers, start_compiling_evaluation

        linears = [m for m in policy.trunk if isinstance(m, torch.nn.Linear)] + [policy.head]
        name_of = {id(p): k for k, p in params.items()}
        keys = [(name_of[id(m.weight)], name_of[id(m.bias)]) for m in linears]
        if len(keys) * 2 != len(params):
            raise ValueError("openes's JAX loop perturbs Linear weights and biases only; the policy has others")
        if device.type == "cuda":  # as the trainer: the evaluation's loop compiles on the host while the GPU trains
            eval_compile = start_compiling_evaluation(eval_env, policy, episode_limit(eval_env, config))
    optimizer = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[config.optimizer](
        params.values(), lr=config.lr, weight_decay=config.weight_decay
    )
    num_noise = n // 2 if config.antithetic else n
    sign = (
        torch.tensor([1.0, -1.0], device=device).repeat(num_noise)
        if config.antithetic
        else torch.ones(n, device=device)
    )
    noise_of = torch.arange(n, device=device) // (2 if config.antithetic else 1)
    gen_rng = torch.Generator(device=device).manual_seed(config.seed)
    batched = torch.vmap(lambda p, o: functional_call(policy, p, (o,)))
    max_steps = episode_limit(env, config)
    chunks, steps, generation = [], 0, 0
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        # noise (num_noise, *shape) per parameter, materialized; member i uses sign[i] * E[i // 2].
        eps = {k: torch.randn((num_noise, *p.shape), generator=gen_rng, device=device) for k, p in params.items()}
        with torch.no_grad():
            delta = {k: config.sigma * sign.view(-1, *[1] * p.dim()) * eps[k][noise_of] for k, p in params.items()}
            kwargs = dict(num_members=n, max_steps=max_steps, seed=generation_seed(config.seed, generation),
                          record_obs=policy.obs_norm is not None)  # fmt: skip
            if jax_loop:  # env i is member i: row i of each layer's dense dW / db
                layers = policy_layers(policy)
                for entry, (w, b) in zip(layers["layers"], keys):
                    entry["dW"], entry["db"] = delta[w], delta[b]
                episodes = jax_rows_rollout(env, policy, layers, **kwargs)
            else:
                member = {k: p.detach() + delta[k] for k, p in params.items()}
                episodes = rollout(
                    env, lambda obs, ids, member=member: batched(member, obs[:, None])[:, 0], **kwargs
                )  # env i is member i
            if policy.obs_norm is not None and episodes.obs_count > 0:
                policy.obs_norm.update_moments(episodes.obs_count, episodes.obs_mean, episodes.obs_var)
            z = shape_fitness(training_fitness(episodes, config.reward_shift), config.fitness_shaping)
            w = torch.zeros(num_noise, device=device).index_add_(0, noise_of, z * sign) / (n * config.sigma)
            for k, p in params.items():
                p.grad = -torch.tensordot(w, eps[k], dims=1)  # ascent direction g = sum_j w_j E_j
        optimizer.step()
        generation += 1
        steps += episodes.num_steps
        chunks.append((time.perf_counter() - t0, episodes.num_steps))
        timed_out = config.time_limit_s and time.perf_counter() - start >= config.time_limit_s
        done = generation_cap_reached(config, generation) or timed_out
        done = done or emit.elapsed() >= budget_s
        if done or (config.eval_every and generation % config.eval_every == 0):
            if eval_compile is not None:
                eval_compile.join()
                eval_compile = None
            ev = evaluate(
                policy, eval_env, seed=generation_seed(config.seed, generation, salt=1),
                max_steps=episode_limit(eval_env, config), rollout=config.rollout,
            )  # fmt: skip
            emit(steps, ev["return_mean"], ev["length_mean"])
        if done:
            break
    stopped = "generations" if generation_cap_reached(config, generation) else "budget"
    return {"config": dict(config.to_dict(), noise="dense gaussian (full rank)"), "chunks": chunks, "stopped": stopped}


# ---------------------------------------------------------------------------------------------------- brax
def _import_brax() -> tuple[Any, Any]:
    try:
        import jax
        from brax import envs
    except ImportError as exc:
        raise AgentNotInstalled(f"brax/jax not installed ({exc}): pip install eggroll-rl[brax]") from exc
    if not hasattr(jax, "device_put_replicated"):
        # jax >= 0.10 removed it; brax 0.14.2's PPO still calls it (with one device here): stack each leaf on a
        # new leading axis of length 1 and put it on that device.
        def device_put_replicated(x: Any, devices: list[Any]) -> Any:
            if len(devices) != 1:
                raise NotImplementedError(f"device_put_replicated stand-in handles one device, got {len(devices)}")
            return jax.device_put(jax.tree_util.tree_map(lambda a: jax.numpy.stack([a]), x), devices[0])

        jax.device_put_replicated = device_put_replicated
    return jax, envs


def _brax_env(cell: Any, envs: Any) -> tuple[str, Any]:
    from eggroll_rl.envs.registry import resolve_env

    spec = resolve_env(cell.env)
    brax_id = spec.brax if spec is not None and spec.brax else cell.env.removeprefix("brax:")
    return brax_id, envs.get_environment(brax_id, backend=cell.brax_backend)


def _brax_progress(budget_s: float, emit: Callable[..., None], chunks: list) -> Callable[[int, dict], None]:
    last = {"wall": 0.0, "steps": 0}

    def progress(step: int, metrics: dict[str, Any]) -> None:
        if "training/walltime" in metrics:  # the training time since the last evaluation (jit included)
            wall = float(metrics["training/walltime"])
            chunks.append((wall - last["wall"], int(step) - last["steps"]))
            last.update(wall=wall, steps=int(step))
        length = metrics.get("eval/avg_episode_length")
        emit(int(step), float(metrics["eval/episode_reward"]), None if length is None else float(length))
        if emit.elapsed() >= budget_s:
            raise BudgetReached

    return progress


def _run_brax_recipe(
    cell: Any, budget_s: float, emit: Callable[..., None], envs: Any, train: Callable[..., Any],
    table: dict[str, dict[str, Any]], fallback: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """A Brax trainer's ``train`` with ``table``'s settings for the env (``fallback`` for an env it lacks), the cell's
    episode length and the cell's overrides of the same names."""
    brax_id, env = _brax_env(cell, envs)
    settings = dict(table.get(brax_id, fallback), episode_length=cell.episode_length)
    settings.update({k: v for k, v in cell.overrides.items() if k in settings})
    kwargs = {k: v for k, v in settings.items() if k != "source"}
    chunks: list[tuple[float, int]] = []
    stopped = "num_timesteps"
    try:
        train(env, seed=cell.seed, progress_fn=_brax_progress(budget_s, emit, chunks), **kwargs)
    except BudgetReached:
        stopped = "budget"
    config = dict(settings, env=brax_id, brax_backend=cell.brax_backend, seed=cell.seed)
    return {"config": config, "chunks": chunks, "stopped": stopped}


def run_brax_ppo(cell: Any, budget_s: float, emit: Callable[..., None]) -> dict[str, Any]:
    """brax.training.agents.ppo with Brax's published settings for the env (``BRAX_PPO_SETTINGS``)."""
    _, envs = _import_brax()
    from brax.training.agents.ppo import train as ppo

    return _run_brax_recipe(cell, budget_s, emit, envs, ppo.train, BRAX_PPO_SETTINGS, _PPO_FALLBACK)


def run_brax_sac(cell: Any, budget_s: float, emit: Callable[..., None]) -> dict[str, Any]:
    """brax.training.agents.sac with Brax's published settings for the env (``BRAX_SAC_SETTINGS``: hopper and
    walker2d), walker2d's recipe elsewhere. SAC evaluates once before training (at step 0), then after each of
    ``num_evals - 1`` epochs of about ``num_timesteps / (num_evals - 1)`` env steps; the budget is checked there."""
    _, envs = _import_brax()
    from brax.training.agents.sac import train as sac

    return _run_brax_recipe(cell, budget_s, emit, envs, sac.train, BRAX_SAC_SETTINGS, _SAC_FALLBACK)


def run_brax_es(cell: Any, budget_s: float, emit: Callable[..., None]) -> dict[str, Any]:
    """brax.training.agents.es with eggroll's population (as mirrored pairs), sigma, lr, shaping and widths."""
    _, envs = _import_brax()
    import functools

    from brax.training.agents.es import networks as es_networks
    from brax.training.agents.es import train as es

    config = shared_config(cell)
    brax_id, env = _brax_env(cell, envs)
    shaping = {"centered_rank": es.FitnessShaping.CENTERED_RANK, "none": es.FitnessShaping.ORIGINAL}
    if config.fitness_shaping not in shaping:
        raise ValueError(f"brax ES has no {config.fitness_shaping!r} fitness shaping")
    pairs = config.population // 2  # Brax's population_size counts +/- pairs: 2 * pairs envs, as ours
    epoch_steps = 2 * pairs * cell.episode_length
    evals = 100_000  # evaluate every eval_every epochs, as eggroll does; the budget ends the run long before
    settings = dict(
        population_size=pairs, perturbation_std=config.sigma, learning_rate=config.lr,
        episode_length=cell.episode_length, num_timesteps=epoch_steps * config.eval_every * evals,
        num_evals=evals + 1, num_eval_envs=config.eval_episodes,
        normalize_observations=config.obs_norm, fitness_shaping=config.fitness_shaping, center_fitness=False,
        hidden_layer_sizes=tuple(config.hidden_sizes), deterministic_eval=True,
    )  # fmt: skip
    kwargs = {k: v for k, v in settings.items() if k not in ("fitness_shaping", "hidden_layer_sizes")}
    network = functools.partial(es_networks.make_es_networks, hidden_layer_sizes=settings["hidden_layer_sizes"])
    chunks: list[tuple[float, int]] = []
    stopped = "num_timesteps"
    try:
        es.train(
            env, seed=cell.seed, fitness_shaping=shaping[config.fitness_shaping], network_factory=network,
            progress_fn=_brax_progress(budget_s, emit, chunks), **kwargs,
        )  # fmt: skip
    except BudgetReached:
        stopped = "budget"
    config_out = dict(settings, env=brax_id, brax_backend=cell.brax_backend, seed=cell.seed, optimizer="adam")
    config_out["hidden_layer_sizes"] = list(settings["hidden_layer_sizes"])
    return {"config": config_out, "chunks": chunks, "stopped": stopped}


# ---------------------------------------------------------------------------------------------------- evosax
def tanh_mlp(layers: Any, obs: Any) -> Any:
    """The evosax peer's policy: ``tanh`` after every layer (``layers``: ``[(W, b), ...]``, ``W`` ``(in, out)``)."""
    import jax.numpy as jnp

    x = obs
    for w, b in layers:
        x = jnp.tanh(x @ w + b)
    return x


def glorot_mlp(key: Any, sizes: list[int]) -> tuple[Any, list[tuple[Any, Any]]]:
    """The evosax peer's initial layers for widths ``sizes``: Glorot-uniform weights ``(in, out)`` (flax's Dense default
    is lecun-normal; either is fine for ES) and zero biases, one subkey a layer. Returns the key left over and
    ``[(W, b), ...]``."""
    import jax
    import jax.numpy as jnp

    key, *layer_keys = jax.random.split(key, len(sizes))
    layers = [
        (jax.random.uniform(k, (a, b), minval=-1.0, maxval=1.0) * jnp.sqrt(6.0 / (a + b)), jnp.zeros(b))
        for k, a, b in zip(layer_keys, sizes[:-1], sizes[1:])
    ]
    return key, layers


def jax_episodes(
    env: Any, layers: Any, stats: Any, reset_key: Any, num_envs: int, *, length: int, shift: float, batched: bool,
    obs_clip: float | None,
) -> tuple[Any, Any, Any, Any]:  # fmt: skip
    """One episode in each of ``num_envs`` Brax envs (``env.reset`` on ``split(reset_key, num_envs)``), ``length``
    steps at most: env ``i`` acts with ``tanh_mlp`` of ``layers`` (member ``i``'s when ``batched``, the same
    ``layers`` for all otherwise) on observations normalized by ``stats = (count, mean, m2)`` and clipped to
    ``obs_clip`` (None: raw). An episode ends at the first ``done``: later rewards are masked out. Returns the sum of
    ``reward - shift`` over each episode's steps, and the count, sum and sum of squares of the observations the
    policy acted on (the steps taken, for the running normalization and the env-step count)."""
    import jax
    import jax.numpy as jnp

    count, mu, m2 = stats

    def observe(obs: Any) -> Any:
        if obs_clip is None:
            return obs
        return jnp.clip((obs - mu) / jnp.sqrt(m2 / jnp.maximum(count, 1.0) + 1e-8), -obs_clip, obs_clip)

    def body(carry: Any, _: Any) -> Any:
        state, ret, alive, s0, s1, s2 = carry
        obs = observe(state.obs)
        action = jax.vmap(tanh_mlp)(layers, obs) if batched else tanh_mlp(layers, obs)
        w = alive[:, None]
        s0, s1, s2 = s0 + alive.sum(), s1 + (state.obs * w).sum(0), s2 + (state.obs**2 * w).sum(0)
        state = jax.vmap(env.step)(state, action)
        ret = ret + alive * (state.reward - shift)
        alive = alive * (1.0 - state.done)
        return (state, ret, alive, s0, s1, s2), None

    state = jax.vmap(env.reset)(jax.random.split(reset_key, num_envs))
    zeros = jnp.zeros(env.observation_size)
    init = (state, jnp.zeros(num_envs), jnp.ones(num_envs), jnp.zeros(()), zeros, zeros)
    (_, ret, _, s0, s1, s2), _ = jax.lax.scan(body, init, None, length=length)
    return ret, s0, s1, s2


def merge_moments(stats: Any, s0: Any, s1: Any, s2: Any) -> tuple[Any, Any, Any]:
    """Running ``(count, mean, m2)`` (``m2``: the sum of squared deviations) merged with a batch given by its count
    ``s0``, sum ``s1`` and sum of squares ``s2`` (Chan et al.'s parallel update)."""
    import jax.numpy as jnp

    count, mu, m2 = stats
    batch_mu = s1 / jnp.maximum(s0, 1.0)
    total = count + s0
    delta = batch_mu - mu
    mu = mu + delta * s0 / jnp.maximum(total, 1.0)
    m2 = m2 + (s2 - s0 * batch_mu**2) + delta**2 * count * s0 / jnp.maximum(total, 1.0)
    return total, mu, m2


def run_evosax(cell: Any, budget_s: float, emit: Callable[..., None]) -> dict[str, Any]:
    """evosax's OpenES (``evosax.algorithms.Open_ES``, evosax >= 0.3) on the Brax env, all in JAX: eggroll's
    population (antithetic), sigma, Adam learning rate, centered-rank shaping, reward shift and hidden widths; a tanh
    MLP with Glorot-uniform weights, tanh actions and running observation normalization (eggroll's HalfCheetah
    default has the same layers and init; its other envs' defaults use its own ``pqn`` activation and torch's init
    with a shrunk head, and ``activation=tanh weight_init=glorot`` gives them this network). Each generation rolls out
    one episode per member (``lax.scan`` over the episode length, finished episodes masked) and counts the steps of
    unfinished episodes as env steps, as eggroll does."""
    try:
        import evosax  # noqa: F401
        from evosax.algorithms import Open_ES
    except ImportError as exc:
        raise AgentNotInstalled(f"evosax is not importable here ({exc}); pip install evosax") from exc
    jax, envs = _import_brax()
    import jax.numpy as jnp
    import optax

    from eggroll_rl.agents.trainer import generation_cap_reached
    from eggroll_rl.envs.brax_adapter import observation_size

    config = shared_config(cell)
    if config.fitness_shaping != "centered_rank" or not config.antithetic or config.optimizer != "adam":
        raise ValueError("the evosax adapter mirrors centered-rank shaping, antithetic pairs and Adam only")
    brax_id, env = _brax_env(cell, envs)
    n, length, shift = config.population, cell.episode_length, config.reward_shift
    obs_size = observation_size(env)  # traced abstractly: Brax's own property compiles its reset op by op
    sizes = [obs_size, *config.hidden_sizes, env.action_size]
    key, mean = glorot_mlp(jax.random.PRNGKey(cell.seed), sizes)
    strategy = Open_ES(
        population_size=n, solution=mean, use_antithetic_sampling=True,
        optimizer=optax.adam(config.lr), std_schedule=optax.constant_schedule(config.sigma),
    )  # fmt: skip
    es_params = strategy.default_params

    def episodes(layers: Any, stats: Any, reset_key: Any, envs_n: int, batched: bool, shift_: float) -> Any:
        return jax_episodes(
            env, layers, stats, reset_key, envs_n, length=length, shift=shift_, batched=batched,
            obs_clip=config.obs_clip if config.obs_norm else None,
        )  # fmt: skip

    @jax.jit
    def generation(es_state: Any, stats: Any, key: Any) -> Any:
        key_ask, key_env, key_tell = jax.random.split(key, 3)
        population, es_state = strategy.ask(key_ask, es_state, es_params)
        ret, s0, s1, s2 = episodes(population, stats, key_env, n, True, shift)
        es_state, _ = strategy.tell(key_tell, population, -ret, es_state, es_params)  # evosax minimizes
        return es_state, merge_moments(stats, s0, s1, s2), s0

    @jax.jit
    def evaluation(es_state: Any, stats: Any, key: Any) -> Any:
        ret, steps, *_ = episodes(strategy.get_mean(es_state), stats, key, config.eval_episodes, False, 0.0)
        return ret.mean(), steps / config.eval_episodes  # the mean return and the mean episode length

    key, key_init = jax.random.split(key)
    es_state = strategy.init(key_init, mean, es_params)
    stats = (jnp.zeros(()), jnp.zeros(obs_size), jnp.zeros(obs_size))
    chunks: list[tuple[float, int]] = []
    steps, gen, stopped = 0, 0, "budget"
    while True:
        t0 = time.perf_counter()
        key, key_gen, key_eval = jax.random.split(key, 3)
        es_state, stats, gen_steps = generation(es_state, stats, key_gen)
        gen_steps = int(gen_steps)  # waits for the generation
        chunks.append((time.perf_counter() - t0, gen_steps))
        steps, gen = steps + gen_steps, gen + 1
        last = generation_cap_reached(config, gen)
        if last or gen % config.eval_every == 0 or emit.elapsed() >= budget_s:
            ret, length = evaluation(es_state, stats, key_eval)
            emit(steps, float(ret), float(length))
            if emit.elapsed() >= budget_s or last:
                stopped = "generations" if last else "budget"
                break
    config_out = dict(
        env=brax_id, brax_backend=cell.brax_backend, seed=cell.seed, algorithm="evosax.algorithms.Open_ES",
        evosax=getattr(evosax, "__version__", "unknown"), population=n, sigma=config.sigma, lr=config.lr,
        optimizer="adam", fitness_shaping="centered_rank", antithetic=True, reward_shift=shift,
        hidden_sizes=list(config.hidden_sizes), activation="tanh", obs_norm=config.obs_norm,
        obs_clip=config.obs_clip, episode_length=length, eval_every=config.eval_every,
        eval_episodes=config.eval_episodes,
    )  # fmt: skip
    return {"config": config_out, "chunks": chunks, "stopped": stopped}


AGENTS: dict[str, Callable[[Any, float, Callable[..., None]], dict[str, Any]]] = {
    "eggroll": run_eggroll,
    "openes": run_openes,
    "brax_ppo": run_brax_ppo,
    "brax_sac": run_brax_sac,
    "brax_es": run_brax_es,
    "evosax": run_evosax,
}


def compile_estimate(chunks: list[tuple[float, int]]) -> float | None:
    """Seconds the first chunk took beyond its steps at the later chunks' median rate (jit / autotune / warm-up);
    None with fewer than two chunks."""
    if len(chunks) < 2:
        return None
    rates = sorted(s / steps for s, steps in chunks[1:] if steps > 0)
    if not rates:
        return None
    first_s, first_steps = chunks[0]
    return max(first_s - first_steps * rates[len(rates) // 2], 0.0)


def steady_steps_per_s(chunks: list[tuple[float, int]]) -> float | None:
    """Env steps per second of training after the first chunk (compilation left out)."""
    later = chunks[1:] if len(chunks) > 1 else chunks
    seconds = sum(s for s, _ in later)
    return sum(n for _, n in later) / seconds if seconds > 0 and math.isfinite(seconds) else None
