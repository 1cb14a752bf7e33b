"""make_env / list_envs: names, ids, backend choice and the errors for bad input."""

import pytest
import torch

from eggroll_rl.envs import ENV_SPECS, CartPole, list_envs, make_env, registry

REQUIRED = [
    "CartPole",
    "Pendulum",
    "Acrobot",
    "MountainCarContinuous",
    "HalfCheetah",
    "Ant",
    "Hopper",
    "Walker2d",
    "Humanoid",
    "InvertedDoublePendulum",
    "Swimmer",
]


def test_list_envs_has_required_names():
    names = list_envs()
    assert set(REQUIRED) <= set(names) and names == sorted(names)
    assert set(list_envs("torch")) == {"CartPole", "Pendulum", "Acrobot", "MountainCarContinuous"}
    assert "HalfCheetah" in list_envs("brax") and "CartPole" not in list_envs("brax")
    for name in REQUIRED[4:]:
        spec = ENV_SPECS[name]
        assert spec.gym == f"{name}-v5" and spec.envpool == f"{name}-v5" and spec.brax


def test_auto_prefers_torch_native_and_names_are_forgiving():
    for name in ("CartPole", "cartpole", "cart_pole", "CartPole-v1"):
        env = make_env(name, num_envs=3, device="cpu")
        assert isinstance(env, CartPole) and env.num_envs == 3 and env.device == torch.device("cpu")


def test_auto_cpu_order(monkeypatch):
    monkeypatch.setattr(registry, "_installed", lambda b: b in ("gym", "brax"))
    pytest.importorskip("gymnasium")
    env = make_env("HalfCheetah", num_envs=1, device="cpu")
    assert env.backend == "gym" and env.env_id == "HalfCheetah-v5"
    env.close()


def test_prefixed_ids_pin_the_backend():
    pytest.importorskip("gymnasium")
    env = make_env("gym:CartPole-v1", num_envs=2, device="cpu")
    assert env.backend == "gym"
    env.close()
    with pytest.raises(ValueError, match="pins backend 'gym'"):
        make_env("gym:CartPole-v1", backend="envpool")
    with pytest.raises(ValueError, match="unknown backend prefix"):
        make_env("mujoco:HalfCheetah-v5")


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError, match="unknown env name 'HalfCheeta'.*Did you mean 'HalfCheetah'"):
        make_env("HalfCheeta")
    with pytest.raises(ValueError, match="Did you mean 'Walker2d-v5'"):
        make_env("Walker2D-v9")


def test_backend_without_the_env():
    with pytest.raises(ValueError, match="has no 'brax' version; backends that have it"):
        make_env("CartPole", backend="brax")
    with pytest.raises(ValueError, match=r"backend='jax' is invalid: expected one of \['auto', 'torch'"):
        make_env("CartPole", backend="jax")


@pytest.mark.parametrize("backend,extra", [("gym", "gym"), ("envpool", "envpool"), ("brax", "brax")])
def test_missing_backend_names_the_extra(monkeypatch, backend, extra):
    monkeypatch.setattr(registry, "_installed", lambda b: b == "torch")
    with pytest.raises(ImportError, match=rf"pip install eggroll-rl\[{extra}\]"):
        make_env("HalfCheetah", backend=backend, device="cpu")
    with pytest.raises(ImportError, match=r"eggroll-rl\[envpool\]"):
        make_env("Hopper", device="cpu")  # auto with nothing installed


def test_resolve_env_is_public():
    from eggroll_rl.envs import resolve_env

    assert resolve_env("half_cheetah").name == "HalfCheetah"
    assert resolve_env("HalfCheetah-v5").name == "HalfCheetah"
    assert resolve_env("brax:halfcheetah").name == "HalfCheetah"
    assert resolve_env("gym:LunarLander-v3") is None  # prefixed id outside the registry: passed through
    with pytest.raises(ValueError, match="Did you mean 'HalfCheetah'"):
        resolve_env("HalfChetah")


def test_a_missing_backend_says_how_to_install_it_or_pick_another(monkeypatch):
    # A GPU recipe names Brax (HalfCheetah, Hopper, ...): without it the user learns both ways out.
    monkeypatch.setattr(registry, "_installed", lambda backend: backend != "brax")
    with pytest.raises(ImportError, match=r"'brax' is not installed.*pip install eggroll-rl\[brax\].*--backend"):
        registry.make_env("HalfCheetah", backend="brax", num_envs=2, device="cpu")
