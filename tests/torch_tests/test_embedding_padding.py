"""An Embedding's ``padding_idx`` row is never perturbed, as ``nn.Embedding`` never changes it by gradient.

Every path that forms a member agrees on that: ``batched_forward``, ``iterate()``, ``get_factors`` /
``perturbation`` (the materialized weights), and ``step()``, whose ES gradient has a zero padding row. The
reference is written out from the noise functions: member ``i``'s table is ``W + (sigma s / sqrt r) A_j B_j^T``
with the padding row of the delta set to zero.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from es_helpers import make_strategy

from eggroll_rl.noise import STREAM_A, STREAM_B, factor_noise, member_noise_and_sign, vector_noise

SIGMA, RANK, SEED, N, EPOCH, PAD = 0.2, 2, 42, 4, 1, 3
NUM_EMB, DIM, TOKENS = 7, 4, 3


def _model(device, padding_idx=PAD):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Embedding(NUM_EMB, DIM, padding_idx=padding_idx), nn.Flatten(), nn.Linear(TOKENS * DIM, 2)
    ).to(device)
    with torch.no_grad():
        model[0].weight[PAD] = torch.tensor([0.5, -1.0, 0.25, 2.0])  # a non-zero padding row (a loaded table)
    return model


def _table_delta(member: int, device, pad=PAD) -> torch.Tensor:
    """The explicit ``sigma E_i`` of the table (parameter 0), padding row zero."""
    j, s = member_noise_and_sign(torch.tensor([member], device=device), True)
    A = factor_noise(SEED, 0, EPOCH, j, NUM_EMB, RANK, STREAM_A, device=device)[0]
    B = factor_noise(SEED, 0, EPOCH, j, DIM, RANK, STREAM_B, device=device)[0]
    delta = (SIGMA * float(s) / math.sqrt(RANK)) * A @ B.T
    if pad is not None:
        delta[pad] = 0.0
    return delta


def _linear_member(lin: nn.Linear, index: int, member: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The member's explicit weight and bias of a Linear whose weight is parameter ``index``, its bias the next."""
    j, s = member_noise_and_sign(torch.tensor([member], device=device), True)
    out_f, in_f = lin.weight.shape
    A = factor_noise(SEED, index, EPOCH, j, out_f, RANK, STREAM_A, device=device)[0]
    B = factor_noise(SEED, index, EPOCH, j, in_f, RANK, STREAM_B, device=device)[0]
    w = lin.weight.detach() + (SIGMA * float(s) / math.sqrt(RANK)) * A @ B.T
    b = lin.bias.detach() + SIGMA * float(s) * vector_noise(SEED, index + 1, EPOCH, j, out_f, device=device)[0]
    return w, b


def _member_output(model, x_row, member: int, device) -> torch.Tensor:
    """The member's output from explicitly materialized weights."""
    table = model[0].weight.detach() + _table_delta(member, device)
    return F.linear(F.embedding(x_row, table).flatten(1), *_linear_member(model[2], 1, member, device))


def test_padding_row_unperturbed_in_batched_forward_iterate_and_materialized_weights(device):
    model = _model(device)
    s = make_strategy(device, rank=RANK, sigma=SIGMA, seed=SEED)
    s.setup(model)
    x = torch.tensor([[PAD, 1, PAD], [2, PAD, 5], [PAD, PAD, 6], [0, PAD, 4]], device=device)
    with s.perturb(N, epoch=EPOCH) as pop:
        batched = pop.batched_forward(model, x)
        pad_row = model[0].weight[PAD].detach().clone()
        looped = []
        for i in pop.iterate():
            assert torch.equal(model[0].weight[PAD], pad_row)
            looped.append(model(x[i : i + 1]))
        deltas = [pop.perturbation(i, "0.weight") for i in range(N)]
        factors = [pop.get_factors(i, "0.weight") for i in range(N)]
    ref = torch.cat([_member_output(model, x[i : i + 1], i, device) for i in range(N)])
    torch.testing.assert_close(batched, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat(looped), ref, rtol=1e-5, atol=1e-5)
    for i in range(N):
        torch.testing.assert_close(deltas[i], _table_delta(i, device), rtol=1e-5, atol=1e-6)
        assert torch.equal(deltas[i][PAD], torch.zeros(DIM, device=device))
        A, B = factors[i]
        assert torch.equal(A[PAD], torch.zeros(RANK, device=device))  # the member's table is W + A' B^T
    # without padding_idx the same row is perturbed (the comparison is not of a row that is always zero)
    assert _table_delta(0, device, pad=None)[PAD].abs().max() > 1e-3


@pytest.mark.parametrize("optimizer", [None, "adam", "sgd"])
def test_step_leaves_the_padding_row_unchanged(device, optimizer):
    """The ES gradient's padding row is zero: plain ascent (fused), Adam and SGD (optimizer path) keep the row."""
    model = _model(device)
    s = make_strategy(device, rank=RANK, sigma=SIGMA, seed=SEED, lr=0.1, optimizer=optimizer)
    s.setup(model)
    before = model[0].weight.detach().clone()
    with s.perturb(N, epoch=EPOCH):
        pass
    fitness = torch.tensor([1.0, -0.5, 2.0, 0.25], device=device)
    metrics = s.step(fitness)
    after = model[0].weight.detach()
    assert torch.equal(after[PAD], before[PAD])
    others = [k for k in range(NUM_EMB) if k != PAD]
    assert (after[others] - before[others]).abs().min() > 0
    if optimizer is None:  # p += lr * g, g = 1/(N sigma) sum_i z_i E_i with z the z-scored fitness
        z = (fitness - fitness.mean()) / torch.sqrt(fitness.var(unbiased=False) + 1e-8)
        g = sum(z[i] * _table_delta(i, device) for i in range(N)) / (N * SIGMA**2)
        torch.testing.assert_close(after - before, 0.1 * g, rtol=1e-4, atol=1e-6)
        # the reported gradient norm counts the zero padding row as zero
        grads = s.estimate_gradient(z, N, EPOCH)
        assert torch.equal(grads[0][PAD], torch.zeros(DIM, device=device))
        norm = torch.sqrt(sum(gr.square().sum() for gr in grads))
        assert metrics["grad_norm"] == pytest.approx(float(norm), rel=1e-5)


class TiedLM(nn.Module):
    """A table shared by the input embedding and the output layer (F.linear with the table as its weight)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(NUM_EMB, DIM, padding_idx=PAD)
        self.mix = nn.Linear(DIM, DIM)

    def forward(self, x):
        return F.linear(torch.tanh(self.mix(self.emb(x))), self.emb.weight)  # (R, L, NUM_EMB) logits


def test_table_tied_to_an_output_layer_keeps_its_padding_row_in_both_uses(device):
    """The output column of the padding row is unperturbed as well: batched_forward equals the materialized members."""
    torch.manual_seed(0)
    model = TiedLM().to(device)
    with torch.no_grad():
        model.emb.weight[PAD] = torch.tensor([0.5, -1.0, 0.25, 2.0])
    s = make_strategy(device, rank=RANK, sigma=SIGMA, seed=SEED)
    s.setup(model)
    assert s.spec("emb.weight").fixed_rows == (PAD,)
    x = torch.tensor([[PAD, 1, PAD], [2, PAD, 5], [PAD, PAD, 6], [0, PAD, 4]], device=device)
    with s.perturb(N, epoch=EPOCH) as pop:
        batched = pop.batched_forward(model, x)
        looped = torch.cat([model(x[i : i + 1]) for i in pop.iterate()])
    refs = []
    for i in range(N):
        table = model.emb.weight.detach() + _table_delta(i, device)
        w, b = _linear_member(model.mix, 1, i, device)
        refs.append(F.linear(torch.tanh(F.linear(F.embedding(x[i : i + 1], table), w, b)), table))
    ref = torch.cat(refs)
    torch.testing.assert_close(batched, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(looped, ref, rtol=1e-5, atol=1e-5)
