"""Logging for training runs: TensorBoard events, a JSONL history, console progress, curve PNGs.

Only process 0 writes files. The JSONL history (``{workdir}/metrics.jsonl``) is the source of
the curve pictures and is truncated to the resumed step when a run continues, so a resumed run
has the same history as an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging

from ssl4sar_jax import io_utils
from ssl4sar_jax import progress as progress_lib

HISTORY_FILE = "metrics.jsonl"
# The value the reference logs for an undefined validation MDE.
MDE_UNDEFINED = 7777.0


class _QuietOrbax:
    """Logging filter: drop orbax's INFO chatter (several lines per save), keep warnings."""

    def filter(self, record) -> bool:
        import logging as std_logging

        path = getattr(record, "pathname", "") or ""
        return record.levelno >= std_logging.WARNING or "orbax" not in path


def quiet_orbax_logs() -> None:
    """Install :class:`_QuietOrbax` on the absl logger once."""
    import logging as std_logging

    logger = std_logging.getLogger("absl")
    if not any(isinstance(f, _QuietOrbax) for f in logger.filters):
        logger.addFilter(_QuietOrbax())


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss becomes NaN or Inf."""


def check_finite(
    metrics: Mapping[str, float],
    step: int,
    last_good_step: int | None,
    advice: str | None = None,
) -> None:
    """Stop the run if the loss is not finite, naming the step and the checkpoint kept.

    ``advice`` replaces the generic hint (the loop passes ``ssl4sar_jax.health.advice``).
    """
    loss = float(metrics.get("loss", 0.0))
    if not math.isfinite(loss):
        raise NonFiniteLossError(
            f"Non-finite training loss ({loss}) at step {step}. The last good checkpoint is step "
            f"{last_good_step} (not overwritten). "
            + (
                advice
                or "Lower config.optim.learning_rate or check the input data, then resume from "
                "the workdir."
            )
        )


class MetricWriter:
    """TensorBoard (tensorboardX) + JSONL history writer; a no-op outside process 0."""

    def __init__(self, workdir: str, resume_step: int = 0):
        self.active = jax.process_index() == 0
        self.history_path = os.path.join(workdir, HISTORY_FILE)
        self._tb = None
        if not self.active:
            return
        from tensorboardX import SummaryWriter  # imported lazily: heavy

        os.makedirs(workdir, exist_ok=True)
        # Forget history beyond the resumed step (it will be recomputed identically).
        rows = [r for r in read_history(workdir) if r["step"] <= resume_step]
        io_utils.write_lines_atomic(self.history_path, [json.dumps(r) for r in rows])
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=resume_step + 1)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        """Log scalars at ``step`` (TensorBoard and history)."""
        if not self.active:
            return
        clean = {k: float(v) for k, v in scalars.items()}
        for key, value in clean.items():
            self._tb.add_scalar(key, value, step)
        with open(self.history_path, "a") as f:
            f.write(json.dumps({"step": int(step), **clean}) + "\n")

    def write_text(self, tag: str, text: str) -> None:
        """Log a text blob (e.g. the config) to TensorBoard."""
        if self.active:
            self._tb.add_text(tag, text, 0)

    def flush(self) -> None:
        """Flush TensorBoard events."""
        if self.active:
            self._tb.flush()

    def close(self) -> None:
        """Close the event file."""
        if self.active:
            self._tb.close()


def read_history(workdir: str) -> list[dict[str, Any]]:
    """All rows of ``{workdir}/metrics.jsonl`` (empty if absent)."""
    path = os.path.join(workdir, HISTORY_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class ProgressReporter:
    """Console progress of training: steps/s, images/s and ETA, every ``every_steps`` steps."""

    def __init__(self, total_steps: int, first_step: int, batch_size: int, every_steps: int = 10):
        self.total_steps = total_steps
        self.every_steps = max(1, every_steps)
        self.batch_size = batch_size
        self.meter = progress_lib.Progress(total_steps, "steps", done=first_step)
        self.steps_per_sec = float("nan")

    def reset_timer(self, step: int) -> None:
        """Restart timing (e.g. after compilation or a validation pass)."""
        self.meter.restart(step)

    def update(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
        """Print progress at the cadence; returns the timing scalars to log (may be empty)."""
        if step % self.every_steps and step != self.total_steps:
            return {}
        self.meter.update(step)
        if not math.isfinite(self.meter.rate):
            return {}
        self.steps_per_sec = self.meter.rate
        shown = " ".join(f"{k}={float(v):.4g}" for k, v in metrics.items() if k.startswith("loss"))
        logging.info("%s  %s", self.meter.describe({"images": self.batch_size}), shown)
        return {
            "perf/steps_per_sec": self.steps_per_sec,
            "perf/images_per_sec": self.steps_per_sec * self.batch_size,
        }


def plot_curves(workdir: str, out_path: str | None = None, title: str = "") -> str | None:
    """Plot training/validation curves of a run into a PNG (Agg backend).

    One panel per group: training loss, validation losses, validation MDE, validation IoU,
    learning rate (panels without data are skipped).

    Returns:
        The PNG path, or None if there is no history yet.
    """
    rows = read_history(workdir)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key):
        pts = [(r["step"], r[key]) for r in rows if key in r and math.isfinite(r[key])]
        return np.array(pts, dtype=float).reshape(-1, 2)

    keys = sorted({k for r in rows for k in r if k != "step"})
    panels = [
        ("training loss", [k for k in keys if k.startswith("train/loss")]),
        ("validation loss", [k for k in keys if k.startswith("val/loss")]),
        ("validation MDE (m)", [k for k in keys if k == "val/front/mde_m"]),
        ("validation IoU", [k for k in keys if k in ("val/zones/iou_mean",)]),
        ("learning rate", [k for k in keys if k == "train/lr"]),
    ]
    panels = [(name, ks) for name, ks in panels if ks]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (name, ks) in zip(axes[0], panels, strict=True):
        for key in ks:
            pts = series(key)
            if key == "val/front/mde_m" and len(pts):
                # 7777 is the reference's "no predicted front" value: mark it, don't plot it.
                undefined = pts[pts[:, 1] >= MDE_UNDEFINED]
                pts = pts[pts[:, 1] < MDE_UNDEFINED]
                if len(undefined):
                    ax.plot(
                        undefined[:, 0], np.zeros(len(undefined)), "rx", label="no predicted front"
                    )
                    ax.legend(fontsize=7)
            if len(pts) >= 10 and key.startswith("train/loss"):
                ax.plot(pts[:, 0], pts[:, 1], alpha=0.3, label=key)
                width = max(2, len(pts) // 10)
                smooth = np.convolve(pts[:, 1], np.ones(width) / width, mode="valid")
                ax.plot(pts[width - 1 :, 0], smooth, label=f"mean of {width} logs")
                ax.legend(fontsize=7)
            elif len(pts):
                ax.plot(
                    pts[:, 0],
                    pts[:, 1],
                    marker="o" if len(pts) < 30 else None,
                    markersize=3,
                    label=key,
                )
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(ks) > 1:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_path = out_path or os.path.join(workdir, "curves.png")
    io_utils.save_figure(fig, out_path, dpi=110)
    return out_path
