"""The Triton kernels against their pure-torch twins under the Triton interpreter (CPU; runs in CI).

``TRITON_INTERPRET=1`` must be set before Triton is imported: ``tests/conftest.py`` does it on machines without a
GPU; on a GPU machine run ``TRITON_INTERPRET=1 python -m pytest tests/kernels/test_triton_interp.py``. Shapes are
small and odd.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from eggroll_rl import noise as N  # noqa: E402
from eggroll_rl.kernels import _launch, linear, philox, update  # noqa: E402

pytestmark = pytest.mark.skipif(not _launch.INTERPRET, reason="needs TRITON_INTERPRET=1 set before Triton's import")

IDS = torch.tensor([0, 1, 6, 511, 123456789, 2**31 + 5, 2**33 + 3])


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


# --- noise -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,k,t,stream,col", [(0, 0, 0, 0, 0), (1, 1, 1, 1, 3), (0xDEADBEEF, 7, 2**32 - 1, 2, 0)])
def test_words_bit_exact(seed, k, t, stream, col):
    got = philox.stream_words_triton(seed, k, t, IDS, stream, col, 70)
    assert torch.equal(got, N.stream_words(seed, k, t, IDS, stream, col, 70))


@pytest.mark.parametrize(
    "noise,length", [("gaussian", 1000), ("gaussian", 13), ("rademacher", 1000), ("rademacher", 77)]
)
def test_stream_vs_twin(noise, length):
    got = philox.noise_stream_triton(42, 3, 9, IDS, 0, 1, length, noise)
    ref = philox.noise_stream_reference(42, 3, 9, IDS, 0, 1, length, noise)
    assert _max_abs(got, ref) <= (1e-5 if noise == "gaussian" else 0)


# --- forward -----------------------------------------------------------------------------------------------------

FORWARD = [  # R, n, m, dtype, rank, antithetic, noise, bias, weight_index, bias_index, member ids (None: arange)
    (7, 37, 45, torch.float32, 2, True, "gaussian", True, 3, 4, None),
    (8, 37, 45, torch.float32, 2, True, "rademacher", True, 3, 4, None),
    (5, 17, 6, torch.float32, 4, False, "gaussian", False, 3, 4, None),
    (5, 17, 6, torch.float32, 1, True, "gaussian", True, None, 4, None),
    (9, 20, 300, torch.float32, 1, True, "gaussian", True, 3, 4, None),
    (9, 20, 300, torch.float32, 3, True, "gaussian", True, 3, None, None),
    (6, 130, 300, torch.float32, 2, True, "rademacher", True, 3, 4, [5, 2, 9, 9, 0, 1]),
    (6, 130, 300, torch.float32, 2, True, "gaussian", False, 3, 4, [5, 2, 9, 9, 0, 1]),
    (11, 33, 19, torch.float32, 3, True, "gaussian", True, 3, 4, [4, 5, 0, 1, 7, 6, 2, 3, 9, 8, 10]),
    (5, 17, 300, torch.bfloat16, 4, True, "gaussian", True, 3, None, None),
    (6, 40, 50, torch.float16, 2, True, "rademacher", True, 3, 4, None),
    (6, 40, 260, torch.float16, 1, False, "gaussian", True, None, 4, None),
    (8, 37, 45, torch.float32, 6, True, "gaussian", True, 3, 4, None),  # rank > 4: the generic delta path
    (8, 70, 33, torch.float32, 4, True, "gaussian", True, 3, 4, None),
    (8, 70, 33, torch.float32, 3, True, "rademacher", False, 3, 4, None),
]
# paired=True promises rows 2q, 2q+1 share their noise index: antithetic members in order, an even number of rows.
FORWARD_PAIRED = [(*c, paired) for c in FORWARD for paired in (False, True) if not paired or (c[5] and c[0] % 2 == 0)]
FORWARD_PAIRED = [c for c in FORWARD_PAIRED if not (c[-1] and c[-2] is not None)]


def _forward_case(R, n, m, dtype, has_bias, ids, inner=()):
    g = torch.Generator().manual_seed(R * 1000 + n)
    x = torch.randn(R, *inner, n, generator=g).to(dtype)
    w = (torch.randn(m, n, generator=g) / n**0.5).to(dtype)
    b = torch.randn(m, generator=g).to(dtype) if has_bias else None
    member_ids = torch.arange(R) if ids is None else torch.tensor(ids)
    return x, w, b, member_ids


def _check_forward(x, w, b, member_ids, kw, paired):
    y = linear.perturbed_linear_triton(x, w, b, member_ids, paired=paired, **kw)
    assert y.dtype == x.dtype and y.shape == (*x.shape[:-1], w.shape[0])
    bb = None if b is None else b.double()
    exact = linear.perturbed_linear_reference(x.double(), w.double(), bb, member_ids, **kw)
    twin = linear.perturbed_linear_reference(x, w, b, member_ids, **kw)
    assert _max_abs(y, exact) <= 3 * _max_abs(twin, exact) + (1e-5 if x.dtype == torch.float32 else 1e-3)


@pytest.mark.parametrize("R,n,m,dtype,rank,anti,noise,has_bias,wi,bi,ids,paired", FORWARD_PAIRED)
def test_perturbed_linear_vs_twin(R, n, m, dtype, rank, anti, noise, has_bias, wi, bi, ids, paired):
    x, w, b, member_ids = _forward_case(R, n, m, dtype, has_bias, ids)
    kw = dict(seed=99, weight_index=wi, bias_index=bi, t_eff=3, sigma=0.4, rank=rank, antithetic=anti, noise=noise)
    _check_forward(x, w, b, member_ids, kw, paired)


@pytest.mark.parametrize("inner,paired", [((3,), False), ((2,), False), ((3,), True), ((2, 3), True)])
def test_perturbed_linear_several_rows_per_member(inner, paired):
    """``x`` of shape ``(R, ..., n)``: every vector of row ``i`` runs as member ``i`` (odd and even repeats)."""
    x, w, b, member_ids = _forward_case(6, 21, 35, torch.float32, True, None, inner)
    kw = dict(seed=5, weight_index=0, bias_index=1, t_eff=1, sigma=0.2, rank=2, antithetic=True)
    _check_forward(x, w, b, member_ids, kw, paired)


# --- update ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "noise,factor_dtype,tol",
    [("gaussian", torch.float32, 1e-5), ("rademacher", torch.float32, 1e-5), ("gaussian", torch.bfloat16, 1e-2)],
)
def test_lowrank_update_vs_twin(noise, factor_dtype, tol):
    ids = torch.tensor([0, 5, 9, 2, 7])
    w = torch.linspace(-1.0, 2.0, 5)
    kw = dict(seed=3, param_index=2, t_eff=1, noise_ids=ids, weights=w, m=33, n=150, rank=3, noise=noise)
    got = update.lowrank_update_triton(factor_dtype=factor_dtype, **kw)
    ref = update.lowrank_update_reference(**kw)
    assert got.dtype == torch.float32 and got.shape == (33, 150)
    assert ((got - ref).norm() / ref.norm()).item() <= tol


@pytest.mark.parametrize("gram_max", [4096, 0])  # 4096: one GEMM into the parameter, norm from Gram matrices; 0: via G
def test_lowrank_apply_vs_twin(gram_max):
    ids = torch.tensor([3, 1, 4, 0])
    w = torch.tensor([0.5, -1.0, 2.0, 0.25])
    kw = dict(seed=5, param_index=1, t_eff=2, noise_ids=ids, weights=w, m=80, n=70, rank=2)
    p0 = torch.randn(80, 70)
    p = p0.clone()
    sq, sq_change = update.lowrank_apply_triton(p, 0.3, factor_dtype=torch.float32, gram_max=gram_max, **kw)
    G = update.lowrank_update_reference(**kw)
    assert ((p - p0 - 0.3 * G).norm() / (0.3 * G.norm())).item() <= 1e-5
    assert abs(sq.item() / G.square().sum().item() - 1) <= 1e-5
    assert abs(sq_change.item() / (p - p0).square().sum().item() - 1) <= 1e-5


def test_lowrank_apply_into_a_float32_master_of_a_bf16_model():
    """A bf16 model's float32 master copy: the update is built from bf16 factors and added in float32."""
    kw = dict(seed=5, param_index=1, t_eff=2, noise_ids=torch.tensor([3, 1, 4, 0]),
              weights=torch.tensor([0.5, -1.0, 2.0, 0.25]), m=80, n=70, rank=2)  # fmt: skip
    p0 = torch.randn(80, 70)
    p = p0.clone()
    sq, _ = update.lowrank_apply_triton(p, 1e-3, factor_dtype=torch.bfloat16, **kw)
    G = update.lowrank_update_reference(**kw)
    assert p.dtype == torch.float32
    assert ((p - p0 - 1e-3 * G).norm() / (1e-3 * G.norm())).item() <= 1e-2
    assert abs(sq.item() / G.square().sum().item() - 1) <= 2e-2  # a squared norm: twice G's relative error


def test_lowrank_update_chunked():
    kw = dict(seed=1, param_index=0, t_eff=0, noise_ids=torch.arange(5), weights=torch.randn(5), m=20, n=30, rank=2)
    got = update.lowrank_update_triton(chunk_elements=2 * 2 * (20 + 30), **kw)  # two noise indices per chunk
    ref = update.lowrank_update_reference(**kw)
    assert ((got - ref).norm() / ref.norm()).item() <= 1e-5


@pytest.mark.parametrize("noise,numel,J", [("gaussian", 300, 5), ("rademacher", 300, 5), ("gaussian", 7, 40)])
def test_vector_update_vs_twin(noise, numel, J):
    kw = dict(seed=3, param_index=2, t_eff=1, noise_ids=torch.arange(J) * 3, weights=torch.randn(J), numel=numel,
              noise=noise)  # fmt: skip
    got = update.vector_update_triton(**kw)
    assert got.dtype == torch.float32 and got.shape == (numel,)
    assert _max_abs(got, update.vector_update_reference(**kw)) <= 1e-5


# --- bad input ---------------------------------------------------------------------------------------------------

BAD = {
    "x 1-D": lambda x, w, b, i: (x[0], w, b, i),
    "weight in_features": lambda x, w, b, i: (x, w[:, :-1], b, i),
    "weight dtype": lambda x, w, b, i: (x, w.double(), b, i),
    "bias shape": lambda x, w, b, i: (x, w, b[:-1], i),
    "member_ids length": lambda x, w, b, i: (x, w, b, i[:-1]),
    "member_ids float": lambda x, w, b, i: (x, w, b, i.float()),
}


@pytest.mark.parametrize("mutate", BAD.values(), ids=BAD.keys())
def test_bad_input_raises(mutate):
    args = mutate(torch.randn(4, 8), torch.randn(5, 8), torch.randn(5), torch.arange(4))
    kw = dict(seed=0, weight_index=0, bias_index=1, t_eff=0, sigma=0.1, rank=1, antithetic=True)
    with pytest.raises((ValueError, TypeError)):
        linear.perturbed_linear_triton(*args, **kw)


@pytest.mark.parametrize(
    ("arg", "value", "exc"), [("rank", 0, ValueError), ("rank", 1.0, TypeError), ("seed", True, TypeError)]
)
def test_bad_scalar_names_argument_value_and_expectation(arg, value, exc):
    kw = dict(seed=0, weight_index=0, bias_index=None, t_eff=0, sigma=0.1, rank=1, antithetic=True)
    kw[arg] = value
    with pytest.raises(exc, match=rf"^{arg}={value!r} is invalid: expected an integer"):
        linear.perturbed_linear_triton(torch.randn(4, 8), torch.randn(5, 8), None, torch.arange(4), **kw)


def test_bad_noise_name_raises():
    with pytest.raises(ValueError, match="noise='uniform' is invalid"):
        linear.perturbed_linear_triton(
            torch.randn(4, 8), torch.randn(5, 8), None, torch.arange(4), seed=0, weight_index=0, bias_index=None,
            t_eff=0, sigma=0.1, rank=1, antithetic=True, noise="uniform",
        )  # fmt: skip


# --- mixed dtypes and autocast -----------------------------------------------------------------------------------

BOTH = {"triton": linear.perturbed_linear_triton, "twin": linear.perturbed_linear_reference}


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_perturbed_linear_under_autocast(x_dtype):
    """Under CPU autocast (bf16) both paths compute in bf16, as F.linear does there, and agree."""
    x, w, b, member_ids = _forward_case(8, 37, 45, torch.float32, True, None)
    x = x.to(x_dtype)
    kw = dict(seed=9, weight_index=0, bias_index=1, t_eff=2, sigma=0.3, rank=2, antithetic=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = torch.nn.functional.linear(x, w, b)
        got = {k: f(x, w, b, member_ids, paired=True, **kw) for k, f in BOTH.items()}
    # What autocast gives: the operands in bf16, the perturbation added exactly.
    xb, wb, bb = (t.to(torch.bfloat16).double() for t in (x, w, b))
    exact = linear.perturbed_linear_reference(xb, wb, bb, member_ids, **kw)
    rounding = _max_abs(exact.to(torch.bfloat16), exact)
    assert all(y.dtype == plain.dtype == torch.bfloat16 for y in got.values())
    # The twin rounds x W^T + b to bf16 (F.linear's output) before adding the perturbation: a few roundings.
    assert _max_abs(got["twin"], exact) <= 4 * rounding
    assert _max_abs(got["triton"], exact) <= 3 * _max_abs(got["twin"], exact) + 1e-3


@pytest.mark.parametrize("path", BOTH)
def test_mixed_dtypes_without_autocast_raise_clearly(path):
    x, w, b, member_ids = _forward_case(4, 8, 5, torch.float32, True, None)
    kw = dict(seed=0, weight_index=0, bias_index=1, t_eff=0, sigma=0.1, rank=1, antithetic=True)
    with pytest.raises(TypeError, match=r"weight has dtype torch.bfloat16 but the input x has dtype torch.float32.*"
                       r"torch.autocast"):  # fmt: skip
        BOTH[path](x, w.to(torch.bfloat16), b, member_ids, **kw)


# --- the paired promise ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", BOTH)
@pytest.mark.parametrize("ids,anti", [([0, 2, 1, 3], True), ([0, 1, 2, 3], False), ([4, 5, 0, 1, 2, 5], True)])
def test_paired_with_ids_that_are_not_pairs_raises(path, ids, anti):
    x, w, b, member_ids = _forward_case(len(ids), 9, 7, torch.float32, True, ids)
    kw = dict(seed=0, weight_index=0, bias_index=1, t_eff=0, sigma=0.1, rank=2, antithetic=anti)
    with pytest.raises(ValueError, match=r"paired=True promises .* rows \d and \d are members"):
        BOTH[path](x, w, b, member_ids, paired=True, **kw)
    # Skipping the check (a caller that validated its ids) runs: the kernel's noise is then wrong for the odd rows.
    y = BOTH[path](x, w, b, member_ids, paired=True, check_paired=False, **kw)
    assert y.shape == (len(ids), 7)


@pytest.mark.parametrize("path", BOTH)
def test_paired_with_pairs_runs(path):
    ids = [4, 5, 0, 1, 7, 6, 3]  # pairs in any order and sign order; an odd last row has no partner
    x, w, b, member_ids = _forward_case(len(ids), 9, 7, torch.float32, True, ids)
    kw = dict(seed=0, weight_index=0, bias_index=1, t_eff=0, sigma=0.1, rank=2, antithetic=True)
    y = BOTH[path](x, w, b, member_ids, paired=True, **kw)
    ref = linear.perturbed_linear_reference(x.double(), w.double(), b.double(), member_ids, **kw)
    assert _max_abs(y, ref) <= 1e-5
