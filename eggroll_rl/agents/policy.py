"""MLP policies for ES: observation normalization, a trunk of perturbable layers, and an action head.

A policy maps a batch of observations ``(R, obs_dim)`` straight to environment actions: ``(R,)`` long for discrete
spaces (argmax of the logits) and ``(R, action_dim)`` float inside the bounds for continuous ones. Everything that is
not evolved — the running observation statistics and the action bounds — lives in buffers and is applied with plain
torch ops, so the strategy perturbs only the ``nn.Linear`` layers while an exported policy still carries its
normalization and action scaling (``save_policy`` / ``load_policy``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from eggroll_rl.choices import ActionMode, Activation, WeightInit, options
from eggroll_rl.validation import check_choice

__all__ = [
    "MLPPolicy",
    "ObservationNormalizer",
    "PQNActivation",
    "make_policy",
    "save_policy",
    "load_policy",
    "policy_payload",
    "space_info",
]

POLICY_FORMAT = "eggroll_rl.policy/1"


class PQNActivation(nn.Module):
    """``relu(layernorm(x))`` as in PQN and the EGGROLL paper's RL policies; the norm has no affine parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(F.layer_norm(x, x.shape[-1:]))


_ACTIVATIONS: dict[str, type[nn.Module]] = {"pqn": PQNActivation, "tanh": nn.Tanh, "relu": nn.ReLU, "silu": nn.SiLU}


def _activation(name: Activation) -> nn.Module:
    return _ACTIVATIONS[check_choice("activation", name, options(Activation))]()


class ObservationNormalizer(nn.Module):
    """Running mean / variance of observations, kept in float64 buffers (never evolved).

    ``update`` merges a batch's moments with Chan et al.'s parallel formula, so feeding the live steps of a whole
    population in one call gives exactly the statistics of all those steps.
    """

    def __init__(self, obs_dim: int, clip: float = 10.0, eps: float = 1e-8) -> None:
        super().__init__()
        if obs_dim < 1:
            raise ValueError(f"obs_dim={obs_dim} is invalid: expected >= 1")
        self.clip = float(clip)
        self.eps = float(eps)
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(obs_dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(obs_dim, dtype=torch.float64))

    @torch.no_grad()
    def update_moments(self, count: float | torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> None:
        """Merge the moments of a batch of ``count`` observations (``mean``, population ``var``: ``(obs_dim,)``)."""
        count = torch.as_tensor(count, dtype=torch.float64, device=self.count.device)
        if float(count) <= 0:
            return
        mean = mean.to(self.mean.device, torch.float64).reshape(self.mean.shape)
        var = var.to(self.var.device, torch.float64).reshape(self.var.shape)
        total = self.count + count
        delta = mean - self.mean
        new_mean = self.mean + delta * (count / total)
        m2 = self.var * self.count + var * count + delta.square() * (self.count * count / total)
        self.mean.copy_(new_mean)
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    @torch.no_grad()
    def update(self, obs: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Merge observations ``(..., obs_dim)``; ``mask`` (same leading shape, bool) keeps only live steps."""
        obs = obs.reshape(-1, self.mean.shape[0]).to(torch.float64)
        if mask is not None:
            obs = obs[mask.reshape(-1).to(obs.device, torch.bool)]
        if obs.shape[0] == 0:
            return
        self.update_moments(obs.shape[0], obs.mean(0), obs.var(0, unbiased=False))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        std = torch.sqrt(self.var + self.eps).to(obs.dtype)
        x = (obs - self.mean.to(obs.dtype)) / std
        if self.clip > 0:
            x = x.clamp(-self.clip, self.clip)
        return x

    def extra_repr(self) -> str:
        return f"obs_dim={self.mean.shape[0]}, clip={self.clip}"


class MLPPolicy(nn.Module):
    """Deterministic MLP policy: normalize -> Linear/activation trunk -> action head.

    Args:
        obs_dim: observation size (observations are flattened to ``(R, obs_dim)``).
        action_dim: number of discrete actions, or size of a continuous action.
        discrete: argmax head (actions ``(R,)`` long) instead of a continuous one (``(R, action_dim)``).
        hidden_sizes: widths of the hidden layers.
        activation: ``pqn`` (relu(layernorm)), ``tanh``, ``relu`` or ``silu``.
        action_low, action_high: bounds of a continuous action, scalars or ``(action_dim,)``; default [-1, 1].
        action_mode: ``tanh`` squashes the output into the bounds; ``clip`` clips the raw output to them.
        obs_norm: apply running observation normalization (``self.obs_norm``, updated by the trainer).
        obs_clip: clip normalized observations to ``[-obs_clip, obs_clip]`` (0: no clipping).
        weight_init: ``torch`` (``nn.Linear``'s default, head weight scaled by 0.1, head bias zero) or ``glorot``
            (Glorot-uniform weights on every layer, bound ``sqrt(6 / (fan_in + fan_out))``, zero biases).
    """

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        discrete: bool,
        hidden_sizes: Sequence[int] = (64, 64),
        activation: Activation = "pqn",
        action_low: float | Sequence[float] | torch.Tensor = -1.0,
        action_high: float | Sequence[float] | torch.Tensor = 1.0,
        action_mode: ActionMode = "tanh",
        obs_norm: bool = True,
        obs_clip: float = 10.0,
        weight_init: WeightInit = "torch",
    ) -> None:
        super().__init__()
        if obs_dim < 1:
            raise ValueError(f"obs_dim={obs_dim} is invalid: expected >= 1")
        if action_dim < 1:
            raise ValueError(f"action_dim={action_dim} is invalid: expected >= 1")
        check_choice("action_mode", action_mode, options(ActionMode))
        check_choice("weight_init", weight_init, options(WeightInit))
        hidden_sizes = [int(h) for h in hidden_sizes]
        if any(h < 1 for h in hidden_sizes):
            raise ValueError(f"hidden_sizes={hidden_sizes} is invalid: expected positive widths")
        low = torch.as_tensor(action_low, dtype=torch.float32).expand(action_dim).clone()
        high = torch.as_tensor(action_high, dtype=torch.float32).expand(action_dim).clone()
        if not discrete and not bool(torch.all(torch.isfinite(low) & torch.isfinite(high) & (high > low))):
            raise ValueError(
                f"action bounds low={low.tolist()} high={high.tolist()} are invalid: expected finite low < high"
            )
        self.spec: dict[str, Any] = dict(
            obs_dim=int(obs_dim),
            action_dim=int(action_dim),
            discrete=bool(discrete),
            hidden_sizes=hidden_sizes,
            activation=activation,
            action_low=low.tolist(),
            action_high=high.tolist(),
            action_mode=action_mode,
            obs_norm=bool(obs_norm),
            obs_clip=float(obs_clip),
            weight_init=weight_init,
        )
        self.discrete = bool(discrete)
        self.action_mode = action_mode
        self.obs_norm = ObservationNormalizer(obs_dim, clip=obs_clip) if obs_norm else None
        layers: list[nn.Module] = []
        width = obs_dim
        for h in hidden_sizes:
            layers += [nn.Linear(width, h), _activation(activation)]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(width, action_dim)
        self._init_weights(weight_init)
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)

    @torch.no_grad()
    def _init_weights(self, weight_init: WeightInit) -> None:
        # Runs after nn.Linear drew its own init, so "torch" takes exactly the RNG draws it always took.
        if weight_init == "torch":
            # A small output layer starts every member near the middle of the action range.
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()
            return
        for layer in [m for m in self.trunk if isinstance(m, nn.Linear)] + [self.head]:
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def obs_dim(self) -> int:
        return self.spec["obs_dim"]

    @property
    def action_dim(self) -> int:
        return self.spec["action_dim"]

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """Raw head output ``(R, action_dim)``: logits (discrete) or pre-squash actions (continuous)."""
        x = obs.reshape(obs.shape[0], -1).to(self.head.weight.dtype)
        if self.obs_norm is not None:
            x = self.obs_norm(x)
        return self.head(self.trunk(x))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Actions for observations ``(R, obs_dim)``: ``(R,)`` long (discrete) or ``(R, action_dim)`` float."""
        out = self.features(obs)
        if self.discrete:
            return out.argmax(dim=-1)
        low, high = self.action_low.to(out.dtype), self.action_high.to(out.dtype)
        if self.action_mode == "tanh":
            return low + (torch.tanh(out) + 1.0) * (0.5 * (high - low))
        return torch.maximum(torch.minimum(out, high), low)


def space_info(space: Any) -> dict[str, Any]:
    """Describe a gymnasium-like space: ``{"discrete", "dim", "low", "high", "shape"}`` (duck-typed)."""
    if hasattr(space, "n") and not hasattr(space, "low"):
        return {"discrete": True, "dim": int(space.n), "low": 0.0, "high": float(int(space.n) - 1), "shape": ()}
    shape = tuple(getattr(space, "shape", ()) or ())
    if not shape:
        raise ValueError(f"space {space!r} is not supported: expected a Discrete space or a Box with a shape")
    dim = 1
    for s in shape:
        dim *= int(s)
    low = torch.as_tensor(getattr(space, "low", -1.0), dtype=torch.float32).reshape(-1)
    high = torch.as_tensor(getattr(space, "high", 1.0), dtype=torch.float32).reshape(-1)
    return {"discrete": False, "dim": dim, "low": low.tolist(), "high": high.tolist(), "shape": shape}


def make_policy(
    observation_space: Any,
    action_space: Any,
    hidden_sizes: Sequence[int] = (64, 64),
    activation: Activation = "pqn",
    action_mode: ActionMode = "tanh",
    obs_norm: bool = True,
    obs_clip: float = 10.0,
    weight_init: WeightInit = "torch",
) -> MLPPolicy:
    """An ``MLPPolicy`` fitted to an environment's single observation and action spaces.

    Continuous actions with infinite bounds fall back to [-1, 1] (tanh) — the usual convention of such envs.
    """
    obs = space_info(observation_space)
    if obs["discrete"]:
        raise ValueError("observation_space is Discrete: only Box observations are supported")
    act = space_info(action_space)
    low, high = act["low"], act["high"]
    if not act["discrete"]:
        lo, hi = torch.as_tensor(low).expand(act["dim"]), torch.as_tensor(high).expand(act["dim"])
        finite = torch.isfinite(lo) & torch.isfinite(hi)
        low = torch.where(finite, lo, torch.full_like(lo, -1.0)).tolist()
        high = torch.where(finite, hi, torch.full_like(hi, 1.0)).tolist()
    return MLPPolicy(
        obs_dim=obs["dim"],
        action_dim=act["dim"],
        discrete=act["discrete"],
        hidden_sizes=hidden_sizes,
        activation=activation,
        action_low=low if not act["discrete"] else -1.0,
        action_high=high if not act["discrete"] else 1.0,
        action_mode=action_mode,
        obs_norm=obs_norm,
        obs_clip=obs_clip,
        weight_init=weight_init,
    )


def policy_payload(policy: MLPPolicy, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The self-contained record of ``policy`` (constructor spec + weights + normalization, on the CPU) that
    ``save_policy`` writes and a training checkpoint embeds; ``load_policy`` reads it back."""
    return {
        "format": POLICY_FORMAT,
        "spec": dict(policy.spec),
        "state_dict": {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()},
        "extra": dict(extra or {}),
    }


def save_policy(policy: MLPPolicy, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> None:
    """Write a self-contained policy file (``policy_payload``), atomically."""
    from eggroll_rl.agents.checkpoint import atomic_torch_save

    atomic_torch_save(policy_payload(policy, extra), path)


def load_policy(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> MLPPolicy:
    """Load a policy written by ``save_policy`` (or a trainer checkpoint) — nothing else is needed to act."""
    from eggroll_rl.agents.checkpoint import load_checkpoint_file

    payload = load_checkpoint_file(Path(path))
    if "policy" in payload and isinstance(payload["policy"], dict):  # a trainer checkpoint
        payload = payload["policy"]
    if payload.get("format") != POLICY_FORMAT:
        raise ValueError(f"{path} is not an eggroll_rl policy file (format={payload.get('format')!r})")
    policy = MLPPolicy(**payload["spec"])
    policy.load_state_dict(payload["state_dict"])
    return policy.to(map_location)
