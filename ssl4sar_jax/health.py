"""Is the train state worth a checkpoint? Finite, and not exploding.

A NaN usually comes after a few steps of divergence: the loss blows up while it is still
finite. A checkpoint saved then is no "last good" one. :class:`Health` keeps the run's recent
losses and judges a step *healthy* when its loss and ``l2_params`` are finite and the loss is
within ``factor`` times the median of the recent healthy losses. The loop saves only healthy
states (a refused save says why), stores the judgement and the window in the checkpoint (so a
resumed run judges alike), and stops after ``max_refused_saves`` consecutive refused saves — a
run that diverges without reaching NaN.

The loss of step ``t`` is computed with the parameters of step ``t - 1``: a checkpoint of step
``t`` is confirmed only by the loss of step ``t + 1``. When that loss is unhealthy *and* the
parameters of step ``t`` had jumped (``l2_params`` non-finite or over ``factor`` x its recent
median) the loop retracts the checkpoint (`ssl4sar_jax.train_lib.HealthySave.retract`); a NaN
caused by one bad input batch after normal parameters keeps the checkpoint.

Why not also bound ``l2_params`` by a multiple of its median: the OptSimMIM smoke run (micro
model, ``configs/pretrain.py:smoke``) grows its parameter norm from 33 to 5.2e6 in two steps
with a finite, falling validation loss (parameters ahead of normalisations are scale-free), a
larger jump than the one of a run diverging at learning rate 1e6 (76 to 1e6). The norm only has
to be finite.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np


class Health:
    """Recent-median judgement of the loss (and finiteness of ``l2_params``).

    Args:
        factor: A loss above ``factor`` x the recent median is "exploding" (0 = only check
            that values are finite).
        window: Number of recent healthy values the medians are taken over.
        min_history: Fewer recorded values than this: only finiteness is checked.
    """

    KEYS = ("loss", "l2_params")

    def __init__(self, factor: float = 10.0, window: int = 50, min_history: int = 3):
        self.factor = float(factor)
        self.min_history = int(min_history)
        self.history: dict[str, deque[float]] = {k: deque(maxlen=window) for k in self.KEYS}
        self.last: dict[str, float] = {}
        self.last_reason: str | None = None
        self._seeded: set[str] = set()

    def medians(self) -> dict[str, float | None]:
        """Median of each key's recent healthy values (None while there are too few)."""
        return {
            k: float(np.median(v))
            if len(v) >= self.min_history or (v and k in self._seeded)
            else None
            for k, v in self.history.items()
        }

    def judge(self, values: Mapping[str, float]) -> str | None:
        """Why ``values`` are unhealthy (None when healthy); does not record them."""
        medians = self.medians()
        for key in self.KEYS:
            if key not in values:
                continue
            value = float(values[key])
            if not math.isfinite(value):
                return f"{key} = {value}"
            median = medians[key]
            if key != "loss":
                continue
            if self.factor > 0 and median is not None and abs(value) > self.factor * abs(median):
                return (
                    f"{key} = {value:.4g} is over {self.factor:g} x its recent median {median:.4g}"
                )
        return None

    def record(self, values: Mapping[str, float], seed: bool = False) -> str | None:
        """Judge one step's values and keep them (as reference only if healthy).

        Args:
            values: ``{"loss": ..., "l2_params": ...}`` (either may be missing).
            seed: Record without judging, as a trusted reference even alone (the parameter
                norm of the initial or restored state).

        Returns:
            The reason the step is unhealthy, or None.
        """
        reason = None if seed else self.judge(values)
        if reason is None:
            for key in self.KEYS:
                if key in values and math.isfinite(float(values[key])):
                    self.history[key].append(float(values[key]))
        if seed:
            self._seeded.update(k for k in values if k in self.history)
        else:
            self.last = {k: float(v) for k, v in values.items() if k in self.KEYS}
            self.last_reason = reason
        return reason

    def summary(self) -> dict[str, Any]:
        """Judgement of the last recorded step, for the checkpoint metadata."""
        return {
            "ok": self.last_reason is None,
            "reason": self.last_reason or "",
            **{k: v for k, v in self.last.items()},
            **{f"median_{k}": v for k, v in self.medians().items()},
        }

    def state_dict(self) -> dict[str, list[float]]:
        """JSON-serialisable windows (saved in checkpoints)."""
        return {k: list(v) for k, v in self.history.items()}

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Restore the windows of :meth:`state_dict` (absent in older checkpoints: no-op)."""
        for key, values in (state or {}).items():
            if key in self.history:
                self.history[key].clear()
                self.history[key].extend(float(v) for v in values)


class DivergenceError(FloatingPointError):
    """The run diverges (exploding loss or parameters) without having reached NaN yet."""


def advice(
    last_good_step: int | None, workdir: str, config: Any, good_lr: float | None = None
) -> str:
    """What to do after a NaN or a divergence: advice that works with ``workdir``'s checkpoints.

    The learning rate is a resumable config key (``ssl4sar_jax.workdir.RESUMABLE``): a lower
    value given on resume is written into the restored optimizer state.

    Args:
        last_good_step: Step of the newest healthy checkpoint (None: there is none).
        workdir: The run directory.
        config: The run's config (its ``optim.learning_rate``).
        good_lr: The learning rate the last good checkpoint was trained with, if known.
    """
    lr = float(config.optim.learning_rate)
    if good_lr is not None and good_lr < lr:
        lower = (
            f"--config.optim.learning_rate={good_lr:g} (the rate the steps up to "
            f"{last_good_step} were trained with) or lower"
        )
    else:
        lower = f"a learning rate below {lr:g}, e.g. --config.optim.learning_rate={lr / 10:g}"
    if last_good_step is None:
        return (
            f"No good checkpoint was saved. Start anew with {lower} and --config.overwrite=True "
            "(or check the input data)."
        )
    return (
        f"Resume from it with a lower learning rate: rerun the same command with {lower}; "
        f"the new rate takes effect on resume from {workdir}. Or check the input data."
    )
