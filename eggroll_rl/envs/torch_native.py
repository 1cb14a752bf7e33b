"""Batched environments written in torch: the whole batch steps as a few elementwise kernels on any device.

Each env reproduces gymnasium's classic-control env of the same name (same constants, same update order, same
reward, termination and time limit), so from the same state with the same actions the two agree step for step
(tests/envs/test_env_torch_native.py checks observations within 1e-5 and equal rewards/terminations).
Internals run in ``dtype`` (float32 by default; float64 to follow gymnasium's float64 arithmetic over long
trajectories); observations are returned as float32. Initial states come from a ``torch.Generator`` on the
env's device, so they differ from gymnasium's numpy draws for the same seed.

State layouts (``state``: ``(num_envs, state_dim)``):
- CartPole: ``(x, x_dot, theta, theta_dot)``
- Pendulum: ``(theta, theta_dot)``
- Acrobot: ``(theta1, theta2, dtheta1, dtheta2)``
- MountainCarContinuous: ``(position, velocity)``
"""

from __future__ import annotations

import math

import torch

from eggroll_rl.validation import check_int

from .base import Box, Discrete, NonFiniteError, Space, StepResult, VecEnv, check_start_rows, resolve_device

__all__ = ["TorchNativeEnv", "CartPole", "Pendulum", "Acrobot", "MountainCarContinuous", "TORCH_ENVS"]


class TorchNativeEnv(VecEnv):
    """Base of the torch-native envs: state in a tensor, same-step autoreset, time limit by step counter.

    Args:
        num_envs: batch size ``B``.
        device: where state and returned tensors live (``None``: CUDA if available).
        seed: seed of the initial-state generator.
        dtype: dtype of the internal state (float32 or float64).
        max_episode_steps: time limit; ``truncated`` becomes True when an episode reaches it.
        check_finite: raise ``NonFiniteError`` on NaN/inf observations or rewards.
        check_actions: validate action values (range for discrete, finite for continuous).
        check_every: read the value checks on the host every this many steps. ``None``: 1 on the CPU (where a
            check costs nothing extra), 64 on CUDA, where each read is a host sync that stops torch from queueing
            the next step. With ``k > 1`` the checks accumulate into a flag on the device; a bad value raises
            within ``k`` steps (``flush_checks()``, which ``rollout`` calls before returning, reads it at once),
            and only ``k = 1`` names the bad rows. Shapes and dtypes are always checked at once.
    """

    backend = "torch"
    state_dim: int
    default_max_episode_steps: int
    observation_space_: Box
    action_space_: Space

    def __init__(
        self,
        num_envs: int = 1,
        device: str | torch.device | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        max_episode_steps: int | None = None,
        check_finite: bool = True,
        check_actions: bool = True,
        check_every: int | None = None,
    ) -> None:
        check_int("num_envs", num_envs, lo=1)
        if check_every is not None and (not isinstance(check_every, int) or check_every < 1):
            raise ValueError(f"check_every must be a positive int or None, got {check_every!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.num_envs = num_envs
        self.device = resolve_device(device)
        self.dtype = dtype
        self.max_episode_steps = self.default_max_episode_steps if max_episode_steps is None else int(max_episode_steps)
        if self.max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        self.check_finite = check_finite
        self.check_action_values = check_actions
        self.check_every = check_every if check_every is not None else (64 if self.device.type == "cuda" else 1)
        self._pending = _DeferredChecks(self.device)
        self._since_check = 0
        self.single_observation_space = self.observation_space_
        self.single_action_space = self.action_space_
        self._seed = int(seed)
        self._generator = torch.Generator(device=self.device)
        self._generator.manual_seed(self._seed)
        self._start_rows: tuple[torch.Tensor, int] | None = None
        self.state = torch.zeros(num_envs, self.state_dim, device=self.device, dtype=dtype)
        self.elapsed_steps = torch.zeros(num_envs, device=self.device, dtype=torch.int64)

    # ---- subclass hooks ------------------------------------------------------------------------------------
    def _initial_state(self, n: int) -> torch.Tensor:
        raise NotImplementedError

    def _dynamics(self, state: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(state (B, S), actions) -> (next_state (B, S), reward (B,), terminated (B,) bool)``."""
        raise NotImplementedError

    def _obs(self, state: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _uniform(self, n: int, low: float, high: float, dim: int) -> torch.Tensor:
        u = torch.rand(n, dim, generator=self._generator, device=self.device, dtype=self.dtype)
        return low + (high - low) * u

    def set_reset_window(self, offset: int, total: int) -> None:
        """Make these envs rows ``offset .. offset+num_envs-1`` of a batch of ``total`` envs: ``reset(seed)`` then
        draws the initial states of all ``total`` and keeps this window, so a population split over processes
        starts each env where the single-process run does (``torch.distributed`` training)."""
        check_int("total", total, lo=self.num_envs)
        check_int("offset", offset, lo=0, hi=total - self.num_envs)
        self.set_start_rows(torch.arange(offset, offset + self.num_envs), total)

    def set_start_rows(self, rows: torch.Tensor, total: int) -> None:
        """Make env ``b`` start, at every ``reset``, where row ``rows[b]`` of a batch of ``total`` envs starts
        (``reset`` draws ``total`` initial states and picks ``rows``): envs given the same row share their initial
        state. Used by ``TrainConfig.members_per_start``; replaces a reset window (which is consecutive rows)."""
        self._start_rows = (check_start_rows(rows, self.num_envs, total).to(self.device), total)

    # ---- protocol ------------------------------------------------------------------------------------------
    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Reset all envs; ``seed`` reseeds the generator. Returns ``obs`` ``(num_envs, obs_dim)`` float32."""
        if seed is not None:
            self._generator.manual_seed(int(seed))
        if self._start_rows is None:
            self.state = self._initial_state(self.num_envs)
        else:
            rows, total = self._start_rows
            self.state = self._initial_state(total)[rows].contiguous()
        self.elapsed_steps.zero_()
        self._pending.clear()
        self._since_check = 0
        return self._obs(self.state)

    def set_state(self, state: torch.Tensor) -> torch.Tensor:
        """Set the internal state ``(num_envs, state_dim)`` (episode clocks unchanged); returns its obs."""
        if tuple(state.shape) != (self.num_envs, self.state_dim):
            raise ValueError(f"state has shape {tuple(state.shape)}, expected {(self.num_envs, self.state_dim)}")
        self.state = state.to(device=self.device, dtype=self.dtype).clone()
        return self._obs(self.state)

    def step(self, actions: torch.Tensor) -> StepResult:
        """One transition for every env (same-step autoreset; see ``eggroll_rl.envs.base``)."""
        deferred = self.check_every > 1
        self._check_actions(actions, check_values=self.check_action_values and not deferred)
        if deferred and self.check_action_values:
            self._pending.add_actions(actions, isinstance(self.single_action_space, Discrete))
        next_state, reward, terminated = self._dynamics(self.state, actions)
        self.elapsed_steps += 1
        truncated = self.elapsed_steps >= self.max_episode_steps
        done = terminated | truncated
        final_obs = self._obs(next_state)
        fresh = self._initial_state(self.num_envs)
        self.state = torch.where(done[:, None], fresh, next_state)
        self.elapsed_steps = torch.where(done, torch.zeros_like(self.elapsed_steps), self.elapsed_steps)
        obs = torch.where(done[:, None], self._obs(self.state), final_obs)
        reward = reward.to(torch.float32)
        if not deferred:
            self._check_outputs(final_obs, reward, "step")
        else:
            if self.check_finite:
                self._pending.add_outputs(final_obs, reward)
            self._since_check += 1
            if self._since_check >= self.check_every:
                self.flush_checks()
        return obs, reward, terminated, truncated, {"final_obs": final_obs}

    def flush_checks(self) -> None:
        """Read the value checks deferred since the last read (one host sync); raise if one failed."""
        if self._since_check == 0:
            return
        steps, self._since_check = self._since_check, 0
        bad_actions, bad_outputs, seen = self._pending.read(self.single_action_space)
        when = f"during the last {steps} steps" if steps > 1 else "in the last step"
        if bad_actions:
            space = self.single_action_space
            expected = f"values in [0, {space.n})" if isinstance(space, Discrete) else "finite values"
            raise ValueError(
                f"{type(self).__name__}: actions were invalid {when} ({seen}); expected {expected}. Pass "
                "check_every=1 to find the rows at once (the envs' states are now invalid: call reset())"
            )
        if bad_outputs:
            raise NonFiniteError(
                f"{type(self).__name__}({self.env_id!r}): the env returned NaN/inf observations or rewards {when}; "
                "expected finite values. The simulation probably diverged (check the actions' scale)."
            )


class _DeferredChecks:
    """Value checks accumulated on the device over several steps, in as few kernels as possible, and exact.

    Float32 outputs are summed in float64: the sum is finite exactly when every element is (a float64 sum of
    float32 values cannot overflow). Discrete actions keep a running min/max; float actions a float64 sum
    (or an ``isfinite`` test for float64 actions, whose sum could overflow).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.clear()

    def clear(self) -> None:
        self.outputs = torch.zeros((), dtype=torch.float64, device=self.device)
        self.actions = torch.zeros((), dtype=torch.float64, device=self.device)
        self.low: torch.Tensor | None = None
        self.high: torch.Tensor | None = None

    def add_outputs(self, obs: torch.Tensor, reward: torch.Tensor) -> None:
        for x in (obs, reward):
            if x.dtype == torch.float64:
                self.outputs.add_(torch.where(torch.isfinite(x).all(), 0.0, math.inf))
            else:
                self.outputs.add_(x.sum(dtype=torch.float64))

    def add_actions(self, actions: torch.Tensor, discrete: bool) -> None:
        if discrete:
            low, high = torch.aminmax(actions)
            self.low = low if self.low is None else torch.minimum(self.low, low)
            self.high = high if self.high is None else torch.maximum(self.high, high)
        elif actions.dtype == torch.float64:
            self.actions.add_(torch.where(torch.isfinite(actions).all(), 0.0, math.inf))
        else:
            self.actions.add_(actions.sum(dtype=torch.float64))

    def read(self, space: Space) -> tuple[bool, bool, str]:
        """``(bad actions, bad outputs, what was seen)`` with one host sync; then clear."""
        parts = [self.outputs, self.actions]
        if self.low is not None:
            parts += [self.low.to(torch.float64), self.high.to(torch.float64)]
        values = torch.stack(parts).tolist()
        self.clear()
        bad_outputs, bad_actions = not math.isfinite(values[0]), not math.isfinite(values[1])
        seen = "NaN/inf seen" if bad_actions else ""
        if len(values) == 4:
            low, high = int(values[2]), int(values[3])
            if low < 0 or high >= space.n:
                bad_actions, seen = True, f"values seen in [{low}, {high}]"
        return bad_actions, bad_outputs, seen


class CartPole(TorchNativeEnv):
    """gymnasium ``CartPole-v1``: Discrete(2) actions (0 push left, 1 push right), obs ``(B, 4)``, 500 steps."""

    env_id = "CartPole-v1"
    state_dim = 4
    default_max_episode_steps = 500
    gravity = 9.8
    masscart = 1.0
    masspole = 0.1
    total_mass = masspole + masscart
    length = 0.5
    polemass_length = masspole * length
    force_mag = 10.0
    tau = 0.02
    theta_threshold_radians = 12 * 2 * math.pi / 360
    x_threshold = 2.4
    observation_space_ = Box.from_bounds(
        [-4.8, -math.inf, -2 * theta_threshold_radians, -math.inf],
        [4.8, math.inf, 2 * theta_threshold_radians, math.inf],
    )
    action_space_ = Discrete(2)

    def _initial_state(self, n: int) -> torch.Tensor:
        return self._uniform(n, -0.05, 0.05, 4)

    def _obs(self, state: torch.Tensor) -> torch.Tensor:
        return state.to(torch.float32)

    def _dynamics(self, state, actions):
        x, x_dot, theta, theta_dot = state.unbind(1)
        force = torch.where(actions == 1, self.force_mag, -self.force_mag).to(state.dtype)
        costheta = torch.cos(theta)
        sintheta = torch.sin(theta)
        temp = (force + self.polemass_length * theta_dot.square() * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * costheta.square() / self.total_mass)
        )
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        # Explicit Euler, gymnasium's default integrator: positions use the old velocities.
        x = x + self.tau * x_dot
        x_dot = x_dot + self.tau * xacc
        theta = theta + self.tau * theta_dot
        theta_dot = theta_dot + self.tau * thetaacc
        next_state = torch.stack((x, x_dot, theta, theta_dot), 1)
        terminated = (x.abs() > self.x_threshold) | (theta.abs() > self.theta_threshold_radians)
        reward = torch.ones_like(x)
        return next_state, reward, terminated


def _angle_normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


class Pendulum(TorchNativeEnv):
    """gymnasium ``Pendulum-v1`` (g=10): Box(-2, 2, (1,)) torque, obs ``(B, 3)`` = (cos, sin, theta_dot), 200 steps."""

    env_id = "Pendulum-v1"
    state_dim = 2
    default_max_episode_steps = 200
    max_speed = 8.0
    max_torque = 2.0
    dt = 0.05
    g = 10.0
    m = 1.0
    l = 1.0  # noqa: E741 - gymnasium's name
    observation_space_ = Box.from_bounds([-1.0, -1.0, -8.0], [1.0, 1.0, 8.0])
    action_space_ = Box.from_bounds(-2.0, 2.0, (1,))

    def _initial_state(self, n: int) -> torch.Tensor:
        high = torch.tensor([math.pi, 1.0], device=self.device, dtype=self.dtype)
        return (2 * torch.rand(n, 2, generator=self._generator, device=self.device, dtype=self.dtype) - 1) * high

    def _obs(self, state: torch.Tensor) -> torch.Tensor:
        th, thdot = state.unbind(1)
        return torch.stack((torch.cos(th), torch.sin(th), thdot), 1).to(torch.float32)

    def _dynamics(self, state, actions):
        th, thdot = state.unbind(1)
        u = actions[:, 0].to(state.dtype).clamp(-self.max_torque, self.max_torque)
        costs = _angle_normalize(th).square() + 0.1 * thdot.square() + 0.001 * u.square()
        newthdot = thdot + (3 * self.g / (2 * self.l) * torch.sin(th) + 3.0 / (self.m * self.l**2) * u) * self.dt
        newthdot = newthdot.clamp(-self.max_speed, self.max_speed)
        newth = th + newthdot * self.dt
        return torch.stack((newth, newthdot), 1), -costs, torch.zeros_like(th, dtype=torch.bool)


def _wrap(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """gymnasium's ``wrap``: shift by whole periods ``high - low`` until ``low <= x <= high``."""
    diff = high - low
    above = torch.ceil((x - high) / diff).clamp_min(0)
    below = torch.ceil((low - x) / diff).clamp_min(0)
    return x - above * diff + below * diff


class Acrobot(TorchNativeEnv):
    """gymnasium ``Acrobot-v1`` (book dynamics, RK4, dt=0.2): Discrete(3) torque {-1, 0, 1}, obs ``(B, 6)``."""

    env_id = "Acrobot-v1"
    state_dim = 4
    default_max_episode_steps = 500
    dt = 0.2
    link_length_1 = 1.0
    link_mass_1 = 1.0
    link_mass_2 = 1.0
    link_com_pos_1 = 0.5
    link_com_pos_2 = 0.5
    link_moi = 1.0
    max_vel_1 = 4 * math.pi
    max_vel_2 = 9 * math.pi
    observation_space_ = Box.from_bounds(
        [-1.0, -1.0, -1.0, -1.0, -4 * math.pi, -9 * math.pi], [1.0, 1.0, 1.0, 1.0, 4 * math.pi, 9 * math.pi]
    )
    action_space_ = Discrete(3)

    def _initial_state(self, n: int) -> torch.Tensor:
        return self._uniform(n, -0.1, 0.1, 4)

    def _obs(self, state: torch.Tensor) -> torch.Tensor:
        s0, s1, s2, s3 = state.unbind(1)
        return torch.stack((torch.cos(s0), torch.sin(s0), torch.cos(s1), torch.sin(s1), s2, s3), 1).to(torch.float32)

    def _dsdt(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        m1, m2 = self.link_mass_1, self.link_mass_2
        l1 = self.link_length_1
        lc1, lc2 = self.link_com_pos_1, self.link_com_pos_2
        i1 = i2 = self.link_moi
        g = 9.8
        theta1, theta2, dtheta1, dtheta2 = s.unbind(1)
        d1 = m1 * lc1**2 + m2 * (l1**2 + lc2**2 + 2 * l1 * lc2 * torch.cos(theta2)) + i1 + i2
        d2 = m2 * (lc2**2 + l1 * lc2 * torch.cos(theta2)) + i2
        phi2 = m2 * lc2 * g * torch.cos(theta1 + theta2 - math.pi / 2.0)
        phi1 = (
            -m2 * l1 * lc2 * dtheta2**2 * torch.sin(theta2)
            - 2 * m2 * l1 * lc2 * dtheta2 * dtheta1 * torch.sin(theta2)
            + (m1 * lc1 + m2 * l1) * g * torch.cos(theta1 - math.pi / 2)
            + phi2
        )
        ddtheta2 = (a + d2 / d1 * phi1 - m2 * l1 * lc2 * dtheta1**2 * torch.sin(theta2) - phi2) / (
            m2 * lc2**2 + i2 - d2**2 / d1
        )
        ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
        return torch.stack((dtheta1, dtheta2, ddtheta1, ddtheta2), 1)

    def _dynamics(self, state, actions):
        torque = actions.to(state.dtype) - 1.0  # 0, 1, 2 -> -1, 0, +1
        dt = self.dt
        k1 = self._dsdt(state, torque)
        k2 = self._dsdt(state + dt / 2 * k1, torque)
        k3 = self._dsdt(state + dt / 2 * k2, torque)
        k4 = self._dsdt(state + dt * k3, torque)
        ns = state + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
        s0 = _wrap(ns[:, 0], -math.pi, math.pi)
        s1 = _wrap(ns[:, 1], -math.pi, math.pi)
        s2 = ns[:, 2].clamp(-self.max_vel_1, self.max_vel_1)
        s3 = ns[:, 3].clamp(-self.max_vel_2, self.max_vel_2)
        next_state = torch.stack((s0, s1, s2, s3), 1)
        terminated = -torch.cos(s0) - torch.cos(s1 + s0) > 1.0
        reward = torch.where(terminated, 0.0, -1.0).to(state.dtype)
        return next_state, reward, terminated


class MountainCarContinuous(TorchNativeEnv):
    """gymnasium ``MountainCarContinuous-v0``: Box(-1, 1, (1,)) force, obs ``(B, 2)``, 999 steps."""

    env_id = "MountainCarContinuous-v0"
    state_dim = 2
    default_max_episode_steps = 999
    min_action = -1.0
    max_action = 1.0
    min_position = -1.2
    max_position = 0.6
    max_speed = 0.07
    goal_position = 0.45
    goal_velocity = 0.0
    power = 0.0015
    observation_space_ = Box.from_bounds([-1.2, -0.07], [0.6, 0.07])
    action_space_ = Box.from_bounds(-1.0, 1.0, (1,))

    def _initial_state(self, n: int) -> torch.Tensor:
        pos = self._uniform(n, -0.6, -0.4, 1)
        return torch.cat((pos, torch.zeros_like(pos)), 1)

    def _obs(self, state: torch.Tensor) -> torch.Tensor:
        return state.to(torch.float32)

    def _dynamics(self, state, actions):
        position, velocity = state.unbind(1)
        a = actions[:, 0].to(state.dtype)
        force = a.clamp(self.min_action, self.max_action)
        velocity = velocity + force * self.power - 0.0025 * torch.cos(3 * position)
        velocity = velocity.clamp(-self.max_speed, self.max_speed)
        position = (position + velocity).clamp(self.min_position, self.max_position)
        velocity = torch.where((position == self.min_position) & (velocity < 0), 0.0, velocity)
        terminated = (position >= self.goal_position) & (velocity >= self.goal_velocity)
        # The action penalty uses the unclipped action, as gymnasium does.
        reward = torch.where(terminated, 100.0, 0.0).to(state.dtype) - 0.1 * a.square()
        return torch.stack((position, velocity), 1), reward, terminated


#: Torch-native env classes by their gymnasium id.
TORCH_ENVS: dict[str, type[TorchNativeEnv]] = {
    cls.env_id: cls for cls in (CartPole, Pendulum, Acrobot, MountainCarContinuous)
}
