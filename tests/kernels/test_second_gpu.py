"""Kernels on the second GPU while the first is current. Triton launches on the current device's stream, not on the
tensors' device, so the dispatch point (``eggroll_rl.kernels``) makes the tensors' device current: a model on
``cuda:1`` gives, with ``cuda:0`` current, exactly what it gives with ``cuda:1`` current. Needs 2 GPUs."""

import pytest
import torch
from torch import nn

from eggroll_rl import EggrollStrategy

pytestmark = pytest.mark.gpu


def _forward_and_step(current: int, optimizer, noise: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 8)).to("cuda:1")
    strategy = EggrollStrategy(sigma=0.1, lr=0.01, rank=4, optimizer=optimizer, noise=noise)
    strategy.setup(model)
    initial = model[0].weight.detach().clone()
    x = torch.randn(256, 64, device="cuda:1")
    outs = []
    with torch.cuda.device(current):
        for epoch in range(2):
            with strategy.perturb(population_size=256, epoch=epoch) as pop:
                out = pop.batched_forward(model, x)
            strategy.step(out.sum(1))
            outs.append(out)
        assert torch.cuda.current_device() == current
    torch.cuda.synchronize(1)
    return outs, [p.detach().clone() for p in model.parameters()], initial


@pytest.mark.parametrize("optimizer, noise", [("adam", "gaussian"), (None, "rademacher")])
def test_a_model_on_the_second_gpu_while_the_first_is_current(optimizer, noise):
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    outs1, params1, initial = _forward_and_step(1, optimizer, noise)
    outs0, params0, _ = _forward_and_step(0, optimizer, noise)
    assert outs1[0].device == torch.device("cuda", 1)
    for a, b in zip(outs0 + params0, outs1 + params1, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(params1[0], initial)  # the steps moved the weights
