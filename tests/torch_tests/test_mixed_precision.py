"""Low-precision parameters: float32 master weights and optimizer state (issue 14, section 1).

An in-place add into a bf16 weight rounds away every update below half a bf16 step, so a bf16 model trained with a
small learning rate would not move at all. The strategy keeps a float32 master copy of each bf16/fp16 parameter:
the bf16 model must then move like its float32 twin (same initial values, seed and fitnesses).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from es_helpers import make_strategy, materialized_forward

NUM_MEMBERS = 16
NUM_STEPS = 64


def _half_ulp(w: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Half a step of ``dtype`` at each value of ``w`` (normal numbers)."""
    _, exp = torch.frexp(w.float())  # |w| in [2**(exp-1), 2**exp)
    return torch.ldexp(torch.full_like(w.float(), torch.finfo(dtype).eps / 2), exp - 1)


def _twins(device, dtype):
    """A float32 MLP and its ``dtype`` copy with the same (exactly representable) weights, all |w| in [0.25, 1)."""
    g = torch.Generator().manual_seed(0)
    model32 = nn.Sequential(nn.Linear(12, 24), nn.Tanh(), nn.Linear(24, 3))
    with torch.no_grad():
        for p in model32.parameters():
            sign = torch.where(torch.rand(p.shape, generator=g) < 0.5, -1.0, 1.0)
            p.copy_((sign * (0.25 + 0.75 * torch.rand(p.shape, generator=g))).to(dtype))
    return model32.to(device), copy.deepcopy(model32).to(device=device, dtype=dtype)


def _train(model, device, optimizer, lr, fitness, steps, **kw):
    st = make_strategy(device, sigma=0.1, rank=2, lr=lr, optimizer=optimizer, noise_reuse=steps, **kw)
    st.setup(model)
    history = []
    for t in range(steps):
        with st.perturb(NUM_MEMBERS, epoch=t):
            pass  # the fitnesses are given: both models get the same ones, whatever they compute
        st.step(fitness)
        history.append({n: p.detach().float().clone() for n, p in model.named_parameters()})
    return st, history


@pytest.mark.parametrize(
    "dtype,optimizer,lr",
    [
        (torch.bfloat16, None, 6e-5),
        (torch.bfloat16, "sgd", 6e-5),
        (torch.bfloat16, "adam", 4e-4),
        (torch.float16, None, 6e-6),
        (torch.float16, "adamw", 6e-5),
    ],  # fmt: skip
)
def test_low_precision_model_moves_like_its_float32_twin(device, dtype, optimizer, lr):
    model32, model_lp = _twins(device, dtype)
    w0 = {n: p.detach().float().clone() for n, p in model32.named_parameters()}
    fitness = torch.randn(NUM_MEMBERS, generator=torch.Generator().manual_seed(1)).to(device)
    _, hist32 = _train(model32, device, optimizer, lr, fitness, NUM_STEPS)
    st, hist_lp = _train(model_lp, device, optimizer, lr, fitness, NUM_STEPS)

    # The regime where the old in-place update did nothing: every element's first step is below half a step of
    # the dtype, so `w.add_(step)` in that dtype rounds each one back to w.
    for name, w in w0.items():
        first = hist32[0][name] - w
        assert (first.abs() < _half_ulp(w, dtype)).all(), name
        assert torch.equal(w.to(dtype).add(first.to(dtype)), w.to(dtype)), name

    # Bit-for-bit on the CPU twin path; on CUDA a bf16 model's update uses bf16 factors (update.py: ~3e-3 of G).
    tol = 1e-2 if device.type == "cuda" else 1e-5
    for name, w in w0.items():
        # The model's parameter moved like the twin's, to its dtype's rounding (the old code left it at w: 1.0).
        err = (hist_lp[-1][name] - hist32[-1][name]).norm() / (hist32[-1][name] - w).norm()
        assert err < 0.3, f"{name}: the {dtype} model moved {err:.2f} (relative) away from its float32 twin"
    masters = st.state_dict()["master"]
    for name, w in w0.items():
        moved32 = hist32[-1][name] - w
        # The master copy follows the twin to float32 rounding, and the model holds the master rounded.
        assert masters[name].dtype == torch.float32
        assert ((masters[name] - hist32[-1][name]).norm() / moved32.norm()).item() < tol, name
        assert torch.equal(dict(model_lp.named_parameters())[name].detach(), masters[name].to(dtype)), name
    if optimizer == "adam":
        for state in st.optimizer.state.values():
            assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32


def test_float32_model_has_no_master_copy(device):
    model32, _ = _twins(device, torch.bfloat16)
    st = make_strategy(device, optimizer="adam")
    st.setup(model32)
    assert st.state_dict()["master"] == {}
    assert all(p is q for p, q in zip(st.optimizer.param_groups[0]["params"], model32.parameters()))


def _state_after(model, device, steps, fitness, state=None, strip_master=False):
    st = make_strategy(device, sigma=0.1, rank=2, lr=1e-4, optimizer="adam")
    st.setup(model)
    if state is not None:
        if strip_master:
            state = {k: v for k, v in state.items() if k != "master"}
        st.load_state_dict(state)
    for t in range(steps):
        with st.perturb(NUM_MEMBERS, epoch=st.num_steps):
            pass
        st.step(fitness[t])
    return st


def test_state_dict_carries_the_master_weights(device):
    fitness = torch.randn(4, NUM_MEMBERS, generator=torch.Generator().manual_seed(2)).to(device)
    _, straight = _twins(device, torch.bfloat16)
    full = _state_after(straight, device, 4, fitness)

    _, first = _twins(device, torch.bfloat16)
    half = _state_after(first, device, 2, fitness)
    saved = copy.deepcopy(half.state_dict())
    assert saved["optimizer"]["state"][0]["exp_avg_sq"].dtype == torch.float32
    _, resumed_model = _twins(device, torch.bfloat16)
    resumed = _state_after(resumed_model, device, 2, fitness[2:], state=saved)
    for name, m in full.state_dict()["master"].items():
        assert torch.equal(resumed.state_dict()["master"][name], m), name
    for p, q in zip(straight.parameters(), resumed_model.parameters()):
        assert torch.equal(p, q)

    # A state without "master" (the format before master weights) loads: the masters start from "params".
    _, old_model = _twins(device, torch.bfloat16)
    old = _state_after(old_model, device, 0, fitness, state=saved, strip_master=True)
    for name, p in old_model.named_parameters():
        assert torch.equal(old.state_dict()["master"][name], p.detach().float())


def test_outside_changes_reach_the_master(device):
    """A parameter rewritten outside the strategy replaces its master; rewritten with the same value (iterate(),
    a checkpoint's model weights) it keeps the master's extra precision."""
    fitness = torch.randn(NUM_MEMBERS, generator=torch.Generator().manual_seed(3)).to(device)
    _, model = _twins(device, torch.bfloat16)
    st, _ = _train(model, device, None, 2e-6, fitness, 3)
    master = st.state_dict()["master"]["0.weight"].clone()
    assert not torch.equal(master, model[0].weight.detach().float())  # finer than bf16
    with st.perturb(NUM_MEMBERS, epoch=3) as pop:
        for _ in pop.iterate():
            model(torch.zeros(1, 12, device=device, dtype=torch.bfloat16))
    model.load_state_dict(copy.deepcopy(model.state_dict()))
    st.step(fitness)
    assert not torch.equal(st.state_dict()["master"]["0.weight"], master)  # it moved on from the finer value...
    assert (st.state_dict()["master"]["0.weight"] - master).abs().max() < 1e-4  # ...by one small step

    new = torch.full_like(model[0].weight, 0.5)
    model[0].weight.data = new  # a new tensor: seen through the data pointer
    with torch.no_grad():
        model[2].weight.mul_(2)  # in place: seen through the version counter
    before = model[2].weight.detach().float().clone()
    with st.perturb(NUM_MEMBERS, epoch=4):
        pass
    st.step(fitness)
    masters = st.state_dict()["master"]
    assert (masters["0.weight"] - 0.5).abs().max() < 1e-4
    assert (masters["2.weight"] - before).abs().max() < 1e-4


def test_user_optimizer_on_low_precision_parameters_warns(device):
    _, model = _twins(device, torch.bfloat16)
    st = make_strategy(device, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.warns(UserWarning, match="master weights"):
        st.setup(model)
    assert st.state_dict()["master"] == {}


def test_batched_forward_under_autocast_matches_the_materialized_member(device):
    """A float32 model run under bf16 autocast: each perturbed layer computes in bf16, as F.linear does there."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 4)).to(device)
    st = make_strategy(device, sigma=0.1, rank=2)
    st.setup(model)
    x = torch.randn(8, 10, device=device)
    with st.perturb(8, epoch=0) as pop:
        exact = torch.cat([materialized_forward(model, pop, x[i : i + 1], i) for i in range(8)])
        with torch.autocast(device.type, dtype=torch.bfloat16):
            y = pop.batched_forward(model, x)
            ref = torch.cat([materialized_forward(model, pop, x[i : i + 1], i) for i in range(8)])
    assert y.dtype == ref.dtype == torch.bfloat16
    # Within a few times the error autocast itself makes on the materialized member.
    assert (y.float() - exact).abs().max() <= 3 * (ref.float() - exact).abs().max() + 1e-3


# --- low_precision="stochastic": bf16 weights updated in place with stochastic rounding --------------------------


def test_stochastic_rounding_moves_a_bf16_model_like_its_float32_twin(device, optimizer=None):
    """Every element's step is below half a bf16 step (round-to-nearest in place would leave the model unchanged:
    asserted in the test above); rounded stochastically, the bf16 model follows the float32 twin in expectation."""
    lr, steps = 6e-5, 4 * NUM_STEPS
    model32, model_lp = _twins(device, torch.bfloat16)
    w0 = {n: p.detach().float().clone() for n, p in model32.named_parameters()}
    fitness = torch.randn(NUM_MEMBERS, generator=torch.Generator().manual_seed(1)).to(device)
    _, hist32 = _train(model32, device, optimizer, lr, fitness, steps)
    st, hist_lp = _train(model_lp, device, optimizer, lr, fitness, steps, low_precision="stochastic")
    assert st.state_dict()["master"] == {}
    assert all(p.dtype == torch.bfloat16 for p in model_lp.parameters())
    for name, w in w0.items():
        moved32 = hist32[-1][name] - w
        moved = hist_lp[-1][name] - w
        # The twin moves each element by the same sub-half-step amount every step (same noise and fitness), ~8 bf16
        # steps in all on average; the rounding adds zero-mean noise of at most one step per step (measured on the
        # CPU: relative error 0.26-0.31, norm ratio 0.90-1.05, cosine 0.95-0.97; at 64 steps 0.47-0.64).
        err = ((moved - moved32).norm() / moved32.norm()).item()
        assert err < 0.45, f"{name}: moved {err:.2f} (relative) away from the float32 twin"
        assert 0.75 < (moved.norm() / moved32.norm()).item() < 1.3, name
        assert torch.nn.functional.cosine_similarity(moved.flatten(), moved32.flatten(), dim=0) > 0.9, name


def test_stochastic_rounding_is_reproducible_and_seeded(device):
    fitness = torch.randn(NUM_MEMBERS, generator=torch.Generator().manual_seed(4)).to(device)
    runs = []
    for seed in (42, 42, 43):
        _, model = _twins(device, torch.bfloat16)
        _train(model, device, None, 6e-5, fitness, 4, low_precision="stochastic", seed=seed)
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    # Another seed: other noise and other rounding bits.
    assert not all(torch.equal(a, b) for a, b in zip(runs[0], runs[2]))


def test_stochastic_rounding_leaves_float32_parameters_as_before(device):
    """A float32 model has nothing to round: low_precision changes nothing, bit for bit."""
    fitness = torch.randn(NUM_MEMBERS, generator=torch.Generator().manual_seed(5)).to(device)
    results = []
    for mode in ("master", "stochastic"):
        model32, _ = _twins(device, torch.bfloat16)
        _train(model32, device, None, 1e-3, fitness, 3, low_precision=mode)
        results.append([p.detach().clone() for p in model32.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_stochastic_rounding_rejects_what_it_cannot_round(device):
    with pytest.raises(ValueError, match=r"low_precision.*'adam'"):
        make_strategy(device, optimizer="adam", low_precision="stochastic")
    with pytest.raises(ValueError, match="low_precision"):
        make_strategy(device, optimizer=None, low_precision="bf16")
    _, fp16 = _twins(device, torch.float16)
    with pytest.raises(ValueError, match=r"float16.*'master'"):
        make_strategy(device, optimizer=None, low_precision="stochastic").setup(fp16)
    with pytest.raises(ValueError, match=r"optimizer_kwargs.*momentum"):
        make_strategy(device, optimizer="sgd", optimizer_kwargs={"momentum": 0.9}, low_precision="stochastic")
    # A hook on the optimizer's step takes the update to torch's optimizer.step(): refused at step(), nothing moved.
    _, bf16 = _twins(device, torch.bfloat16)
    st = make_strategy(device, optimizer="sgd", low_precision="stochastic")
    st.setup(bf16)
    st.optimizer.register_step_post_hook(lambda *args: None)
    before = [p.detach().clone() for p in bf16.parameters()]
    with st.perturb(NUM_MEMBERS, epoch=0):
        pass
    with pytest.raises(RuntimeError, match="low_precision='stochastic'"):
        st.step(torch.randn(NUM_MEMBERS).to(device))
    assert all(torch.equal(p, b) for p, b in zip(bf16.parameters(), before))
