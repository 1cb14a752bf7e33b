"""One env step of our BraxVecEnv against brax vmap(reset/step) on the same keys (CPU): reset observations, then one
step with actions 0.3.  PYTHONPATH=. taskset -c 1 python3 benchmarks/evosax_diff_envstep.py"""

import os

os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402  (after JAX_PLATFORMS)
import numpy as np  # noqa: E402
import torch  # noqa: E402

from eggroll_rl.envs.brax_adapter import BraxVecEnv  # noqa: E402

env = BraxVecEnv("halfcheetah", num_envs=4, device="cpu", seed=0, brax_backend="spring", episode_length=1000)
o = env.reset(seed=7).numpy().copy()
_, sub = jax.random.split(jax.random.PRNGKey(7))
st = jax.vmap(env._env.reset)(jax.random.split(sub, 4))
print("reset obs max diff", np.abs(o - np.asarray(st.obs)).max())
a = torch.full((4, 6), 0.3)
o2, r, *_ = env.step(a)
st2 = jax.vmap(env._env.step)(st, jax.numpy.full((4, 6), 0.3))
print("step obs diff", np.abs(o2.numpy() - np.asarray(st2.obs)).max(), "reward", r.numpy(), np.asarray(st2.reward))
