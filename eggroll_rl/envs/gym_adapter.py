"""Gymnasium vector envs (``gym.make_vec``, sync or async) behind the torch protocol of ``eggroll_rl.envs.base``.

The vector env is built with Gymnasium's ``AutoresetMode.SAME_STEP``: on the step where an episode ends the
sub-env is reset at once, the returned observation is the next episode's first, and gymnasium puts the final
observation in ``info["final_obs"]`` — which this adapter turns into a dense ``(num_envs, obs_dim)`` tensor.
Observations are converted to float32 tensors on ``device``; actions go back to numpy (int64 for discrete
spaces, float32 for boxes).
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from eggroll_rl.validation import check_int

from .base import Discrete, StepResult, VecEnv, check_start_rows, resolve_device, space_from_gymnasium

__all__ = ["GymVecEnv", "import_gymnasium", "quiet_mujoco_warnings"]


def import_gymnasium() -> Any:
    """Import gymnasium (>= 1.1 for same-step autoreset) or raise an ImportError naming the extra."""
    try:
        import gymnasium
        from gymnasium.vector import AutoresetMode  # noqa: F401 - added in gymnasium 1.1
    except ImportError as e:
        raise ImportError(
            "the 'gym' backend needs gymnasium >= 1.1 (with MuJoCo for the locomotion envs): "
            "pip install eggroll-rl[gym]"
        ) from e
    return gymnasium


class _MujocoWarnings:
    """MuJoCo's warning handler: each distinct text once per process, as a Python warning."""

    def __init__(self, seen: Iterable[str] = ()):
        self.seen = set(seen)

    def __call__(self, message: str) -> None:
        if message not in self.seen:
            self.seen.add(message)
            category = DeprecationWarning if "deprecated" in message else RuntimeWarning
            warnings.warn(f"MuJoCo: {message}", category, stacklevel=2)


def quiet_mujoco_warnings(seen: Iterable[str] = ()) -> _MujocoWarnings | None:
    """Route MuJoCo's warnings through Python's ``warnings``, each distinct text once per process.

    MuJoCo's default handler prints every warning and appends it to ``MUJOCO_LOG.TXT`` in the working directory:
    gymnasium's HalfCheetah model gives one ``settotalmass`` deprecation per sub-env (2048 lines and a 1 MB file
    for a CPU HalfCheetah run). A handler the user installed is left alone.

    Args:
        seen: texts already warned about (by the parent of a sub-env process): not warned again.
    Returns:
        the handler in place (installed now or before), or None without MuJoCo or when the user's handler is.
    """
    import importlib.util

    if importlib.util.find_spec("mujoco") is None:
        return None
    import mujoco

    current = mujoco.get_mju_user_warning()
    if current is not None:
        return current if isinstance(current, _MujocoWarnings) else None
    handler = _MujocoWarnings(seen)
    mujoco.set_mju_user_warning(handler)
    return handler


def _quiet_mujoco_worker(seen: set[str], *args: Any, **kwargs: Any) -> None:
    """gymnasium's async worker, with MuJoCo's warnings routed as in the main process.

    A child started by ``spawn`` or ``forkserver`` does not inherit the main process's handler (a forked one
    does). ``seen`` is the main process's set, pickled when the child starts: the warnings of the model compiled
    there (gymnasium's dummy env) are not repeated by every child.
    """
    from gymnasium.vector.async_vector_env import _async_worker

    quiet_mujoco_warnings(seen)
    _async_worker(*args, **kwargs)


def _uses_mujoco(gym: Any, env_id: str) -> bool:
    try:
        return "mujoco" in str(gym.spec(env_id).entry_point)
    except gym.error.Error:
        return False


class GymVecEnv(VecEnv):
    """A ``gym.make_vec`` vector env as a torch ``VecEnv``.

    Args:
        env_id: a gymnasium id, e.g. ``"CartPole-v1"`` or ``"HalfCheetah-v5"``.
        num_envs: number of sub-envs ``B``.
        device: where returned tensors live and actions must be (``None``: CUDA if available).
        seed: sub-env ``i`` is seeded with ``seed + i`` on the first ``reset()``.
        vectorization_mode: ``"sync"`` (one process) or ``"async"`` (one process per sub-env).
        check_finite: raise ``NonFiniteError`` on NaN/inf observations or rewards.
        **make_kwargs: passed to ``gym.make_vec`` (env kwargs such as ``max_episode_steps``).
    """

    backend = "gym"

    def __init__(
        self,
        env_id: str,
        num_envs: int = 1,
        device: str | torch.device | None = None,
        seed: int = 0,
        vectorization_mode: str = "sync",
        check_finite: bool = True,
        **make_kwargs: Any,
    ) -> None:
        gym = import_gymnasium()
        from gymnasium.vector import AutoresetMode

        if vectorization_mode not in ("sync", "async"):
            raise ValueError(f"vectorization_mode must be 'sync' or 'async', got {vectorization_mode!r}")
        check_int("num_envs", num_envs, lo=1)
        vector_kwargs = dict(make_kwargs.pop("vector_kwargs", {}) or {})
        vector_kwargs["autoreset_mode"] = AutoresetMode.SAME_STEP
        if vectorization_mode == "async" and "jax" in sys.modules:
            # Forking a process that runs JAX's threads can deadlock the children: start them fresh instead.
            vector_kwargs.setdefault("context", "spawn")
        self.env_id = env_id
        self.num_envs = num_envs
        self.device = resolve_device(device)
        self.check_finite = check_finite
        self.vectorization_mode = vectorization_mode
        if _uses_mujoco(gym, env_id):
            handler = quiet_mujoco_warnings()
            if vectorization_mode == "async" and handler is not None:
                vector_kwargs.setdefault("worker", functools.partial(_quiet_mujoco_worker, handler.seen))
        try:
            self._env = gym.make_vec(
                env_id,
                num_envs=num_envs,
                vectorization_mode=vectorization_mode,
                vector_kwargs=vector_kwargs,
                **make_kwargs,
            )
        except gym.error.DependencyNotInstalled as exc:
            raise ImportError(f"gymnasium env {env_id!r} needs a package that is not installed: {exc}") from exc
        except gym.error.Error as exc:  # NameNotFound, VersionNotFound, ... (not ValueErrors)
            raise ValueError(f"env_id={env_id!r} is not a gymnasium env: {exc}") from exc
        self.single_observation_space = space_from_gymnasium(self._env.single_observation_space)
        self.single_action_space = space_from_gymnasium(self._env.single_action_space)
        self._seed: int | None = int(seed)
        self._start_rows: list[int] | None = None

    def set_reset_window(self, offset: int, total: int) -> None:
        """Make these envs rows ``offset .. offset+num_envs-1`` of a batch of ``total``: ``reset(seed)`` seeds
        sub-env ``i`` with ``seed + offset + i``, as the single-process batch seeds that row."""
        check_int("total", total, lo=self.num_envs)
        check_int("offset", offset, lo=0, hi=total - self.num_envs)
        self.set_start_rows(torch.arange(offset, offset + self.num_envs), total)

    def set_start_rows(self, rows: Any, total: int) -> None:
        """Make sub-env ``b`` start, at every ``reset(seed)``, as row ``rows[b]`` of a batch of ``total`` does: it
        is seeded with ``seed + rows[b]``, so sub-envs given the same row share their initial state. Used by
        ``TrainConfig.members_per_start``; replaces a reset window (which is consecutive rows)."""
        self._start_rows = check_start_rows(rows, self.num_envs, total).tolist()

    def _to_torch(self, x: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.from_numpy(np.asarray(x)).to(device=self.device, dtype=dtype)

    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Reset every sub-env (``seed + i`` for sub-env ``i``); returns ``obs`` ``(num_envs, obs_dim)`` float32."""
        if seed is None:
            seed, self._seed = self._seed, None
        if seed is not None and self._start_rows is not None:
            seed = [seed + r for r in self._start_rows]
        obs, _ = self._env.reset(seed=seed)
        obs_t = self._to_torch(obs)
        self._check_outputs(obs_t, None, "reset")
        return obs_t

    def step(self, actions: torch.Tensor) -> StepResult:
        """One transition of every sub-env; see ``eggroll_rl.envs.base`` for shapes and autoreset."""
        self._check_actions(actions)
        if isinstance(self.single_action_space, Discrete):
            np_actions = actions.detach().to("cpu", torch.int64).numpy()
        else:
            np_actions = actions.detach().to("cpu", torch.float32).numpy()
        obs, reward, terminated, truncated, info = self._env.step(np_actions)
        obs = np.asarray(obs, dtype=np.float32)
        done = np.logical_or(terminated, truncated)
        final_obs = obs
        if done.any():
            final_obs = obs.copy()
            mask = info.get("_final_obs", done)
            for i in np.flatnonzero(mask):
                final_obs[i] = info["final_obs"][i]
        obs_t = self._to_torch(obs)
        final_t = obs_t if final_obs is obs else self._to_torch(final_obs)
        reward_t = self._to_torch(reward)
        self._check_outputs(final_t, reward_t, "step")
        out_info = {k: v for k, v in info.items() if k not in ("final_obs", "_final_obs")}
        out_info["final_obs"] = final_t
        return (
            obs_t,
            reward_t,
            self._to_torch(terminated, torch.bool),
            self._to_torch(truncated, torch.bool),
            out_info,
        )

    def close(self) -> None:
        self._env.close()
