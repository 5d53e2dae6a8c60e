"""Evaluation runner: records -> predictions -> fronts -> metrics -> files.

``evaluate_records`` is the one entry point for the evaluate task and for validation during
training; ``evaluate_zone_predictions`` does the same from already predicted zone maps (no model),
e.g. saved predictions or the speed benchmark.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from ssl4sar_jax import progress as progress_lib
from ssl4sar_jax.constants import NUM_ZONE_CLASSES, SEASONS, season_of, stem_fields
from ssl4sar_jax.evaluation import metrics as metrics_lib
from ssl4sar_jax.evaluation import report
from ssl4sar_jax.evaluation.ensemble import ensemble_probabilities
from ssl4sar_jax.evaluation.postprocess import LENGTH_RULES, postprocess_zones
from ssl4sar_jax.evaluation.tiling import STITCH_MODES

PredictFn = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One validated labelled image (see ``docs/interfaces.md`` for the record fields).

    Any glacier and sensor token is accepted (the metadata is carried into the breakdowns).

    Attributes:
        stem: Full file stem, e.g. ``COL_2015-12-18_S1_20_1_094``.
        sar: float32 ``[H, W, 1]`` in [0, 1] (None when parsed with ``require_sar=False``).
        zones: uint8 ``[H, W]`` class ids.
        front: bool ``[H, W]`` true front.
        bbox: float64 ``[4, 2]`` raw box corners or None.
        glacier: Glacier token.
        sensor: Sensor token.
        resolution_m: Nominal pixel spacing of the file name (metres; breakdown key).
        season: ``"winter"``, ``"summer"`` or ``"unknown"``.
        date: ``YYYY-MM-DD``.
        pixel_spacing_m: Effective pixel spacing (metres) used by post-processing, MDE and
            overlays: the record's ``pixel_spacing_m`` when present, else ``resolution_m``.
    """

    stem: str
    sar: np.ndarray | None
    zones: np.ndarray
    front: np.ndarray
    bbox: np.ndarray | None
    glacier: str
    sensor: str
    resolution_m: int
    season: str
    date: str
    pixel_spacing_m: float = 0.0

    def __post_init__(self):
        if not self.pixel_spacing_m:
            object.__setattr__(self, "pixel_spacing_m", float(self.resolution_m))


def _text(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = value.item() if value.ndim == 0 else value.tolist()
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode()
    return str(value)


def parse_record(
    record: dict,
    *,
    index: int = 0,
    allow_empty_true_front: bool = False,
    require_sar: bool = True,
) -> ImageRecord:
    """Validates a record dict and returns an :class:`ImageRecord`.

    Missing metadata is parsed from the stem (``Glacier_Date_Sensor_Res_Quality_Orbit``).
    ``require_sar=False`` allows records without ``sar`` (evaluation of saved predictions);
    ``ImageRecord.sar`` is then None.

    Raises:
        ValueError: naming the image, for a missing glacier/sensor, bad resolution, spacing or
            date, inconsistent shapes, class ids outside 0..3, or an empty true front (unless
            ``allow_empty_true_front``).
    """
    stem = _text(record.get("stem")) or f"record_{index}"
    fields = stem_fields(stem)

    def field(key: str) -> str | None:
        value = _text(record.get(key))
        return fields.get(key) if value is None else value

    glacier = field("glacier")
    if not glacier:
        raise ValueError(f"{stem}: no glacier (record field or stem field 0)")
    sensor = field("sensor")
    if not sensor:
        raise ValueError(f"{stem}: no sensor (record field or stem field 2)")
    date = field("date") or ""
    raw_res = record.get("resolution_m")
    try:
        resolution = (
            int(np.asarray(raw_res).item()) if raw_res is not None else int(fields["resolution_m"])
        )
    except (ValueError, KeyError) as err:
        raise ValueError(f"{stem}: cannot read the resolution (field 3 of the stem)") from err
    if resolution <= 0:
        raise ValueError(f"{stem}: resolution must be positive, got {resolution}")
    raw_spacing = record.get("pixel_spacing_m")
    spacing = float(np.asarray(raw_spacing).item()) if raw_spacing is not None else 0.0
    if raw_spacing is not None and not (np.isfinite(spacing) and spacing > 0):
        raise ValueError(f"{stem}: pixel_spacing_m must be positive, got {spacing}")
    season = _text(record.get("season"))
    if not season:
        try:
            month = int(date.split("-")[1])
        except (IndexError, ValueError) as err:
            raise ValueError(f"{stem}: cannot read the month of date {date!r}") from err
        season = season_of(glacier, month)
    if season not in SEASONS:
        raise ValueError(f"{stem}: season must be one of {SEASONS}, got {season!r}")

    for key in ("zones", "front") + (("sar",) if require_sar else ()):
        if record.get(key) is None:
            raise ValueError(f"{stem}: the record has no {key!r} field")
    zones = np.asarray(record["zones"])
    front = np.asarray(record["front"])
    sar = record.get("sar")
    if sar is not None:
        sar = np.asarray(sar)
        if sar.ndim == 2:
            sar = sar[..., None]
        if sar.ndim != 3 or sar.shape[-1] != 1:
            raise ValueError(f"{stem}: sar must be [H, W, 1], got shape {sar.shape}")
        sar = sar.astype(np.float32) / 255.0 if sar.dtype == np.uint8 else sar.astype(np.float32)
        if sar.shape[:2] != zones.shape:
            raise ValueError(f"{stem}: shapes differ: sar {sar.shape[:2]}, zones {zones.shape}")
    if zones.ndim != 2 or front.shape != zones.shape:
        raise ValueError(f"{stem}: shapes differ: zones {zones.shape}, front {front.shape}")
    if zones.size and (zones.min() < 0 or zones.max() >= NUM_ZONE_CLASSES):
        raise ValueError(f"{stem}: zones must hold class ids 0..3, got max {zones.max()}")
    front = front != 0
    if not allow_empty_true_front and not front.any():
        raise ValueError(
            f"{stem}: the ground-truth front is empty (pass allow_empty_true_front=True to count "
            "it as a missing front, as the reference does)"
        )
    bbox = record.get("bbox")
    bbox = None if bbox is None else np.asarray(bbox, dtype=np.float64)
    return ImageRecord(
        stem=stem,
        sar=sar,
        zones=zones.astype(np.uint8, copy=False),
        front=front,
        bbox=bbox,
        glacier=glacier,
        sensor=sensor,
        resolution_m=resolution,
        season=season,
        date=date,
        pixel_spacing_m=spacing,
    )


@dataclasses.dataclass
class EvaluationResult:
    """Result of an evaluation.

    Attributes:
        metrics: Flat dict, e.g. ``front/mde_m``, ``front/missing_fronts``, ``zones/iou_mean``.
        per_image: One dict per image.
        breakdowns: ``{breakdown: {subset: metrics}}`` (see ``metrics.breakdowns``).
        seconds: Wall time.
    """

    metrics: dict[str, float]
    per_image: list[dict]
    breakdowns: dict[str, dict[str, dict]]
    seconds: float


def evaluate_image(
    image: ImageRecord, pred_zones: np.ndarray, *, length_rule: str = "tyrion"
) -> tuple[dict, np.ndarray]:
    """Post-processing and metrics of one image.

    Args:
        image: The validated record.
        pred_zones: ``[H, W]`` predicted class ids (raw stitched argmax).
        length_rule: ``"tyrion"`` or ``"caffe"``.

    Returns:
        ``(row, predicted front [H, W] bool)``.
    """
    if pred_zones.shape != image.zones.shape:
        raise ValueError(
            f"{image.stem}: prediction shape {pred_zones.shape} differs from the label shape "
            f"{image.zones.shape}"
        )
    pred_front = postprocess_zones(
        pred_zones, image.pixel_spacing_m, image.bbox, length_rule=length_rule
    )
    dist = metrics_lib.front_distances(pred_front, image.front, image.pixel_spacing_m)
    row = {
        "stem": image.stem,
        "glacier": image.glacier,
        "date": image.date,
        "season": image.season,
        "sensor": image.sensor,
        "sensor_group": metrics_lib.sensor_group(image.sensor),
        "resolution_m": image.resolution_m,
        "pixel_spacing_m": image.pixel_spacing_m,
        "height": image.zones.shape[0],
        "width": image.zones.shape[1],
        "has_front": dist is not None,
        "mde_m": dist.mean_m if dist else float("nan"),
        "mde_px": dist.mean_m / image.pixel_spacing_m if dist else float("nan"),
        "front_sum_m": dist.total_m if dist else float("nan"),
        "front_sum_px": dist.total_m / image.pixel_spacing_m if dist else float("nan"),
        "front_count": dist.count if dist else 0,
        "n_pred_front": int(pred_front.sum()),
        "n_true_front": int(image.front.sum()),
    }
    row.update(metrics_lib.zone_metrics(pred_zones, image.zones))
    row.update(metrics_lib.extra_image_metrics(image, pred_zones, pred_front))
    return row, pred_front


def _keep_freed_memory() -> None:
    """Worker initializer: glibc keeps freed large blocks instead of unmapping them.

    Post-processing a 16-Mpx map allocates and frees a dozen arrays of 16-64 MB (labels,
    masks, copies). glibc serves each with a fresh ``mmap`` and returns it with ``munmap``, so
    every one is page-faulted in again: on the largest CaFFe test image that is a third of the
    CPU time, all of it in the kernel (0.19 of 0.56 CPU-s, ``benchmarks/evaluation_speed.py``).
    Raising the mmap and trim thresholds makes the worker reuse its heap; outputs do not
    change. A no-op where glibc is absent.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    # 1 GiB: above any array of a CaFFe image (the largest label map is 64 MB). mallopt
    # returns 0 and changes nothing where a glibc refuses the value.
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, (1 << 31) - 1)


@dataclasses.dataclass(frozen=True)
class _PackedImage:
    """What a worker receives for one image: 18 bytes of maps per 16 pixels instead of 48.

    Pickling and piping the three full maps (true zones, true front, predicted zones) was most
    of the main process's work and a fifth of the whole evaluation's CPU time on the largest
    images, all of it in the kernel. Both zone maps hold ids 0..3, so one byte carries both
    (``true << 2 | pred``); the front is packed to bits.

    Attributes:
        image: The record without its maps (``zones`` and ``front`` None).
        joint: uint8 ``[H, W]``, ``true_zones << 2 | pred_zones``.
        front_bits: ``np.packbits`` of the true front (row-major).
    """

    image: ImageRecord
    joint: np.ndarray
    front_bits: np.ndarray

    @classmethod
    def pack(cls, image: ImageRecord, pred: np.ndarray) -> _PackedImage | None:
        """None when ``pred`` is not ids 0..3 (then it travels as it is and fails there)."""
        if pred.dtype.kind not in "iu" or (pred.size and (pred.min() < 0 or pred.max() > 3)):
            return None
        joint = image.zones << 2  # uint8, ids 0..3 (parse_record checked them)
        joint |= pred.astype(np.uint8, copy=False)
        bits = np.packbits(image.front, axis=None)
        return cls(dataclasses.replace(image, zones=None, front=None), joint, bits)

    def unpack(self) -> tuple[ImageRecord, np.ndarray]:
        """``(image with its maps, predicted zones)``, equal to what was packed."""
        shape = self.joint.shape
        count = shape[0] * shape[1]
        front = np.unpackbits(self.front_bits, count=count).view(bool).reshape(shape)
        image = dataclasses.replace(self.image, zones=self.joint >> 2, front=front)
        return image, self.joint & 3


def _evaluate_in_worker(
    image: ImageRecord | _PackedImage, pred: np.ndarray | None, length_rule: str
) -> dict:
    """`evaluate_image` for a worker process (returns only the row; the front stays there)."""
    if isinstance(image, _PackedImage):
        image, pred = image.unpack()
    return evaluate_image(image, pred, length_rule=length_rule)[0]


def summarise(rows: Sequence[dict]) -> tuple[dict[str, float], dict]:
    """Flat metrics dict and breakdowns from per-image rows."""
    if not rows:
        raise ValueError("No images were evaluated (empty record list)")
    front = metrics_lib.pool_front_metrics(rows)
    zones = metrics_lib.average_zone_metrics(rows)
    flat = {f"front/{k}": v for k, v in front.items()}
    flat.update({f"zones/{k}": v for k, v in zones.items()})
    flat.update(metrics_lib.pool_extra_metrics(rows))
    return flat, metrics_lib.breakdowns(rows)


class _Progress:
    """Per-image progress lines (images/s, ETA) on stderr when ``verbose``."""

    def __init__(self, total: int | None, verbose: bool, label: str):
        self.verbose, self.label = verbose, label
        self.meter = progress_lib.Progress(total, "images")

    def step(self, message: str) -> None:
        self.meter.update()
        if self.verbose:
            print(
                f"[{self.label}] {message} | {self.meter.describe()}", file=sys.stderr, flush=True
            )


def write_outputs(
    out_dir: str, flat: dict, rows: Sequence[dict], breakdowns: dict, config: dict
) -> None:
    """Writes ``metrics.json``, ``per_image.csv`` and ``summary.png`` into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    report.write_json(
        os.path.join(out_dir, "metrics.json"),
        {"metrics": flat, "breakdowns": breakdowns, "config": config},
    )
    report.write_csv(os.path.join(out_dir, "per_image.csv"), rows)
    report.summary_plot(os.path.join(out_dir, "summary.png"), breakdowns, flat)


def _normalise_fns(predict_fns) -> list[PredictFn]:
    if callable(predict_fns):
        return [predict_fns]
    fns = list(predict_fns)
    if not fns or not all(callable(fn) for fn in fns):
        raise ValueError("predict_fns must be a callable or a non-empty sequence of callables")
    return fns


def evaluate_records(
    predict_fns: PredictFn | Sequence[PredictFn],
    records: Iterable[dict],
    *,
    context: int = 512,
    centre: int = 256,
    stride: int = 128,
    stitch_mode: str | None = None,
    tta: bool = False,
    batch_size: int = 8,
    out_dir: str | None = None,
    length_rule: str = "tyrion",
    allow_empty_true_front: bool = False,
    max_overlays: int | None = None,
    num_records: int | None = None,
    verbose: bool = True,
) -> EvaluationResult:
    """Evaluates full images: stitched (TTA/ensemble) prediction, fronts, MDE and zone metrics.

    Args:
        predict_fns: One callable or a sequence (ensemble members). Each maps float32
            ``[N, context, context, 1]`` SAR tiles in [0, 1] to logits
            ``[N, context, context, 4]`` (numpy or jax).
        records: CaFFe record dicts (``docs/interfaces.md``): ``sar`` uint8 ``[H, W, 1]``,
            ``zones`` ``[H, W]``, ``front`` ``[H, W]``, ``bbox`` ``[4, 2]`` (or None), metadata.
        context: Tile size fed to the model.
        centre: Centre kept from each tile.
        stride: ``128`` for overlapping tiles (reference mode A), ``centre`` for mode B.
        stitch_mode: ``"gaussian"`` or ``"plain"``; default gaussian when overlapping.
        tta: 4 rotations per member, rotated back before averaging.
        batch_size: Tiles per predict call.
        out_dir: When given, writes ``metrics.json``, ``per_image.csv``, ``summary.png``,
            ``overlays/<stem>.png`` and (several passes) ``uncertainty/<stem>.png``.
        length_rule: ``"tyrion"`` (keep pieces of exactly 750/r px) or ``"caffe"``.
        allow_empty_true_front: Count images with an empty true front as missing (reference)
            instead of raising.
        max_overlays: Number of images with overlay/uncertainty PNGs (None = all).
        num_records: Total for the ETA when ``records`` has no ``len``.
        verbose: Print progress (images/s, ETA) to stderr.

    Returns:
        The :class:`EvaluationResult`; ``result.metrics`` is the flat dict for logging.
    """
    fns = _normalise_fns(predict_fns)
    if stitch_mode is None:
        stitch_mode = "gaussian" if stride < centre else "plain"
    if stitch_mode not in STITCH_MODES:
        raise ValueError(f"stitch_mode must be one of {STITCH_MODES}, got {stitch_mode!r}")
    if length_rule not in LENGTH_RULES:
        raise ValueError(f"length_rule must be one of {LENGTH_RULES}, got {length_rule!r}")
    if num_records is None and hasattr(records, "__len__"):
        num_records = len(records)
    start = time.perf_counter()
    progress = _Progress(num_records, verbose, "eval")
    rows: list[dict] = []
    for index, record in enumerate(records):
        image = parse_record(record, index=index, allow_empty_true_front=allow_empty_true_front)
        probs, std, passes = ensemble_probabilities(
            fns,
            image.sar,
            tta=tta,
            context=context,
            centre=centre,
            stride=stride,
            stitch_mode=stitch_mode,
            batch_size=batch_size,
            num_classes=NUM_ZONE_CLASSES,
            name=image.stem,
        )
        pred_zones = np.argmax(probs, axis=-1).astype(np.uint8)  # ties -> lowest id
        row, pred_front = evaluate_image(image, pred_zones, length_rule=length_rule)
        row["passes"] = passes
        row["mean_std"] = float(std.mean())
        rows.append(row)
        if out_dir and (max_overlays is None or index < max_overlays):
            picture = report.overlay_picture(
                image.sar,
                pred_zones,
                image.zones,
                pred_front,
                image.front,
                image.pixel_spacing_m,
                image.bbox,
            )
            report.atomic_save_png(os.path.join(out_dir, "overlays", f"{image.stem}.png"), picture)
            if passes > 1:
                report.atomic_save_png(
                    os.path.join(out_dir, "uncertainty", f"{image.stem}.png"),
                    report.uncertainty_picture(std),
                )
        progress.step(f"{image.stem}: MDE {row['mde_m']:.1f} m, IoU {row['iou_mean']:.3f}")
    flat, breakdowns = summarise(rows)
    config = {
        "context": context,
        "centre": centre,
        "stride": stride,
        "stitch_mode": stitch_mode,
        "tta": tta,
        "ensemble_members": len(fns),
        "length_rule": length_rule,
        "allow_empty_true_front": allow_empty_true_front,
    }
    if out_dir:
        write_outputs(out_dir, flat, rows, breakdowns, config)
    return EvaluationResult(flat, rows, breakdowns, time.perf_counter() - start)


def evaluate_zone_predictions(
    predictions: Iterable[np.ndarray],
    records: Iterable[dict],
    *,
    out_dir: str | None = None,
    length_rule: str = "tyrion",
    allow_empty_true_front: bool = False,
    num_records: int | None = None,
    verbose: bool = True,
    num_workers: int = 1,
) -> EvaluationResult:
    """Evaluates already predicted zone maps (post-processing, MDE, IoU; no model).

    Args:
        predictions: ``[H_i, W_i]`` predicted class ids, in the order of ``records``.
        records: CaFFe record dicts.
        out_dir: When given, writes ``metrics.json``, ``per_image.csv`` and ``summary.png``.
        length_rule: ``"tyrion"`` or ``"caffe"``.
        allow_empty_true_front: See :func:`evaluate_records`.
        num_records: Total for the ETA.
        verbose: Print progress.
        num_workers: Processes that post-process and score images in parallel (rows keep
            the record order and are identical to ``num_workers=1``); 1 = in this process.

    Returns:
        The :class:`EvaluationResult`.
    """
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}")
    if num_records is None and hasattr(records, "__len__"):
        num_records = len(records)
    start = time.perf_counter()
    progress = _Progress(num_records, verbose, "eval")
    rows = []
    sentinel = object()
    pred_iter = iter(predictions)
    pool = None
    if num_workers > 1:
        # "spawn": the caller may hold JAX/XLA threads, which a fork would copy half-alive.
        pool = concurrent.futures.ProcessPoolExecutor(
            num_workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_keep_freed_memory,
        )
    pending: collections.deque = collections.deque()

    def collect_one() -> None:
        row = pending.popleft().result()
        rows.append(row)
        progress.step(f"{row['stem']}: MDE {row['mde_m']:.1f} m")

    try:
        for index, record in enumerate(records):
            image = parse_record(
                record,
                index=index,
                allow_empty_true_front=allow_empty_true_front,
                require_sar=False,
            )
            pred = next(pred_iter, sentinel)
            if pred is sentinel:
                raise ValueError(f"{image.stem}: no prediction left for this record")
            pred = np.asarray(pred)
            if pool is None:
                row, _ = evaluate_image(image, pred, length_rule=length_rule)
                rows.append(row)
                progress.step(f"{image.stem}: MDE {row['mde_m']:.1f} m")
                continue
            if pred.shape != image.zones.shape:  # fail here, naming the image, not in a worker
                evaluate_image(image, pred, length_rule=length_rule)
            packed = _PackedImage.pack(image, pred)
            if packed is not None:
                image, pred = packed, None
            pending.append(pool.submit(_evaluate_in_worker, image, pred, length_rule))
            while len(pending) > 2 * num_workers:  # bounded memory: a few images in flight
                collect_one()
        while pending:
            collect_one()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if next(pred_iter, sentinel) is not sentinel:
        raise ValueError(f"More predictions than records ({len(rows)} records)")
    flat, breakdowns = summarise(rows)
    if out_dir:
        config = {"length_rule": length_rule, "allow_empty_true_front": allow_empty_true_front}
        write_outputs(out_dir, flat, rows, breakdowns, config)
    return EvaluationResult(flat, rows, breakdowns, time.perf_counter() - start)
