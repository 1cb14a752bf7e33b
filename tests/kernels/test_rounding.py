"""Stochastic rounding into bf16 (``kernels/rounding.py``): the pure-torch twin against the contract written with
Python integers, and its statistics. The Triton helper is checked against this twin bit for bit in
``test_update_interp.py`` (interpreter) and ``test_update_gpu.py`` (GPU)."""

from __future__ import annotations

import math
import struct

import pytest
import torch

from eggroll_rl.kernels import rounding


def _bits(x: float) -> int:
    return struct.unpack("<I", struct.pack("<f", x))[0]


def _float(bits: int) -> float:
    return struct.unpack("<f", struct.pack("<I", bits & 0xFFFFFFFF))[0]


def _contract(x: float, index: int, keys: tuple[int, int]) -> float:
    """The module docstring's contract, element by element, in Python integers."""
    k0, k1 = keys
    r = rounding.mix32((rounding.mix32(index ^ k0) + k1) & 0xFFFFFFFF) >> 16
    return _float(((_bits(x) + r) >> 16) << 16)


def test_mix32_is_the_lowbias32_hash():
    # Two values worked by hand from the definition (xor-shift 16, * 0x7feb352d, xor-shift 15, * 0x846ca68b,
    # xor-shift 16, all mod 2^32), and the torch version on a spread of inputs.
    x = 1
    x ^= x >> 16
    x = (x * 0x7FEB352D) % 2**32
    x ^= x >> 15
    x = (x * 0x846CA68B) % 2**32
    x ^= x >> 16
    assert rounding.mix32(1) == x and rounding.mix32(0) == 0
    values = torch.tensor([0, 1, 2, 12345, 2**31 - 1, 2**31, 2**32 - 1], dtype=torch.int64)
    assert rounding._mix32_torch(values).tolist() == [rounding.mix32(int(v)) for v in values]


def test_twin_follows_the_contract():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 9, generator=g) * torch.logspace(-20, 20, 9)
    keys = rounding.round_keys(3, 17, 2)
    out = rounding.stochastic_round_reference(x, keys)
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    expected = [_contract(v, i, keys) for i, v in enumerate(x.flatten().tolist())]
    assert out.float().flatten().tolist() == expected


def test_rounds_to_a_neighbour_and_keeps_exact_values():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1000, generator=g)
    out = rounding.stochastic_round_reference(x, rounding.round_keys(0, 0, 0)).float()
    down = x.to(torch.bfloat16).float()  # nearest; the other neighbour is one bf16 step away
    ulp = torch.finfo(torch.bfloat16).eps * 2.0 ** torch.floor(torch.log2(x.abs()))
    assert ((out - x).abs() < ulp).all()
    assert ((out == down) | ((out - down).abs() <= ulp)).all()
    exact = x.to(torch.bfloat16).float()
    assert torch.equal(rounding.stochastic_round_reference(exact, (5, 6)).float(), exact)
    special = torch.tensor([math.inf, -math.inf, 0.0, -0.0, math.nan])
    got = rounding.stochastic_round_reference(special, (7, 8)).float()
    assert got[:2].tolist() == [math.inf, -math.inf] and got[4].isnan()
    assert got[2].item() == 0.0 and math.copysign(1, got[3].item()) == -1


@pytest.mark.parametrize("fraction", [1 / 8, 1 / 2, 0.9])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_rounds_up_with_the_probability_of_the_dropped_fraction(fraction, sign):
    """Between the bf16 neighbours 1 and 1 + 2^-7 at ``fraction`` of the way, over 20000 elements and 5 keys: the
    share rounded up is ``fraction`` within 4 standard deviations of a binomial, and the mean is unbiased."""
    n = 20000
    x = torch.full((n,), sign * (1.0 + fraction * 2.0**-7))
    shares = []
    for step in range(5):
        out = rounding.stochastic_round_reference(x, rounding.round_keys(9, step, 1)).float()
        assert set(out.abs().unique().tolist()) <= {1.0, 1.0 + 2.0**-7}
        shares.append((out.abs() > 1.0).float().mean().item())
    sd = math.sqrt(fraction * (1 - fraction) / n)
    assert all(abs(s - fraction) < 4 * sd for s in shares), shares
    assert abs(sum(shares) / 5 - fraction) < 4 * sd / math.sqrt(5)


def test_keys_differ_by_step_and_parameter():
    keys = {rounding.round_keys(0, t, i) for t in range(50) for i in range(4)}
    assert len(keys) == 200
    x = torch.full((4096,), 1.0 + 0.5 * 2.0**-7)
    a = rounding.stochastic_round_reference(x, rounding.round_keys(0, 0, 0))
    b = rounding.stochastic_round_reference(x, rounding.round_keys(0, 1, 0))
    # Independent bits: the two roundings agree on about half of the elements.
    assert 0.45 < (a == b).float().mean().item() < 0.55


def test_refuses_other_dtypes():
    with pytest.raises(ValueError, match="float32"):
        rounding.stochastic_round_reference(torch.zeros(3, dtype=torch.float64), (0, 0))
