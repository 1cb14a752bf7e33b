"""PerturbationContext: one generation's population, made by ``EggrollStrategy.perturb()``.

Inside its ``with`` block the population can be evaluated two ways: ``batched_forward(model, x, member_ids)`` runs
row ``i`` of ``x`` as member ``member_ids[i]`` in one pass (through ``perturbed_ops.PopulationMode``), and
``iterate()`` writes one member at a time into the model so a plain ``model(x)`` runs as that member. For
inspection, ``get_factors`` gives a matrix parameter's low-rank factors and ``perturbation`` any parameter's dense
delta.

The context holds the noise of its block: on the pure-torch path a population's factors are generated once and
kept until the block ends when they are small (``_CACHE_ELEMENTS``). It reads the settings from the strategy it
was made by (handed in, not imported).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

from .module import ParamSpec
from .noise import STREAM_A, STREAM_B, factor_noise, member_noise_and_sign, vector_noise
from .perturbed_ops import PopulationMode
from .validation import check_int, invalid

if TYPE_CHECKING:
    from .strategy import EggrollStrategy

__all__ = ["PerturbationContext"]

# The torch path keeps a population's factors for the duration of one ``perturb()`` block when they are this
# small (fp32 elements): RL rollouts call the policy hundreds of times with the same noise.
_CACHE_ELEMENTS = 1 << 23


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
        self.strategy._enter_block(self)
        self._active = True
        return self

    def __exit__(self, *exc) -> None:
        self._active = False
        self._cache.clear()
        self.strategy._leave_block(self)

    def _check_active(self, what: str) -> None:
        if not self._active:
            raise RuntimeError(f"{what} must be called inside the `with strategy.perturb(...) as pop:` block")

    # ------------------------------------------------------------- evaluation
    def batched_forward(
        self, model: nn.Module, x: torch.Tensor, member_ids=None, *, conv_member_loop: bool | None = None
    ):
        """Forward pass where row ``i`` of ``x`` runs as member ``member_ids[i]``.

        Args:
            model: the model given to ``setup()``; its layers must keep the batch axis first.
            x: ``(R, *input_dims)``.
            member_ids: ``(R,)`` int member of each row; default ``arange(R)`` (requires ``R == N``).
            conv_member_loop: when the rows come in equal runs of one member each (a batch repeated per member),
                a convolution forms each member's weight once and runs one convolution per run (True) or one
                grouped convolution over all runs (False); None picks per run on the CPU, where small
                convolutions that stay in cache are faster, and grouped elsewhere. The result is the same.
        Returns:
            the model's output for ``(R, ...)`` rows, computed without autograd.
        """
        self._check_active("batched_forward()")
        self._check_model(model)
        if not isinstance(x, torch.Tensor) or x.dim() < 1:
            raise TypeError("batched_forward: x must be a tensor with a leading batch axis (R, ...)")
        if conv_member_loop is not None and not isinstance(conv_member_loop, bool):
            raise invalid("conv_member_loop", conv_member_loop, "None, True or False", TypeError)
        ids, paired = self._member_ids(x, member_ids)
        with torch.no_grad(), PopulationMode(self, ids, paired=paired, conv_member_loop=conv_member_loop):
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

    # ------------------------------------------------------------- inspection
    def get_factors(self, member_id: int, param_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Low-rank factors ``(A', B)`` of a matrix parameter: the member's weight is ``W + A' @ B.T``.

        Returns:
            ``A'`` ``(m, r)`` = ``(sigma s / sqrt(r)) A`` and ``B`` ``(n, r)``, float32 (``n`` = in_features, or
            in_channels * kernel elements for a convolution). An Embedding's ``padding_idx`` row of ``A'`` is zero
            (that row is never perturbed, as ``nn.Embedding`` never changes it).
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
        A = self.noise_of(spec, "A", ids)[0]
        B = self.noise_of(spec, "B", ids)[0]
        return A * (st.sigma * sign / math.sqrt(st.rank)), B

    def perturbation(self, member_id: int, param_name: str) -> torch.Tensor:
        """Dense delta ``sigma E_i`` of any parameter, in the parameter's shape (float32). Inspection/tests only."""
        member_id = self._check_member(member_id)
        spec = self.strategy.spec(param_name)
        if spec.kind == "matrix":
            A, B = self.get_factors(member_id, param_name)
            return (A @ B.T).view(spec.param.shape)
        sign, j = self._sign_and_noise(member_id)
        eps = self.noise_of(spec, "eps", torch.tensor([j], device=spec.param.device))[0]
        return (self.strategy.sigma * sign * eps).view(spec.param.shape)

    def _check_member(self, member_id) -> int:
        if isinstance(member_id, torch.Tensor) and member_id.numel() == 1:
            member_id = int(member_id)
        check_int("member_id", member_id)
        if not 0 <= member_id < self._population_size:
            raise invalid("member_id", member_id, f"an integer in [0, {self._population_size})", IndexError)
        return member_id

    def _sign_and_noise(self, member_id: int) -> tuple[float, int]:
        j, s = member_noise_and_sign(torch.tensor(member_id), self.strategy.antithetic)
        return float(s), int(j)

    # ------------------------------------------------------------- the block's noise (for the ops and inspection)
    def spec_of(self, param: torch.Tensor) -> ParamSpec | None:
        """The evolved parameter's spec, or None when ``param`` is not one."""
        return self._by_id.get(id(param))

    def noise_of(self, spec: ParamSpec, what: str, noise_ids: torch.Tensor) -> torch.Tensor:
        """``A`` ``(U, m, r)``, ``B`` ``(U, n, r)`` or ``eps`` ``(U, numel)`` (``what``) of ``noise_ids``, float32.

        ``A``'s ``spec.fixed_rows`` (an Embedding's padding row) are zero, so every path that forms a member from
        these factors (the perturbed ops, ``iterate()``, ``get_factors``) leaves those rows unperturbed.

        Kept for the block when the whole population's is at most ``_CACHE_ELEMENTS`` elements.
        """
        st = self.strategy
        rows = {"A": spec.m, "B": spec.n, "eps": spec.param.numel()}[what]
        total = self.num_noise * rows * (st.rank if what != "eps" else 1)
        device = spec.param.device

        def make(ids):
            if what == "eps":
                return vector_noise(st.seed, spec.index, self.t_eff, ids, rows, st.noise, device)
            stream = STREAM_A if what == "A" else STREAM_B
            factors = factor_noise(st.seed, spec.index, self.t_eff, ids, rows, st.rank, stream, st.noise, device)
            if what == "A" and spec.fixed_rows:  # a zero row of A is a zero row of A B^T in every member
                factors[:, list(spec.fixed_rows)] = 0.0
            return factors

        if total > _CACHE_ELEMENTS:
            return make(noise_ids)
        key = (spec.index, what)
        if key not in self._cache:
            self._cache[key] = make(torch.arange(self.num_noise, device=device))
        return self._cache[key][noise_ids]
