"""Brax + torch on one GPU: the rollout's CUDA-graph capture must not race JAX's dispatch threads (GPU only).

Before the fix, ``eggroll-rl train Ant`` (positional physics, terminations) saw a capture fail with
``cudaErrorStreamCaptureInvalidated`` after some 20 generations and then died in JAX ("Callback registry is
closed"): torch captured in global mode while JAX's threads still ran the step. ``benchmarks/repro_capture_race.py``
reproduces both modes.
"""

import math
import warnings

import pytest
import torch

pytest.importorskip("brax")
jax = pytest.importorskip("jax")

from eggroll_rl import EggrollStrategy  # noqa: E402
from eggroll_rl.agents import TrainConfig, train  # noqa: E402
from eggroll_rl.agents.builders import build_policy  # noqa: E402
from eggroll_rl.agents.rollout import population_act, rollout  # noqa: E402
from eggroll_rl.envs import make_env  # noqa: E402
from eggroll_rl.envs.brax_adapter import import_brax  # noqa: E402


def _need_gpus():
    if not torch.cuda.is_available() or not any(d.platform == "gpu" for d in import_brax()[0].devices()):
        pytest.skip("needs CUDA torch and CUDA jax")


@pytest.mark.gpu
def test_ant_positional_captures_every_rollout_and_jax_keeps_running():
    _need_gpus()
    n = 128
    config = TrainConfig.for_env("Ant", population=n, brax_backend="positional")
    env = make_env("Ant", backend="brax", num_envs=n, device="cuda", brax_backend="positional")
    policy = build_policy(config, env, torch.device("cuda"))
    strategy = EggrollStrategy(sigma=0.1, lr=0.05, rank=4, seed=0)
    strategy.setup(policy)
    ended = 0
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*capturing the step as a CUDA graph failed.*")
        for gen in range(30):
            with strategy.perturb(population_size=n, epoch=gen) as pop:
                res = rollout(env, population_act(pop, policy), num_members=n, max_steps=150, seed=gen)
            strategy.step(res.returns)
            ended += int((res.lengths < 150).sum())
    assert ended > 0, "the case needs terminations (Ant on positional physics falls over)"
    # Both runtimes still work: a JAX step, a torch random draw, a graphed rollout.
    obs, reward, *_ = env.step(torch.zeros(n, *env.single_action_space.shape, device="cuda"))
    assert torch.isfinite(obs).all() and torch.isfinite(reward).all()
    assert torch.randn(4, device="cuda").isfinite().all()
    env.close()


@pytest.mark.gpu
def test_ant_generic_defaults_train_on():
    _need_gpus()
    result = train(TrainConfig.for_env("Ant", brax_backend="positional", generations=6, eval_every=3))
    evals = [r["eval_return"] for r in result.metrics if r.get("eval_return") is not None]
    assert len(evals) == 2 and all(math.isfinite(v) for v in evals)
