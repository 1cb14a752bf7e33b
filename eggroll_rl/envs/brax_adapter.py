"""Brax and MJX envs: ``jit(vmap(reset/step))`` in JAX, tensors crossing to torch by DLPack without a host copy.

- Physics backend: ``brax_backend`` is one of ``"generalized"``, ``"positional"``, ``"spring"``, ``"mjx"``
  (``make_env(..., brax_backend=...)`` or the id form ``"brax:halfcheetah"``). Default ``"positional"``.
- Compilation: the jitted batch functions are cached per (env, physics backend, episode length, env kwargs), and
  JAX caches one executable per input shape, so a given ``(env, num_envs)`` compiles once per process.
- Zero copy: actions go torch → JAX and the outputs come back by DLPack; on the GPU both sides share the buffer
  (``tests/envs/test_env_brax.py`` checks the data pointers). Outputs are fresh XLA buffers every step (nothing is
  donated), so tensors a caller keeps stay valid. The crossings follow the DLPack stream protocol (the consumer's
  stream waits on the producer's work; no host sync) but skip the two libraries' Python wrappers: the public
  ``jax.dlpack.from_dlpack`` took 70-120 µs of host time per call on the H100 machine, against a 2.5 ms
  GPU step (see ``_DLPackBridge``; it falls back to the public functions if jaxlib's internals differ).
- Memory: ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` is set before JAX is imported (here and in
  ``eggroll_rl.envs``), so JAX allocates on demand and leaves the GPU memory to torch. If JAX was imported
  earlier without it, a warning says so.
- Episodes: the adapter counts steps; ``truncated`` is True when an episode reaches ``episode_length``.
  ``terminated`` is the env's own ``done``. Autoreset is same-step and, as in Brax's ``AutoResetWrapper``,
  restores the env's initial state drawn at the last ``reset()`` (so an env's later episodes start where its
  first did; call ``reset(seed)`` for new starts).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

from eggroll_rl.choices import BraxBackend, options
from eggroll_rl.validation import check_choice, check_int

from .base import Box, NonFiniteError, StepResult, VecEnv, check_start_rows, resolve_device

__all__ = ["BraxVecEnv", "import_brax", "observation_size", "BRAX_BACKENDS"]

BRAX_BACKENDS = options(BraxBackend)


def _configure_jax_memory() -> None:
    if "jax" in sys.modules:
        if os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "").lower() not in ("false", "0"):
            warnings.warn(
                "JAX was imported before eggroll_rl.envs without XLA_PYTHON_CLIENT_PREALLOCATE=false: it may "
                "have preallocated most of the GPU memory that torch needs. Set the variable before importing "
                "jax.",
                stacklevel=3,
            )
    else:
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def import_brax() -> tuple[Any, Any]:
    """Import ``(jax, brax.envs)`` with on-demand GPU memory, or raise an ImportError naming the extra."""
    _configure_jax_memory()
    try:
        import jax
        from brax import envs as brax_envs
    except ImportError as e:
        raise ImportError("the 'brax' backend needs jax and brax: pip install eggroll-rl[brax]") from e
    _mend_brax_fluid(jax)
    _start_jax_clients(jax)
    return jax, brax_envs


def _start_jax_clients(jax: Any) -> None:
    """Start JAX's device clients here, under ``_on_torch_device``, before anything else asks JAX for its devices
    (the registry does, to choose a backend): starting them may leave another GPU current on this thread."""
    if torch.cuda.is_available():
        with _on_torch_device(torch.device("cuda", torch.cuda.current_device())):
            jax.devices()


@contextlib.contextmanager
def _on_torch_device(device: torch.device) -> Iterator[None]:
    """Keep torch's current CUDA device across JAX calls.

    JAX initialises its GPU clients (and runs work) on the calling thread, and CUDA's current device is per
    thread: with several GPUs visible, JAX may leave another GPU current, and then torch's implicit current-device
    uses (a CUDA event's device, the stream Triton launches on) point at the wrong GPU. The 2-GPU run of
    ``torchrun`` died so on rank 1 ("Event device ... does not match recording stream's device"). The device
    current on entry is current again on exit.
    """
    if device.type != "cuda":
        yield
        return
    before = torch.cuda.current_device()
    try:
        yield
    finally:
        if torch.cuda.current_device() != before:
            torch.cuda.set_device(before)


class _ClipWithAMin:
    """``jax.numpy`` as ``brax.fluid`` sees it, with a ``clip`` that still takes ``a_min``/``a_max``."""

    def __init__(self, jnp: Any) -> None:
        self._jnp = jnp

    def __getattr__(self, name: str) -> Any:
        return getattr(self._jnp, name)

    def clip(self, x: Any, min: Any = None, max: Any = None, *, a_min: Any = None, a_max: Any = None) -> Any:  # noqa: A002
        return self._jnp.clip(x, min if a_min is None else a_min, max if a_max is None else a_max)


def _mend_brax_fluid(jax: Any) -> None:
    # Brax 0.14's fluid model (the viscosity of Swimmer, the one env that has one) calls jnp.clip(..., a_min=...),
    # a keyword JAX has since removed: every Swimmer step raised a TypeError. Only that module's view of jax.numpy
    # changes.
    import inspect

    try:
        from brax import fluid
    except ImportError:  # another brax layout: nothing to mend
        return
    if "a_min" in inspect.signature(jax.numpy.clip).parameters or isinstance(fluid.jp, _ClipWithAMin):
        return
    fluid.jp = _ClipWithAMin(fluid.jp)


class _DLPackBridge:
    """torch ⇄ JAX crossings for one device, without a copy or a host sync, and with little host time.

    It does what ``jax.dlpack.from_dlpack`` and ``torch.from_dlpack`` do, minus their Python layers:
    - torch → JAX: JAX's stream for external ready events waits (by a CUDA event) on torch's current stream, then
      jaxlib wraps the DLPack capsule as an array defined on that stream;
    - JAX → torch: jaxlib makes torch's current stream wait on the array's definition event.

    jaxlib's DLPack functions live in ``jax._src.lib``, which is not a public API. They are checked once, here, by a
    round trip of a small tensor (values and data pointers); if anything differs, the public functions are used.
    """

    def __init__(self, jax: Any, jax_device: Any, device: torch.device) -> None:
        self._jax = jax
        self._jax_device = jax_device
        self._device = device
        self.fast = False
        try:
            from jax._src.lib import _jax, jaxlib_extension_version

            self._to_buffer = _jax.dlpack_managed_tensor_to_buffer
            self._to_capsule = _jax.buffer_to_dlpack_managed_tensor
            self._five_args = jaxlib_extension_version >= 467
            if device.type == "cuda":
                self._dl_type = 2  # kDLCUDA
                self._jax_stream = jax_device.get_stream_for_external_ready_events()
                self._jax_torch_stream = torch.cuda.ExternalStream(self._jax_stream, device=device)
                with torch.cuda.device(device):  # the event lives on this device, whichever is current
                    self._event = torch.cuda.Event()
            else:
                self._dl_type = 1  # kDLCPU
                self._jax_stream = None
            self.fast = True
            with _on_torch_device(device):
                probe = torch.arange(6, dtype=torch.float32, device=device).view(2, 3)
                shared = self.to_torch(self.to_jax(probe))
                made_by_jax = self.to_torch(jax.device_put(jax.numpy.arange(6, dtype=jax.numpy.float32), jax_device))
                self.fast = (
                    shared.data_ptr() == probe.data_ptr()
                    and bool(torch.equal(shared, probe))
                    and bool(torch.equal(made_by_jax.view(2, 3), probe))
                )
        except Exception:  # noqa: BLE001 - any mismatch with this jaxlib means: use the public path
            self.fast = False

    def to_jax(self, t: torch.Tensor) -> Any:
        """A JAX array sharing ``t``'s memory (``t`` contiguous, no grad), ready after torch's queued work."""
        if not self.fast:
            return self._jax.dlpack.from_dlpack(t)
        if self._jax_stream is not None:
            self._event.record(torch.cuda.current_stream(self._device))  # torch's current stream on this device
            self._jax_torch_stream.wait_event(self._event)
        capsule = torch.utils.dlpack.to_dlpack(t)
        if self._five_args:
            return self._to_buffer(capsule, self._jax_device, self._jax_stream, None, self._dl_type)
        return self._to_buffer(capsule, self._jax_device, self._jax_stream, None)

    def to_torch(self, x: Any) -> torch.Tensor:
        """A tensor sharing the JAX array ``x``'s memory; torch's current stream waits for it to be computed."""
        if not self.fast:
            return torch.from_dlpack(x)
        stream = None
        if self._jax_stream is not None:
            stream = torch.cuda.current_stream(self._device).cuda_stream
            stream = 1 if stream == 0 else stream  # DLPack's code for the legacy default stream
        return torch.utils.dlpack.from_dlpack(self._to_capsule(x, stream=stream))


_FN_CACHE: dict[tuple, tuple[Any, Callable, Callable]] = {}


def typed_like(jax: Any, reference: Any, state: Any) -> Any:
    """``state`` with each leaf of ``reference``'s dtype made strongly typed, as Brax's ``reset`` leaves are.

    A Brax ``step`` returns some leaves weakly typed (``reward``, ``done``, ``info`` entries made from Python floats);
    fed back into a jitted step, that state's signature differs from ``reset``'s and the step compiles a second time.
    The values are unchanged."""

    def like(ref, x):
        dtype = getattr(ref, "dtype", None)
        if dtype is None:
            return x
        if not hasattr(x, "dtype"):  # a Python scalar in the step's state
            return jax.numpy.asarray(x, dtype=dtype)
        return jax.lax.convert_element_type(x, dtype) if x.dtype == dtype else x

    return jax.tree_util.tree_map(like, reference, state)


def observation_size(env: Any) -> Any:
    """A Brax env's ``observation_size`` (an int, or the shapes of structured observations) from its reset traced
    abstractly (``jax.eval_shape``): nothing is compiled or run. Brax's own property runs ``reset`` op by op, which
    compiles a few hundred small XLA programs on JAX's default device: 5-8 s on a CPU for HalfCheetah or Humanoid,
    at every process's first env build."""
    import jax

    obs = jax.eval_shape(env.unwrapped.reset, jax.random.PRNGKey(0)).obs
    if isinstance(obs, jax.ShapeDtypeStruct):
        return int(obs.shape[-1])
    return jax.tree_util.tree_map(lambda x: x.shape, obs)


def _batch_functions(
    env_name: str, brax_backend: str, episode_length: int, env_kwargs: dict[str, Any]
) -> tuple[Any, Callable, Callable]:
    """``(env, jit(vmap(reset)), jit(vmap(step) + counters + autoreset))``, cached per configuration."""
    key = (env_name, brax_backend, episode_length, tuple(sorted((k, repr(v)) for k, v in env_kwargs.items())))
    if key in _FN_CACHE:
        return _FN_CACHE[key]
    jax, brax_envs = import_brax()
    import jax.numpy as jnp

    env = brax_envs.get_environment(env_name, backend=brax_backend, **env_kwargs)

    def reset(keys):
        state = jax.vmap(env.reset)(keys)
        return state, state.obs

    def step(state, first_state, steps, actions, flags):
        nxt = jax.vmap(env.step)(state, actions)
        steps = steps + 1
        terminated = nxt.done > 0.5
        truncated = steps >= episode_length
        done = terminated | truncated

        def restart(first, cur):
            mask = done.reshape(done.shape + (1,) * (cur.ndim - 1))
            return jnp.where(mask, first, cur)

        pipeline_state = jax.tree_util.tree_map(restart, first_state.pipeline_state, nxt.pipeline_state)
        obs = restart(first_state.obs, nxt.obs)
        new_state = nxt.replace(pipeline_state=pipeline_state, obs=obs, done=jnp.zeros_like(nxt.done))
        # The state handed back must have reset's exact types, or the second call compiles the step again: a Brax
        # step returns some leaves weakly typed (reward, done, info from Python floats) where reset's are not.
        new_state = typed_like(jax, first_state, new_state)
        steps = jnp.where(done, 0, steps)
        # NaN checks fused into the step: one tiny output read by the host instead of extra torch kernels.
        status = jnp.stack(
            [~jnp.isfinite(actions).all(), ~(jnp.isfinite(nxt.obs).all() & jnp.isfinite(nxt.reward).all())]
        )
        # Two packed outputs instead of five: each crossing to torch costs host time on every step, and the views
        # taken on the torch side (obs, final_obs, reward; terminated, truncated) are free and contiguous.
        floats = jnp.concatenate([obs.ravel(), nxt.obs.ravel(), nxt.reward.ravel().astype(obs.dtype)])
        bools = jnp.concatenate([terminated, truncated])
        return new_state, steps, floats, bools, flags | status

    fns = (env, jax.jit(reset), jax.jit(step))
    _FN_CACHE[key] = fns
    return fns


class BraxVecEnv(VecEnv):
    """A batch of Brax (or MJX) envs as a torch ``VecEnv``.

    Args:
        env_name: a Brax env name, e.g. ``"halfcheetah"``, ``"ant"``, ``"humanoid"``.
        num_envs: batch size ``B``.
        device: torch device; JAX runs on the matching device (``cuda:k`` → JAX GPU ``k``; ``cpu`` → JAX CPU).
        seed: initial states for the first ``reset()`` come from ``jax.random.PRNGKey(seed)``.
        brax_backend: ``"generalized"``, ``"positional"`` (default), ``"spring"`` or ``"mjx"``.
        episode_length: time limit (steps) after which ``truncated`` is True.
        check_finite: raise on NaN/inf actions, observations or rewards (checked inside the jitted step).
        check_every: read the NaN flags on the host every this many steps (default 64; 1: every step, which
            also names the bad rows). Each read is a host sync that stops JAX from queueing the next step early
            (every step: about a third of the throughput of the fast physics at 4096 envs; every 64: about 1 %). A NaN
            raises within ``k`` steps of appearing, and ``flush_checks()`` (which ``rollout`` calls before
            returning) reads them at once, so a rollout never returns a result computed from NaNs.
        **env_kwargs: passed to the Brax env's constructor.

    Actions are ``(B, action_size)`` floats in ``[-1, 1]``; observations ``(B, obs_size)`` float32.
    """

    backend = "brax"

    def __init__(
        self,
        env_name: str,
        num_envs: int = 1,
        device: str | torch.device | None = None,
        seed: int = 0,
        brax_backend: str = "positional",
        episode_length: int = 1000,
        check_finite: bool = True,
        check_every: int = 64,
        **env_kwargs: Any,
    ) -> None:
        jax, brax_envs = import_brax()
        if not isinstance(check_every, int) or check_every < 1:
            raise ValueError(f"check_every must be a positive int, got {check_every!r}")
        self.check_every = check_every
        self._since_check = 0
        check_choice("brax_backend", brax_backend, BRAX_BACKENDS)
        known = sorted(brax_envs._envs) if hasattr(brax_envs, "_envs") else None
        if known is not None and env_name not in known:
            raise ValueError(f"env_name {env_name!r} is not a Brax env; known: {known}")
        check_int("num_envs", num_envs, lo=1)
        if int(episode_length) < 1:
            raise ValueError(f"episode_length must be >= 1, got {episode_length}")
        self._jax = jax
        self.env_id = f"brax:{env_name}"
        self.brax_backend = brax_backend
        self.num_envs = num_envs
        self.device = resolve_device(device)
        self.check_finite = check_finite
        self.episode_length = int(episode_length)
        self._seed = int(seed)
        with _on_torch_device(self.device):
            self._init_jax(jax, env_name, env_kwargs)
        self._state = None
        self._first_state = None
        self._steps = None
        self._start_rows: Any = None  # ((num_envs,) jax int array, total): the batch row whose start each env takes
        # The JAX arrays behind the last tensors handed over (tests compare data pointers).
        self.last_jax_obs: Any = None
        self.last_jax_actions: Any = None

    def _init_jax(self, jax: Any, env_name: str, env_kwargs: dict[str, Any]) -> None:
        """Pick JAX's device, build the jitted functions, the spaces, the DLPack bridge and the key."""
        if self.device.type == "cuda":
            gpus = [d for d in jax.devices() if d.platform == "gpu"]
            if not gpus:
                raise RuntimeError(
                    f"device={self.device} but JAX sees no GPU (jax.devices() = {jax.devices()}); install a CUDA "
                    "build of jax (pip install 'jax[cuda12]') or use device='cpu'"
                )
            self._jax_device = gpus[self.device.index or 0]
        else:
            self._jax_device = jax.devices("cpu")[0]
        self._env, self._reset_fn, self._step_fn = _batch_functions(
            env_name, self.brax_backend, self.episode_length, env_kwargs
        )
        act = int(self._env.action_size)
        self.single_action_space = Box.from_bounds(-1.0, 1.0, (act,))
        obs_size = observation_size(self._env)
        if not isinstance(obs_size, int):
            raise TypeError(f"Brax env {env_name!r} has structured observations {obs_size}; expected a vector")
        self.single_observation_space = Box.from_bounds(-float("inf"), float("inf"), (obs_size,))
        self._bridge = _DLPackBridge(jax, self._jax_device, self.device)
        self._key = jax.device_put(jax.random.PRNGKey(int(self._seed)), self._jax_device)

    def set_reset_window(self, offset: int, total: int) -> None:
        """Make these envs rows ``offset .. offset+num_envs-1`` of a batch of ``total``: ``reset`` splits the key
        into ``total`` keys and keeps this window, so each env starts where that row of the single-process batch
        does (``torch.distributed`` training)."""
        check_int("total", total, lo=self.num_envs)
        check_int("offset", offset, lo=0, hi=total - self.num_envs)
        self.set_start_rows(torch.arange(offset, offset + self.num_envs), total)

    def set_start_rows(self, rows: Any, total: int) -> None:
        """Make env ``b`` start, at every ``reset``, where row ``rows[b]`` of a batch of ``total`` envs starts
        (``reset`` splits the key into ``total`` keys and picks ``rows``): envs given the same row share their initial
        state. Used by ``TrainConfig.members_per_start``; replaces a reset window (which is consecutive rows)."""
        rows = check_start_rows(rows, self.num_envs, total)
        # On this env's JAX device, under _on_torch_device: a plain jnp.asarray lands on JAX's default device (GPU 0),
        # which a device_put makes current for torch; on rank 1 of a 2-GPU torchrun the run then failed.
        with _on_torch_device(self.device):
            self._start_rows = (self._jax.device_put(rows.numpy().astype("int32"), self._jax_device), total)

    def reset(self, seed: int | None = None) -> torch.Tensor:
        """Draw new initial states (from ``seed`` if given); returns ``obs`` ``(num_envs, obs_dim)`` float32."""
        with _on_torch_device(self.device):
            return self._reset(seed)

    def _reset(self, seed: int | None) -> torch.Tensor:
        jax = self._jax
        if seed is not None:
            self._key = jax.device_put(jax.random.PRNGKey(int(seed)), self._jax_device)
        self._key, sub = jax.random.split(self._key)
        if self._start_rows is None:
            keys = jax.random.split(sub, self.num_envs)
        else:
            rows, total = self._start_rows
            keys = jax.random.split(sub, total)[rows]
        with jax.default_device(self._jax_device):
            self._state, obs = self._reset_fn(keys)
            # committed to the device as the step's outputs are: an uncommitted input compiles the step a second time
            self._steps = jax.device_put(jax.numpy.zeros(self.num_envs, dtype=jax.numpy.int32), self._jax_device)
        self._first_state = self._state
        self._flags = jax.device_put(jax.numpy.zeros(2, dtype=bool), self._jax_device)
        self._no_flags = self._flags
        self._since_check = 0
        self.last_jax_obs = obs
        obs_t = self._bridge.to_torch(obs)
        self._check_outputs(obs_t, None, "reset")
        return obs_t

    def step(self, actions: torch.Tensor) -> StepResult:
        """One transition of every env; see ``eggroll_rl.envs.base``. ``info["final_obs"]`` as documented there."""
        with _on_torch_device(self.device):
            return self._step(actions)

    def _step(self, actions: torch.Tensor) -> StepResult:
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        # Shape/dtype/device on the host; NaN actions and outputs inside the jitted step (``status``).
        self._check_actions(actions, check_values=False)
        if actions.dtype != torch.float32 or not actions.is_contiguous():
            actions = actions.to(torch.float32).contiguous()
        if actions.requires_grad:
            actions = actions.detach()
        jax_actions = self._bridge.to_jax(actions)
        self.last_jax_actions = jax_actions
        self._state, self._steps, floats, bools, self._flags = self._step_fn(
            self._state, self._first_state, self._steps, jax_actions, self._flags
        )
        self.last_jax_obs = floats  # obs is its first B * obs_dim elements
        B, d = self.num_envs, self.single_observation_space.shape[0]
        obs_t, final_t, reward_t = self._bridge.to_torch(floats).split_with_sizes([B * d, B * d, B])
        obs_t, final_t = obs_t.view(B, d), final_t.view(B, d)
        terminated_t, truncated_t = self._bridge.to_torch(bools).chunk(2)
        self._since_check += 1
        if self.check_finite and self._since_check >= self.check_every:
            self.flush_checks(actions, final_t, reward_t)
        return obs_t, reward_t, terminated_t, truncated_t, {"final_obs": final_t}

    def flush_checks(
        self,
        actions: torch.Tensor | None = None,
        final_obs: torch.Tensor | None = None,
        reward: torch.Tensor | None = None,
    ) -> None:
        """Read the NaN flags accumulated since the last read (one host sync); raise if any is set."""
        if not self.check_finite or self._state is None or self._since_check == 0:
            return
        steps, self._since_check = self._since_check, 0
        bad_actions, bad_outputs = (bool(v) for v in self._jax.device_get(self._flags))
        self._flags = self._no_flags
        when = "" if steps == 1 else f" during the last {steps} steps"
        if bad_actions:
            rows = []
            if actions is not None and steps == 1:
                rows = (~torch.isfinite(actions).all(1)).nonzero().flatten()[:5].tolist()
            raise ValueError(
                f"actions contained NaN/inf{when}{f' in rows {rows}' if rows else ''}; expected finite values "
                "(the envs' states are now invalid: call reset())"
            )
        if bad_outputs:
            if final_obs is not None and reward is not None and steps == 1:
                self._check_outputs(final_obs, reward, "step")
            raise NonFiniteError(
                f"{type(self).__name__}({self.env_id!r}): the env returned NaN/inf observations or rewards{when}; "
                "expected finite values. The simulation probably diverged (check the actions' scale)."
            )

    # ------------------------------------------------------------- for loops written in JAX
    def jax_reset_state(self) -> tuple[Any, Any, Any]:
        """What a JAX loop of its own needs to continue from the last ``reset()``: ``(brax_env, state, steps)``.

        ``brax_env`` is the underlying Brax env (vmap its ``step`` inside your jitted loop), ``state`` the batched
        Brax state ``(num_envs, ...)`` that ``reset()`` drew (start rows, reset window and seed applied), ``steps``
        the per-env step counters ``(num_envs,)`` int32 (an episode is truncated when its counter reaches
        ``episode_length``). Nothing is copied; this env's own state is not changed. Used by
        ``eggroll_rl.agents.jax_rollout``.
        """
        if self._state is None:
            raise RuntimeError("call reset() before jax_reset_state()")
        return self._env, self._state, self._steps

    def compile_reset(self) -> tuple[Any, Any, Any]:
        """Compile the batched reset for this env's batch without running it (nothing is drawn, nothing changes);
        returns ``(brax_env, state, steps)`` as ``jax_reset_state()`` will after a ``reset()``, with ``state`` and
        ``steps`` as ``jax.ShapeDtypeStruct`` trees: the shapes to compile a JAX loop of one's own ahead of time
        (``jax.jit(f).lower(...).compile()``; JAX's compilation cache then serves the later call)."""
        jax = self._jax
        # committed to this env's device, as reset()'s keys and outputs are: the same signature, the same program
        on_device = jax.sharding.SingleDeviceSharding(self._jax_device)

        def placed(x: Any) -> Any:
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=on_device)

        with self.jax_scope():
            keys = placed(jax.eval_shape(lambda: jax.random.split(jax.random.PRNGKey(0), self.num_envs)))
            self._reset_fn.lower(keys).compile()
            state = jax.tree_util.tree_map(placed, jax.eval_shape(self._reset_fn, keys)[0])
        return self._env, state, placed(jax.ShapeDtypeStruct((self.num_envs,), jax.numpy.int32))

    @contextlib.contextmanager
    def jax_scope(self) -> Iterator[None]:
        """The block's JAX calls run on this env's JAX device, and torch's current CUDA device is kept."""
        with _on_torch_device(self.device), self._jax.default_device(self._jax_device):
            yield

    def to_jax(self, t: torch.Tensor) -> Any:
        """A JAX array on this env's device sharing ``t``'s memory (``t`` is made contiguous first; no grad)."""
        with _on_torch_device(self.device):
            return self._bridge.to_jax(t.detach().contiguous())

    def to_torch(self, x: Any) -> torch.Tensor:
        """A tensor sharing the JAX array ``x``'s memory, on this env's device."""
        with _on_torch_device(self.device):
            return self._bridge.to_torch(x)

    def synchronize(self) -> None:
        """Block until JAX has finished the queued steps (its dispatch threads are idle afterwards)."""
        if self._state is not None:
            self._jax.block_until_ready((self._state, self._steps, self._flags))

    def close(self) -> None:
        self._state = self._first_state = self._steps = None
        self.last_jax_obs = self.last_jax_actions = None
