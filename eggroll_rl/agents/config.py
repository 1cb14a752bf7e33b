"""Configuration of an RL training run: one dataclass whose field docstrings become the CLI's help.

``TrainConfig()`` holds generic defaults; ``TrainConfig.for_env(name, **overrides)`` starts from the defaults tuned
for that environment (``ENV_DEFAULTS``) and applies the overrides. Every value is checked when the config is built,
so a bad value fails before any environment is created.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eggroll_rl.choices import (
    ActionMode,
    Activation,
    BraxBackend,
    Device,
    EnvBackend,
    FitnessShaping,
    NoiseKind,
    Optimizer,
    RolloutPath,
    Schedule,
    WeightInit,
    options,
)
from eggroll_rl.validation import check_choice, check_int, check_number, invalid

__all__ = ["CPU_SUFFIX", "ENV_DEFAULTS", "TrainConfig", "load_config_file"]

CPU_SUFFIX = "@cpu"
"""``ENV_DEFAULTS["<env>@cpu"]``: the recipe ``TrainConfig.for_env`` picks when the run trains on the CPU."""


@dataclass
class TrainConfig:
    """Everything that defines a training run. Field docstrings are the CLI help."""

    env: str = "CartPole"
    """Environment name from the registry (``eggroll-rl envs``), e.g. CartPole, Pendulum, HalfCheetah."""
    backend: EnvBackend = "auto"
    """Environment backend: auto (fastest installed for the device), torch, gym, envpool or brax."""
    device: Device = "auto"
    """Device for policy and (where the backend allows) environment: auto (cuda if available), cuda or cpu."""
    seed: int = 0
    """Seed of the noise, the environment resets and the policy's initial weights."""
    env_kwargs: dict = field(default_factory=dict)
    """Extra keyword arguments passed to ``make_env`` (backend-specific, e.g. gym's ``vectorization_mode``)."""
    brax_backend: BraxBackend = "positional"
    """Physics pipeline when the env runs on Brax: generalized, positional, spring or mjx."""
    env_checks: bool = True
    """Raise on NaN/inf env outputs. On CUDA the torch-native and Brax envs read their check flags every 64 steps
    (about 1 % of Brax's throughput); gymnasium and EnvPool check on the CPU every step."""

    # --- budget -------------------------------------------------------------------------------------------------
    generations: int = 100
    """Number of generations (ES updates); 0: no cap (time_limit_s then ends the run). Ignored when total_steps > 0.
    On the command line a budget given (generations, total_steps, time_limit_s, by flag or config file) replaces the
    env's or the resumed run's: the limits not given are off, so --time-limit-s alone trains until the time is up."""
    total_steps: int = 0
    """Stop once this many environment steps have been taken (0: use generations)."""
    time_limit_s: float = 0.0
    """Stop after this much wall-clock training time in seconds (0: no limit). Not reproducible by design."""

    # --- strategy -----------------------------------------------------------------------------------------------
    population: int = 128
    """Population size N (number of perturbed policies per generation); even when antithetic."""
    rank: int = 4
    """Rank r of the low-rank perturbations of weight matrices."""
    sigma: float = 0.1
    """Perturbation scale sigma (initial value when sigma_schedule is not constant)."""
    lr: float = 0.05
    """Learning rate (initial value when lr_schedule is not constant)."""
    optimizer: Optimizer = "adam"
    """Optimizer applied to the ES gradient: adam, adamw, sgd or none (plain p += lr * g)."""
    antithetic: bool = True
    """Mirrored sampling: members 2j and 2j+1 use noise +E_j and -E_j."""
    fitness_shaping: FitnessShaping = "centered_rank"
    """Fitness shaping: zscore, centered_rank or none."""
    reward_shift: float = 0.0
    """Training only: subtracted from the reward of every live env step in the ES fitness (fitness = return -
    reward_shift * episode length). Set it to an env's alive bonus (Hopper, Walker2d: 1, Humanoid: 5) so that merely
    surviving longer is not rewarded for itself (ARS's trick). Evaluation, logged returns and the leaderboard keep the
    env's own reward."""
    noise_reuse: int = 0
    """Reuse the same noise for this many consecutive generations (0: fresh noise every generation)."""
    group_size: int = 0
    """Group-wise fitness normalization with groups of this size (0: global)."""
    grad_clip: float = 0.0
    """Clip the global norm of the ES gradient to this value (0: no clipping)."""
    weight_decay: float = 0.0
    """Weight decay of the optimizer."""
    noise: NoiseKind = "gaussian"
    """Noise distribution of the perturbations: gaussian, rademacher (+-1) or gaussian_fast (Philox-7, 16-bit
    Box-Muller: |z| <= 4.855; see eggroll_rl/noise.py)."""
    lr_schedule: Schedule = "constant"
    """Learning-rate schedule over the budget: constant, linear or exponential."""
    lr_end_factor: float = 0.1
    """Final learning rate as a fraction of lr (linear and exponential schedules)."""
    sigma_schedule: Schedule = "constant"
    """Sigma schedule over the budget: constant, linear or exponential."""
    sigma_end_factor: float = 0.1
    """Final sigma as a fraction of sigma (linear and exponential schedules)."""

    # --- policy -------------------------------------------------------------------------------------------------
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer widths of the MLP policy; [] is a linear policy (normalized observations to actions, as ARS)."""
    activation: Activation = "pqn"
    """Hidden activation: pqn (relu(layernorm(x))), tanh, relu or silu."""
    action_mode: ActionMode = "tanh"
    """Continuous actions: tanh (squash into the bounds) or clip (clip to the bounds)."""
    obs_norm: bool = True
    """Normalize observations with a running mean/std fed by the live steps of the whole population."""
    obs_clip: float = 10.0
    """Clip normalized observations to [-obs_clip, obs_clip] (0: no clipping)."""
    weight_init: WeightInit = "torch"
    """Initial policy weights: torch (nn.Linear's default; head weight x0.1, head bias 0) or glorot (Glorot-uniform
    on every layer, zero biases)."""

    # --- rollout and evaluation ---------------------------------------------------------------------------------
    episodes_per_member: int = 1
    """Episodes each population member plays per generation; its fitness is their mean return."""
    members_per_start: int = 1
    """Training only: consecutive members that play from the same initial states each generation (common random
    numbers): 1, every member its own; 2, each antithetic pair, so the pair's difference in fitness comes from its
    noise, not from its luck with the start (e.g. Reacher's random target); population, every member. A divisor of
    population. Needs a backend that can share starts: brax, gym or torch (not envpool)."""
    rollout: RolloutPath = "torch"
    """Training rollout: torch (the step loop, every backend) or jax (backend brax only: the whole episode of the
    population in one jitted JAX loop, the factors handed over once per generation; an MLP policy with continuous
    actions). The same results up to float rounding, which Brax's dynamics amplify (HalfCheetah's trajectories part
    within tens of steps), so the two paths' curves differ; each is reproducible on the CPU. The evaluation of the
    mean policy takes the same path (with jax on a GPU its loop compiles in a background thread from the start).
    On one H200, HalfCheetah's training ran 1.24x faster with it (benchmarks/results/rollout_jax_2026-11-30.md)."""
    max_episode_steps: int = 0
    """Cap on episode length (0: the environment's own limit)."""
    eval_every: int = 10
    """Evaluate the mean (unperturbed) policy every this many generations (0: only at the end)."""
    eval_episodes: int = 16
    """Episodes per evaluation of the mean policy."""

    cpu_threads: int = 0
    """torch intra-op threads while training on the CPU (0: torch's default). Small policies run faster with 1."""

    # --- output -------------------------------------------------------------------------------------------------
    out_dir: str = ""
    """Run directory for config, metrics, checkpoints and plots ('' : write nothing)."""
    checkpoint_every: int = 10
    """Write the last-policy checkpoint every this many generations (and at the end)."""
    tensorboard: bool = True
    """Write TensorBoard events to the run directory when tensorboard is installed."""

    def __post_init__(self) -> None:
        self.hidden_sizes = _layer_widths(self.hidden_sizes)
        if isinstance(self.env_kwargs, dict):
            self.env_kwargs = dict(self.env_kwargs)
        self.validate()

    # --- construction -------------------------------------------------------------------------------------------
    @classmethod
    def for_env(cls, env: str, **overrides: Any) -> TrainConfig:
        """The defaults tuned for ``env`` (see ``ENV_DEFAULTS``) on the device it will train on, then ``overrides``.

        When the device (``overrides["device"]``, else ``"auto"``) resolves to the CPU and ``ENV_DEFAULTS`` has a
        ``"<env>@cpu"`` entry, that recipe is used instead of the GPU one (a GPU recipe's population is far too
        big for a CPU). A recipe's ``rollout="jax"`` (Brax only) is dropped when ``overrides`` pick another
        backend and leave ``rollout`` unset.

        A budget in ``overrides`` (any of ``generations``, ``total_steps``, ``time_limit_s``) replaces the recipe's
        whole, as on the command line: the limits given apply, the others are off. So
        ``for_env("Walker2d", time_limit_s=1200)`` trains 1200 s, not up to the recipe's 1000-generation cap.
        """
        key = _canonical_env_key(env)
        if key + CPU_SUFFIX in ENV_DEFAULTS and _trains_on_cpu(overrides.get("device", cls.device)):
            key += CPU_SUFFIX
        values = with_overrides(ENV_DEFAULTS.get(key, {}), overrides)
        if "rollout" not in overrides and values.get("backend", cls.backend) != "brax":
            values.pop("rollout", None)  # a recipe's JAX rollout runs Brax envs only: another backend steps from torch
        values["env"] = env
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict (e.g. a config file); unknown keys are an error naming them."""
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(
                f"unknown config keys {unknown}; valid keys: {sorted(f.name for f in dataclasses.fields(cls))}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden_sizes"] = list(self.hidden_sizes)
        return d

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    # --- derived values -----------------------------------------------------------------------------------------
    @property
    def num_envs(self) -> int:
        """Environments stepped in parallel during training: population * episodes_per_member."""
        return self.population * self.episodes_per_member

    # --- validation ---------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``ValueError`` (``TypeError`` for a value of the wrong kind) naming the field, its value and what
        is expected (``eggroll_rl.validation``'s message shape)."""
        if not isinstance(self.env, str) or not self.env:
            raise invalid("env", self.env, "a non-empty environment name")
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            if typing.get_origin(hints[f.name]) is typing.Literal:  # a closed set from eggroll_rl.choices
                check_choice(f.name, getattr(self, f.name), options(hints[f.name]))
        for name in (
            "population",
            "rank",
            "episodes_per_member",
            "members_per_start",
            "eval_episodes",
            "checkpoint_every",
        ):
            check_int(name, getattr(self, name), lo=1)
        for name in (
            "generations",
            "total_steps",
            "noise_reuse",
            "group_size",
            "max_episode_steps",
            "eval_every",
            "cpu_threads",
        ):
            check_int(name, getattr(self, name), lo=0)
        check_int("seed", self.seed, lo=0, hi=2**31 - 1)
        for name in ("sigma", "lr"):
            check_number(name, getattr(self, name), lo=0, lo_inclusive=False)
        for name in ("lr_end_factor", "sigma_end_factor"):
            if check_number(name, getattr(self, name), lo=0, lo_inclusive=False) > 1e6:
                raise invalid(name, getattr(self, name), "a finite number > 0 and <= 1e6")
        for name in ("grad_clip", "weight_decay", "obs_clip", "time_limit_s"):
            check_number(name, getattr(self, name), lo=0)
        check_number("reward_shift", self.reward_shift)
        if self.generations == 0 and self.total_steps == 0:
            if not self.time_limit_s:
                raise ValueError(
                    "generations=0, total_steps=0 and time_limit_s=0: no budget; expected generations > 0, "
                    "total_steps > 0 or time_limit_s > 0"
                )
            for name in ("lr_schedule", "sigma_schedule"):
                if getattr(self, name) != "constant":  # its horizon would be the clock: not reproducible
                    raise invalid(
                        name,
                        getattr(self, name),
                        "'constant' when time_limit_s is the only budget (generations=0, total_steps=0): a schedule "
                        "runs over generations or total_steps; give one of them",
                    )
        if self.antithetic and self.population % 2:
            raise invalid(
                "population", self.population, "an even number when antithetic=True (members come in +/- pairs)"
            )
        if self.population % self.members_per_start:
            raise invalid("members_per_start", self.members_per_start, f"a divisor of population={self.population}")
        if self.group_size and self.population % self.group_size:
            raise invalid("group_size", self.group_size, f"a divisor of population={self.population}")
        if any(h < 1 for h in self.hidden_sizes):
            raise invalid("hidden_sizes", self.hidden_sizes, "positive layer widths ([] : a linear policy)")
        if not isinstance(self.env_kwargs, dict):
            raise invalid("env_kwargs", self.env_kwargs, "a dict")
        if self.rollout == "jax" and self.backend != "brax":
            raise ValueError(
                f"rollout='jax' is invalid with backend={self.backend!r}: the JAX rollout runs Brax envs only; "
                "expected backend='brax' (not 'auto', which may pick another backend) or rollout='torch'"
            )
        cores = os.cpu_count() or 1
        if self.cpu_threads > cores:
            # More threads than cores oversubscribes the CPU: a generation gets many times slower, not faster.
            warnings.warn(
                f"cpu_threads={self.cpu_threads} is more than this machine's {cores} CPU cores; training will be "
                f"much slower than with cpu_threads <= {cores} (0: torch's default)",
                RuntimeWarning,
                stacklevel=2,
            )


def _layer_widths(value: Any) -> tuple[int, ...]:
    # A bare int (``hidden_sizes: 32`` in YAML) is one layer; anything else must be a sequence of ints.
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(h, int) and not isinstance(h, bool) for h in value):
        return tuple(value)
    raise ValueError(
        f"hidden_sizes={value!r} is invalid: expected a layer width or a list of them (integers, e.g. [64, 64]; "
        "[] for a linear policy)"
    )


def _trains_on_cpu(device: Any) -> bool:
    # An invalid device is not the CPU here; TrainConfig's checks name it.
    if device == "auto":
        import torch

        return not torch.cuda.is_available()
    return device == "cpu"


def _canonical_env_key(name: str) -> str:
    # "HalfCheetah-v5", "halfcheetah" and "HalfCheetah" share defaults.
    return name.split("-v")[0].replace("_", "").lower()


BUDGET_FIELDS = ("generations", "total_steps", "time_limit_s")
"""The limits a run stops at (the first reached); given together they replace a recipe's whole budget."""


def with_overrides(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` (a recipe, a resumed run's config) updated by ``overrides``, where a budget in ``overrides`` (any of
    ``BUDGET_FIELDS``) replaces ``base``'s whole: the limits given apply, the others are off (0)."""
    values = dict(base)
    if any(k in overrides for k in BUDGET_FIELDS):
        values.update(generations=0, total_steps=0, time_limit_s=0.0)
    return values | overrides


# Per-environment defaults, keyed by the lower-case name without version suffix. Tuned so that
# `eggroll-rl train <Env>` does well with no flags (numbers in benchmarks/results/train_*.md).
ENV_DEFAULTS: dict[str, dict[str, Any]] = {
    "cartpole": dict(
        population=64,
        rank=4,
        sigma=0.1,
        lr=0.05,
        hidden_sizes=(16,),
        activation="tanh",
        generations=30,
        eval_every=5,
        eval_episodes=16,
        cpu_threads=1,
    ),
    "pendulum": dict(
        population=256,
        rank=4,
        sigma=0.1,
        lr=0.03,
        hidden_sizes=(32, 32),
        activation="tanh",
        action_mode="clip",  # with tanh squashing (and [64, 64]) the swing-up was never found in 600 generations
        generations=300,
        eval_every=10,
        cpu_threads=1,
    ),
}
# The locomotion recipe first measured on HalfCheetah (torch's nn.Linear init with a shrunk head, the pqn activation):
# the base of every Brax locomotion env below, of Ant, and of HalfCheetah's CPU recipe.
_LOCOMOTION: dict[str, Any] = dict(
    population=2048,
    rank=4,
    sigma=0.02,
    lr=0.01,
    hidden_sizes=(64, 64),
    activation="pqn",
    brax_backend="spring",
    generations=1000,
    time_limit_s=540.0,
    eval_every=10,
    eval_episodes=128,
    checkpoint_every=20,
)
ENV_DEFAULTS["halfcheetah"] = dict(_LOCOMOTION)  # on a GPU it changes its network (below the CPU recipes)
# HalfCheetah's base recipe carries over to Ant (benchmarks/results/train_ant_cuda.md); positional physics with the
# generic defaults stayed below 0 return.
ENV_DEFAULTS["ant"] = dict(_LOCOMOTION)


def _locomotion(**changes: Any) -> dict[str, Any]:
    """The base locomotion recipe with ``changes``: the starting point of every other Brax env (issue #12)."""
    return {**_LOCOMOTION, **changes}


# Starting recipes, not yet measured one by one (benchmarks/run_recipes.py measures them). Spring physics wherever
# Brax 0.14 builds the env with it (every env here but Swimmer, which Brax builds with generalized physics only) and
# it learns (not Reacher, below): it is Brax's fastest pipeline. reward_shift = the env's alive bonus (Brax's default
# healthy_reward) where an episode ends when the body falls, so that standing still is not the first optimum found
# (docs/training.md).
ENV_DEFAULTS |= {
    # The [64, 64] MLP with sigma 0.05 (on a GPU with HalfCheetah's network: below the CPU recipes). With torch's
    # init and pqn, alone on an H200, best 2860 at 490 s (train_hopper_cuda.md); with a second
    # run on its GPU 2146 at 231 s (train_hopper_cuda_shared.md), where sigma 0.02 had 1217 at 250 s. Linear policies
    # stuck at 584-1046 in 230 s (2048 members: a lunge, ~170-step episodes; 128/256 members; sigma 0.05):
    # recipes_2026-11-30_gpu.md, recipes_2026-11-30c_gpu.md.
    "hopper": _locomotion(reward_shift=1.0, sigma=0.05),
    # Walker2d and Humanoid: their longest measured runs (train_walker2d_cuda.md, train_humanoid_cuda.md) used
    # Rademacher noise (no learning difference from Gaussian seen on HalfCheetah: noise_seeds_halfcheetah_cuda.md).
    "walker2d": _locomotion(reward_shift=1.0, noise="rademacher"),
    "humanoid": _locomotion(reward_shift=5.0, noise="rademacher"),
    # No termination (every episode lasts the time limit): a shift would change no ranking.
    "humanoidstandup": _locomotion(),
    "pusher": _locomotion(time_limit_s=300.0),
    # Gymnasium's 50-step episodes (Brax's run 1000 steps): returns comparable with its -3.75 threshold. The target is
    # random, and its draw moved a member's return more than its noise did: each antithetic pair shares its start,
    # and a smaller step lets the return climb instead of drifting down. Generalized physics: with spring physics the
    # return stayed flat on the CPU (benchmarks/results/recipes_2026-11-30.md). Ten minutes, as the CPU recipe: alone
    # on one H200 the return still climbed after 180 s (-5.9 there, -4.4 to -4.8 from 350 s on; the CPU recipe beside
    # it on the same host level with it at equal wall clock: reacher_gpu_host_2026-12-02.md).
    "reacher": _locomotion(
        brax_backend="generalized", time_limit_s=600.0, max_episode_steps=50, members_per_start=2, sigma=0.01, lr=0.005
    ),
    "swimmer": _locomotion(brax_backend="generalized", time_limit_s=240.0),
    # The reward is the alive bonus itself (1 per step; 10 less a distance penalty): no shift.
    "invertedpendulum": _locomotion(time_limit_s=120.0),
    "inverteddoublependulum": _locomotion(time_limit_s=180.0),
}

# On a CPU, backend="auto" picks EnvPool or gymnasium (MuJoCo's -v5 envs) and the whole population steps on a few
# cores: a population of 128 (16x fewer episodes per generation than the GPU recipes) and a larger step. The policy
# forward takes one torch thread; the env backend keeps the other cores. Measured for HalfCheetah only so far.
_CPU_CHANGES = dict(population=128, lr=0.02, eval_episodes=16, cpu_threads=1)
ENV_DEFAULTS |= {
    env + CPU_SUFFIX: {**ENV_DEFAULTS[env], **_CPU_CHANGES}
    for env in ("halfcheetah", "ant", "hopper", "walker2d", "humanoid", "humanoidstandup", "pusher", "reacher",
                "swimmer", "invertedpendulum", "inverteddoublependulum")
}  # fmt: skip
# HalfCheetah on a GPU: the base recipe with Glorot-uniform weights, zero biases and tanh (the evosax peer's
# network). On one H200, 480 s: 7062 / 4564 / 4238 (seeds 0-2) where the torch-init + pqn recipe had 4610 / 3667
# (seeds 0-1); a higher mean and worst seed, ahead on every seed at 120 s (1753-2080 against 1313-1583), but two of
# the three seeds end in the former recipe's range. Glorot with pqn alone had 3820 / 4735
# (halfcheetah_init_gpu_2026-11-30.md). The CPU recipe keeps the base: on the CPU, Glorot's worst of 5 seeds stalled
# near 2200 and glorot + tanh (seed 0) learned less than glorot + pqn (init_ab_cpu_2026-11-30.md).
_EVOSAX_NET = dict(weight_init="glorot", activation="tanh")
ENV_DEFAULTS["halfcheetah"] |= _EVOSAX_NET
# ... trained by the JAX rollout (Brax only: the whole episode in one jitted loop). On one H200, 480 s, seeds 0-2: 4800
# passed by all three (135 / 378 / 377 s; finals 7470 / 5019 / 5260) where the torch rollout passed it on seed 0 only
# (205 s; 7062 / 4564 / 4238), 1.24x the env steps in the same time (leaderboard/halfcheetah_rollout_jax/,
# rollout_jax_2026-11-30.md). A run that picks another backend gets the torch rollout (for_env).
ENV_DEFAULTS["halfcheetah"] |= dict(backend="brax", rollout="jax")
# Hopper on a GPU: the same network. On one H200 (hopper_init_gpu_2026-11-30.md): best 5149 / 1957 / 3193 (seeds 0-2;
# 3000 passed at 84 s and 431 s by seeds 0 and 2) where torch init + pqn had 2860 (seed 0 only). Seed 1 is below that
# one seed. The CPU recipe (a linear policy) is unchanged.
ENV_DEFAULTS["hopper"] |= _EVOSAX_NET
# Hopper, Walker2d and Humanoid on a GPU step through the JAX rollout too: on one H200 a generation's rollout at 2048
# members ran 2.10x (Hopper), 2.20x (Walker2d) and 1.23x (Humanoid) the torch loop's env steps/s (1.26x for HalfCheetah,
# whose learning curves then improved on 3 of 3 seeds); Ant gained 1.06x and keeps the torch loop. Brax ES, all in JAX,
# ran 2.8-3.1x our torch loop's env steps/s on Hopper and Walker2d and ended above it (rollout_jax_2026-12-01.md). The
# two paths compute the same episodes (tests/agents/test_jax_rollout.py), so only the speed changes; the learning
# curves with this default are still to be measured on the GPU board.
for _env in ("hopper", "walker2d", "humanoid"):
    ENV_DEFAULTS[_env] |= dict(backend="brax", rollout="jax")
# Walker2d on a GPU: the same network too (Rademacher noise kept). On one H200, 480 s, the JAX rollout: 5752 / 7317 /
# 3652 (seeds 0-2), 3000 passed by all three (102 / 200 / 231 s), where torch's init + pqn had 2854 / 5543 / 3116 and
# seed 0 never passed 3000 (leaderboard/gpu_h200_variants/walker2d_glorot_tanh/, .../walker2d_torch_pqn_jax_rollout/).
ENV_DEFAULTS["walker2d"] |= _EVOSAX_NET
# Humanoid on a GPU: the same network. On one H200, 480 s, seed 0, the JAX rollout: 8858 at 494 s (5000 at ~165 s),
# where torch's init + pqn (torch rollout) had 6976; ahead at equal env steps too (8020 against 6976 at 260M steps)
# (leaderboard/gpu_h200_variants/humanoid_glorot_tanh/).
ENV_DEFAULTS["humanoid"] |= _EVOSAX_NET
# Reacher on a CPU: gymnasium's Reacher-v5, which seeds each sub-env as asked, so a pair can share its target
# (EnvPool cannot), and the GPU recipe's step (recipes_2026-11-30.md: -8.1 to -5.4 in 230 s on one core). Ten minutes
# (the budget), as the GPU recipe: on one core the return still climbs after 180 s (~-6.2
# there, ~-4.7 from 400 s on; seeds 1-2, train_reacher_cpu_cpu_1core_s{1,2}_eval100.md); and 100 evaluation episodes,
# as gymnasium's -3.75 threshold is a 100-episode mean (16 episodes drew up to ~1 above the policy's mean; 5000 env
# steps an evaluation, under a generation's 6400).
ENV_DEFAULTS["reacher@cpu"] |= dict(backend="gym", lr=ENV_DEFAULTS["reacher"]["lr"], time_limit_s=600.0,
                                    eval_episodes=100)  # fmt: skip
# Walker2d on a CPU: the [64, 64] MLP with the alive bonus removed collapsed at 128 members (its first policies fell
# within ~15 steps, and dying sooner saved control cost: eval -2.5 to -0.9 for 1000 generations); the linear policy
# learned (563 at 725 s; train_walker2d_cpu_2core.md). The GPU recipe keeps its measured MLP.
ENV_DEFAULTS["walker2d@cpu"] |= dict(hidden_sizes=())
# Hopper on a CPU: a linear policy (ARS's). At 64 members on Brax's Hopper it passed 1000 in about 1.5M env steps where
# the [64, 64] MLP stood near 370 (recipes_2026-11-30.md); at 128 members on EnvPool's Hopper-v5 it reached 2858 in
# 658 s on two cores (train_hopper_cpu_2core.md).
ENV_DEFAULTS["hopper@cpu"] |= dict(hidden_sizes=(), sigma=0.02)  # measured with sigma 0.02; the GPU MLP takes 0.05
# Swimmer on a CPU: a linear policy (ARS's) with a larger step, sigma 0.05 / lr 0.05, and 10 minutes: on one core
# 281 at 121 s, 353 at 264 s, then 355-360 to the end (360.1 at 603 s: gymnasium's 360, just); sigma 0.02 / lr 0.02 was
# at 270 (197 s) and 317 (244 s), 64 members plateaued near 300 (recipes_2026-11-30b.md, train_swimmer_cpu_1core.md).
ENV_DEFAULTS["swimmer@cpu"] |= dict(hidden_sizes=(), sigma=0.05, lr=0.05, eval_every=5, time_limit_s=600.0)
# Swimmer trains with that CPU recipe, on the CPU, on a GPU host too: Brax builds Swimmer with generalized physics only,
# which stepped 2048 envs at 71k env steps/s on a shared H200 (~29 s a generation; eval 47 after 11 generations,
# recipes_2026-11-30_gpu.md), where MuJoCo's Swimmer-v5 on one core reached gymnasium's 360 in 10 minutes.
# `--device cuda` still gets Brax's Swimmer (with this recipe).
ENV_DEFAULTS["swimmer"] = {**ENV_DEFAULTS["swimmer@cpu"], "device": "cpu"}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict of ``TrainConfig`` fields (not yet validated).

    YAML is read with ``yaml.safe_load``: plain values only, a ``!!python/...`` tag is an error, never run.
    Raises ``ValueError`` naming the file (and line) for a syntax error or a file that is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"config file {str(path)!r} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
    else:
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - pyyaml is a dependency of the CLI extras
            raise ImportError(f"reading {path} needs pyyaml (pip install pyyaml), or use a .json config") from exc
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"config file {str(path)!r} {_yaml_problem(exc)}") from None
    if not isinstance(values, dict):
        raise ValueError(
            f"config file {str(path)!r} must hold a mapping of field names to values, got {type(values).__name__}"
        )
    return values


def _yaml_problem(exc: Exception) -> str:
    # One line from PyYAML's multi-line message: what and where.
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if "constructor for the tag" in problem:
        tag = problem.split("tag", 1)[1].strip().strip("'").replace("tag:yaml.org,2002:", "!!")
        return (
            f"uses the YAML tag {tag!r}{where}, which is not allowed: a config holds plain values only "
            "(numbers, strings, booleans, lists, mappings)"
        )
    return f"is not valid YAML: {problem}{where}"
