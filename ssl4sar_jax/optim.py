"""Optimiser and learning-rate control of the SSL4SAR recipes (Nora-Go/TYRION
``model/modules/TyrionWrapper.py:configure_optimizers`` and the pretraining modules).

* SGD with PyTorch-style momentum (``buf = m·buf + g; p -= lr·buf``, no dampening, no Nesterov)
  and *coupled* weight decay on every parameter: ``optax.add_decayed_weights`` before
  ``optax.sgd``, exactly ``torch.optim.SGD(weight_decay=...)``.
* The learning rate is an injectable hyperparameter (``optax.inject_hyperparams``) so that the
  host-side :class:`ReduceLROnPlateau` (pretraining: ×0.5, patience 5 on the validation loss)
  can change it between steps without recompiling; its state is checkpointed with the run.
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections
import optax


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Build the optimiser from ``config.optim``.

    Expected keys: ``name`` ("sgd" | "adamw"), ``learning_rate``, ``momentum``,
    ``weight_decay``, optional ``nesterov`` and ``grad_clip_norm`` (0 = off, the reference has no
    clipping), optional ``schedule`` ("constant", the reference; or "warmup_cosine": linear
    warm-up over ``warmup_steps`` from 0, then cosine decay to ``end_lr_factor`` x the peak at
    ``config.total_steps``, for short from-scratch runs).

    Returns:
        An optax transformation whose state holds ``hyperparams["learning_rate"]``.
    """
    optim = config.optim
    name = optim.name.lower()
    clip = float(optim.get("grad_clip_norm", 0.0) or 0.0)

    def build(learning_rate: float) -> optax.GradientTransformation:
        parts = []
        if clip > 0:
            parts.append(optax.clip_by_global_norm(clip))
        if name == "sgd":
            if optim.weight_decay:
                parts.append(optax.add_decayed_weights(optim.weight_decay))
            parts.append(
                optax.sgd(
                    learning_rate,
                    momentum=optim.momentum or None,
                    nesterov=bool(optim.get("nesterov", False)),
                )
            )
        elif name == "adamw":
            parts.append(optax.adamw(learning_rate, weight_decay=optim.weight_decay))
        else:
            raise ValueError(f"config.optim.name must be 'sgd' or 'adamw', got {optim.name!r}")
        return optax.chain(*parts)

    schedule = str(optim.get("schedule", "constant") or "constant")
    peak = float(optim.learning_rate)
    if schedule == "constant":
        learning_rate = peak
    elif schedule == "warmup_cosine":
        total = int(config.get("total_steps", 0) or 0)
        warmup = int(optim.get("warmup_steps", 0) or 0)
        if total <= warmup:
            raise ValueError(
                f"config.optim.schedule='warmup_cosine' needs total_steps ({total}) > "
                f"optim.warmup_steps ({warmup})"
            )
        learning_rate = optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=peak,
            warmup_steps=warmup,
            decay_steps=total,
            end_value=peak * float(optim.get("end_lr_factor", 0.0)),
        )
    else:
        raise ValueError(
            f"config.optim.schedule must be 'constant' or 'warmup_cosine', got {schedule!r}"
        )
    # A schedule is evaluated inside the jitted update from the optimiser's own step count,
    # so it resumes exactly from a checkpoint.
    return optax.inject_hyperparams(build)(learning_rate=learning_rate)


def get_learning_rate(opt_state: Any) -> float:
    """Current learning rate stored in an ``inject_hyperparams`` state."""
    return float(opt_state.hyperparams["learning_rate"])


def set_learning_rate(opt_state: Any, learning_rate: float) -> Any:
    """Return ``opt_state`` with a new learning rate (same dtype and sharding as before)."""
    current = opt_state.hyperparams["learning_rate"]
    new_value = current * 0 + learning_rate  # keeps dtype, shape and sharding of the leaf
    hyperparams = dict(opt_state.hyperparams)
    hyperparams["learning_rate"] = new_value
    return opt_state._replace(hyperparams=hyperparams)


class ReduceLROnPlateau:
    """Host-side ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (mode ``min``, relative threshold).

    Call :meth:`step` with each validation loss; it returns the learning rate to use next.
    Defaults are PyTorch's except ``factor``/``patience`` that the reference sets to 0.5/5.
    """

    def __init__(
        self,
        initial_lr: float,
        factor: float = 0.5,
        patience: int = 5,
        threshold: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
        eps: float = 1e-8,
    ):
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        self.factor = factor
        self.patience = patience
        self.threshold = threshold
        self.cooldown = cooldown
        self.min_lr = min_lr
        self.eps = eps
        self.lr = float(initial_lr)
        self.best = math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.num_reductions = 0

    def step(self, metric: float) -> float:
        """Record one validation value; returns the (possibly reduced) learning rate."""
        metric = float(metric)
        if metric < self.best * (1.0 - self.threshold):
            self.best = metric
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            new_lr = max(self.lr * self.factor, self.min_lr)
            if self.lr - new_lr > self.eps:
                self.lr = new_lr
                self.num_reductions += 1
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        return self.lr

    def state_dict(self) -> dict[str, float]:
        """JSON-serialisable state (saved in checkpoints)."""
        return {
            "lr": self.lr,
            "best": self.best if math.isfinite(self.best) else None,
            "num_bad_epochs": self.num_bad_epochs,
            "cooldown_counter": self.cooldown_counter,
            "num_reductions": self.num_reductions,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        self.lr = float(state["lr"])
        self.best = math.inf if state["best"] is None else float(state["best"])
        self.num_bad_epochs = int(state["num_bad_epochs"])
        self.cooldown_counter = int(state["cooldown_counter"])
        self.num_reductions = int(state.get("num_reductions", 0))
