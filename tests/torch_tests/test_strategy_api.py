"""The strategy interface contract: construction, setup, perturb/step lifecycle, bad input, metrics."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from es_helpers import make_strategy

from eggroll_rl import EggrollStrategy, ESModule, PerturbationContext


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_defaults_match_the_seed():
    s = EggrollStrategy()
    assert (s.sigma, s.lr, s.rank, s.optimizer_name, s.antithetic, s.noise_reuse) == (0.1, 0.01, 4, "adam", True, 0)
    assert (s.fitness_shaping, s.group_size, s.grad_clip, s.weight_decay, s.seed) == ("zscore", 0, None, 0.0, 0)
    assert s.allow_cpu is False and s.noise == "gaussian"


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"rank": 0}, "rank"),
        ({"rank": 2.5}, "rank"),
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"lr": -0.1}, "lr"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"fitness_shaping": "softmax"}, "fitness_shaping"),
        ({"noise": "uniform"}, "noise"),
        ({"noise_reuse": -1}, "noise_reuse"),
        ({"grad_clip": 0.0}, "grad_clip"),
        ({"seed": -3}, "seed"),
    ],
)
def test_invalid_constructor_arguments_name_the_argument(kwargs, word):
    # The shared shape (eggroll_rl.validation): the argument, the value given, what was expected.
    with pytest.raises((ValueError, TypeError), match=rf"^{word}={kwargs[word]!r} is invalid: expected \S"):
        EggrollStrategy(**kwargs)


def test_optimizer_none_by_name_is_plain_ascent(device, simple_mlp):
    """``optimizer="none"`` (the choice's name in ``eggroll_rl.choices.Optimizer``) is ``optimizer=None``."""
    results = []
    for optimizer in (None, "none"):
        model = copy.deepcopy(simple_mlp)
        s = make_strategy(device, optimizer=optimizer, lr=0.5)
        s.setup(model)
        with s.perturb(6):
            pass
        s.step(torch.arange(6.0))
        assert s.optimizer is None and s.optimizer_name is None and s.config()["optimizer"] is None
        results.append(_params(model))
    assert _same(*results)


def test_cpu_model_needs_opt_in():
    model = nn.Linear(3, 2)
    with pytest.raises(RuntimeError, match="allow_cpu=True"):
        EggrollStrategy().setup(model)
    EggrollStrategy(allow_cpu=True).setup(model)


def test_lifecycle_errors(device, simple_mlp):
    s = make_strategy(device)
    with pytest.raises(RuntimeError, match="setup"):
        s.perturb(4)
    s.setup(simple_mlp)
    with pytest.raises(RuntimeError, match="before any perturb"):
        s.step(torch.zeros(4))
    pop = s.perturb(4)
    with pytest.raises(RuntimeError, match="inside the `with"):
        pop.batched_forward(simple_mlp, torch.zeros(4, 8, device=device))


def test_perturb_yields_context_and_step_returns_metrics(device, simple_mlp, eggroll_strategy):
    eggroll_strategy.setup(simple_mlp)
    x = torch.randn(16, 8, device=device)
    with eggroll_strategy.perturb(population_size=16, epoch=3) as pop:
        assert isinstance(pop, PerturbationContext)
        assert pop.population_size == 16
        y = pop.batched_forward(simple_mlp, x)
        assert y.shape == (16, 4)
    f = -y.pow(2).mean(dim=1)
    m = eggroll_strategy.step(f)
    for key in ("fitness_mean", "fitness_std", "fitness_min", "fitness_max", "grad_norm", "update_norm", "epoch"):
        assert key in m
    assert m["epoch"] == 3
    assert m["fitness_max"] == pytest.approx(float(f.max()))
    assert m["fitness_mean"] == pytest.approx(float(f.mean()), rel=1e-5)
    assert m["update_norm"] > 0


def test_step_inside_and_after_the_block_agree(device):
    def run(inside: bool):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2)).to(device)
        s = make_strategy(device, rank=2)
        s.setup(model)
        x = torch.randn(8, 5, device=device)
        with s.perturb(8, epoch=1) as pop:
            f = pop.batched_forward(model, x).sum(dim=1)
            if inside:
                s.step(f)
        if not inside:
            s.step(f)
        return _params(model)

    assert _same(run(True), run(False))


@pytest.mark.parametrize(
    "bad, exc, word",
    [
        (torch.zeros(5), ValueError, "shape"),
        (torch.zeros(6, 1), ValueError, "shape"),
        (torch.zeros(6, dtype=torch.bool), TypeError, "dtype"),
        (torch.tensor([0.0, 1.0, float("nan"), 0.0, float("inf"), 0.0]), ValueError, r"members \[2, 4\]"),
        ("abc", TypeError, "fitnesses"),
    ],
)
def test_bad_fitness_raises_and_changes_nothing(device, simple_mlp, bad, exc, word):
    s = make_strategy(device)
    s.setup(simple_mlp)
    with s.perturb(6):
        pass
    before = _params(simple_mlp)
    with pytest.raises(exc, match=word):
        s.step(bad)
    assert _same(before, _params(simple_mlp))
    assert s.num_steps == 0


def test_odd_population_with_antithetic_is_rejected(device, simple_mlp, eggroll_strategy):
    eggroll_strategy.setup(simple_mlp)
    with pytest.raises(ValueError, match="odd"):
        eggroll_strategy.perturb(7)
    s = make_strategy(device, antithetic=False)
    s.setup(simple_mlp)
    with s.perturb(7) as pop:
        assert pop.population_size == 7


def test_member_ids_are_validated(device, simple_mlp, eggroll_strategy):
    eggroll_strategy.setup(simple_mlp)
    x = torch.randn(6, 8, device=device)
    with eggroll_strategy.perturb(4) as pop:
        with pytest.raises(ValueError, match="member_ids"):
            pop.batched_forward(simple_mlp, x)  # 6 rows, 4 members, no ids
        with pytest.raises(IndexError, match=r"\[0, 4\)"):
            pop.batched_forward(simple_mlp, x, member_ids=torch.tensor([0, 1, 2, 3, 4, 0], device=device))
        with pytest.raises(ValueError, match=r"shape \(6,\)"):
            pop.batched_forward(simple_mlp, x, member_ids=torch.tensor([0, 1, 2], device=device))
        with pytest.raises(TypeError, match="integer"):
            pop.batched_forward(simple_mlp, x, member_ids=torch.zeros(6, device=device))
        with pytest.raises(KeyError, match="nope"):
            pop.get_factors(0, "nope")
        with pytest.raises(IndexError, match="member_id"):
            pop.get_factors(4, "0.weight")
        with pytest.raises(ValueError, match="not the module"):
            pop.batched_forward(nn.Linear(8, 4).to(device), x[:4])


def test_setup_accepts_esmodule(device, simple_mlp):
    es = ESModule(simple_mlp)
    s = make_strategy(device)
    s.setup(es)
    assert [x.name for x in s.specs] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    with s.perturb(4) as pop:
        a = pop.batched_forward(es, torch.ones(4, 8, device=device))
        b = pop.batched_forward(simple_mlp, torch.ones(4, 8, device=device))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", None, "instance"])
def test_every_optimizer_updates_the_parameters(device, optimizer):
    torch.manual_seed(0)
    model = nn.Linear(4, 3).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05) if optimizer == "instance" else optimizer
    s = make_strategy(device, optimizer=opt, rank=2)
    s.setup(model)
    before = _params(model)
    with s.perturb(8) as pop:
        f = pop.batched_forward(model, torch.randn(8, 4, device=device)).sum(1)
    s.step(f)
    assert not _same(before, _params(model))


def test_lr_setter_reaches_the_torch_optimizer(device, simple_mlp):
    s = make_strategy(device, optimizer="sgd", lr=0.1)
    s.setup(simple_mlp)
    s.lr = 0.25
    assert all(g["lr"] == 0.25 for g in s.optimizer.param_groups)
    with pytest.raises(ValueError, match="lr"):
        s.lr = -1.0


def test_member_ids_are_rechecked_after_an_in_place_change(device, simple_mlp, eggroll_strategy):
    eggroll_strategy.setup(simple_mlp)
    x = torch.randn(4, 8, device=device)
    ids = torch.tensor([0, 1, 2, 3], device=device)
    with eggroll_strategy.perturb(4) as pop:
        pop.batched_forward(simple_mlp, x, member_ids=ids)
        assert pop._member_ids(x, ids)[1] is True  # antithetic pairs in order: rows 2q, 2q+1 share noise
        ids[3] = 7  # the validation is remembered per tensor *version*: an in-place edit is checked again
        with pytest.raises(IndexError, match=r"\[0, 7\]"):
            pop.batched_forward(simple_mlp, x, member_ids=ids)
        assert pop._member_ids(x, torch.tensor([1, 2, 0, 3], device=device))[1] is False
