"""Every registered env trains with `eggroll-rl train <Env>` and its defaults (issue #12): the resolved config of each
env, on each device, is ENV_DEFAULTS' recipe, validates, and is what `--print-config` shows."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml

from eggroll_rl.agents.config import CPU_SUFFIX, ENV_DEFAULTS, TrainConfig, _canonical_env_key
from eggroll_rl.cli import main
from eggroll_rl.envs.registry import ENV_SPECS

BRAX_ENVS = sorted(name for name, spec in ENV_SPECS.items() if spec.brax is not None)
# Brax's alive bonus per step (healthy_reward's default in brax/envs/<env>.py), removed from the training fitness.
ALIVE_BONUS = {"hopper": 1.0, "walker2d": 1.0, "humanoid": 5.0}

# Where an env's recipe departs from HalfCheetah's, as measured (benchmarks/results/recipes_2026-11-30.md).
TUNED = {
    "hopper": dict(sigma=0.05),  # recipes_2026-11-30c_gpu.md: 2146 at 231 s where sigma 0.02 had 1217 at 250 s
    # reacher_gpu_host_2026-12-02.md: still climbing after 180 s on one H200
    "reacher": dict(
        brax_backend="generalized", max_episode_steps=50, members_per_start=2, sigma=0.01, lr=0.005, time_limit_s=600.0
    ),
}
TUNED_CPU = {
    "reacher": dict(backend="gym", lr=0.005, time_limit_s=600.0, eval_episodes=100),  # train_reacher_cpu_*_eval100.md
    "walker2d": dict(hidden_sizes=()),
    "hopper": dict(hidden_sizes=(), sigma=0.02),  # the linear policy was measured with 0.02 (train_hopper_cpu_2core.md)
    "swimmer": dict(hidden_sizes=(), sigma=0.05, lr=0.05, eval_every=5, time_limit_s=600.0),
}

# The locomotion recipe as measured on HalfCheetah (benchmarks/results/train_halfcheetah_cuda.md), the base of the
# other Brax envs, Ant's and HalfCheetah's CPU recipe: must not drift.
LOCOMOTION = dict(
    population=2048, rank=4, sigma=0.02, lr=0.01, hidden_sizes=(64, 64), activation="pqn", brax_backend="spring",
    generations=1000, time_limit_s=540.0, eval_every=10, eval_episodes=128, checkpoint_every=20,
)  # fmt: skip
# HalfCheetah's GPU recipe: the base with Glorot init and tanh (benchmarks/results/halfcheetah_init_gpu_2026-11-30.md).
HALFCHEETAH_GPU = LOCOMOTION | dict(weight_init="glorot", activation="tanh", backend="brax", rollout="jax")
# The GPU recipes that take HalfCheetah's network (hopper_init_gpu_2026-11-30.md; Walker2d:
# leaderboard/gpu_h200/notes.md, sessions 17-18: Walker2d, Humanoid); the others keep the base's.
GLOROT_TANH_ON_GPU = {"halfcheetah", "hopper", "walker2d", "humanoid"}
# The GPU recipes that step through the JAX rollout (rollout_jax_2026-11-30.md, rollout_jax_2026-12-01.md); Brax only.
JAX_ROLLOUT_ON_GPU = {"halfcheetah", "hopper", "walker2d", "humanoid"}


def _printed(capsys, env: str, device: str) -> dict:
    assert main(["train", env, "--device", device, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def _recipe(env: str, device: str) -> dict:
    key = _canonical_env_key(env)
    return ENV_DEFAULTS[key + CPU_SUFFIX if device == "cpu" and key + CPU_SUFFIX in ENV_DEFAULTS else key]


def test_every_brax_env_has_a_recipe():
    assert {_canonical_env_key(name) for name in BRAX_ENVS} <= set(ENV_DEFAULTS)
    for name in BRAX_ENVS:  # the Brax id, the gymnasium id and the friendly name share one recipe
        spec = ENV_SPECS[name]
        assert _canonical_env_key(spec.brax) == _canonical_env_key(spec.gym) == _canonical_env_key(name)


@pytest.mark.parametrize("device", ["cuda", "cpu"])
@pytest.mark.parametrize("env", sorted(ENV_SPECS))
def test_print_config_shows_the_env_recipe(capsys, env, device):
    printed = _printed(capsys, env, device)
    config = TrainConfig.from_dict(printed)  # validates
    assert config == TrainConfig.for_env(env, device=device)
    recipe = _recipe(env, device) if _canonical_env_key(env) in ENV_DEFAULTS else {}
    assert config.device == device  # the flag wins over a recipe's own device (Swimmer's "cpu")
    for key, value in recipe.items():
        if key != "device":
            assert getattr(config, key) == value, key
    for key, value in TrainConfig().to_dict().items():
        if key not in recipe and key not in ("env", "device"):
            assert printed[key] == value, key  # everything else is the generic default


# Envs whose default trains on the CPU even on a GPU host (config.py says why): their GPU recipe is the CPU one.
CPU_EVERYWHERE = {"swimmer"}


def test_swimmer_trains_on_the_cpu_on_a_gpu_host(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    on_gpu_host = TrainConfig.for_env("Swimmer")
    assert on_gpu_host.device == "cpu" and on_gpu_host.hidden_sizes == () and on_gpu_host.population == 128
    assert on_gpu_host == TrainConfig.for_env("Swimmer", device="cpu")
    assert TrainConfig.for_env("HalfCheetah").population == 2048  # the others keep their GPU recipes
    cuda = TrainConfig.for_env("Swimmer", device="cuda")  # asked for: Brax's Swimmer with the same recipe
    assert cuda.device == "cuda" and dataclasses.replace(cuda, device="cpu") == on_gpu_host


@pytest.mark.parametrize("env", [e for e in BRAX_ENVS if _canonical_env_key(e) not in CPU_EVERYWHERE])
def test_locomotion_recipes_start_from_halfcheetah(env):
    key = _canonical_env_key(env)
    gpu = TrainConfig.for_env(env, device="cuda")
    halfcheetah = dict(population=2048, sigma=0.02, lr=0.01, hidden_sizes=(64, 64), max_episode_steps=0,
                       members_per_start=1)  # fmt: skip
    expected = halfcheetah | TUNED.get(key, {})
    assert {k: getattr(gpu, k) for k in expected} == expected
    net = ("glorot", "tanh") if key in GLOROT_TANH_ON_GPU else ("torch", "pqn")
    assert (gpu.weight_init, gpu.activation, gpu.obs_norm, gpu.action_mode) == (*net, True, "tanh")
    assert 0 < gpu.time_limit_s <= (600.0 if key == "reacher" else 540.0)  # Reacher: the ten minutes
    assert gpu.reward_shift == ALIVE_BONUS.get(_canonical_env_key(env), 0.0)
    assert gpu.brax_backend == ("generalized" if env in ("Swimmer", "Reacher") else "spring")
    jax = key in JAX_ROLLOUT_ON_GPU
    assert (gpu.rollout, gpu.backend) == (("jax", "brax") if jax else ("torch", "auto"))
    cpu = TrainConfig.for_env(env, device="cpu")
    assert cpu.population <= 256 and cpu.cpu_threads >= 1
    tuned = TUNED_CPU.get(key, {})
    assert cpu.reward_shift == tuned.get("reward_shift", gpu.reward_shift)
    assert cpu.sigma == tuned.get("sigma", gpu.sigma)
    assert cpu.max_episode_steps == gpu.max_episode_steps
    assert cpu.hidden_sizes == tuned.get("hidden_sizes", gpu.hidden_sizes)
    assert cpu.rollout == "torch"  # EnvPool / gymnasium on a CPU: the JAX rollout is for Brax
    assert {k: getattr(cpu, k) for k in tuned} == tuned
    assert (cpu.weight_init, cpu.activation) == ("torch", "pqn")  # glorot + tanh was measured on the GPU only


def test_halfcheetah_gpu_recipe_is_unchanged():
    config = TrainConfig.for_env("HalfCheetah", device="cuda")
    assert {k: getattr(config, k) for k in HALFCHEETAH_GPU} == HALFCHEETAH_GPU
    assert ENV_DEFAULTS["halfcheetah"] == HALFCHEETAH_GPU
    assert ENV_DEFAULTS["ant"] == LOCOMOTION  # Ant was measured with the base (train_ant_cuda.md)
    # Hopper on a GPU: the base, its alive bonus, sigma 0.05 and HalfCheetah's network (hopper_init_gpu_2026-11-30.md)
    hopper = LOCOMOTION | dict(reward_shift=1.0, sigma=0.05, weight_init="glorot", activation="tanh")
    hopper |= dict(backend="brax", rollout="jax")
    assert ENV_DEFAULTS["hopper"] == hopper
    cpu = TrainConfig.for_env("HalfCheetah", device="cpu")
    assert {k: getattr(cpu, k) for k in LOCOMOTION if k not in ("population", "lr", "eval_episodes")} == {
        k: v for k, v in LOCOMOTION.items() if k not in ("population", "lr", "eval_episodes")
    }
    assert (cpu.weight_init, cpu.population, cpu.lr) == ("torch", 128, 0.02)
    assert (cpu.backend, cpu.rollout) == ("auto", "torch")


@pytest.mark.parametrize("backend", ["auto", "gym", "envpool", "torch"])
def test_a_recipes_jax_rollout_gives_way_to_another_backend(backend):
    # HalfCheetah's GPU recipe trains with the JAX rollout, which runs Brax envs only: a user who picks another
    # backend gets the torch rollout and a valid config, not an error about a field they never set.
    config = TrainConfig.for_env("HalfCheetah", device="cuda", backend=backend)
    assert (config.backend, config.rollout, config.population) == (backend, "torch", 2048)
    config.validate()
    # Asked for explicitly, the mismatch is still an error naming both fields.
    with pytest.raises(ValueError, match="rollout='jax'.*backend"):
        TrainConfig.for_env("HalfCheetah", device="cuda", backend=backend, rollout="jax").validate()


def test_device_auto_picks_the_recipe_of_the_device_found(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert TrainConfig.for_env("HalfCheetah").population == 2048
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert TrainConfig.for_env("HalfCheetah").population == ENV_DEFAULTS["halfcheetah@cpu"]["population"]
    # Overrides still win over either recipe.
    assert TrainConfig.for_env("HalfCheetah", device="cpu", population=64).population == 64
    assert TrainConfig.for_env("HalfCheetah", device="cuda", population=64).population == 64


@pytest.mark.parametrize("env", BRAX_ENVS)
def test_brax_builds_each_env_with_its_recipe_physics(env):
    pytest.importorskip("brax")
    from eggroll_rl.envs.brax_adapter import import_brax

    _, brax_envs = import_brax()
    physics = ENV_DEFAULTS[_canonical_env_key(env)]["brax_backend"]
    brax_env = brax_envs.get_environment(ENV_SPECS[env].brax, backend=physics)  # raises if it cannot build
    # (observation_size would run a reset op by op: 8-24 s per env on a CPU, and the build is what is checked)
    assert brax_env.backend == physics and brax_env.action_size > 0
