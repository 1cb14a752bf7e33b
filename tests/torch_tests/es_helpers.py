"""Helpers shared by the conformance tests (a module of its own: ``conftest`` is a name every test folder uses)."""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from eggroll_rl import EggrollStrategy


def make_strategy(device: torch.device, **kwargs) -> EggrollStrategy:
    kwargs.setdefault("seed", 42)
    return EggrollStrategy(allow_cpu=device.type == "cpu", **kwargs)


def materialized_forward(model: nn.Module, pop, x: torch.Tensor, member_id: int) -> torch.Tensor:
    """Reference: a deep copy of the model with the member's dense perturbation added to every parameter."""
    clone = copy.deepcopy(model)
    names = {s.name for s in pop.strategy.specs}
    with torch.no_grad():
        for name, p in clone.named_parameters():
            if name in names:
                p.add_(pop.perturbation(member_id, name).to(p.dtype))
        return clone(x)
