"""The Triton kernels on a real GPU against their pure-torch twins (marker ``gpu``; realistic shapes, three dtypes).

Errors are bounded by a small multiple of the same-precision twin's error against an fp32 reference (FlashAttention's
rule): the kernel may round differently, never worse.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from eggroll_rl import noise as N  # noqa: E402
from eggroll_rl.kernels import linear, philox, update  # noqa: E402
from eggroll_rl.kernels._launch import FAST_MATH  # noqa: E402

DEV = torch.device("cuda")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("stream,column", [(0, 0), (1, 3), (2, 0)])
def test_words_bit_exact(stream, column):
    ids = torch.tensor([0, 1, 2, 511, 12345, 2**31 + 7, 2**33 + 5], device=DEV)
    for seed in (0, 1, 0xDEADBEEF):
        got = philox.stream_words_triton(seed, 7, 3, ids, stream, column, 1000)
        ref = N.stream_words(seed, 7, 3, ids, stream, column, 1000)
        assert torch.equal(got, ref)


def test_normals_fast_math_within_1e5():
    """All 2^23 radii and many angles: the SFU approximations stay within 1e-5 of the exact twin."""
    ids = torch.arange(256, device=DEV)
    length = 1 << 15  # 8M normals, a 2^-5 sample of the 2^23 radii and of the angles
    got = philox.noise_stream_triton(99, 2, 5, ids, 1, 1, length, "gaussian", fast_math=True)
    ref = N.normal_stream(99, 2, 5, ids, 1, 1, length).to(torch.float64)
    assert (got.double() - ref).abs().max().item() < 1e-5
    words = N.stream_words(99, 2, 5, ids[:8], 1, 1, length // 4)
    u = ((words >> 9) * 2 + 1).double() * 2.0**-24
    rad = torch.sqrt(-2 * torch.log(u[..., 0::2]))
    th = torch.pi * (2 * u[..., 1::2].float().double() - 1)
    z = torch.stack((rad * torch.cos(th), rad * torch.sin(th)), -1)  # (J, B, 2, 2): pairs (x0,x1), (x2,x3)
    z = z.reshape(8, -1)
    assert (got[:8].double() - z).abs().max().item() < 1e-5  # against float64 math too


@pytest.mark.parametrize("stream,column", [(0, 0), (1, 3), (2, 0)])
def test_fast_words_bit_exact(stream, column):
    """``gaussian_fast``'s Philox4x32-7 words."""
    ids = torch.tensor([0, 1, 2, 511, 12345, 2**31 + 7, 2**33 + 5], device=DEV)
    got = philox.stream_words_triton(0xDEADBEEF, 7, 3, ids, stream, column, 1000, rounds=N.FAST_PHILOX_ROUNDS)
    assert torch.equal(got, N.stream_words(0xDEADBEEF, 7, 3, ids, stream, column, 1000, rounds=N.FAST_PHILOX_ROUNDS))


@pytest.mark.parametrize("stream,column", [(1, 0), (1, 1), (2, 0)])
def test_fast_normals_fast_math_within_1e5(stream, column):
    """``gaussian_fast`` with the SFU approximations on 8M normals (each of the 2^16 radii about 64 times): within
    1e-5 of the exact twin, and never beyond the cap."""
    ids = torch.arange(256, device=DEV)
    length = 1 << 15
    got = philox.noise_stream_triton(99, 2, 5, ids, stream, column, length, "gaussian_fast", fast_math=True)
    ref = N.fast_normal_stream(99, 2, 5, ids, stream, column, length).double()
    assert (got.double() - ref).abs().max().item() < 1e-5
    assert got.abs().max().item() <= N.FAST_Z_MAX + 1e-5


def test_rademacher_exact():
    ids = torch.arange(64, device=DEV) * 3
    got = philox.noise_stream_triton(5, 1, 0, ids, 0, 2, 10000, "rademacher")
    assert torch.equal(got, N.rademacher_stream(5, 1, 0, ids, 0, 2, 10000))


def _fp32_reference(x, w, b, ids, **kw):
    """The twin on upcast inputs (fp32 delta, float64 GEMM): the "exact" answer for every dtype."""
    bb = None if b is None else b.double()
    return linear.perturbed_linear_reference(x.double(), w.double(), bb, ids, **kw)


VARIANTS = [  # noise, rank, antithetic, weight_index, bias_index
    ("gaussian", 4, True, 3, 4),
    ("rademacher", 1, True, 3, 4),
    ("rademacher", 4, True, 3, 4),
    ("gaussian", 2, False, 3, None),
    ("gaussian", 1, True, None, 4),
    ("gaussian_fast", 1, False, 3, 4),
    ("gaussian_fast", 4, True, 3, 4),
    ("gaussian_fast", 3, True, 3, None),
]
CASES = [  # rows, in, out, variants: the paper's layer (scaled down), MLP layers, odd sizes
    (1024, 2048, 2048, VARIANTS),
    (4096, 17, 256, VARIANTS[:2]),
    (4096, 256, 6, VARIANTS[::2]),
    (333, 515, 701, VARIANTS[:3]),
    (333, 515, 701, VARIANTS[-3:]),
    (4096, 17, 256, VARIANTS[-2:]),
    (64, 4096, 4100, VARIANTS[-3:]),  # wide: 8 warps, blocks of 1024
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("R,n,m,variants", CASES)
def test_perturbed_linear_vs_twin(R, n, m, variants, dtype):
    shape = (R, n, m)
    torch.manual_seed(hash((shape, str(dtype))) % 1000)
    x = torch.randn(R, n, device=DEV).to(dtype)
    w = (torch.randn(m, n, device=DEV) / n**0.5).to(dtype)
    b = torch.randn(m, device=DEV).to(dtype)
    ids = torch.arange(R, device=DEV)
    for noise, rank, anti, wi, bi in variants:
        kw = dict(seed=77, weight_index=wi, bias_index=bi, t_eff=2, sigma=0.3, rank=rank, antithetic=anti, noise=noise)
        y = linear.perturbed_linear_triton(x, w, b, ids, **kw)
        assert y.dtype == dtype and y.shape == (R, m)
        exact = _fp32_reference(x, w, b, ids, **kw)
        twin_err = _rel(linear.perturbed_linear_reference(x, w, b, ids, **kw), exact)
        err = _rel(y, exact)
        floor = 1e-6 if dtype == torch.float32 else 1e-4
        if noise == "gaussian_fast" and FAST_MATH:
            # The kernel's normals come from the SFU's lg2/cos approximations, the twin's from exact math: each
            # normal within 1e-5 (test_fast_normals_fast_math_within_1e5). The perturbation term is ~all of y
            # here (sigma 0.3, unit-normal factors), so its relative error adds up to that much: 1.19e-6 at
            # 64 x 4096 -> 4100, rank 4, fp32 on an H200 (exact-noise floor 1e-6 + 3 twin errors of 4e-8).
            floor += 1e-5
        assert err <= 3 * twin_err + floor, (noise, rank, anti, wi, bi, err, twin_err)


def test_perturbed_linear_shuffled_members_and_no_bias():
    torch.manual_seed(1)
    x = torch.randn(600, 300, device=DEV)
    w = torch.randn(520, 300, device=DEV) / 20
    ids = torch.randperm(900, device=DEV)[:600]
    for m_out, wt in ((520, w), (200, w[:200])):
        kw = dict(seed=3, weight_index=0, bias_index=None, t_eff=1, sigma=0.1, rank=3, antithetic=True)
        y = linear.perturbed_linear_triton(x, wt, None, ids, **kw)
        ref = linear.perturbed_linear_reference(x, wt, None, ids, **kw)
        assert y.shape == (600, m_out)
        assert _rel(y, ref) < 1e-5


@pytest.mark.parametrize("inner,paired", [((3,), False), ((4,), False), ((3,), True), ((2, 5), True)])
def test_perturbed_linear_several_rows_per_member(inner, paired):
    """``x`` of shape ``(R, ..., n)``: every vector of row ``i`` runs as member ``i`` (odd and even repeats)."""
    torch.manual_seed(2)
    x = torch.randn(256, *inner, 96, device=DEV)
    w = torch.randn(130, 96, device=DEV) / 10
    b = torch.randn(130, device=DEV)
    ids = torch.arange(256, device=DEV)
    kw = dict(seed=4, weight_index=0, bias_index=1, t_eff=2, sigma=0.2, rank=2, antithetic=True, paired=paired)
    y = linear.perturbed_linear_triton(x, w, b, ids, **kw)
    assert y.shape == (256, *inner, 130)
    assert _rel(y, linear.perturbed_linear_reference(x, w, b, ids, **kw)) < 1e-5


@pytest.mark.parametrize("R,n,m,rank", [(64, 8192, 8192, 4), (64, 2048, 3000, 4), (130, 17, 256, 4), (64, 700, 6, 1)])
def test_rademacher_forward_factors_bit_exact(R, n, m, rank):
    """Default launch shapes (blocks of a span or more keep one call's words across blocks): one-hot rows through
    ``W = 0``, ``sigma = 1`` give ``(s / sqrt r) B[k] A^T + s eps`` exactly, from the twin's factors."""
    hot = torch.randint(0, n, (R,), device=DEV)
    x = torch.zeros(R, n, device=DEV)
    x[torch.arange(R, device=DEV), hot] = 1.0
    ids = torch.arange(R, device=DEV)
    kw = dict(seed=123, weight_index=1, bias_index=2, t_eff=5, sigma=1.0, rank=rank, antithetic=True,
              noise="rademacher")  # fmt: skip
    d = linear.lowrank_delta(x, m, None, ids, paired=True, **kw)
    j, s = N.member_noise_and_sign(ids, True)
    A = N.factor_noise(123, 1, 5, j, m, rank, N.STREAM_A, "rademacher").double()
    B = N.factor_noise(123, 1, 5, j, n, rank, N.STREAM_B, "rademacher").double()
    eps = N.vector_noise(123, 2, 5, j, m, "rademacher").double()
    ref = torch.einsum("rc,rmc->rm", B[torch.arange(R, device=DEV), hot], A) / rank**0.5 + eps
    assert torch.equal(d.double(), ref * s.double()[:, None])


def test_rademacher_update_factors_bit_exact(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    ids = torch.tensor([0, 3, 2**31 + 9], device=DEV)
    w = torch.tensor([1.0, -0.5, 2.0], device=DEV)
    kw = dict(seed=4, param_index=1, t_eff=2, noise_ids=ids, weights=w, m=8192, n=4500, rank=4, noise="rademacher")
    got = update.lowrank_update_triton(factor_dtype=torch.float32, **kw)
    A = N.factor_noise(4, 1, 2, ids, 8192, 4, N.STREAM_A, "rademacher").double()
    B = N.factor_noise(4, 1, 2, ids, 4500, 4, N.STREAM_B, "rademacher").double()
    assert torch.equal(got.double(), torch.einsum("j,jmc,jnc->mn", w.double(), A, B))


@pytest.mark.parametrize("noise", ["gaussian", "rademacher", "gaussian_fast"])
@pytest.mark.parametrize("factor_dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_lowrank_update_vs_twin(noise, factor_dtype, tol, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    ids = torch.arange(0, 600, 2, device=DEV)
    w = torch.randn(ids.numel(), device=DEV)
    kw = dict(seed=11, param_index=2, t_eff=4, noise_ids=ids, weights=w, m=1000, n=333, rank=3, noise=noise)
    got = update.lowrank_update_triton(factor_dtype=factor_dtype, **kw)
    ref = update.lowrank_update_reference(**kw)
    assert got.dtype == torch.float32 and got.shape == (1000, 333)
    assert _rel(got, ref) < tol


def test_lowrank_update_chunks(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    ids = torch.arange(10, device=DEV)
    w = torch.randn(10, device=DEV)
    kw = dict(seed=1, param_index=0, t_eff=0, noise_ids=ids, weights=w, m=64, n=48, rank=2)
    got = update.lowrank_update_triton(chunk_elements=3 * 2 * (64 + 48), **kw)  # 3 noise indices per chunk
    assert _rel(got, update.lowrank_update_reference(**kw)) < 1e-5


@pytest.mark.parametrize("noise", ["gaussian", "rademacher", "gaussian_fast"])
def test_vector_update_vs_twin(noise):
    ids = torch.arange(2048, device=DEV)
    w = torch.randn(2048, device=DEV)
    kw = dict(seed=8, param_index=5, t_eff=0, noise_ids=ids, weights=w, numel=3001, noise=noise)
    got = update.vector_update_triton(**kw)
    assert got.dtype == torch.float32 and got.shape == (3001,)
    assert _rel(got, update.vector_update_reference(**kw)) < 1e-5


def _extra_peak(fn, base_fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    base_fn()
    torch.cuda.synchronize()
    base = torch.cuda.max_memory_allocated() - before
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before - base


def test_extra_memory_grows_like_n_r():
    """Peak memory of the perturbed forward over plain inference is O(N r), never O(N r (m + n))."""
    m = n = 2048
    rank = 4
    w = torch.randn(m, n, device=DEV, dtype=torch.bfloat16)
    b = torch.randn(m, device=DEV, dtype=torch.bfloat16)
    extras = {}
    for rows in (1024, 4096):
        x = torch.randn(rows, n, device=DEV, dtype=torch.bfloat16)
        ids = torch.arange(rows, device=DEV)
        kw = dict(seed=0, weight_index=0, bias_index=1, t_eff=0, sigma=0.1, rank=rank, antithetic=True)
        linear.perturbed_linear_triton(x, w, b, ids, **kw)  # compile outside the measurement
        extras[rows] = _extra_peak(
            lambda x=x, ids=ids, kw=kw: linear.perturbed_linear_triton(x, w, b, ids, **kw),
            lambda x=x: torch.nn.functional.linear(x, w, b),
        )
    for rows, extra in extras.items():
        per_factor_bytes = rows * rank * (m + n) * 2  # what stored factors would take
        bound = 16 * rows * rank * 4 + (1 << 20)
        assert extra <= bound, (rows, extra, bound)
        assert extra < per_factor_bytes / 4


def test_batched_forward_memory_grows_like_n_r():
    strategy = pytest.importorskip("eggroll_rl.strategy")
    m = n = 2048
    model = torch.nn.Sequential(torch.nn.Linear(n, m), torch.nn.Tanh(), torch.nn.Linear(m, m)).to(DEV)
    extras = []
    for members in (1024, 4096):
        s = strategy.EggrollStrategy(sigma=0.1, lr=0.01, rank=4)
        s.setup(model)
        x = torch.randn(members, n, device=DEV)
        with torch.no_grad(), s.perturb(population_size=members, epoch=0) as pop:
            pop.batched_forward(model, x)
            extras.append(_extra_peak(lambda pop=pop, x=x: pop.batched_forward(model, x), lambda x=x: model(x)))
    # plain inference already holds (members x m) activations; stored factors would add members*4*(m+n)*4 bytes
    for members, extra in zip((1024, 4096), extras):
        assert extra < members * 4 * (m + n) * 4 / 8, (members, extra)
