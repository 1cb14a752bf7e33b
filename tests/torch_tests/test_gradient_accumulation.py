"""The update sums many rank-r perturbations: one GEMM over stacked factors, rank above r, bounded memory."""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
from es_helpers import make_strategy

from eggroll_rl.kernels import update
from eggroll_rl.kernels.update import lowrank_update_reference, vector_update_reference
from eggroll_rl.noise import STREAM_A, STREAM_B, factor_noise, vector_noise


def test_accumulated_update_has_rank_above_r(device):
    torch.manual_seed(0)
    model = nn.Linear(40, 30, bias=False).to(device)
    rank, pop_size = 2, 32
    s = make_strategy(device, rank=rank, optimizer=None, lr=1.0)
    s.setup(model)
    before = model.weight.detach().clone()
    with s.perturb(pop_size):
        pass
    s.step(torch.randn(pop_size, device=device))
    delta = model.weight.detach() - before
    r = torch.linalg.matrix_rank(delta.double(), rtol=1e-6).item()
    assert rank < r <= min(pop_size // 2 * rank, 30)
    assert r == min(pop_size // 2 * rank, 30)


def test_lowrank_update_equals_the_sum_of_outer_products(device):
    ids = torch.arange(9, device=device)
    w = torch.randn(9, device=device)
    G = lowrank_update_reference(seed=5, param_index=2, t_eff=3, noise_ids=ids, weights=w, m=13, n=7, rank=3)
    expected = torch.zeros(13, 7, device=device)
    for j in range(9):
        A = factor_noise(5, 2, 3, ids[j : j + 1], 13, 3, STREAM_A)[0]
        B = factor_noise(5, 2, 3, ids[j : j + 1], 7, 3, STREAM_B)[0]
        expected += w[j] * A @ B.T
    torch.testing.assert_close(G, expected, rtol=1e-5, atol=1e-5)
    g = vector_update_reference(seed=5, param_index=2, t_eff=3, noise_ids=ids, weights=w, numel=11)
    torch.testing.assert_close(g, w @ vector_noise(5, 2, 3, ids, 11), rtol=1e-5, atol=1e-5)


def test_chunked_update_equals_the_unchunked_one(device, monkeypatch):
    ids = torch.arange(300, device=device)
    w = torch.randn(300, device=device)
    kw = dict(seed=1, param_index=0, t_eff=0, noise_ids=ids, weights=w, m=17, n=23, rank=4)
    whole = lowrank_update_reference(**kw)
    vec_whole = vector_update_reference(seed=1, param_index=1, t_eff=0, noise_ids=ids, weights=w, numel=50)
    # 160 elements per noise index (r (m + n)): chunks of 3 members.
    chunks = list(update._chunks(300, 4 * (17 + 23), 500))
    assert len(chunks) == 100 and all(hi - lo <= 3 for lo, hi in chunks)
    torch.testing.assert_close(lowrank_update_reference(chunk_elements=500, **kw), whole, rtol=1e-4, atol=1e-4)
    vec = vector_update_reference(
        seed=1, param_index=1, t_eff=0, noise_ids=ids, weights=w, numel=50, chunk_elements=500
    )
    torch.testing.assert_close(vec, vec_whole, rtol=1e-4, atol=1e-4)


def test_large_population_update_runs_in_bounded_chunks(device, monkeypatch):
    """N = 65536 members on a small layer: the update never holds more than one chunk of factors (the twin's
    chunking is observed here; the Triton update bounds its buffer by its ``chunk_elements`` argument)."""
    monkeypatch.setenv("EGGROLL_DISABLE_TRITON", "1")
    model = nn.Linear(16, 8).to(device)
    s = make_strategy(device, rank=4, optimizer=None, lr=1.0)
    s.setup(model)
    # The strategy (optimizer=None: the fused apply) calls the twin with its default chunk: make it small here.
    small_chunks = functools.partial(update.lowrank_apply_reference, chunk_elements=1 << 18)
    monkeypatch.setattr(update, "lowrank_apply_reference", small_chunks)
    sizes = []
    original = update.factor_noise

    def spy(seed, k, t, ids, *args, **kw):
        sizes.append(ids.numel())
        return original(seed, k, t, ids, *args, **kw)

    monkeypatch.setattr(update, "factor_noise", spy)
    with s.perturb(65536):
        pass
    metrics = s.step(torch.randn(65536, device=device))
    assert metrics["update_norm"] > 0
    assert max(sizes) <= (1 << 18) // (4 * (16 + 8)) and sum(sizes) == 2 * 32768
