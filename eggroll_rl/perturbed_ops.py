"""The perturbed ops: a ``TorchFunctionMode`` that runs each row of a batch as its population member.

Inside ``PerturbationContext.batched_forward`` every functional call goes through ``PopulationMode``. A call that
touches no evolved parameter runs unchanged. One that does is handed to the handler of its op, which adds each
row's perturbation without forming a member's weights:

* ``F.linear``: the kernels' perturbed linear (``kernels.perturbed_linear``; Triton on CUDA, its twin elsewhere);
* ``F.conv1d`` / ``F.conv2d``: the weight viewed as ``out x (in * k...)``, ``x * B`` as one grouped convolution;
* ``F.embedding``: the looked-up rows of ``A'`` times ``B^T``;
* ``F.layer_norm`` / ``F.group_norm`` / ``F.rms_norm``: the normalisation without affine, then each row's scale
  and shift;
* ``x @ W`` with ``W`` a free 2-D parameter, and free parameters in elementwise ops: each row's value substituted.

Anything else that uses an evolved parameter raises ``NotImplementedError`` naming it, so a member never silently
runs with the unperturbed value. The mode reads the population (strategy settings, the noise of a ``perturb()``
block) from the ``PerturbationContext`` handed to it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from . import kernels
from .kernels.linear import perturbed_linear_reference
from .module import ParamSpec
from .noise import member_noise_and_sign, unique_noise_ids

if TYPE_CHECKING:
    from .population import PerturbationContext

__all__ = ["PopulationMode"]

# Tensor methods and properties that read a parameter's metadata (shape, dtype, layout, storage, printing), never
# its values: the answer is the same for every member, so they run unchanged and layer code such as
# ``weight.shape[0]`` or ``bias.size()`` works inside the mode. ``__get__`` is how a property read (``.shape``,
# ``.dtype``, ``.device``) reaches the mode; the reads in ``_UNPERTURBED_VIEWS`` are rejected before this set is
# consulted. A frozenset: it is looked up on every intercepted call that involves an evolved parameter.
_METADATA_FUNCS = frozenset({
    "__get__", "size", "dim", "numel", "__len__", "is_floating_point", "is_contiguous", "data_ptr",
    "element_size", "stride", "__repr__", "__format__", "type", "is_complex", "get_device", "nelement",
    "ndimension", "__hash__", "storage_offset", "untyped_storage", "_is_view", "has_names",
})  # fmt: skip
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
_MATMUL_FUNCS = frozenset({"matmul", "__matmul__", "mm"})
# Positional arguments after ``input`` of the norms, as torch.nn.functional declares them.
_NORM_ARGS = {
    F.layer_norm: ("normalized_shape", "weight", "bias", "eps"),
    F.group_norm: ("num_groups", "weight", "bias", "eps"),
}
_RMS_NORM_ARGS = ("normalized_shape", "weight", "eps")


def _leading(x: torch.Tensor, rows: int, func: str) -> None:
    if x.dim() == 0 or x.shape[0] != rows:
        raise ValueError(
            f"batched_forward: {func} got an input of shape {tuple(x.shape)} whose leading axis is not the "
            f"{rows} rows of the batch; layers must keep the batch axis first"
        )


class PopulationMode(TorchFunctionMode):
    """Intercepts the functional calls that use evolved parameters and adds each row's perturbation.

    Args:
        ctx: the ``perturb()`` block being evaluated (its strategy's settings and its noise).
        member_ids: ``(R,)`` int64 member of each row of the batch.
        paired: rows ``2q`` and ``2q+1`` share their noise index (the linear kernel then generates it once).
        conv_member_loop: convolutions of rows in equal runs per member: one convolution per run (True), one
            grouped convolution (False), or None: per run on the CPU, grouped elsewhere.
    """

    def __init__(
        self,
        ctx: PerturbationContext,
        member_ids: torch.Tensor,
        paired: bool = False,
        conv_member_loop: bool | None = None,
    ):
        super().__init__()
        self.paired = paired
        self.conv_member_loop = conv_member_loop
        self.ctx = ctx
        self.st = ctx.strategy
        self.ids = member_ids
        self.rows = member_ids.shape[0]
        self.j, self.s = member_noise_and_sign(member_ids, self.st.antithetic)
        self._uniq: tuple[torch.Tensor, torch.Tensor] | None = None
        self._runs: tuple[torch.Tensor, int] | bool | None = None  # _member_runs(), found on first use

    # ------------------------------------------------------------- dispatch
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            return self._linear(*args, **kwargs)
        if func is F.conv1d or func is F.conv2d:
            return self._conv(func, *args, **kwargs)
        if func is F.embedding:
            return self._embedding(*args, **kwargs)
        if func is F.layer_norm or func is F.group_norm or func is getattr(F, "rms_norm", None):
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
        if name in _MATMUL_FUNCS and not kwargs and len(args) == 2:
            return self._matmul(func, *args)
        return self._elementwise(func, args, kwargs)

    # ------------------------------------------------------------- layers
    def _linear(self, x, weight, bias=None):
        ws, bs = self._spec(weight), self._spec(bias)
        if ws is None and bs is None:
            return F.linear(x, weight, bias)
        if ws is not None and ws.kind != "matrix":
            return self._linear_full_rank(x, weight, bias, ws, bs)
        _leading(x, self.rows, "linear")
        # The Triton kernel draws A itself and would perturb fixed rows (an Embedding table with a padding row used
        # as this layer's weight); the twin takes A from the block, whose fixed rows are zero.
        linear = perturbed_linear_reference if ws is not None and ws.fixed_rows else kernels.perturbed_linear
        return linear(
            x, weight, bias, self.ids, seed=self.st.seed, weight_index=ws.index if ws else None,
            bias_index=bs.index if bs else None, t_eff=self.ctx.t_eff, sigma=self.st.sigma, rank=self.st.rank,
            antithetic=self.st.antithetic, noise=self.st.noise, paired=self.paired,
            check_paired=False,  # batched_forward derived `paired` from these ids (no sync per layer)
            noise_source=lambda what, uniq: self.ctx.noise_of(bs if what == "eps" else ws, what, uniq),
        )  # fmt: skip

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

    def _conv(self, func, x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        ws, bs = self._spec(weight), self._spec(bias)
        if ws is None and bs is None:
            return func(x, weight, bias, stride, padding, dilation, groups)
        _leading(x, self.rows, func.__name__)
        if groups != 1:
            raise NotImplementedError(f"batched_forward: {func.__name__} with groups={groups} is not supported")
        runs = self._member_runs()
        if runs is not None:
            return self._conv_member_runs(func, x, weight, bias, ws, bs, runs, (stride, padding, dilation))
        if ws is not None and ws.kind != "matrix":  # a free weight: full-rank noise, one grouped conv per row
            filters = self._row_matrix(ws).reshape(self.rows * weight.shape[0], *weight.shape[1:])
            xg = x.to(torch.float32).reshape(1, -1, *x.shape[2:])
            full = func(xg, filters, None, stride, padding, dilation, self.rows)
            full = full.reshape(self.rows, weight.shape[0], *full.shape[2:])
            if bias is not None:
                b = self._row_vector(bs) if bs is not None else bias.detach().to(torch.float32).reshape(1, -1)
                full = full + b.reshape(b.shape[0], -1, *([1] * (weight.dim() - 2)))
            return full.to(torch.result_type(x, weight))
        y = func(x, weight, bias, stride, padding, dilation, groups)
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

    def _conv_member_runs(self, func, x, weight, bias, ws, bs, runs: tuple[torch.Tensor, int], conv_args):
        """The convolution of rows that come in equal runs of one member each (a batch repeated per member).

        Each run's member weight (and bias) is formed once, as ``iterate()`` forms it (``W + sigma E`` in float32),
        and convolves the run's ``g`` rows: on the CPU one plain convolution per run (small convolutions that stay
        in cache beat one grouped convolution there), elsewhere one convolution with a group per run.
        """
        members, g = runs
        n_runs = members.shape[0]
        weights = self._member_values(ws, weight, members)  # (M, out, in, *k) float32
        biases = None if bias is None else self._member_values(bs, bias, members)  # (M, out)
        xf = x.to(torch.float32)
        out_dtype = torch.result_type(x, weight)
        loop = self.conv_member_loop if self.conv_member_loop is not None else x.device.type == "cpu"
        if loop:
            xr = xf.reshape(n_runs, g, *x.shape[1:])
            out = None
            for k in range(n_runs):  # each run's output copied while in cache (faster than one cat at the end)
                yk = func(xr[k], weights[k], None if biases is None else biases[k], *conv_args)
                if out is None:
                    out = yk.new_empty(n_runs, *yk.shape)
                out[k] = yk
            return out.reshape(self.rows, *out.shape[2:]).to(out_dtype)
        xg = xf.reshape(n_runs, g, *x.shape[1:]).transpose(0, 1).reshape(g, n_runs * x.shape[1], *x.shape[2:])
        filters = weights.reshape(n_runs * weight.shape[0], *weight.shape[1:])
        yg = func(xg, filters, None if biases is None else biases.reshape(-1), *conv_args, n_runs)
        yg = yg.reshape(g, n_runs, weight.shape[0], *yg.shape[2:]).transpose(0, 1)
        return yg.reshape(self.rows, *yg.shape[2:]).to(out_dtype)

    def _member_values(self, spec: ParamSpec | None, param: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
        """The values ``(M, *shape)`` float32 of ``param`` for the members ``members`` ``(M,)``."""
        base = param.detach().to(torch.float32)
        if spec is None:
            return base.expand(members.shape[0], *param.shape)
        j, s = member_noise_and_sign(members, self.st.antithetic)
        if spec.kind == "matrix":
            A = self.ctx.noise_of(spec, "A", j)  # (M, out, r)
            B = self.ctx.noise_of(spec, "B", j)  # (M, in*k, r)
            A = A * ((self.st.sigma / math.sqrt(self.st.rank)) * s)[:, None, None]
            delta = torch.bmm(A, B.transpose(1, 2))
        else:
            delta = (self.st.sigma * s)[:, None] * self.ctx.noise_of(spec, "eps", j)
        return base.unsqueeze(0) + delta.reshape(members.shape[0], *param.shape)

    def _member_runs(self) -> tuple[torch.Tensor, int] | None:
        """``(members (M,), g)`` when the rows are equal runs of ``g > 1`` rows of one member each, else None."""
        if self._runs is False:
            return None
        if self._runs is None:
            members, counts = torch.unique_consecutive(self.ids, return_counts=True)
            g = int(counts[0])
            if g > 1 and bool((counts == g).all()):
                self._runs = (members, g)
            else:
                self._runs = False
                return None
        return self._runs

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
        delta = torch.bmm(a_rows, B.transpose(1, 2))  # (R, L, dim); A's padding row is zero (ws.fixed_rows)
        return (y.to(torch.float32) + delta.reshape(y.shape)).to(y.dtype)

    def _norm(self, func, x, *args, **kwargs):
        order = _NORM_ARGS.get(func, _RMS_NORM_ARGS)
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

    # ------------------------------------------------------------- free parameters
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

    # ------------------------------------------------------------- each row's noise and values
    def _spec(self, t) -> ParamSpec | None:
        return self.ctx.spec_of(t) if isinstance(t, nn.Parameter) else None

    def _unique(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._uniq is None:
            self._uniq = unique_noise_ids(self.j)
        return self._uniq

    def _row_delta(self, spec: ParamSpec) -> torch.Tensor:
        """Per-row perturbation ``sigma s eps_j`` of a non-matrix parameter, flattened: ``(R, numel)`` float32."""
        uniq, inv = self._unique()
        return (self.st.sigma * self.s)[:, None] * self.ctx.noise_of(spec, "eps", uniq)[inv]

    def _row_vector(self, spec: ParamSpec) -> torch.Tensor:
        """Per-row value of a non-matrix parameter, flattened: ``(R, numel)`` float32."""
        return spec.param.detach().to(torch.float32).reshape(1, -1) + self._row_delta(spec)

    def _row_matrix(self, spec: ParamSpec) -> torch.Tensor:
        """Per-row value of a free (full-rank noise) parameter in its own shape: ``(R, *shape)`` float32."""
        return self._row_vector(spec).reshape(self.rows, *spec.param.shape)

    def _row_factors(self, spec: ParamSpec) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row ``A' (R, m, r)`` (scaled) and ``B (R, n, r)``."""
        uniq, inv = self._unique()
        A = self.ctx.noise_of(spec, "A", uniq)[inv]
        B = self.ctx.noise_of(spec, "B", uniq)[inv]
        scale = (self.st.sigma / math.sqrt(self.st.rank)) * self.s
        return A * scale[:, None, None], B
