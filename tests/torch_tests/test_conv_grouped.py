"""The conv handler's member-run path (a batch repeated per member) against its per-row path and iterate().

``batched_forward`` with ``member_ids = arange(N).repeat_interleave(B)`` forms each member's conv weight once and
convolves its run of rows with it (one convolution per run on the CPU, or one grouped convolution with a group
per run); the same rows in a shuffled order take the per-row path (one group per row). All must give each row
its member's output, as the member's materialized weights (iterate()) do.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from es_helpers import make_strategy
from torch.overrides import TorchFunctionMode

from eggroll_rl.perturbed_ops import PopulationMode

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(autouse=True)
def _full_fp32_convolutions(monkeypatch):
    """cuDNN convolutions use TF32 by default (about 1e-3 relative): the paths compared here pick different
    algorithms, so on a GPU they would differ by TF32 rounding, not by a fault. Compare them in full fp32."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


class FreeConv(nn.Module):
    """A conv whose weight is a free parameter (full-rank noise), used through F.conv1d."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 2, 3) * 0.3)

    def forward(self, x):
        return torch.nn.functional.conv1d(x, self.w, None, 1, 1)


def _models():
    return {
        "conv2d": (
            lambda: nn.Sequential(
                nn.Conv2d(2, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 4, 3, stride=2), nn.Flatten(), nn.Linear(16, 3)
            ),
            (2, 6, 6),
        ),
        "conv1d": (
            lambda: nn.Sequential(
                nn.Conv1d(3, 4, 3, padding=2, dilation=2),
                nn.Tanh(),
                nn.Conv1d(4, 2, 2, stride=2, bias=False),
                FreeConv(),
                nn.Flatten(),
            ),  # fmt: skip
            (3, 8),
        ),
    }


@pytest.mark.parametrize("name", list(_models()))
@pytest.mark.parametrize("antithetic", [True, False])
@pytest.mark.parametrize("loop", [True, False])
def test_member_runs_match_per_row_and_iterate(device, name, antithetic, loop):
    build, shape = _models()[name]
    torch.manual_seed(0)
    model = build().to(device)
    s = make_strategy(device, rank=3, sigma=0.2, antithetic=antithetic)
    s.setup(model)
    n, b = 6, 5
    xb = torch.randn(b, *shape, device=device)
    x = xb.repeat(n, *([1] * len(shape)))  # each member's B samples, in equal runs
    ids = torch.arange(n, device=device).repeat_interleave(b)
    perm = torch.randperm(n * b, generator=torch.Generator().manual_seed(3)).to(device)
    with s.perturb(n, epoch=2) as pop:
        runs = pop.batched_forward(model, x, member_ids=ids, conv_member_loop=loop)
        per_row = torch.empty_like(runs)
        per_row[perm] = pop.batched_forward(model, x[perm], member_ids=ids[perm])  # shuffled: the per-row path
        members = []
        for _ in pop.iterate():
            with torch.no_grad():
                members.append(model(xb))
    members = torch.cat(members)
    torch.testing.assert_close(runs, per_row, **TOL)
    torch.testing.assert_close(runs, members, **TOL)
    # the members differ: the comparison is not of unperturbed outputs
    assert not torch.allclose(runs[:b], runs[b : 2 * b], **TOL)


class _ConvGroups(TorchFunctionMode):
    """Records the ``groups`` of every conv2d run beneath it (the population mode's own convolutions included)."""

    def __init__(self):
        super().__init__()
        self.groups = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.conv2d:
            self.groups.append(args[6] if len(args) > 6 else kwargs.get("groups", 1))
        return func(*args, **kwargs)


@pytest.mark.parametrize("loop", [True, False])
def test_member_run_path_is_taken_only_for_equal_runs(device, loop):
    """Equal runs per member: one convolution per run, or one with a group per run; other orders, one group per row."""
    torch.manual_seed(0)
    model = nn.Conv2d(2, 3, 3).to(device)
    s = make_strategy(device, rank=2, sigma=0.1)
    s.setup(model)
    n, b = 4, 3
    x = torch.randn(n * b, 2, 5, 5, device=device)
    ids = torch.arange(n, device=device).repeat_interleave(b)
    with s.perturb(n) as pop:
        with _ConvGroups() as spy:
            pop.batched_forward(model, x, member_ids=ids, conv_member_loop=loop)
        assert spy.groups == ([1] * n if loop else [n])
        with _ConvGroups() as spy:
            pop.batched_forward(model, x, member_ids=ids.flip(0).roll(1), conv_member_loop=loop)  # runs broken: per row
        assert spy.groups[-1] == n * b
        with _ConvGroups() as spy:
            pop.batched_forward(model, x, member_ids=ids)  # default: per run on the CPU, grouped elsewhere
        assert spy.groups == ([1] * n if device.type == "cpu" else [n])


def test_conv_member_loop_is_an_argument_not_a_class_switch(device):
    assert "conv_member_loop" not in vars(PopulationMode)
    model = nn.Conv2d(2, 3, 3).to(device)
    s = make_strategy(device, rank=2, sigma=0.1)
    s.setup(model)
    with s.perturb(2) as pop, pytest.raises(TypeError, match="conv_member_loop"):
        pop.batched_forward(model, torch.randn(2, 2, 5, 5, device=device), conv_member_loop="yes")
