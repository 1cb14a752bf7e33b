"""EnvPool adapter: next-step autoreset turned into same-step, no dummy transitions, sync and async."""

import pytest
import torch

from eggroll_rl.envs import CartPole, make_env

envpool = pytest.importorskip("envpool")


def _cartpole_prediction(prev_obs: torch.Tensor, actions: torch.Tensor):
    """The next obs/termination from the CartPole equations (torch-native twin, float64)."""
    ref = CartPole(num_envs=prev_obs.shape[0], device="cpu", dtype=torch.float64)
    ref.reset()
    ref.set_state(prev_obs.double())
    _, rew, term, _, info = ref.step(actions)
    return info["final_obs"], rew, term


def test_cartpole_sync_same_step_autoreset():
    num = 4
    env = make_env("CartPole-v1", backend="envpool", num_envs=num, device="cpu", seed=3)
    assert env.backend == "envpool" and env.single_action_space.n == 2
    obs = env.reset()
    assert obs.shape == (num, 4) and obs.dtype == torch.float32 and (obs.abs() <= 0.05).all()
    length = torch.zeros(num, dtype=torch.long)
    episodes = 0
    for _ in range(150):
        acts = torch.ones(num, dtype=torch.long)  # always push right: episodes end after ~10 steps
        pred_obs, pred_rew, pred_term = _cartpole_prediction(obs, acts)
        obs_next, rew, term, trunc, info = env.step(acts)
        length += 1
        # Every call is a real transition: it follows from the previous obs by the CartPole equations.
        torch.testing.assert_close(info["final_obs"], pred_obs.float(), atol=1e-5, rtol=0)
        assert torch.equal(rew, torch.ones(num)) and torch.equal(term, pred_term) and not trunc.any()
        torch.testing.assert_close(info["elapsed_step"], length)  # the finished episode's length on its last step
        done = term | trunc
        assert (obs_next[done].abs() <= 0.05).all()  # reset obs right away, in the same call
        assert torch.equal(obs_next[~done], info["final_obs"][~done])
        episodes += int(done.sum())
        length[done] = 0
        obs = obs_next
    assert episodes >= 20
    env.close()


def test_halfcheetah_truncation_counted_once():
    pytest.importorskip("mujoco")
    env = make_env("HalfCheetah-v5", backend="envpool", num_envs=2, device="cpu", max_episode_steps=5)
    assert env.obs_shape == (17,) and env.single_action_space.shape == (6,)
    env.reset()
    for t in range(1, 16):
        obs, rew, term, trunc, info = env.step(torch.zeros(2, 6))
        assert trunc.tolist() == [t % 5 == 0] * 2 and not term.any()
        assert torch.isfinite(rew).all() and rew.dtype == torch.float32
        assert torch.equal(obs, info["final_obs"]) != (t % 5 == 0)
    env.close()


def test_cartpole_async_send_recv():
    num, batch = 6, 2
    env = make_env("CartPole", backend="envpool", num_envs=num, batch_size=batch, device="cpu", seed=0)
    with pytest.raises(RuntimeError, match="async_reset"):
        env.reset()
    env.async_reset()
    last = {}
    episodes = {i: 0 for i in range(num)}
    seen = 0
    for _ in range(200):
        obs, rew, term, trunc, info = env.recv()
        ids = info["env_id"]
        assert obs.shape == (ids.numel(), 4) and rew.shape == ids.shape
        for row, eid in enumerate(ids.tolist()):
            if eid in last:
                prev_obs, prev_act = last[eid]
                pred, _, pred_term = _cartpole_prediction(prev_obs[None], prev_act[None])
                torch.testing.assert_close(info["final_obs"][row], pred[0].float(), atol=1e-5, rtol=0)
                assert rew[row].item() == 1.0 and bool(term[row]) == bool(pred_term[0])
                if term[row]:
                    episodes[eid] += 1
                    assert (obs[row].abs() <= 0.05).all()
                seen += 1
            else:
                assert rew[row].item() == 0.0  # reset results
        acts = torch.ones(ids.numel(), dtype=torch.long)
        for row, eid in enumerate(ids.tolist()):
            last[eid] = (obs[row].clone(), acts[row])
        env.send(acts, ids)
    assert seen > 150 and min(episodes.values()) >= 2
    env.close()
