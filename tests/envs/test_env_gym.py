"""Gymnasium adapter: same transitions as gymnasium's own single envs, same-step autoreset, final obs kept."""

import numpy as np
import pytest
import torch

from eggroll_rl.envs import make_env

gym = pytest.importorskip("gymnasium")


def _reference(env_id: str, num: int, seed: int, **kw):
    envs = [gym.make(env_id, **kw) for _ in range(num)]
    obs = [e.reset(seed=seed + i)[0] for i, e in enumerate(envs)]
    return envs, np.stack(obs)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_cartpole_matches_single_envs_with_autoreset(mode):
    num, seed = 3, 5
    env = make_env("CartPole-v1", backend="gym", num_envs=num, device="cpu", seed=seed, vectorization_mode=mode)
    assert env.backend == "gym" and env.single_action_space.n == 2 and env.obs_shape == (4,)
    refs, ref_obs = _reference("CartPole-v1", num, seed)
    obs = env.reset()
    assert obs.dtype == torch.float32 and obs.shape == (num, 4)
    np.testing.assert_array_equal(obs.numpy(), ref_obs)
    rng = np.random.default_rng(0)
    episodes = 0
    for _ in range(120):
        acts = rng.integers(0, 2, size=num)
        obs, rew, term, trunc, info = env.step(torch.as_tensor(acts))
        for i, ref in enumerate(refs):
            r_obs, r_rew, r_term, r_trunc, _ = ref.step(int(acts[i]))
            np.testing.assert_array_equal(info["final_obs"][i].numpy(), r_obs)
            assert rew[i].item() == r_rew and bool(term[i]) == r_term and bool(trunc[i]) == r_trunc
            if r_term or r_trunc:
                episodes += 1
                r_obs, _ = ref.reset()  # continues the sub-env's random stream, as the vector env does
            np.testing.assert_array_equal(obs[i].numpy(), r_obs)
    assert episodes >= 5
    env.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_halfcheetah_continuous_and_truncation(mode):
    pytest.importorskip("mujoco")
    num, seed = 2, 1
    env = make_env(
        "HalfCheetah",
        backend="gym",
        num_envs=num,
        device="cpu",
        seed=seed,
        vectorization_mode=mode,
        max_episode_steps=4,
    )
    assert env.env_id == "HalfCheetah-v5" and env.obs_shape == (17,) and env.single_action_space.shape == (6,)
    refs, ref_obs = _reference("HalfCheetah-v5", num, seed, max_episode_steps=4)
    np.testing.assert_allclose(env.reset().numpy(), ref_obs.astype(np.float32))
    rng = np.random.default_rng(0)
    for t in range(1, 10):
        acts = rng.uniform(-1, 1, size=(num, 6)).astype(np.float32)
        obs, rew, term, trunc, info = env.step(torch.as_tensor(acts))
        assert trunc.tolist() == [t % 4 == 0] * num and not term.any()
        for i, ref in enumerate(refs):
            r_obs, r_rew, _, r_trunc, _ = ref.step(acts[i])
            np.testing.assert_allclose(info["final_obs"][i].numpy(), r_obs.astype(np.float32), atol=1e-6)
            assert rew[i].item() == pytest.approx(r_rew, abs=1e-5)
            if r_trunc:
                r_obs, _ = ref.reset()
            np.testing.assert_allclose(obs[i].numpy(), r_obs.astype(np.float32), atol=1e-6)
    env.close()


def test_bad_actions():
    env = make_env("CartPole", backend="gym", num_envs=2, device="cpu")
    env.reset()
    with pytest.raises(TypeError, match="integer dtype"):
        env.step(torch.zeros(2))
    with pytest.raises(ValueError, match="expected \\(2,\\)"):
        env.step(torch.zeros(2, 1, dtype=torch.long))
    env.close()


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_async_mujoco_children_leave_no_log_file_and_warn_at_most_once(tmp_path, capfd, context):
    """The sub-env processes route MuJoCo's warnings as the main process does (spawn starts them without its handler).

    HalfCheetah-v5's model gives MuJoCo's ``settotalmass`` deprecation each time it is compiled: once in the main
    process (gymnasium's dummy env) and once in each child. MuJoCo's own handler would print it and append it to
    ``MUJOCO_LOG.TXT`` in the working directory.
    """
    pytest.importorskip("mujoco")
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        env = make_env(
            "HalfCheetah-v5", backend="gym", num_envs=2, device="cpu", vectorization_mode="async",
            vector_kwargs={"context": context},
        )  # fmt: skip
        env.reset(seed=0)
        obs, *_ = env.step(torch.zeros(2, 6))
        env.close()
    assert obs.shape == (2, 17)
    out, err = capfd.readouterr()
    assert list(tmp_path.iterdir()) == []  # the tests/envs conftest runs each test in tmp_path: no MUJOCO_LOG.TXT
    printed = (out + err).count("settotalmass")
    warned = sum("settotalmass" in str(w.message) for w in caught)
    assert printed + warned <= 1, out + err
