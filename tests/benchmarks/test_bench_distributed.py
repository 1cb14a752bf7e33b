"""benchmarks/bench_distributed.py: every case it launches is a valid config on the device it names (a case that
fails validation kills its torchrun launch on the GPU machine, as the JAX-rollout cases did once without
``backend="brax"``)."""

from __future__ import annotations

import pytest
from bench_modules import load

from eggroll_rl.agents import TrainConfig

bd = load("bench_distributed")


@pytest.mark.parametrize(
    ("case", "device"),
    [(c, "cuda") for c in bd.GPU_CASES] + [(c, "cpu") for c in bd.QUICK_CASES],
    ids=lambda v: v[0] if isinstance(v, tuple) else v,
)
def test_every_case_is_a_valid_config(case, device):
    name, env, overrides = case
    config = TrainConfig.for_env(env, **{**overrides, "device": device, "out_dir": ""})
    config.validate()
    resolved = config.to_dict()  # hidden_sizes as a list, as the cases write it
    for key, value in overrides.items():
        assert resolved[key] == value, (name, key)


def test_a_jax_rollout_case_without_the_brax_backend_is_refused():
    with pytest.raises(ValueError, match="rollout='jax'.*backend"):
        TrainConfig.for_env("HalfCheetah", rollout="jax", backend="auto", out_dir="").validate()
