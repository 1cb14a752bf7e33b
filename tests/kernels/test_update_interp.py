"""The update's fused GEMM (``lowrank_addmm_kernel``) and the one-pass optimizer steps (``optim.py``) under the
Triton interpreter, against the previous implementation (cuBLAS-style ``G`` then separate passes), the explicit
formula and ``torch.optim``. Shapes are small and odd (edges of tiles, ``K`` not a multiple of the K block)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from eggroll_rl.kernels import _launch, optim, rounding, update  # noqa: E402

pytestmark = pytest.mark.skipif(not _launch.INTERPRET, reason="needs TRITON_INTERPRET=1 set before Triton's import")

SHAPES = [  # m, n, rank, J
    (80, 70, 2, 4),
    (41, 97, 3, 5),  # K = 15: one partial K block
    (33, 150, 1, 9),
]


def _kw(m, n, rank, J, seed=7):
    g = torch.Generator().manual_seed(seed + m)
    ids = torch.randperm(4 * J, generator=g)[:J]
    w = torch.randn(J, generator=g)
    return dict(seed=seed, param_index=2, t_eff=3, noise_ids=ids, weights=w, m=m, n=n, rank=rank)


def _rel(a, b) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _assert_rounded_copy(copy: torch.Tensor, p: torch.Tensor) -> None:
    """``copy`` holds ``p`` rounded to its dtype. The interpreter truncates float32 -> bf16 (the GPU rounds to
    nearest even, and tests/kernels/test_update_gpu.py checks equality there): allow one bf16 step."""
    assert not copy.isnan().any()
    step = torch.finfo(copy.dtype).eps * p.abs()
    assert ((copy.float() - p).abs() <= step).all()


def _previous_G(kw) -> torch.Tensor:
    """The previous implementation's G for bf16 factors: the same factor buffer, cuBLAS-style GEMM (no fused GEMM)."""
    return update.lowrank_update_triton(factor_dtype=torch.bfloat16, gemm_shape=None, **kw)


@pytest.mark.parametrize("m,n,rank,J", SHAPES)
@pytest.mark.parametrize(
    "shape",
    [
        update.INTERPRET_GEMM_SHAPE,
        update.GemmShape(16, 64, 32, 4, 1, 2),
        update.INTERPRET_GEMM_SHAPE._replace(prefetch_c=True),  # the C tile loaded before the main loop
    ],
)
def test_fused_apply_into_a_float32_master_with_copy(m, n, rank, J, shape):
    """``p = beta p + alpha G`` into a float32 master, its bf16 copy, ||G||^2 and the measured change, one launch."""
    kw = _kw(m, n, rank, J)
    p0 = torch.randn(m, n)
    p = p0.clone()
    copy = torch.full((m, n), float("nan"), dtype=torch.bfloat16)  # poisoned: every element must be written
    alpha, beta = 1e-2, 0.995
    sq, sq_change = update.lowrank_apply_triton(
        p, alpha, beta=beta, copy=copy, factor_dtype=torch.bfloat16, gemm_shape=shape, **kw
    )
    G = _previous_G(kw)
    # Same factors as the previous implementation: equal to float32 rounding.
    assert _rel(p - beta * p0, alpha * G) <= 1e-5
    _assert_rounded_copy(copy, p)
    assert abs(sq.item() / G.square().sum().item() - 1) <= 1e-5  # exact: from the float32 accumulators
    assert abs(sq_change.item() / (p - p0).square().sum().item() - 1) <= 1e-5
    # The explicit formula with float32 factors: bf16 factors cost ~3e-3 of G.
    assert _rel(p - beta * p0, alpha * update.lowrank_update_reference(**kw)) <= 1e-2


class _Counting:
    """Wraps a Triton kernel and counts its launches."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        self.launches += 1
        return self.kernel[grid]


@pytest.mark.parametrize("m,n,rank,J", [(80, 72, 2, 4), (48, 136, 3, 5), (40, 24, 1, 9)])
@pytest.mark.parametrize("persistent", [1, 2])
@pytest.mark.parametrize("beta,copy", [(0.995, True), (1.0, False)])
def test_persistent_tma_kernel_equals_the_tiled_one(monkeypatch, m, n, rank, J, persistent, beta, copy):
    """``GemmShape.persistent``: ``lowrank_addmm_tma_kernel`` (TMA descriptors, each program walking several tiles:
    the interpreter counts 4 SMs) writes what ``lowrank_addmm_kernel`` writes with the same tiles, bit for bit:
    the master, its copy and both norms (row strides of 16 bytes' multiples, as TMA needs)."""
    tma = _Counting(update.lowrank_addmm_tma_kernel)
    monkeypatch.setattr(update, "lowrank_addmm_tma_kernel", tma)
    kw = _kw(m, n, rank, J)
    p0 = torch.randn(m, n)
    tiled = update.GemmShape(16, 32, 16, 4, 1, 2)
    out = {}
    for shape in (tiled, tiled._replace(persistent=persistent)):
        p = p0.clone()
        c = torch.full((m, n), float("nan"), dtype=torch.bfloat16) if copy else None
        sq = update.lowrank_apply_triton(p, 1e-2, beta=beta, copy=c, factor_dtype=torch.bfloat16, gemm_shape=shape,
                                         **kw)  # fmt: skip
        out[shape.persistent] = (p, c, torch.stack(sq))
    assert tma.launches == 1
    (p, c, sq), (p_t, c_t, sq_t) = out[0], out[persistent]
    assert torch.equal(p_t, p) and torch.equal(sq_t, sq)
    assert not copy or torch.equal(c_t, c)
    assert _rel(p - beta * p0, 1e-2 * _previous_G(kw)) <= 1e-5  # and both are the update


def test_persistent_shape_without_tma_alignment_takes_the_tiled_kernel(monkeypatch):
    """Operands whose rows are not 16-byte multiples (m = 41 bf16 elements) cannot be TMA descriptors: the same tile
    sizes run through ``lowrank_addmm_kernel``, with the same result."""
    tma = _Counting(update.lowrank_addmm_tma_kernel)
    monkeypatch.setattr(update, "lowrank_addmm_tma_kernel", tma)
    kw = _kw(41, 97, 3, 5)
    p0 = torch.randn(41, 97)
    results = []
    for shape in (update.GemmShape(16, 32, 16, 4, 1, 2), update.GemmShape(16, 32, 16, 4, 1, 2, persistent=1)):
        p = p0.clone()
        update.lowrank_apply_triton(p, 1e-2, factor_dtype=torch.bfloat16, gemm_shape=shape, **kw)
        results.append(p)
    assert tma.launches == 0 and torch.equal(results[0], results[1])
    assert not update._tma_ready(torch.empty(3, 41, dtype=torch.bfloat16))
    assert update._tma_ready(torch.empty(3, 40, dtype=torch.bfloat16))
    assert not update._tma_ready(torch.empty(3, 40, dtype=torch.bfloat16)[:, 1:])  # base not 16-byte aligned


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_apply_into_a_low_precision_weight(dtype):
    """No master: the weight itself is C (one rounding of beta C + alpha G to its dtype)."""
    kw = _kw(70, 50, 2, 6)
    p0 = torch.randn(70, 50).to(dtype)
    p = p0.clone()
    sq, sq_change = update.lowrank_apply_triton(p, 0.05, factor_dtype=dtype, **kw)
    expected = (p0.float() + 0.05 * _previous_G(kw)).to(dtype)
    assert (p.float() - expected.float()).abs().max().item() <= torch.finfo(dtype).eps * 8
    assert abs(sq_change.item() / (p.float() - p0.float()).square().sum().item() - 1) <= 1e-5


@pytest.mark.parametrize(
    "m,n,rank,J,shape",
    [(*s, update.INTERPRET_GEMM_SHAPE._replace(prefetch_c=True)) for s in SHAPES]
    + [(*SHAPES[0], update.INTERPRET_GEMM_SHAPE)],  # the C tile loaded by the epilogue
)
def test_fused_apply_rounds_stochastically_as_the_twin(m, n, rank, J, shape):
    """``round_keys``: the epilogue rounds ``beta C + alpha acc`` into the bf16 weight with the bits of
    ``rounding.py``'s contract. Reference: the same kernel into a float32 copy of the weight (the same ``out`` in
    float32), then the pure-torch rounding: bit for bit."""
    kw = _kw(m, n, rank, J)
    p0 = (torch.randn(m, n) * 4).to(torch.bfloat16)
    alpha, beta = 3e-3, 0.999
    exact = p0.float()
    update.lowrank_apply_triton(exact, alpha, beta=beta, factor_dtype=torch.bfloat16, gemm_shape=shape, **kw)
    keys = rounding.round_keys(5, 11, 2)
    p = p0.clone()
    sq, sq_change = update.lowrank_apply_triton(
        p, alpha, beta=beta, factor_dtype=torch.bfloat16, gemm_shape=shape, round_keys=keys, **kw
    )
    assert torch.equal(p, rounding.stochastic_round_reference(exact, keys))
    assert abs(sq_change.item() / (p.float() - p0.float()).square().sum().item() - 1) <= 1e-5
    # Not round-to-nearest: a share of the elements went the other way (each is rounded up with probability
    # equal to the dropped fraction of a bf16 step).
    nearest = exact.to(torch.bfloat16)
    assert 0 < (p != nearest).float().mean().item() < 0.5
    assert ((p.float() - exact).abs() < torch.finfo(torch.bfloat16).eps * exact.abs().clamp_min(1e-30)).all()


def test_stochastic_rounding_refuses_other_targets():
    kw = _kw(30, 20, 2, 5)
    keys = rounding.round_keys(0, 0, 0)
    bf16 = torch.zeros(30, 20, dtype=torch.bfloat16)
    for p, copy in ((torch.zeros(30, 20), None), (bf16.half(), None), (bf16, bf16.clone())):
        with pytest.raises(ValueError, match="stochastic rounding"):
            update.lowrank_apply_triton(p, 0.1, copy=copy, factor_dtype=torch.bfloat16, round_keys=keys, **kw)
        with pytest.raises(ValueError, match="stochastic rounding"):
            update.lowrank_apply_reference(p, 0.1, copy=copy, factor_dtype=torch.bfloat16, round_keys=keys, **kw)


@pytest.mark.parametrize("m,n,rank,J", SHAPES)
@pytest.mark.parametrize("scale,dtype", [(1.0, torch.float32), (-1.0, torch.float32), (-1.0, torch.bfloat16)])
def test_gradient_with_norm(m, n, rank, J, scale, dtype):
    kw = _kw(m, n, rank, J)
    g, sq = update.lowrank_gradient_triton(factor_dtype=torch.bfloat16, scale=scale, dtype=dtype, **kw)
    G = _previous_G(kw)
    assert g.dtype == dtype and g.shape == (m, n)
    assert _rel(g.float(), scale * G) <= (1e-5 if dtype == torch.float32 else 4e-3)
    assert abs(sq.item() / G.square().sum().item() - 1) <= 1e-5
    ref_g, ref_sq = update.lowrank_gradient_reference(scale=scale, dtype=dtype, **kw)
    assert ref_g.dtype == dtype and _rel(g.float(), ref_g.float()) <= 1e-2
    assert abs(sq.item() / ref_sq.item() - 1) <= 2e-2  # a squared norm: twice G's relative error (bf16 factors)


def test_apply_twin_returns_both_norms():
    kw = _kw(30, 20, 2, 5)
    p0 = torch.randn(30, 20)
    p = p0.clone()
    copy = torch.empty(30, 20, dtype=torch.bfloat16)
    sq, sq_change = update.lowrank_apply_reference(p, 0.1, beta=0.9, copy=copy, **kw)
    G = update.lowrank_update_reference(**kw)
    assert _rel(p, 0.9 * p0 + 0.1 * G) <= 1e-6
    assert torch.equal(copy, p.to(torch.bfloat16))
    assert abs(sq.item() / G.square().sum().item() - 1) <= 1e-6
    assert abs(sq_change.item() / (p - p0).square().sum().item() - 1) <= 1e-6


# --- one-pass optimizer steps ------------------------------------------------------------------------------------

STEPS = {"triton": (optim.ascent_step_triton, optim.adam_step_triton),
         "twin": (optim.ascent_step_reference, optim.adam_step_reference)}  # fmt: skip


@pytest.mark.parametrize("path", STEPS)
@pytest.mark.parametrize("numel", [1, 1000, 2500])
def test_ascent_step(path, numel):
    step = STEPS[path][0]
    p0 = torch.randn(numel)
    g = torch.randn(numel)
    p = p0.clone()
    copy = torch.full((numel,), float("nan"), dtype=torch.bfloat16)
    scale = torch.tensor(0.25)
    sq = step(p, g, alpha=0.1, beta=0.99, scale=scale, copy=copy)
    expected = 0.99 * p0 + 0.1 * 0.25 * g
    assert (p - expected).abs().max().item() <= 1e-6
    if path == "twin":
        assert torch.equal(copy, p.to(torch.bfloat16))
    else:
        _assert_rounded_copy(copy, p)
    assert abs(sq.item() / (p - p0).square().sum().item() - 1) <= 1e-5


def _hyper(opt: torch.optim.Optimizer, step: int) -> optim.AdamStep:
    """The AdamStep of ``opt``'s param group at ``step`` (what the strategy reads)."""
    group = opt.param_groups[0]
    return optim.AdamStep(
        step=step, lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1], eps=group["eps"],
        weight_decay=group["weight_decay"], decoupled=type(opt) is torch.optim.AdamW,
        grad_sign=1.0 if group["maximize"] else -1.0,
    )  # fmt: skip


ADAM_CASES = {  # optimizer class, kwargs, clip scale
    "adam": (torch.optim.Adam, {}, None),
    "adam_l2": (torch.optim.Adam, {"weight_decay": 0.1}, None),
    "adamw": (torch.optim.AdamW, {"weight_decay": 0.1}, None),
    "adam_maximize_clip": (torch.optim.Adam, {"maximize": True, "betas": (0.8, 0.99), "eps": 1e-6}, 0.3),
}


@pytest.mark.parametrize("path", STEPS)
@pytest.mark.parametrize("case", ADAM_CASES)
def test_adam_step_equals_torch_adam(path, case):
    """Four steps of the one-pass kernel against torch.optim.Adam/AdamW given ``p.grad = -scale * g`` (what the
    strategy hands to torch for the ES gradient g); ``grad_sign=+1`` is torch's ``maximize=True`` flip of it."""
    step = STEPS[path][1]
    cls, kwargs, clip = ADAM_CASES[case]
    g = torch.Generator().manual_seed(3)
    numel, lr = 2100, 0.01
    ref = torch.randn(numel, generator=g).requires_grad_()
    opt = cls([ref], lr=lr, **kwargs)
    p = ref.detach().clone()
    m, v = torch.zeros(numel), torch.zeros(numel)
    copy = torch.empty(numel, dtype=torch.bfloat16)
    scale = None if clip is None else torch.tensor(clip)
    for t in range(1, 5):
        grad = torch.randn(numel, generator=g)
        before = ref.detach().clone()
        ref.grad = -grad * (1.0 if clip is None else clip)
        opt.step()
        sq = step(p, grad, m, v, _hyper(opt, t), scale=scale, copy=copy)
        assert (p - ref.detach()).abs().max().item() <= 1e-6, t
        assert (m - opt.state[ref]["exp_avg"]).abs().max().item() <= 1e-6
        assert (v - opt.state[ref]["exp_avg_sq"]).abs().max().item() <= 1e-7
        if path == "twin":
            assert torch.equal(copy, p.to(torch.bfloat16))
        else:
            _assert_rounded_copy(copy, p)
        assert abs(sq.item() / (ref.detach() - before).square().sum().item() - 1) <= 1e-4


ADAM_GEMM = {"triton": update.lowrank_adam_triton, "twin": update.lowrank_adam_reference}


@pytest.mark.parametrize("path", ADAM_GEMM)
@pytest.mark.parametrize("m,n,rank,J", SHAPES[:2])
@pytest.mark.parametrize("case", ["adam", "adamw"])
def test_adam_in_the_gemm_epilogue_equals_torch_adam(path, m, n, rank, J, case):
    """Adam fused into the update GEMM, three steps, against torch.optim on ``p.grad = -G`` (G: the previous
    implementation's, from the same bf16 factors for the kernel; float32 factors for the twin)."""
    cls, kwargs, _ = ADAM_CASES[case]
    ref = torch.randn(m, n).requires_grad_()
    opt = cls([ref], lr=0.01, **kwargs)
    p = ref.detach().clone()
    m_, v_ = torch.zeros(m, n), torch.zeros(m, n)
    copy = torch.empty(m, n, dtype=torch.bfloat16)
    fdtype = torch.bfloat16 if path == "triton" else torch.float32
    for t in range(1, 4):
        kw = _kw(m, n, rank, J, seed=t)
        G = _previous_G(kw) if path == "triton" else update.lowrank_update_reference(**kw)
        before = ref.detach().clone()
        ref.grad = -G
        opt.step()
        sq, sq_change = ADAM_GEMM[path](p, m_, v_, _hyper(opt, t), copy=copy, factor_dtype=fdtype, **kw)
        assert (p - ref.detach()).abs().max().item() <= 1e-5, t
        assert (m_ - opt.state[ref]["exp_avg"]).abs().max().item() <= 1e-5
        assert abs(sq.item() / G.square().sum().item() - 1) <= 1e-5
        assert abs(sq_change.item() / (ref.detach() - before).square().sum().item() - 1) <= 1e-3
        _assert_rounded_copy(copy, p)


# --- the strategy's step() on the kernels' path (the interpreter standing in for CUDA) ---------------------------

STRATEGY_CASES = {  # optimizer, optimizer_kwargs, strategy kwargs
    "plain": (None, {}, {}),
    "sgd_wd": ("sgd", {"weight_decay": 0.05}, {}),
    "adam": ("adam", {}, {}),
    "adamw_clip": ("adamw", {"weight_decay": 0.05}, {"grad_clip": 0.01}),
}


@pytest.mark.parametrize(
    "case,dtype", [(c, torch.bfloat16) for c in STRATEGY_CASES] + [("adam", torch.float32)]
)  # the interpreter's factor generation is slow: few cases, two steps of 8 members
def test_strategy_step_through_the_kernels_matches_the_twins(monkeypatch, dtype, case):
    """``step()`` with every op dispatched to the Triton kernels (what CUDA runs: fused GEMM epilogues, one-pass
    steps, bf16 copies) against the pure-torch twins; a bf16 model's update comes from bf16 factors."""
    from eggroll_rl import EggrollStrategy, kernels

    optimizer, opt_kw, kw = STRATEGY_CASES[case]

    def run(triton: bool):
        monkeypatch.setattr(kernels, "use_triton", lambda device: triton)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(96, 80), torch.nn.Tanh(), torch.nn.Linear(80, 70)).to(dtype)
        es = EggrollStrategy(sigma=0.1, lr=1e-3, rank=2, optimizer=optimizer, optimizer_kwargs=opt_kw, seed=3,
                             allow_cpu=True, **kw)  # fmt: skip
        es.setup(model)
        metrics = []
        for epoch in range(2):
            es.perturb(8, epoch=epoch)
            metrics.append(es.step(torch.randn(8, generator=torch.Generator().manual_seed(epoch))))
        masters = es.state_dict()["master"]
        return model, masters, metrics

    got, got_masters, got_metrics = run(True)
    ref, ref_masters, ref_metrics = run(False)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4  # bf16 factors: ~3e-3 of G (more where Adam divides by |G|)
    for (name, p), q in zip(got.named_parameters(), ref.parameters()):
        moved = (q.detach().float() - p.detach().float()).norm() / q.detach().float().norm()
        assert moved.item() <= tol, name
        if dtype == torch.bfloat16:  # the kernels wrote the bf16 copy: the rounded master (one bf16 step here)
            _assert_rounded_copy(p.detach(), got_masters[name])
    for a, b in zip(got_metrics, ref_metrics):
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=tol)
        assert a["update_norm"] == pytest.approx(b["update_norm"], rel=10 * tol)


@pytest.mark.parametrize(
    "optimizer,kw,dtype",
    [
        (None, {}, torch.bfloat16),
        ("sgd", {}, torch.bfloat16),
        ("adam", {}, torch.bfloat16),
        ("adam", {}, torch.float32),
        ("adam", {"grad_clip": 1e-3}, torch.bfloat16),
    ],
)
def test_strategy_step_through_the_kernels_keeps_an_embedding_padding_row(monkeypatch, optimizer, kw, dtype):
    """An Embedding table with a padding row is a matrix with fixed rows: on the kernels' path (where a matrix would
    be stepped inside the fused GEMM's epilogue) its padding row stays bit-identical, in the weight and its float32
    master, and ``grad_norm`` counts that row as zero."""
    from eggroll_rl import EggrollStrategy, kernels
    from eggroll_rl.fitness import shape_fitness

    monkeypatch.setattr(kernels, "use_triton", lambda device: True)
    pad = 5
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(40, 24, padding_idx=pad), torch.nn.Linear(24, 16)).to(dtype)
    es = EggrollStrategy(sigma=0.1, lr=1e-2, rank=2, optimizer=optimizer, seed=3, allow_cpu=True, **kw)
    es.setup(model)
    assert es.spec("0.weight").fixed_rows == (pad,)
    before = model[0].weight.detach().clone()
    fitness = torch.randn(8, generator=torch.Generator().manual_seed(1))
    for epoch in range(2):
        es.perturb(8, epoch=epoch)
        metrics = es.step(fitness.roll(epoch))
    after = model[0].weight.detach()
    assert torch.equal(after[pad], before[pad])
    others = [k for k in range(40) if k != pad]
    assert (after[others] != before[others]).any()
    if dtype != torch.float32:
        assert torch.equal(es.state_dict()["master"]["0.weight"][pad], before[pad].float())
    # the last step's gradient norm counts the padding row as zero (the twins' gradient, same noise)
    monkeypatch.setattr(kernels, "use_triton", lambda device: False)
    grads = es.estimate_gradient(shape_fitness(fitness.roll(1), es.fitness_shaping, es.group_size), 8, 1)
    assert torch.equal(grads[0][pad], torch.zeros(24))
    norm = torch.sqrt(sum(g.square().sum() for g in grads))
    assert metrics["grad_norm"] == pytest.approx(norm.item(), rel=2e-2 if dtype == torch.bfloat16 else 1e-4)


@pytest.mark.parametrize("optimizer", [None, "adam"])
def test_strategy_step_through_the_kernels_keeps_a_float64_model_in_float64(monkeypatch, optimizer):
    """On the kernels' path a float64 model is stepped in float64 (the one-pass kernels compute in float32, so its
    steps take the twins), as torch.optim steps it given ``p.grad = -g`` from the same dispatch's gradient."""
    import copy

    from eggroll_rl import EggrollStrategy, kernels
    from eggroll_rl.fitness import shape_fitness

    monkeypatch.setattr(kernels, "use_triton", lambda device: True)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 10), torch.nn.Tanh(), torch.nn.Linear(10, 6)).double()
    twin = copy.deepcopy(model)
    lr = 1e-3
    es = EggrollStrategy(sigma=0.1, lr=lr, rank=2, optimizer=optimizer, seed=3, allow_cpu=True)
    es.setup(model)
    ref_opt = (torch.optim.SGD if optimizer is None else torch.optim.Adam)(twin.parameters(), lr=lr)
    for epoch in range(2):
        f = torch.randn(8, generator=torch.Generator().manual_seed(epoch))
        es.perturb(8, epoch=epoch)
        grads = es.estimate_gradient(shape_fitness(f, es.fitness_shaping, es.group_size), 8, epoch)
        es.step(f)
        for p, g in zip(twin.parameters(), grads):
            p.grad = -g.double()
        ref_opt.step()
        for (name, p), q in zip(model.named_parameters(), twin.parameters()):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-9, msg=name)
            assert p.dtype == torch.float64 and not torch.equal(p, p.float().double()), name


@pytest.mark.parametrize("triton", [True, False])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_both_adam_routes_give_the_same_step(monkeypatch, triton, dtype):
    """Adam on a matrix runs either in the update GEMM's epilogue (``strategy.ADAM_IN_EPILOGUE``) or as stored ``G``
    + the one-pass ``adam_step``: the same Adam math on the same float32 ``G``, so the weights, the moments and the
    metrics agree (to float32 summation order: the two GEMMs may tile ``K`` differently)."""
    from eggroll_rl import EggrollStrategy, kernels

    monkeypatch.setattr(kernels, "use_triton", lambda device: triton)
    calls = {True: 0, False: 0}
    lowrank_adam = kernels.lowrank_adam

    def counted(*args, **kwargs):
        calls[in_epilogue_now[0]] += 1
        return lowrank_adam(*args, **kwargs)

    monkeypatch.setattr(kernels, "lowrank_adam", counted)
    in_epilogue_now = [True]

    def run(in_epilogue: bool):
        in_epilogue_now[0] = in_epilogue
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(48, 40), torch.nn.Tanh(), torch.nn.Linear(40, 24)).to(dtype)
        es = EggrollStrategy(sigma=0.1, lr=1e-2, rank=2, optimizer="adamw", optimizer_kwargs={"weight_decay": 0.01},
                             seed=5, allow_cpu=True)  # fmt: skip
        es.setup(model)
        es._adam_in_epilogue = in_epilogue
        metrics = []
        for epoch in range(3):
            es.perturb(8, epoch=epoch)
            metrics.append(es.step(torch.randn(8, generator=torch.Generator().manual_seed(epoch))))
        return es.state_dict(), metrics

    (fused, fused_metrics), (stored, stored_metrics) = run(True), run(False)
    assert calls == {True: 6, False: 0}  # two matrices, three steps: the epilogue route only where asked
    weights = {**fused["params"], **fused["master"]}  # float32: a bf16 model's masters, a float32 model's weights
    assert len(weights) == 4 and all(v.dtype == torch.float32 for v in weights.values())
    for name, value in weights.items():
        torch.testing.assert_close({**stored["params"], **stored["master"]}[name], value, rtol=1e-5, atol=1e-7)
    for state_f, state_s in zip(fused["optimizer"]["state"].values(), stored["optimizer"]["state"].values()):
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(state_s[key], state_f[key], rtol=1e-5, atol=1e-10)
        assert float(state_s["step"]) == float(state_f["step"]) == 3.0
    for a, b in zip(stored_metrics, fused_metrics):
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
        assert a["update_norm"] == pytest.approx(b["update_norm"], rel=1e-4)


def test_adam_route_by_size(monkeypatch):
    """By default (``ADAM_IN_EPILOGUE = None``) a matrix of ``ADAM_G_MIN_NUMEL`` entries or more stores ``G`` and a
    smaller one runs Adam in the GEMM's epilogue: with the bound at 48 * 40 entries, the first Linear (48 -> 40) takes
    the stored-``G`` route and the second (40 -> 24) the epilogue, each step."""
    from eggroll_rl import EggrollStrategy, kernels, strategy

    monkeypatch.setattr(kernels, "use_triton", lambda device: False)
    monkeypatch.setattr(strategy, "ADAM_G_MIN_NUMEL", 48 * 40)
    shapes = []
    lowrank_adam = kernels.lowrank_adam

    def counted(p, *args, **kwargs):
        shapes.append(tuple(p.shape))
        return lowrank_adam(p, *args, **kwargs)

    monkeypatch.setattr(kernels, "lowrank_adam", counted)
    assert strategy.ADAM_IN_EPILOGUE is None
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(48, 40), torch.nn.Tanh(), torch.nn.Linear(40, 24))
    es = EggrollStrategy(sigma=0.1, lr=1e-2, rank=2, optimizer="adam", seed=5, allow_cpu=True)
    es.setup(model)
    for epoch in range(2):
        es.perturb(8, epoch=epoch)
        es.step(torch.randn(8, generator=torch.Generator().manual_seed(epoch)))
    assert shapes == [(24, 40), (24, 40)]
