"""Friendly env names → each backend's id, backend auto-selection, and ``make_env`` / ``list_envs``.

Names are matched case-insensitively, ignoring ``-``/``_``/spaces (``"halfcheetah"``, ``"Half_Cheetah"``).
A backend id also works: an unprefixed gymnasium/EnvPool id that the table knows (``"HalfCheetah-v5"``), or
any id with a backend prefix, passed through as is: ``"gym:MountainCar-v0"``, ``"envpool:LunarLander-v3"``,
``"brax:halfcheetah"``, ``"torch:CartPole-v1"``.

``backend="auto"`` takes the first backend that has the env and is installed, in the order of
``AUTO_ORDER[device type]`` — fastest first: on CUDA, torch-native > Brax (when JAX sees a GPU) > EnvPool >
gymnasium; on CPU, torch-native > EnvPool > gymnasium > Brax. Note that Brax's locomotion envs are
re-implementations (different observation sizes and rewards from MuJoCo's ``-v5`` envs); pass ``backend=``
to pin one.
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass
from typing import Any

import torch

from eggroll_rl.choices import EnvBackend, options
from eggroll_rl.validation import check_choice

from .base import VecEnv, resolve_device

__all__ = [
    "EnvSpec",
    "ENV_SPECS",
    "BACKENDS",
    "AUTO_ORDER",
    "make_env",
    "list_envs",
    "available_backends",
    "select_backend",
]

BACKENDS = tuple(b for b in options(EnvBackend) if b != "auto")  # the env packages; "auto" picks one
AUTO_ORDER = {"cuda": ("torch", "brax", "envpool", "gym"), "cpu": ("torch", "envpool", "gym", "brax")}
_EXTRAS = {"gym": "gym", "envpool": "envpool", "brax": "brax", "torch": None}
_PACKAGES = {"gym": ("gymnasium",), "envpool": ("envpool",), "brax": ("brax", "jax"), "torch": ()}
# Prefixed ids outside the table that train with that backend's extra alone (gymnasium's LunarLander needs Box2D,
# EnvPool's has it built in); the unknown-name error offers those whose backend is installed.
_PREFIX_EXAMPLES = {
    "gym": "gym:MountainCar-v0",
    "envpool": "envpool:LunarLander-v3",
    "brax": "brax:fast",
    "torch": "torch:CartPole-v1",
}


@dataclass(frozen=True)
class EnvSpec:
    """One friendly env name and its id in each backend (``None``: that backend does not have it)."""

    name: str
    gym: str | None = None
    envpool: str | None = None
    brax: str | None = None
    torch: str | None = None

    def id_for(self, backend: str) -> str | None:
        return getattr(self, backend)


ENV_SPECS: dict[str, EnvSpec] = {
    s.name: s
    for s in (
        EnvSpec("CartPole", gym="CartPole-v1", envpool="CartPole-v1", torch="CartPole-v1"),
        EnvSpec("Pendulum", gym="Pendulum-v1", envpool="Pendulum-v1", torch="Pendulum-v1"),
        EnvSpec("Acrobot", gym="Acrobot-v1", envpool="Acrobot-v1", torch="Acrobot-v1"),
        EnvSpec(
            "MountainCarContinuous",
            gym="MountainCarContinuous-v0",
            envpool="MountainCarContinuous-v0",
            torch="MountainCarContinuous-v0",
        ),
        EnvSpec("HalfCheetah", gym="HalfCheetah-v5", envpool="HalfCheetah-v5", brax="halfcheetah"),
        EnvSpec("Ant", gym="Ant-v5", envpool="Ant-v5", brax="ant"),
        EnvSpec("Hopper", gym="Hopper-v5", envpool="Hopper-v5", brax="hopper"),
        EnvSpec("Walker2d", gym="Walker2d-v5", envpool="Walker2d-v5", brax="walker2d"),
        EnvSpec("Humanoid", gym="Humanoid-v5", envpool="Humanoid-v5", brax="humanoid"),
        EnvSpec("HumanoidStandup", gym="HumanoidStandup-v5", envpool="HumanoidStandup-v5", brax="humanoidstandup"),
        EnvSpec("InvertedPendulum", gym="InvertedPendulum-v5", envpool="InvertedPendulum-v5", brax="inverted_pendulum"),
        EnvSpec(
            "InvertedDoublePendulum",
            gym="InvertedDoublePendulum-v5",
            envpool="InvertedDoublePendulum-v5",
            brax="inverted_double_pendulum",
        ),
        EnvSpec("Swimmer", gym="Swimmer-v5", envpool="Swimmer-v5", brax="swimmer"),
        EnvSpec("Reacher", gym="Reacher-v5", envpool="Reacher-v5", brax="reacher"),
        EnvSpec("Pusher", gym="Pusher-v5", envpool="Pusher-v5", brax="pusher"),
    )
}


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in "-_ ")


def _installed(backend: str) -> bool:
    return all(importlib.util.find_spec(p) is not None for p in _PACKAGES[backend])


def available_backends() -> list[str]:
    """Backends whose packages are importable here (``"torch"`` always)."""
    return [b for b in BACKENDS if _installed(b)]


def _jax_has_gpu() -> bool:
    from .brax_adapter import import_brax

    try:
        jax, _ = import_brax()
        return any(d.platform == "gpu" for d in jax.devices())
    except Exception:  # a broken jax install just means "no Brax on the GPU"
        return False


def list_envs(backend: str | None = None) -> list[str]:
    """Friendly env names (sorted); with ``backend``, only those that backend has."""
    if backend is not None:
        check_choice("backend", backend, BACKENDS)
    return sorted(n for n, s in ENV_SPECS.items() if backend is None or s.id_for(backend) is not None)


def _lookup(name: str) -> tuple[EnvSpec | None, str | None, str | None]:
    """``name`` → (spec, pinned backend, pinned backend id). Raises ValueError with suggestions."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty env name string, got {name!r}")
    if ":" in name:
        prefix, _, ident = name.partition(":")
        if prefix not in BACKENDS:
            raise ValueError(f"unknown backend prefix {prefix!r} in {name!r}; expected one of {BACKENDS}")
        spec = next((s for s in ENV_SPECS.values() if s.id_for(prefix) == ident), None)
        return spec, prefix, ident
    key = _norm(name)
    for spec in ENV_SPECS.values():
        if _norm(spec.name) == key:
            return spec, None, None
    for spec in ENV_SPECS.values():
        for backend in BACKENDS:
            bid = spec.id_for(backend)
            if bid is not None and (bid == name or _norm(bid) == key):
                return spec, None, None
    candidates = list(ENV_SPECS) + sorted({s.id_for(b) for s in ENV_SPECS.values() for b in ("gym", "brax")} - {None})
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    close += [c for c in candidates if _norm(c).startswith(key[:4]) and c not in close][: 3 - len(close)]
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    examples = ", ".join(repr(ex) for b, ex in _PREFIX_EXAMPLES.items() if _installed(b))
    raise ValueError(
        f"unknown env name {name!r}.{hint} Known names: {list_envs()}; any backend id works with a prefix, "
        f"e.g. {examples}."
    )


def resolve_env(name: str) -> EnvSpec | None:
    """The registry entry of a friendly name or backend id (``None`` for a prefixed id the registry does not list,
    e.g. ``'gym:MountainCar-v0'``). Raises ``ValueError`` with close matches for an unknown name; imports nothing."""
    return _lookup(name)[0]


def _missing_backend(backend: str) -> ImportError:
    extra = _EXTRAS[backend]
    return ImportError(
        f"backend {backend!r} is not installed (needs {' and '.join(_PACKAGES[backend])}): "
        f"pip install eggroll-rl[{extra}], or pick an installed backend with backend= / --backend "
        "(`eggroll-rl envs` lists each env's)"
    )


def make_env(
    name: str,
    backend: str = "auto",
    num_envs: int = 1,
    device: str | torch.device | None = None,
    seed: int = 0,
    **kwargs: Any,
) -> VecEnv:
    """Build a batched env following the protocol of ``eggroll_rl.envs.base``.

    Args:
        name: a friendly name from ``list_envs()`` (``"HalfCheetah"``), a known backend id (``"HalfCheetah-v5"``)
            or a prefixed id (``"brax:halfcheetah"``, ``"gym:MountainCar-v0"``).
        backend: ``"auto"`` (fastest installed for this env and device), ``"torch"``, ``"gym"``, ``"envpool"``
            or ``"brax"``. A prefix in ``name`` pins the backend; it must then agree with ``backend``.
        num_envs: batch size ``B``.
        device: torch device of every returned tensor (``None``: CUDA if available, else CPU).
        seed: base seed (env ``i`` gets ``seed + i`` where the backend seeds per env).
        **kwargs: backend options — gym: ``vectorization_mode="sync"|"async"`` and ``gym.make_vec`` kwargs;
            envpool: ``batch_size``, ``num_threads`` and ``envpool.make`` kwargs; brax: ``brax_backend``
            (``"generalized"|"positional"|"spring"|"mjx"``), ``episode_length`` and env kwargs; torch:
            ``dtype``, ``max_episode_steps``. All: ``check_finite``.

    Returns:
        A ``VecEnv``: ``reset(seed) -> obs (B, obs_dim)``, ``step(actions) -> (obs, reward (B,),
        terminated (B,), truncated (B,), info)``.

    Raises:
        ValueError: unknown name (close matches suggested) or a backend that does not have the env.
        ImportError: the backend's package is not installed (the message names the pip extra).
    """
    dev = resolve_device(device)
    backend, env_id = _select(name, backend, dev)
    return _build(backend, env_id, num_envs=num_envs, device=dev, seed=seed, **kwargs)


def select_backend(name: str, backend: str = "auto", device: str | torch.device | None = None) -> str:
    """The backend ``make_env(name, backend, device=device)`` builds the env with (``"auto"`` resolved), without
    building it. Raises as ``make_env`` does for an unknown name or a backend that does not have the env."""
    return _select(name, backend, resolve_device(device))[0]


def _select(name: str, backend: str, dev: torch.device) -> tuple[str, str]:
    spec, pinned, pinned_id = _lookup(name)
    check_choice("backend", backend, options(EnvBackend))
    if pinned is not None:
        if backend not in ("auto", pinned):
            raise ValueError(f"name {name!r} pins backend {pinned!r} but backend={backend!r} was given")
        backend, env_id = pinned, pinned_id
    elif spec is None:  # unreachable: _lookup returns a spec for unprefixed names
        raise ValueError(f"unknown env name {name!r}")
    elif backend == "auto":
        offered = [b for b in AUTO_ORDER["cuda" if dev.type == "cuda" else "cpu"] if spec.id_for(b)]
        usable = [b for b in offered if _installed(b)]
        if dev.type == "cuda" and "brax" in usable and not _jax_has_gpu():
            usable.remove("brax")
        if not usable:
            extras = ", ".join(f"eggroll-rl[{_EXTRAS[b]}]" for b in offered)
            raise ImportError(f"no backend for {spec.name!r} is installed; install one of: {extras}")
        backend = usable[0]
        env_id = spec.id_for(backend) or ""
    else:
        env_id = spec.id_for(backend)
        if env_id is None:
            have = [b for b in BACKENDS if spec.id_for(b)]
            raise ValueError(f"env {spec.name!r} has no {backend!r} version; backends that have it: {have}")
    return backend, env_id


def _build(backend: str, env_id: str, num_envs: int, device: torch.device, seed: int, **kwargs: Any) -> VecEnv:
    if not _installed(backend):
        raise _missing_backend(backend)
    if backend == "torch":
        from .torch_native import TORCH_ENVS

        if env_id not in TORCH_ENVS:
            raise ValueError(f"no torch-native env {env_id!r}; available: {sorted(TORCH_ENVS)}")
        return TORCH_ENVS[env_id](num_envs=num_envs, device=device, seed=seed, **kwargs)
    if backend == "gym":
        from .gym_adapter import GymVecEnv

        return GymVecEnv(env_id, num_envs=num_envs, device=device, seed=seed, **kwargs)
    if backend == "envpool":
        from .envpool_adapter import EnvPoolVecEnv

        return EnvPoolVecEnv(env_id, num_envs=num_envs, device=device, seed=seed, **kwargs)
    from .brax_adapter import BraxVecEnv

    return BraxVecEnv(env_id, num_envs=num_envs, device=device, seed=seed, **kwargs)
