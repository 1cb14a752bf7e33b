"""EggrollStrategy and PerturbationContext: the EGGROLL algorithm (see DESIGN.md, "The algorithm").

A population of ``N`` members; member ``i`` uses noise index ``j = i // 2`` and sign ``s = +1/-1`` (even/odd) with
antithetic sampling, else ``j = i``, ``s = +1``. A matrix parameter ``W (m x n)`` of member ``i`` is
``W + (sigma s / sqrt(r)) A_j B_j^T``; any other parameter ``p`` is ``p + sigma s eps_j``. Factors and ``eps`` come
from the counter-based generator of ``noise.py`` at ``(seed, k, t_eff, j)`` and are regenerated, never stored.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from . import kernels
from .fitness import SHAPINGS, check_fitness, shape_fitness
from .module import ESModule, ParamSpec
from .noise import NOISE_TYPES, STREAM_A, STREAM_B, factor_noise, member_noise_and_sign, vector_noise

__all__ = ["EggrollStrategy", "PerturbationContext"]

_OPTIMIZERS = ("adam", "adamw", "sgd", None)
# The torch path keeps a population's factors for the duration of one ``perturb()`` block when they are this
# small (fp32 elements): RL rollouts call the policy hundreds of times with the same noise.
_CACHE_ELEMENTS = 1 << 23
_METADATA_FUNCS = {
    "__get__", "size", "dim", "numel", "__len__", "is_floating_point", "is_contiguous", "data_ptr",
    "element_size", "stride", "__repr__", "__format__", "type", "is_complex", "get_device", "nelement",
    "ndimension", "__hash__", "storage_offset", "untyped_storage", "_is_view", "has_names",
}  # fmt: skip
# Property reads that hand out an evolved parameter without going through an op the population mode sees: the
# member's value would silently be the unperturbed one.
_UNPERTURBED_VIEWS = frozenset({"T", "mT", "H", "mH", "data"})
# Ops that reshape, reduce or mix a parameter's elements: substituting each row's value (R, *shape) into them is
# wrong, so a free parameter used by one raises (x @ W is handled on its own, as one noise per parameter).
_NOT_ELEMENTWISE = frozenset({
    "mm", "bmm", "matmul", "__matmul__", "__rmatmul__", "einsum", "tensordot", "inner", "outer", "dot", "mv",
    "kron", "sum", "mean", "prod", "std", "var", "norm", "amax", "amin", "max", "min", "logsumexp", "cumsum",
    "cumprod", "softmax", "log_softmax", "t", "transpose", "permute", "reshape", "view", "flatten", "unsqueeze",
    "squeeze", "expand", "repeat", "cat", "stack", "split", "chunk", "__getitem__", "index_select", "gather",
    "diag", "trace", "flip", "roll", "linalg_norm", "vector_norm", "matrix_norm",
})  # fmt: skip


# Above this a member's weights move by more than any network's weights are scaled: sigma=1e30 is a typo, not a
# setting (the perturbed activations overflow float32 after two layers).
_SIGMA_LARGE = 1e3


def _check_number(name: str, value, lo: float | None = None, lo_inclusive: bool = True, integer: bool = False):
    kind = "an integer" if integer else "a finite number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (not integer and not math.isfinite(value)):
        raise TypeError(f"{name} must be {kind}, got {value!r}")
    if lo is not None and (value < lo or (value == lo and not lo_inclusive)):
        raise ValueError(f"{name} must be {'>=' if lo_inclusive else '>'} {lo}, got {value!r}")


def _check_bool(name: str, value) -> bool:
    if type(value).__name__ not in ("bool", "bool_") and not (isinstance(value, int) and value in (0, 1)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
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
        optimizer: ``"adam"`` (default), ``"adamw"``, ``"sgd"``, ``None`` (plain ``p += lr * g``) or a
            ``torch.optim.Optimizer`` instance over the model's parameters.
        optimizer_kwargs: extra keyword arguments for the named optimizer.
        antithetic: mirrored sampling (members ``2j`` and ``2j+1`` share noise with opposite signs).
        noise_reuse: ``> 0`` reuses the noise for blocks of that many epochs (``t_eff = epoch // noise_reuse``).
        fitness_shaping: ``"zscore"``, ``"centered_rank"`` or ``"none"``.
        group_size: ``> 0`` shapes fitness within groups of consecutive members (see ``fitness.shape_fitness``).
        grad_clip: clip the global norm of the ES gradient to this value (None: no clipping).
        weight_decay: passed to the torch optimizer; with ``optimizer=None`` it is ``p -= lr * wd * p``.
        seed: the noise seed (uint32).
        allow_cpu: run on CPU tensors through the pure-torch path (tests, CI, small experiments).
        noise: ``"gaussian"`` (default) or ``"rademacher"`` (+-1 factors, cheaper to generate).
    """

    def __init__(
        self,
        sigma: float = 0.1,
        lr: float = 0.01,
        rank: int = 4,
        optimizer: str | torch.optim.Optimizer | None = "adam",
        optimizer_kwargs: dict | None = None,
        antithetic: bool = True,
        noise_reuse: int = 0,
        fitness_shaping: str = "zscore",
        group_size: int = 0,
        grad_clip: float | None = None,
        weight_decay: float = 0.0,
        seed: int = 0,
        allow_cpu: bool = False,
        noise: str = "gaussian",
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
        _check_number("lr", lr, 0.0)
        self.rank = rank
        self.noise_reuse = noise_reuse
        self.fitness_shaping = fitness_shaping
        self.group_size = group_size
        self.weight_decay = weight_decay
        self.seed = seed
        self.grad_clip = grad_clip
        if not (optimizer in _OPTIMIZERS or isinstance(optimizer, torch.optim.Optimizer)):
            raise ValueError(
                f"optimizer={optimizer!r} is not supported; expected 'adam', 'adamw', 'sgd', None or a "
                "torch.optim.Optimizer instance"
            )
        self.noise = noise
        self.antithetic = antithetic
        self._lr = float(lr)
        self.optimizer_name = optimizer if not isinstance(optimizer, torch.optim.Optimizer) else "custom"
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self.allow_cpu = bool(allow_cpu)
        self._user_optimizer = optimizer if isinstance(optimizer, torch.optim.Optimizer) else None
        self.optimizer: torch.optim.Optimizer | None = None
        self.num_steps = 0

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
        _check_number("sigma", value, 0.0, lo_inclusive=False)
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
        _check_number("rank", value, 1, integer=True)
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
        _check_number("noise_reuse", value, 0, integer=True)
        self._noise_reuse = value

    @property
    def fitness_shaping(self) -> str:
        """One of ``fitness.SHAPINGS``."""
        return self._fitness_shaping

    @fitness_shaping.setter
    def fitness_shaping(self, value: str) -> None:
        if not isinstance(value, str) or value not in SHAPINGS:
            raise ValueError(f"fitness_shaping={value!r} is not supported; expected one of {SHAPINGS}")
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
        _check_number("group_size", value, 0, integer=True)
        if value and self._fitness_shaping == "none":
            raise ValueError(f"group_size={value} needs fitness_shaping 'zscore' or 'centered_rank', not 'none'")
        self._group_size = value

    @property
    def weight_decay(self) -> float:
        """Weight decay, >= 0."""
        return self._weight_decay

    @weight_decay.setter
    def weight_decay(self, value: float) -> None:
        _check_number("weight_decay", value, 0.0)
        self._weight_decay = float(value)

    @property
    def seed(self) -> int:
        """The noise seed, in [0, 2**32)."""
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        _check_number("seed", value, 0, integer=True)
        if value >= 2**32:
            raise ValueError(f"seed must be < 2**32 (a uint32 noise key), got {value}")
        self._seed = value

    @property
    def grad_clip(self) -> float | None:
        """Clip the global norm of the ES gradient to this value (None: no clipping)."""
        return self._grad_clip

    @grad_clip.setter
    def grad_clip(self, value: float | None) -> None:
        if value is not None:
            _check_number("grad_clip", value, 0.0, lo_inclusive=False)
        self._grad_clip = value

    @property
    def noise(self) -> str:
        """One of ``noise.NOISE_TYPES``."""
        return self._noise

    @noise.setter
    def noise(self, value: str) -> None:
        if not isinstance(value, str) or value not in NOISE_TYPES:
            raise ValueError(f"noise={value!r} is not supported; expected one of {NOISE_TYPES}")
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
        _check_number("lr", value, 0.0)
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
        self.optimizer = self._make_optimizer()

    def _make_optimizer(self) -> torch.optim.Optimizer | None:
        if self._user_optimizer is not None:
            return self._user_optimizer
        params = [s.param for s in self.specs]
        kw = dict(self.optimizer_kwargs)
        kw.setdefault("weight_decay", self.weight_decay)
        if self.optimizer_name == "adam":
            return torch.optim.Adam(params, lr=self._lr, **kw)
        if self.optimizer_name == "adamw":
            return torch.optim.AdamW(params, lr=self._lr, **kw)
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(params, lr=self._lr, **kw)
        return None

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
        _check_number("population_size", population_size, 1, integer=True)
        _check_number("epoch", epoch, 0, integer=True)
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

    # ----------------------------------------------------------------- update
    def step(self, fitnesses) -> dict[str, float]:
        """Update the parameters from the fitnesses of the last ``perturb()`` (higher is better).

        Args:
            fitnesses: ``(N,)`` one finite value per member.
        Returns:
            metrics: fitness_mean/std/min/max, grad_norm, update_norm, epoch, t_eff, lr, sigma, num_steps.
            ``update_norm`` is the measured change of the parameters; with ``optimizer=None``, no weight decay and
            no ``grad_clip`` the step is added straight into the parameters (fused, no copy of the weights) and it
            is ``lr * grad_norm``.
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
        if isinstance(fitnesses, torch.Tensor) and fitnesses.is_meta:  # no data to copy: say so, not NotImplemented
            raise ValueError(f"fitnesses are on the meta device (shape only, no values); expected values on {device}")
        f = check_fitness(fitnesses, num_members, device)
        z = shape_fitness(f, self.fitness_shaping, self.group_size)
        if self.optimizer is None and not self.weight_decay and self.grad_clip is None:
            # Plain ascent: add lr * g straight into each parameter (no gradient buffer, no copy of the weights).
            grad_norm = self._apply_fused(z, num_members, epoch)
            update_norm = self._lr * grad_norm
        else:
            grads = self.estimate_gradient(z, num_members, epoch)
            grad_norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
            if self.grad_clip is not None and grad_norm > self.grad_clip:
                scale = self.grad_clip / (grad_norm + 1e-12)
                grads = [g * scale for g in grads]
            before = [s.param.detach().clone() for s in self.specs]
            self._apply(grads)
            update_norm = torch.sqrt(
                sum((s.param.detach() - b).float().pow(2).sum() for s, b in zip(self.specs, before))
            )
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
            "lr": self._lr,
            "sigma": self.sigma,
            "num_steps": self.num_steps,
        }

    def _noise_weights(self, shaped: torch.Tensor, num_members: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(noise_ids, w_j)``: each noise index once, with ``w_j = sum_{i: j(i)=j} s_i z_i / (N sigma)``."""
        ids = torch.arange(num_members, device=shaped.device)
        j, s = member_noise_and_sign(ids, self.antithetic)
        num_noise = num_members // 2 if self.antithetic else num_members
        w = shaped * s / (num_members * self.sigma)
        w_j = torch.zeros(num_noise, dtype=torch.float32, device=shaped.device).index_add_(0, j, w)
        return torch.arange(num_noise, device=shaped.device), w_j

    @torch.no_grad()
    def _apply_fused(self, shaped: torch.Tensor, num_members: int, epoch: int) -> torch.Tensor:
        """``p += lr * g`` for every parameter, ``g`` never stored for matrices; returns ``||g||``."""
        noise_ids, w_j = self._noise_weights(shaped, num_members)
        t_eff = self.t_eff(epoch)
        sq = torch.zeros((), dtype=torch.float32, device=shaped.device)
        for spec in self.specs:
            common = dict(seed=self.seed, param_index=spec.index, t_eff=t_eff, noise_ids=noise_ids, noise=self.noise)
            if spec.kind == "matrix":
                target = spec.param.data.reshape(spec.m, spec.n)  # a view unless the parameter is not contiguous
                sq = sq + kernels.lowrank_apply(
                    target, self._lr, weights=w_j / math.sqrt(self.rank), m=spec.m, n=spec.n, rank=self.rank,
                    factor_dtype=spec.param.dtype, **common,
                )  # fmt: skip
                if not spec.param.is_contiguous():
                    spec.param.data.copy_(target.view(spec.param.shape))
            else:
                g = kernels.vector_update(weights=w_j, numel=spec.param.numel(), **common)
                sq = sq + g.square().sum()
                spec.param.data.add_(g.view(spec.param.shape).to(spec.param.dtype), alpha=self._lr)
        return torch.sqrt(sq)

    def estimate_gradient(self, shaped: torch.Tensor, num_members: int, epoch: int) -> list[torch.Tensor]:
        """ES gradient (ascent direction) ``g = 1/(N sigma) sum_i z_i E_i`` of every parameter, float32."""
        noise_ids, w_j = self._noise_weights(shaped, num_members)
        t_eff = self.t_eff(epoch)
        grads = []
        for spec in self.specs:
            common = dict(seed=self.seed, param_index=spec.index, t_eff=t_eff, noise_ids=noise_ids, noise=self.noise)
            if spec.kind == "matrix":
                g = kernels.lowrank_update(
                    weights=w_j / math.sqrt(self.rank), m=spec.m, n=spec.n, rank=self.rank,
                    factor_dtype=spec.param.dtype, **common,
                )  # fmt: skip
            else:
                g = kernels.vector_update(weights=w_j, numel=spec.param.numel(), **common)
            grads.append(g.view(spec.param.shape))
        return grads

    @torch.no_grad()
    def _apply(self, grads: list[torch.Tensor]) -> None:
        if self.optimizer is None:
            for spec, g in zip(self.specs, grads):
                p = spec.param
                if self.weight_decay:
                    p.mul_(1.0 - self._lr * self.weight_decay)
                p.add_(g.to(p.dtype), alpha=self._lr)
            return
        for spec, g in zip(self.specs, grads):
            spec.param.grad = (-g).to(spec.param.dtype)
        self.optimizer.step()
        for spec in self.specs:
            spec.param.grad = None

    # ----------------------------------------------------------------- checkpoints
    def config(self) -> dict[str, Any]:
        return {
            "sigma": self.sigma, "lr": self._lr, "rank": self.rank, "optimizer": self.optimizer_name,
            "optimizer_kwargs": self.optimizer_kwargs, "antithetic": self.antithetic,
            "noise_reuse": self.noise_reuse, "fitness_shaping": self.fitness_shaping,
            "group_size": self.group_size, "grad_clip": self.grad_clip, "weight_decay": self.weight_decay,
            "seed": self.seed, "noise": self.noise,
        }  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-exactly: config, counters, optimizer state, evolved parameters."""
        self._require_setup("state_dict()")
        return {
            "version": 1,
            "config": self.config(),
            "num_steps": self.num_steps,
            "last_perturb": self._last,
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "params": {s.name: s.param.detach().clone() for s in self.specs},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()`` into this (set-up) strategy and its model."""
        self._require_setup("load_state_dict()")
        if not isinstance(state, dict) or state.get("version") != 1:
            raise ValueError("load_state_dict: not an EggrollStrategy state_dict (missing 'version': 1)")
        for key in ("config", "num_steps", "last_perturb", "optimizer", "params"):
            if key not in state:
                raise ValueError(f"load_state_dict: the state_dict has no {key!r} entry; expected a state_dict()")
        params, cfg = state["params"], state["config"]
        names = {s.name for s in self.specs}
        if not isinstance(params, dict) or set(params) != names:
            stored = sorted(params) if isinstance(params, dict) else type(params).__name__
            raise ValueError(f"load_state_dict: parameters {stored} do not match the model's {sorted(names)}")
        for spec in self.specs:
            value = params[spec.name]
            if not isinstance(value, torch.Tensor):
                raise ValueError(
                    f"load_state_dict: parameter {spec.name!r} is stored as {type(value).__name__}; expected a "
                    f"tensor of shape {tuple(spec.param.shape)}"
                )
            if value.shape != spec.param.shape:
                raise ValueError(
                    f"load_state_dict: parameter {spec.name!r} is stored with shape {tuple(value.shape)}, but the "
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
            for spec in self.specs:
                spec.param.copy_(params[spec.name])
        if self.optimizer is not None and state["optimizer"] is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.lr = cfg["lr"]
        self.num_steps = state["num_steps"]
        self._last = tuple(state["last_perturb"]) if state["last_perturb"] is not None else None
        if self._last is not None:
            self._perturbed_with = self._noise_settings()


class PerturbationContext:
    """One generation's population: evaluates members, exposes their factors. Made by ``strategy.perturb()``."""

    def __init__(self, strategy: EggrollStrategy, population_size: int, epoch: int):
        self.strategy = strategy
        self._population_size = population_size
        self.epoch = epoch
        self.t_eff = strategy.t_eff(epoch)
        self._active = False
        self._cache: dict[tuple[int, str], torch.Tensor] = {}
        self._by_id = {id(s.param): s for s in strategy.specs}
        self._checked_ids: tuple | None = None  # (member_ids tensor, its _version, paired) last validated

    @property
    def population_size(self) -> int:
        return self._population_size

    @property
    def num_noise(self) -> int:
        return self._population_size // 2 if self.strategy.antithetic else self._population_size

    def __enter__(self) -> PerturbationContext:
        st = self.strategy
        if st._active is not None:
            raise RuntimeError(
                f"perturb(population_size={self._population_size}, epoch={self.epoch}) entered inside the block of "
                f"perturb(population_size={st._active.population_size}, epoch={st._active.epoch}); leave that "
                "block and step() first"
            )
        self._active = True
        st._active = self
        st._last = (self._population_size, self.epoch)  # step() updates from the population evaluated here
        return self

    def __exit__(self, *exc) -> None:
        self._active = False
        self._cache.clear()
        if self.strategy._active is self:
            self.strategy._active = None

    def _check_active(self, what: str) -> None:
        if not self._active:
            raise RuntimeError(f"{what} must be called inside the `with strategy.perturb(...) as pop:` block")

    # ------------------------------------------------------------- inspection
    def _check_member(self, member_id) -> int:
        if isinstance(member_id, torch.Tensor) and member_id.numel() == 1:
            member_id = int(member_id)
        if isinstance(member_id, bool) or not isinstance(member_id, int):
            raise TypeError(f"member_id must be an int, got {member_id!r}")
        if not 0 <= member_id < self._population_size:
            raise IndexError(f"member_id={member_id} is out of range [0, {self._population_size})")
        return member_id

    def _sign_and_noise(self, member_id: int) -> tuple[float, int]:
        j, s = member_noise_and_sign(torch.tensor(member_id), self.strategy.antithetic)
        return float(s), int(j)

    def get_factors(self, member_id: int, param_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-rank factors ``(A', B)`` of a matrix parameter: the member's weight is ``W + A' @ B.T``.

        Returns:
            ``A'`` ``(m, r)`` = ``(sigma s / sqrt(r)) A`` and ``B`` ``(n, r)``, float32 (``n`` = in_features, or
            in_channels * kernel elements for a convolution).
        """
        member_id = self._check_member(member_id)
        spec = self.strategy.spec(param_name)
        if spec.kind != "matrix":
            raise ValueError(
                f"parameter {param_name!r} ({spec.layer}) is perturbed full-rank, not low-rank; "
                "use perturbation(member_id, name) to see its delta"
            )
        st = self.strategy
        sign, j = self._sign_and_noise(member_id)
        ids = torch.tensor([j], device=spec.param.device)
        A = self._noise(spec, "A", ids)[0]
        B = self._noise(spec, "B", ids)[0]
        return A * (st.sigma * sign / math.sqrt(st.rank)), B

    def perturbation(self, member_id: int, param_name: str) -> torch.Tensor:
        """Dense delta ``sigma E_i`` of any parameter, in the parameter's shape (float32). Inspection/tests only."""
        member_id = self._check_member(member_id)
        spec = self.strategy.spec(param_name)
        if spec.kind == "matrix":
            A, B = self.get_factors(member_id, param_name)
            return (A @ B.T).view(spec.param.shape)
        sign, j = self._sign_and_noise(member_id)
        eps = self._noise(spec, "eps", torch.tensor([j], device=spec.param.device))[0]
        return (self.strategy.sigma * sign * eps).view(spec.param.shape)

    # ------------------------------------------------------------- evaluation
    def _check_model(self, model: nn.Module) -> None:
        st = self.strategy
        if model is not st.model and model is not st.es_module:
            raise ValueError(
                "batched_forward(model, ...): model is not the module this strategy was set up with; "
                "pass the same model (or its ESModule) given to strategy.setup()"
            )

    def _member_ids(self, x: torch.Tensor, member_ids) -> tuple[torch.Tensor, bool]:
        """Validated ``(R,)`` int64 member ids, and whether rows ``2q``/``2q+1`` share their noise index.

        Checking the values costs one host sync; a rollout passes the same ids tensor at every step, so the
        result is remembered for that tensor (and its in-place version counter).
        """
        rows = x.shape[0]
        if member_ids is None:
            if rows != self._population_size:
                raise ValueError(
                    f"x has {rows} rows but population_size is {self._population_size}; without member_ids each "
                    "row is one member, so pass member_ids (one member index per row)"
                )
            return torch.arange(rows, device=x.device), self.strategy.antithetic
        ids = torch.as_tensor(member_ids, device=x.device)
        if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
            raise TypeError(f"member_ids must be an integer tensor, got dtype {ids.dtype}")
        if ids.dim() != 1 or ids.shape[0] != rows:
            raise ValueError(f"member_ids must have shape ({rows},) (one per row of x), got {tuple(ids.shape)}")
        ids = ids.to(torch.int64)
        key = (member_ids, getattr(member_ids, "_version", None))
        if self._checked_ids is not None and self._checked_ids[0] is key[0] and self._checked_ids[1] == key[1]:
            return ids, self._checked_ids[2]
        if rows == 0:
            return ids, False
        j = ids // 2 if self.strategy.antithetic else ids
        share = (j[0::2] == j[1::2]).all() if rows % 2 == 0 else torch.zeros((), dtype=torch.bool, device=ids.device)
        lo, hi, paired = torch.stack([ids.min(), ids.max(), share.to(torch.int64)]).tolist()
        if lo < 0 or hi >= self._population_size:
            raise IndexError(f"member_ids must lie in [0, {self._population_size}), got values in [{lo}, {hi}]")
        if isinstance(member_ids, torch.Tensor):
            self._checked_ids = (*key, bool(paired))
        return ids, bool(paired)

    def batched_forward(self, model: nn.Module, x: torch.Tensor, member_ids=None):
        """Forward pass where row ``i`` of ``x`` runs as member ``member_ids[i]``.

        Args:
            model: the model given to ``setup()``; its layers must keep the batch axis first.
            x: ``(R, *input_dims)``.
            member_ids: ``(R,)`` int member of each row; default ``arange(R)`` (requires ``R == N``).
        Returns:
            the model's output for ``(R, ...)`` rows, computed without autograd.
        """
        self._check_active("batched_forward()")
        self._check_model(model)
        if not isinstance(x, torch.Tensor) or x.dim() < 1:
            raise TypeError("batched_forward: x must be a tensor with a leading batch axis (R, ...)")
        ids, paired = self._member_ids(x, member_ids)
        with torch.no_grad(), _PopulationMode(self, ids, paired=paired):
            return model(x)

    def iterate(self) -> Iterator[int]:
        """Yield each member id; while it is current, a plain ``model(x)`` runs as that member.

        The member's parameters are written into the model for the body of the loop (one member at a time) and
        the original values are restored exactly afterwards, also on ``break`` or an exception.
        """
        self._check_active("iterate()")
        specs = self.strategy.specs
        originals = [s.param.detach().clone() for s in specs]
        try:
            for member in range(self._population_size):
                with torch.no_grad():
                    for spec, orig in zip(specs, originals):
                        delta = self.perturbation(member, spec.name)
                        spec.param.copy_((orig.to(torch.float32) + delta).to(orig.dtype))
                yield member
        finally:
            with torch.no_grad():
                for spec, orig in zip(specs, originals):
                    spec.param.copy_(orig)

    # ------------------------------------------------------------- noise for the torch path
    def _noise(self, spec: ParamSpec, what: str, uniq: torch.Tensor) -> torch.Tensor:
        """A (U, m, r), B (U, n, r) or eps (U, numel) for noise indices ``uniq``, cached when small."""
        st = self.strategy
        rows = {"A": spec.m, "B": spec.n, "eps": spec.param.numel()}[what]
        total = self.num_noise * rows * (st.rank if what != "eps" else 1)
        device = spec.param.device

        def make(ids):
            if what == "eps":
                return vector_noise(st.seed, spec.index, self.t_eff, ids, rows, st.noise, device)
            stream = STREAM_A if what == "A" else STREAM_B
            return factor_noise(st.seed, spec.index, self.t_eff, ids, rows, st.rank, stream, st.noise, device)

        if total > _CACHE_ELEMENTS:
            return make(uniq)
        key = (spec.index, what)
        if key not in self._cache:
            self._cache[key] = make(torch.arange(self.num_noise, device=device))
        return self._cache[key][uniq]


def _leading(x: torch.Tensor, rows: int, func: str) -> None:
    if x.dim() == 0 or x.shape[0] != rows:
        raise ValueError(
            f"batched_forward: {func} got an input of shape {tuple(x.shape)} whose leading axis is not the "
            f"{rows} rows of the batch; layers must keep the batch axis first"
        )


class _PopulationMode(TorchFunctionMode):
    """Intercepts the functional calls that use evolved parameters and adds each row's perturbation."""

    def __init__(self, ctx: PerturbationContext, member_ids: torch.Tensor, paired: bool = False):
        super().__init__()
        self.paired = paired  # rows 2q and 2q+1 of the batch share their noise index
        self.ctx = ctx
        self.st = ctx.strategy
        self.ids = member_ids
        self.rows = member_ids.shape[0]
        self.j, self.s = member_noise_and_sign(member_ids, self.st.antithetic)
        self._uniq: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- helpers
    def _spec(self, t) -> ParamSpec | None:
        return self.ctx._by_id.get(id(t)) if isinstance(t, nn.Parameter) else None

    def _unique(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._uniq is None:
            self._uniq = torch.unique(self.j, return_inverse=True)
        return self._uniq

    def _row_delta(self, spec: ParamSpec) -> torch.Tensor:
        """Per-row perturbation ``sigma s eps_j`` of a non-matrix parameter, flattened: ``(R, numel)`` float32."""
        uniq, inv = self._unique()
        return (self.st.sigma * self.s)[:, None] * self.ctx._noise(spec, "eps", uniq)[inv]

    def _row_vector(self, spec: ParamSpec) -> torch.Tensor:
        """Per-row value of a non-matrix parameter, flattened: ``(R, numel)`` float32."""
        return spec.param.detach().to(torch.float32).reshape(1, -1) + self._row_delta(spec)

    def _row_factors(self, spec: ParamSpec) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row ``A' (R, m, r)`` (scaled) and ``B (R, n, r)``."""
        uniq, inv = self._unique()
        A = self.ctx._noise(spec, "A", uniq)[inv]
        B = self.ctx._noise(spec, "B", uniq)[inv]
        scale = (self.st.sigma / math.sqrt(self.st.rank)) * self.s
        return A * scale[:, None, None], B

    def _expand_ids(self, x: torch.Tensor, func: str) -> tuple[torch.Tensor, int]:
        _leading(x, self.rows, func)
        per_row = x[0].numel() // x.shape[-1] if x.dim() > 1 else 1
        return self.ids.repeat_interleave(per_row), per_row

    # -- dispatch
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            return self._linear(*args, **kwargs)
        if func is F.conv1d or func is F.conv2d:
            return self._conv(func, *args, **kwargs)
        if func is F.embedding:
            return self._embedding(*args, **kwargs)
        if func in (F.layer_norm, F.group_norm) or func is getattr(F, "rms_norm", None):
            return self._norm(func, *args, **kwargs)
        flat = list(args) + list(kwargs.values())
        specs = [self._spec(a) for a in flat]
        if not any(specs):
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name == "__get__" and getattr(getattr(func, "__self__", None), "__name__", "") in _UNPERTURBED_VIEWS:
            spec = next(sp for sp in specs if sp is not None)
            raise NotImplementedError(
                f"batched_forward: parameter {spec.name!r} is read as .{func.__self__.__name__}, which bypasses "
                "the member's perturbation; use the parameter itself (F.linear(x, W) for x @ W.T)"
            )
        if name in _METADATA_FUNCS:
            return func(*args, **kwargs)
        if name in ("matmul", "__matmul__", "mm") and not kwargs and len(args) == 2:
            return self._matmul(func, *args)
        return self._elementwise(func, args, kwargs)

    def _linear(self, x, weight, bias=None):
        ws, bs = self._spec(weight), self._spec(bias)
        if ws is None and bs is None:
            return F.linear(x, weight, bias)
        if ws is not None and ws.kind != "matrix":
            return self._linear_full_rank(x, weight, bias, ws, bs)
        _leading(x, self.rows, "linear")
        return kernels.perturbed_linear(
            x, weight, bias, self.ids, seed=self.st.seed, weight_index=ws.index if ws else None,
            bias_index=bs.index if bs else None, t_eff=self.ctx.t_eff, sigma=self.st.sigma, rank=self.st.rank,
            antithetic=self.st.antithetic, noise=self.st.noise, paired=self.paired,
            noise_source=lambda what, uniq: self.ctx._noise(bs if what == "eps" else ws, what, uniq),
        )  # fmt: skip

    def _row_matrix(self, spec: ParamSpec) -> torch.Tensor:
        """Per-row value of a free (full-rank noise) parameter in its own shape: ``(R, *shape)`` float32."""
        return self._row_vector(spec).reshape(self.rows, *spec.param.shape)

    def _linear_full_rank(self, x, weight, bias, ws: ParamSpec, bs: ParamSpec | None):
        """``F.linear`` with a free 2-D parameter as weight: its noise is full-rank, as in the update."""
        _leading(x, self.rows, "linear")
        if weight.dim() != 2:
            raise NotImplementedError(f"batched_forward: F.linear with the {weight.dim()}-D weight {ws.name!r}")
        xr = x.reshape(self.rows, -1, x.shape[-1]).to(torch.float32)
        y = torch.bmm(xr, self._row_matrix(ws).transpose(1, 2))  # (R, L, out)
        if bias is not None:
            b = self._row_vector(bs) if bs is not None else bias.detach().to(torch.float32).reshape(1, -1)
            y = y + b[:, None, :]
        return y.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])

    def _matmul(self, func, a, b):
        """``x @ W`` with ``W`` a free 2-D parameter ``(in, out)``: each row's ``x`` times its member's ``W``."""
        sa, sb = self._spec(a), self._spec(b)
        fname = getattr(func, "__name__", str(func))
        if sa is None and sb is not None and sb.kind != "matrix" and b.dim() == 2 and a.dim() >= 2:
            _leading(a, self.rows, fname)
            dtype = torch.result_type(a, b)
            ar = a.reshape(self.rows, -1, a.shape[-1]).to(torch.float32)
            return torch.bmm(ar, self._row_matrix(sb)).to(dtype).reshape(*a.shape[:-1], b.shape[1])
        spec = sa or sb
        raise NotImplementedError(
            f"batched_forward: parameter {spec.name!r} ({spec.layer}) is used by {fname} in a way EGGROLL cannot "
            "perturb per row; supported: x @ W with x of shape (rows, ..., in) and W a free (in, out) parameter, "
            "or the parameter as the weight of F.linear"
        )

    def _conv(self, func, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        ws, bs = self._spec(weight), self._spec(bias)
        y = func(x, weight, bias, stride, padding, dilation, groups)
        if ws is None and bs is None:
            return y
        _leading(x, self.rows, func.__name__)
        if groups != 1:
            raise NotImplementedError(f"batched_forward: {func.__name__} with groups={groups} is not supported")
        if ws is not None and ws.kind != "matrix":  # a free weight: full-rank noise, one grouped conv per row
            filters = self._row_matrix(ws).reshape(self.rows * weight.shape[0], *weight.shape[1:])
            xg = x.to(torch.float32).reshape(1, -1, *x.shape[2:])
            full = func(xg, filters, None, stride, padding, dilation, self.rows).reshape(y.shape)
            if bias is not None:
                b = self._row_vector(bs) if bs is not None else bias.detach().to(torch.float32).reshape(1, -1)
                full = full + b.reshape(b.shape[0], -1, *([1] * (weight.dim() - 2)))
            return full.to(y.dtype)
        spatial = weight.dim() - 2
        delta = torch.zeros(y.shape, dtype=torch.float32, device=y.device)
        if ws is not None:
            A, B = self._row_factors(ws)  # (R, out, r), (R, in*k, r)
            r = A.shape[-1]
            filters = B.transpose(1, 2).reshape(self.rows * r, *weight.shape[1:])
            xg = x.to(torch.float32).reshape(1, -1, *x.shape[2:])
            t = func(xg, filters, None, stride, padding, dilation, self.rows)  # (1, R*r, *out_spatial)
            t = t.reshape(self.rows, r, -1)
            delta += torch.bmm(A, t).reshape(y.shape)
        if bs is not None:
            db = self._row_delta(bs)
            delta += db.reshape(self.rows, -1, *([1] * spatial))
        return (y.to(torch.float32) + delta).to(y.dtype)

    def _embedding(self, input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
                   sparse=False):  # fmt: skip
        ws = self._spec(weight)
        y = F.embedding(input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse)
        if ws is None:
            return y
        _leading(input, self.rows, "embedding")
        if ws.kind != "matrix":  # a free table: full-rank noise, each row looks up its member's table
            idx = input.reshape(self.rows, -1)
            table = self._row_matrix(ws)  # (R, num_embeddings, dim)
            rows = torch.gather(table, 1, idx.unsqueeze(-1).expand(-1, -1, table.shape[-1]))
            return rows.reshape(y.shape).to(y.dtype)
        A, B = self._row_factors(ws)  # (R, num_embeddings, r), (R, dim, r)
        idx = input.reshape(self.rows, -1)
        a_rows = torch.gather(A, 1, idx.unsqueeze(-1).expand(-1, -1, A.shape[-1]))  # (R, L, r)
        delta = torch.bmm(a_rows, B.transpose(1, 2))  # (R, L, dim)
        if padding_idx is not None:
            delta = delta.masked_fill((idx == padding_idx % weight.shape[0]).unsqueeze(-1), 0.0)
        return (y.to(torch.float32) + delta.reshape(y.shape)).to(y.dtype)

    def _norm(self, func, x, *args, **kwargs):
        names = {F.layer_norm: ("normalized_shape", "weight", "bias", "eps"),
                 F.group_norm: ("num_groups", "weight", "bias", "eps")}  # fmt: skip
        order = names.get(func, ("normalized_shape", "weight", "eps"))
        bound = dict(zip(order, args))
        bound.update(kwargs)
        weight, bias = bound.get("weight"), bound.get("bias")
        ws, bs = self._spec(weight), self._spec(bias)
        if ws is None and bs is None:
            return func(x, *args, **kwargs)
        _leading(x, self.rows, func.__name__)
        plain = dict(bound, weight=None)
        if "bias" in order:
            plain["bias"] = None
        y = func(x, **plain).to(torch.float32)
        for param, spec in ((weight, ws), (bias, bs)):
            if param is None:
                continue
            v = self._row_vector(spec) if spec is not None else param.detach().to(torch.float32).reshape(1, -1)
            if func is F.group_norm:  # per channel, on axis 1
                shape = (v.shape[0], -1) + (1,) * (x.dim() - 2)
            else:
                shape = (v.shape[0],) + (1,) * (x.dim() - 1 - param.dim()) + tuple(param.shape)
            y = y * v.reshape(shape) if param is weight else y + v.reshape(shape)
        return y.to(x.dtype)

    def _elementwise(self, func, args, kwargs):
        """A free (non-layer) parameter used in an elementwise op: substitute each row's value."""
        flat = list(args) + list(kwargs.values())
        fname = getattr(func, "__name__", str(func))
        for a in flat:
            spec = self._spec(a)
            if spec is not None and spec.kind != "matrix" and fname in _NOT_ELEMENTWISE:
                raise NotImplementedError(
                    f"batched_forward: free parameter {spec.name!r} is used by {fname}, which reshapes, reduces or "
                    "mixes its elements; EGGROLL perturbs a free parameter per row only in elementwise ops, "
                    "x @ W, and as the weight or bias of F.linear/conv/embedding/norms. Compute it inside such "
                    f"an op, or freeze it with ESModule(model).freeze_parameter({spec.name!r})"
                )
            if spec is not None and spec.kind == "matrix":
                raise NotImplementedError(
                    f"batched_forward: parameter {spec.name!r} of {spec.layer} is used by "
                    f"{getattr(func, '__name__', func)}, which EGGROLL cannot perturb; it can only be used "
                    "through its layer's forward"
                )
        others = [a for a in flat if isinstance(a, torch.Tensor) and self._spec(a) is None]
        ndim = max([o.dim() for o in others], default=0)

        def sub(a):
            spec = self._spec(a)
            if spec is None:
                return a
            shape = tuple(a.shape)
            pad = max(ndim - 1 - len(shape), 0)
            return self._row_vector(spec).to(a.dtype).reshape(self.rows, *([1] * pad), *shape)

        new_args = tuple(sub(a) for a in args)
        new_kwargs = {k: sub(v) for k, v in kwargs.items()}
        return func(*new_args, **new_kwargs)
