"""EGGROLLTrainer's batched path against its iterate() loop: same noise, same fitness, same update.

The two agree to float rounding, not bit for bit: the loop runs each member with its materialized weight
``W + A' B^T`` (rounded to float32 once), the batched path computes ``x W^T + (x B) A'^T``. The tolerances below
are a few float32 ulps of the losses and parameters (all of order 1).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from eggroll_rl import EGGROLLTrainer, eggroll_step
from eggroll_rl.agents.supervised import LOSSES

TOL = dict(rtol=1e-5, atol=1e-5)
STEPS = 3


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 3 * 3, 3),
    )  # fmt: skip


def _data(kind: str, batch: int = 10):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 6, generator=g) if kind == "mlp" else torch.randn(batch, 1, 8, 8, generator=g)
    return x, torch.randint(0, 3, (batch,), generator=g)


def _train(model: nn.Module, x, y, steps: int = STEPS, **kw):
    """Losses ``(steps, N)`` of every generation, the final flat parameters, and the trainer."""
    kw = dict(dict(rank=2, sigma=0.1, learning_rate=0.05, n_workers=8, optimizer="adam", log_steps=0), **kw)
    trainer = EGGROLLTrainer(model, "cpu", **kw)
    losses = []
    for _ in range(steps):
        trainer.train_step(x, y)
        losses.append(trainer.last_losses.clone())
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    return torch.stack(losses), params, trainer


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_batched_matches_loop(kind):
    model = _mlp() if kind == "mlp" else _cnn()
    x, y = _data(kind)
    loop_losses, loop_params, loop = _train(copy.deepcopy(model), x, y, batched=False)
    losses, params, batched = _train(copy.deepcopy(model), x, y)
    assert loop.last_path == "loop" and batched.last_path == "batched"
    torch.testing.assert_close(losses, loop_losses, **TOL)
    torch.testing.assert_close(params, loop_params, **TOL)
    # and both moved the parameters: the comparison is not of two untouched copies
    assert not torch.allclose(params, torch.cat([p.flatten() for p in model.parameters()]))


def test_fitness_is_mean_per_sample_loss():
    """Member 0's loss equals the loss of its materialized weights, computed by hand."""
    model, (x, y) = _mlp(), _data("mlp")
    trainer = EGGROLLTrainer(copy.deepcopy(model), "cpu", rank=2, sigma=0.1, n_workers=4, log_steps=0)
    trainer.train_step(x, y)
    with trainer.strategy.perturb(4, epoch=0) as pop:
        member = copy.deepcopy(model)
        with torch.no_grad():
            for name, p in member.named_parameters():
                p += pop.perturbation(0, name)
    expected = torch.nn.functional.cross_entropy(member(x), y)
    torch.testing.assert_close(trainer.last_losses[0], expected.detach(), **TOL)


@pytest.mark.parametrize("max_batch_rows", [1, 10, 25, 30, 10_000])
def test_chunking_does_not_change_results(max_batch_rows):
    """Chunks of 1 member (rows < batch), 1, 2 (25 rows round down to an even count), 3 and all 8 members."""
    model, (x, y) = _cnn(), _data("cnn")
    ref_losses, ref_params, _ = _train(copy.deepcopy(model), x, y, steps=2, max_batch_rows=10 * 8)
    losses, params, _ = _train(copy.deepcopy(model), x, y, steps=2, max_batch_rows=max_batch_rows)
    torch.testing.assert_close(losses, ref_losses, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(params, ref_params, rtol=1e-6, atol=1e-6)


class SeedModel(nn.Module):
    """Seed 000's kind: forward(batch, labels, is_training) returns a mean loss, which cannot be split per member."""

    def __init__(self):
        super().__init__()
        self.net = _mlp()

    def forward(self, batch, labels=None, is_training=True):
        return {"loss": nn.functional.cross_entropy(self.net(batch), labels)}


def test_seed_model_falls_back_to_the_loop_and_agrees():
    x, y = _data("mlp")
    seed = SeedModel()
    loop_losses, loop_params, trainer = _train(seed, x, y)
    assert trainer.last_path == "loop" and not trainer.predicts
    # The same network returning logits, with the loss given: batched, and the same numbers.
    losses, params, batched = _train(_mlp(), x, y, loss_fn=nn.CrossEntropyLoss())
    assert batched.last_path == "batched"
    torch.testing.assert_close(losses, loop_losses, **TOL)
    torch.testing.assert_close(params, loop_params, **TOL)


def test_non_tensor_batch_falls_back():
    class DictInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _mlp()

        def forward(self, batch):
            return self.net(batch["x"])

    x, y = _data("mlp")
    _, _, trainer = _train(DictInput(), {"x": x}, y, steps=1)
    assert trainer.last_path == "loop"
    with pytest.raises(TypeError, match="batch="):
        _train(DictInput(), {"x": x}, y, steps=1, batched=True)


def test_unsupported_layer_warns_once_and_falls_back():
    """A parameter batched_forward cannot perturb (read through .T): the loop still runs it, with a warning."""

    class Transposed(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(3, 6) * 0.3)

        def forward(self, x):
            return x @ self.w.T

    x, y = _data("mlp")
    with pytest.warns(UserWarning, match="iterate"):
        _, _, trainer = _train(Transposed(), x, y, steps=2)
    assert trainer.last_path == "loop" and trainer.batched is False
    with pytest.raises(NotImplementedError):
        _train(Transposed(), x, y, steps=1, batched=True)


def test_inferred_loss_from_labels():
    x, y = _data("mlp")
    ce, _, _ = _train(_mlp(), x, y, steps=1)
    named, _, _ = _train(_mlp(), x, y, steps=1, loss_fn="cross_entropy")
    torch.testing.assert_close(ce, named, rtol=0, atol=0)
    targets = torch.randn(10, 3)
    mse, _, _ = _train(_mlp(), x, targets, steps=1)
    explicit, _, _ = _train(_mlp(), x, targets, steps=1, loss_fn=LOSSES["mse"])
    torch.testing.assert_close(mse, explicit, rtol=0, atol=0)


def test_eggroll_step_batched_and_loop_agree():
    x, y = _data("mlp")
    kw = dict(n_workers=8, rank=2, sigma=0.1, learning_rate=0.05, labels=y)
    loss_b, m_b = eggroll_step(model_b := _mlp(), x, "cpu", **kw)
    loss_l, m_l = eggroll_step(model_l := _mlp(), x, "cpu", batched=False, **kw)
    assert loss_b == pytest.approx(loss_l, rel=1e-5)
    for pb, pl in zip(model_b.parameters(), model_l.parameters()):
        torch.testing.assert_close(pb, pl, **TOL)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(batched="yes"), TypeError, r"batched='yes' is invalid: expected None"),
        (dict(max_batch_rows=0), ValueError, r"max_batch_rows=0 is invalid: expected an integer >= 1"),
        (dict(max_batch_rows=2.5), TypeError, r"max_batch_rows=2.5 is invalid"),
        (dict(loss_fn="hinge"), ValueError, r"loss_fn='hinge' is invalid: expected one of \['cross_entropy', 'mse'\]"),
        (dict(loss_fn=3), TypeError, r"loss_fn=3 is invalid: expected None, one of"),
    ],
)
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        EGGROLLTrainer(_mlp(), "cpu", n_workers=4, **kwargs)


def test_batched_true_on_a_seed_model_is_an_error():
    with pytest.raises(ValueError, match="batched=True needs per-sample losses"):
        EGGROLLTrainer(SeedModel(), "cpu", n_workers=4, batched=True)


def test_bad_losses_and_labels():
    x, y = _data("mlp")
    with pytest.raises(ValueError, match=r"loss_fn returned \(\): expected per-sample losses of shape \(80, \.\.\.\)"):
        _train(_mlp(), x, y, steps=1, loss_fn=lambda p, t: nn.functional.cross_entropy(p, t))
    with pytest.raises(TypeError, match="labels=None is invalid"):
        _train(_mlp(), x, None, steps=1)
    with pytest.raises(TypeError, match="must return the predictions as a tensor"):
        _train(DictOutput(), x, y, steps=1, loss_fn="cross_entropy")


class DictOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = _mlp()

    def forward(self, batch):
        return {"logits": self.net(batch)}


def test_low_precision_reaches_the_strategy():
    """``low_precision="stochastic"`` reaches the strategy: a bf16 model trained without master copies, its weights
    moved in place (a share of them each step: the update is smaller than a bf16 step), and Adam refused with the
    argument named."""
    model = _mlp().to(torch.bfloat16)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = _data("mlp")
    _, _, trainer = _train(model, x.bfloat16(), y, steps=4, optimizer=None, learning_rate=2e-3,
                           low_precision="stochastic")  # fmt: skip
    assert trainer.strategy.low_precision == "stochastic"
    assert trainer.strategy.state_dict()["master"] == {}
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    moved = [(p.detach() != b).float().mean().item() for p, b in zip(model.parameters(), before)]
    assert all(0 < share < 0.9 for share in moved), moved
    with pytest.raises(ValueError, match="low_precision"):
        EGGROLLTrainer(_mlp().to(torch.bfloat16), "cpu", optimizer="adam", low_precision="stochastic")
