"""Every closed set of settings, declared once as a ``Literal`` type; ``options(T)`` lists its values.

The strategy, the env registry, the training config (and so the CLI's help and checks) import these names
instead of keeping their own lists.
"""

from __future__ import annotations

import typing
from typing import Literal

__all__ = [
    "Activation",
    "ActionMode",
    "BraxBackend",
    "Device",
    "EnvBackend",
    "FitnessShaping",
    "LowPrecision",
    "NoiseKind",
    "Optimizer",
    "RolloutPath",
    "Schedule",
    "WeightInit",
    "options",
]

Optimizer = Literal["adam", "adamw", "sgd", "none"]
"""Optimizer applied to the ES gradient ("none": plain ``p += lr * g``)."""
FitnessShaping = Literal["zscore", "centered_rank", "none"]
NoiseKind = Literal["gaussian", "rademacher", "gaussian_fast"]
"""Noise of the perturbations: Gaussian (the default), +-1 signs, or the cheaper capped Gaussian (``noise.py``)."""
LowPrecision = Literal["master", "stochastic"]
"""How bf16/fp16 evolved parameters are updated: through float32 master copies, or in place in bf16 with stochastic
rounding (``kernels/rounding.py``)."""
EnvBackend = Literal["auto", "torch", "gym", "envpool", "brax"]
BraxBackend = Literal["generalized", "positional", "spring", "mjx"]
Device = Literal["auto", "cuda", "cpu"]
Schedule = Literal["constant", "linear", "exponential"]
Activation = Literal["pqn", "tanh", "relu", "silu"]
ActionMode = Literal["tanh", "clip"]
RolloutPath = Literal["torch", "jax"]
"""Where a training rollout runs: torch's step loop (any backend) or one jitted JAX loop per episode (Brax only,
``eggroll_rl.agents.jax_rollout``)."""
WeightInit = Literal["torch", "glorot"]
"""Initial policy weights: torch's ``nn.Linear`` default with the head scaled by 0.1 and a zero head bias, or
Glorot-uniform on every layer with zero biases (the evosax peer's network)."""


def options(choice: typing.Any) -> tuple[str, ...]:
    """The values of a ``Literal`` type above, in declaration order."""
    return typing.get_args(choice)
