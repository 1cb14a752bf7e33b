"""ESModule: which parameters of a model are evolved, in what order, and how each one is perturbed."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

__all__ = ["ESModule", "ParamSpec", "discover_parameters"]

# Layers whose weight is perturbed low-rank (weight viewed as out x (in * kernel...)).
MATRIX_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)
# Layers whose parameters are affine vectors, perturbed full-rank and applied elementwise.
_NORMS = [nn.LayerNorm, nn.GroupNorm]
if hasattr(nn, "RMSNorm"):
    _NORMS.append(nn.RMSNorm)
VECTOR_LAYERS: tuple[type[nn.Module], ...] = tuple(_NORMS)


@dataclass
class ParamSpec:
    """One evolved parameter.

    Attributes:
        name: dotted name relative to the user's model (``"0.weight"``).
        index: ``k``, its position in discovery order; part of the noise key.
        param: the parameter itself.
        kind: ``"matrix"`` (low-rank factors ``A (m x r)``, ``B (n x r)``) or ``"vector"`` (full-rank noise).
        layer: class name of the module that owns it.
        fixed_rows: rows of a matrix parameter that are never perturbed nor updated: an ``nn.Embedding``'s
            ``padding_idx`` row, whose gradient ``nn.Embedding`` keeps at zero.
    """

    name: str
    index: int
    param: nn.Parameter
    kind: str
    layer: str
    fixed_rows: tuple[int, ...] = ()

    @property
    def m(self) -> int:
        return self.param.shape[0]

    @property
    def n(self) -> int:
        return self.param.numel() // max(self.param.shape[0], 1)


def _is_torch_layer(module: nn.Module) -> bool:
    return type(module).__module__.startswith("torch.nn")


def _classify(module: nn.Module, local_name: str) -> str | None:
    """'matrix', 'vector', or None when the layer cannot be perturbed."""
    if isinstance(module, MATRIX_LAYERS):
        if local_name == "weight":
            if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups != 1:
                return None
            return "matrix"
        return "vector"  # bias
    if isinstance(module, VECTOR_LAYERS):
        return "vector"
    if not _is_torch_layer(module) or type(module) in (
        nn.Module,
        nn.Sequential,
        nn.ModuleList,
        nn.ModuleDict,
    ):
        return "vector"  # a free parameter of a user module: used elementwise
    return None


def discover_parameters(
    module: nn.Module, frozen: set[str] | frozenset[str] = frozenset(), freeze_unsupported: bool = False
) -> list[ParamSpec]:
    """Evolved parameters of ``module`` in registration order (each shared parameter once).

    Parameters with ``requires_grad=False`` or named in ``frozen`` are skipped. A parameter of a layer that
    cannot be perturbed raises ``TypeError`` naming it, unless ``freeze_unsupported`` (then it is frozen with a
    warning).
    """
    specs: list[ParamSpec] = []
    seen: set[int] = set()
    # padding rows by parameter, from every Embedding that uses it (a table may be shared with another layer)
    padding: dict[int, set[int]] = {}
    for mod in module.modules():
        if isinstance(mod, nn.Embedding) and mod.padding_idx is not None:
            padding.setdefault(id(mod.weight), set()).add(mod.padding_idx)
    for mod_name, mod in module.named_modules():
        for local_name, p in mod.named_parameters(recurse=False):
            if p is None or id(p) in seen:
                continue
            seen.add(id(p))
            name = f"{mod_name}.{local_name}" if mod_name else local_name
            if name in frozen or not p.requires_grad:
                continue
            kind = _classify(mod, local_name)
            if kind is None:
                msg = (
                    f"parameter {name!r} belongs to {type(mod).__name__}, which EGGROLL cannot perturb in "
                    "batched_forward (supported: Linear, Conv1d/Conv2d with groups=1, Embedding, LayerNorm, "
                    "GroupNorm, RMSNorm, free parameters used elementwise)"
                )
                if freeze_unsupported:
                    warnings.warn(msg + "; it is frozen (not evolved).", stacklevel=3)
                    continue
                raise TypeError(
                    msg + f". Freeze it with ESModule(model).freeze_parameter({name!r}) or pass "
                    "freeze_unsupported=True."
                )
            if not p.is_floating_point():
                raise TypeError(f"parameter {name!r} has dtype {p.dtype}; evolved parameters must be floating point")
            fixed_rows = tuple(sorted(padding.get(id(p), ()))) if kind == "matrix" else ()
            specs.append(ParamSpec(name, len(specs), p, kind, type(mod).__name__, fixed_rows))
    return specs


class ESModule(nn.Module):
    """Wrapper for ES-compatible models: chooses which parameters are evolved.

    Args:
        module: any ``nn.Module`` of supported layers.
        freeze_unsupported: freeze (with a warning) parameters of layers EGGROLL cannot perturb instead of
            raising when the strategy is set up.
    """

    def __init__(self, module: nn.Module, freeze_unsupported: bool = False):
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        self.module = module
        self.freeze_unsupported = freeze_unsupported
        self._frozen: set[str] = set()

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def freeze_parameter(self, name: str) -> None:
        """Exclude the parameter ``name`` from evolution.

        Args:
            name: dotted, relative to the wrapped module (``"2.bias"``), or as this wrapper's own
                ``named_parameters()`` spells it (``"module.2.bias"``).
        """
        names = dict(self.module.named_parameters())
        if name not in names and name.startswith("module.") and name[len("module.") :] in names:
            name = name[len("module.") :]
        if name not in names:
            raise KeyError(f"freeze_parameter: no parameter named {name!r}; known: {sorted(names)[:20]}")
        self._frozen.add(name)

    @property
    def frozen_parameters(self) -> frozenset[str]:
        return frozenset(self._frozen)

    def es_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of the evolved parameters, in discovery order."""
        specs = discover_parameters(self.module, self._frozen, freeze_unsupported=True)
        return [(s.name, s.param) for s in specs]

    @property
    def es_parameters(self) -> Iterator[torch.Tensor]:
        """Parameters that will be evolved."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return iter([p for _, p in self.es_named_parameters()])

    def specs(self) -> list[ParamSpec]:
        return discover_parameters(self.module, self._frozen, self.freeze_unsupported)
