"""Agents: policies, the rollout loop, the RL trainer and the supervised trainer (seed 000's API)."""

from .rollout import RolloutResult, default_action_fn, population_act, rollout, rollout_iterate

__all__ = ["RolloutResult", "default_action_fn", "population_act", "rollout", "rollout_iterate"]
