"""The earlier port's supervised API (seed 000): ``EGGROLLTrainer`` and ``eggroll_step``, on top of EggrollStrategy.

Two ways to evaluate a generation, with the same noise, fitness (``-mean loss`` over the batch) and update:

* **batched** (the default whenever it applies): the batch is repeated once per member, ``(N * B, ...)`` rows with
  ``member_ids = arange(N).repeat_interleave(B)``, and run through ``PerturbationContext.batched_forward`` in
  chunks of at most ``max_batch_rows`` rows; the per-sample losses ``(N * B,)`` are averaged per member.
* **loop**: ``PerturbationContext.iterate()`` writes one member at a time into the model, ``N`` forwards per step.

The batched path needs per-sample losses, so it applies when the model returns predictions and the trainer knows
the loss: a ``loss_fn`` is given (a name from ``LOSSES``, a callable ``(predictions, targets) -> (B, ...)``
per-sample losses, or a ``torch.nn`` loss module, used with ``reduction="none"``), or the model's ``forward`` has no
``labels`` argument (it returns predictions) and the loss is inferred from the labels: integer labels ->
``"cross_entropy"``, floating -> ``"mse"``. It falls back to the loop when the model is seed 000's kind
(``forward(batch, labels=None, is_training=True)`` returning ``{"loss": scalar}``, a mean nobody can split per
member), when ``batch`` is not a tensor, or (with a warning, once) when ``batched_forward`` raises
``NotImplementedError`` for a layer it cannot perturb. ``batched=True`` makes each of those an error instead;
``batched=False`` always loops.

The two paths agree to float rounding, not bit for bit: the loop multiplies by the materialized member weight
``W + A' B^T`` (rounded to float32 once), the batched path computes ``x W^T + (x B) A'^T``.
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
import warnings
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..choices import FitnessShaping, LowPrecision
from ..strategy import EggrollStrategy
from ..validation import check_choice, check_int, invalid
from .checkpoint import atomic_torch_save

__all__ = ["DEFAULT_MAX_BATCH_ROWS", "LOSSES", "EGGROLLTrainer", "eggroll_step"]

log = logging.getLogger(__name__)

LossFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]

# The named per-sample losses a trainer accepts as ``loss_fn`` (and infers from the labels' dtype).
LOSSES: dict[str, LossFn] = {
    "cross_entropy": lambda predictions, targets: F.cross_entropy(predictions, targets, reduction="none"),
    "mse": lambda predictions, targets: F.mse_loss(predictions, targets, reduction="none"),
}
# Rows (members x batch samples) per batched forward: bounds the activations held at once. At 32768 rows a
# 1024-wide float32 layer is 128 MiB; a chunk always holds at least one member's whole batch.
DEFAULT_MAX_BATCH_ROWS = 1 << 15


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


def _takes_labels(model: nn.Module) -> bool:
    """Seed 000's model kind: ``forward(batch, labels=None, is_training=True)`` returning ``{"loss": ...}``."""
    try:
        return "labels" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _resolve_loss_fn(loss_fn) -> LossFn | None:
    if loss_fn is None or (callable(loss_fn) and not isinstance(loss_fn, nn.Module)):
        return loss_fn
    if isinstance(loss_fn, str):
        return LOSSES[check_choice("loss_fn", loss_fn, LOSSES)]
    if isinstance(loss_fn, nn.Module) and isinstance(getattr(loss_fn, "reduction", None), str):
        if loss_fn.reduction != "none":  # a copy, so the user's module keeps its reduction
            loss_fn = copy.copy(loss_fn)
            loss_fn.reduction = "none"
        return loss_fn
    raise invalid(
        "loss_fn",
        loss_fn,
        f"None, one of {list(LOSSES)}, a callable (predictions, targets) -> per-sample losses, or a torch.nn loss "
        "module with a 'reduction' attribute",
        TypeError,
    )


def _per_sample(losses, rows: int) -> torch.Tensor:
    """``(rows,)`` float32: the loss function's output averaged over every axis but the first."""
    if not isinstance(losses, torch.Tensor) or losses.dim() == 0 or losses.shape[0] != rows:
        shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ValueError(
            f"loss_fn returned {shape}: expected per-sample losses of shape ({rows}, ...), one per row of "
            "predictions (use reduction='none')"
        )
    return losses.detach().to(torch.float32).reshape(rows, -1).mean(dim=1)


def _repeat(t: torch.Tensor, n: int) -> torch.Tensor:
    """``(B, ...) -> (n * B, ...)``: the batch once per member, member-major."""
    return t.unsqueeze(0).expand(n, *t.shape).reshape(n * t.shape[0], *t.shape[1:])


class EGGROLLTrainer:
    """Supervised EGGROLL trainer with the earlier port's arguments, plus the batched path (see the module docstring).

    Args:
        model: either seed 000's kind, whose ``forward(batch, labels=None, is_training=True)`` returns
            ``{"loss": scalar}`` (evaluated by the loop), or a model whose ``forward(batch)`` returns predictions
            ``(B, ...)`` (evaluated batched, with ``loss_fn`` or the loss inferred from the labels).
        device: where the model lives; a CPU device enables ``allow_cpu``.
        rank, sigma, learning_rate: EGGROLL's ``r``, ``sigma`` and ``lr``.
        n_workers: population size (even: members are antithetic pairs).
        grad_clip: global-norm clip of the ES gradient (None: off).
        use_weighted_loss: kept for compatibility; unused.
        log_steps: log metrics every this many steps (``logging`` at INFO).
        save_steps: save a checkpoint every this many steps into ``results_dir`` (None: never).
        normalize_fitness: z-score the fitness (else raw); ``fitness_shaping`` overrides it.
        base_seed: noise seed.
        optimizer: ``None`` (plain ``p += lr g``), ``"sgd"``, ``"adam"``, ``"adamw"`` or an optimizer instance.
        optimizer_kwargs: extra optimizer arguments.
        noise_reuse: reuse noise for blocks of this many steps.
        group_size: group-wise fitness normalization (must divide ``n_workers``).
        loss_fn: per-sample loss of a predictions model: a name in ``LOSSES``, a callable
            ``(predictions, targets) -> (B, ...)`` (trailing axes are averaged), or a ``torch.nn`` loss module (used
            with ``reduction="none"``). None: inferred from the labels' dtype (integer: cross-entropy, else MSE).
        batched: ``None`` (default) uses the batched path whenever it applies and the loop otherwise; ``True``
            requires it (an error where it cannot run); ``False`` always loops.
        max_batch_rows: at most this many rows (members x batch samples) per batched forward; the population is
            evaluated in chunks of ``max(1, max_batch_rows // B)`` members (rounded down to an even count when
            antithetic). It bounds memory and leaves the results unchanged.
        fitness_shaping: ``"zscore"``, ``"centered_rank"`` or ``"none"``; None follows ``normalize_fitness``.
        low_precision: how a bf16/fp16 model's weights are updated: ``"master"`` (float32 master copies) or
            ``"stochastic"`` (bf16 in place, rounded stochastically; plain ascent or SGD); see ``EggrollStrategy``.

    Attributes:
        last_losses: ``(n_workers,)`` float32 mean loss of each member in the last ``train_step`` (fitness is its
            negative).
        last_path: ``"batched"`` or ``"loop"``, the path the last ``train_step`` took.
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
        loss_fn: str | LossFn | nn.Module | None = None,
        batched: bool | None = None,
        max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
        fitness_shaping: FitnessShaping | None = None,
        low_precision: LowPrecision = "master",
    ):
        device = torch.device(device) if device is not None else next(model.parameters()).device
        if save_steps is not None and results_dir is None:
            raise ValueError("save_steps is set but results_dir is None; give a directory for checkpoints")
        if batched not in (None, True, False):
            raise invalid("batched", batched, "None (batched where it applies), True or False", TypeError)
        check_int("max_batch_rows", max_batch_rows, 1)
        self.loss_fn = _resolve_loss_fn(loss_fn)
        # Seed 000's models compute their own (mean) loss; any other model returns predictions.
        self.predicts = self.loss_fn is not None or not _takes_labels(model)
        if batched is True and not self.predicts:
            raise ValueError(
                "batched=True needs per-sample losses, but the model's forward takes labels and returns a mean "
                "loss; give the trainer a loss_fn and make forward(batch) return predictions, or use batched=None"
            )
        self.model = model
        self.device = device
        self.n_workers = n_workers
        self.log_steps = log_steps
        self.save_steps = save_steps
        self.results_dir = results_dir
        self.use_weighted_loss = use_weighted_loss
        self.batched = batched
        self.max_batch_rows = max_batch_rows
        if fitness_shaping is None:
            fitness_shaping = "zscore" if normalize_fitness else "none"
        self.strategy = EggrollStrategy(
            sigma=sigma,
            lr=learning_rate,
            rank=rank,
            optimizer=optimizer,
            optimizer_kwargs=optimizer_kwargs,
            noise_reuse=noise_reuse,
            fitness_shaping=fitness_shaping,
            group_size=group_size,
            grad_clip=grad_clip,
            seed=base_seed,
            allow_cpu=device.type == "cpu",
            low_precision=low_precision,
        )
        self.strategy.setup(model)
        self.global_step = 0
        self.history: list[dict] = []
        self.last_losses: torch.Tensor | None = None
        self.last_path: str | None = None

    # ------------------------------------------------------------- losses
    def _loss_fn_for(self, labels) -> LossFn:
        if self.loss_fn is not None:
            return self.loss_fn
        if isinstance(labels, torch.Tensor) and not labels.dtype.is_floating_point and labels.dtype != torch.bool:
            return LOSSES["cross_entropy"]
        if isinstance(labels, torch.Tensor) and labels.dtype.is_floating_point:
            return LOSSES["mse"]
        raise invalid(
            "labels",
            labels if not isinstance(labels, torch.Tensor) else f"tensor of dtype {labels.dtype}",
            "integer class labels or floating targets (a tensor) to infer the loss from; or pass loss_fn to the "
            "trainer",
            TypeError,
        )

    def _sample_losses(self, predictions, labels, rows: int) -> torch.Tensor:
        if not isinstance(predictions, torch.Tensor):
            raise TypeError(
                f"the model's forward(batch) returned {type(predictions).__name__}; with a loss_fn (or a forward "
                "without a labels argument) it must return the predictions as a tensor (B, ...)"
            )
        return _per_sample(self._loss_fn_for(labels)(predictions, labels), rows)

    def _mean_loss(self, batch, labels, is_training: bool) -> torch.Tensor:
        """The current model's (or the current ``iterate()`` member's) mean loss on the batch, a 0-d tensor."""
        if not self.predicts:
            return _loss_of(self.model, batch, labels, is_training)
        predictions = self.model(batch)
        rows = predictions.shape[0] if isinstance(predictions, torch.Tensor) and predictions.dim() else 0
        return self._sample_losses(predictions, labels, rows).mean()

    def _losses_loop(self, pop, batch, labels) -> torch.Tensor:
        return torch.stack([self._mean_loss(batch, labels, True) for _ in pop.iterate()]).to(torch.float32)

    def _losses_batched(self, pop, batch: torch.Tensor, labels) -> torch.Tensor:
        """``(N,)`` mean losses from ``batched_forward`` over the batch repeated per member, chunk by chunk."""
        size, n_total = batch.shape[0], self.n_workers
        chunk = max(1, self.max_batch_rows // max(size, 1))
        if self.strategy.antithetic and chunk > 1:
            chunk -= chunk % 2  # whole antithetic pairs per chunk: the linear kernel generates a pair's noise once
        losses = []
        for start in range(0, n_total, chunk):
            n = min(chunk, n_total - start)
            ids = torch.arange(start, start + n, device=batch.device).repeat_interleave(size)
            preds = pop.batched_forward(self.model, _repeat(batch, n), member_ids=ids)
            targets = _repeat(labels, n) if isinstance(labels, torch.Tensor) else labels
            losses.append(self._sample_losses(preds, targets, n * size).view(n, size).mean(dim=1))
        return torch.cat(losses)

    def _use_batched(self, batch) -> bool:
        if self.batched is False or not self.predicts:
            return False
        if not isinstance(batch, torch.Tensor) or batch.dim() == 0:
            if self.batched:
                raise invalid("batch", type(batch).__name__, "a tensor (B, ...) for batched=True", TypeError)
            return False
        return True

    # ------------------------------------------------------------- training
    @torch.no_grad()
    def train_step(self, batch, labels=None) -> dict:
        """One generation on ``batch``: evaluate ``n_workers`` members, update. Returns metrics with ``loss``
        (the updated model's loss on the batch) and ``population_loss_mean``."""
        with self.strategy.perturb(self.n_workers, epoch=self.global_step) as pop:
            losses, path = None, "loop"
            if self._use_batched(batch):
                try:
                    losses, path = self._losses_batched(pop, batch, labels), "batched"
                except NotImplementedError as err:
                    if self.batched:
                        raise
                    warnings.warn(
                        f"EGGROLLTrainer: batched_forward cannot run this model ({err}); evaluating members one "
                        "at a time through iterate() from now on (batched=False silences this)",
                        UserWarning,
                        stacklevel=2,
                    )
                    self.batched = False
            if losses is None:
                losses = self._losses_loop(pop, batch, labels)
        metrics = self.strategy.step(-losses)
        self.last_losses, self.last_path = losses, path
        metrics["population_loss_mean"] = float(losses.mean())
        metrics["loss"] = float(self._mean_loss(batch, labels, False))
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
    loss_fn: str | LossFn | nn.Module | None = None,
    batched: bool | None = None,
    max_batch_rows: int = DEFAULT_MAX_BATCH_ROWS,
) -> tuple[float, dict]:
    """One stateless EGGROLL step (plain ``p += lr g`` update). Returns ``(loss after the step, metrics)``.

    ``loss_fn``, ``batched`` and ``max_batch_rows`` are ``EGGROLLTrainer``'s.
    """
    trainer = EGGROLLTrainer(
        model, device, rank=rank, sigma=sigma, learning_rate=learning_rate, n_workers=n_workers,
        grad_clip=grad_clip, normalize_fitness=normalize_fitness, base_seed=base_seed, log_steps=0,
        loss_fn=loss_fn, batched=batched, max_batch_rows=max_batch_rows,
    )  # fmt: skip
    trainer.global_step = epoch
    metrics = trainer.train_step(batch, labels)
    return metrics["loss"], metrics
