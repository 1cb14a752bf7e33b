"""nn.Module compatibility: ESModule, parameter discovery and freezing, unsupported layers, supervised learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from es_helpers import make_strategy
from torch.utils.data import DataLoader, TensorDataset

from eggroll_rl import EggrollStrategy, ESModule


def test_es_parameters_follow_registration_order(simple_mlp):
    es = ESModule(simple_mlp)
    assert [p.shape for p in es.es_parameters] == [p.shape for p in simple_mlp.parameters()]
    es.freeze_parameter("2.bias")
    assert len(list(es.es_parameters)) == 3
    with pytest.raises(KeyError, match="nope"):
        es.freeze_parameter("nope")


def test_requires_grad_false_parameters_are_not_evolved(device):
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2)).to(device)
    model[0].weight.requires_grad_(False)
    s = make_strategy(device)
    s.setup(model)
    assert [x.name for x in s.specs] == ["0.bias", "1.weight", "1.bias"]


def test_unsupported_layer_is_named_or_frozen_on_request(device):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(3, 4, batch_first=True)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    net = Net().to(device)
    with pytest.raises(TypeError, match="GRU"):
        make_strategy(device).setup(net)
    s = make_strategy(device)
    with pytest.warns(UserWarning, match="frozen"):
        s.setup(ESModule(net, freeze_unsupported=True))
    assert [x.name for x in s.specs] == ["head.weight", "head.bias"]
    x = torch.randn(4, 5, 3, device=device)
    with s.perturb(4) as pop:
        y = pop.batched_forward(net, x)
        rows = [net(x[i : i + 1]) for i in pop.iterate()]
    torch.testing.assert_close(y, torch.cat(rows), rtol=1e-5, atol=1e-5)


def test_matrix_parameter_outside_its_layer_is_an_error(device):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)

        def forward(self, x):
            return x @ self.proj.weight  # bypasses Linear.forward

    model = Tied().to(device)
    s = make_strategy(device)
    s.setup(model)
    with s.perturb(2) as pop, pytest.raises(NotImplementedError, match="proj.weight"):
        pop.batched_forward(model, torch.randn(2, 4, device=device))


def test_supervised_quick_start_learns(device):
    """Seed 004's supervised quick start (a DataLoader, batched_forward with member_ids) on a learnable target."""
    torch.manual_seed(0)
    X = torch.randn(512, 8, device=device)
    y = X @ torch.randn(8, 2, device=device) * 0.5
    loader = DataLoader(TensorDataset(X, y), batch_size=64, shuffle=True)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2)).to(device)
    strategy = EggrollStrategy(sigma=0.05, lr=0.02, rank=4, allow_cpu=device.type == "cpu")
    strategy.setup(model)
    population_size = 32

    def mse():
        with torch.no_grad():
            return float(((model(X) - y) ** 2).mean())

    start = mse()
    for _epoch in range(15):
        for x_batch, y_batch in loader:
            x_flat = x_batch.unsqueeze(0).expand(population_size, -1, -1).reshape(-1, x_batch.shape[-1])
            member_ids = torch.arange(population_size, device=device).repeat_interleave(len(x_batch))
            with strategy.perturb(population_size=population_size, epoch=strategy.num_steps) as pop:
                preds = pop.batched_forward(model, x_flat, member_ids=member_ids)
                preds = preds.reshape(population_size, len(x_batch), -1)
                losses = ((preds - y_batch.unsqueeze(0)) ** 2).mean(dim=(1, 2))
            strategy.step(-losses)
    assert mse() < 0.3 * start


def test_seed000_trainer_learns(device):
    from eggroll_rl import EGGROLLTrainer

    class MyModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 1))

        def forward(self, batch, labels=None, is_training=True):
            return {"loss": torch.mean((self.net(batch) - 1.0) ** 2)}

    torch.manual_seed(0)
    model = MyModel().to(device)
    trainer = EGGROLLTrainer(
        model=model, device=device, rank=8, sigma=0.2, learning_rate=0.03, n_workers=32, grad_clip=1.0,
        optimizer="adamw", optimizer_kwargs={"betas": (0.9, 0.999)}, group_size=4, noise_reuse=2,
    )  # fmt: skip
    first = trainer.train_step(torch.randn(64, 10, device=device))["loss"]
    last = [trainer.train_step(torch.randn(64, 10, device=device))["loss"] for _ in range(60)][-10:]
    assert sum(last) / len(last) < 0.5 * first
