"""EggrollStrategy: the EGGROLL algorithm's settings, setup, update and state (see DESIGN.md, "The algorithm").

A population of ``N`` members; member ``i`` uses noise index ``j = i // 2`` and sign ``s = +1/-1`` (even/odd) with
antithetic sampling, else ``j = i``, ``s = +1``. A matrix parameter ``W (m x n)`` of member ``i`` is
``W + (sigma s / sqrt(r)) A_j B_j^T``; any other parameter ``p`` is ``p + sigma s eps_j``. Factors and ``eps`` come
from the counter-based generator of ``noise.py`` at ``(seed, k, t_eff, j)`` and are regenerated, never stored.

One generation: ``perturb()`` opens a ``PerturbationContext`` (``population.py``) whose ``batched_forward`` runs the
population through the perturbed ops (``perturbed_ops.py``); ``step(fitnesses)`` shapes the fitnesses
(``fitness.py``), regenerates the noise in the kernels' update (``kernels.lowrank_update`` and friends) and hands
the ES gradient to the optimizer.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from . import kernels
from .choices import FitnessShaping, LowPrecision, NoiseKind, Optimizer, options
from .fitness import SHAPINGS, check_fitness, shape_fitness
from .module import ESModule, ParamSpec
from .noise import NOISE_TYPES, member_noise_and_sign
from .population import PerturbationContext
from .validation import check_choice, check_int, check_number, invalid

__all__ = ["EggrollStrategy", "PerturbationContext"]

# The named optimizers ("none", or None, is plain ascent without a torch optimizer).
_TORCH_OPTIMIZERS: dict[Optimizer, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}
# Above this a member's weights move by more than any network's weights are scaled: sigma=1e30 is a typo, not a
# setting (the perturbed activations overflow float32 after two layers).
_SIGMA_LARGE = 1e3
_SEED_BOUND = 1 << 32  # the seed is the generator's uint32 key
_CLIP_EPS = 1e-12  # keeps the clip scale finite when the gradient is 0
# SGD options that send the step through torch's optimizer.step() instead of step()'s own (_own_rule).
_SGD_OWN_STEP_OFF = ("momentum", "nesterov", "capturable", "fused", "differentiable")
# Adam on a matrix takes one of two routes with the same math: in the update GEMM's epilogue (kernels.lowrank_adam:
# G never stored, one launch), or G stored in float32 and the one-pass kernels.adam_step (the grad_clip path, two
# launches). ADAM_IN_EPILOGUE = None picks by size: matrices of ADAM_G_MIN_NUMEL entries or more store G (on the H200
# at 8192 x 8192 that step() took 0.83 ms against 1.09 at rank 1, 1.25 against 1.76 at rank 4:
# benchmarks/NOTES_kernels.md), smaller ones keep the single launch, so RL policies (a 64 x 64 layer is launch-bound
# either way) train bit for bit as before. The crossover size is not measured; 2**20 is a 1024 x 1024 layer. True /
# False force one route (tests, bench_kernels.py's "adam" and "adam_g" columns).
ADAM_IN_EPILOGUE: bool | None = None
ADAM_G_MIN_NUMEL = 1 << 20
_STATE_VERSION = 1
# Parameters of these dtypes get a float32 master copy: an in-place add into a bf16 weight drops every update below
# half a bf16 step (about |w| * 2**-9), and Adam's second moment in bf16 cannot follow beta2 = 0.999.
_LOW_PRECISION = (torch.bfloat16, torch.float16)


class _OwnStep(NamedTuple):
    """A step that ``step()`` runs itself: ``"ascent"`` (``p = beta p + alpha g``) or ``"adam"`` (the group's)."""

    kind: str
    alpha: float = 0.0
    beta: float = 1.0
    group: dict | None = None
    decoupled: bool = False


def _has_step_hooks(opt: torch.optim.Optimizer) -> bool:
    """Whether ``opt.step()`` would run more than its math: hooks (its own or global) or a wrapper on the instance."""
    from torch.optim import optimizer as _optimizer

    global_hooks = [getattr(_optimizer, k, {}) for k in ("_global_optimizer_pre_hooks", "_global_optimizer_post_hooks")]
    own_hooks = [getattr(opt, k, {}) for k in ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks")]
    return any(global_hooks) or any(own_hooks) or "step" in vars(opt)


def _scalar_dtype() -> torch.dtype:
    """The dtype of torch.optim.Adam's ``state["step"]`` (float64 under a float64 default dtype)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _check_bool(name: str, value) -> bool:
    if type(value).__name__ not in ("bool", "bool_") and not (isinstance(value, int) and value in (0, 1)):
        raise invalid(name, value, "True or False", TypeError)
    return bool(value)


def _max_useful_rank(specs: list[ParamSpec]) -> int:
    """The largest ``min(m, n)`` of the matrix parameters: a perturbation ``A B^T`` has at most that rank."""
    return max(min(s.m, s.n) for s in specs if s.kind == "matrix")


class EggrollStrategy:
    """Low-rank evolution strategy (EGGROLL).

    Args:
        sigma: noise scale, > 0.
        lr: learning rate, >= 0.
        rank: rank ``r`` of each matrix perturbation, >= 1.
        optimizer: ``"adam"`` (default), ``"adamw"``, ``"sgd"``, ``"none"`` or ``None`` (plain ``p += lr * g``),
            or a ``torch.optim.Optimizer`` instance over the model's parameters. Plain ascent, ``"sgd"`` without
            momentum and ``"adam"``/``"adamw"`` without amsgrad are applied by ``step()`` itself in one pass per
            parameter (fused into the update's GEMM on CUDA), with torch's math on the named optimizer's own state;
            the rest goes through ``optimizer.step()`` (see ``_own_rule``).
        optimizer_kwargs: extra keyword arguments for the named optimizer.
        antithetic: mirrored sampling (members ``2j`` and ``2j+1`` share noise with opposite signs).
        noise_reuse: ``> 0`` reuses the noise for blocks of that many epochs (``t_eff = epoch // noise_reuse``).
        fitness_shaping: ``"zscore"``, ``"centered_rank"`` or ``"none"``.
        group_size: ``> 0`` shapes fitness within groups of consecutive members (see ``fitness.shape_fitness``).
        grad_clip: clip the global norm of the ES gradient to this value (None: no clipping).
        weight_decay: passed to the torch optimizer; with ``optimizer=None`` it is ``p -= lr * wd * p``.
        seed: the noise seed (uint32).
        allow_cpu: run on CPU tensors through the pure-torch path (tests, CI, small experiments).
        noise: ``"gaussian"`` (default), ``"rademacher"`` (+-1 factors, cheaper to generate) or ``"gaussian_fast"``
            (Philox-7, Box-Muller on 16-bit halves: 8 normals a call, ``|z| <= 4.855``; ``noise.py``).
        low_precision: how bf16/fp16 evolved parameters are updated: ``"master"`` (default, below) or
            ``"stochastic"``: in place in bf16, each updated value rounded up or down at random with the
            probabilities that make its expectation exact (``kernels/rounding.py``), so updates below half a bf16
            step still move the weights on average; no master copies (4 bytes a weight less memory, and on CUDA the
            fused update reads and writes 2-byte weights instead of a 4-byte master plus the copy). For plain
            ascent and ``"sgd"`` without momentum (Adam's moments need float32 state: use ``"master"``); bf16
            parameters only (fp16 ones raise at ``setup()``). Seeded by ``seed`` and the step counter, so a run
            is reproducible.

    Mixed precision: each bf16/fp16 evolved parameter gets a float32 master copy at ``setup()``, as mixed-precision
    trainers keep one. ``step()`` and the optimizer (whose state is then float32 too) act on the master copies and
    the model's parameters are refreshed from them (rounded to their dtype) after each step, so updates smaller
    than half a bf16 step accumulate instead of vanishing. The population is evaluated from the model's parameters
    in their own dtype. ``state_dict()`` carries the master copies. A change made to such a parameter outside the
    strategy (``model.load_state_dict``, an in-place edit; not one through ``.data``) is noticed by its version
    counter at the next ``step()`` and, when the value differs from the rounded master, replaces the master.
    Float32 parameters have no copy: they are updated in place as before. A user's optimizer instance keeps the
    parameters it was given (no master copies; a warning says so for low-precision ones).
    Under ``torch.autocast`` the perturbed linear layers compute in the autocast dtype, as ``F.linear`` would.
    """

    def __init__(
        self,
        sigma: float = 0.1,
        lr: float = 0.01,
        rank: int = 4,
        optimizer: Optimizer | torch.optim.Optimizer | None = "adam",
        optimizer_kwargs: dict | None = None,
        antithetic: bool = True,
        noise_reuse: int = 0,
        fitness_shaping: FitnessShaping = "zscore",
        group_size: int = 0,
        grad_clip: float | None = None,
        weight_decay: float = 0.0,
        seed: int = 0,
        allow_cpu: bool = False,
        noise: NoiseKind = "gaussian",
        low_precision: LowPrecision = "master",
    ):
        self.es_module: ESModule | None = None
        self.specs: list[ParamSpec] = []
        self._last: tuple[int, int] | None = None  # (population_size, epoch) of the perturb() not yet stepped
        self._stepped: tuple[int, int] | None = None  # the same, of the perturb() the last step() consumed
        self._active: PerturbationContext | None = None  # the perturb() block being evaluated
        self._perturbed_with: dict[str, Any] = {}  # the noise settings of that perturb()
        self._group_size = 0
        # The settings are properties: the same checks run here and when one is changed later.
        self.sigma = sigma
        check_number("lr", lr, 0.0)
        self.rank = rank
        self.noise_reuse = noise_reuse
        self.fitness_shaping = fitness_shaping
        self.group_size = group_size
        self.weight_decay = weight_decay
        self.seed = seed
        self.grad_clip = grad_clip
        self._adam_in_epilogue = ADAM_IN_EPILOGUE
        if isinstance(optimizer, str) and optimizer == "none":
            optimizer = None
        named = isinstance(optimizer, str) and optimizer in _TORCH_OPTIMIZERS
        if not (optimizer is None or named or isinstance(optimizer, torch.optim.Optimizer)):
            raise invalid("optimizer", optimizer, f"one of {list(options(Optimizer))}, None or a torch.optim.Optimizer")
        self.noise = noise
        self.low_precision = check_choice("low_precision", low_precision, options(LowPrecision))
        if self.low_precision == "stochastic" and not (optimizer is None or optimizer == "sgd"):
            name = optimizer if isinstance(optimizer, str) else type(optimizer).__name__
            raise invalid(
                "low_precision", low_precision,
                f"'master' with optimizer={name!r} ('stochastic' rounds the plain ascent / 'sgd' step only: an "
                "optimizer's float32 state needs float32 master weights)",
            )  # fmt: skip
        torch_step = [k for k in _SGD_OWN_STEP_OFF if (optimizer_kwargs or {}).get(k)]
        if self.low_precision == "stochastic" and torch_step:
            raise invalid(
                "optimizer_kwargs", optimizer_kwargs,
                f"no {torch_step} with low_precision='stochastic' (they make it torch's SGD step, which rounds to "
                "nearest); drop them or use low_precision='master'",
            )  # fmt: skip
        self.antithetic = antithetic
        self._lr = float(lr)
        self.optimizer_name = optimizer if not isinstance(optimizer, torch.optim.Optimizer) else "custom"
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.allow_cpu = bool(allow_cpu)
        self._user_optimizer = optimizer if isinstance(optimizer, torch.optim.Optimizer) else None
        self.optimizer: torch.optim.Optimizer | None = None
        self.num_steps = 0
        # Per evolved parameter: its float32 master copy (None: the parameter itself is updated), and the
        # (version counter, data pointer) the parameter had when last written from the master.
        self._masters: list[torch.Tensor | None] = []
        self._synced: list[tuple[int, int] | None] = []

    # ----------------------------------------------------------------- settings
    def _noise_settings(self) -> dict[str, Any]:
        """The settings that define a population's noise: step() must see the ones its perturb() used."""
        return {k: getattr(self, k) for k in ("sigma", "rank", "seed", "noise", "antithetic", "noise_reuse")}

    @property
    def sigma(self) -> float:
        """Noise scale, > 0."""
        return self._sigma

    @sigma.setter
    def sigma(self, value: float) -> None:
        check_number("sigma", value, 0.0, lo_inclusive=False)
        if value > _SIGMA_LARGE:
            warnings.warn(
                f"sigma={value!r} is the standard deviation of each weight's noise; values above {_SIGMA_LARGE:g} "
                "swamp any network's weights (expected about 0.001 to 1)",
                UserWarning,
                stacklevel=3,
            )
        self._sigma = float(value)

    @property
    def rank(self) -> int:
        """Rank ``r`` of each matrix perturbation, >= 1."""
        return self._rank

    @rank.setter
    def rank(self, value: int) -> None:
        check_int("rank", value, 1)
        if self.specs:
            self._check_rank_fits(value, self.specs)
        self._rank = value

    @staticmethod
    def _check_rank_fits(rank: int, specs: list[ParamSpec]) -> None:
        matrices = [s for s in specs if s.kind == "matrix"]
        if not matrices or rank <= max(max(s.m, s.n) for s in matrices):
            return  # rank > min(out, in) of small layers is normal (the default rank on a 2-action head)
        useful = _max_useful_rank(specs)
        msg = (
            f"rank={rank} exceeds every dimension of the model's matrix parameters; a perturbation A B^T has rank "
            f"at most {useful} (the largest min(out, in))"
        )
        if rank > max(s.param.numel() for s in matrices):  # more factor columns than any matrix has entries
            raise ValueError(msg + f"; expected rank <= {useful}")
        warnings.warn(msg + ", so the extra factors only cost time and memory", UserWarning, stacklevel=4)

    @property
    def noise_reuse(self) -> int:
        """``> 0`` reuses the noise for blocks of that many epochs."""
        return self._noise_reuse

    @noise_reuse.setter
    def noise_reuse(self, value: int) -> None:
        check_int("noise_reuse", value, 0)
        self._noise_reuse = value

    @property
    def fitness_shaping(self) -> FitnessShaping:
        """One of ``fitness.SHAPINGS``."""
        return self._fitness_shaping

    @fitness_shaping.setter
    def fitness_shaping(self, value: FitnessShaping) -> None:
        check_choice("fitness_shaping", value, SHAPINGS)
        if self._group_size and value == "none":
            raise ValueError(
                f"fitness_shaping='none' with group_size={self._group_size}: groups need 'zscore' or "
                "'centered_rank'; set group_size=0 first"
            )
        self._fitness_shaping = value

    @property
    def group_size(self) -> int:
        """``> 0`` shapes fitness within groups of consecutive members."""
        return self._group_size

    @group_size.setter
    def group_size(self, value: int) -> None:
        check_int("group_size", value, 0)
        if value and self._fitness_shaping == "none":
            raise ValueError(f"group_size={value} needs fitness_shaping 'zscore' or 'centered_rank', not 'none'")
        self._group_size = value

    @property
    def weight_decay(self) -> float:
        """Weight decay, >= 0."""
        return self._weight_decay

    @weight_decay.setter
    def weight_decay(self, value: float) -> None:
        check_number("weight_decay", value, 0.0)
        self._weight_decay = float(value)

    @property
    def seed(self) -> int:
        """The noise seed, in [0, 2**32)."""
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        check_int("seed", value, 0)
        if value >= _SEED_BOUND:
            raise invalid("seed", value, "an integer < 2**32 (a uint32 noise key)")
        self._seed = value

    @property
    def grad_clip(self) -> float | None:
        """Clip the global norm of the ES gradient to this value (None: no clipping)."""
        return self._grad_clip

    @grad_clip.setter
    def grad_clip(self, value: float | None) -> None:
        if value is not None:
            check_number("grad_clip", value, 0.0, lo_inclusive=False)
        self._grad_clip = value

    @property
    def noise(self) -> NoiseKind:
        """One of ``noise.NOISE_TYPES``."""
        return self._noise

    @noise.setter
    def noise(self, value: NoiseKind) -> None:
        check_choice("noise", value, NOISE_TYPES)
        self._noise = value

    @property
    def antithetic(self) -> bool:
        """Mirrored sampling: members ``2j`` and ``2j+1`` share noise with opposite signs."""
        return self._antithetic

    @antithetic.setter
    def antithetic(self, value: bool) -> None:
        value = _check_bool("antithetic", value)
        self._antithetic = value

    # ----------------------------------------------------------------- setup
    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value: float) -> None:
        check_number("lr", value, 0.0)
        self._lr = float(value)
        if self.optimizer is not None and self._user_optimizer is None:
            for group in self.optimizer.param_groups:
                group["lr"] = self._lr

    @property
    def model(self) -> nn.Module | None:
        """The user's model (inside the ESModule wrapper)."""
        return None if self.es_module is None else self.es_module.module

    @property
    def device(self) -> torch.device:
        self._require_setup("device")
        return self.specs[0].param.device

    def setup(self, model: nn.Module, freeze_unsupported: bool | None = None) -> None:
        """Attach to ``model`` (a plain module or an ESModule) and discover its evolved parameters."""
        if isinstance(model, ESModule):
            es_module = model
            if freeze_unsupported is not None:
                es_module.freeze_unsupported = freeze_unsupported
        elif isinstance(model, nn.Module):
            es_module = ESModule(model, freeze_unsupported=bool(freeze_unsupported))
        else:
            raise TypeError(f"setup(model): model must be an nn.Module or ESModule, got {type(model).__name__}")
        specs = es_module.specs()
        if not specs:
            raise ValueError("setup(model): the model has no evolved parameters (all frozen or none)")
        devices = {s.param.device for s in specs}
        if len(devices) > 1:
            raise ValueError(f"setup(model): evolved parameters are on several devices {sorted(map(str, devices))}")
        device = devices.pop()
        if device.type == "cpu" and not self.allow_cpu:
            raise RuntimeError(
                "EggrollStrategy.setup: the model is on the CPU. EGGROLL's speed comes from evaluating the whole "
                "population in one batched GPU pass with noise generated on the fly by Triton kernels; on a CPU "
                "that advantage is gone. Move the model to a GPU with model.cuda(), or opt in to the (slower, "
                "identical-noise) pure-torch CPU path with EggrollStrategy(..., allow_cpu=True)."
            )
        self._check_rank_fits(self._rank, specs)
        self.es_module = es_module
        self.specs = specs
        self._masters = self._make_masters(specs)
        self._synced = [self._param_key(s) if m is not None else None for s, m in zip(specs, self._masters)]
        self.optimizer = self._make_optimizer()

    def _make_masters(self, specs: list[ParamSpec]) -> list[torch.Tensor | None]:
        low = [s for s in specs if s.param.dtype in _LOW_PRECISION]
        if self.low_precision == "stochastic":
            fp16 = [s.name for s in low if s.param.dtype != torch.bfloat16]
            if fp16:
                raise ValueError(
                    f"setup(model): low_precision='stochastic' rounds into bfloat16 only, but parameters {fp16} are "
                    "float16; convert the model to bfloat16, or use low_precision='master' (float32 master weights)"
                )
            return [None] * len(specs)
        if low and self._user_optimizer is not None:
            warnings.warn(
                f"setup(model): parameters {[s.name for s in low]} are {low[0].param.dtype}, and the optimizer "
                "instance given to EggrollStrategy updates them in that dtype, where steps below half a step of "
                "the dtype are lost; pass optimizer='adam' (or another name) to get float32 master weights",
                UserWarning,
                stacklevel=3,
            )
            return [None] * len(specs)
        return [
            s.param.detach().to(torch.float32, memory_format=torch.contiguous_format).clone()
            if s.param.dtype in _LOW_PRECISION
            else None
            for s in specs
        ]

    @staticmethod
    def _param_key(spec: ParamSpec) -> tuple[int, int]:
        return spec.param._version, spec.param.data_ptr()

    def _target(self, i: int) -> torch.Tensor:
        """What the update of parameter ``i`` writes: its float32 master copy, or the parameter itself."""
        master = self._masters[i]
        return self.specs[i].param if master is None else master

    @torch.no_grad()
    def _sync_masters(self) -> None:
        """Adopt a change made to a low-precision parameter outside the strategy (its version counter moved)."""
        for i, (spec, master) in enumerate(zip(self.specs, self._masters)):
            if master is None or self._param_key(spec) == self._synced[i]:
                continue
            p = spec.param.detach()
            if not torch.equal(p, master.to(p.dtype)):  # rewritten with the same value (iterate()): keep the master
                master.copy_(p)
            self._synced[i] = self._param_key(spec)

    @torch.no_grad()
    def _refresh_params(self, copied: set[int]) -> None:
        """Write the master copies into the model's parameters (rounded to their dtype), except those ``copied``
        by the update's kernels; every parameter's version counter moves, as after an in-place op (a Triton
        kernel's write does not move it)."""
        for i, (spec, master) in enumerate(zip(self.specs, self._masters)):
            if master is not None and i not in copied:
                spec.param.detach().copy_(master)
            else:
                torch.autograd.graph.increment_version(spec.param)
            if master is not None:
                self._synced[i] = self._param_key(spec)

    def _make_optimizer(self) -> torch.optim.Optimizer | None:
        if self._user_optimizer is not None:
            return self._user_optimizer
        params = [self._target(i) for i in range(len(self.specs))]
        kw = dict(self.optimizer_kwargs)
        kw.setdefault("weight_decay", self.weight_decay)
        if self.optimizer_name is None:
            return None
        return _TORCH_OPTIMIZERS[self.optimizer_name](params, lr=self._lr, **kw)

    def _require_setup(self, what: str) -> None:
        if self.es_module is None:
            raise RuntimeError(f"{what} needs a model: call strategy.setup(model) first")

    def t_eff(self, epoch: int) -> int:
        """The effective epoch that keys the noise."""
        return epoch // self.noise_reuse if self.noise_reuse > 0 else epoch

    def spec(self, name: str) -> ParamSpec:
        for s in self.specs:
            if s.name == name:
                return s
        raise KeyError(f"unknown parameter name {name!r}; evolved parameters: {[s.name for s in self.specs]}")

    # ----------------------------------------------------------------- perturb
    def perturb(self, population_size: int, epoch: int = 0) -> PerturbationContext:
        """Context manager for one generation's perturbed evaluation; yields a ``PerturbationContext``."""
        self._require_setup("perturb()")
        check_int("population_size", population_size, 1)
        check_int("epoch", epoch, 0)
        if self.antithetic and population_size % 2:
            raise ValueError(
                f"population_size={population_size} is odd, but antithetic sampling pairs members (2j, 2j+1); "
                "use an even population or EggrollStrategy(..., antithetic=False)"
            )
        if self._active is not None:
            raise RuntimeError(
                f"perturb(population_size={population_size}, epoch={epoch}) inside the block of "
                f"perturb(population_size={self._active.population_size}, epoch={self._active.epoch}): step() "
                "updates from one population; leave the block, call step(fitnesses), then perturb() the next epoch"
            )
        self._last = (population_size, epoch)
        self._perturbed_with = self._noise_settings()
        return PerturbationContext(self, population_size, epoch)

    def _enter_block(self, ctx: PerturbationContext) -> None:
        """``ctx``'s ``with`` block begins: one block at a time, and step() updates from the population seen here."""
        if self._active is not None:
            raise RuntimeError(
                f"perturb(population_size={ctx.population_size}, epoch={ctx.epoch}) entered inside the block of "
                f"perturb(population_size={self._active.population_size}, epoch={self._active.epoch}); leave that "
                "block and step() first"
            )
        self._active = ctx
        self._last = (ctx.population_size, ctx.epoch)

    def _leave_block(self, ctx: PerturbationContext) -> None:
        if self._active is ctx:
            self._active = None

    # ----------------------------------------------------------------- update
    def step(self, fitnesses) -> dict[str, float]:
        """Update the parameters from the fitnesses of the last ``perturb()`` (higher is better).

        Args:
            fitnesses: ``(N,)`` one finite value per member.
        Returns:
            metrics: fitness_mean/std/min/max, grad_norm, update_norm, epoch, t_eff, lr, sigma, num_steps.
            ``update_norm`` is the measured change of the parameters (of their float32 master copies where they
            have one), summed in the same pass that writes them. One exception: a float32 matrix small enough
            that the fused plain step takes ``||G||`` from Gram matrices (``update.lowrank_apply_triton``, path 2)
            reports ``lr * ||G||`` for its change, which differs from the measured one by float rounding only.
        """
        if self._last is None:
            if self._stepped is not None:
                n, t = self._stepped
                raise RuntimeError(
                    f"step() already applied the update of perturb(population_size={n}, epoch={t}); a second step() "
                    "would apply the same update again. Call strategy.perturb(...) for the next epoch, evaluate it, "
                    "then step()"
                )
            raise RuntimeError("step() called before any perturb(): evaluate a population first")
        changed = {k: (v, getattr(self, k)) for k, v in self._perturbed_with.items() if getattr(self, k) != v}
        if changed:
            what = ", ".join(f"{k} from {old!r} to {new!r}" for k, (old, new) in changed.items())
            raise RuntimeError(
                f"step(): {what} since perturb(); the update must use the noise the population was evaluated "
                "with. Change settings before perturb(), or perturb() again"
            )
        num_members, epoch = self._last
        device = self.device
        f = check_fitness(fitnesses, num_members, device)
        z = shape_fitness(f, self.fitness_shaping, self.group_size)
        self._sync_masters()
        noise_ids, w_j = self._noise_weights(z, num_members)
        t_eff = self.t_eff(epoch)
        rule = self._own_rule()
        if self.low_precision == "stochastic" and (rule is None or rule.kind != "ascent"):
            raise RuntimeError(
                "step(): low_precision='stochastic' rounds the update step() applies itself, but the optimizer's "
                "step now goes through optimizer.step() (a hook or a wrapper on it, or changed options), which "
                "rounds to nearest; remove it or use low_precision='master'"
            )
        if rule is None:
            grad_sq, update_sq, copied = self._optimizer_step(noise_ids, w_j, t_eff)
        elif rule.kind == "ascent" and self.grad_clip is None:
            grad_sq, update_sq, copied = self._apply_fused(noise_ids, w_j, t_eff, rule)
        else:
            grad_sq, update_sq, copied = self._own_step(noise_ids, w_j, t_eff, rule)
        grad_norm, update_norm = grad_sq.sqrt(), update_sq.sqrt()
        self._refresh_params(copied)
        self.num_steps += 1
        self._stepped, self._last = self._last, None  # one update per evaluated population
        f_var, f_mean = torch.var_mean(f, unbiased=False)
        f_min, f_max = torch.aminmax(f)
        stats = torch.stack(
            [f_mean, f_var.sqrt(), f_min, f_max, grad_norm.float(), update_norm.float()]
        ).tolist()  # one device sync for all the metrics
        names = ("fitness_mean", "fitness_std", "fitness_min", "fitness_max", "grad_norm", "update_norm")
        return {
            **dict(zip(names, stats)),
            "epoch": epoch,
            "t_eff": self.t_eff(epoch),
            "lr": self._step_lr(),
            "sigma": self.sigma,
            "num_steps": self.num_steps,
        }

    def _step_lr(self) -> float:
        """The learning rate of the step just taken: the optimizer's first param group's (a user's LR scheduler
        changes it there), or ``lr`` for plain ascent."""
        if self.optimizer is None:
            return self._lr
        return float(self.optimizer.param_groups[0]["lr"])

    def _noise_weights(self, shaped: torch.Tensor, num_members: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(noise_ids, w_j)``: each noise index once, with ``w_j = sum_{i: j(i)=j} s_i z_i / (N sigma)``."""
        ids = torch.arange(num_members, device=shaped.device)
        j, s = member_noise_and_sign(ids, self.antithetic)
        num_noise = num_members // 2 if self.antithetic else num_members
        w = shaped * s / (num_members * self.sigma)
        w_j = torch.zeros(num_noise, dtype=torch.float32, device=shaped.device).index_add_(0, j, w)
        return torch.arange(num_noise, device=shaped.device), w_j

    def _own_rule(self) -> _OwnStep | None:
        """How ``step()`` applies the gradient itself (one pass per parameter), or None: through
        ``self.optimizer.step()``.

        Plain ascent (``optimizer=None``), a named ``"sgd"`` without momentum, and a named ``"adam"``/``"adamw"``
        without amsgrad are stepped here, with the hyperparameters read from the optimizer's param group at every
        step (an LR schedule through ``strategy.lr`` or the group itself works as with torch's step). The optimizer
        stays the state container: Adam's ``step``/``exp_avg``/``exp_avg_sq`` are kept in ``optimizer.state`` exactly
        as ``torch.optim.Adam`` keeps them, so ``state_dict()`` and a later ``optimizer.step()`` carry on. A user's
        optimizer instance, an optimizer with step hooks or a wrapped ``step`` (e.g. an LR scheduler attached to it),
        and the options this path does not implement (momentum, nesterov, amsgrad, capturable, fused,
        differentiable, tensor hyperparameters) go through ``optimizer.step()``.
        """
        if self.optimizer is None:
            return _OwnStep("ascent", alpha=self._lr, beta=1.0 - self._lr * self.weight_decay)
        opt = self.optimizer
        if self._user_optimizer is not None or len(opt.param_groups) != 1 or _has_step_hooks(opt):
            return None
        group = opt.param_groups[0]
        values = [group.get(k) for k in ("lr", "weight_decay", "eps", "momentum")] + list(group.get("betas", ()))
        if any(isinstance(v, torch.Tensor) for v in values):
            return None
        if any(group.get(k) for k in ("capturable", "fused", "differentiable")):
            return None
        lr, wd = float(group["lr"]), float(group["weight_decay"])
        if type(opt) is torch.optim.SGD and group["momentum"] == 0 and not group["nesterov"]:
            return _OwnStep("ascent", alpha=-lr if group["maximize"] else lr, beta=1.0 - lr * wd)
        if type(opt) in (torch.optim.Adam, torch.optim.AdamW) and not group["amsgrad"]:
            decoupled = bool(group.get("decoupled_weight_decay", False)) or type(opt) is torch.optim.AdamW
            return _OwnStep("adam", group=group, decoupled=decoupled)
        return None

    def _round_keys(self, i: int) -> tuple[int, int] | None:
        """The stochastic-rounding keys of parameter ``i`` at this step (None: it is rounded to nearest)."""
        spec = self.specs[i]
        if self.low_precision != "stochastic" or spec.param.dtype != torch.bfloat16:
            return None
        return kernels.round_keys(self.seed, self.num_steps, spec.index)

    def _copy_target(self, i: int) -> torch.Tensor | None:
        """The low-precision parameter a kernel writes beside its float32 master (None: no master, or not
        contiguous: ``_refresh_params`` copies it)."""
        param = self.specs[i].param
        if self._masters[i] is None or not param.is_contiguous():
            return None
        return param.detach()

    def _gradient(self, spec: ParamSpec, noise_ids, w_j, t_eff, scale: float = 1.0, dtype=torch.float32):
        """``(scale * g, ||g||^2)`` of one parameter: ``g`` in ``dtype`` and the parameter's shape; a matrix's
        ``spec.fixed_rows`` of ``g`` are zero."""
        common = dict(seed=self.seed, param_index=spec.index, t_eff=t_eff, noise_ids=noise_ids, noise=self.noise)
        if spec.kind == "matrix" and spec.fixed_rows:
            # Unperturbed in every member, so no gradient (nn.Embedding's padding row): built in float32, the rows
            # zeroed, then the norm (the kernel's would count them), the scale and the dtype.
            g, _ = kernels.lowrank_gradient(
                weights=w_j / math.sqrt(self.rank), m=spec.m, n=spec.n, rank=self.rank,
                factor_dtype=spec.param.dtype, **common,
            )  # fmt: skip
            g[list(spec.fixed_rows)] = 0.0
            sq = g.square().sum()
            g = (g if scale == 1 else g * scale).to(dtype)
        elif spec.kind == "matrix":
            # factor_dtype is the model's: bf16 factors for a bf16 model on the GPU (see update.py), whose
            # error is relative to the update, not to the weights.
            g, sq = kernels.lowrank_gradient(
                weights=w_j / math.sqrt(self.rank), m=spec.m, n=spec.n, rank=self.rank,
                factor_dtype=spec.param.dtype, scale=scale, dtype=dtype, **common,
            )  # fmt: skip
        else:
            g = kernels.vector_update(weights=w_j, numel=spec.param.numel(), **common)
            sq = g.square().sum()
            g = (g if scale == 1 else g * scale).to(dtype)
        return g.view(spec.param.shape), sq

    @torch.no_grad()
    def _apply_fused(self, noise_ids, w_j, t_eff, rule: _OwnStep):
        """``p = beta p + alpha g`` for every parameter, ``g`` never stored for matrices (the update, the master's
        rounded copy and both norms ride in the GEMM's epilogue); returns ``(||g||^2, ||change||^2, copied)``."""
        grad_sq = update_sq = torch.zeros((), dtype=torch.float32, device=noise_ids.device)
        copied = set()
        for i, spec in enumerate(self.specs):
            p, copy = self._target(i), self._copy_target(i)
            common = dict(seed=self.seed, param_index=spec.index, t_eff=t_eff, noise_ids=noise_ids, noise=self.noise)
            if spec.kind == "matrix" and not spec.fixed_rows:
                target = p.data.reshape(spec.m, spec.n)  # a view unless the parameter is not contiguous
                sq_g, sq_d = kernels.lowrank_apply(
                    target, rule.alpha, beta=rule.beta, copy=None if copy is None else copy.view(spec.m, spec.n),
                    weights=w_j / math.sqrt(self.rank), m=spec.m, n=spec.n, rank=self.rank,
                    factor_dtype=spec.param.dtype, round_keys=self._round_keys(i), **common,
                )  # fmt: skip
                if target.data_ptr() != p.data_ptr():
                    p.data.copy_(target.view(p.shape))
            else:  # a vector, or a matrix with fixed rows (its gradient is built, then those rows zeroed)
                g, sq_g = self._gradient(spec, noise_ids, w_j, t_eff)
                sq_d = kernels.ascent_step(
                    p.data, g, alpha=rule.alpha, beta=rule.beta, copy=copy, round_keys=self._round_keys(i)
                )
            grad_sq, update_sq = grad_sq + sq_g, update_sq + sq_d
            if copy is not None:
                copied.add(i)
        return grad_sq, update_sq, copied

    @torch.no_grad()
    def _own_step(self, noise_ids, w_j, t_eff, rule: _OwnStep):
        """Step each parameter in one pass: Adam without ``grad_clip`` on a matrix without fixed rows runs in the
        update GEMM's epilogue (``kernels.lowrank_adam``, no gradient in memory); otherwise ``g`` is built
        (float32, fixed rows zeroed) and ``kernels.ascent_step``/``adam_step`` apply it.

        Without ``grad_clip`` each parameter's gradient is freed before the next is built; with it, all are built
        first and the clip factor reaches the kernels as a device tensor (no host sync).
        """
        grad_sq = update_sq = torch.zeros((), dtype=torch.float32, device=noise_ids.device)
        copied, pending = set(), []
        for i, spec in enumerate(self.specs):
            # a matrix with fixed rows takes the path below: its gradient's fixed rows are zeroed before the step
            fused = rule.kind == "adam" and spec.kind == "matrix" and not spec.fixed_rows and self.grad_clip is None
            route = self._adam_in_epilogue
            fused = fused and (spec.m * spec.n < ADAM_G_MIN_NUMEL if route is None else route)
            if fused:
                p, copy = self._target(i).data, self._copy_target(i)
                state = self._adam_state(i)
                # (m, n) views of the parameter and its moments; a strided layout takes the path below.
                fused = all(t.is_contiguous() for t in (p, state["exp_avg"], state["exp_avg_sq"]))
            if fused:
                sq_g, sq_d = kernels.lowrank_adam(
                    p.view(spec.m, spec.n), state["exp_avg"].view(spec.m, spec.n),
                    state["exp_avg_sq"].view(spec.m, spec.n), self._adam_hyper(rule, state),
                    copy=None if copy is None else copy.view(spec.m, spec.n), seed=self.seed, param_index=spec.index,
                    t_eff=t_eff, noise_ids=noise_ids, weights=w_j / math.sqrt(self.rank), m=spec.m, n=spec.n,
                    rank=self.rank, noise=self.noise, factor_dtype=spec.param.dtype,
                )  # fmt: skip
                grad_sq, update_sq = grad_sq + sq_g, update_sq + sq_d
                if copy is not None:
                    copied.add(i)
                continue
            g, sq = self._gradient(spec, noise_ids, w_j, t_eff)
            grad_sq = grad_sq + sq
            if self.grad_clip is None:
                update_sq = update_sq + self._step_param(i, g, rule, None, copied)
            else:
                pending.append((i, g))
        if pending:
            scale = self._clip_scale(grad_sq)
            for i, g in pending:
                update_sq = update_sq + self._step_param(i, g, rule, scale, copied)
        return grad_sq, update_sq, copied

    def _clip_scale(self, grad_sq: torch.Tensor) -> torch.Tensor:
        """``grad_clip / ||g||`` where ``||g|| > grad_clip``, else 1 (0-d float32, on the device)."""
        norm = grad_sq.sqrt()
        return torch.where(norm > self.grad_clip, self.grad_clip / (norm + _CLIP_EPS), torch.ones_like(norm))

    def _adam_state(self, i: int) -> dict:
        """Parameter ``i``'s Adam state in ``self.optimizer``, initialized as torch does (step on the CPU:
        capturable and fused are off)."""
        p = self._target(i)
        state = self.optimizer.state[p]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @staticmethod
    def _adam_hyper(rule: _OwnStep, state: dict) -> kernels.AdamStep:
        """Count this step in ``state`` and return its hyperparameters (the param group's, read now)."""
        state["step"] += 1
        group = rule.group
        beta1, beta2 = group["betas"]
        return kernels.AdamStep(
            step=float(state["step"]), lr=float(group["lr"]), beta1=float(beta1), beta2=float(beta2),
            eps=float(group["eps"]), weight_decay=float(group["weight_decay"]), decoupled=rule.decoupled,
            grad_sign=1.0 if group["maximize"] else -1.0,
        )  # fmt: skip

    def _step_param(self, i: int, g: torch.Tensor, rule: _OwnStep, scale, copied: set) -> torch.Tensor:
        """One parameter's step by ``rule`` from its gradient ``g``; returns its measured ``||change||^2``."""
        p, copy = self._target(i).data, self._copy_target(i)
        if copy is not None:
            copied.add(i)
        if rule.kind == "ascent":
            return kernels.ascent_step(
                p, g, alpha=rule.alpha, beta=rule.beta, scale=scale, copy=copy, round_keys=self._round_keys(i)
            )
        state = self._adam_state(i)
        hyper = self._adam_hyper(rule, state)
        return kernels.adam_step(p, g, state["exp_avg"], state["exp_avg_sq"], hyper, scale=scale, copy=copy)

    @torch.no_grad()
    def _optimizer_step(self, noise_ids, w_j, t_eff):
        """``p.grad = -g`` and ``self.optimizer.step()``; the change is measured against a copy of the weights."""
        targets = [self._target(i) for i in range(len(self.specs))]
        clip = self.grad_clip is not None
        grad_sq = torch.zeros((), dtype=torch.float32, device=noise_ids.device)
        grads = []
        for spec, p in zip(self.specs, targets):
            # -g straight in the parameter's dtype (float32 first when it is clipped: one rounding either way).
            g, sq = self._gradient(spec, noise_ids, w_j, t_eff, scale=-1.0, dtype=torch.float32 if clip else p.dtype)
            grads.append(g)
            grad_sq = grad_sq + sq
        if clip:
            scale = self._clip_scale(grad_sq)
            grads = [g.mul_(scale).to(p.dtype) for g, p in zip(grads, targets)]
        before = [p.detach().clone() for p in targets]
        for p, g in zip(targets, grads):
            p.grad = g
        self.optimizer.step()
        for p in targets:
            p.grad = None
        changes = (torch.linalg.vector_norm(b.sub_(p), dtype=torch.float32) for p, b in zip(targets, before))
        update_sq = sum(c.square() for c in changes)
        return grad_sq, update_sq, set()

    def estimate_gradient(self, shaped: torch.Tensor, num_members: int, epoch: int) -> list[torch.Tensor]:
        """ES gradient (ascent direction) ``g = 1/(N sigma) sum_i z_i E_i`` of every parameter, float32."""
        noise_ids, w_j = self._noise_weights(shaped, num_members)
        t_eff = self.t_eff(epoch)
        return [self._gradient(spec, noise_ids, w_j, t_eff)[0] for spec in self.specs]

    # ----------------------------------------------------------------- checkpoints
    def config(self) -> dict[str, Any]:
        return {
            "sigma": self.sigma, "lr": self._lr, "rank": self.rank, "optimizer": self.optimizer_name,
            "optimizer_kwargs": self.optimizer_kwargs, "antithetic": self.antithetic,
            "noise_reuse": self.noise_reuse, "fitness_shaping": self.fitness_shaping,
            "group_size": self.group_size, "grad_clip": self.grad_clip, "weight_decay": self.weight_decay,
            "seed": self.seed, "noise": self.noise, "low_precision": self.low_precision,
        }  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-exactly: config, counters, optimizer state, evolved parameters.

        ``"master"`` maps the name of each low-precision parameter to its float32 master copy (see the class
        docstring); a state without it (older versions) loads with the masters taken from ``"params"``.
        """
        self._require_setup("state_dict()")
        self._sync_masters()
        return {
            "version": _STATE_VERSION,
            "config": self.config(),
            "num_steps": self.num_steps,
            "last_perturb": self._last,
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "params": {s.name: s.param.detach().clone() for s in self.specs},
            "master": {s.name: m.clone() for s, m in zip(self.specs, self._masters) if m is not None},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()`` into this (set-up) strategy and its model."""
        self._require_setup("load_state_dict()")
        if not isinstance(state, dict) or state.get("version") != _STATE_VERSION:
            raise ValueError("load_state_dict: not an EggrollStrategy state_dict (missing 'version': 1)")
        for key in ("config", "num_steps", "last_perturb", "optimizer", "params"):
            if key not in state:
                raise ValueError(f"load_state_dict: the state_dict has no {key!r} entry; expected a state_dict()")
        params, cfg = state["params"], state["config"]
        names = {s.name for s in self.specs}
        if not isinstance(params, dict) or set(params) != names:
            stored = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise ValueError(f"load_state_dict: parameters {stored} do not match the model's {sorted(names)}")
        masters = state.get("master", {})
        if not isinstance(masters, dict) or not set(masters) <= names:
            stored = sorted(masters) if isinstance(masters, dict) else type(masters).__name__
            raise ValueError(f"load_state_dict: master weights {stored} are not among the model's {sorted(names)}")
        checks = [(spec.name, params[spec.name], spec) for spec in self.specs]
        checks += [(f"{spec.name} (master)", masters[spec.name], spec) for spec in self.specs if spec.name in masters]
        for name, value, spec in checks:
            if not isinstance(value, torch.Tensor):
                raise ValueError(
                    f"load_state_dict: parameter {name!r} is stored as {type(value).__name__}; expected a "
                    f"tensor of shape {tuple(spec.param.shape)}"
                )
            if value.shape != spec.param.shape:
                raise ValueError(
                    f"load_state_dict: parameter {name!r} is stored with shape {tuple(value.shape)}, but the "
                    f"model's has shape {tuple(spec.param.shape)}"
                )
        # Check every setting on a scratch strategy (the properties' own validators) before changing anything.
        keys = ("sigma", "lr", "rank", "seed", "noise", "antithetic", "noise_reuse", "fitness_shaping", "group_size",
                "grad_clip", "weight_decay")  # fmt: skip
        if not isinstance(cfg, dict):
            raise ValueError(f"load_state_dict: 'config' must be a dict of settings, got {type(cfg).__name__}")
        for key in keys:
            if key not in cfg:
                raise ValueError(f"load_state_dict: the stored config has no {key!r}; expected a state_dict()")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                EggrollStrategy(**{k: cfg[k] for k in keys})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"load_state_dict: the stored config is invalid: {exc}") from exc
        self._check_rank_fits(cfg["rank"], self.specs)
        for key in ("rank", "seed", "noise", "antithetic", "noise_reuse", "group_size"):
            setattr(self, "_" + key, cfg[key])
        self._fitness_shaping = cfg["fitness_shaping"]
        self.sigma, self.grad_clip, self.weight_decay = cfg["sigma"], cfg["grad_clip"], cfg["weight_decay"]
        with torch.no_grad():
            for i, spec in enumerate(self.specs):
                value = masters.get(spec.name, params[spec.name])  # the float32 master when there is one
                master = self._masters[i]
                if master is None:
                    spec.param.copy_(value)
                else:
                    master.copy_(value)
                    spec.param.copy_(master)
                    self._synced[i] = self._param_key(spec)
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.lr = cfg["lr"]
        self.num_steps = state["num_steps"]
        self._last = tuple(state["last_perturb"]) if state["last_perturb"] is not None else None
        if self._last is not None:
            self._perturbed_with = self._noise_settings()
