"""The environment protocol every backend follows, its spaces, and shared input/output checks.

Protocol (all backends: gymnasium, EnvPool, Brax/MJX, torch-native):

- ``num_envs: int`` — the batch size ``B``; every tensor below has the batch axis first.
- ``device: torch.device`` — where every returned tensor lives and where actions must live.
- ``single_observation_space: Box`` — one env's observation space; ``obs_shape = space.shape`` (``(obs_dim,)``).
- ``single_action_space: Box | Discrete``.
- ``reset(seed=None) -> obs``: ``obs`` is ``(B, *obs_shape)`` float32. ``seed`` seeds env ``i`` with
  ``seed + i`` (backends that seed a whole pool at once document their own rule); ``None`` keeps the
  construction seed on the first reset and continues the random stream afterwards.
- ``step(actions) -> (obs, reward, terminated, truncated, info)``:
    * ``actions``: ``(B,)`` integer tensor for ``Discrete`` spaces, ``(B, *action_shape)`` floating tensor for
      ``Box`` spaces, on ``device``. Continuous actions are passed to the backend as they are (each env clips
      them as its reference implementation does).
    * ``obs``: ``(B, *obs_shape)`` float32; ``reward``: ``(B,)`` float32; ``terminated``, ``truncated``:
      ``(B,)`` bool.
    * Same-step autoreset: when ``terminated[i] | truncated[i]``, the env has already been reset and ``obs[i]``
      is the first observation of its next episode; ``reward[i]`` is the last reward of the finished episode.
      Every call is one real transition for every env — no dummy "reset step", so a finished episode is
      counted exactly once.
    * ``info["final_obs"]``: ``(B, *obs_shape)`` float32, the observation that follows this transition before
      any reset (equal to ``obs`` in rows that are not done). The final observation is never lost.
- ``close()`` releases backend resources (processes, threads, JAX buffers).

Bad input raises: actions of the wrong shape, dtype, device or value range → ``ValueError``/``TypeError``
naming the argument, what was given and what was expected; a NaN/inf observation or reward produced by the
backend → ``NonFiniteError`` (a ``FloatingPointError``) naming the env rows and the step.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Box", "Discrete", "Space", "VecEnv", "NonFiniteError", "StepResult", "resolve_device"]


@dataclass(frozen=True)
class Box:
    """A continuous space: float tensors of ``shape`` with elementwise bounds ``low``/``high`` (CPU float32)."""

    low: torch.Tensor
    high: torch.Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.low.shape)

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    @classmethod
    def from_bounds(cls, low: Any, high: Any, shape: tuple[int, ...] | None = None) -> Box:
        """Build from scalars or arrays (numpy, lists, tensors); scalars need ``shape``."""
        lo = torch.as_tensor(low, dtype=torch.float32).clone()
        hi = torch.as_tensor(high, dtype=torch.float32).clone()
        if shape is not None:
            lo = lo.expand(shape).clone()
            hi = hi.expand(shape).clone()
        return cls(lo, hi)

    def __repr__(self) -> str:
        return f"Box(shape={self.shape})"


@dataclass(frozen=True)
class Discrete:
    """A discrete space of ``n`` actions ``0 .. n-1``; a batch of actions is a ``(B,)`` integer tensor."""

    n: int

    @property
    def shape(self) -> tuple[int, ...]:
        return ()

    @property
    def dtype(self) -> torch.dtype:
        return torch.int64


Space = Box | Discrete

StepResult = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]]


class NonFiniteError(FloatingPointError):
    """An env returned NaN or inf in its observations or rewards."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device that ``device`` names: ``None`` or ``"auto"`` → CUDA if available, else CPU; ``"cuda"`` →
    ``cuda:<current index>``; anything else as ``torch.device`` reads it.

    The one device rule of the package (envs, trainer and CLI). Raises ``ValueError`` for a CUDA device when torch
    sees no GPU.
    """
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    requested = device
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={str(requested)!r} is not available: torch sees no CUDA GPU (torch.cuda.is_available() is "
            "False); expected 'cpu', 'auto' or None (CUDA if available, else CPU)"
        )
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def space_from_gymnasium(space: Any) -> Space:
    """Convert a gymnasium ``Box``/``Discrete`` (single-env) space to ours."""
    name = type(space).__name__
    if name == "Discrete":
        if int(getattr(space, "start", 0)) != 0:
            raise ValueError(f"Discrete spaces must start at 0, got start={space.start}")
        return Discrete(int(space.n))
    if name == "Box":
        return Box.from_bounds(space.low, space.high)
    raise TypeError(f"unsupported space {space!r}: expected a gymnasium Box or Discrete")


class VecEnv(abc.ABC):
    """Base class of every backend: a batch of ``num_envs`` envs stepping together (see the module docstring).

    Subclasses set ``num_envs``, ``device``, ``single_observation_space``, ``single_action_space`` and
    implement ``reset``, ``step`` and ``close``. ``check_finite`` (default True) makes ``step``/``reset`` raise
    ``NonFiniteError`` on a NaN/inf observation or reward. Backends that run on CUDA may defer value checks to a
    device flag read every few steps (``check_every``); ``flush_checks()`` reads what is pending.
    """

    num_envs: int
    device: torch.device
    single_observation_space: Box
    single_action_space: Space
    check_finite: bool = True
    #: Name of the backend (``"torch"``, ``"gym"``, ``"envpool"``, ``"brax"``) and the backend's env id.
    backend: str = ""
    env_id: str = ""

    @abc.abstractmethod
    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Reset every env; returns ``obs`` ``(num_envs, *obs_shape)`` float32 on ``device``."""

    @abc.abstractmethod
    def step(self, actions: torch.Tensor) -> StepResult:
        """One transition of every env: ``(obs, reward, terminated, truncated, info)`` (module docstring)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release backend resources."""

    def flush_checks(self) -> None:  # noqa: B027 - optional hook
        """Raise now for any deferred check (NaN outputs) that has not been read yet; a no-op by default."""

    def synchronize(self) -> None:  # noqa: B027 - optional hook
        """Wait until the backend's own queued device work is done (a no-op unless it runs outside torch)."""

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return self.single_observation_space.shape

    @property
    def is_discrete(self) -> bool:
        return isinstance(self.single_action_space, Discrete)

    def __enter__(self) -> VecEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(env_id={self.env_id!r}, num_envs={self.num_envs}, device={self.device}, "
            f"obs={self.single_observation_space}, action={self.single_action_space})"
        )

    # ---- shared checks -------------------------------------------------------------------------------------
    def _check_actions(self, actions: Any, num_rows: int | None = None, check_values: bool = True) -> None:
        """Validate an action batch against the action space; ``num_rows`` defaults to ``num_envs``."""
        check_actions(
            self.single_action_space,
            actions,
            self.num_envs if num_rows is None else num_rows,
            self.device,
            check_values=check_values,
        )

    def _check_outputs(self, obs: torch.Tensor, reward: torch.Tensor | None, where: str) -> None:
        if self.check_finite:
            check_finite_outputs(obs, reward, where=f"{type(self).__name__}({self.env_id!r}).{where}")


def check_actions(space: Space, actions: Any, num_rows: int, device: torch.device, check_values: bool = True) -> None:
    """Raise a clear error if ``actions`` does not fit ``space`` for a batch of ``num_rows`` envs."""
    if not isinstance(actions, torch.Tensor):
        raise TypeError(f"actions must be a torch.Tensor on {device}, got {type(actions).__name__}")
    if actions.device != device:
        raise ValueError(f"actions are on {actions.device}, expected the env's device {device}")
    if isinstance(space, Discrete):
        expected = (num_rows,)
        if actions.dtype.is_floating_point or actions.dtype.is_complex or actions.dtype == torch.bool:
            raise TypeError(
                f"actions have dtype {actions.dtype}, expected an integer dtype (e.g. torch.long) for "
                f"Discrete({space.n}); take argmax of the logits first"
            )
    else:
        expected = (num_rows, *space.shape)
        if not actions.dtype.is_floating_point:
            raise TypeError(f"actions have dtype {actions.dtype}, expected a floating dtype for Box{space.shape}")
    if tuple(actions.shape) != expected:
        raise ValueError(f"actions have shape {tuple(actions.shape)}, expected {expected} (num_envs first)")
    if not check_values:
        return
    if isinstance(space, Discrete):
        bad = (actions < 0) | (actions >= space.n)
        if bool(bad.any()):
            rows = bad.nonzero().flatten()[:5].tolist()
            raise ValueError(
                f"actions contain values outside [0, {space.n}) in rows {rows}: {actions[bad].flatten()[:5].tolist()}"
            )
    else:
        bad = ~torch.isfinite(actions)
        if bool(bad.any()):
            rows = bad.reshape(num_rows, -1).any(1).nonzero().flatten()[:5].tolist()
            raise ValueError(f"actions contain NaN/inf in rows {rows}; expected finite values")


def check_start_rows(rows: Any, num_envs: int, total: int) -> torch.Tensor:
    """``rows`` as a CPU ``(num_envs,)`` int64 tensor with values in ``[0, total)``, else ``ValueError`` naming it.

    The argument of a backend's ``set_start_rows(rows, total)``: env ``b`` starts where row ``rows[b]`` of a batch
    of ``total`` envs starts (the same seed or key as that row), so envs given the same row share their initial state.
    """
    if not isinstance(total, int) or isinstance(total, bool) or total < 1:
        raise ValueError(f"total={total!r} is invalid: expected a positive int")
    t = torch.as_tensor(rows).to("cpu")
    if t.dtype.is_floating_point or t.dtype == torch.bool or tuple(t.shape) != (num_envs,):
        raise ValueError(
            f"rows is invalid: expected an integer tensor of shape ({num_envs},), got dtype {t.dtype}, "
            f"shape {tuple(t.shape)}"
        )
    t = t.long()
    if num_envs and (int(t.min()) < 0 or int(t.max()) >= total):
        raise ValueError(f"rows has values in [{int(t.min())}, {int(t.max())}]: expected values in [0, {total})")
    return t


def check_finite_outputs(obs: torch.Tensor, reward: torch.Tensor | None, where: str) -> None:
    """Raise ``NonFiniteError`` if ``obs`` ``(B, ...)`` or ``reward`` ``(B,)`` has NaN/inf (one host sync)."""
    bad = ~torch.isfinite(obs.reshape(obs.shape[0], -1)).all(1)
    if reward is not None:
        bad = bad | ~torch.isfinite(reward)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()[:5].tolist()
        what = []
        if not bool(torch.isfinite(obs).all()):
            what.append(f"observations (e.g. {obs[rows[0]].flatten()[:6].tolist()})")
        if reward is not None and not bool(torch.isfinite(reward).all()):
            what.append(f"rewards (e.g. {reward[rows].tolist()})")
        raise NonFiniteError(
            f"{where}: the env returned NaN/inf {' and '.join(what)} in env rows {rows}; expected finite "
            "values. The simulation probably diverged (check the actions' scale) or the env is broken."
        )
