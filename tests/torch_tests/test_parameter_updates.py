"""The ES update equals the formula of DESIGN.md: g = 1/(N sigma) sum_i z_i E_i, then the optimizer."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from es_helpers import make_strategy

from eggroll_rl.fitness import shape_fitness


def _explicit_gradient(model, s, fitness, num_members, epoch, shaping, group_size=0):
    z = shape_fitness(fitness, shaping, group_size)
    grads = {}
    with s.perturb(num_members, epoch=epoch) as pop:
        for spec in s.specs:
            # perturbation() is sigma * E_i, so sum_i z_i E_i / (N sigma) = sum_i z_i delta_i / (N sigma^2).
            total = sum(z[i] * pop.perturbation(i, spec.name) for i in range(num_members))
            grads[spec.name] = total / (num_members * s.sigma**2)
    return grads


@pytest.mark.parametrize("shaping, group_size", [("zscore", 0), ("centered_rank", 0), ("none", 0), ("zscore", 4)])
@pytest.mark.parametrize("antithetic", [True, False])
def test_sgd_update_equals_the_formula(device, shaping, group_size, antithetic):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).to(device)
    lr, n = 0.05, 8
    s = make_strategy(
        device, optimizer="sgd", lr=lr, sigma=0.2, rank=2, fitness_shaping=shaping, group_size=group_size,
        antithetic=antithetic,
    )  # fmt: skip
    s.setup(model)
    f = torch.randn(n, device=device)
    grads = _explicit_gradient(model, s, f, n, epoch=4, shaping=shaping, group_size=group_size)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    with s.perturb(n, epoch=4):
        pass
    metrics = s.step(f)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach() - before[name], lr * grads[name], rtol=1e-4, atol=1e-6)
    norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
    assert metrics["grad_norm"] == pytest.approx(float(norm), rel=1e-4)


@pytest.mark.parametrize("rank", [1, 3])
def test_plain_ascent_is_fused_and_equals_the_formula(device, rank):
    """optimizer=None, no weight decay, no clip: p += lr g goes straight into the weights; same values, same norms."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 2)).to(device)
    lr, n = 0.3, 10
    s = make_strategy(device, optimizer=None, lr=lr, sigma=0.1, rank=rank, fitness_shaping="centered_rank")
    s.setup(model)
    f = torch.randn(n, device=device)
    grads = _explicit_gradient(model, s, f, n, epoch=2, shaping="centered_rank")
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    with s.perturb(n, epoch=2):
        pass
    metrics = s.step(f)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach() - before[name], lr * grads[name], rtol=1e-4, atol=1e-6)
    norm = float(torch.sqrt(sum(g.pow(2).sum() for g in grads.values())))
    assert metrics["grad_norm"] == pytest.approx(norm, rel=1e-4)
    assert metrics["update_norm"] == pytest.approx(lr * norm, rel=1e-4)


def test_plain_update_and_weight_decay(device):
    torch.manual_seed(0)
    model = nn.Linear(4, 3).to(device)
    s = make_strategy(device, optimizer=None, lr=0.5, weight_decay=0.1, rank=1)
    s.setup(model)
    f = torch.randn(6, device=device)
    grads = _explicit_gradient(model, s, f, 6, 0, "zscore")
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    with s.perturb(6):
        pass
    s.step(f)
    for name, p in model.named_parameters():
        expected = before[name] * (1 - 0.5 * 0.1) + 0.5 * grads[name]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)


def test_grad_clip_bounds_the_step(device):
    torch.manual_seed(0)
    model = nn.Linear(8, 8).to(device)
    s = make_strategy(device, optimizer=None, lr=1.0, grad_clip=0.01, fitness_shaping="none")
    s.setup(model)
    with s.perturb(8):
        pass
    metrics = s.step(torch.randn(8, device=device) * 100)
    assert metrics["grad_norm"] > 0.01
    assert metrics["update_norm"] == pytest.approx(0.01, rel=1e-4)


def test_adam_first_step_moves_each_weight_by_lr(device):
    """Adam's first step is lr * g / (|g| + eps): every coordinate moves by ~lr along the ES gradient."""
    torch.manual_seed(0)
    model = nn.Linear(5, 4).to(device)
    s = make_strategy(device, optimizer="adam", lr=0.01)
    s.setup(model)
    f = torch.randn(8, device=device)
    grads = _explicit_gradient(model, s, f, 8, 0, "zscore")
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    with s.perturb(8):
        pass
    s.step(f)
    for name, p in model.named_parameters():
        expected = 0.01 * grads[name] / (grads[name].abs() + 1e-8)
        torch.testing.assert_close(p.detach() - before[name], expected, rtol=1e-3, atol=1e-6)


def test_frozen_parameters_do_not_move(device, simple_mlp):
    from eggroll_rl import ESModule

    es = ESModule(simple_mlp)
    es.freeze_parameter("0.weight")
    s = make_strategy(device)
    s.setup(es)
    w = simple_mlp[0].weight.detach().clone()
    with s.perturb(4) as pop:
        y = pop.batched_forward(es, torch.randn(4, 8, device=device))
        with pytest.raises(KeyError):
            pop.get_factors(0, "0.weight")
    s.step(y.sum(1))
    assert torch.equal(simple_mlp[0].weight, w)


def test_state_dict_round_trip_continues_identically(device, tmp_path):
    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 2)).to(device)

    def generation(model, s, epoch):
        x = torch.randn(8, 6, generator=torch.Generator().manual_seed(epoch)).to(device)
        with s.perturb(8, epoch=epoch) as pop:
            f = -pop.batched_forward(model, x).pow(2).sum(1)
        s.step(f)

    model_a = build()
    s_a = make_strategy(device, optimizer="adam", lr=0.05)
    s_a.setup(model_a)
    for e in range(3):
        generation(model_a, s_a, e)
    path = tmp_path / "ckpt.pt"
    torch.save(s_a.state_dict(), path)
    for e in range(3, 6):
        generation(model_a, s_a, e)

    model_b = build()
    s_b = make_strategy(device, optimizer="adam", lr=0.05)
    s_b.setup(model_b)
    s_b.load_state_dict(torch.load(path, weights_only=False))
    assert s_b.num_steps == 3
    for e in range(3, 6):
        generation(model_b, s_b, e)
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)
    assert copy.deepcopy(s_b.state_dict())["num_steps"] == 6


# --- the steps step() runs itself (one pass per parameter) against torch.optim on the explicit gradient ----------

OWN_STEPS = {  # optimizer, optimizer_kwargs, strategy kwargs
    "adam": ("adam", {}, {}),
    "adam_l2_clip": ("adam", {"weight_decay": 0.05}, {"grad_clip": 0.02}),
    "adamw": ("adamw", {"weight_decay": 0.05, "betas": (0.8, 0.99)}, {}),
    "sgd_wd": ("sgd", {"weight_decay": 0.1}, {}),
    "sgd_clip": ("sgd", {}, {"grad_clip": 0.02}),
}
TORCH_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


@pytest.mark.parametrize("case", OWN_STEPS)
def test_own_step_equals_torch_optim_on_the_explicit_gradient(device, case):
    """Three steps: the strategy's one-pass step against torch.optim given p.grad = -clip(g) of the explicit formula."""
    name, opt_kw, kw = OWN_STEPS[case]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(device)
    twin = copy.deepcopy(model)
    lr, n = 0.03, 8
    s = make_strategy(device, optimizer=name, optimizer_kwargs=opt_kw, lr=lr, sigma=0.2, rank=2, **kw)
    s.setup(model)
    assert s._own_rule() is not None  # the one-pass path, not optimizer.step()
    ref_opt = TORCH_OPTIMIZERS[name](twin.parameters(), lr=lr, **{"weight_decay": 0.0, **opt_kw})
    for epoch in range(3):
        f = torch.randn(n, device=device)
        grads = _explicit_gradient(model, s, f, n, epoch, "zscore")
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
        clip = kw.get("grad_clip")
        scale = clip / (norm + 1e-12) if clip is not None and norm > clip else 1.0
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        with s.perturb(n, epoch=epoch):
            pass
        metrics = s.step(f)
        for pname, p in twin.named_parameters():
            p.grad = -grads[pname] * scale
        ref_opt.step()
        for (pname, p), q in zip(model.named_parameters(), twin.parameters()):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6, msg=f"{pname} epoch {epoch}")
        change = torch.sqrt(sum((p.detach() - before[k]).pow(2).sum() for k, p in model.named_parameters()))
        assert metrics["grad_norm"] == pytest.approx(float(norm), rel=1e-4)
        assert metrics["update_norm"] == pytest.approx(float(change), rel=1e-4)
    if name != "sgd":  # torch's own state layout, so state_dict() and a later optimizer.step() carry on
        for p in model.parameters():
            state = s.optimizer.state[p]
            assert set(state) == {"step", "exp_avg", "exp_avg_sq"} and float(state["step"]) == 3
            assert state["step"].device.type == "cpu"


@pytest.mark.parametrize("hook_kind", ["own", "global", "wrapped"])
def test_optimizer_with_a_step_hook_goes_through_torch_and_agrees(device, hook_kind):
    """A hook on the optimizer (its own, a global one, or ``step`` wrapped on the instance) makes step() call
    optimizer.step(), so the hook runs; both paths give the same result."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def run(hook: bool):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(device)
        s = make_strategy(device, optimizer="adam", lr=0.02, sigma=0.2, rank=2, grad_clip=0.05)
        s.setup(model)
        calls, handle = [], None
        if hook and hook_kind == "own":
            s.optimizer.register_step_post_hook(lambda *a: calls.append(1))
        elif hook and hook_kind == "global":
            handle = register_optimizer_step_post_hook(lambda *a: calls.append(1))
        elif hook:
            step = s.optimizer.step
            s.optimizer.step = lambda *a, **k: (calls.append(1), step(*a, **k))[1]
        try:
            assert (s._own_rule() is None) == hook
            metrics = []
            for epoch in range(3):
                with s.perturb(8, epoch=epoch):
                    pass
                metrics.append(s.step(torch.randn(8, generator=torch.Generator().manual_seed(epoch)).to(device)))
        finally:
            if handle is not None:
                handle.remove()
        assert len(calls) == (3 if hook else 0)
        return model, metrics

    own, own_metrics = run(False)
    hooked, hooked_metrics = run(True)
    for p, q in zip(own.parameters(), hooked.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    for a, b in zip(own_metrics, hooked_metrics):
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
        assert a["update_norm"] == pytest.approx(b["update_norm"], rel=1e-4)


def test_lr_metric_follows_a_users_lr_scheduler(device):
    """``step()``'s ``lr`` metric is the rate the step used: a StepLR on ``strategy.optimizer`` halves it each time."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(device)
    s = make_strategy(device, optimizer="sgd", lr=0.02, sigma=0.2, rank=2)
    s.setup(model)
    scheduler = torch.optim.lr_scheduler.StepLR(s.optimizer, step_size=1, gamma=0.5)
    seen = []
    for epoch in range(3):
        with s.perturb(8, epoch=epoch):
            pass
        seen.append(s.step(torch.randn(8, generator=torch.Generator().manual_seed(epoch)).to(device))["lr"])
        scheduler.step()
    assert seen == pytest.approx([0.02, 0.01, 0.005], rel=1e-12)
    assert s.lr == 0.02  # the strategy's own setting is untouched; the scheduler owns the param group


FLOAT64_STEPS = {  # optimizer, optimizer_kwargs, strategy kwargs
    "plain": (None, {}, {}),
    "sgd_wd": ("sgd", {"weight_decay": 0.1}, {}),
    "sgd_clip": ("sgd", {}, {"grad_clip": 0.02}),
    "adam": ("adam", {}, {}),
    "adamw_clip": ("adamw", {"weight_decay": 0.05}, {"grad_clip": 0.02}),
}


@pytest.mark.parametrize("case", FLOAT64_STEPS)
def test_float64_model_is_stepped_in_float64_like_torch_optim(device, case):
    """A float64 model is stepped in float64, as torch.optim steps it given p.grad = -g (g: the strategy's own
    float32 gradient, so only the step's arithmetic is compared), not rounded to float32 by the one-pass steps."""
    name, opt_kw, kw = FLOAT64_STEPS[case]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(device, torch.float64)
    twin = copy.deepcopy(model)
    lr, n = 1e-3, 8
    s = make_strategy(device, optimizer=name, optimizer_kwargs=opt_kw, lr=lr, sigma=0.2, rank=2, **kw)
    s.setup(model)
    ref_cls = torch.optim.SGD if name in (None, "sgd") else TORCH_OPTIMIZERS[name]
    ref_opt = ref_cls(twin.parameters(), lr=lr, **{"weight_decay": 0.0, **opt_kw})
    for epoch in range(3):
        f = torch.randn(n, device=device)
        with s.perturb(n, epoch=epoch):
            pass
        grads = s.estimate_gradient(shape_fitness(f, s.fitness_shaping, s.group_size), n, epoch)
        norm = torch.sqrt(sum(g.double().square().sum() for g in grads))
        clip = kw.get("grad_clip")
        scale = clip / (norm + 1e-12) if clip is not None and norm > clip else 1.0
        before = [p.detach().clone() for p in model.parameters()]
        metrics = s.step(f)
        for p, g in zip(twin.parameters(), grads):
            p.grad = -g.double() * scale
        ref_opt.step()
        for (pname, p), q in zip(model.named_parameters(), twin.parameters()):
            # 1e-9: the clip factor's and the gradient's float32 roundings move Adam by ~lr * 1e-7; a parameter
            # rounded to float32 is off by up to |p| * 6e-8, and is caught exactly by the second check.
            torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-9, msg=f"{pname} epoch {epoch}")
            assert p.dtype == torch.float64 and not torch.equal(p, p.float().double()), pname
        change = torch.sqrt(sum((p.detach() - b).square().sum() for p, b in zip(model.parameters(), before)))
        assert metrics["update_norm"] == pytest.approx(float(change), rel=1e-5)
