"""Pictures and files of an evaluation: overlays, uncertainty maps, CSV, JSON, summary plot.

Every file is written to a temporary name in the target folder and then renamed, so a crash never
leaves a half-written output. Overlays are drawn with numpy + Pillow (fast for 4k x 4k images);
the summary plot uses matplotlib with the Agg backend.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from ssl4sar_jax import io_utils
from ssl4sar_jax.constants import ZONE_NAMES
from ssl4sar_jax.evaluation.metrics import json_safe
from ssl4sar_jax.evaluation.postprocess import bbox_window

# RGB of NA, rock, glacier, ocean.
ZONE_COLOURS = np.array([[0, 0, 0], [120, 120, 120], [235, 235, 235], [40, 90, 200]], np.uint8)
PRED_FRONT_COLOUR = np.array([255, 40, 40], np.uint8)
TRUE_FRONT_COLOUR = np.array([40, 230, 60], np.uint8)
BBOX_COLOUR = np.array([255, 200, 0], np.uint8)
MAX_PICTURE_SIDE = 1200


def atomic_save_png(path: str, image: np.ndarray) -> None:
    """Saves ``[H, W]`` or ``[H, W, 3]`` uint8 as PNG via a temporary file and a rename."""
    with io_utils.atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def write_json(path: str, obj: dict) -> None:
    io_utils.write_text_atomic(path, json.dumps(json_safe(obj), indent=2, sort_keys=False) + "\n")


def write_csv(path: str, rows: Sequence[dict]) -> None:
    """One row per image; the columns are the union of the keys in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if _is_nan(v) else v) for k, v in row.items()})
    io_utils.write_text_atomic(path, buffer.getvalue())


def _is_nan(value) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _display_factor(shape: tuple[int, int]) -> int:
    return max(1, math.ceil(max(shape) / MAX_PICTURE_SIDE))


def front_line_width(shape: tuple[int, int]) -> int:
    """Front line width (odd, pixels of the full image) for an overlay: about 1/300 of the longer
    side, so the line looks the same after downsampling to the picture size whatever the image
    size or pixel spacing (1 px for a 256-px image, 17 px for a 4,500-px one)."""
    return 2 * round(max(shape) / 600) + 1


def _thick(front: np.ndarray, resolution_m: float, factor: int) -> np.ndarray:
    del resolution_m, factor  # the width depends on the image size only
    size = front_line_width(front.shape)
    if size == 1:
        return front.astype(bool)
    return ndimage.binary_dilation(front.astype(bool), structure=np.ones((size, size), bool))


def _draw_box(rgb: np.ndarray, bbox: np.ndarray | None, factor: int) -> None:
    if bbox is None:
        return
    height, width = rgb.shape[0] * factor, rgb.shape[1] * factor
    top, bottom, left, right = bbox_window(bbox, (height, width))
    top, bottom = sorted((max(0, min(top, height - 1)), max(0, min(bottom, height - 1))))
    left, right = sorted((max(0, min(left, width - 1)), max(0, min(right, width - 1))))
    t, b, lft, r = top // factor, bottom // factor, left // factor, right // factor
    rgb[t, lft : r + 1] = BBOX_COLOUR
    rgb[b, lft : r + 1] = BBOX_COLOUR
    rgb[t : b + 1, lft] = BBOX_COLOUR
    rgb[t : b + 1, r] = BBOX_COLOUR


def overlay_picture(
    sar: np.ndarray,
    pred_zones: np.ndarray,
    true_zones: np.ndarray,
    pred_front: np.ndarray,
    true_front: np.ndarray,
    resolution_m: float,
    bbox: np.ndarray | None = None,
) -> np.ndarray:
    """Three panels side by side: SAR with both fronts and the box | predicted zones + predicted
    front | true zones + true front. Downsampled to at most ~1200 px per side.

    Args:
        sar: ``[H, W]`` or ``[H, W, 1]`` SAR (uint8 or float in [0, 1]).
        pred_zones: ``[H, W]`` predicted ids.
        true_zones: ``[H, W]`` true ids.
        pred_front: ``[H, W]`` predicted front (after post-processing).
        true_front: ``[H, W]`` true front.
        resolution_m: Pixel spacing in metres (kept for the call signature; the line width is
            `front_line_width` of the image size).
        bbox: Raw box corners ``[4, 2]`` or None.

    Returns:
        uint8 ``[h, 3 * w + 2 * gap, 3]`` picture.
    """
    sar = np.asarray(sar).reshape(pred_zones.shape)
    if sar.dtype != np.uint8:
        sar = np.clip(np.asarray(sar, np.float32) * 255.0, 0, 255).astype(np.uint8)
    f = _display_factor(pred_zones.shape)
    pred_line = _thick(pred_front, resolution_m, f)[::f, ::f]
    true_line = _thick(true_front, resolution_m, f)[::f, ::f]
    grey = sar[::f, ::f]
    panel_sar = np.repeat(grey[..., None], 3, axis=2)
    panel_sar[true_line] = TRUE_FRONT_COLOUR
    panel_sar[pred_line] = PRED_FRONT_COLOUR
    _draw_box(panel_sar, bbox, f)
    panel_pred = ZONE_COLOURS[np.clip(pred_zones[::f, ::f], 0, 3)]
    panel_pred[pred_line] = PRED_FRONT_COLOUR
    panel_true = ZONE_COLOURS[np.clip(true_zones[::f, ::f], 0, 3)]
    panel_true[true_line] = TRUE_FRONT_COLOUR
    gap = np.full((panel_sar.shape[0], 8, 3), 255, np.uint8)
    return np.concatenate([panel_sar, gap, panel_pred, gap, panel_true], axis=1)


def uncertainty_picture(std: np.ndarray) -> np.ndarray:
    """Per-class std ``[H, W, K]`` -> K grey panels (std * 255, as the reference), downsampled."""
    f = _display_factor(std.shape[:2])
    small = np.clip(std[::f, ::f] * 255.0, 0, 255).astype(np.uint8)
    gap = np.full((small.shape[0], 8), 255, np.uint8)
    panels = []
    for k in range(small.shape[-1]):
        panels += [small[..., k], gap]
    return np.concatenate(panels[:-1], axis=1)


def summary_plot(path: str, breakdowns: dict, overall: dict) -> None:
    """Bar charts of the pooled MDE per glacier, season, sensor and resolution (missing fronts
    written on the bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("glacier", "Glacier"), ("season", "Season"), ("sensor", "Sensor")]
    panels.append(("resolution", "Resolution (m)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (key, title) in zip(axes, panels, strict=True):
        groups = breakdowns.get(key, {})
        names = list(groups)
        values = [groups[n]["mde_m"] for n in names]
        heights = [0.0 if _is_nan(v) else v for v in values]
        bars = ax.bar(range(len(names)), heights, color="#4477aa")
        for bar, name in zip(bars, names, strict=True):
            g = groups[name]
            ax.annotate(
                f"n={g['num_images']}\n∅={g['missing_fronts']}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
        ax.set_title(title)
        ax.set_ylabel("MDE (m)")
        ax.set_ylim(0, max(heights + [1.0]) * 1.3)
    mde = overall.get("front/mde_m", float("nan"))
    iou = overall.get("zones/iou_mean", float("nan"))
    fig.suptitle(f"Pooled MDE {mde:.1f} m, mean zone IoU {iou:.3f} ({', '.join(ZONE_NAMES)})")
    fig.tight_layout()
    io_utils.save_figure(fig, path, dpi=110, format="png")
