"""Front and zone metrics and their breakdowns (Nora-Go/TYRION ``Evaluation.py``; the same
functions in the CaFFe code, Nora-Go/Calving_Fronts_and_Where_to_Find_Them ``validate_or_test.py``).

Mean Distance Error (MDE), exactly as TYRION/CaFFe ``front_error`` +
``calculate_front_delineation_metric``: for each image i with predicted front P_i, true front G_i
and resolution r_i, the symmetric nearest-neighbour distances (Euclidean between integer
``(row, col)`` coordinates, times r_i) of every p in P_i to G_i and every g in G_i to P_i are
**pooled over all images** with both fronts non-empty::

    MDE = sum_i sum(D_i) / sum_i (|P_i| + |G_i|)

Images without a predicted front are left out and counted (``missing_fronts``). Two reference
variants are reported as well: the mean of the per-image means (``mde_per_image_mean_m``, the
reference's ``mde_picture_normalized``) and the per-image means weighted by the true front length
(``mde_front_length_weighted_m``, the reference's ``mde_front_length_normalized``).

Zone metrics follow torchmetrics 1.x multiclass ``average='none'`` on all pixels of the raw
stitched prediction (NA included, no ignore index): a class absent from both prediction and target
gets 0 (not NaN) for IoU, precision, recall and F1, and so pulls the means down (torchmetrics
issue #1693). Per image the macro value is the mean of the 4 classes; every value is then
averaged over images.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

from ssl4sar_jax.array_utils import nonzero_box
from ssl4sar_jax.constants import NUM_ZONE_CLASSES, ZONE_NAMES
from ssl4sar_jax.registry import Registry


@dataclasses.dataclass(frozen=True)
class FrontDistances:
    """Nearest-neighbour distances of one image.

    Attributes:
        pred_to_true_m: ``[|P|]`` distance (m) of each predicted front pixel to the true front.
        true_to_pred_m: ``[|G|]`` distance (m) of each true front pixel to the predicted front.
    """

    pred_to_true_m: np.ndarray
    true_to_pred_m: np.ndarray

    @property
    def total_m(self) -> float:
        return float(self.pred_to_true_m.sum() + self.true_to_pred_m.sum())

    @property
    def count(self) -> int:
        return int(self.pred_to_true_m.size + self.true_to_pred_m.size)

    @property
    def mean_m(self) -> float:
        return self.total_m / self.count


def front_points(front: np.ndarray) -> np.ndarray:
    """``np.argwhere(front)`` as float64 ``[N, 2]`` (row, col), computed on the front's box.

    Fronts are thin curves: the non-zero search runs only inside the bounding box of the
    non-zero rows and columns (two reductions over the image instead of a full ``nonzero``,
    ~2-5x faster on 16-Mpx maps). Row-major order inside the box is the row-major order of
    the whole image, so the points come in exactly ``np.argwhere``'s order and the summed
    distances are bit-identical (``tests/test_evaluation_metrics.py``).
    """
    front = np.asarray(front)
    if front.ndim != 2:
        raise ValueError(f"front must be [H, W], got shape {front.shape}")
    box = nonzero_box(front)
    if box is None:
        return np.zeros((0, 2), np.float64)
    r, c = np.nonzero(front[box])
    points = np.empty((r.size, 2), np.float64)
    points[:, 0] = r + box[0].start
    points[:, 1] = c + box[1].start
    return points


def front_distances(
    pred_front: np.ndarray, true_front: np.ndarray, resolution_m: float
) -> FrontDistances | None:
    """Symmetric nearest-neighbour distances between two front maps, in metres.

    Args:
        pred_front: ``[H, W]`` predicted front (non-zero = front).
        true_front: ``[H, W]`` true front (non-zero = front).
        resolution_m: Pixel spacing in metres.

    Returns:
        The distances, or None when either front is empty (the image does not enter the MDE).
    """
    if pred_front.shape != true_front.shape:
        raise ValueError(
            f"Predicted front {pred_front.shape} and true front {true_front.shape} differ in shape"
        )
    pred_xy = front_points(pred_front)
    true_xy = front_points(true_front)
    if len(pred_xy) == 0 or len(true_xy) == 0:
        return None
    # KD-trees: O((N + M) log) instead of the reference's O(N * M) cdist.
    pred_to_true, _ = cKDTree(true_xy).query(pred_xy, k=1)
    true_to_pred, _ = cKDTree(pred_xy).query(true_xy, k=1)
    return FrontDistances(pred_to_true * resolution_m, true_to_pred * resolution_m)


def _nan_to_none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def pool_front_metrics(rows: Iterable[dict]) -> dict[str, float]:
    """Pools per-image front results into the MDE and its variants.

    Args:
        rows: Per-image dicts with ``front_sum_m`` (sum of distances, NaN when not computed),
            ``front_count`` (``|P| + |G|``, 0 when not computed), ``n_true_front`` and
            ``has_front`` (bool: both fronts non-empty).

    Returns:
        ``{"mde_m", "mde_per_image_mean_m", "mde_front_length_weighted_m", "missing_fronts",
        "num_images", "num_images_with_front"}`` and, when the rows carry ``front_sum_px``,
        ``"mde_px"`` (the same pooling in pixels); MDE values are NaN when no image has a front.
    """
    total = count = total_px = 0.0
    with_px = True  # every row carries front_sum_px (the runner's rows do)
    per_image_means: list[float] = []
    true_lengths: list[float] = []
    missing = n_images = 0
    for row in rows:
        n_images += 1
        with_px = with_px and "front_sum_px" in row
        if not row["has_front"]:
            missing += 1
            continue
        total += row["front_sum_m"]
        count += row["front_count"]
        if with_px:
            total_px += row["front_sum_px"]
        per_image_means.append(row["front_sum_m"] / row["front_count"])
        true_lengths.append(row["n_true_front"])
    if per_image_means:
        means = np.asarray(per_image_means)
        lengths = np.asarray(true_lengths, dtype=np.float64)
        mde = total / count
        per_image_mean = float(means.mean())
        weighted = float((means * lengths).sum() / lengths.sum())
    else:
        mde = per_image_mean = weighted = float("nan")
    out = {
        "mde_m": float(mde),
        "mde_per_image_mean_m": per_image_mean,
        "mde_front_length_weighted_m": weighted,
        "missing_fronts": missing,
        "num_images": n_images,
        "num_images_with_front": n_images - missing,
    }
    if with_px and n_images:
        out["mde_px"] = float(total_px / count) if per_image_means else float("nan")
    return out


def mean_distance_error(
    pred_fronts: Sequence[np.ndarray],
    true_fronts: Sequence[np.ndarray],
    resolutions_m: Sequence[float],
) -> dict[str, float]:
    """Pooled MDE of a list of images (convenience wrapper around :func:`front_distances`).

    Args:
        pred_fronts: ``[H_i, W_i]`` predicted fronts.
        true_fronts: ``[H_i, W_i]`` true fronts.
        resolutions_m: Pixel spacing of each image.

    Returns:
        See :func:`pool_front_metrics`.
    """
    if not len(pred_fronts) == len(true_fronts) == len(resolutions_m):
        raise ValueError(
            f"Got {len(pred_fronts)} predictions, {len(true_fronts)} targets and "
            f"{len(resolutions_m)} resolutions"
        )
    rows = []
    for pred, true, res in zip(pred_fronts, true_fronts, resolutions_m, strict=True):
        dist = front_distances(pred, true, res)
        rows.append(
            {
                "has_front": dist is not None,
                "front_sum_m": dist.total_m if dist else float("nan"),
                "front_count": dist.count if dist else 0,
                "n_true_front": int(np.count_nonzero(true)),
            }
        )
    return pool_front_metrics(rows)


def confusion_matrix(
    pred: np.ndarray, target: np.ndarray, num_classes: int = NUM_ZONE_CLASSES
) -> np.ndarray:
    """``[K, K]`` confusion matrix (rows: target, columns: prediction) of two ``[H, W]`` maps."""
    if pred.shape != target.shape:
        raise ValueError(f"Prediction {pred.shape} and target {target.shape} differ in shape")
    for name, arr in (("prediction", pred), ("target", target)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"{name} has class ids outside 0..{num_classes - 1}")
    # Joint index in the smallest dtype that holds K*K values (uint8 for 4 classes): 8x less
    # memory traffic than int64 on 16-Mpx images.
    dtype = np.uint8 if num_classes * num_classes <= 256 else np.int64
    joint = target.astype(dtype) * dtype(num_classes) + pred.astype(dtype)
    counts = np.bincount(joint.ravel(), minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    # torchmetrics 1.x: 0 where the denominator is 0 (zero_division=0).
    return np.where(den > 0, num / np.maximum(den, 1), 0.0)


def zone_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Per-image IoU, precision, recall, F1 per class and their (macro) mean.

    Args:
        pred: ``[H, W]`` predicted class ids.
        target: ``[H, W]`` true class ids.

    Returns:
        ``{"iou_na", ..., "iou_ocean", "iou_mean", "precision_*", "recall_*", "f1_*"}``.
    """
    cm = confusion_matrix(pred, target).astype(np.float64)
    tp = np.diag(cm)
    fp = cm.sum(axis=0) - tp
    fn = cm.sum(axis=1) - tp
    values = {
        "iou": _safe_div(tp, tp + fp + fn),
        "precision": _safe_div(tp, tp + fp),
        "recall": _safe_div(tp, tp + fn),
        "f1": _safe_div(2 * tp, 2 * tp + fp + fn),
    }
    out: dict[str, float] = {}
    for metric, per_class in values.items():
        for name, value in zip(ZONE_NAMES, per_class, strict=True):
            out[f"{metric}_{name}"] = float(value)
        out[f"{metric}_mean"] = float(per_class.mean())
    return out


ZONE_METRIC_KEYS: tuple[str, ...] = tuple(
    f"{metric}_{name}"
    for metric in ("iou", "precision", "recall", "f1")
    for name in (*ZONE_NAMES, "mean")
)


def average_zone_metrics(rows: Sequence[dict]) -> dict[str, float]:
    """Averages the per-image zone metrics over images (NaN-skipping, as the reference)."""
    out = {}
    for key in ZONE_METRIC_KEYS:
        values = np.asarray([row[key] for row in rows], dtype=np.float64)
        out[key] = float(np.nanmean(values)) if np.any(~np.isnan(values)) else float("nan")
    return out


def sensor_group(sensor: str) -> str:
    """TSX and TDX are reported together as ``"TSX/TDX"`` (one mission pair, as in the CaFFe breakdowns)."""
    return "TSX/TDX" if sensor in ("TSX", "TDX") else sensor


BREAKDOWN_KEYS: dict[str, tuple[str, ...]] = {
    "glacier": ("glacier",),
    "season": ("season",),
    "sensor": ("sensor_group",),
    "resolution": ("resolution_m",),
    "glacier_season": ("glacier", "season"),
    "glacier_sensor": ("glacier", "sensor_group"),
    "glacier_resolution": ("glacier", "resolution_m"),
}


def breakdowns(rows: Sequence[dict]) -> dict[str, dict[str, dict]]:
    """Front metrics (pooled within each subset, own missing count) and mean zone IoU per subset.

    Args:
        rows: Per-image rows as built by the runner (``glacier``, ``season``, ``sensor_group``,
            ``resolution_m`` and the fields of :func:`pool_front_metrics` and
            :func:`zone_metrics`).

    Returns:
        ``{breakdown: {subset name: metrics}}``, subset names like ``"COL"`` or ``"COL/winter"``;
        only non-empty subsets appear.
    """
    out: dict[str, dict[str, dict]] = {}
    for breakdown, fields in BREAKDOWN_KEYS.items():
        groups: dict[tuple, list[dict]] = {}
        for row in rows:
            groups.setdefault(tuple(row[field] for field in fields), []).append(row)
        # Sorted on the raw values, so resolutions sort numerically.
        out[breakdown] = {
            "/".join(str(v) for v in key): {
                **pool_front_metrics(group),
                "iou_mean": average_zone_metrics(group)["iou_mean"],
                **pool_extra_metrics(group),
            }
            for key, group in sorted(groups.items())
        }
    return out


def json_safe(obj):
    """Replaces NaN by None recursively (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return _nan_to_none(obj)
    return obj


# ---------------------------------------------------------------------------- registry
@dataclasses.dataclass(frozen=True)
class Metric:
    """An extra evaluation metric: computed per image, pooled over any set of images.

    Registered metrics run after the built-in front and zone metrics, for every evaluation
    (``ssl4sar_jax.evaluation.runner``, training-time validation, the evaluate task): their
    per-image values become columns of ``per_image.csv``, their pooled values enter the flat
    metrics as ``{group}/{key}`` and every breakdown subset (per glacier, season, ...).

    Attributes:
        name: Registry key.
        per_image: ``(image, pred_zones [H, W], pred_front [H, W] bool) -> {column: float}``;
            ``image`` is the runner's validated ``ImageRecord`` (``zones``, ``front``,
            ``pixel spacing``, ``glacier``, ...).
        pool: ``(rows) -> {key: float}`` over per-image rows; None: the NaN-skipping mean of
            each column.
        group: Prefix of the flat keys (``"zones"``, ``"front"`` or a new one).
        columns: The per-image columns ``per_image`` returns (default: just ``name``).
    """

    name: str
    per_image: Callable[[Any, np.ndarray, np.ndarray], dict[str, float]]
    pool: Callable[[Sequence[dict]], dict[str, float]] | None = None
    group: str = "zones"
    columns: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.columns:
            object.__setattr__(self, "columns", (self.name,))


_METRICS: Registry[Metric] = Registry("metric")


def register_metric(metric: Metric, *, replace: bool = False) -> Metric:
    """Adds ``metric`` to the registry (``replace=True`` to overwrite an entry)."""
    return _METRICS.add(metric.name, metric, replace=replace)


def unregister_metric(name: str) -> None:
    """Removes an entry (tests that register a temporary metric)."""
    _METRICS.remove(name)


def metric_names() -> tuple[str, ...]:
    """Registered extra metrics, in registration order."""
    return _METRICS.names()


def extra_image_metrics(image: Any, pred_zones: np.ndarray, pred_front: np.ndarray) -> dict:
    """The per-image values of every registered metric (merged into the runner's row)."""
    out: dict[str, float] = {}
    for metric in _METRICS.values():
        values = {k: float(v) for k, v in metric.per_image(image, pred_zones, pred_front).items()}
        if set(values) != set(metric.columns):
            raise ValueError(
                f"metric {metric.name!r} returned columns {sorted(values)}, declared "
                f"{sorted(metric.columns)}"
            )
        clash = sorted(set(values) & set(out))
        if clash:
            raise ValueError(f"metric {metric.name!r} returns columns already taken: {clash}")
        out.update(values)
    return out


def pool_extra_metrics(rows: Sequence[dict]) -> dict[str, float]:
    """Pooled values of every registered metric, as flat ``{group}/{key}`` entries."""
    out: dict[str, float] = {}
    for metric in _METRICS.values():
        if metric.pool is not None:
            pooled = metric.pool(rows)
        else:
            pooled = {}
            for column in metric.columns:
                values = np.asarray([row[column] for row in rows], dtype=np.float64)
                finite = ~np.isnan(values)
                pooled[column] = float(values[finite].mean()) if finite.any() else float("nan")
        out.update({f"{metric.group}/{k}": float(v) for k, v in pooled.items()})
    return out
