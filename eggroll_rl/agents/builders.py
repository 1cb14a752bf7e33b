"""What a training run is built from: its env, policy and strategy, made from a ``TrainConfig``.

``train`` calls these once at the start; ``eggroll-rl eval`` and the benchmarks call them to rebuild the env and
policy of a run. Each depends only on the config (and the device and seed it is given), so a resumed run and an
evaluation see the same env and the same policy architecture as the run that trained.
"""

from __future__ import annotations

from typing import Any

import torch

from eggroll_rl.agents.config import TrainConfig
from eggroll_rl.agents.policy import MLPPolicy, make_policy

__all__ = ["build_env", "build_policy", "build_strategy", "episode_limit", "generation_seed"]


def generation_seed(seed: int, generation: int, salt: int = 0) -> int:
    """Seed of the env resets of one generation (``salt`` separates evaluation from training)."""
    return (seed * 1_000_003 + generation * 7_919 + salt * 104_729 + 12_345) % (2**31 - 1)


def build_env(config: TrainConfig, num_envs: int, device: torch.device, seed: int) -> Any:
    """The environment of ``config`` with ``num_envs`` parallel copies (``eggroll_rl.envs.make_env``).

    ``config.brax_backend`` reaches the env only when it runs on Brax (``backend="auto"`` may pick Brax on a GPU
    and EnvPool or gymnasium on a CPU, which do not take that argument); the backend is picked before the env is
    built, so it is built once.
    """
    from eggroll_rl.envs import make_env, select_backend

    kwargs = dict(config.env_kwargs)
    kwargs.setdefault("check_finite", config.env_checks)
    if select_backend(config.env, config.backend, device) == "brax":
        kwargs.setdefault("brax_backend", config.brax_backend)
    return make_env(config.env, backend=config.backend, num_envs=num_envs, device=device, seed=seed, **kwargs)


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
        weight_init=config.weight_init,
    ).to(device)


def build_strategy(config: TrainConfig, device: torch.device) -> Any:
    """The ``EggrollStrategy`` of ``config`` (not yet ``setup`` on a model)."""
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


def episode_limit(env: Any, config: TrainConfig) -> int:
    """Most env steps of one rollout: ``config.max_episode_steps`` or the env's own time limit."""
    limit = config.max_episode_steps or getattr(env, "max_episode_steps", 0) or getattr(env, "episode_length", 0)
    if not limit and getattr(env, "backend", "") in ("gym", "envpool"):
        limit = 100_000  # gymnasium/EnvPool envs truncate themselves (TimeLimit); this is only a safety cap
    return int(limit) if limit else 1000
