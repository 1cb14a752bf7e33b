"""Shared fixtures of the conformance suite (seed 004). ``device`` is CUDA when present, else the CPU through
``allow_cpu=True``: the same tests run in CI (CPU) and on the GPU machine."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from es_helpers import make_strategy

from eggroll_rl import EggrollStrategy


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@pytest.fixture
def base_generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def small_tensor(device, base_generator) -> torch.Tensor:
    return torch.randn(8, 4, generator=base_generator).to(device)


@pytest.fixture
def medium_tensor(device, base_generator) -> torch.Tensor:
    return torch.randn(64, 32, generator=base_generator).to(device)


@pytest.fixture
def simple_mlp(device) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).to(device)


@pytest.fixture
def eggroll_strategy(device) -> EggrollStrategy:
    return make_strategy(device, sigma=0.1, lr=0.01, rank=4)
