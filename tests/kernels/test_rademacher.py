"""Rademacher noise: the sign layout of ``eggroll_rl.noise`` (one Philox call, 128 signs), its statistics, and the
Triton kernels that regenerate it (under the interpreter on CPU) against the pure-torch twin, bit for bit.

Bit-exact checks of the kernels go through sums of +-1 values, which float32 holds exactly: a one-hot input row
picks one row of ``B``, ``W = 0`` and ``sigma = 1`` leave ``D = (s / sqrt r) sum_c B[k, c] A[:, c] + s eps`` (exact
at ranks 1 and 4; elsewhere a wrong sign would still move an entry by ``2 / sqrt r``), and
``sum_j w_j A_j B_j^T`` with power-of-two weights is exact too. Launch shapes with feature blocks of a span (512
rows) or more take the kernels' path that keeps one call's words across blocks; the interpreter's default blocks
(32 rows) take the path that makes a call per block.
"""

from __future__ import annotations

import math

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
SPAN = N.SIGN_SPAN


# --- statistics of the twin (no Triton) --------------------------------------------------------------------------


def _bound(n: int) -> float:
    """Five standard errors of the mean of ``n`` independent +-1 values."""
    return 5.0 / math.sqrt(n)


def test_factor_signs_are_balanced_and_uncorrelated():
    """64 noise indices x 8192 rows x 8 columns (two column groups): 4M signs."""
    ids = torch.arange(64)
    a = N.factor_noise(11, 3, 2, ids, 8192, 8, N.STREAM_A, "rademacher")  # (J, rows, r)
    b = N.factor_noise(11, 3, 2, ids, 8192, 8, N.STREAM_B, "rademacher")
    assert set(a.unique().tolist()) == {-1.0, 1.0}
    assert abs(a.mean().item()) < _bound(a.numel()) and abs(b.mean().item()) < _bound(b.numel())
    # every bit position of a call (span in its run of 8 x lane in its quad x word) is balanced on its own
    rows = torch.arange(8192)
    cls = ((rows // SPAN) % 8) * 4 + rows % 4
    for k in range(32):
        for c in (0, 3, 5):
            sel = a[:, cls == k, c]
            assert abs(sel.mean().item()) < _bound(sel.numel()), (k, c)
    # neighbours: rows a, a+1 (same word), a, a+4 (next quad: next call), a, a+512 (next span: same call, 4 bits
    # on), columns c, c+1 (next word), c, c+4 (next group: another call), members j, j+1, and A against B
    pairs = {
        "row+1": (a[:, :-1], a[:, 1:]),
        "row+4": (a[:, :-4], a[:, 4:]),
        "span+1": (a[:, :-SPAN], a[:, SPAN:]),
        "column+1": (a[..., :-1], a[..., 1:]),
        "group+1": (a[..., :4], a[..., 4:]),
        "member+1": (a[:-1], a[1:]),
        "A vs B": (a, b),
    }
    for name, (u, v) in pairs.items():
        assert abs((u * v).mean().item()) < _bound(u.numel()), name


def test_vector_signs_are_balanced_and_uncorrelated():
    ids = torch.arange(16)
    e = N.vector_noise(5, 1, 0, ids, 40000, "rademacher")  # crosses a run of 32 spans (16384 elements)
    assert abs(e.mean().item()) < _bound(e.numel())
    for name, (u, v) in {
        "+1": (e[:, :-1], e[:, 1:]),
        "+4": (e[:, :-4], e[:, 4:]),
        "+span": (e[:, :-SPAN], e[:, SPAN:]),
        "+8 spans (next word)": (e[:, : -8 * SPAN], e[:, 8 * SPAN :]),
        "member+1": (e[:-1], e[1:]),
    }.items():
        assert abs((u * v).mean().item()) < _bound(u.numel()), name


def test_factor_columns_do_not_depend_on_the_rank():
    """A column is the same at every rank: rank r's factor is the first r columns of a wider one."""
    ids = torch.tensor([0, 7])
    wide = N.factor_noise(2, 0, 1, ids, 700, 6, N.STREAM_B, "rademacher")
    for r in (1, 3, 4):
        assert torch.equal(N.factor_noise(2, 0, 1, ids, 700, r, N.STREAM_B, "rademacher"), wide[..., :r])


def test_one_call_holds_128_signs():
    """The calls a factor of rank 4 needs: rows / 32 per noise index, i.e. one per 128 entries."""
    rows, rank = 8192, 4
    c0, _, _ = N.sign_position(torch.arange(rows), 8)
    assert c0.unique().numel() * 128 == rows * rank
    e0, _, _ = N.sign_position(torch.arange(32 * SPAN), 32)
    assert e0.unique().numel() * 128 == 32 * SPAN


# --- the kernels (interpreter) -----------------------------------------------------------------------------------

IDS = torch.tensor([0, 1, 6, 511, 123456789, 2**31 + 5])


@interp
@pytest.mark.parametrize("stream,column,length", [(0, 0, 5000), (1, 3, 4097), (0, 6, 700), (2, 0, 16500)])
def test_stream_tool_bit_exact(stream, column, length):
    got = philox.noise_stream_triton(42, 3, 9, IDS, stream, column, length, "rademacher")
    assert torch.equal(got, N.rademacher_stream(42, 3, 9, IDS, stream, column, length))


def _one_hot_case(R, n, m, seed=0):
    g = torch.Generator().manual_seed(seed)
    hot = torch.randint(0, n, (R,), generator=g)
    hot[: min(R, 3)] = torch.tensor([0, n - 1, n // 2])[: min(R, 3)]
    x = torch.zeros(R, n)
    x[torch.arange(R), hot] = 1.0
    return x, hot


def _materialized_delta(hot, member_ids, m, n, rank, antithetic, kw):
    """``(s / sqrt r) B[hot] A^T + s eps`` from the twin's factors, float64 (exact here)."""
    j, s = N.member_noise_and_sign(member_ids, antithetic)
    uniq, inv = torch.unique(j, return_inverse=True)
    A = N.factor_noise(kw["seed"], kw["weight_index"], kw["t_eff"], uniq, m, rank, N.STREAM_A, "rademacher")
    B = N.factor_noise(kw["seed"], kw["weight_index"], kw["t_eff"], uniq, n, rank, N.STREAM_B, "rademacher")
    eps = N.vector_noise(kw["seed"], kw["bias_index"], kw["t_eff"], uniq, m, "rademacher")
    xb = B[inv, hot].double()  # (R, r)
    d = torch.einsum("rc,rmc->rm", xb, A[inv].double()) / math.sqrt(rank) + eps[inv].double()
    return d * s.double()[:, None]


SHAPES = [  # R, n, m, rank, antithetic, paired, block_max (None: the interpreter's 32-row blocks)
    (6, 4700, 1100, 4, True, True, 1024),  # several runs of 8 spans along K, partial last span
    (6, 4700, 1100, 4, True, False, 512),
    (5, 1030, 4500, 1, False, False, 512),
    (4, 600, 9000, 3, True, True, 2048),  # a block of 4 spans; vector noise over a run of 32 spans
    (4, 300, 130, 6, True, True, 1024),  # rank > 4: two column groups (the per-column path)
    (7, 333, 129, 4, True, False, None),
    (8, 130, 37, 1, True, True, None),
]


@interp
@pytest.mark.parametrize("R,n,m,rank,anti,paired,block_max", SHAPES)
def test_forward_factors_bit_exact(R, n, m, rank, anti, paired, block_max):
    """The delta kernel's A, B and eps, read through one-hot rows, equal the twin's to the last bit."""
    x, hot = _one_hot_case(R, n, m)
    ids = torch.arange(R) if paired else torch.tensor([5, 2, 9, 9, 0, 1, 3, 4])[:R]
    kw = dict(seed=0xDEADBEEF, weight_index=2, bias_index=3, t_eff=7, sigma=1.0, rank=rank, antithetic=anti,
              noise="rademacher")  # fmt: skip
    shape = {} if block_max is None else dict(block_max=block_max, tile=block_max)
    d = linear.lowrank_delta(x, m, None, ids, paired=paired, **shape, **kw)
    ref = _materialized_delta(hot, ids, m, n, rank, anti, kw)
    if rank in (1, 4):  # 1 / sqrt(r) exact
        assert torch.equal(d.double(), ref)
    else:  # one wrong sign would move an entry by 2 / sqrt(r)
        assert (d.double() - ref).abs().max().item() < 1e-5


@interp
@pytest.mark.parametrize("R,n,m,rank,anti,paired,block_max", SHAPES[::2])
def test_forward_against_materialized_weights(R, n, m, rank, anti, paired, block_max):
    """``y = x W_i^T + b + sigma s eps`` with the member's weight ``W_i = W + (sigma s / sqrt r) A B^T`` formed."""
    g = torch.Generator().manual_seed(R + n)
    x, w, b = torch.randn(R, n, generator=g), torch.randn(m, n, generator=g) / n**0.5, torch.randn(m, generator=g)
    ids = torch.arange(R)
    kw = dict(seed=9, weight_index=0, bias_index=1, t_eff=2, sigma=0.3, rank=rank, antithetic=anti,
              noise="rademacher")  # fmt: skip
    shape = {} if block_max is None else dict(block_max=block_max, tile=block_max)
    y = linear.perturbed_linear_triton(x, w, b, ids, paired=paired, **shape, **kw)
    j, s = N.member_noise_and_sign(ids, anti)
    A = N.factor_noise(9, 0, 2, j, m, rank, N.STREAM_A, "rademacher").double()
    B = N.factor_noise(9, 0, 2, j, n, rank, N.STREAM_B, "rademacher").double()
    eps = N.vector_noise(9, 1, 2, j, m, "rademacher").double()
    scale = (0.3 * s.double() / math.sqrt(rank))[:, None, None]
    w_i = w.double() + scale * A @ B.transpose(1, 2)  # (R, m, n)
    ref = torch.einsum("rn,rmn->rm", x.double(), w_i) + b.double() + 0.3 * s.double()[:, None] * eps
    assert (y.double() - ref).abs().max().item() < 1e-4


@interp
@pytest.mark.parametrize("m,n,rank,factor_block", [(4500, 300, 4, 512), (70, 9000, 6, 512), (333, 129, 1, None)])
def test_update_factors_bit_exact(m, n, rank, factor_block):
    """``sum_j w_j A_j B_j^T`` from the factor kernel equals the twin's exactly (power-of-two weights)."""
    ids = torch.tensor([0, 5, 9, 2**31 + 1])
    w = torch.tensor([1.0, -2.0, 0.5, 0.25])
    kw = dict(seed=3, param_index=2, t_eff=1, noise_ids=ids, weights=w, m=m, n=n, rank=rank, noise="rademacher")
    got = update.lowrank_update_triton(factor_dtype=torch.float32, factor_block=factor_block, **kw)
    A = N.factor_noise(3, 2, 1, ids, m, rank, N.STREAM_A, "rademacher").double()
    B = N.factor_noise(3, 2, 1, ids, n, rank, N.STREAM_B, "rademacher").double()
    assert torch.equal(got.double(), torch.einsum("j,jmc,jnc->mn", w.double(), A, B))
    assert torch.equal(got, update.lowrank_update_reference(**kw))


@interp
@pytest.mark.parametrize("rank,block_max", [(4, 1024), (1, None)])
def test_update_matches_the_forward_noise(rank, block_max):
    """The update regenerates the forward's perturbation: identity rows through member ``2j`` give
    ``(sigma / sqrt r) B_j A_j^T``, whose transpose the update builds from ``w = [1]``."""
    m, n, j = 600, 260, 6
    x = torch.eye(n)
    member_ids = torch.full((n,), 2 * j)
    kw = dict(seed=12, weight_index=4, bias_index=None, t_eff=3, sigma=1.0, rank=rank, antithetic=True,
              noise="rademacher", paired=True)  # fmt: skip
    shape = {} if block_max is None else dict(block_max=block_max, tile=4 * block_max)
    d = linear.lowrank_delta(x, m, None, member_ids, **shape, **kw)  # (n, m)
    g = update.lowrank_update_triton(seed=12, param_index=4, t_eff=3, noise_ids=torch.tensor([j]),
                                     weights=torch.ones(1), m=m, n=n, rank=rank, noise="rademacher",
                                     factor_dtype=torch.float32)  # fmt: skip
    assert torch.equal(d.T * math.sqrt(rank), g)
    # the forward of the antithetic partner is the negative
    d_odd = linear.lowrank_delta(x, m, None, member_ids + 1, **shape, **kw)
    assert torch.equal(d_odd, -d)


@interp
def test_vector_update_bit_exact():
    ids = torch.arange(5) * 3
    w = torch.tensor([1.0, -1.0, 2.0, 0.5, -0.25])
    kw = dict(seed=3, param_index=2, t_eff=1, noise_ids=ids, weights=w, numel=17000, noise="rademacher")
    got = update.vector_update_triton(**kw)
    eps = N.vector_noise(3, 2, 1, ids, 17000, "rademacher").double()
    assert torch.equal(got.double(), w.double() @ eps)
