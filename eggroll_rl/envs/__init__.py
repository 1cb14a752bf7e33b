"""Batched environments behind one torch protocol: gymnasium, EnvPool, Brax/MJX and torch-native envs.

See ``eggroll_rl.envs.base`` for the protocol (shapes, dtypes, same-step autoreset, errors) and
``docs/environments.md`` for the backends. Quick start::

    from eggroll_rl.envs import make_env
    env = make_env("CartPole", num_envs=1024, device="cuda")      # torch-native on the GPU
    obs = env.reset(seed=0)                                       # (1024, 4) float32
    obs, reward, terminated, truncated, info = env.step(actions)  # actions: (1024,) long
"""

import os

# JAX (used by the Brax/MJX adapter) must not grab most of the GPU memory that torch needs.
if "jax" not in __import__("sys").modules:
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from .base import Box, Discrete, NonFiniteError, Space, StepResult, VecEnv, resolve_device  # noqa: E402
from .registry import (  # noqa: E402
    AUTO_ORDER,
    BACKENDS,
    ENV_SPECS,
    EnvSpec,
    available_backends,
    list_envs,
    make_env,
    resolve_env,
    select_backend,
)
from .torch_native import TORCH_ENVS, Acrobot, CartPole, MountainCarContinuous, Pendulum, TorchNativeEnv  # noqa: E402

__all__ = [
    "AUTO_ORDER",
    "BACKENDS",
    "ENV_SPECS",
    "TORCH_ENVS",
    "Acrobot",
    "Box",
    "CartPole",
    "Discrete",
    "EnvSpec",
    "MountainCarContinuous",
    "NonFiniteError",
    "Pendulum",
    "Space",
    "StepResult",
    "TorchNativeEnv",
    "VecEnv",
    "available_backends",
    "list_envs",
    "make_env",
    "resolve_device",
    "resolve_env",
    "select_backend",
]
