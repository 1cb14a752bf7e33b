"""Torch-native envs against gymnasium's own envs: same state + same actions -> same obs, reward, termination."""

import math

import numpy as np
import pytest
import torch

from eggroll_rl.envs import Acrobot, CartPole, Discrete, MountainCarContinuous, NonFiniteError, Pendulum

gym = pytest.importorskip("gymnasium")

CASES = [
    (CartPole, "CartPole-v1"),
    (Pendulum, "Pendulum-v1"),
    (Acrobot, "Acrobot-v1"),
    (MountainCarContinuous, "MountainCarContinuous-v0"),
]


def _gym_state(genv) -> np.ndarray:
    return np.asarray(genv.unwrapped.state, dtype=np.float64)


def _random_action(env, rng: np.random.Generator):
    space = env.single_action_space
    if isinstance(space, Discrete):
        return int(rng.integers(space.n))
    # Go a bit beyond the bounds: both must clip the same way (MountainCar penalizes the raw action).
    return rng.uniform(1.3 * space.low.numpy(), 1.3 * space.high.numpy()).astype(np.float32)


def _as_batch(env, a) -> torch.Tensor:
    if isinstance(env.single_action_space, Discrete):
        return torch.tensor([a], dtype=torch.long)
    return torch.as_tensor(a, dtype=torch.float32)[None]


@pytest.mark.parametrize("cls,gym_id", CASES, ids=[c[1] for c in CASES])
def test_step_matches_gymnasium_from_same_state(cls, gym_id):
    """float32 torch env, resynchronised to gymnasium's state every step, over several episodes."""
    genv = gym.make(gym_id).unwrapped
    env = cls(num_envs=1, device="cpu")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    genv.reset(seed=1)
    terminations = 0
    for _ in range(300):
        env.set_state(torch.as_tensor(_gym_state(genv))[None])
        a = _random_action(env, rng)
        if cls is Acrobot and rng.random() < 0.9:
            a = 2 if genv.state[3] > 0 else 0  # pump energy so that the swing-up terminates
        g_obs, g_rew, g_term, _, _ = genv.step(a)
        _, rew, term, _, info = env.step(_as_batch(env, a))
        np.testing.assert_allclose(info["final_obs"][0].numpy(), g_obs, atol=1e-5, rtol=0)
        assert rew[0].item() == pytest.approx(float(g_rew), abs=1e-5)
        assert bool(term[0]) == bool(g_term)
        if g_term:
            terminations += 1
            genv.reset()
    if cls in (CartPole, Acrobot):
        assert terminations > 0  # termination paths were exercised


@pytest.mark.parametrize("cls,gym_id", CASES, ids=[c[1] for c in CASES])
def test_trajectory_matches_gymnasium_float64(cls, gym_id):
    """float64 torch env runs freely from gymnasium's initial state; several envs in one batch."""
    num = 3
    genvs = [gym.make(gym_id).unwrapped for _ in range(num)]
    for i, g in enumerate(genvs):
        g.reset(seed=10 + i)
    env = cls(num_envs=num, device="cpu", dtype=torch.float64)
    env.reset(seed=0)
    env.set_state(torch.as_tensor(np.stack([_gym_state(g) for g in genvs])))
    rng = np.random.default_rng(1)
    alive = [True] * num
    for _ in range(60):
        acts = [_random_action(env, rng) for _ in range(num)]
        batch = torch.cat([_as_batch(env, a) for a in acts])
        _, rew, term, _, info = env.step(batch)
        for i, g in enumerate(genvs):
            if not alive[i]:
                continue
            g_obs, g_rew, g_term, _, _ = g.step(acts[i])
            np.testing.assert_allclose(info["final_obs"][i].numpy(), g_obs, atol=1e-5, rtol=0)
            assert rew[i].item() == pytest.approx(float(g_rew), abs=1e-5)
            assert bool(term[i]) == bool(g_term)
            alive[i] = not g_term


def test_autoreset_and_time_limit():
    env = CartPole(num_envs=4, device="cpu", max_episode_steps=7)
    obs0 = env.reset(seed=3)
    assert obs0.shape == (4, 4) and obs0.dtype == torch.float32
    assert (obs0.abs() <= 0.05).all()
    # Alternate pushes keep the pole up: only the time limit ends episodes, at exactly step 7.
    for t in range(1, 15):
        a = torch.full((4,), t % 2, dtype=torch.long)
        obs, rew, term, trunc, info = env.step(a)
        assert rew.dtype == torch.float32 and term.dtype == torch.bool and trunc.dtype == torch.bool
        assert not term.any()
        assert trunc.all() == (t % 7 == 0) and trunc.any() == (t % 7 == 0)
        if t % 7 == 0:
            assert (obs.abs() <= 0.05).all()  # first obs of the next episode
            assert not torch.equal(obs, info["final_obs"])  # final obs kept in info
        else:
            assert torch.equal(obs, info["final_obs"])


def test_seeded_reset_is_reproducible():
    a = CartPole(num_envs=5, device="cpu").reset(seed=11)
    b = CartPole(num_envs=5, device="cpu", seed=99).reset(seed=11)
    assert torch.equal(a, b)


def test_bad_actions_raise():
    env = CartPole(num_envs=2, device="cpu")
    env.reset()
    with pytest.raises(ValueError, match=r"shape \(3,\), expected \(2,\)"):
        env.step(torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="integer dtype"):
        env.step(torch.zeros(2))
    with pytest.raises(ValueError, match=r"outside \[0, 2\)"):
        env.step(torch.tensor([0, 2]))
    with pytest.raises(TypeError, match="torch.Tensor"):
        env.step(np.zeros(2, dtype=np.int64))
    penv = Pendulum(num_envs=2, device="cpu")
    penv.reset()
    with pytest.raises(TypeError, match="floating dtype"):
        penv.step(torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"expected \(2, 1\)"):
        penv.step(torch.zeros(2))
    with pytest.raises(ValueError, match="NaN/inf in rows \\[1\\]"):
        penv.step(torch.tensor([[0.0], [math.nan]]))


def test_nan_state_raises_nonfinite():
    env = Pendulum(num_envs=3, device="cpu")
    env.reset()
    env.set_state(torch.tensor([[0.0, 0.0], [math.nan, 0.0], [0.1, 0.0]]))
    with pytest.raises(NonFiniteError, match=r"env rows \[1\]"):
        env.step(torch.zeros(3, 1))


@pytest.mark.gpu
@pytest.mark.parametrize("cls", [CartPole, Pendulum, Acrobot, MountainCarContinuous])
def test_cuda_matches_cpu(cls):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    n = 4096
    cpu = cls(num_envs=n, device="cpu", dtype=torch.float64)
    gpu = cls(num_envs=n, device="cuda")
    cpu.reset(seed=0)
    state = cpu.state.clone()
    gpu.reset(seed=0)
    gpu.set_state(state)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        if cls in (CartPole, Acrobot):
            a = torch.randint(0, cpu.single_action_space.n, (n,), generator=g)
        else:
            a = torch.rand(n, 1, generator=g) * 2 - 1
        gpu.set_state(cpu.state)
        oc, rc, tc, _, ic = cpu.step(a)
        og, rg, tg, _, ig = gpu.step(a.cuda())
        assert ig["final_obs"].device.type == "cuda"
        torch.testing.assert_close(ig["final_obs"].cpu(), ic["final_obs"], atol=1e-5, rtol=0)
        torch.testing.assert_close(rg.cpu(), rc, atol=1e-5, rtol=0)
        assert (tg.cpu() == tc).float().mean() > 0.999  # a float32 state may sit exactly on a threshold


def test_deferred_checks_raise_within_check_every_steps():
    """check_every > 1 (the CUDA default): bad values accumulate in a device flag, read every k steps or on flush."""
    env = CartPole(num_envs=2, device="cpu", check_every=4)
    assert CartPole(num_envs=1, device="cpu").check_every == 1
    env.reset(seed=0)
    env.step(torch.tensor([0, 2]))  # out of range: not raised yet
    env.step(torch.tensor([0, 1]))
    want = r"actions were invalid during the last 2 steps \(values seen in \[0, 2\]\); expected values in \[0, 2\)"
    with pytest.raises(ValueError, match=want):
        env.flush_checks()
    env.flush_checks()  # read: nothing pending
    env.reset(seed=0)
    for _ in range(3):
        env.step(torch.tensor([1, 0]))
    env.flush_checks()  # all valid
    penv = Pendulum(num_envs=3, device="cpu", check_every=3)
    penv.reset()
    penv.set_state(torch.tensor([[0.0, 0.0], [math.nan, 0.0], [0.1, 0.0]]))
    penv.step(torch.zeros(3, 1))
    penv.step(torch.zeros(3, 1))
    with pytest.raises(NonFiniteError, match="NaN/inf observations or rewards during the last 3 steps"):
        penv.step(torch.zeros(3, 1))  # the third step reads the flag
    with pytest.raises(ValueError, match="check_every must be a positive int or None"):
        CartPole(num_envs=1, device="cpu", check_every=0)
    # Float actions: NaN found through the float64 sum (float32) and through isfinite (float64); huge finite
    # float32 values are not a false alarm.
    for dtype in (torch.float32, torch.float64):
        penv = Pendulum(num_envs=2, device="cpu", check_every=10)
        penv.reset()
        penv.step(torch.full((2, 1), 3e38, dtype=dtype))
        penv.flush_checks()
        penv.step(torch.tensor([[0.0], [math.nan]], dtype=dtype))
        with pytest.raises(ValueError, match=r"actions were invalid in the last step \(NaN/inf seen\)"):
            penv.flush_checks()


def test_rollout_flushes_deferred_checks():
    from eggroll_rl.agents.rollout import rollout

    env = CartPole(num_envs=4, device="cpu", check_every=1000)
    with pytest.raises(ValueError, match="actions were invalid"):
        rollout(env, lambda obs, ids: torch.full((4,), 3), num_members=4, max_steps=5)
