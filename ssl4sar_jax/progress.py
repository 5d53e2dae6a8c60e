"""One progress meter for long work: units done, units/s and ETA.

Training counts steps (and shows images/s from the batch size), evaluation counts images and
prediction counts tiles; all of them print through `Progress.describe`, so every long job reads
the same: ``12/100 steps | 0.531 steps/s, 4.25 images/s, ETA 0:02:45``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping


def format_seconds(seconds: float) -> str:
    """``h:mm:ss`` of a duration (``?`` when it is not finite)."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}"


class Progress:
    """Rate and ETA of a job of ``total`` units, measured since the last `restart`.

    Args:
        total: Number of units of the whole job (None: unknown, no ETA).
        unit: Name of a unit, plural (``"steps"``, ``"images"``, ``"tiles"``).
        done: Units already done at the start (e.g. the resumed step).
    """

    def __init__(self, total: int | None, unit: str = "steps", done: int = 0):
        self.total = total
        self.unit = unit
        self.done = done
        self.restart(done)

    def restart(self, done: int | None = None) -> None:
        """Restart the clock at ``done`` units (e.g. after compilation or a validation pass)."""
        if done is not None:
            self.done = done
        self._t0 = time.perf_counter()
        self._done0 = self.done

    def update(self, done: int | None = None) -> None:
        """Sets the units done (one more if ``done`` is None)."""
        self.done = self.done + 1 if done is None else done

    @property
    def rate(self) -> float:
        """Units per second since the last restart (NaN before the first unit)."""
        elapsed = time.perf_counter() - self._t0
        units = self.done - self._done0
        return units / elapsed if units > 0 and elapsed > 0 else float("nan")

    @property
    def eta_seconds(self) -> float:
        """Seconds left at the current rate (NaN when the total or the rate is unknown)."""
        if self.total is None:
            return float("nan")
        return (self.total - self.done) / self.rate

    def describe(self, per_unit: Mapping[str, float] | None = None) -> str:
        """``"12/100 steps | 0.531 steps/s, 4.25 images/s, ETA 0:02:45"``.

        Args:
            per_unit: ``{name: count per unit}``; each adds a ``name/s`` rate (e.g.
                ``{"images": batch_size}`` for training steps).
        """
        rate = self.rate
        total = f"/{self.total}" if self.total is not None else ""
        rates = [f"{rate:.3g} {self.unit}/s"]
        rates += [f"{rate * n:.3g} {name}/s" for name, n in (per_unit or {}).items()]
        eta = f", ETA {format_seconds(self.eta_seconds)}" if self.total is not None else ""
        return f"{self.done}{total} {self.unit} | {', '.join(rates)}{eta}"
