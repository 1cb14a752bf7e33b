"""``noise="gaussian_fast"``: the contract of ``eggroll_rl.noise`` (Philox4x32-7, Box-Muller on 16-bit halves, rank
columns paired in a call), written again here from its docstring; its statistics; and the Triton kernels that
regenerate it (under the interpreter on CPU) against the pure-torch twin.

The normals go through ``log``/``sin``/``cos``, so kernel and twin agree to float rounding, not bit for bit (the raw
words do agree bit for bit). Statistical bounds are five standard errors of the statistic at the sample size.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from eggroll_rl import noise as N

try:
    from eggroll_rl.kernels import _launch, linear, philox, update
except ImportError:  # pragma: no cover - the kernels' module imports without Triton
    _launch = None

interp = pytest.mark.skipif(
    _launch is None or not _launch.INTERPRET or _launch.TRITON_IMPORT_ERROR is not None,
    reason="needs Triton and TRITON_INTERPRET=1 set before Triton's import",
)
FAST = "gaussian_fast"
IDS = torch.tensor([0, 1, 6, 511, 123456789, 2**31 + 5, 2**33 + 3])


# --- the contract, written again ---------------------------------------------------------------------------------


def _words(seed, k, t, j, c0, c3):
    """Philox4x32-7 words of the calls ``(c0, j, t, c3)`` under key ``(seed, k)``: ``(..., 4)`` int64."""
    return torch.stack(N.philox4x32(c0, j, torch.tensor(t), c3, seed, k, rounds=7), dim=-1)


def _normal(words, i):
    """``z_i`` of the calls whose words are ``words`` ``(..., 4)``, in float64: word ``i // 2``, cos for even ``i``."""
    x = words.gather(-1, (i // 2).expand(*words.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    lo, hi = x & 0xFFFF, x >> 16
    u_rad = (2 * lo + 1).double() / 2**17
    u_ang = (2 * hi + 1).double() / 2**17
    rad = torch.sqrt(-2 * torch.log(u_rad))
    theta = math.pi * (2 * u_ang - 1)
    return torch.where(i % 2 == 0, rad * torch.cos(theta), rad * torch.sin(theta))


def _factor_by_spec(seed, k, t, ids, rows, rank, stream):
    """Entry ``[a, c]`` is ``z_{4 (c % 2) + a % 4}`` of the call ``c0 = a // 4``, ``c3 = (stream << 16) | c // 2``."""
    a = torch.arange(rows).view(1, -1, 1)
    c = torch.arange(rank).view(1, 1, -1)
    j = ids.view(-1, 1, 1)
    words = _words(seed, k, t, j, a // 4, (stream << 16) | (c // 2))  # (J, rows, rank, 4)
    return _normal(words, (4 * (c % 2) + a % 4).expand(len(ids), rows, rank))


def _vector_by_spec(seed, k, t, ids, numel):
    """Element ``e`` is ``z_{e % 4}`` of the call ``c0 = e // 4``, ``c3 = 2 << 16`` (words ``x_0, x_1``)."""
    e = torch.arange(numel).view(1, -1)
    words = _words(seed, k, t, ids.view(-1, 1), e // 4, torch.tensor(2 << 16))
    return _normal(words, (e % 4).expand(len(ids), numel))


@pytest.mark.parametrize("seed,k,t", [(0, 0, 0), (0xDEADBEEF, 7, 2**32 - 1), (12345, 3, 17)])
def test_factors_follow_the_spec(seed, k, t):
    for stream, rows, rank in ((N.STREAM_A, 37, 5), (N.STREAM_B, 13, 4), (N.STREAM_A, 9, 1)):
        got = N.factor_noise(seed, k, t, IDS, rows, rank, stream, FAST)
        assert got.shape == (len(IDS), rows, rank) and got.dtype == torch.float32
        ref = _factor_by_spec(seed, k, t, IDS, rows, rank, stream)
        assert (got.double() - ref).abs().max().item() < 2e-6


@pytest.mark.parametrize("seed,k,t", [(0, 0, 0), (0xDEADBEEF, 7, 2**32 - 1)])
def test_vector_follows_the_spec(seed, k, t):
    got = N.vector_noise(seed, k, t, IDS, 1003, FAST)
    assert got.shape == (len(IDS), 1003)
    assert (got.double() - _vector_by_spec(seed, k, t, IDS, 1003)).abs().max().item() < 2e-6


def test_the_twins_words_are_philox_7():
    """The words behind the twin: ``stream_words(rounds=7)`` is Philox4x32-7 on the contract's counters, and not 10."""
    for stream, column in ((0, 2), (2, 0)):
        got = N.stream_words(9, 4, 6, IDS, stream, column, 50, rounds=N.FAST_PHILOX_ROUNDS)
        c0 = torch.arange(50).view(1, -1)
        ref = _words(9, 4, 6, IDS.view(-1, 1), c0, torch.tensor((stream << 16) | column))
        assert torch.equal(got, ref)
        assert not torch.equal(got, N.stream_words(9, 4, 6, IDS, stream, column, 50))


def test_uniforms_and_cap():
    """Halves 0 and 0xFFFF map to 2^-17 and 1 - 2^-17 (exact in float32); the radius is at most
    sqrt(-2 ln 2^-17) = 4.855."""
    u = N.uniform_from_half(torch.tensor([0, 1, 0x8000, 0xFFFF]))
    assert u.tolist() == [2.0**-17, 3 * 2.0**-17, 0.5 + 2.0**-17, 1 - 2.0**-17]
    assert N.FAST_Z_MAX == pytest.approx(math.sqrt(-2 * math.log(2.0**-17)), rel=1e-15)
    assert N.FAST_Z_MAX == pytest.approx(4.855, abs=5e-4)


def test_the_vector_stream_is_the_studys_philox7_bm16():
    """``benchmarks/noise_options.py``'s ``philox7_bm16`` (8 consecutive elements a call): the vector stream is the
    first 4 normals of each of its calls."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_modules.py"  # the tests' one loader
    spec = importlib.util.spec_from_file_location("bench_modules", path)
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
    no = loader.load("noise_options")
    study = no.option_stream(no.BY_NAME["philox7_bm16"], 7, 2, 5, IDS, N.STREAM_VECTOR, [0], 2008)[:, 0]
    first_four = study.view(len(IDS), -1, 8)[..., :4].reshape(len(IDS), -1)[:, :1003]
    assert torch.equal(N.vector_noise(7, 2, 5, IDS, 1003, FAST), first_four)


def test_columns_do_not_depend_on_the_rank():
    wide = N.factor_noise(2, 0, 1, IDS, 70, 6, N.STREAM_B, FAST)
    for r in (1, 2, 3, 5):
        assert torch.equal(N.factor_noise(2, 0, 1, IDS, 70, r, N.STREAM_B, FAST), wide[..., :r])
    one = N.fast_normal_stream(2, 0, 1, IDS, N.STREAM_B, 3, 70)
    assert torch.equal(one, wide[..., 3])


def test_the_other_kinds_are_untouched():
    """Gaussian and Rademacher streams are not the fast one's (same seed): the kinds are distinct generators."""
    fast = N.factor_noise(1, 0, 0, IDS, 64, 2, N.STREAM_A, FAST)
    assert not torch.allclose(fast, N.factor_noise(1, 0, 0, IDS, 64, 2, N.STREAM_A, "gaussian"))


@pytest.mark.parametrize("call", ["factor_noise", "vector_noise", "noise_code"])
def test_unknown_noise_raises_naming_argument_value_and_choices(call):
    fns = {
        "factor_noise": lambda: N.factor_noise(0, 0, 0, IDS, 8, 1, N.STREAM_A, "gaussian_slow"),
        "vector_noise": lambda: N.vector_noise(0, 0, 0, IDS, 8, "gaussian_slow"),
        "noise_code": lambda: _launch.noise_code("gaussian_slow"),
    }
    if call == "noise_code" and _launch is None:
        pytest.skip("no kernels module")
    with pytest.raises(ValueError, match=r"noise='gaussian_slow' is invalid: expected .*gaussian_fast"):
        fns[call]()


def test_strategy_accepts_the_kind_and_rejects_unknown_ones():
    from eggroll_rl import EggrollStrategy

    assert EggrollStrategy(noise=FAST, allow_cpu=True).noise == FAST
    with pytest.raises(ValueError, match=r"noise='fast' is invalid: expected .*'gaussian_fast'"):
        EggrollStrategy(noise="fast", allow_cpu=True)


# --- statistics (about 1M samples) ----------------------------------------------------------------------------------


def _se_bound(values: torch.Tensor, n: int) -> float:
    """Five standard errors of the mean of ``n`` i.i.d. values with the spread of ``values``."""
    return 5.0 * values.double().std().item() / math.sqrt(n)


def test_moments_tails_and_cap():
    """64 noise indices x 4096 rows x 4 columns of A: moments 1..4 and P(|z| > 3) within five standard errors of
    N(0, 1)'s (the cap moves P(|z| > 4.71) by ~2.5e-6: invisible here), and |z| <= 4.855."""
    z = N.factor_noise(3, 1, 0, torch.arange(64), 4096, 4, N.STREAM_A, FAST).flatten().double()
    n = z.numel()
    assert n == 1 << 20
    assert abs(z.mean().item()) < 5 / math.sqrt(n)  # Var z = 1
    assert abs((z**2).mean().item() - 1) < 5 * math.sqrt(2 / n)  # Var z^2 = 2
    assert abs((z**3).mean().item()) < 5 * math.sqrt(15 / n)  # Var z^3 = 15
    assert abs((z**4).mean().item() - 3) < 5 * math.sqrt(96 / n)  # Var z^4 = 105 - 9
    p3 = math.erfc(3 / math.sqrt(2))
    assert abs((z.abs() > 3).double().mean().item() - p3) < 5 * math.sqrt(p3 * (1 - p3) / n)
    assert z.abs().max().item() <= N.FAST_Z_MAX + 1e-6
    assert z.abs().max().item() > 4.0  # ~66 of 1M normals lie beyond 4: the tail is there, up to the cap
    v = N.vector_noise(3, 2, 0, torch.arange(16), 1 << 16, FAST).flatten().double()
    assert abs(v.mean().item()) < 5 / math.sqrt(v.numel())
    assert abs((v**2).mean().item() - 1) < 5 * math.sqrt(2 / v.numel())
    assert v.abs().max().item() <= N.FAST_Z_MAX + 1e-6


def test_neighbours_are_uncorrelated():
    """Entries that share a call (rows a, a+1: one word's cos and sin; columns 2g, 2g+1: one call) or neighbour
    calls, and their squares, are uncorrelated within five standard errors."""
    a = N.factor_noise(5, 2, 1, torch.arange(64), 4096, 4, N.STREAM_A, FAST).double()  # (J, rows, r)
    b = N.factor_noise(5, 2, 1, torch.arange(64), 4096, 4, N.STREAM_B, FAST).double()
    pairs = {
        "Box-Muller pair (row a, a+1, a even)": (a[:, 0::2], a[:, 1::2]),
        "row a, a+1 (a odd)": (a[:, 1:-1:2], a[:, 2::2]),
        "row a, a+4 (next call)": (a[:, :-4], a[:, 4:]),
        "columns 2g, 2g+1 (same call)": (a[..., 0::2], a[..., 1::2]),
        "columns c, c+2 (next pair)": (a[..., :2], a[..., 2:]),
        "member+1": (a[:-1], a[1:]),
        "A vs B": (a, b),
    }
    for name, (u, v) in pairs.items():
        prod = u * v
        assert abs(prod.mean().item()) < _se_bound(prod, prod.numel()), name
        sq = (u**2 - 1) * (v**2 - 1)  # dependence that a correlation of values misses
        assert abs(sq.mean().item()) < _se_bound(sq, sq.numel()), name


# --- the kernels (interpreter) -----------------------------------------------------------------------------------


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


@interp
@pytest.mark.parametrize("stream,column", [(0, 0), (1, 3), (2, 0)])
def test_words_bit_exact(stream, column):
    got = philox.stream_words_triton(0xDEADBEEF, 7, 2**32 - 1, IDS, stream, column, 70, rounds=7)
    assert torch.equal(got, N.stream_words(0xDEADBEEF, 7, 2**32 - 1, IDS, stream, column, 70, rounds=7))


@interp
@pytest.mark.parametrize("stream,column,length", [(0, 0, 1000), (1, 3, 77), (0, 4, 13), (2, 0, 1003), (2, 0, 5)])
def test_stream_tool_vs_twin(stream, column, length):
    got = philox.noise_stream_triton(42, 3, 9, IDS, stream, column, length, FAST)
    ref = philox.noise_stream_reference(42, 3, 9, IDS, stream, column, length, FAST)
    assert _max_abs(got, ref) <= 2e-6


FORWARD = [  # R, n, m, dtype, rank, antithetic, bias, weight_index, bias_index, member ids, block_max
    (7, 37, 45, torch.float32, 2, True, True, 3, 4, None, None),
    (8, 37, 45, torch.float32, 1, True, True, 3, 4, None, None),
    (5, 17, 6, torch.float32, 4, False, False, 3, 4, None, None),
    (9, 20, 300, torch.float32, 3, True, True, 3, None, None, None),
    (5, 17, 300, torch.float32, 1, False, True, None, 4, None, None),
    (6, 130, 301, torch.float32, 4, True, True, 3, 4, [5, 2, 9, 9, 0, 1], None),
    (11, 33, 19, torch.float32, 3, True, True, 3, 4, [4, 5, 0, 1, 7, 6, 2, 3, 9, 8, 10], None),
    (8, 37, 45, torch.float32, 6, True, True, 3, 4, None, None),  # rank > 4: the generic delta path
    (7, 45, 37, torch.float32, 5, False, True, 3, 4, None, None),  # ... an odd rank there
    (6, 300, 1100, torch.float32, 4, True, True, 3, 4, None, 512),  # the GPU's blocks: several along K and M
    (5, 1030, 130, torch.float32, 3, False, True, 3, 4, None, 128),
    (5, 17, 300, torch.bfloat16, 4, True, True, 3, None, None, None),
    (6, 40, 260, torch.float16, 1, False, True, None, 4, None, None),
]
# paired=True promises rows 2q, 2q+1 share their noise index: antithetic members in order, an even number of rows.
FORWARD_PAIRED = [(*c, p) for c in FORWARD for p in (False, True) if not p or (c[5] and c[0] % 2 == 0 and c[9] is None)]


@interp
@pytest.mark.parametrize("R,n,m,dtype,rank,anti,has_bias,wi,bi,ids,block_max,paired", FORWARD_PAIRED)
def test_perturbed_linear_vs_twin(R, n, m, dtype, rank, anti, has_bias, wi, bi, ids, block_max, paired):
    g = torch.Generator().manual_seed(R * 1000 + n)
    x = torch.randn(R, n, generator=g).to(dtype)
    w = (torch.randn(m, n, generator=g) / n**0.5).to(dtype)
    b = torch.randn(m, generator=g).to(dtype) if has_bias else None
    member_ids = torch.arange(R) if ids is None else torch.tensor(ids)
    kw = dict(seed=99, weight_index=wi, bias_index=bi, t_eff=3, sigma=0.4, rank=rank, antithetic=anti, noise=FAST)
    shape = {} if block_max is None else dict(block_max=block_max, tile=block_max)
    y = linear.perturbed_linear_triton(x, w, b, member_ids, paired=paired, **shape, **kw)
    assert y.dtype == x.dtype and y.shape == (R, m)
    bb = None if b is None else b.double()
    exact = linear.perturbed_linear_reference(x.double(), w.double(), bb, member_ids, **kw)
    twin = linear.perturbed_linear_reference(x, w, b, member_ids, **kw)
    assert _max_abs(y, exact) <= 3 * _max_abs(twin, exact) + (1e-5 if dtype == torch.float32 else 1e-3)


@interp
@pytest.mark.parametrize("rank,anti,block_max", [(4, True, None), (1, False, 128), (3, True, 512), (2, True, 4)])
def test_forward_against_materialized_weights(rank, anti, block_max):
    """``y = x W_i^T + b + sigma s eps`` with the member's weight ``W_i = W + (sigma s / sqrt r) A B^T`` formed from
    the contract written again in this file (not the twin)."""
    R, n, m = 6, 260, 150
    g = torch.Generator().manual_seed(rank)
    x, w, b = torch.randn(R, n, generator=g), torch.randn(m, n, generator=g) / n**0.5, torch.randn(m, generator=g)
    ids = torch.arange(R)
    kw = dict(seed=9, weight_index=0, bias_index=1, t_eff=2, sigma=0.3, rank=rank, antithetic=anti, noise=FAST)
    shape = {} if block_max is None else dict(block_max=block_max, tile=block_max)
    y = linear.perturbed_linear_triton(x, w, b, ids, paired=anti, **shape, **kw)
    j, s = N.member_noise_and_sign(ids, anti)
    A = _factor_by_spec(9, 0, 2, j, m, rank, N.STREAM_A)
    B = _factor_by_spec(9, 0, 2, j, n, rank, N.STREAM_B)
    eps = _vector_by_spec(9, 1, 2, j, m)
    w_i = w.double() + (0.3 * s.double() / math.sqrt(rank))[:, None, None] * A @ B.transpose(1, 2)  # (R, m, n)
    ref = torch.einsum("rn,rmn->rm", x.double(), w_i) + b.double() + 0.3 * s.double()[:, None] * eps
    assert _max_abs(y, ref) < 1e-4


@interp
@pytest.mark.parametrize(
    "m,n,rank,factor_dtype,factor_block,tol",
    [
        (33, 150, 3, torch.float32, None, 1e-5),
        (70, 41, 1, torch.float32, None, 1e-5),
        (300, 129, 4, torch.float32, 128, 1e-5),
        (45, 90, 5, torch.float32, None, 1e-5),
        (33, 150, 4, torch.bfloat16, None, 1e-2),
    ],
)
def test_lowrank_update_vs_twin(m, n, rank, factor_dtype, factor_block, tol):
    ids = torch.tensor([0, 5, 9, 2, 2**31 + 1])
    w = torch.linspace(-1.0, 2.0, 5)
    kw = dict(seed=3, param_index=2, t_eff=1, noise_ids=ids, weights=w, m=m, n=n, rank=rank, noise=FAST)
    got = update.lowrank_update_triton(factor_dtype=factor_dtype, factor_block=factor_block, **kw)
    ref = update.lowrank_update_reference(**kw)
    assert got.dtype == torch.float32 and got.shape == (m, n)
    assert ((got - ref).norm() / ref.norm()).item() <= tol
    A = _factor_by_spec(3, 2, 1, ids, m, rank, N.STREAM_A)
    B = _factor_by_spec(3, 2, 1, ids, n, rank, N.STREAM_B)
    spec = torch.einsum("j,jmc,jnc->mn", w.double(), A, B)
    assert ((got.double() - spec).norm() / spec.norm()).item() <= tol


@interp
def test_lowrank_apply_vs_twin():
    kw = dict(seed=5, param_index=1, t_eff=2, noise_ids=torch.tensor([3, 1, 4, 0]),
              weights=torch.tensor([0.5, -1.0, 2.0, 0.25]), m=80, n=70, rank=3, noise=FAST)  # fmt: skip
    p0 = torch.randn(80, 70, generator=torch.Generator().manual_seed(0))
    p = p0.clone()
    sq, _ = update.lowrank_apply_triton(p, 0.3, factor_dtype=torch.float32, **kw)
    G = update.lowrank_update_reference(**kw)
    assert ((p - p0 - 0.3 * G).norm() / (0.3 * G.norm())).item() <= 1e-5
    assert abs(sq.item() / G.square().sum().item() - 1) <= 1e-5


@interp
@pytest.mark.parametrize("rank,block_max", [(4, 128), (1, None), (3, None)])
def test_update_matches_the_forward_noise(rank, block_max):
    """The update regenerates the forward's perturbation: identity rows through member ``2j`` give
    ``(sigma / sqrt r) B_j A_j^T``, whose transpose the update builds from ``w = [1]``."""
    m, n, j = 150, 70, 6
    x = torch.eye(n)
    member_ids = torch.full((n,), 2 * j)
    kw = dict(seed=12, weight_index=4, bias_index=None, t_eff=3, sigma=1.0, rank=rank, antithetic=True, noise=FAST,
              paired=True)  # fmt: skip
    shape = {} if block_max is None else dict(block_max=block_max, tile=4 * block_max)
    d = linear.lowrank_delta(x, m, None, member_ids, **shape, **kw)  # (n, m)
    g = update.lowrank_update_triton(seed=12, param_index=4, t_eff=3, noise_ids=torch.tensor([j]),
                                     weights=torch.ones(1), m=m, n=n, rank=rank, noise=FAST,
                                     factor_dtype=torch.float32)  # fmt: skip
    assert _max_abs(d.T * math.sqrt(rank), g) < 1e-5
    d_odd = linear.lowrank_delta(x, m, None, member_ids + 1, **shape, **kw)
    assert torch.equal(d_odd, -d)


@interp
@pytest.mark.parametrize("numel,J", [(301, 5), (7, 40), (1024, 3)])
def test_vector_update_vs_twin(numel, J):
    kw = dict(seed=3, param_index=2, t_eff=1, noise_ids=torch.arange(J) * 3,
              weights=torch.randn(J, generator=torch.Generator().manual_seed(J)), numel=numel, noise=FAST)  # fmt: skip
    got = update.vector_update_triton(**kw)
    assert got.shape == (numel,)
    assert _max_abs(got, update.vector_update_reference(**kw)) <= 1e-5
    spec = kw["weights"].double() @ _vector_by_spec(3, 2, 1, kw["noise_ids"], numel)
    assert _max_abs(got, spec) <= 1e-5


@interp
def test_strategy_perturb_and_step_through_the_kernels_match_the_twins(monkeypatch):
    """``EggrollStrategy(noise="gaussian_fast")``: the population's forward and ``step()`` with every op on the Triton
    kernels (interpreter) against the pure-torch twins."""
    from eggroll_rl import EggrollStrategy, kernels

    x = torch.randn(8, 24, generator=torch.Generator().manual_seed(1))

    def run(triton: bool):
        monkeypatch.setattr(kernels, "use_triton", lambda device: triton)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.Tanh(), torch.nn.Linear(40, 7))
        es = EggrollStrategy(sigma=0.1, lr=1e-2, rank=3, optimizer="adam", seed=3, noise=FAST, allow_cpu=True)
        es.setup(model)
        outs = []
        for epoch in range(2):
            with torch.no_grad(), es.perturb(8, epoch=epoch) as pop:
                outs.append(pop.batched_forward(model, x))
            es.step(torch.randn(8, generator=torch.Generator().manual_seed(epoch)))
        return model, outs

    got, got_outs = run(True)
    ref, ref_outs = run(False)
    for a, b in zip(got_outs, ref_outs):
        assert _max_abs(a, b) < 1e-5
    for (name, p), q in zip(got.named_parameters(), ref.parameters()):
        assert _max_abs(p.detach(), q.detach()) < 1e-5, name
