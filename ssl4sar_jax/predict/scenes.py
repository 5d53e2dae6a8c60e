"""Reading SAR scenes for prediction: discovery, georeferencing, metadata, 8-bit conversion.

A scene is one single-band raster: a GeoTIFF (any CRS, any size; uint8 as CaFFe, or float32
backscatter in linear power or dB) or a CaFFe-named PNG (pixel spacing from the file name, no
map coordinates). Everything the rest of the predictor needs is gathered in :class:`Scene`.

Conventions (docs/predict.md): the model sees the CaFFe 8-bit convention, ``0`` = no data and
``1..255`` = backscatter; float backscatter is converted with
``uint8 = 1 + round(254 * clip((dB - lo) / (hi - lo), 0, 1))`` (``dB = 10 log10(power)`` for linear
power), and input nodata pixels become 0 (the model input) and the NA class (the output).
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import math
import os
import re
import warnings
from collections.abc import Sequence

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine

from ssl4sar_jax.constants import SENSORS
from ssl4sar_jax.data.caffe_files import parse_stem

SCENE_EXTENSIONS = (".tif", ".tiff", ".png")
INPUT_SCALES = ("auto", "uint8", "db", "linear")
_DATE_PATTERNS = (
    re.compile(r"(?<!\d)(\d{4})-(\d{2})-(\d{2})(?!\d)"),
    re.compile(r"(?<!\d)(\d{4})(\d{2})(\d{2})(?:T\d{6})?(?!\d)"),
)
# Sensor tokens recognised in file names (besides the CaFFe ones), mapped to a sensor name.
_SENSOR_ALIASES = {"S1A": "S1", "S1B": "S1", "S1C": "S1", "SENTINEL1": "S1", "TDX1": "TDX"}


class SceneError(ValueError):
    """A scene cannot be predicted (the message names the file and what was expected)."""


@dataclasses.dataclass
class Scene:
    """One input scene, ready for tiling.

    Attributes:
        path: Input file.
        name: Output name (the file stem).
        sar: ``[H, W]`` uint8 in the CaFFe convention (0 = no data).
        valid: ``[H, W]`` bool, False where the input has no data.
        crs: Scene CRS, or None (not georeferenced).
        transform: Pixel -> map affine transform (identity when not georeferenced).
        spacing_m: ``(x, y)`` pixel spacing in metres, or None when unknown.
        date: ISO date ``YYYY-MM-DD`` or "".
        sensor: Sensor token or "".
        glacier: Glacier name or "".
        source_scale: How the values were read (``uint8``, ``db`` or ``linear``).
        warnings: Messages worth recording in the run summary.
    """

    path: str
    name: str
    sar: np.ndarray
    valid: np.ndarray
    crs: CRS | None
    transform: Affine
    spacing_m: tuple[float, float] | None
    date: str = ""
    sensor: str = ""
    glacier: str = ""
    source_scale: str = "uint8"
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.sar.shape)  # type: ignore[return-value]

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None

    @property
    def mean_spacing_m(self) -> float:
        if self.spacing_m is None:
            raise SceneError(f"{self.path}: the pixel spacing is unknown")
        return float(np.sqrt(self.spacing_m[0] * self.spacing_m[1]))


def find_scenes(inputs: str | Sequence[str]) -> list[str]:
    """Expands files, folders (their scene files, not recursive) and globs into a sorted list.

    Raises:
        FileNotFoundError: naming an input that matches nothing.
        SceneError: when two scenes have the same name (their outputs would collide).
    """
    if isinstance(inputs, str):
        inputs = [inputs]
    found: list[str] = []
    for item in inputs:
        item = os.path.expanduser(str(item))
        if os.path.isdir(item):
            matches = [
                os.path.join(item, f)
                for f in os.listdir(item)
                if f.lower().endswith(SCENE_EXTENSIONS) and not f.startswith(".")
            ]
        elif os.path.isfile(item):
            matches = [item]
        else:
            matches = [p for p in glob.glob(item) if os.path.isfile(p)]
        if not matches:
            raise FileNotFoundError(
                f"input {item!r} matches no scene file (expected a file, a folder with "
                f"{'/'.join(SCENE_EXTENSIONS)} files, or a glob)"
            )
        found += [os.path.abspath(m) for m in matches]
    paths = sorted(set(found))
    names: dict[str, str] = {}
    for p in paths:
        name = scene_name(p)
        if name in names:
            raise SceneError(
                f"two inputs have the same name {name!r} ({names[name]} and {p}); their outputs "
                "would overwrite each other - rename one or predict them separately"
            )
        names[name] = p
    return paths


def scene_name(path: str) -> str:
    """Output name of a scene: the file name without extension."""
    return os.path.splitext(os.path.basename(path))[0]


def split_for_process(paths: Sequence[str], index: int, count: int) -> list[str]:
    """The scenes of process ``index`` of ``count`` (round robin, stable across re-runs)."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"need 0 <= process_index < process_count, got {index} of {count}")
    return list(paths[index::count])


def metadata_from_name(name: str) -> dict[str, str]:
    """``date``/``sensor``/``glacier`` (and ``spacing_m`` for CaFFe names) from a file stem."""
    try:
        caffe = parse_stem(name)
        return {
            "date": caffe.date,
            "sensor": caffe.sensor,
            "glacier": caffe.glacier,
            "spacing_m": str(caffe.resolution_m),
        }
    except ValueError:
        pass
    out: dict[str, str] = {}
    for pattern in _DATE_PATTERNS:
        match = pattern.search(name)
        if match:
            try:
                out["date"] = datetime.date(*(int(g) for g in match.groups())).isoformat()
                break
            except ValueError:
                continue
    tokens = re.split(r"[_\-. ]+", name)
    for token in tokens:
        upper = token.upper()
        if upper in SENSORS or upper in _SENSOR_ALIASES:
            out["sensor"] = _SENSOR_ALIASES.get(upper, upper)
            break
    # CaFFe-like stems of other glaciers: <Glacier>_<date>_<sensor>_<spacing>_...
    fields = name.split("_")
    if (
        len(fields) >= 4
        and "date" in out
        and fields[1] in (out["date"], out["date"].replace("-", ""))
    ):
        out["glacier"] = fields[0]
        if fields[3].isdigit() and int(fields[3]) > 0:
            out["spacing_m"] = fields[3]
    return out


def _metadata_from_tags(tags: dict[str, str]) -> dict[str, str]:
    lower = {k.lower(): v.strip() for k, v in tags.items() if isinstance(v, str) and v.strip()}
    out: dict[str, str] = {}
    for key in ("date", "acquisition_date", "acquisition_start", "tifftag_datetime", "datetime"):
        if key in lower:
            value = lower[key].replace(":", "-", 2) if key == "tifftag_datetime" else lower[key]
            for pattern in _DATE_PATTERNS:
                match = pattern.search(value)
                if match:
                    try:
                        out["date"] = datetime.date(*(int(g) for g in match.groups())).isoformat()
                    except ValueError:
                        continue
                    break
            if "date" in out:
                break
    for key in ("sensor", "mission", "platform"):
        if key in lower:
            value = lower[key].upper().replace("-", "")
            out["sensor"] = _SENSOR_ALIASES.get(value, lower[key])
            break
    for key in ("glacier", "glacier_name", "site"):
        if key in lower:
            out["glacier"] = lower[key]
            break
    return out


def pixel_spacing_m(crs: CRS | None, transform: Affine, shape: tuple[int, int]):
    """``(x, y)`` ground pixel spacing in metres of a raster grid, or None without a CRS.

    Projected CRSs: the transform's pixel size times the CRS unit (metres, feet, ...).
    Geographic CRSs: geodesic lengths of one pixel step at the scene centre (WGS84 ellipsoid of
    the CRS).
    """
    if crs is None:
        return None
    col_step = math.hypot(transform.a, transform.d)
    row_step = math.hypot(transform.b, transform.e)
    if crs.is_projected:
        factor = crs.linear_units_factor[1]
        return col_step * factor, row_step * factor
    from pyproj import Geod

    geod = Geod(ellps="WGS84")
    cx, cy = transform @ (shape[1] / 2, shape[0] / 2)
    ax, ay = transform @ (shape[1] / 2 + 1, shape[0] / 2)
    bx, by = transform @ (shape[1] / 2, shape[0] / 2 + 1)
    _, _, dx = geod.inv(cx, cy, ax, ay)
    _, _, dy = geod.inv(cx, cy, bx, by)
    return float(dx), float(dy)


def to_uint8(values: np.ndarray, valid: np.ndarray, scale: str, db_range: Sequence[float]):
    """Backscatter -> the CaFFe 8-bit convention (``0`` = no data, ``1..255`` = data).

    Args:
        values: ``[H, W]`` raster values.
        valid: ``[H, W]`` bool data mask.
        scale: ``uint8`` (values kept as they are), ``db`` or ``linear`` (power).
        db_range: ``(lo, hi)`` dB mapped to 1 and 255; empty: the scene's 2nd and 98th
            percentiles of the valid pixels.

    Returns:
        uint8 ``[H, W]``.
    """
    if scale == "uint8":
        # Kept bit for bit (CaFFe images use 0 for no data themselves).
        out = np.asarray(values).astype(np.uint8)
        out[~valid] = 0
        return out
    data = np.asarray(values, dtype=np.float64)
    if scale == "linear":
        with np.errstate(divide="ignore", invalid="ignore"):
            data = 10.0 * np.log10(np.maximum(data, 1e-10))
    if len(db_range) == 0:
        lo, hi = np.percentile(data[valid], [2.0, 98.0])
    else:
        lo, hi = (float(v) for v in db_range)
    if not hi > lo:
        raise ValueError(f"db_range must be (lo, hi) with hi > lo, got ({lo}, {hi})")
    data = np.where(valid, data, lo)  # no NaN reaches the integer cast
    scaled = np.clip((data - lo) / (hi - lo), 0.0, 1.0)
    out = (1 + np.round(scaled * 254)).astype(np.uint8)
    out[~valid] = 0
    return out


def _infer_scale(values: np.ndarray, valid: np.ndarray, dtype: str) -> str:
    if dtype == "uint8":
        return "uint8"
    sample = values[valid]
    if sample.size > 200_000:
        sample = sample[:: sample.size // 200_000]
    # dB backscatter is mostly negative; linear power is never negative.
    return "db" if np.median(sample) < 0 or np.min(sample) < 0 else "linear"


def read_scene(
    path: str,
    *,
    band: int = 0,
    input_scale: str = "auto",
    db_range: Sequence[float] = (-27.0, 5.0),
    pixel_spacing_override_m: float = 0.0,
) -> Scene:
    """Reads one scene.

    Args:
        path: GeoTIFF or PNG file.
        band: 1-based band to read; 0 = the file must have exactly one band.
        input_scale: ``auto`` (uint8 files as 8-bit, float files as dB when they hold negative
            values, else linear power), ``uint8``, ``db`` or ``linear``.
        db_range: dB mapped to 1..255 (see :func:`to_uint8`).
        pixel_spacing_override_m: Use this spacing (metres) instead of the file's.

    Raises:
        SceneError: naming the file, for an unreadable file, several bands, an all-nodata
            scene, or an unknown input scale.
    """
    if input_scale not in INPUT_SCALES:
        raise SceneError(f"input_scale must be one of {INPUT_SCALES}, got {input_scale!r}")
    name = scene_name(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                if band == 0 and src.count != 1:
                    raise SceneError(
                        f"{path}: has {src.count} bands; expected a single-band SAR image "
                        "(or choose one with --config.band=N)"
                    )
                if band > src.count:
                    raise SceneError(f"{path}: band {band} asked, the file has {src.count}")
                index = band or 1
                values = src.read(index)
                valid = src.read_masks(index) > 0
                dtype = src.dtypes[index - 1]
                crs = src.crs
                transform = src.transform
                tags = src.tags()
                georef = crs is not None and not transform.is_identity
    except SceneError:
        raise
    except (rasterio.errors.RasterioIOError, OSError, ValueError) as err:
        raise SceneError(f"{path}: cannot read the file as a raster ({err})") from err
    if np.issubdtype(values.dtype, np.floating):
        valid &= np.isfinite(values)
    if not valid.any():
        raise SceneError(f"{path}: every pixel is nodata; nothing to predict")
    scale = _infer_scale(values, valid, dtype) if input_scale == "auto" else input_scale
    if scale == "uint8" and dtype != "uint8":
        raise SceneError(f"{path}: input_scale='uint8' but the file holds {dtype} values")
    sar = to_uint8(values, valid, scale, db_range)

    meta = metadata_from_name(name)
    meta.update(_metadata_from_tags(tags))
    scene = Scene(
        path=path,
        name=name,
        sar=sar,
        valid=valid,
        crs=crs if georef else None,
        transform=transform if georef else Affine.identity(),
        spacing_m=None,
        date=meta.get("date", ""),
        sensor=meta.get("sensor", ""),
        glacier=meta.get("glacier", ""),
        source_scale=scale,
    )
    if pixel_spacing_override_m > 0:
        scene.spacing_m = (float(pixel_spacing_override_m),) * 2
    elif georef:
        scene.spacing_m = pixel_spacing_m(crs, transform, sar.shape)
    elif "spacing_m" in meta:
        scene.spacing_m = (float(meta["spacing_m"]),) * 2
    if scene.spacing_m is not None:
        sx, sy = scene.spacing_m
        if abs(sx - sy) > 0.01 * max(sx, sy):
            scene.warnings.append(
                f"non-square pixels ({sx:.2f} x {sy:.2f} m); lengths use the geometric mean "
                "unless the scene is resampled (model_pixel_spacing_m)"
            )
    return scene
