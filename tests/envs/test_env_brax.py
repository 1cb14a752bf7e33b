"""Brax adapter on the CPU (and the GPU where there is one): same numbers as raw jit(vmap(step)), zero-copy
DLPack, time limit and same-step autoreset."""

import pytest
import torch

pytest.importorskip("brax")
jax = pytest.importorskip("jax")

from eggroll_rl.envs import make_env  # noqa: E402
from eggroll_rl.envs.brax_adapter import import_brax  # noqa: E402


def _run(device: str, monkeypatch):
    from eggroll_rl.envs import brax_adapter

    monkeypatch.setattr(brax_adapter, "_FN_CACHE", {})  # fresh jitted functions: their compilations are counted below
    num, seed, length = 4, 7, 6
    env = make_env(
        "brax:inverted_pendulum",
        num_envs=num,
        device=device,
        seed=seed,
        brax_backend="positional",
        episode_length=length,
        check_every=1,  # read the NaN flags every step: the error names the rows
    )
    assert env.backend == "brax" and env.obs_shape == (4,) and env.single_action_space.shape == (1,)
    obs = env.reset()
    assert obs.dtype == torch.float32 and obs.shape == (num, 4) and obs.device.type == device
    # Zero copy: the tensor is a view of the JAX buffer.
    assert obs.data_ptr() == env.last_jax_obs.unsafe_buffer_pointer()

    # Reference: the raw Brax env, jit(vmap(reset/step)), from the same keys.
    raw = env._env
    key = jax.random.PRNGKey(seed)
    _, sub = jax.random.split(key)
    keys = jax.random.split(sub, num)
    ref_state = jax.jit(jax.vmap(raw.reset))(keys)
    ref_first = ref_state
    ref_step = jax.jit(jax.vmap(raw.step))
    torch.testing.assert_close(obs.cpu(), torch.from_dlpack(ref_state.obs).cpu(), atol=1e-6, rtol=0)

    g = torch.Generator().manual_seed(0)
    steps = torch.zeros(num, dtype=torch.long)
    terminated_seen = 0
    for _ in range(14):
        acts = (torch.rand(num, 1, generator=g) * 2 - 1).to(device)
        obs, rew, term, trunc, info = env.step(acts)
        assert acts.data_ptr() == env.last_jax_actions.unsafe_buffer_pointer()
        assert obs.data_ptr() == env.last_jax_obs.unsafe_buffer_pointer()
        assert rew.device.type == device and term.dtype == torch.bool and trunc.dtype == torch.bool
        ref_next = ref_step(ref_state, jax.numpy.asarray(acts.cpu().numpy()))
        ref_obs = torch.from_dlpack(ref_next.obs).cpu()
        torch.testing.assert_close(info["final_obs"].cpu(), ref_obs, atol=1e-5, rtol=0)
        torch.testing.assert_close(rew.cpu(), torch.from_dlpack(ref_next.reward).cpu(), atol=1e-5, rtol=0)
        ref_term = torch.from_dlpack(ref_next.done).cpu() > 0.5
        assert torch.equal(term.cpu(), ref_term)
        steps += 1
        assert torch.equal(trunc.cpu(), steps >= length)
        done = (term | trunc).cpu()
        steps[done] = 0
        terminated_seen += int(term.sum())
        # Same-step autoreset to the initial state drawn at reset().
        first_obs = torch.from_dlpack(ref_first.obs).cpu()
        torch.testing.assert_close(obs.cpu()[done], first_obs[done], atol=0, rtol=0)
        torch.testing.assert_close(obs.cpu()[~done], ref_obs[~done], atol=1e-5, rtol=0)
        mask = jax.numpy.asarray(done.numpy())

        def restart(a, b, mask=mask):
            return jax.numpy.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)

        ref_state = ref_next.replace(
            pipeline_state=jax.tree_util.tree_map(restart, ref_first.pipeline_state, ref_next.pipeline_state),
            obs=restart(ref_first.obs, ref_next.obs),
        )
    with pytest.raises(ValueError, match=r"expected \(4, 1\)"):
        env.step(torch.zeros(4, 2, device=device))
    with pytest.raises(ValueError, match=r"NaN/inf in rows \[2\]"):
        env.step(torch.tensor([[0.0], [0.0], [float("nan")], [0.0]], device=device))
    # Deferred checks (the same env, so no second compilation: check_every is read on the host at each step):
    # nothing raised on the step, the flush (as rollout does before returning) raises.
    env.check_every = 4
    env.reset()
    env.step(torch.full((num, 1), float("nan"), device=device))
    with pytest.raises(ValueError, match="NaN/inf"):
        env.flush_checks()
    # One compilation of the step for all of it: reset's state and the step's have the same jit signature (dtypes,
    # weak types, committed arrays); before typed_like the second step compiled it again.
    assert env._step_fn._cache_size() == 1
    env.close()


@pytest.mark.slow
def test_brax_cpu_matches_raw_jax(monkeypatch):
    _run("cpu", monkeypatch)


@pytest.mark.gpu
def test_brax_gpu_zero_copy_matches_raw_jax(monkeypatch):
    if not torch.cuda.is_available() or not any(d.platform == "gpu" for d in import_brax()[0].devices()):
        pytest.skip("needs CUDA for torch and JAX")
    _run("cuda", monkeypatch)


def test_unknown_brax_backend():
    with pytest.raises(ValueError, match=r"brax_backend='warp' is invalid: expected one of \['generalized'"):
        make_env("brax:halfcheetah", num_envs=1, device="cpu", brax_backend="warp")


def _bridge(device: str):
    from eggroll_rl.envs.brax_adapter import _DLPackBridge

    jax_device = jax.devices("gpu")[0] if device == "cuda" else jax.devices("cpu")[0]
    return _DLPackBridge(jax, jax_device, torch.device(device)), jax_device


def test_dlpack_bridge_cpu_shares_memory_both_ways():
    bridge, jax_device = _bridge("cpu")
    # The fast path must be active with the jaxlib CI installs, or every Brax step pays the public wrappers' cost.
    assert bridge.fast
    t = torch.arange(12, dtype=torch.float32).view(3, 4)
    a = bridge.to_jax(t)
    assert a.shape == (3, 4) and a.dtype == jax.numpy.float32 and a.unsafe_buffer_pointer() == t.data_ptr()
    assert float(jax.numpy.sum(a)) == 66.0
    b = jax.device_put(jax.numpy.arange(5, dtype=jax.numpy.int32) * 2, jax_device)
    tb = bridge.to_torch(b)
    assert tb.dtype == torch.int32 and tb.data_ptr() == b.unsafe_buffer_pointer()
    assert tb.tolist() == [0, 2, 4, 6, 8]
    # The public functions (the fallback) give the same arrays.
    bridge.fast = False
    assert bridge.to_jax(t).unsafe_buffer_pointer() == t.data_ptr()
    assert bridge.to_torch(b).tolist() == [0, 2, 4, 6, 8]


@pytest.mark.gpu
def test_dlpack_bridge_gpu_waits_for_the_producer():
    """Each side reads the other's data only after the producing kernels finish (no host sync in between)."""
    if not torch.cuda.is_available() or not any(d.platform == "gpu" for d in import_brax()[0].devices()):
        pytest.skip("needs CUDA for torch and JAX")
    bridge, jax_device = _bridge("cuda")
    assert bridge.fast
    n = 1 << 20
    # torch -> JAX: the write to t is queued behind ~0.2 s of matmuls; JAX must see the written values.
    t = torch.zeros(n, device="cuda")
    a = torch.randn(8192, 8192, device="cuda")
    torch.cuda.synchronize()
    for _ in range(8):
        a = (a @ a) * 1e-3
    t.copy_(torch.full_like(t, 3.0) + 0.0 * a[0, 0])
    total = jax.jit(jax.numpy.sum)(bridge.to_jax(t))
    assert float(total) == 3.0 * n
    # JAX -> torch: the array is the output of a slow JAX computation; torch must read it after it is computed.
    slow = jax.jit(
        lambda m: jax.numpy.full((n,), 5.0) + 0.0 * jax.lax.fori_loop(0, 8, lambda i, x: (x @ x) * 1e-3, m)[0, 0]
    )
    with jax.default_device(jax_device):
        m = jax.random.normal(jax.random.PRNGKey(0), (8192, 8192))
        jax.block_until_ready(m)
        y = slow(m)
    assert torch.sum(bridge.to_torch(y)).item() == 5.0 * n


def test_brax_fluid_clip_takes_a_min():
    # Brax 0.14's fluid model (Swimmer's viscosity) calls jnp.clip(a_min=...), which JAX no longer takes.
    from eggroll_rl.envs.brax_adapter import import_brax

    import_brax()
    from brax import fluid

    x = jax.numpy.array([-1.0, 0.5, 3.0])
    assert fluid.jp.clip(x, a_min=0.0).tolist() == [0.0, 0.5, 3.0]
    assert fluid.jp.clip(x, a_min=0.0, a_max=1.0).tolist() == [0.0, 0.5, 1.0]
    assert fluid.jp.clip(x, 0.0, 1.0).tolist() == jax.numpy.clip(x, 0.0, 1.0).tolist()
    assert fluid.jp.sum is jax.numpy.sum


@pytest.mark.slow
def test_swimmer_steps_with_its_viscosity():
    env = make_env("Swimmer", backend="brax", num_envs=2, device="cpu", brax_backend="generalized", episode_length=5)
    env.reset(seed=0)
    for _ in range(3):
        obs, reward, terminated, truncated, _ = env.step(torch.full((2, 2), 0.5))
    assert obs.shape == (2, 8) and torch.isfinite(obs).all() and torch.isfinite(reward).all()
    assert not terminated.any()
    env.close()


def test_observation_size_is_braxs_own_without_running_reset():
    # Brax's observation_size runs reset op by op (seconds of compilation); ours traces it abstractly: same answer.
    from eggroll_rl.envs.brax_adapter import observation_size

    _, brax_envs = import_brax()
    env = brax_envs.get_environment("inverted_pendulum", backend="positional")
    assert observation_size(env) == env.observation_size == 4
    assert observation_size(brax_envs.wrappers.training.EpisodeWrapper(env, 10, 1)) == 4  # through a wrapper
