"""Record one episode of a trained policy: mp4 (or gif) through gymnasium's renderer, html for Brax envs.

Torch-native, gymnasium and EnvPool runs are replayed in gymnasium's env of the same id (same dynamics) and written
as .mp4/.gif: pygame draws the classic-control envs, MuJoCo's renderer the locomotion envs (both come with the
``gym`` extra; mp4 needs imageio-ffmpeg from the ``cli`` extra). MuJoCo uses ``MUJOCO_GL=egl`` by default (set it
to ``osmesa`` on a machine without a GPU driver). Brax runs are written with ``brax.io.html`` — an interactive 3D
page, no renderer needed — and only those.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eggroll_rl.agents.config import TrainConfig
from eggroll_rl.agents.policy import MLPPolicy

__all__ = ["check_video_path", "record_video", "video_env_id"]


def video_env_id(config: TrainConfig) -> tuple[str, str]:
    """``(kind, id)`` used to render ``config.env``: ``("brax", name)`` or ``("gym", gymnasium_id)``."""
    from eggroll_rl.envs.registry import resolve_env

    name = config.env
    prefix, _, ident = name.partition(":") if ":" in name else ("", "", name)
    if prefix == "brax":
        return "brax", ident
    spec = resolve_env(name)  # ValueError naming close matches for an unknown name
    if prefix:
        if spec is not None and spec.gym is not None:
            return "gym", spec.gym
        if prefix == "gym":
            return "gym", ident
        raise ValueError(f"no gymnasium renderer for env {name!r}")
    if config.backend == "brax" or (config.backend == "auto" and spec.gym is None and spec.brax is not None):
        return "brax", spec.brax
    if spec.gym is None:
        raise ValueError(f"env {name!r} has no gymnasium version to render")
    return "gym", spec.gym


def check_video_path(config: TrainConfig, path: str | os.PathLike, backend: str | None = None) -> str:
    """Raise ``ValueError`` unless ``path``'s format is one the env of ``config`` is rendered in; return the kind.

    Brax runs are written as ``.html`` (``brax.io.html``); every other run (torch-native, gymnasium, EnvPool) is
    replayed in gymnasium's env of the same id and written as ``.mp4`` or ``.gif``.
    """
    path = Path(path)
    kind, env_id = video_env_id(config if backend is None else config.replace(backend=backend))
    suffix = path.suffix.lower()
    if kind == "brax" and suffix != ".html":
        raise ValueError(
            f"video={str(path)!r}: Brax envs are recorded as an .html page, not {suffix or 'a file without suffix'}; "
            f"expected e.g. {str(path.with_suffix('.html'))!r}"
        )
    if kind == "gym" and suffix not in (".mp4", ".gif"):
        trained_on = f" (trained on {backend})" if backend else ""
        raise ValueError(
            f"video={str(path)!r}: {config.env}{trained_on} is rendered through gymnasium's {env_id} as .mp4 or "
            f".gif (.html pages are for Brax runs); expected e.g. {str(path.with_suffix('.mp4'))!r}"
        )
    return kind


def record_video(
    policy: MLPPolicy,
    config: TrainConfig,
    path: str | os.PathLike,
    seed: int = 0,
    max_steps: int = 1000,
    backend: str | None = None,
) -> dict[str, Any]:
    """Play one episode of ``policy`` and write it to ``path``.

    Args:
        policy: a trained policy (e.g. ``load_policy(run_dir / "checkpoints/best.pt")``).
        config: the run's config (env name, backend, env kwargs).
        path: ``.html`` for Brax envs; ``.mp4`` or ``.gif`` for the others (torch-native, gymnasium, EnvPool), which
            are rendered by gymnasium (classic-control envs need pygame, MuJoCo envs an OpenGL backend).
        backend: the backend the policy was trained on (``"brax"`` forces the Brax renderer).
    Returns:
        ``{"path", "return", "length", "format"}``.
    """
    path = Path(path)
    kind = check_video_path(config, path, backend)
    _, env_id = video_env_id(config if backend is None else config.replace(backend=backend))
    if kind == "brax":
        return _record_brax(policy, config, env_id, path, seed, max_steps)
    return _record_gym(policy, env_id, path, seed, max_steps)


@torch.no_grad()
def _record_gym(policy: MLPPolicy, env_id: str, path: Path, seed: int, max_steps: int) -> dict[str, Any]:
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import gymnasium as gym
    except ImportError as exc:
        raise ImportError(f"a video of {env_id} is rendered by gymnasium: pip install 'eggroll-rl[gym]'") from exc
    from eggroll_rl.envs.gym_adapter import quiet_mujoco_warnings

    quiet_mujoco_warnings()

    try:
        import imageio.v2 as imageio
    except ImportError as exc:
        raise ImportError(
            "writing a video needs imageio (and imageio-ffmpeg for mp4): pip install imageio[ffmpeg]"
        ) from exc
    env = gym.make(env_id, render_mode="rgb_array")
    device = next(policy.parameters()).device
    obs, _ = env.reset(seed=seed)
    try:
        frames = [env.render()]
    except gym.error.DependencyNotInstalled as exc:
        env.close()
        raise ImportError(
            f"rendering {env_id} needs an extra package: pip install 'eggroll-rl[gym]' (brings pygame and MuJoCo); "
            f"gymnasium says: {exc}"
        ) from exc
    except Exception as exc:  # MuJoCo's GL context (egl/osmesa/glfw) failing to start
        env.close()
        raise RuntimeError(
            f"rendering {env_id} failed ({type(exc).__name__}: {exc}); for MuJoCo envs set MUJOCO_GL to a "
            "renderer this machine has (egl with a GPU driver, osmesa without)"
        ) from exc
    total, length = 0.0, 0
    for _ in range(max_steps):
        action = policy(torch.as_tensor(np.asarray(obs), dtype=torch.float32, device=device)[None])[0]
        action = action.cpu().numpy()
        obs, reward, terminated, truncated, _ = env.step(int(action) if policy.discrete else action)
        total += float(reward)
        length += 1
        frames.append(env.render())
        if terminated or truncated:
            break
    fps = int(env.metadata.get("render_fps", 30))
    env.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".mp4":
        try:
            imageio.mimsave(path, frames, fps=fps, macro_block_size=1)
        except (ImportError, ValueError, RuntimeError) as exc:
            raise ImportError(f"writing {path} needs an mp4 writer: pip install imageio[ffmpeg] ({exc})") from exc
    else:
        imageio.mimsave(path, frames, duration=1000 / fps, loop=0)
    return {"path": str(path), "return": total, "length": length, "format": path.suffix[1:]}


@torch.no_grad()
def _record_brax(
    policy: MLPPolicy, config: TrainConfig, env_name: str, path: Path, seed: int, max_steps: int
) -> dict[str, Any]:
    import jax
    from brax import envs as brax_envs
    from brax.io import html

    from eggroll_rl.envs.brax_adapter import typed_like

    kwargs = dict(config.env_kwargs)
    brax_backend = kwargs.pop("brax_backend", config.brax_backend)
    episode_length = int(kwargs.pop("episode_length", max_steps))
    kwargs.pop("check_finite", None)
    env = brax_envs.get_environment(env_name, backend=brax_backend, **kwargs)
    reset = jax.jit(env.reset)
    state = reset(jax.random.PRNGKey(seed))
    step = jax.jit(lambda s, a, first=state: typed_like(jax, first, env.step(s, a)))  # one compile (typed_like)
    device = next(policy.parameters()).device
    states = [state.pipeline_state]
    total, length = 0.0, 0
    for _ in range(min(max_steps, episode_length)):
        obs = torch.as_tensor(np.asarray(state.obs), dtype=torch.float32, device=device)[None]
        action = policy(obs)[0].cpu().numpy()
        state = step(state, jax.numpy.asarray(action))
        states.append(state.pipeline_state)
        total += float(state.reward)
        length += 1
        if float(state.done) > 0.5:
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    page = html.render(env.sys.tree_replace({"opt.timestep": env.dt}), states)
    path.write_text(page)
    return {"path": str(path), "return": total, "length": length, "format": "html"}
