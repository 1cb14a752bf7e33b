"""Agents: policies, the rollout loop, the RL trainer and the supervised trainer (seed 000's API)."""

from .rollout import RolloutResult, default_action_fn, population_act, rollout, rollout_iterate

__all__ = ["RolloutResult", "default_action_fn", "population_act", "rollout", "rollout_iterate"]

# RL trainer, policies and config (issue #5).
from .checkpoint import CheckpointError, UnsafeCheckpointError  # noqa: E402
from .config import ENV_DEFAULTS, TrainConfig  # noqa: E402
from .jax_rollout import jax_rollout  # noqa: E402  (imports JAX only when called)
from .policy import MLPPolicy, ObservationNormalizer, load_policy, make_policy, save_policy  # noqa: E402
from .run_dir import RunLockedError  # noqa: E402
from .trainer import TrainingInterrupted, TrainResult, evaluate, train  # noqa: E402

__all__ += [
    "ENV_DEFAULTS",
    "TrainConfig",
    "MLPPolicy",
    "ObservationNormalizer",
    "load_policy",
    "make_policy",
    "save_policy",
    "TrainResult",
    "evaluate",
    "train",
    "CheckpointError",
    "UnsafeCheckpointError",
    "RunLockedError",
    "TrainingInterrupted",
    "jax_rollout",
]
