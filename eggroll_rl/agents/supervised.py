"""The earlier port's supervised API (seed 000): ``EGGROLLTrainer`` and ``eggroll_step``, on top of EggrollStrategy.

The model's ``forward(batch, labels=None, is_training=True)`` returns a dict with a scalar ``"loss"``; fitness is
``-loss``. Each member is evaluated through ``PerturbationContext.iterate()`` (one forward per member), because a
loss that averages over the whole batch cannot be split per member by ``batched_forward``.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn as nn

from ..strategy import EggrollStrategy
from .checkpoint import atomic_torch_save

__all__ = ["EGGROLLTrainer", "eggroll_step"]

log = logging.getLogger(__name__)


def _loss_of(model: nn.Module, batch, labels, is_training: bool) -> torch.Tensor:
    out = model(batch, labels=labels, is_training=is_training)
    if not isinstance(out, dict) or "loss" not in out:
        raise TypeError(
            "the model's forward(batch, labels=None, is_training=True) must return a dict with a 'loss' key, "
            f"got {type(out).__name__}"
        )
    loss = out["loss"]
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError(f"model output 'loss' must be a scalar tensor, got {loss!r:.60}")
    return loss.detach().reshape(())


class EGGROLLTrainer:
    """Supervised EGGROLL trainer with the earlier port's arguments.

    Args:
        model: module whose ``forward(batch, labels=None, is_training=True)`` returns ``{"loss": scalar}``.
        device: where the model lives; a CPU device enables ``allow_cpu`` (with a warning from nothing else).
        rank, sigma, learning_rate: EGGROLL's ``r``, ``sigma`` and ``lr``.
        n_workers: population size (even: members are antithetic pairs).
        grad_clip: global-norm clip of the ES gradient (None: off).
        use_weighted_loss: kept for compatibility; unused.
        log_steps: log metrics every this many steps (``logging`` at INFO).
        save_steps: save a checkpoint every this many steps into ``results_dir`` (None: never).
        normalize_fitness: z-score the fitness (else raw).
        base_seed: noise seed.
        optimizer: ``None`` (plain ``p += lr g``), ``"sgd"``, ``"adam"``, ``"adamw"`` or an optimizer instance.
        optimizer_kwargs: extra optimizer arguments.
        noise_reuse: reuse noise for blocks of this many steps.
        group_size: group-wise fitness normalization (must divide ``n_workers``).
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device | str | None = None,
        rank: int = 30,
        sigma: float = 0.01,
        learning_rate: float = 0.001,
        n_workers: int = 30,
        grad_clip: float | None = 1.0,
        use_weighted_loss: bool = False,
        log_steps: int = 100,
        save_steps: int | None = None,
        results_dir: str | None = None,
        normalize_fitness: bool = True,
        base_seed: int = 0,
        optimizer=None,
        optimizer_kwargs: dict | None = None,
        noise_reuse: int = 0,
        group_size: int = 0,
    ):
        device = torch.device(device) if device is not None else next(model.parameters()).device
        if save_steps is not None and results_dir is None:
            raise ValueError("save_steps is set but results_dir is None; give a directory for checkpoints")
        self.model = model
        self.device = device
        self.n_workers = n_workers
        self.log_steps = log_steps
        self.save_steps = save_steps
        self.results_dir = results_dir
        self.use_weighted_loss = use_weighted_loss
        self.strategy = EggrollStrategy(
            sigma=sigma,
            lr=learning_rate,
            rank=rank,
            optimizer=optimizer,
            optimizer_kwargs=optimizer_kwargs,
            noise_reuse=noise_reuse,
            fitness_shaping="zscore" if normalize_fitness else "none",
            group_size=group_size,
            grad_clip=grad_clip,
            seed=base_seed,
            allow_cpu=device.type == "cpu",
        )
        self.strategy.setup(model)
        self.global_step = 0
        self.history: list[dict] = []

    @torch.no_grad()
    def train_step(self, batch, labels=None) -> dict:
        """One generation on ``batch``: evaluate ``n_workers`` members, update. Returns metrics with ``loss``
        (the updated model's loss on the batch) and ``population_loss_mean``."""
        losses = []
        with self.strategy.perturb(self.n_workers, epoch=self.global_step) as pop:
            for _ in pop.iterate():
                losses.append(_loss_of(self.model, batch, labels, True))
        losses = torch.stack(losses).to(torch.float32)
        metrics = self.strategy.step(-losses)
        metrics["population_loss_mean"] = float(losses.mean())
        metrics["loss"] = float(_loss_of(self.model, batch, labels, False))
        metrics["step"] = self.global_step
        self.global_step += 1
        self.history.append(metrics)
        if self.log_steps and self.global_step % self.log_steps == 0:
            log.info("step %d: loss %.6f", self.global_step, metrics["loss"])
        if self.save_steps and self.global_step % self.save_steps == 0:
            self.save_checkpoint()
        return metrics

    def save_checkpoint(self, checkpoint_name: str | None = None) -> str:
        """Write model + strategy state atomically to ``results_dir``; returns the path."""
        if self.results_dir is None:
            raise ValueError("save_checkpoint needs results_dir")
        os.makedirs(self.results_dir, exist_ok=True)
        path = os.path.join(self.results_dir, checkpoint_name or f"checkpoint_{self.global_step}.pt")
        state = {"model": self.model.state_dict(), "strategy": self.strategy.state_dict(), "step": self.global_step}
        atomic_torch_save(state, path)
        return path


def eggroll_step(
    model: nn.Module,
    batch,
    device: torch.device | str | None = None,
    n_workers: int = 30,
    rank: int = 30,
    sigma: float = 0.01,
    learning_rate: float = 0.001,
    grad_clip: float | None = 1.0,
    normalize_fitness: bool = True,
    base_seed: int = 0,
    epoch: int = 0,
    labels=None,
) -> tuple[float, dict]:
    """One stateless EGGROLL step (plain ``p += lr g`` update). Returns ``(loss after the step, metrics)``."""
    trainer = EGGROLLTrainer(
        model, device, rank=rank, sigma=sigma, learning_rate=learning_rate, n_workers=n_workers,
        grad_clip=grad_clip, normalize_fitness=normalize_fitness, base_seed=base_seed, log_steps=0,
    )  # fmt: skip
    trainer.global_step = epoch
    metrics = trainer.train_step(batch, labels)
    return metrics["loss"], metrics
