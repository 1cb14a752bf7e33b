"""rollout / rollout_iterate: done masking, several envs and episodes per member, max_steps, early exit,
observation statistics, and the batched path against the iterate path with a real EggrollStrategy."""

import math

import pytest
import torch
from torch import nn

from eggroll_rl.agents.rollout import default_action_fn, population_act, rollout, rollout_iterate
from eggroll_rl.envs import Box, CartPole, Discrete, VecEnv


class ScriptedEnv(VecEnv):
    """Env ``b`` plays episodes of lengths ``schedule[b]`` (then repeats the last); reward at step ``t`` (1-based)
    of episode ``j`` is ``100*b + 10*j + t`` plus the action; obs = ``(b, j, t)`` of the state acted on."""

    backend = "test"
    env_id = "scripted"

    def __init__(self, schedule):
        self.schedule = schedule
        self.num_envs = len(schedule)
        self.device = torch.device("cpu")
        self.single_observation_space = Box.from_bounds(-1e9, 1e9, (3,))
        self.single_action_space = Box.from_bounds(-1e9, 1e9, (1,))
        self.calls = 0

    def _obs(self):
        return torch.tensor([[b, self.ep[b], self.t[b]] for b in range(self.num_envs)], dtype=torch.float32)

    def reset(self, seed=None):
        self.ep = [0] * self.num_envs
        self.t = [0] * self.num_envs
        self.calls = 0
        return self._obs()

    def step(self, actions):
        self._check_actions(actions)
        self.calls += 1
        rew, term = [], []
        for b in range(self.num_envs):
            self.t[b] += 1
            rew.append(100 * b + 10 * self.ep[b] + self.t[b] + float(actions[b, 0]))
            lengths = self.schedule[b]
            done = self.t[b] >= lengths[min(self.ep[b], len(lengths) - 1)]
            term.append(done)
        final = self._obs()
        for b in range(self.num_envs):
            if term[b]:
                self.ep[b] += 1
                self.t[b] = 0
        term_t = torch.tensor(term)
        return self._obs(), torch.tensor(rew), term_t, torch.zeros_like(term_t), {"final_obs": final}


def expected_return(b, j, length, action=0.0):
    return sum(100 * b + 10 * j + t + action for t in range(1, length + 1))


def zero_act(obs, member_ids):
    return torch.zeros(obs.shape[0], 1)


def test_masking_one_episode_per_env_and_early_exit():
    env = ScriptedEnv([[3], [5], [2], [4]])
    res = rollout(env, zero_act, num_members=4, max_steps=100)
    want = [expected_return(b, 0, n) for b, n in enumerate([3, 5, 2, 4])]
    torch.testing.assert_close(res.returns, torch.tensor(want, dtype=torch.float32))
    torch.testing.assert_close(res.lengths, torch.tensor([3.0, 5.0, 2.0, 4.0]))
    assert env.calls == 5  # stopped as soon as the longest episode ended
    assert res.num_steps == 14 and res.num_env_steps == 20
    assert res.episode_returns.shape == (4, 1) and res.num_episodes.tolist() == [1, 1, 1, 1]


def test_several_envs_and_episodes_per_member():
    # Member 0 owns envs 0, 1; member 1 owns envs 2, 3. Two episodes per env.
    sched = [[2, 3], [4, 1], [1, 1], [5, 2]]
    env = ScriptedEnv(sched)
    res = rollout(env, zero_act, num_members=2, envs_per_member=2, episodes_per_env=2, max_steps=100)
    eps = {b: [expected_return(b, j, n) for j, n in enumerate(sched[b])] for b in range(4)}
    torch.testing.assert_close(res.episode_returns[0], torch.tensor(eps[0] + eps[1], dtype=torch.float32))
    torch.testing.assert_close(res.episode_returns[1], torch.tensor(eps[2] + eps[3], dtype=torch.float32))
    assert res.episode_lengths.tolist() == [[2, 3, 4, 1], [1, 1, 5, 2]]
    torch.testing.assert_close(res.returns, torch.tensor([sum(eps[0] + eps[1]) / 4, sum(eps[2] + eps[3]) / 4]))
    torch.testing.assert_close(res.lengths, torch.tensor([2.5, 2.25]))
    assert env.calls == 7


def test_member_ids_mapping_and_actions_reach_the_right_env():
    env = ScriptedEnv([[2], [2], [2]])
    ids = torch.tensor([1, 0, 1])

    def act(obs, member_ids):
        return member_ids.float()[:, None] * 1000  # member 1's envs get +1000 per step

    res = rollout(env, act, num_members=2, member_ids=ids, max_steps=10)
    r = [expected_return(b, 0, 2, action=1000.0 * int(ids[b])) for b in range(3)]
    torch.testing.assert_close(res.returns, torch.tensor([r[1], (r[0] + r[2]) / 2]))


def test_max_steps_counts_running_episodes_as_they_stand():
    env = ScriptedEnv([[2, 2], [10]])
    res = rollout(env, zero_act, num_members=2, episodes_per_env=2, max_steps=3)
    # env 0: episode 0 complete (2 steps), episode 1 cut at 1 step; env 1: episode 0 cut at 3, episode 1 unplayed.
    assert res.episode_lengths.tolist() == [[2, 1], [3, 0]]
    assert math.isnan(res.episode_returns[1, 1].item())
    assert res.num_episodes.tolist() == [2, 1]
    torch.testing.assert_close(
        res.returns, torch.tensor([(expected_return(0, 0, 2) + expected_return(0, 1, 1)) / 2, expected_return(1, 0, 3)])
    )


def test_record_obs_counts_live_observations_only():
    env = ScriptedEnv([[1], [3]])
    res = rollout(env, zero_act, num_members=2, max_steps=10, record_obs=True)
    # Acted on: env 0 at t=0; env 1 at t=0, 1, 2 -> obs (b, j, t).
    seen = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 0, 1], [1, 0, 2]], dtype=torch.float64)
    assert res.obs_count == 4
    torch.testing.assert_close(res.obs_sum, seen.sum(0))
    torch.testing.assert_close(res.obs_sumsq, seen.square().sum(0))
    torch.testing.assert_close(res.obs_var, seen.var(0, unbiased=False))


def test_bad_arguments():
    env = ScriptedEnv([[1], [1], [1]])
    with pytest.raises(ValueError, match="num_members \\* envs_per_member"):
        rollout(env, zero_act, num_members=2)
    with pytest.raises(ValueError, match="every member at least one env"):
        rollout(env, zero_act, num_members=3, member_ids=torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="max_steps"):
        rollout(env, zero_act, num_members=3, max_steps=0)
    with pytest.raises(ValueError, match="actions have shape"):
        rollout(env, lambda o, m: torch.zeros(3), num_members=3)


def test_default_action_fn():
    assert default_action_fn(Discrete(3))(torch.tensor([[0.1, 0.9, 0.3]])).tolist() == [1]
    clip = default_action_fn(Box.from_bounds(-2.0, 2.0, (2,)))
    assert clip(torch.tensor([[-5.0, 1.0]])).tolist() == [[-2.0, 1.0]]


def test_batched_population_matches_iterate_path_on_cartpole():
    from eggroll_rl import EggrollStrategy

    torch.manual_seed(0)
    policy = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
    strategy = EggrollStrategy(sigma=0.5, lr=0.01, rank=2, allow_cpu=True)
    strategy.setup(policy)
    n = 6
    env = CartPole(num_envs=n, device="cpu")
    to_action = default_action_fn(env.single_action_space)
    with strategy.perturb(population_size=n, epoch=0) as pop:
        res = rollout(env, population_act(pop, policy, to_action), num_members=n, max_steps=200, seed=3)
        starts = CartPole(num_envs=n, device="cpu").reset(seed=3)
        # Reference: each member alone in pop.iterate(), a one-env CartPole started from the same state.
        want = []
        single = CartPole(num_envs=1, device="cpu")
        for member in pop.iterate():
            single.reset()
            obs = single.set_state(starts[member : member + 1])
            total = 0.0
            for _ in range(200):
                obs, r, term, trunc, _ = single.step(to_action(policy(obs)))
                total += float(r)
                if term or trunc:
                    break
            want.append(total)
        it = rollout_iterate(CartPole(num_envs=2, device="cpu"), pop, policy, to_action, max_steps=200, seed=3)
    torch.testing.assert_close(res.returns, torch.tensor(want))
    assert len(set(want)) > 1  # the members differ
    assert res.returns.shape == (n,) and res.lengths.shape == (n,)
    assert it.returns.shape == (n,) and it.episode_returns.shape == (n, 2)
    torch.testing.assert_close(it.returns, it.lengths)  # CartPole: reward 1 per step
    strategy.step(res.returns)


@pytest.mark.gpu
def test_rollout_on_cuda_with_strategy():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from eggroll_rl import EggrollStrategy

    torch.manual_seed(0)
    policy = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 2)).cuda()
    strategy = EggrollStrategy(sigma=0.5, lr=0.01, rank=4)
    strategy.setup(policy)
    n, e = 256, 4
    env = CartPole(num_envs=n * e, device="cuda")
    with strategy.perturb(population_size=n, epoch=0) as pop:
        act = population_act(pop, policy, default_action_fn(env.single_action_space))
        res = rollout(env, act, num_members=n, envs_per_member=e, max_steps=500, seed=0, record_obs=True)
    assert res.returns.device.type == "cuda" and res.returns.shape == (n,)
    torch.testing.assert_close(res.returns, res.lengths)
    assert res.obs_count == res.num_steps
    assert int(res.episode_lengths.min()) >= 1 and int(res.episode_lengths.max()) <= 500


def test_cuda_graph_argument_checks():
    env = ScriptedEnv([[2], [3]])
    with pytest.raises(ValueError, match="cuda_graph must be None, True or False"):
        rollout(env, zero_act, num_members=2, cuda_graph="yes")
    with pytest.raises(ValueError, match=r"cuda_graph=True needs an env on a CUDA device, got env.device=cpu"):
        rollout(env, zero_act, num_members=2, cuda_graph=True)


def _cuda_population(n: int, obs_dim: int, act_dim: int, hidden: int = 32):
    from eggroll_rl import EggrollStrategy

    torch.manual_seed(0)
    policy = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, act_dim)).cuda()
    strategy = EggrollStrategy(sigma=0.5, lr=0.01, rank=4)
    strategy.setup(policy)
    return policy, strategy


def _same(a, b):
    for name in ("returns", "lengths", "episode_returns", "episode_lengths", "num_episodes", "obs_sum", "obs_sumsq"):
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:
            assert x is None and y is None, name
            continue
        assert torch.equal(x.nan_to_num(-1.0), y.nan_to_num(-1.0)), name
    assert (a.num_steps, a.num_env_steps, a.obs_count) == (b.num_steps, b.num_env_steps, b.obs_count)


@pytest.mark.gpu
def test_cuda_graph_rollout_equals_eager_rollout():
    """The graphed loop (act + bookkeeping replayed) gives bit-identical results to the eager loop."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    n, e = 128, 2
    policy, strategy = _cuda_population(n, 4, 2)
    with strategy.perturb(population_size=n, epoch=3) as pop:
        act = population_act(pop, policy, default_action_fn(Discrete(2)))
        runs = {}
        for graph in (False, True):
            env = CartPole(num_envs=n * e, device="cuda")
            runs[graph] = rollout(env, act, num_members=n, envs_per_member=e, episodes_per_env=2, max_steps=300,
                                  seed=5, record_obs=True, cuda_graph=graph)  # fmt: skip
    _same(runs[False], runs[True])
    assert len(set(runs[True].returns.tolist())) > 1 and int(runs[True].num_episodes.sum()) > n


@pytest.mark.gpu
def test_rollout_on_the_second_gpu_while_the_first_is_current():
    """An env on cuda:1 rolled out while cuda:0 is current (as a torchrun rank may find it after another library ran):
    the graphed loop captures on the env's GPU and equals the eager loop; the caller's current device is kept."""
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    n = 64
    torch.manual_seed(0)
    weight = torch.randn(2, 4, device="cuda:1")

    def act(obs, ids):
        return (obs @ weight.T + 0.01 * ids[:, None]).argmax(1)

    # A capture on cuda:0 first: torch's default capture stream (one per process) is then on cuda:0 here too.
    warm, x = torch.cuda.CUDAGraph(), torch.zeros(1, device="cuda:0")
    with torch.cuda.graph(warm):
        x.add_(1)
    runs = {}
    with torch.cuda.device(0):
        for graph in (False, True):
            env = CartPole(num_envs=n, device="cuda:1")
            runs[graph] = rollout(env, act, num_members=n, max_steps=200, seed=5, record_obs=True, cuda_graph=graph)
            assert torch.cuda.current_device() == 0
    assert runs[True].returns.device == torch.device("cuda", 1)
    _same(runs[False], runs[True])
    assert int(runs[True].num_steps) > n


@pytest.mark.gpu
def test_cuda_graph_capture_failure_falls_back_or_raises():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    n = 16
    policy, strategy = _cuda_population(n, 4, 2)
    with strategy.perturb(population_size=n, epoch=0) as pop:

        def syncing_act(obs, ids):  # a host sync (.item()) cannot be captured
            out = pop.batched_forward(policy, obs, member_ids=ids).argmax(-1)
            return out if out.sum().item() >= 0 else out

        eager = rollout(CartPole(num_envs=n, device="cuda"), syncing_act, num_members=n, max_steps=50, seed=1,
                        cuda_graph=False)  # fmt: skip
        with pytest.warns(UserWarning, match="running eagerly"):
            auto = rollout(CartPole(num_envs=n, device="cuda"), syncing_act, num_members=n, max_steps=50, seed=1)
        _same(eager, auto)
        with pytest.raises(RuntimeError, match=r"cuda_graph=True\): capturing the policy step"):
            rollout(CartPole(num_envs=n, device="cuda"), syncing_act, num_members=n, max_steps=50, seed=1,
                    cuda_graph=True)  # fmt: skip
    # The failed attempts left the process usable: CUDA random draws (which a capture that fails midway breaks).
    torch.randn(4, device="cuda")
    torch.cuda.synchronize()


def test_refusing_syncs_for_the_capture_warm_up_is_silent_and_restores_the_mode(monkeypatch):
    """The warm-up before a CUDA-graph capture runs with torch's sync debug mode at "error"; torch warns that the
    mode is a prototype each time one is set, which reached the console of every GPU training run."""
    import warnings

    from eggroll_rl.agents.rollout import _syncs_refused

    modes = []

    def set_mode(mode):
        warnings.warn("Synchronization debug mode is a prototype feature and does not yet detect all synchronizing "
                      "operations", UserWarning, stacklevel=2)  # fmt: skip
        modes.append(mode)

    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", set_mode)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with _syncs_refused():
            assert modes == ["error"]
        with pytest.raises(RuntimeError), _syncs_refused():
            raise RuntimeError("a sync in act")
    assert modes == ["error", 1, "error", 1]  # restored, also after an error
    assert not caught
