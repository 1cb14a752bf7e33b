"""EnvPool (C++ thread pool of envs) behind the torch protocol of ``eggroll_rl.envs.base``; sync and async.

EnvPool resets a finished env on its *next* step (the action is ignored, the reward is 0). This adapter hides
that: right after a step in which some envs finished, it sends those envs one extra step (a zero action), whose
result is the next episode's first observation. So every call the user sees is one real transition per env,
with the same-step autoreset semantics of the other backends, and ``info["final_obs"]`` keeps the last
observation of each finished episode.

Sync (``batch_size`` = ``num_envs``, the default): ``reset``/``step`` as in the protocol.
Async (``batch_size < num_envs``): ``async_reset()``, then ``send(actions, env_ids)`` / ``recv()``; ``recv``
returns the envs that are ready — one real transition each, ``info["env_id"]`` (``(k,)`` long) naming them —
with the same autoreset semantics: an env whose episode ends is held back while the adapter sends its reset
step, and a later ``recv`` returns the finished transition (reward, ``terminated``/``truncated``,
``info["final_obs"]``) with the next episode's first observation as ``obs``. Send actions only for the envs
that ``recv`` returned.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from eggroll_rl.validation import check_int

from .base import Discrete, StepResult, VecEnv, resolve_device, space_from_gymnasium

__all__ = ["EnvPoolVecEnv", "import_envpool"]


def import_envpool() -> Any:
    """Import envpool or raise an ImportError naming the extra to install."""
    try:
        import envpool
    except ImportError as e:
        raise ImportError("the 'envpool' backend needs envpool: pip install eggroll-rl[envpool]") from e
    return envpool


class EnvPoolVecEnv(VecEnv):
    """An EnvPool pool as a torch ``VecEnv``.

    Args:
        env_id: an EnvPool task id, e.g. ``"CartPole-v1"``, ``"HalfCheetah-v5"``.
        num_envs: number of envs in the pool ``B``.
        device: where returned tensors live and actions must be (``None``: CUDA if available).
        seed: EnvPool's pool seed (env ``i`` gets ``seed + i``); ``reset(seed=s)`` with another seed rebuilds the pool.
        batch_size: ``None`` or ``num_envs`` for sync mode; smaller for async ``send``/``recv``.
        num_threads: worker threads (0: EnvPool's default).
        check_finite: raise ``NonFiniteError`` on NaN/inf observations or rewards.
        **make_kwargs: passed to ``envpool.make`` (e.g. ``max_episode_steps``).
    """

    backend = "envpool"

    def __init__(
        self,
        env_id: str,
        num_envs: int = 1,
        device: str | torch.device | None = None,
        seed: int = 0,
        batch_size: int | None = None,
        num_threads: int = 0,
        check_finite: bool = True,
        **make_kwargs: Any,
    ) -> None:
        envpool = import_envpool()
        check_int("num_envs", num_envs, lo=1)
        batch_size = num_envs if batch_size is None else int(batch_size)
        if not 1 <= batch_size <= num_envs:
            raise ValueError(f"batch_size must be in [1, num_envs={num_envs}], got {batch_size}")
        if env_id not in envpool.list_all_envs():
            raise ValueError(f"env_id {env_id!r} is not an EnvPool task; see envpool.list_all_envs()")
        self.env_id = env_id
        self.num_envs = num_envs
        self.batch_size = batch_size
        self.device = resolve_device(device)
        self.check_finite = check_finite
        self._make = envpool.make
        self._make_kwargs = dict(make_kwargs, num_envs=num_envs, batch_size=batch_size, num_threads=num_threads)
        self._seed = int(seed)
        self._pool = self._build(self._seed)
        self.single_observation_space = space_from_gymnasium(self._pool.observation_space)
        self.single_action_space = space_from_gymnasium(self._pool.action_space)
        if isinstance(self.single_action_space, Discrete):
            self._np_action_dtype = np.int32
        else:
            self._np_action_dtype = np.float32
        # Async bookkeeping: envs whose finished step is held until their reset observation arrives.
        self._pending: dict[int, tuple[np.ndarray, float, bool, bool]] = {}
        self._reset_done = False

    def _build(self, seed: int) -> Any:
        return self._make(self.env_id, env_type="gymnasium", seed=seed, **self._make_kwargs)

    @property
    def is_async(self) -> bool:
        return self.batch_size < self.num_envs

    def _zero_actions(self, k: int) -> np.ndarray:
        return np.zeros((k, *self.single_action_space.shape), dtype=self._np_action_dtype)

    def _to_numpy_actions(self, actions: torch.Tensor) -> np.ndarray:
        return actions.detach().to("cpu").numpy().astype(self._np_action_dtype, copy=False)

    def _to_torch(self, x: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.from_numpy(np.asarray(x)).to(device=self.device, dtype=dtype)

    # ---- sync ----------------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Reset every env; returns ``obs`` ``(num_envs, obs_dim)`` float32. Sync mode only."""
        if self.is_async:
            raise RuntimeError("reset() is for sync pools; this pool has batch_size < num_envs: use async_reset()")
        if seed is not None and int(seed) != self._seed:
            self._pool.close()
            self._seed = int(seed)
            self._pool = self._build(self._seed)
        obs, info = self._pool.reset()
        order = np.argsort(info["env_id"])
        obs_t = self._to_torch(np.asarray(obs, dtype=np.float32)[order])
        self._check_outputs(obs_t, None, "reset")
        self._reset_done = True
        return obs_t

    def step(self, actions: torch.Tensor) -> StepResult:
        """One transition of every env (sync mode); see ``eggroll_rl.envs.base``."""
        if self.is_async:
            raise RuntimeError("step() is for sync pools; this pool has batch_size < num_envs: use send()/recv()")
        if not self._reset_done:
            raise RuntimeError("call reset() before step()")
        self._check_actions(actions)
        all_ids = np.arange(self.num_envs, dtype=np.int32)
        obs, reward, terminated, truncated, info = self._pool.step(self._to_numpy_actions(actions), all_ids)
        order = np.argsort(info["env_id"])
        obs = np.asarray(obs, dtype=np.float32)[order]
        reward, terminated, truncated = reward[order], terminated[order], truncated[order]
        final_obs = obs
        done_ids = np.flatnonzero(np.logical_or(terminated, truncated)).astype(np.int32)
        if done_ids.size:
            # The pool resets a finished env on its next step: take that step now, so the reset is same-step.
            r_obs, _, _, _, r_info = self._pool.step(self._zero_actions(done_ids.size), done_ids)
            obs = obs.copy()
            obs[np.asarray(r_info["env_id"])] = r_obs
        obs_t = self._to_torch(obs)
        final_t = obs_t if final_obs is obs else self._to_torch(final_obs)
        reward_t = self._to_torch(reward)
        self._check_outputs(final_t, reward_t, "step")
        return (
            obs_t,
            reward_t,
            self._to_torch(terminated, torch.bool),
            self._to_torch(truncated, torch.bool),
            {"final_obs": final_t, "elapsed_step": self._to_torch(info["elapsed_step"][order], torch.long)},
        )

    # ---- async ---------------------------------------------------------------------------------------------
    def async_reset(self) -> None:
        """Start resetting every env; the reset observations come back from ``recv()`` (reward 0, not done)."""
        self._pending.clear()
        self._pool.async_reset()
        self._reset_done = True

    def send(self, actions: torch.Tensor, env_ids: torch.Tensor) -> None:
        """Send ``actions`` ``(k, ...)`` for the envs ``env_ids`` ``(k,)`` (those a previous ``recv`` returned)."""
        if not self._reset_done:
            raise RuntimeError("call async_reset() (or reset()) before send()")
        ids = torch.as_tensor(env_ids).detach().to("cpu", torch.int64)
        if ids.ndim != 1:
            raise ValueError(f"env_ids must be 1-D, got shape {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_envs):
            raise ValueError(f"env_ids must lie in [0, {self.num_envs}), got {ids.tolist()[:8]}")
        self._check_actions(actions, num_rows=int(ids.numel()))
        self._pool.send(self._to_numpy_actions(actions), ids.numpy().astype(np.int32))

    def recv(self) -> StepResult:
        """Receive ready envs: ``(obs (k, obs_dim), reward (k,), terminated (k,), truncated (k,), info)``.

        ``info["env_id"]`` (``(k,)`` long) names the rows; ``info["final_obs"]`` is as in ``step``. ``k`` varies:
        an env whose episode just ended is held back until its reset observation arrives.
        """
        while True:
            obs, reward, terminated, truncated, info = self._pool.recv()
            ids = np.asarray(info["env_id"])
            obs = np.asarray(obs, dtype=np.float32)
            out_rows: list[tuple[int, np.ndarray, np.ndarray, float, bool, bool]] = []
            resend: list[int] = []
            for row, eid in enumerate(ids.tolist()):
                if eid in self._pending:
                    final, r, te, tr = self._pending.pop(eid)
                    out_rows.append((eid, obs[row], final, r, te, tr))
                elif terminated[row] or truncated[row]:
                    self._pending[eid] = (
                        obs[row].copy(),
                        float(reward[row]),
                        bool(terminated[row]),
                        bool(truncated[row]),
                    )
                    resend.append(eid)
                else:
                    out_rows.append((eid, obs[row], obs[row], float(reward[row]), False, False))
            if resend:
                self._pool.send(self._zero_actions(len(resend)), np.asarray(resend, dtype=np.int32))
            if out_rows:
                break
        env_ids = torch.tensor([r[0] for r in out_rows], dtype=torch.long, device=self.device)
        obs_t = self._to_torch(np.stack([r[1] for r in out_rows]))
        final_t = self._to_torch(np.stack([r[2] for r in out_rows]))
        reward_t = torch.tensor([r[3] for r in out_rows], dtype=torch.float32, device=self.device)
        term_t = torch.tensor([r[4] for r in out_rows], dtype=torch.bool, device=self.device)
        trunc_t = torch.tensor([r[5] for r in out_rows], dtype=torch.bool, device=self.device)
        self._check_outputs(final_t, reward_t, "recv")
        return obs_t, reward_t, term_t, trunc_t, {"env_id": env_ids, "final_obs": final_t}

    def close(self) -> None:
        self._pool.close()
