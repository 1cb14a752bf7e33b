"""Brax on the second GPU (a ``torchrun`` rank with ``LOCAL_RANK=1`` and every GPU visible): JAX must not move
torch's current device, and a short training runs there. Needs 2 GPUs; run in a fresh process, as each rank is
(JAX picks its current device when it starts its GPU clients)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("brax")

SCRIPT = textwrap.dedent(
    """
    import torch
    torch.cuda.set_device(1)  # as init_from_environment does for LOCAL_RANK=1
    from eggroll_rl.envs import make_env
    env = make_env("brax:inverted_pendulum", num_envs=8, device="cuda", seed=3, brax_backend="positional")
    assert env.device == torch.device("cuda", 1), env.device
    assert torch.cuda.current_device() == 1, ("after make_env", torch.cuda.current_device())
    obs = env.reset()
    assert obs.device == torch.device("cuda", 1) and torch.cuda.current_device() == 1
    ref = make_env("brax:inverted_pendulum", num_envs=8, device="cuda:0", seed=3, brax_backend="positional")
    assert torch.cuda.current_device() == 1, ("after an env on cuda:0", torch.cuda.current_device())
    ref_obs = ref.reset()
    torch.testing.assert_close(obs.cpu(), ref_obs.cpu(), atol=1e-6, rtol=0)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        a = torch.rand(8, 1, generator=g) * 2 - 1
        obs, rew, *_ = env.step(a.to("cuda:1"))
        ref_obs, ref_rew, *_ = ref.step(a.to("cuda:0"))  # crossing from JAX on GPU 0 may switch the thread's device
        assert torch.cuda.current_device() == 1, ("after a step on cuda:0", torch.cuda.current_device())
    torch.testing.assert_close(obs.cpu(), ref_obs.cpu(), atol=1e-5, rtol=0)
    torch.testing.assert_close(rew.cpu(), ref_rew.cpu(), atol=1e-5, rtol=0)
    # A reset window (what a torchrun rank's env gets) is handed to JAX without moving torch's device either.
    env.set_reset_window(0, 16)
    assert torch.cuda.current_device() == 1, ("after set_reset_window", torch.cuda.current_device())
    assert env._start_rows[0].devices() == {env._jax_device}
    ref.set_reset_window(0, 16)  # the env on cuda:0 takes the same rows; cuda:1 stays current
    assert torch.cuda.current_device() == 1, ("after set_reset_window on cuda:0", torch.cuda.current_device())
    torch.testing.assert_close(env.reset(seed=5).cpu(), ref.reset(seed=5).cpu(), atol=1e-6, rtol=0)
    assert torch.cuda.current_device() == 1, ("after a windowed reset", torch.cuda.current_device())

    from eggroll_rl.agents import TrainConfig
    from eggroll_rl.agents.trainer import train
    cfg = TrainConfig.for_env("InvertedPendulum", backend="brax", device="cuda", population=64, generations=3,
                              eval_every=0, tensorboard=False, time_limit_s=0.0)
    result = train(cfg)
    assert torch.cuda.current_device() == 1
    print("OK", result.metrics[-1]["generation"] if hasattr(result, "metrics") else result)
    """
)


@pytest.mark.gpu
def test_brax_env_and_training_on_the_second_gpu(tmp_path):
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "OK" in proc.stdout
