"""benchmarks/noise_options.py: its Philox-10 Box-Muller option is the library's noise bit for bit, its reduced-round
Philox differs, and the rescaled options have unit variance (exactly, from their enumerated laws)."""

from __future__ import annotations

import math

import pytest
import torch
from bench_modules import load

from eggroll_rl import noise

no = load("noise_options")


def test_philox10_boxmuller_is_the_library_noise():
    assert no.check_against_library()["philox10_boxmuller_equal_normal_stream"]
    ids = torch.tensor([0, 5, 2**31 + 3])
    mine = no.factors("philox10_boxmuller", 9, 4, ids, 37, 3, noise.STREAM_B)  # the learning check's factors
    assert torch.equal(noise.factor_noise(9, 4, 0, ids, 37, 3, noise.STREAM_B), mine)


def test_seven_rounds_change_every_word():
    ids = torch.arange(8)
    w10 = no.stream_words(1, 2, 3, ids, 0, [0, 1], 16, 10)
    w7 = no.stream_words(1, 2, 3, ids, 0, [0, 1], 16, 7)
    assert float((w10 == w7).double().mean()) < 0.01


@pytest.mark.parametrize("name", ["irwin_hall_4", "irwin_hall_8", "irwin_hall_12", "binomial32", "icdf256",
                                  "icdf1024_lerp"])  # fmt: skip
def test_enumerable_options_have_zero_mean_and_unit_variance(name):
    values, p = no.exact_law(no.BY_NAME[name])
    assert math.isclose(float(p.sum()), 1.0, abs_tol=1e-12)
    stats = no.exact_statistics(values, p)
    assert abs(stats["mean"]) < 1e-12 and math.isclose(stats["var"], 1.0, abs_tol=1e-12)
    assert stats["max_abs"] <= no.BY_NAME[name].bound + 1e-9


def test_irwin_hall_variance_formula_and_bound():
    # k bytes uniform on 0..255: variance k (256^2 - 1) / 12, largest |sum - mean| = 127.5 k
    for k in (4, 8, 12):
        values, p = no.exact_law(no.BY_NAME[f"irwin_hall_{k}"])
        assert values.size == 255 * k + 1
        assert math.isclose(no.BY_NAME[f"irwin_hall_{k}"].bound, 127.5 * k / math.sqrt(k * (256**2 - 1) / 12))


def test_option_streams_have_the_requested_length():
    ids = torch.arange(3)
    for o in no.OPTIONS:
        z = no.option_stream(o, 0, 0, 0, ids, 0, [0, 1], 29)
        assert z.shape == (3, 2, 29) and z.dtype == torch.float32 and bool(torch.isfinite(z).all())
