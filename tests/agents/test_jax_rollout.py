"""The JAX training rollout (``eggroll_rl.agents.jax_rollout``) against torch's: the member forward against
``pop.batched_forward``, a short Brax episode against ``rollout``, a few generations of ``train(rollout="jax")``.

The Brax tests share one configuration (env, physics, envs, network, max_steps), so JAX compiles the torch path's
reset/step and the JAX loop once for the module (this file: about 65 s of CPU time on one core, imports included).
"""

import contextlib
import importlib
import math

import pytest
import torch

from eggroll_rl import EggrollStrategy
from eggroll_rl.agents import TrainConfig, make_policy, rollout, train
from eggroll_rl.agents.jax_rollout import (
    jax_policy_rollout,
    jax_rollout,
    jax_rows_rollout,
    policy_forward,
    policy_layers,
    population_layers,
    start_compiling_evaluation,
)
from eggroll_rl.envs.base import Box

jax = pytest.importorskip("jax")

ACTIVATIONS = ("pqn", "tanh", "relu", "silu")


def _to_jax(tree):
    if isinstance(tree, dict):
        return {k: _to_jax(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_to_jax(v) for v in tree]
    return None if tree is None else jax.numpy.asarray(tree.to(torch.float32).numpy())


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("action_mode", ["tanh", "clip"])
def test_policy_forward_matches_batched_forward(activation, action_mode):
    torch.manual_seed(0)
    obs_space = Box.from_bounds(-math.inf, math.inf, (7,))
    act_space = Box.from_bounds(torch.tensor([-1.0, -2.0, 0.0]), torch.tensor([1.0, 0.5, 3.0]), (3,))
    policy = make_policy(obs_space, act_space, hidden_sizes=(9, 5), activation=activation, action_mode=action_mode)
    policy.obs_norm.update(torch.randn(50, 7) * 3 + 1)  # a non-trivial normalization, with some clipping below
    for layer in (policy.head, policy.trunk[0]):
        layer.bias.data.normal_()  # non-zero biases: their perturbation shows
    strategy = EggrollStrategy(sigma=0.3, lr=0.01, rank=2, allow_cpu=True, seed=5)
    strategy.setup(policy)
    obs = torch.randn(12, 7) * 20
    ids = torch.tensor([3, 0, 7, 7, 2, 5, 1, 6, 4, 4, 9, 8])  # any order, members repeated, up to N-1
    with strategy.perturb(population_size=10, epoch=3) as pop:
        expected = pop.batched_forward(policy, obs, member_ids=ids)
        layers = population_layers(policy, pop, ids)
        # The factors are those of get_factors / perturbation, member by member.
        A, B = pop.get_factors(7, "head.weight")
        torch.testing.assert_close(layers["layers"][-1]["A"][2], A)
        torch.testing.assert_close(layers["layers"][-1]["B"][2], B)
        torch.testing.assert_close(layers["layers"][0]["db"][5], pop.perturbation(5, "trunk.0.bias"))
    got = policy_forward(_to_jax(layers), jax.numpy.asarray(obs.numpy()), activation, action_mode, clip=True)
    torch.testing.assert_close(torch.from_dlpack(got), expected, atol=1e-5, rtol=1e-5)


def test_population_layers_rejects_other_policies():
    policy = make_policy(Box.from_bounds(-1.0, 1.0, (3,)), Box.from_bounds(-1.0, 1.0, (2,)), hidden_sizes=(4,))
    other = make_policy(Box.from_bounds(-1.0, 1.0, (3,)), Box.from_bounds(-1.0, 1.0, (2,)), hidden_sizes=(4,))
    strategy = EggrollStrategy(sigma=0.1, lr=0.01, rank=1, allow_cpu=True)
    strategy.setup(policy)
    with strategy.perturb(population_size=4, epoch=0) as pop:
        with pytest.raises(ValueError, match="not the module the strategy was set up with"):
            population_layers(other, pop, torch.arange(4))
        with pytest.raises(ValueError, match="needs a BraxVecEnv"):
            jax_rollout(object(), policy, pop, num_members=4)
    discrete = torch.nn.Linear(3, 2)
    strategy = EggrollStrategy(sigma=0.1, lr=0.01, rank=1, allow_cpu=True)
    strategy.setup(discrete)
    with strategy.perturb(population_size=4, epoch=0) as pop, pytest.raises(ValueError, match="MLPPolicy"):
        population_layers(discrete, pop, torch.arange(4))


def test_config_validates_rollout():
    assert TrainConfig().rollout == "torch"
    TrainConfig(env="InvertedPendulum", backend="brax", rollout="jax")
    for backend in ("auto", "torch", "gym"):
        with pytest.raises(ValueError, match="JAX rollout runs Brax envs only"):
            TrainConfig(env="Pendulum", backend=backend, rollout="jax")
    with pytest.raises(ValueError, match="rollout"):
        TrainConfig(rollout="numpy")


# --- Brax on the CPU: one configuration for the module (compiled once) ----------------------------------------
NUM_MEMBERS, EPISODES, HIDDEN, RANK = 8, 2, (16, 16), 2
# Short: Brax's dynamics are chaotic, so float rounding that differs between the paths (the member forward's sums,
# in another order) grows along a trajectory; over 30 steps the two stay within ~1e-6, and inverted_pendulum's pole
# still falls in most episodes (lengths 7-26), so done masking and early exit are exercised.
MAX_STEPS = 30


def _brax_config(**changes):
    values = dict(
        env="InvertedPendulum", backend="brax", brax_backend="spring", device="cpu", population=NUM_MEMBERS,
        episodes_per_member=EPISODES, eval_episodes=NUM_MEMBERS * EPISODES, hidden_sizes=HIDDEN, rank=RANK,
        sigma=0.5, max_episode_steps=MAX_STEPS, generations=3, eval_every=0, cpu_threads=1, tensorboard=False,
        env_kwargs={"episode_length": 1000},
    )  # fmt: skip
    values.update(changes)
    return TrainConfig(**values)


@contextlib.contextmanager
def _backend_compiles(*names):
    """The XLA compilations of the jitted functions ``names`` (``"jit(run)"``: the episode loop) inside the block."""
    import jax

    seen = []

    def listen(event, duration, fun_name="", **_):
        if event == "/jax/core/compile/backend_compile_duration" and fun_name in names:
            seen.append(fun_name)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield seen
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def _brax_env_and_policy(config, num_envs, seed, bias_std=0.0):
    """The module's Brax env and a policy for it with a non-trivial normalizer (and, with ``bias_std``, biases that
    change the actions, so the episodes end at different steps), on ``config.device``."""
    from eggroll_rl.agents.builders import build_env, build_policy

    device = torch.device(config.device)
    env = build_env(config, num_envs, device, seed=0)
    torch.manual_seed(seed)
    policy = build_policy(config, env, device)
    policy.obs_norm.update(torch.randn(100, env.obs_shape[0], device=device) * 0.3)
    for layer in (policy.head, policy.trunk[0]) if bias_std else ():
        layer.bias.data.normal_(std=bias_std)
    return env, policy


@pytest.mark.slow
def test_jax_rollout_matches_torch_rollout_on_brax():
    pytest.importorskip("brax")
    from eggroll_rl.agents.builders import build_strategy

    config = _brax_config()
    env, policy = _brax_env_and_policy(config, NUM_MEMBERS * EPISODES, seed=0)
    strategy = build_strategy(config, torch.device("cpu"))
    strategy.setup(policy)
    with strategy.perturb(population_size=NUM_MEMBERS, epoch=1) as pop:
        kwargs = dict(num_members=NUM_MEMBERS, envs_per_member=EPISODES, max_steps=MAX_STEPS, seed=5, record_obs=True)
        ref = rollout(env, lambda obs, ids: pop.batched_forward(policy, obs, member_ids=ids), **kwargs)
        got = jax_rollout(env, policy, pop, **kwargs)
        again = jax_rollout(env, policy, pop, **kwargs)  # reproducible: the trainer's bit-exact resume needs it
        # Half the population from member 4 on (a torchrun rank's slice), on the same envs' first half.
        half = jax_rollout(env, policy, pop, num_members=4, envs_per_member=EPISODES, max_steps=MAX_STEPS, seed=5,
                           member_ids=torch.arange(NUM_MEMBERS * EPISODES) // 4, first_member=4)  # fmt: skip
        ref_half = rollout(
            env, lambda obs, ids: pop.batched_forward(policy, obs, member_ids=ids + 4), num_members=4,
            envs_per_member=EPISODES, max_steps=MAX_STEPS, seed=5, member_ids=torch.arange(NUM_MEMBERS * EPISODES) // 4,
        )  # fmt: skip
    assert bool((ref.lengths < MAX_STEPS).any()), "no episode ended: the test would not check done masking"
    assert torch.equal(again.returns, got.returns) and torch.equal(again.obs_sum, got.obs_sum)
    torch.testing.assert_close(got.returns, ref.returns, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(got.lengths, ref.lengths, atol=0, rtol=0)
    torch.testing.assert_close(got.episode_returns, ref.episode_returns, atol=1e-5, rtol=1e-6, equal_nan=True)
    assert torch.equal(got.episode_lengths, ref.episode_lengths) and torch.equal(got.num_episodes, ref.num_episodes)
    assert (got.num_steps, got.num_env_steps, got.obs_count) == (ref.num_steps, ref.num_env_steps, ref.obs_count)
    # The sums: float32 per step (JAX) against float64 throughout (torch), relative to the sums of magnitudes.
    scale = (ref.obs_sumsq * ref.obs_count).sqrt()
    assert float(((got.obs_sum - ref.obs_sum).abs() / scale).max()) < 1e-6
    torch.testing.assert_close(got.obs_sumsq, ref.obs_sumsq, atol=0, rtol=1e-6)
    torch.testing.assert_close(half.returns, ref_half.returns, atol=1e-5, rtol=1e-6)
    assert torch.equal(half.lengths, ref_half.lengths) and half.obs_count == 0 and half.obs_sum is None


@pytest.mark.slow
def test_jax_rows_rollout_with_dense_members_matches_their_materialized_weights():
    """Rows given explicitly (the full-rank OpenES peer's case): each env's policy is ``W + dW_i``, ``b + db_i``
    (dense, per row), played in the JAX loop, against the torch loop with every row's weights materialized."""
    pytest.importorskip("brax")
    from torch.func import functional_call

    env, policy = _brax_env_and_policy(_brax_config(), NUM_MEMBERS * EPISODES, seed=2)
    member_of_row = torch.arange(NUM_MEMBERS).repeat_interleave(EPISODES)
    gen = torch.Generator().manual_seed(3)
    linears = [m for m in policy.trunk if isinstance(m, torch.nn.Linear)] + [policy.head]
    layers = policy_layers(policy)
    weights = {}
    for name, module in policy.named_modules():
        if module in linears:
            entry = layers["layers"][linears.index(module)]
            d_w = 0.3 * torch.randn(NUM_MEMBERS, *module.weight.shape, generator=gen)
            d_b = 0.3 * torch.randn(NUM_MEMBERS, *module.bias.shape, generator=gen)
            entry["dW"], entry["db"] = d_w[member_of_row], d_b[member_of_row]
            weights[f"{name}.weight"] = module.weight.detach() + entry["dW"]
            weights[f"{name}.bias"] = module.bias.detach() + entry["db"]
    assert len(weights) == len(dict(policy.named_parameters()))  # every parameter is some Linear's
    per_row = torch.vmap(lambda p, o: functional_call(policy, p, (o,)))

    def forward(obs, ids):  # the env rows in order: row i's policy is member_of_row[i]'s
        return per_row(weights, obs[:, None])[:, 0]

    kwargs = dict(num_members=NUM_MEMBERS, envs_per_member=EPISODES, max_steps=MAX_STEPS, seed=6, record_obs=True)
    with torch.no_grad():
        ref = rollout(env, forward, **kwargs)
    got = jax_rows_rollout(env, policy, layers, **kwargs)
    assert bool((ref.lengths < MAX_STEPS).any()), "no episode ended: the test would not check done masking"
    assert len(set(ref.returns.tolist())) > NUM_MEMBERS // 2  # the perturbations matter (returns: episode lengths)
    torch.testing.assert_close(got.returns, ref.returns, atol=1e-5, rtol=1e-6)
    assert torch.equal(got.lengths, ref.lengths) and got.num_env_steps == ref.num_env_steps
    torch.testing.assert_close(got.obs_sumsq, ref.obs_sumsq, atol=0, rtol=1e-6)


@pytest.mark.slow
def test_jax_policy_rollout_matches_torch_evaluation_on_brax():
    """The trainer's evaluation with ``rollout="jax"``: the unperturbed policy's episodes, one per env, against the
    torch loop's (``evaluate``'s default) on the same envs, seed and normalizer."""
    pytest.importorskip("brax")
    from eggroll_rl.agents.trainer import evaluate

    env, policy = _brax_env_and_policy(_brax_config(), NUM_MEMBERS * EPISODES, seed=1, bias_std=0.3)
    ref = rollout(env, lambda obs, ids: policy(obs), num_members=1, envs_per_member=env.num_envs, max_steps=MAX_STEPS,
                  seed=9)  # fmt: skip
    ahead = start_compiling_evaluation(env, policy, max_steps=MAX_STEPS)
    ahead.join()
    assert ahead.error is None
    with _backend_compiles("jit(run)", "jit(reset)") as compiled:
        got = jax_policy_rollout(env, policy, max_steps=MAX_STEPS, seed=9)
    assert bool((ref.episode_lengths < MAX_STEPS).any()) and len(set(ref.episode_lengths.tolist()[0])) > 1
    torch.testing.assert_close(got.episode_returns, ref.episode_returns, atol=1e-5, rtol=1e-6)
    assert not compiled  # compiled ahead (below the reference), in a thread: the evaluation compiled nothing more
    assert torch.equal(got.episode_lengths, ref.episode_lengths) and got.num_steps == ref.num_steps
    assert (got.episode_returns.shape, got.num_env_steps) == ((1, env.num_envs), ref.num_env_steps)
    policy.train()
    expected = evaluate(policy, env, seed=9, max_steps=MAX_STEPS)
    stats = evaluate(policy, env, seed=9, max_steps=MAX_STEPS, rollout="jax")
    assert policy.training  # evaluate restores the mode it found
    assert stats["episodes"] == expected["episodes"] == env.num_envs
    assert stats["length_mean"] == expected["length_mean"]
    for key in ("return_mean", "return_std", "return_min", "return_max"):
        assert stats[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-5), key
    with pytest.raises(ValueError, match="rollout must be 'torch' or 'jax', got 'numpy'"):
        evaluate(policy, env, rollout="numpy")


@pytest.mark.slow
def test_train_with_jax_rollout_runs(monkeypatch):
    pytest.importorskip("brax")
    trainer = importlib.import_module("eggroll_rl.agents.trainer")
    result = train(_brax_config(rollout="jax", eval_every=2))
    assert len(result.metrics) == 3
    for record in result.metrics:
        assert all(math.isfinite(record[k]) for k in ("train_return_mean", "grad_norm", "update_norm"))
        assert 0 < record["env_steps"]
    assert math.isfinite(result.final_eval_return)
    assert float(result.policy.obs_norm.count) == result.metrics[-1]["env_steps"]
    # The evaluation's loop compiled ahead in a thread (the trainer's way on a GPU): the same run, the same metrics.
    started = []
    monkeypatch.setattr(trainer, "_compile_evaluation_ahead", lambda config, device: True)
    monkeypatch.setattr(trainer, "start_compiling_evaluation", lambda *a: started.append(start_compiling_evaluation(*a))
                        or started[-1])  # fmt: skip
    again = train(_brax_config(rollout="jax", eval_every=2))
    assert len(started) == 1 and started[0].error is None
    timing = ("wall_time_s", "steps_per_s", "eval_time_s")

    def untimed(metrics):
        return [{k: v for k, v in r.items() if k not in timing} for r in metrics]

    assert untimed(again.metrics) == untimed(result.metrics)
    # A compile ahead that fails is said, and the evaluation compiles as before: the same run again.
    from eggroll_rl.envs.brax_adapter import BraxVecEnv

    monkeypatch.setattr(BraxVecEnv, "compile_reset", lambda self: 1 / 0)
    with pytest.warns(RuntimeWarning, match=r"compiling the evaluation ahead failed \(ZeroDivisionError"):
        failed = train(_brax_config(rollout="jax", eval_every=2))
    assert started[-1].error is not None and untimed(failed.metrics) == untimed(result.metrics)


@pytest.mark.parametrize(
    "message", ["RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8.00GiB.", "INTERNAL: x"]
)
def test_jax_rollout_out_of_memory_is_a_clear_error(monkeypatch, message):
    pytest.importorskip("brax")
    from jax.errors import JaxRuntimeError

    from eggroll_rl.agents.builders import build_env, build_policy, build_strategy

    def episode_fn(*args, **kwargs):
        def run(*a):
            raise JaxRuntimeError(message)

        return run

    # the module (the package's ``jax_rollout`` attribute is the function of that name)
    monkeypatch.setattr(importlib.import_module("eggroll_rl.agents.jax_rollout"), "_episode_fn", episode_fn)
    config = _brax_config()
    env = build_env(config, NUM_MEMBERS * EPISODES, torch.device("cpu"), seed=0)
    policy = build_policy(config, env, torch.device("cpu"))
    strategy = build_strategy(config, torch.device("cpu"))
    strategy.setup(policy)
    with strategy.perturb(population_size=NUM_MEMBERS, epoch=1) as pop:
        if message.startswith("RESOURCE_EXHAUSTED"):
            expected = (
                rf"ran out of device memory with {NUM_MEMBERS * EPISODES} envs \({NUM_MEMBERS} members on this "
                rf"process, {EPISODES} episode\(s\) each\) on cpu: lower the population .*--rollout torch.*"
                r"XLA said: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8.00GiB."
            )
            with pytest.raises(RuntimeError, match=expected) as info:
                jax_rollout(env, policy, pop, num_members=NUM_MEMBERS, envs_per_member=EPISODES, max_steps=MAX_STEPS)
            assert isinstance(info.value.__cause__, JaxRuntimeError)
        else:  # any other XLA error passes through as it is
            with pytest.raises(JaxRuntimeError, match="INTERNAL: x"):
                jax_rollout(env, policy, pop, num_members=NUM_MEMBERS, envs_per_member=EPISODES, max_steps=MAX_STEPS)
    if message.startswith("RESOURCE_EXHAUSTED"):  # the evaluation's names what it can lower
        expected = rf"with {NUM_MEMBERS * EPISODES} envs \(an evaluation\) on cpu: lower eval_episodes, or use rollout"
        with pytest.raises(RuntimeError, match=expected):
            jax_policy_rollout(env, policy, max_steps=MAX_STEPS)


@pytest.mark.gpu
@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_policy_forward_matches_the_triton_forward_on_cuda(noise):
    """On a GPU the torch rollout perturbs through the Triton kernels (noise made in registers) and the update
    regenerates the same noise; the JAX rollout takes the factors from ``population_layers`` (``pop.noise_of``).
    They must be the same numbers for both noise kinds, or the update would not match the episodes played."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from eggroll_rl.envs.brax_adapter import import_brax

    import_brax()  # JAX's GPU client set up as the adapter does (memory preallocation off)
    device = torch.device("cuda")
    torch.manual_seed(0)
    obs_space = Box.from_bounds(-math.inf, math.inf, (17,))  # Walker2d's shapes, the population of its recipe
    act_space = Box.from_bounds(-1.0, 1.0, (6,))
    policy = make_policy(obs_space, act_space, hidden_sizes=(64, 64), activation="pqn").to(device)
    policy.obs_norm.update(torch.randn(500, 17, device=device) * 2 + 0.5)
    strategy = EggrollStrategy(sigma=0.05, lr=0.01, rank=4, seed=3, noise=noise)
    strategy.setup(policy)
    obs = torch.randn(2048, 17, device=device) * 3
    ids = torch.arange(2048, device=device)
    with strategy.perturb(population_size=2048, epoch=11) as pop:
        expected = pop.batched_forward(policy, obs, member_ids=ids)
        layers = population_layers(policy, pop, ids)
        for member in (0, 1, 777, 2047):  # the factors, member by member (antithetic pairs share |noise|)
            A, B = pop.get_factors(member, "head.weight")
            torch.testing.assert_close(layers["layers"][-1]["A"][member], A, atol=0, rtol=0)
            torch.testing.assert_close(layers["layers"][-1]["B"][member], B, atol=0, rtol=0)
            torch.testing.assert_close(layers["layers"][0]["db"][member], pop.perturbation(member, "trunk.0.bias"))
    got = policy_forward(
        jax.tree_util.tree_map(jax.dlpack.from_dlpack, layers, is_leaf=lambda x: isinstance(x, torch.Tensor)),
        jax.dlpack.from_dlpack(obs), "pqn", "tanh", clip=True,
    )  # fmt: skip
    torch.testing.assert_close(torch.from_dlpack(got), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.gpu
def test_jax_evaluation_on_cuda_matches_the_torch_evaluation_and_trains():
    """The evaluation in the JAX loop on a GPU: against the torch loop's on the same envs (short episodes, so the
    float paths stay close), then Walker2d's GPU recipe (JAX rollout and evaluation) for two generations."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("brax")
    from eggroll_rl.agents.trainer import evaluate

    env, policy = _brax_env_and_policy(_brax_config(device="cuda"), 64, seed=1, bias_std=0.3)
    expected = evaluate(policy, env, seed=9, max_steps=MAX_STEPS)
    stats = evaluate(policy, env, seed=9, max_steps=MAX_STEPS, rollout="jax")
    assert stats["episodes"] == expected["episodes"] == 64
    assert stats["length_mean"] == expected["length_mean"] < MAX_STEPS
    assert stats["return_mean"] == pytest.approx(expected["return_mean"], rel=1e-4, abs=1e-3)
    env.close()
    result = train(TrainConfig.for_env("Walker2d", population=256, generations=2, eval_every=1, eval_episodes=32,
                                       tensorboard=False, out_dir=""))  # fmt: skip
    assert result.config.rollout == "jax" and result.config.device in ("auto", "cuda")
    evals = [r["eval_return"] for r in result.metrics]
    assert len(evals) == 2 and all(math.isfinite(v) and v > 0 for v in evals)
