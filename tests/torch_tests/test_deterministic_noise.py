"""Reproducibility: the noise is a pure function of (seed, parameter, effective epoch, noise index, element)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from es_helpers import make_strategy

from eggroll_rl.noise import (
    STREAM_A,
    STREAM_VECTOR,
    factor_noise,
    normal_stream,
    philox4x32,
    rademacher_stream,
    stream_words,
)

# Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter, key, expected", KAT)
def test_philox_known_answers(counter, key, expected):
    out = philox4x32(*[torch.tensor([c]) for c in counter], *key)
    assert tuple(int(o) for o in out) == expected


def test_normals_follow_the_spec_from_the_raw_words():
    words = stream_words(7, 3, 2, torch.tensor([5]), 1, 2, 4)[0]  # (4 blocks, 4 words)
    z = normal_stream(7, 3, 2, torch.tensor([5]), 1, 2, 16)[0]
    expected = []
    for block in words.tolist():
        u = [((w >> 9) * 2 + 1) * 2.0**-24 for w in block]
        for a, b in ((0, 1), (2, 3)):
            rad = math.sqrt(-2.0 * math.log(u[a]))
            theta = math.pi * (2.0 * u[b] - 1.0)
            expected += [rad * math.cos(theta), rad * math.sin(theta)]
    torch.testing.assert_close(z, torch.tensor(expected), rtol=0, atol=1e-5)


def test_rademacher_bits_follow_the_spec():
    """Spans of 512 elements, quads of 4: factor entry ``[a, c]`` is bit ``4 (i % 8) + l`` of word ``x_{c % 4}`` of
    call ``(i // 8) * 128 + q`` of column group ``c // 4``; vector element ``e`` is bit ``4 (i % 8) + l`` of word
    ``x_{(i % 32) // 8}`` of call ``(i // 32) * 128 + q`` (span ``i``, quad ``q``, lane ``l``)."""
    ids = torch.tensor([2])
    rows, numel = 5000, 40000
    a_noise = factor_noise(1, 0, 3, ids, rows, 6, STREAM_A, "rademacher")[0]
    groups = [stream_words(1, 0, 3, ids, STREAM_A, g, 256)[0] for g in (0, 1)]  # (calls, 4) each
    for a in [0, 1, 2, 3, 4, 511, 512, 513, 4095, 4096, 4999, *range(1000, 5000, 97)]:
        i, q, lane = a // 512, (a % 512) // 4, a % 4
        for c in range(6):
            word = int(groups[c // 4][(i // 8) * 128 + q, c % 4])
            assert a_noise[a, c].item() == (1.0 if (word >> (4 * (i % 8) + lane)) & 1 else -1.0), (a, c)
    v = rademacher_stream(1, 0, 3, ids, STREAM_VECTOR, 0, numel)[0]
    words = stream_words(1, 0, 3, ids, STREAM_VECTOR, 0, 384)[0]
    for e in [0, 3, 4, 511, 512, 4096, 16383, 16384, 39999, *range(7, 40000, 1013)]:
        i, q, lane = e // 512, (e % 512) // 4, e % 4
        word = int(words[(i // 32) * 128 + q, (i % 32) // 8])
        assert v[e].item() == (1.0 if (word >> (4 * (i % 8) + lane)) & 1 else -1.0), e
    # a column of the stream API is the factor's column
    assert torch.equal(rademacher_stream(1, 0, 3, ids, STREAM_A, 5, rows)[0], a_noise[:, 5])


def _factors(device, seed=42, epoch=0, noise_reuse=0):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3)).to(device)
    s = make_strategy(device, seed=seed, noise_reuse=noise_reuse)
    s.setup(model)
    with s.perturb(8, epoch=epoch) as pop:
        return [pop.perturbation(i, name) for i in range(8) for name in ("0.weight", "0.bias", "1.weight")]


def test_same_seed_same_noise_other_seed_or_epoch_other_noise(device):
    a, b = _factors(device), _factors(device)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    for other in (_factors(device, seed=43), _factors(device, epoch=1)):
        assert all(not torch.allclose(x, y) for x, y in zip(a, other))


def test_parameters_get_independent_noise(device):
    model = nn.Sequential(nn.Linear(5, 5), nn.Linear(5, 5)).to(device)
    s = make_strategy(device)
    s.setup(model)
    with s.perturb(2) as pop:
        assert not torch.allclose(pop.perturbation(0, "0.weight"), pop.perturbation(0, "1.weight"))


def test_noise_reuse_blocks(device):
    blocks = [_factors(device, epoch=e, noise_reuse=3) for e in range(7)]
    same = [all(torch.equal(x, y) for x, y in zip(blocks[0], b)) for b in blocks]
    assert same == [True, True, True, False, False, False, False]
    assert all(torch.equal(x, y) for x, y in zip(blocks[3], blocks[5]))
    assert all(not torch.allclose(x, y) for x, y in zip(blocks[5], blocks[6]))


def test_noise_does_not_depend_on_the_population_size(device):
    model = nn.Linear(4, 4).to(device)
    s = make_strategy(device)
    s.setup(model)
    with s.perturb(4) as small:
        d_small = small.perturbation(3, "weight")
    with s.perturb(64) as large:
        d_large = large.perturbation(3, "weight")
    assert torch.equal(d_small, d_large)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_gpu_generate_the_same_noise():
    ids = torch.arange(64)
    cpu = normal_stream(3, 1, 4, ids, 0, 2, 1000)
    gpu = normal_stream(3, 1, 4, ids.cuda(), 0, 2, 1000).cpu()
    words_cpu = stream_words(3, 1, 4, ids, 0, 2, 10)
    words_gpu = stream_words(3, 1, 4, ids.cuda(), 0, 2, 10).cpu()
    assert torch.equal(words_cpu, words_gpu)
    torch.testing.assert_close(cpu, gpu, rtol=0, atol=1e-5)
