"""Scene -> zones / probabilities / uncertainty GeoTIFFs, front lines, overlay, run summary.

``predict_scenes(config)`` streams the scenes of this process one at a time (bounded memory):
read -> optional resampling to the model pixel spacing -> ensemble x TTA tile inference with
Gaussian stitching (``ssl4sar_jax.evaluation.ensemble``) -> resampling back to the scene grid ->
post-processing (``ssl4sar_jax.evaluation.postprocess``, the 750 m rule at the scene's true
spacing) -> outputs. Every scene is written into a hidden temporary folder that is renamed to
``<output_dir>/<scene>/`` when complete, so a failed scene leaves nothing behind, a re-run skips
finished scenes, and other scenes go on after a failure (recorded in the run summary).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np
import rasterio
from absl import logging
from PIL import Image
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine
from rasterio.warp import reproject

from ssl4sar_jax import progress as progress_lib
from ssl4sar_jax.constants import NA, NUM_ZONE_CLASSES, ZONE_NAMES
from ssl4sar_jax.evaluation.ensemble import ensemble_probabilities
from ssl4sar_jax.evaluation.metrics import json_safe
from ssl4sar_jax.evaluation.postprocess import postprocess_zones
from ssl4sar_jax.evaluation.report import (
    PRED_FRONT_COLOUR,
    ZONE_COLOURS,
    write_csv,
    write_json,
)
from ssl4sar_jax.evaluation.tiling import make_layout
from ssl4sar_jax.predict import scenes as scenes_lib
from ssl4sar_jax.predict import vector

PredictFn = Callable[[np.ndarray], np.ndarray]
ZONES_NODATA = 255  # zones GeoTIFF value of pixels without input data
PROB_SCALE = 250  # uint8 probability/uncertainty files store round(value * 250)
MAX_OVERLAY_SIDE = 2048
# A placeholder CRS lets rasterio resample scenes that have no georeferencing (same CRS on both
# sides, so only the grid changes).
_LOCAL_CRS = CRS.from_epsg(3857)
_UMASK = os.umask(0)
os.umask(_UMASK)


def _as_list(value: str | Sequence[str]) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


# ------------------------------------------------------------------------------ progress
class Progress:
    """Counts predicted tiles and logs tiles/s and ETA for the scene and the whole run."""

    def __init__(self, every_s: float = 10.0):
        self.every_s = every_s
        self.run = progress_lib.Progress(None, "tiles")
        self.scene = progress_lib.Progress(0, "tiles")
        self.scene_name = ""
        self.scenes_left = 0
        self._last = 0.0

    def start_scene(self, name: str, total_tiles: int, scenes_left: int) -> None:
        self.scene_name, self.scenes_left = name, scenes_left
        self.scene = progress_lib.Progress(total_tiles, "tiles")

    def wrap(self, fn: PredictFn) -> PredictFn:
        def counted(tiles: np.ndarray) -> np.ndarray:
            out = fn(tiles)
            self.tick(len(tiles))
            return out

        return counted

    def tick(self, n: int) -> None:
        self.scene.update(min(self.scene.total, self.scene.done + n))
        self.run.update(self.run.done + n)
        now = time.perf_counter()
        if now - self._last >= self.every_s or self.scene.done == self.scene.total:
            self._last = now
            logging.info(
                "%s: %s; %d scene(s) after this one",
                self.scene_name,
                self.scene.describe(),
                self.scenes_left,
            )

    @property
    def tiles_per_s(self) -> float:
        rate = self.run.rate
        return 0.0 if math.isnan(rate) else rate


# ------------------------------------------------------------------------------ models
def _model_config_of_run(path: str):
    """The ModelConfig saved in a run workdir's config.json (also for step dirs), or None."""
    from ssl4sar_jax.tasks.base import model_config_from

    probe = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(probe):  # .npz files carry no config: config.model describes them
        return None
    for _ in range(4):  # workdir, checkpoints/, <step>/, state/
        candidate = os.path.join(probe, "config.json")
        if os.path.isfile(candidate):
            with open(candidate) as f:
                saved = json.load(f)
            task = saved.get("task", "")
            if task and task != "finetune":
                raise ValueError(
                    f"checkpoint {path}: its run trained task {task!r}; prediction needs a "
                    "fine-tuned segmentation model (task 'finetune')"
                )
            if "model" not in saved:
                return None
            return model_config_from(ml_collections.ConfigDict({"model": saved["model"]}))
        probe = os.path.dirname(probe)
    return None


def load_predictors(config: ml_collections.ConfigDict) -> tuple[list[PredictFn], Any, str]:
    """One jitted numpy predict function per checkpoint (ensemble member).

    The model comes from the run's saved ``config.json`` when the checkpoint is a run workdir,
    else from ``config.model``. Each process predicts its own scenes on its local devices only
    (no cross-process collectives), so the batch is sharded over ``jax.local_devices()``.

    Returns:
        ``(predict_fns, model_config, model_id)``.
    """
    import jax
    from flax import nnx

    from ssl4sar_jax import sharding as sharding_lib
    from ssl4sar_jax import steps
    from ssl4sar_jax.models import build_model
    from ssl4sar_jax.tasks.base import model_config_from
    from ssl4sar_jax.tasks.evaluate import load_member

    paths = _as_list(config.checkpoints)
    if not paths:
        raise ValueError(
            "config.checkpoints is empty: pass fine-tuning run workdir(s), checkpoint step "
            "directories or .npz files, e.g. --config.checkpoints=runs/ft_seed0,runs/ft_seed1"
        )
    saved = [_model_config_of_run(p) for p in paths]
    known = [m for m in saved if m is not None]
    if any(m != known[0] for m in known):
        raise ValueError(f"the ensemble members {paths} were trained with different models")
    model_config = known[0] if known else model_config_from(config)
    devices = jax.local_devices()
    batch_size = int(config.batch_size)
    if batch_size % len(devices):
        raise ValueError(
            f"config.batch_size ({batch_size}) must be a multiple of the {len(devices)} local "
            "devices"
        )
    mesh = sharding_lib.make_mesh([("data", -1)], devices)
    model = build_model(model_config, seed=0, objective="segment")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    template = jax.device_get(nnx.to_pure_dict(params))
    batch_sh = sharding_lib.batch_sharding(mesh)
    repl = sharding_lib.replicated(mesh)
    rest = jax.device_put(nnx.to_pure_dict(rest), repl)
    predict_jit = jax.jit(
        steps.make_predict_fn(graphdef), in_shardings=(repl, repl, batch_sh), out_shardings=batch_sh
    )
    fns = []
    for path in paths:
        member = jax.device_put(load_member(path, template, config.which), repl)

        # Not steps.numpy_predictor: that one makes every process pass the same tiles and gathers
        # the outputs, while here each process predicts its own scenes on its local devices.
        def predict_fn(tiles: np.ndarray, member=member) -> np.ndarray | jax.Array:
            tiles = np.asarray(tiles, np.float32)
            dispatched = []
            for start in range(0, len(tiles), batch_size):
                chunk = tiles[start : start + batch_size]
                n = len(chunk)
                if n < batch_size:  # one batch shape -> one compilation
                    chunk = np.concatenate(
                        [chunk, np.zeros((batch_size - n, *chunk.shape[1:]), np.float32)]
                    )
                dispatched.append((predict_jit(member, rest, jax.device_put(chunk, batch_sh)), n))
            if len(dispatched) == 1 and dispatched[0][1] == batch_size:
                # One full batch (what the tiled inference passes): return the device array
                # without waiting, so the caller stitches the previous batch while this one runs.
                return dispatched[0][0]
            return np.concatenate([np.asarray(logits)[:n] for logits, n in dispatched])

        fns.append(predict_fn)
        logging.info("loaded ensemble member %s", path)
    model_id = "+".join(_member_id(p) for p in paths)
    return fns, model_config, model_id


def _member_id(path: str) -> str:
    path = os.path.abspath(os.path.expanduser(path)).rstrip("/")
    parts = path.split(os.sep)
    return "/".join(parts[-2:]) if parts[-1].isdigit() or parts[-1] == "state" else parts[-1]


# ------------------------------------------------------------------------------ grids
@dataclasses.dataclass
class Grid:
    """A raster grid: shape, transform and CRS (placeholder CRS when not georeferenced)."""

    shape: tuple[int, int]
    transform: Affine
    crs: CRS


def model_grid(scene: scenes_lib.Scene, target_m: float) -> Grid | None:
    """The grid of ``scene`` at ``target_m`` metres per pixel, None when no resampling is needed."""
    if target_m <= 0:
        return None
    if scene.spacing_m is None:
        raise scenes_lib.SceneError(
            f"{scene.path}: model_pixel_spacing_m={target_m} asks for resampling but the pixel "
            "spacing of the scene is unknown (no CRS, no spacing in the name); set "
            "--config.pixel_spacing_m"
        )
    sx, sy = scene.spacing_m
    if abs(sx / target_m - 1) < 0.01 and abs(sy / target_m - 1) < 0.01:
        return None
    h, w = scene.shape
    fx, fy = target_m / sx, target_m / sy
    shape = (max(1, int(math.ceil(h / fy))), max(1, int(math.ceil(w / fx))))
    return Grid(shape, scene.transform @ Affine.scale(fx, fy), scene.crs or _LOCAL_CRS)


def _resample(array: np.ndarray, src: Grid, dst: Grid, method: Resampling, nodata=None):
    """``[K, h, w]`` or ``[h, w]`` array from ``src`` to ``dst`` grid."""
    squeeze = array.ndim == 2
    source = array[None] if squeeze else array
    out = np.zeros((source.shape[0], *dst.shape), dtype=source.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        reproject(
            source,
            out,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=dst.transform,
            dst_crs=dst.crs,
            resampling=method,
            src_nodata=nodata,
            dst_nodata=nodata,
        )
    return out[0] if squeeze else out


# ------------------------------------------------------------------------------ prediction
@dataclasses.dataclass
class ScenePrediction:
    probs: np.ndarray  # [H, W, K] float32 mean probability on the scene grid
    std: np.ndarray  # [H, W, K] float32 per-class std over members x rotations
    entropy: np.ndarray  # [H, W] float32 normalised entropy of probs (0..1)
    zones: np.ndarray  # [H, W] uint8 cleaned zones (NA at input nodata)
    front: np.ndarray  # [H, W] bool post-processed front
    passes: int
    tiles: int
    model_spacing_m: float


def count_tiles(shape: tuple[int, int], passes: int, tta: bool, **sizes) -> int:
    """Tiles predicted for one scene (rotated copies by 90/270 degrees have other layouts)."""
    layouts = [make_layout(shape, **sizes).num_tiles]
    if tta:
        turned = make_layout(shape[::-1], **sizes).num_tiles
        layouts = [layouts[0], turned, layouts[0], turned]
    return passes * int(sum(layouts))


def normalised_entropy(probs: np.ndarray) -> np.ndarray:
    """``-sum_k p log p / log K`` of ``[H, W, K]`` probabilities -> ``[H, W]`` in [0, 1]."""
    p = np.clip(probs, 1e-12, 1.0)
    return (-(p * np.log(p)).sum(-1) / np.log(probs.shape[-1])).astype(np.float32)


def predict_scene(
    scene: scenes_lib.Scene,
    predict_fns: Sequence[PredictFn],
    config: ml_collections.ConfigDict,
    context: int,
    progress: Progress | None = None,
    roi_mask: np.ndarray | None = None,
    scenes_left: int = 0,
) -> ScenePrediction:
    """Predicts one scene (see the module docstring for the steps).

    Args:
        scene: The scene.
        predict_fns: Numpy predict functions ``[N, context, context, 1] -> [N, ..., K]`` logits.
        config: A ``configs/predict.py`` config (tiling, TTA, resampling, post-processing).
        context: Tile side (the model's ``img_size``).
        progress: Optional progress reporter.
        roi_mask: ``[H, W]`` bool region of interest (front pixels outside are dropped).
        scenes_left: Scenes after this one (for the progress log).
    """
    centre = int(config.centre_size) or context // 2
    stride = int(config.stride) or centre // 2
    sizes = dict(context=context, centre=centre, stride=stride)
    scene_grid = Grid(scene.shape, scene.transform, scene.crs or _LOCAL_CRS)
    target = model_grid(scene, float(config.model_pixel_spacing_m))
    if target is None:
        sar, valid = scene.sar, scene.valid
        model_spacing = scene.mean_spacing_m if scene.spacing_m else float("nan")
    else:
        if config.resampling == "auto":  # average when coarsening (no aliasing of speckle)
            coarser = float(config.model_pixel_spacing_m) > scene.mean_spacing_m
            method = Resampling.average if coarser else Resampling.bilinear
        else:
            try:
                method = Resampling[config.resampling]
            except KeyError:
                raise ValueError(
                    f"config.resampling {config.resampling!r}: use auto or a rasterio method "
                    "(nearest, bilinear, cubic, average, ...)"
                ) from None
        sar = _resample(scene.sar, scene_grid, target, method, nodata=0)
        valid = _resample(scene.valid.astype(np.uint8), scene_grid, target, Resampling.nearest) > 0
        sar[~valid] = 0
        model_spacing = float(config.model_pixel_spacing_m)
    passes = len(predict_fns) * (4 if config.tta else 1)
    tiles = count_tiles(sar.shape, len(predict_fns), bool(config.tta), **sizes)
    fns = list(predict_fns)
    if progress is not None:
        progress.start_scene(scene.name, tiles, scenes_left)
        fns = [progress.wrap(fn) for fn in fns]
    image = (sar.astype(np.float32) / 255.0)[..., None]  # [h, w, 1] in [0, 1], as in training
    probs, std, count = ensemble_probabilities(
        fns,
        image,
        tta=bool(config.tta),
        batch_size=int(config.batch_size),
        num_classes=NUM_ZONE_CLASSES,
        name=scene.name,
        stitch_mode=config.stitch_mode,
        **sizes,
    )
    assert count == passes
    if target is not None:  # back to the scene grid, class planes first for rasterio
        probs = _resample(np.moveaxis(probs, -1, 0), target, scene_grid, Resampling.bilinear)
        std = _resample(np.moveaxis(std, -1, 0), target, scene_grid, Resampling.bilinear)
        probs = np.moveaxis(probs, 0, -1)
        probs /= np.maximum(probs.sum(-1, keepdims=True), 1e-12)
        std = np.moveaxis(std, 0, -1)
    zones = np.argmax(probs, axis=-1).astype(np.uint8)
    zones[~scene.valid] = NA
    if scene.spacing_m is None:
        raise scenes_lib.SceneError(
            f"{scene.path}: the pixel spacing is unknown (no CRS, no spacing in the file name); "
            "the 750 m front-length rule needs it: set --config.pixel_spacing_m"
        )
    front, cleaned = postprocess_zones(
        zones, scene.mean_spacing_m, None, length_rule=config.length_rule, return_cleaned_zones=True
    )
    if roi_mask is not None:
        front &= roi_mask
    return ScenePrediction(
        probs=probs.astype(np.float32),
        std=std.astype(np.float32),
        entropy=normalised_entropy(probs),
        zones=cleaned.astype(np.uint8),
        front=front,
        passes=passes,
        tiles=tiles,
        model_spacing_m=model_spacing,
    )


# ------------------------------------------------------------------------------ outputs
def _geotiff_profile(scene: scenes_lib.Scene, count: int, dtype: str, nodata) -> dict:
    h, w = scene.shape
    profile = dict(
        driver="GTiff",
        height=h,
        width=w,
        count=count,
        dtype=dtype,
        nodata=nodata,
        transform=scene.transform,
        compress="deflate",
        predictor=2 if dtype == "uint8" else 3,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        BIGTIFF="IF_SAFER",
    )
    if scene.crs is not None:
        profile["crs"] = scene.crs
    return profile


def _write_geotiff(path, scene, bands, dtype, nodata, descriptions, scale=None, tags=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **_geotiff_profile(scene, len(bands), dtype, nodata)) as dst:
            for i, (band, desc) in enumerate(zip(bands, descriptions, strict=True), start=1):
                dst.write(band, i)
                dst.set_band_description(i, desc)
            if scale is not None:
                dst.scales = (scale,) * len(bands)
                dst.offsets = (0.0,) * len(bands)
            if tags:
                dst.update_tags(**tags)


def _quantise(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = np.clip(np.round(values * PROB_SCALE), 0, PROB_SCALE).astype(np.uint8)
    out[~valid] = 255
    return out


def overlay_image(sar: np.ndarray, zones: np.ndarray, front: np.ndarray) -> np.ndarray:
    """Two panels: SAR with the front | zones with the front; downsampled to ~2048 px."""
    from scipy import ndimage

    f = max(1, math.ceil(max(sar.shape) / MAX_OVERLAY_SIDE))
    line = ndimage.binary_dilation(front, structure=np.ones((3 + 2 * (f - 1),) * 2, bool))
    line = line[::f, ::f]
    grey = np.repeat(sar[::f, ::f, None], 3, axis=2)
    grey[line] = PRED_FRONT_COLOUR
    colour = ZONE_COLOURS[np.clip(zones[::f, ::f], 0, 3)]
    colour[line] = PRED_FRONT_COLOUR
    gap = np.full((grey.shape[0], 8, 3), 255, np.uint8)
    return np.concatenate([grey, gap, colour], axis=1)


def scene_record(scene: scenes_lib.Scene, pred: ScenePrediction, features: list[dict], model_id):
    """Per-front-piece attributes and the scene's summary row."""
    lengths, entropies, stds = [], [], []
    for feat in features:
        rc = feat["pixels"]
        if scene.crs is not None:
            lengths.append(vector.geometry_length_m(feat["geometry"], scene.crs))
        else:
            lengths.append(float(feat["geometry"].length) * scene.mean_spacing_m)
        entropies.append(float(pred.entropy[rc[:, 0], rc[:, 1]].mean()))
        stds.append(float(pred.std[rc[:, 0], rc[:, 1]].max(-1).mean()))
    attributes = {
        "scene": [scene.name] * len(features),
        "date": [scene.date] * len(features),
        "sensor": [scene.sensor] * len(features),
        "glacier": [scene.glacier] * len(features),
        "spacing_m": [round(scene.mean_spacing_m, 4)] * len(features),
        "piece": list(range(1, len(features) + 1)),
        "length_m": [round(v, 3) for v in lengths],
        "entropy": [round(v, 5) for v in entropies],
        "std": [round(v, 5) for v in stds],
        "model": [model_id] * len(features),
    }
    valid = scene.valid
    row = {
        "scene": scene.name,
        "input": scene.path,
        "date": scene.date,
        "sensor": scene.sensor,
        "glacier": scene.glacier,
        "crs": scene.crs.to_string() if scene.crs is not None else "",
        "height": scene.shape[0],
        "width": scene.shape[1],
        "spacing_m": round(scene.mean_spacing_m, 4),
        "model_spacing_m": round(pred.model_spacing_m, 4),
        "input_scale": scene.source_scale,
        "passes": pred.passes,
        "tiles": pred.tiles,
        "front_pieces": len(features),
        "front_length_m": round(float(sum(lengths)), 3),
        "missing_front": not features,
        "front_entropy_mean": round(float(np.mean(entropies)), 5) if features else float("nan"),
        "entropy_mean": round(float(pred.entropy[valid].mean()), 5),
        "model": model_id,
    }
    return attributes, row


def write_scene_outputs(
    folder: str,
    scene: scenes_lib.Scene,
    pred: ScenePrediction,
    config: ml_collections.ConfigDict,
    model_id: str,
) -> dict:
    """Writes every output of one scene into ``folder`` (a temporary folder); returns the row."""
    formats = _as_list(config.vector_formats)
    features = vector.front_features(
        pred.front,
        pred.zones,
        scene.transform,
        min_branch_px=int(config.min_branch_px),
    )
    attributes, row = scene_record(scene, pred, features, model_id)
    name = scene.name
    valid = scene.valid
    tags = {"model": model_id, "date": scene.date, "sensor": scene.sensor, "glacier": scene.glacier}
    zones = pred.zones.copy()
    zones[~valid] = ZONES_NODATA
    _write_geotiff(
        os.path.join(folder, f"{name}_zones.tif"),
        scene,
        [zones],
        "uint8",
        ZONES_NODATA,
        ["zone id: 0 NA, 1 rock, 2 glacier, 3 ocean+ice melange"],
        tags=tags,
    )
    if config.uncertainty_dtype not in ("uint8", "float32"):
        raise ValueError(
            f"uncertainty_dtype must be uint8 or float32, got {config.uncertainty_dtype!r}"
        )
    quantised = config.uncertainty_dtype == "uint8"

    def encode(plane):
        if quantised:
            return _quantise(plane, valid)
        return np.where(valid, plane, np.nan).astype(np.float32)

    dtype, nodata = ("uint8", 255) if quantised else ("float32", float("nan"))
    scale = 1.0 / PROB_SCALE if quantised else None
    _write_geotiff(
        os.path.join(folder, f"{name}_probability.tif"),
        scene,
        [encode(pred.probs[..., k]) for k in range(NUM_ZONE_CLASSES)],
        dtype,
        nodata,
        [f"mean probability of {z}" for z in ZONE_NAMES],
        scale=scale,
        tags=tags,
    )
    _write_geotiff(
        os.path.join(folder, f"{name}_uncertainty.tif"),
        scene,
        [encode(pred.entropy)] + [encode(pred.std[..., k]) for k in range(NUM_ZONE_CLASSES)],
        dtype,
        nodata,
        ["normalised entropy of the mean probability"]
        + [f"std of the probability of {z} over {pred.passes} passes" for z in ZONE_NAMES],
        scale=scale,
        tags=tags,
    )
    if formats:
        if scene.crs is None:
            raise scenes_lib.SceneError(
                f"{scene.path}: no georeferencing (CRS + transform), so the front cannot be "
                f"written as map lines ({','.join(formats)}); use a GeoTIFF with a CRS or set "
                "--config.vector_formats=''"
            )
        geoms = [f["geometry"] for f in features]
        for key in formats:
            ext = vector.VECTOR_DRIVERS.get(key, (None, None))[1]
            if ext is None:
                raise ValueError(
                    f"config.vector_formats: unknown format {key!r}; use {sorted(vector.VECTOR_DRIVERS)}"
                )
            vector.write_vector(
                os.path.join(folder, f"{name}_front{ext}"), geoms, attributes, scene.crs, key
            )
    if config.write_overlay:  # plain writes: the folder itself is renamed into place
        Image.fromarray(overlay_image(scene.sar, pred.zones, pred.front)).save(
            os.path.join(folder, f"{name}_overlay.png")
        )
    return row


def _roi_mask(config, scene: scenes_lib.Scene) -> np.ndarray | None:
    if not config.roi:
        return None
    from rasterio import features as rio_features

    if scene.crs is None:
        raise scenes_lib.SceneError(
            f"{scene.path}: a region of interest ({config.roi}) needs a georeferenced scene"
        )
    geoms, _, crs = vector.read_vector(config.roi)
    polys = [g for g in geoms if g is not None and g.geom_type in ("Polygon", "MultiPolygon")]
    if not polys:
        raise ValueError(f"config.roi {config.roi}: holds no polygon")
    if crs is not None:
        polys = vector.reproject_geometries(polys, crs, scene.crs.to_wkt())
    return rio_features.rasterize(
        polys, out_shape=scene.shape, transform=scene.transform, fill=0, default_value=1
    ).astype(bool)


def _spacing_warning(config, scene: scenes_lib.Scene, model_spacing: float) -> str | None:
    lo, hi = (float(v) for v in config.train_spacing_range_m)
    tol = float(config.spacing_tolerance)
    if math.isfinite(model_spacing) and not lo / tol <= model_spacing <= hi * tol:
        return (
            f"{scene.path}: the model input has {model_spacing:.1f} m pixels, far from the "
            f"training range {lo:g}-{hi:g} m; predictions may be poor - set "
            "--config.model_pixel_spacing_m to resample"
        )
    return None


# ------------------------------------------------------------------------------ run
def _summary_paths(output_dir: str, index: int, count: int) -> tuple[str, str]:
    suffix = "" if count == 1 else f"_process{index}-of-{count}"
    return (
        os.path.join(output_dir, f"summary{suffix}.csv"),
        os.path.join(output_dir, f"summary{suffix}.json"),
    )


def _write_summary(csv_path: str, json_path: str, rows: list[dict], totals: dict) -> None:
    write_csv(csv_path, rows)
    write_json(json_path, {"scenes": rows, **totals})
    for path in (csv_path, json_path):  # the atomic writers create 0600 files
        os.chmod(path, 0o666 & ~_UMASK)


def predict_scenes(
    config: ml_collections.ConfigDict, predict_fns: Sequence[PredictFn] | None = None
) -> list[dict]:
    """Predicts every scene of this process; returns the summary rows.

    Args:
        config: A ``configs/predict.py`` config.
        predict_fns: Use these numpy predict functions (``[N, S, S, 1] -> [N, S, S, K]`` logits)
            instead of loading ``config.checkpoints`` (tests, custom models).

    Returns:
        One row per scene of this process (``status``: ``ok``, ``skipped`` or ``failed``).
    """
    t_run = time.perf_counter()
    output_dir = os.path.abspath(os.path.expanduser(config.output_dir or ""))
    if not config.output_dir:
        raise ValueError("config.output_dir is empty: where should the outputs go?")
    paths = scenes_lib.find_scenes(_as_list(config.inputs))
    index, count = int(config.process_index), int(config.process_count)
    mine = scenes_lib.split_for_process(paths, index, count)
    logging.info(
        "%d scene(s) found, %d for process %d of %d -> %s",
        len(paths),
        len(mine),
        index,
        count,
        output_dir,
    )
    os.makedirs(output_dir, exist_ok=True)
    todo, rows = [], []
    for path in mine:
        name = scenes_lib.scene_name(path)
        marker = os.path.join(output_dir, name, f"{name}.json")
        if os.path.isfile(marker) and not config.overwrite:
            with open(marker) as f:
                done = json.load(f)
            rows.append({**done, "status": "skipped", "note": "outputs exist (resume)"})
        else:
            todo.append(path)
    if rows:
        logging.info("skipping %d scene(s) whose outputs exist", len(rows))
    if predict_fns is None and todo:
        predict_fns, model_config, model_id = load_predictors(config)
        context = model_config.img_size  # the checkpoints' model, which may differ from config
    else:
        model_id = str(config.get("model_id", "") or "custom")
        context = int(config.model.img_size)
    csv_path, json_path = _summary_paths(output_dir, index, count)
    progress = Progress(float(config.progress_every_s))
    for i, path in enumerate(todo):
        name = scenes_lib.scene_name(path)
        t0 = time.perf_counter()
        tmp = tempfile.mkdtemp(prefix=f".tmp_{name}_", dir=output_dir)
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700 folders; outputs are for sharing
        row: dict[str, Any] = {"scene": name, "input": path}
        try:
            scene = scenes_lib.read_scene(
                path,
                band=int(config.band),
                input_scale=config.input_scale,
                db_range=tuple(config.db_range),
                pixel_spacing_override_m=float(config.pixel_spacing_m),
            )
            if _as_list(config.vector_formats) and scene.crs is None:
                raise scenes_lib.SceneError(
                    f"{path}: no georeferencing (CRS + transform), so the front cannot be "
                    "written as map lines; use a GeoTIFF with a CRS or set "
                    "--config.vector_formats=''"
                )
            pred = predict_scene(
                scene,
                predict_fns,
                config,
                context,
                progress,
                roi_mask=_roi_mask(config, scene),
                scenes_left=len(todo) - i - 1,
            )
            warning = _spacing_warning(config, scene, pred.model_spacing_m)
            if warning:
                scene.warnings.append(warning)
            for message in scene.warnings:
                logging.warning("%s", message)
            row = write_scene_outputs(tmp, scene, pred, config, model_id)
            row.update(
                status="ok",
                warnings=" | ".join(scene.warnings),
                seconds=round(time.perf_counter() - t0, 3),
            )
            with open(os.path.join(tmp, f"{name}.json"), "w") as f:
                json.dump(json_safe(row), f, indent=2)
            final = os.path.join(output_dir, name)
            if os.path.exists(final):  # overwrite: move the old outputs aside first
                old = tempfile.mkdtemp(prefix=f".old_{name}_", dir=output_dir)
                os.replace(final, os.path.join(old, name))
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            logging.info(
                "%s: %d front piece(s), %.0f m, %.1f s",
                name,
                row["front_pieces"],
                row["front_length_m"],
                row["seconds"],
            )
        except Exception as err:  # one bad scene must not stop the others
            message = str(err) if path in str(err) else f"{path}: {err}"
            logging.error("scene failed: %s", message)
            logging.debug("%s", traceback.format_exc())
            row.update(status="failed", error=message, seconds=round(time.perf_counter() - t0, 3))
            if config.fail_fast:
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        rows.append(row)
        _write_summary(csv_path, json_path, rows, {})
    failed = [r for r in rows if r.get("status") == "failed"]
    _write_summary(
        csv_path,
        json_path,
        rows,
        {
            "num_scenes": len(rows),
            "num_failed": len(failed),
            "num_skipped": sum(r.get("status") == "skipped" for r in rows),
            "tiles_per_s": round(progress.tiles_per_s, 3),
            "seconds": round(time.perf_counter() - t_run, 3),
        },
    )
    logging.info(
        "done: %d ok, %d skipped, %d failed in %.1f s; summary %s",
        sum(r.get("status") == "ok" for r in rows),
        sum(r.get("status") == "skipped" for r in rows),
        len(failed),
        time.perf_counter() - t_run,
        csv_path,
    )
    return rows
