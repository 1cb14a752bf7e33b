"""Strategy results under degenerate or bad input (issue #10, "Silently wrong strategy results").

Each test compares against explicit math (float64 formulas, materialized perturbed weights) or checks that the bad
input raises an exception that names the argument, the value and what was expected.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from es_helpers import make_strategy

from eggroll_rl import ESModule
from eggroll_rl.fitness import centered_rank, shape_fitness, zscore


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _max_change(model: nn.Module, before: list[torch.Tensor]) -> float:
    return max(float((p.detach() - b).abs().max()) for p, b in zip(model.parameters(), before))


# ----------------------------------------------------------------- 1. ties in fitness shaping
def _old_centered_rank(f: torch.Tensor) -> torch.Tensor:
    """The formula before average ranks (ties broken by index): the reference for untied fitness."""
    n = f.numel()
    ranks = torch.empty_like(f)
    ranks[f.argsort(stable=True)] = torch.arange(n, dtype=f.dtype)
    return ranks / (n - 1) - 0.5


def test_centered_rank_gives_tied_members_their_average_rank():
    f = torch.tensor([5.0, 1.0, 5.0, 3.0, 5.0, 1.0])
    # sorted: 1 1 3 5 5 5 -> ranks (0+1)/2, 2, (3+4+5)/3; scaled by 1/(n-1) and centred
    expected = torch.tensor([4.0, 0.5, 4.0, 2.0, 4.0, 0.5]) / 5 - 0.5
    assert torch.equal(centered_rank(f), expected)
    grouped = shape_fitness(torch.tensor([2.0, 2.0, 7.0, 1.0, 1.0, 1.0]), "centered_rank", group_size=3)
    assert torch.equal(grouped, torch.tensor([-0.25, -0.25, 0.5, 0.0, 0.0, 0.0]))


@pytest.mark.parametrize("n", [2, 7, 64, 1000])
def test_untied_fitness_shaping_is_bit_identical_to_the_old_formulas(n):
    gen = torch.Generator().manual_seed(n)
    f = torch.randn(n, generator=gen) * 300.0 + 1000.0  # HalfCheetah-like returns, no ties
    assert torch.unique(f).numel() == n
    assert torch.equal(centered_rank(f), _old_centered_rank(f))
    var, mean = torch.var_mean(f, unbiased=False)
    assert torch.equal(zscore(f), (f - mean) / torch.sqrt(var + 1e-8))
    if n % 2 == 0 and n > 2:
        groups = f.view(-1, 2)
        old = ((groups - groups.mean(dim=1, keepdim=True)) / torch.sqrt(f.var(unbiased=False) + 1e-8)).view(-1)
        assert torch.equal(shape_fitness(f, "zscore", group_size=2), old)


@pytest.mark.parametrize("shaping", ["centered_rank", "zscore"])
@pytest.mark.parametrize("optimizer", [None, "sgd", "adam"])
def test_all_equal_fitness_leaves_the_weights_exactly_unchanged(device, shaping, optimizer):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).to(device)
    es = make_strategy(device, sigma=0.1, lr=0.05, rank=2, fitness_shaping=shaping, optimizer=optimizer,
                       antithetic=False)  # fmt: skip
    es.setup(model)
    before = _params(model)
    for value in (500.0, 0.1, 37.3):  # a solved CartPole, and values whose mean is not exact in float32
        with es.perturb(8, epoch=0):
            pass
        metrics = es.step(torch.full((8,), value))
        assert metrics["update_norm"] == 0.0
    assert _max_change(model, before) == 0.0


def test_zscore_of_tied_groups_is_exactly_zero():
    f = torch.tensor([0.1, 0.1, 0.1, 37.3, 37.3, 37.3])
    assert torch.equal(zscore(f[:3]), torch.zeros(3))
    z = shape_fitness(f, "zscore", group_size=3)
    assert torch.equal(z, torch.zeros(6))


# ----------------------------------------------------------------- 2. zscore at the edge of float32
@pytest.mark.parametrize(
    "values",
    [
        [1e38, -1e38, 3e38, 0.0],
        [3.0e38, 3.1e38, 3.2e38, 3.3e38],
        [-3e38, -2e38, 1e37, 2.5e38],
        [1e20, -1e20, 0.0, 5e19],
    ],
)
def test_zscore_of_huge_finite_fitness_matches_float64(values):
    f = torch.tensor(values, dtype=torch.float32)
    f64 = f.double()
    var, mean = torch.var_mean(f64, unbiased=False)
    expected = ((f64 - mean) / torch.sqrt(var + 1e-8)).float()
    torch.testing.assert_close(zscore(f), expected, rtol=1e-5, atol=1e-6)
    grouped = shape_fitness(f, "zscore", group_size=2)
    g64 = f64.view(-1, 2)
    expected_g = ((g64 - g64.mean(dim=1, keepdim=True)) / torch.sqrt(var + 1e-8)).view(-1).float()
    torch.testing.assert_close(grouped, expected_g, rtol=1e-5, atol=1e-6)


def test_step_with_huge_fitness_still_updates(device):
    torch.manual_seed(0)
    model = nn.Linear(4, 3).to(device)
    es = make_strategy(device, sigma=0.1, lr=0.05, optimizer=None)
    es.setup(model)
    before = _params(model)
    with es.perturb(8):
        pass
    es.step(torch.tensor([1e38, -1e38, 3e38, 0.0, 2e38, -3e38, 1e37, 5e37]))
    assert _max_change(model, before) > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ----------------------------------------------------------------- 3. one step per perturb()
def test_second_step_after_one_perturb_is_refused(device):
    model = nn.Linear(4, 2).to(device)
    es = make_strategy(device)
    es.setup(model)
    with es.perturb(4, epoch=3):
        pass
    es.step(torch.arange(4.0))
    before = _params(model)
    with pytest.raises(RuntimeError, match=r"already applied.*epoch=3.*strategy\.perturb"):
        es.step(torch.arange(4.0))
    assert _max_change(model, before) == 0.0
    with es.perturb(4, epoch=4):  # the documented loop goes on
        pass
    es.step(torch.arange(4.0))


def test_nested_perturb_is_refused(device):
    model = nn.Linear(4, 2).to(device)
    es = make_strategy(device)
    es.setup(model)
    with es.perturb(4, epoch=0):
        with pytest.raises(RuntimeError, match=r"perturb\(population_size=4, epoch=1\).*epoch=0"):
            es.perturb(4, epoch=1)
    metrics = es.step(torch.arange(4.0))
    assert metrics["epoch"] == 0


def test_failed_step_can_be_retried(device):
    model = nn.Linear(4, 2).to(device)
    es = make_strategy(device)
    es.setup(model)
    with es.perturb(4):
        pass
    with pytest.raises(ValueError, match="fitnesses"):
        es.step(torch.arange(3.0))
    es.step(torch.arange(4.0))


# ----------------------------------------------------------------- 4. load_state_dict
def _state_of(model: nn.Module, device) -> dict:
    es = make_strategy(device)
    es.setup(model)
    return es.state_dict()


def test_load_state_dict_refuses_a_broadcastable_shape(device):
    state = _state_of(nn.Linear(8, 1).to(device), device)
    es = make_strategy(device)
    target = nn.Linear(8, 2).to(device)
    es.setup(target)
    before = _params(target)
    with pytest.raises(ValueError, match=r"'weight'.*\(1, 8\).*\(2, 8\)"):
        es.load_state_dict(state)
    assert _max_change(target, before) == 0.0


def test_load_state_dict_refuses_other_shapes_and_non_tensors(device):
    es = make_strategy(device)
    es.setup(nn.Linear(8, 2).to(device))
    state = _state_of(nn.Linear(5, 2).to(device), device)
    with pytest.raises(ValueError, match=r"'weight'.*\(2, 5\).*\(2, 8\)"):
        es.load_state_dict(state)
    state = es.state_dict()
    state["params"]["bias"] = [0.0, 0.0]
    with pytest.raises(ValueError, match=r"'bias'.*list"):
        es.load_state_dict(state)


@pytest.mark.parametrize("key", ["params", "config", "num_steps", "optimizer", "last_perturb"])
def test_load_state_dict_names_a_missing_key(device, key):
    es = make_strategy(device)
    es.setup(nn.Linear(8, 2).to(device))
    state = es.state_dict()
    del state[key]
    with pytest.raises(ValueError, match=f"'{key}'"):
        es.load_state_dict(state)


def test_load_state_dict_validates_the_stored_config(device):
    es = make_strategy(device)
    es.setup(nn.Linear(8, 2).to(device))
    state = es.state_dict()
    state["config"]["sigma"] = -1.0
    with pytest.raises(ValueError, match="sigma"):
        es.load_state_dict(state)
    assert es.sigma == 0.1
    del state["config"]["rank"]
    with pytest.raises(ValueError, match="'rank'"):
        es.load_state_dict(state)


# ----------------------------------------------------------------- 5. settings changed after construction
@pytest.mark.parametrize("value", [0, 0.0, -0.1, float("nan"), float("inf"), "0.1", None])
def test_sigma_set_after_construction_is_validated(device, value):
    model = nn.Linear(4, 2).to(device)
    es = make_strategy(device)
    es.setup(model)
    with pytest.raises((ValueError, TypeError), match="sigma"):
        es.sigma = value
    assert es.sigma == 0.1
    with es.perturb(4):
        pass
    es.step(torch.arange(4.0))
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "value"),
    [("rank", 0), ("rank", 2.5), ("noise_reuse", -1), ("group_size", -2), ("seed", 2**32), ("seed", -1),
     ("grad_clip", 0.0), ("grad_clip", float("nan")), ("weight_decay", -1.0), ("fitness_shaping", "rank"),
     ("noise", "uniform"), ("antithetic", "yes")],
)  # fmt: skip
def test_settings_set_after_construction_are_validated_like_the_constructor(device, name, value):
    es = make_strategy(device)
    shape = rf"^{name}=.* is invalid: expected \S"  # eggroll_rl.validation's message
    with pytest.raises((ValueError, TypeError), match=shape):
        es.__class__(**{name: value}, allow_cpu=True)
    with pytest.raises((ValueError, TypeError), match=shape):
        setattr(es, name, value)


def test_valid_settings_can_still_be_changed(device):
    es = make_strategy(device)
    es.setup(nn.Linear(4, 2).to(device))
    es.sigma, es.rank, es.noise_reuse, es.grad_clip, es.fitness_shaping = 0.05, 2, 3, None, "centered_rank"
    assert (es.sigma, es.rank, es.noise_reuse, es.grad_clip, es.fitness_shaping) == (0.05, 2, 3, None, "centered_rank")


def test_group_size_and_none_shaping_are_checked_together_after_construction(device):
    es = make_strategy(device, group_size=2)
    with pytest.raises(ValueError, match="group_size"):
        es.fitness_shaping = "none"


def test_absurd_sigma_and_rank_are_reported(device):
    with pytest.warns(UserWarning, match=r"sigma=1e\+30"):
        make_strategy(device, sigma=1e30)
    es = make_strategy(device)
    with pytest.warns(UserWarning, match=r"sigma=1e\+30"):
        es.sigma = 1e30
    es = make_strategy(device, rank=1000000)
    with pytest.raises(ValueError, match=r"rank=1000000.*\b8\b"):
        es.setup(nn.Linear(8, 16).to(device))
    es = make_strategy(device, rank=4)
    es.setup(nn.Linear(8, 16).to(device))
    with pytest.raises(ValueError, match=r"rank=1000000"):
        es.rank = 1000000
    assert es.rank == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_strategy(device, rank=4).setup(nn.Linear(4, 2).to(device))  # rank > min(m, n) of a small layer: fine
    with pytest.warns(UserWarning, match=r"rank=5.*at most 2"):
        make_strategy(device, rank=5).setup(nn.Linear(3, 2).to(device))  # wasteful, not absurd


# ----------------------------------------------------------------- 6. free 2-D parameters
class _FreeLinear(nn.Module):
    """A user module with a free matrix parameter used through ``F.linear``, ``x @ W`` or ``x @ W.T``."""

    def __init__(self, use: str):
        super().__init__()
        self.use = use
        shape = (3, 5) if use == "matmul" else (5, 3)
        self.w = nn.Parameter(torch.randn(*shape))
        self.b = nn.Parameter(torch.randn(5))

    def forward(self, x):
        if self.use == "linear":
            return F.linear(x, self.w, self.b)
        if self.use == "matmul":
            return x @ self.w + self.b
        return torch.tanh(F.linear(torch.tanh(x), self.w) * 2.0)


@pytest.mark.parametrize("use", ["linear", "matmul", "linear_nobias"])
@pytest.mark.parametrize("rows", [1, 2])
def test_free_matrix_parameter_uses_one_noise_in_forward_iterate_and_update(device, use, rows):
    torch.manual_seed(0)
    model = _FreeLinear(use).to(device)
    n = 6
    es = make_strategy(device, sigma=0.3, lr=0.1, rank=2, optimizer=None)
    es.setup(model)
    x = torch.randn(n, *([4] * (rows - 1)), 3, device=device)
    with es.perturb(n, epoch=1) as pop:
        y = pop.batched_forward(model, x)
        deltas = {s.name: torch.stack([pop.perturbation(i, s.name) for i in range(n)]) for s in es.specs}
        plain = {name: p.detach().clone() for name, p in model.named_parameters()}
        reference = []
        for i in range(n):
            w = plain["w"] + deltas["w"][i]
            b = plain["b"] + deltas["b"][i]
            xi = x[i]
            if use == "linear":
                reference.append(xi @ w.T + b)
            elif use == "matmul":
                reference.append(xi @ w + b)
            else:
                reference.append(torch.tanh((torch.tanh(xi) @ w.T) * 2.0))
        reference = torch.stack(reference)
        iterated = torch.stack([model(x[i : i + 1])[0] for i in pop.iterate()])
    assert y.shape == reference.shape
    torch.testing.assert_close(y, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(iterated, reference, rtol=1e-5, atol=1e-5)

    fitness = torch.randn(n, generator=torch.Generator().manual_seed(3))
    z = shape_fitness(fitness, "zscore")
    es.step(fitness)
    for name, p in model.named_parameters():
        g = (z.to(device)[:, None] * deltas[name].reshape(n, -1)).sum(0).reshape(p.shape) / (n * 0.3 * 0.3)
        expected = plain[name] + 0.1 * g
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)


class _BadUse(nn.Module):
    def __init__(self, use: str):
        super().__init__()
        self.use = use
        self.w = nn.Parameter(torch.randn(5, 3))

    def forward(self, x):
        if self.use == "left":
            return (self.w @ x.T).T
        if self.use == "sum":
            return x * self.w.sum()
        if self.use == "data":
            return x @ self.w.data.T
        return x @ self.w.T


@pytest.mark.parametrize("use", ["left", "sum", "data", "T"])
def test_unsupported_uses_of_a_free_parameter_raise(device, use):
    model = _BadUse(use).to(device)
    es = make_strategy(device)
    es.setup(model)
    with es.perturb(4) as pop, pytest.raises(NotImplementedError, match="'w'"):
        pop.batched_forward(model, torch.randn(4, 3, device=device))


# ----------------------------------------------------------------- 7. ESModule names
def test_freeze_parameter_accepts_the_names_esmodule_itself_yields():
    model = ESModule(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)))
    names = [name for name, _ in model.named_parameters()]
    assert "module.2.bias" in names
    for name in names:
        model.freeze_parameter(name)
    assert model.frozen_parameters == {"0.weight", "0.bias", "2.weight", "2.bias"}
    with pytest.raises(KeyError, match="module.nope"):
        model.freeze_parameter("module.nope")


def test_freeze_parameter_with_esmodule_name_excludes_it_from_evolution(device):
    model = ESModule(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)).to(device))
    model.freeze_parameter("module.2.bias")
    es = make_strategy(device)
    es.setup(model)
    assert [s.name for s in es.specs] == ["0.weight", "0.bias", "2.weight"]
    assert math.isfinite(es.sigma)


class _FreeConvEmbedding(nn.Module):
    """Free parameters used as the weight of ``F.conv1d`` and ``F.embedding``."""

    def __init__(self):
        super().__init__()
        self.table = nn.Parameter(torch.randn(7, 3))
        self.filters = nn.Parameter(torch.randn(4, 3, 2))
        self.b = nn.Parameter(torch.randn(4))

    def forward(self, idx):
        e = F.embedding(idx, self.table).transpose(1, 2)  # (R, 3, L)
        return F.conv1d(e, self.filters, self.b)


def test_free_conv_and_embedding_weights_match_the_materialized_member(device):
    torch.manual_seed(1)
    model = _FreeConvEmbedding().to(device)
    es = make_strategy(device, sigma=0.2)
    es.setup(model)
    idx = torch.randint(0, 7, (4, 5), device=device)
    with es.perturb(4) as pop:
        y = pop.batched_forward(model, idx)
        iterated = torch.stack([model(idx[i : i + 1])[0] for i in pop.iterate()])
    assert y.shape == (4, 4, 4)
    torch.testing.assert_close(y, iterated, rtol=1e-5, atol=1e-5)


def test_noise_settings_changed_between_perturb_and_step_are_refused(device):
    model = nn.Linear(4, 2).to(device)
    es = make_strategy(device)
    es.setup(model)
    with es.perturb(4):
        pass
    es.sigma = 0.2
    with pytest.raises(RuntimeError, match=r"sigma from 0\.1 to 0\.2"):
        es.step(torch.arange(4.0))
    with es.perturb(4):  # perturb() again with the new settings: the step goes through
        pass
    assert es.step(torch.arange(4.0))["sigma"] == 0.2
