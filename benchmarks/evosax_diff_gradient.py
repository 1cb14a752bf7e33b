"""How well does one generation's ES gradient point, low-rank (eggroll, r=4) against full-rank (evosax/OpenES), for
eggroll's default network and for the evosax peer's (glorot + tanh)? CPU, a synthetic differentiable fitness.

Fitness of a policy ``pi`` (17 -> 64 -> 64 -> 6, tanh actions): ``f = mean_x c(x) . pi(x)`` over ``--obs`` inputs
``x ~ N(0, 1)`` clipped to +-10 (what normalized observations look like) with a fixed random "advantage" field
``c(x) = tanh(C x)`` (6 outputs) — a stand-in for dR/da: it rewards moving actions in a state-dependent direction.
Its true gradient comes from autograd. Per draw: N members (antithetic), sigma, centered ranks, gradient
``(1/(N sigma)) sum z_i eps_i``; printed: cosine with the true gradient (whole vector and per layer), over
``--draws`` draws. Low-rank: ``EggrollStrategy`` (pure-torch path) ``perturb`` + ``batched_forward`` +
``estimate_gradient``; full-rank: dense Gaussian noise on every parameter (what evosax's Open_ES draws).

    taskset -c 1 python3 benchmarks/evosax_diff_gradient.py
"""

from __future__ import annotations

import argparse


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--population", type=int, default=2048)
    ap.add_argument("--sigma", type=float, default=0.02)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--obs", type=int, default=128)
    ap.add_argument("--draws", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from torch.func import functional_call

    from eggroll_rl import EggrollStrategy
    from eggroll_rl.agents.policy import MLPPolicy
    from eggroll_rl.fitness import shape_fitness

    torch.set_num_threads(1)
    n, sigma = args.population, args.sigma
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(args.obs, 17, generator=g).clamp(-10, 10)
    cmat = torch.randn(17, 6, generator=g)
    c = torch.tanh(x @ cmat)  # (obs, 6)

    def fitness_of(actions: torch.Tensor) -> torch.Tensor:  # actions (..., obs, 6) -> (...)
        return (actions * c).sum(-1).mean(-1)

    def cos(a, b):
        return float(torch.dot(a, b) / (a.norm() * b.norm() + 1e-30))

    for init, act in (("torch", "pqn"), ("glorot", "tanh"), ("glorot", "pqn"), ("torch", "tanh")):
        torch.manual_seed(args.seed)
        policy = MLPPolicy(17, 6, False, (64, 64), activation=act, weight_init=init, obs_norm=False)
        names = [k for k, _ in policy.named_parameters()]
        params = dict(policy.named_parameters())
        f0 = fitness_of(policy(x))
        true = torch.autograd.grad(f0, list(params.values()))
        true_flat = torch.cat([t.reshape(-1) for t in true])
        res = {"lowrank": [], "fullrank": []}
        per_layer = {"lowrank": [], "fullrank": []}
        for draw in range(args.draws):
            # low-rank: the library's own population and gradient estimate
            strategy = EggrollStrategy(
                sigma=sigma, lr=0.01, rank=args.rank, antithetic=True, fitness_shaping="centered_rank",
                seed=args.seed * 100 + draw, allow_cpu=True,
            )  # fmt: skip
            strategy.setup(policy)
            with torch.no_grad(), strategy.perturb(population_size=n, epoch=draw) as pop:
                ids = torch.arange(n).repeat_interleave(args.obs)
                out = pop.batched_forward(policy, x.repeat(n, 1), member_ids=ids).view(n, args.obs, 6)
            f = fitness_of(out)
            z = shape_fitness(f, "centered_rank")
            grads = strategy.estimate_gradient(z, n, draw)
            by_name = {s.name: gr for s, gr in zip(strategy.specs, grads)}
            est = [by_name[k] for k in names]
            res["lowrank"].append(cos(torch.cat([t.reshape(-1) for t in est]), true_flat))
            per_layer["lowrank"].append([cos(e.reshape(-1), t.reshape(-1)) for e, t in zip(est, true)])
            # full-rank: dense Gaussian noise on every parameter, antithetic pairs
            gen = torch.Generator().manual_seed(10_000 + draw)
            eps = {k: torch.randn((n // 2, *p.shape), generator=gen) for k, p in params.items()}
            sign = torch.tensor([1.0, -1.0]).repeat(n // 2)
            j = torch.arange(n) // 2
            with torch.no_grad():
                member = {k: p.detach() + sigma * sign.view(-1, *[1] * p.dim()) * eps[k][j] for k, p in params.items()}
                out = torch.vmap(lambda pp: functional_call(policy, pp, (x,)))(member)  # noqa: B023  (called here)
            f = fitness_of(out)
            z = shape_fitness(f, "centered_rank")
            w = torch.zeros(n // 2).index_add_(0, j, z * sign) / (n * sigma)
            est = [torch.tensordot(w, eps[k], dims=1) for k in names]
            res["fullrank"].append(cos(torch.cat([t.reshape(-1) for t in est]), true_flat))
            per_layer["fullrank"].append([cos(e.reshape(-1), t.reshape(-1)) for e, t in zip(est, true)])
        print(
            f"{init}+{act}: |true grad| {true_flat.norm():.4f}; per-layer |true| "
            f"{[round(float(t.norm()), 4) for t in true]}"
        )
        for kind in ("lowrank", "fullrank"):
            v = torch.tensor(res[kind])
            layers = torch.tensor(per_layer[kind]).mean(0)
            print(
                f"   {kind:8s}: cos(g_hat, true) {float(v.mean()):.3f} +- {float(v.std()):.3f} "
                f"per layer {[round(float(t), 3) for t in layers]} ({names})"
            )


if __name__ == "__main__":
    main()
