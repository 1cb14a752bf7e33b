"""Same noise, same fitness -> is evosax 0.3.2 ``Open_ES``'s update the same as ``EggrollStrategy.step``'s?

CPU only. Our strategy (pure-torch path, ``allow_cpu=True``) draws the population's noise for the HalfCheetah policy
shape (17 -> 64 -> 64 -> 6, eggroll's settings: N=2048, sigma 0.02, Adam lr 0.01, centered ranks, antithetic);
every member's dense perturbation is formed from that noise (``PerturbationContext.noise_of``) and handed to evosax
as its population (``Open_ES.tell`` recovers ``z = (x - mean) / std`` from the population, so it takes any noise).
Both get the same fitness vector and update; the script prints, per generation, the norms and the cosine of

- the gradient: ours from ``strategy.estimate_gradient`` (ascent), evosax's from an ``Open_ES`` with
  ``optax.sgd(1.0)`` (its mean moves by ``-grad``: the gradient of the fitness it minimizes, ``-f``);
- the Adam step: ours ``p_after - p_before``, evosax's ``mean_after - mean_before`` (``optax.adam(lr)``).

evosax is imported from its wheel unpacked at ``--evosax-path`` (``unzip evosax-0.3.2-py3-none-any.whl -d DIR``).

    taskset -c 1 python3 benchmarks/evosax_diff_update.py --evosax-path /tmp/evosax_src
"""

from __future__ import annotations

import argparse
import math
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def flat_torch(policy) -> torch.Tensor:  # noqa: F821
    """The policy's parameters flattened in evosax's ravel order of ``[(W_in_out, b), ...]`` (``W`` transposed)."""
    import torch

    layers = [m for m in policy.trunk if isinstance(m, torch.nn.Linear)] + [policy.head]
    return torch.cat([t for m in layers for t in (m.weight.detach().T.reshape(-1), m.bias.detach().reshape(-1))]).cpu()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--evosax-path", default="/tmp/evosax_src")
    ap.add_argument("--generations", type=int, default=5)
    ap.add_argument("--population", type=int, default=2048)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--sigma", type=float, default=0.02)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--signal", type=float, default=1.0, help="fitness = signal * <c, E_i> + N(0, 1)")
    ap.add_argument("--device", default="cpu", help="cuda: our strategy's GPU path (Triton kernels, fused Adam)")
    args = ap.parse_args()
    sys.path.insert(0, args.evosax_path)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import torch
    from evosax.algorithms import Open_ES

    from eggroll_rl import EggrollStrategy
    from eggroll_rl.agents.policy import MLPPolicy

    jax.config.update("jax_enable_x64", False)
    torch.manual_seed(0)
    n, sigma, lr, r = args.population, args.sigma, args.lr, args.rank
    device = torch.device(args.device)
    policy = MLPPolicy(17, 6, False, (64, 64), activation="tanh", weight_init="glorot").to(device)
    strategy = EggrollStrategy(
        sigma=sigma, lr=lr, rank=r, optimizer="adam", antithetic=True, fitness_shaping="centered_rank",
        seed=0, allow_cpu=device.type == "cpu",
    )  # fmt: skip
    strategy.setup(policy)
    specs = strategy.specs
    sizes = [(s.name, tuple(s.param.shape)) for s in specs]
    print("params:", sizes, "D =", sum(s.param.numel() for s in specs))

    # evosax's solution pytree: [(W (in, out), b), ...] with our initial values
    layers = [m for m in policy.trunk if isinstance(m, torch.nn.Linear)] + [policy.head]
    solution = [
        (jnp.asarray(m.weight.detach().T.cpu().numpy()), jnp.asarray(m.bias.detach().cpu().numpy())) for m in layers
    ]
    es_adam = Open_ES(
        population_size=n, solution=solution, use_antithetic_sampling=True, optimizer=optax.adam(lr),
        std_schedule=optax.constant_schedule(sigma),
    )  # fmt: skip
    es_sgd = Open_ES(
        population_size=n, solution=solution, use_antithetic_sampling=True, optimizer=optax.sgd(1.0),
        std_schedule=optax.constant_schedule(sigma),
    )  # fmt: skip
    params = es_adam.default_params
    state = es_adam.init(jax.random.PRNGKey(0), solution, params)
    rng = np.random.default_rng(0)
    d = sum(s.param.numel() for s in specs)
    c = rng.standard_normal(d).astype(np.float32)
    c /= np.linalg.norm(c)

    def cos(a, b):
        return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))

    for gen in range(args.generations):
        theta = flat_torch(policy).numpy().astype(np.float32)
        assert np.allclose(theta, np.asarray(state.mean), atol=1e-6), "means diverged"
        with strategy.perturb(population_size=n, epoch=gen) as pop:
            # dense sigma * E_i of every member, in evosax's flat order
            ids = torch.arange(n // 2, device=device)
            parts = []
            for m in layers:
                spec_w = next(s for s in specs if s.param is m.weight)
                spec_b = next(s for s in specs if s.param is m.bias)
                a = pop.noise_of(spec_w, "A", ids)  # (U, out, r)
                b = pop.noise_of(spec_w, "B", ids)  # (U, in, r)
                e_w = torch.einsum("uor,uir->uio", a, b) / math.sqrt(r)  # (U, in, out): W^T's layout
                e_b = pop.noise_of(spec_b, "eps", ids)  # (U, out)
                parts += [e_w.reshape(n // 2, -1), e_b.reshape(n // 2, -1)]
            e_pairs = torch.cat(parts, dim=1).cpu().numpy()  # (U, D)
            # spot check against the library's own dense perturbation of member 3 (noise 1, sign -1)
            w0 = layers[0].weight
            dense = pop.perturbation(3, next(s.name for s in specs if s.param is w0)).T.reshape(-1).cpu().numpy()
            assert np.allclose(dense, -sigma * e_pairs[1, : dense.size], atol=1e-6)
            # the batched forward (Triton on CUDA) against the policy run with each member's dense weights
            x = torch.randn(8, 17, generator=torch.Generator().manual_seed(gen)).to(device)
            members = [0, 1, 2, 3, n - 2, n - 1]
            with torch.no_grad():
                got = pop.batched_forward(
                    policy,
                    x.repeat(len(members), 1),
                    member_ids=torch.tensor(members, device=device).repeat_interleave(8),
                )
                want = []
                for i in members:
                    weights = {s.name: s.param.detach() + pop.perturbation(i, s.name) for s in specs}
                    want.append(torch.func.functional_call(policy, weights, (x,)))
                fwd_err = float((got - torch.cat(want)).abs().max())
        sign = np.tile([1.0, -1.0], n // 2).astype(np.float32)
        e_members = e_pairs[np.arange(n) // 2] * sign[:, None]  # member i: s_i E_{i//2}
        f = (args.signal * e_members @ c + rng.standard_normal(n)).astype(np.float32)
        population = jnp.asarray(theta[None, :] + sigma * e_members)
        pop_tree = jax.vmap(es_adam._unravel_solution)(population)

        # ours: gradient (ascent) and Adam step
        from eggroll_rl.fitness import shape_fitness

        shaped = shape_fitness(torch.from_numpy(f).to(device), "centered_rank")
        g_ours = [t.clone() for t in strategy.estimate_gradient(shaped, n, gen)]
        by_param = {s.param: g for s, g in zip(specs, g_ours)}
        g_ours_flat = torch.cat([t for m in layers for t in (by_param[m.weight].T.reshape(-1), by_param[m.bias])])
        g_ours_flat = g_ours_flat.cpu().numpy()
        strategy.step(torch.from_numpy(f).to(device))
        step_ours = flat_torch(policy).numpy() - theta

        # evosax: gradient via sgd(1.0) from the same mean, Adam step from the running state
        sgd_state = es_sgd.init(jax.random.PRNGKey(0), es_sgd._unravel_solution(jnp.asarray(theta)), params)
        sgd_after, _ = es_sgd.tell(jax.random.PRNGKey(1), pop_tree, jnp.asarray(-f), sgd_state, params)
        g_evosax = np.asarray(sgd_state.mean - sgd_after.mean)  # the gradient of -f it descends
        before = np.asarray(state.mean)
        state, _ = es_adam.tell(jax.random.PRNGKey(1), pop_tree, jnp.asarray(-f), state, params)
        step_evosax = np.asarray(state.mean) - before

        # the explicit formula: g = 1/(N sigma) sum_i z_i (sigma E_i) / sigma with our shaped z
        z = shaped.cpu().numpy()
        g_formula = (z @ e_members) / (n * sigma)
        print(
            f"gen {gen}: |g_ours| {np.linalg.norm(g_ours_flat):.4f} |g_evosax| {np.linalg.norm(g_evosax):.4f} "
            f"|g_formula| {np.linalg.norm(g_formula):.4f} cos(g_ours,-g_evosax) {cos(g_ours_flat, -g_evosax):.6f} "
            f"max|g_ours+g_evosax| {np.abs(g_ours_flat + g_evosax).max():.2e} cos(g_ours,g_formula) "
            f"{cos(g_ours_flat, g_formula):.6f} max|batched_forward - dense forward| {fwd_err:.2e}"
        )
        n_ours, n_evosax = np.linalg.norm(step_ours), np.linalg.norm(step_evosax)
        rms_ours, rms_evosax = np.sqrt(np.mean(step_ours**2)), np.sqrt(np.mean(step_evosax**2))
        print(
            f"        |step_ours| {n_ours:.6f} |step_evosax| {n_evosax:.6f} ratio {n_ours / n_evosax:.6f} "
            f"cos {cos(step_ours, step_evosax):.6f} max|diff| {np.abs(step_ours - step_evosax).max():.2e} "
            f"rms/param ours {rms_ours:.5f} evosax {rms_evosax:.5f}"
        )
        # resync evosax's mean to ours (float rounding only) so the next generation starts from the same point
        state = state.replace(mean=jnp.asarray(flat_torch(policy).numpy()))


if __name__ == "__main__":
    main()
