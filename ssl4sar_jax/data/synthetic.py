"""Offline synthetic CaFFe and SSL4SAR data, written to disk in the real layouts.

The generators render glacier scenes procedurally (numpy + scipy, deterministic from a seed):

* a glacier tongue flowing down a meandering fjord between irregular rock walls, fed by an ice
  field with nunataks;
* an irregular calving front whose position moves with time (trend + seasonal cycle);
* ice melange (class "ocean") near the front, denser in winter; open ocean whose brightness
  depends on wind (sometimes as bright as the glacier, so intensity alone does not separate
  classes);
* NA areas with SAR value 0: radar shadow behind rock walls and straight swath edges;
* backscatter in dB per surface with texture (crevasses, terrain), seasons changing contrast
  (wet snow darkens the glacier in summer), multiplicative gamma speckle with few looks applied to
  the linear intensity, then quantised in log scale per sensor;
* the real mix of sensors and pixel spacings per glacier (CaFFe, Gourmelon et al. 2022, ESSD), scaled-down sizes.

CaFFe output (the layout and file-name grammar of the CaFFe ``data_raw`` archive)::

    <root>/data_raw/sar_images/{train,test}/<stem>.png
    <root>/data_raw/zones/{train,test}/<stem>_zones.png
    <root>/data_raw/fronts/{train,test}/<stem>_front.png
    <root>/data_raw/bounding_boxes/<stem>_front_extent_coord.txt

SSL4SAR output (the layout the `ssl4sar` builder reads, as TYRION ``CaFFe/dataset_unlabeled.py``)::

    <root>/unlabeled_data_raw_train/<S1A|S1B>_<Glacier>_<YYYY-MM-DD>_<orbit>.png
    <root>/unlabeled_data_raw_val/...
    <root>/data_optical/<Glacier>_S2_<YYYY-MM-DD>.tif   (15-band float32 GeoTIFF, real CRS)

Command line::

    python -m ssl4sar_jax.data.synthetic --preview docs/images/synthetic_caffe.png
    python -m ssl4sar_jax.data.synthetic --ssl4sar-preview docs/images/synthetic_ssl4sar.png
    python -m ssl4sar_jax.data.synthetic --caffe-out /tmp/synth --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ssl4sar_jax.constants import (
    GLACIER,
    GLACIERS,
    NA,
    OCEAN,
    ROCK,
    TEST_GLACIERS,
    ZONE_PNG_VALUES,
    season_of,
)
from ssl4sar_jax.data.caffe_files import (
    BBOX_SUFFIX,
    CAFFE_SENSOR_COUNTS,
    FRONT_SUFFIX,
    ZONES_SUFFIX,
    format_stem,
)
from ssl4sar_jax.data.synthetic_specs import (  # noqa: F401  (re-exported)
    SSL4SAR_SYNTHETIC_GLACIERS,
    SyntheticCaffeSpec,
    SyntheticSSL4SARSpec,
)

# Years each sensor was acquiring (used to draw plausible dates).
SENSOR_YEARS: dict[str, tuple[int, int]] = {
    "ERS": (1995, 2000),
    "RSAT": (1997, 2008),
    "ENVISAT": (2003, 2011),
    "PALSAR": (2007, 2010),
    "TSX": (2009, 2020),
    "TDX": (2011, 2020),
    "S1": (2015, 2020),
}
# Equivalent number of looks of the speckle per sensor (few looks -> strong speckle).
SENSOR_LOOKS: dict[str, float] = {
    "ERS": 3.0,
    "ENVISAT": 3.0,
    "RSAT": 2.0,
    "PALSAR": 2.0,
    "TSX": 1.5,
    "TDX": 1.5,
    "S1": 4.0,
}
# Quality-factor frequencies 1..6 of the real CaFFe images (file-name field 4).
QUALITY_WEIGHTS = np.array([334, 141, 111, 54, 36, 5], dtype=np.float64)


def sensor_resolution(glacier: str, sensor: str, rng: np.random.Generator) -> int:
    """Pixel spacing (m) per sensor, consistent with the real CaFFe per-resolution counts."""
    if sensor in ("TSX", "TDX"):
        return 6 if glacier == "JAC" else 7
    if sensor == "PALSAR":
        return 17
    if sensor == "RSAT":
        return 12 if rng.random() < 43 / 54 else 20
    return 20  # S1, ENVISAT, ERS


# ----------------------------------------------------------------------------------------------
# Noise helpers
# ----------------------------------------------------------------------------------------------


def _stable_seed(*parts: object) -> int:
    """A process-independent integer seed from strings/ints (Python's hash() is salted)."""
    return zlib.crc32("|".join(str(p) for p in parts).encode())


def _interp_matrix(n_out: int, n_grid: int) -> np.ndarray:
    """[n_out, n_grid] smoothstep interpolation weights (a C1-smooth, separable upsampler)."""
    t = np.linspace(0, n_grid - 1.000001, n_out)
    i0 = np.floor(t).astype(int)
    f = t - i0
    s = f * f * (3 - 2 * f)
    m = np.zeros((n_out, n_grid))
    m[np.arange(n_out), i0] = 1 - s
    m[np.arange(n_out), i0 + 1] = s
    return m


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cells: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise with about `cells` features along each axis."""
    n_grid = max(2, int(math.ceil(cells)) + 1)
    if len(shape) == 1:
        out = _interp_matrix(shape[0], n_grid) @ rng.standard_normal(n_grid)
    else:
        grid = rng.standard_normal((n_grid, n_grid))
        out = _interp_matrix(shape[0], n_grid) @ grid @ _interp_matrix(shape[1], n_grid).T
    out = out - out.mean()
    return out / (out.std() + 1e-8)


def _fractal_noise(rng: np.random.Generator, shape: tuple[int, ...], cells: float, octaves=4):
    out = np.zeros(shape)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        out += amp * _smooth_noise(rng, shape, cells * 2**o)
        total += amp
        amp *= 0.5
    return out / total


# ----------------------------------------------------------------------------------------------
# Scene model
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GlacierGeometry:
    """Static, per-glacier scene parameters (shared by every image of that glacier)."""

    name: str
    orientation: int  # rot90 count applied to the canonical frame (glacier flows "down")
    transpose: bool
    aspect: float  # width / height of the scene
    centre: float  # fjord centre line position across the flow (0..1)
    meander_amp: float
    meander_freq: float
    meander_phase: float
    half_width: float  # fjord half width at the front
    widening: float
    coast: float  # along-flow position where the fjord opens to the sea
    front_mean: float  # mean front position along the flow (0..1)
    front_trend: float  # per year (positive = retreat up-fjord is negative)
    front_season_amp: float
    northern: bool
    wall_seed: int


def glacier_geometry(glacier: str, seed: int) -> GlacierGeometry:
    rng = np.random.default_rng(_stable_seed("geometry", glacier, seed))
    return GlacierGeometry(
        name=glacier,
        orientation=int(rng.integers(4)),
        transpose=bool(rng.random() < 0.5),
        aspect=float(rng.uniform(0.8, 1.3)),
        centre=float(rng.uniform(0.4, 0.6)),
        meander_amp=float(rng.uniform(0.03, 0.1)),
        meander_freq=float(rng.uniform(0.5, 1.5)),
        meander_phase=float(rng.uniform(0, 2 * np.pi)),
        half_width=float(rng.uniform(0.1, 0.17)),
        widening=float(rng.uniform(0.05, 0.2)),
        coast=float(rng.uniform(0.75, 0.9)),
        front_mean=float(rng.uniform(0.45, 0.6)),
        front_trend=float(rng.uniform(-0.012, 0.002)),
        front_season_amp=float(rng.uniform(0.02, 0.05)),
        northern=glacier in ("COL", "JAC") or glacier not in GLACIERS,
        wall_seed=int(rng.integers(2**31)),
    )


def _front_position(geo: GlacierGeometry, date: datetime.date, rng: np.random.Generator) -> float:
    years = (date - datetime.date(2008, 1, 1)).days / 365.25
    phase = date.timetuple().tm_yday / 365.25 + (0.0 if geo.northern else 0.5)
    # Fronts advance in (local) winter/spring and retreat in late summer.
    seasonal = geo.front_season_amp * math.sin(2 * math.pi * (phase - 0.1))
    pos = geo.front_mean - geo.front_trend * years + seasonal + rng.normal(0, 0.015)
    return float(np.clip(pos, 0.28, min(0.78, geo.coast - 0.05)))


def render_scene(
    geo: GlacierGeometry,
    shape: tuple[int, int],
    date: datetime.date,
    sensor: str,
    rng: np.random.Generator,
    *,
    front_pos: float | None = None,
    na_areas: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renders one acquisition.

    Args:
        geo: glacier geometry.
        shape: output ``(H, W)`` after orientation.
        date: acquisition date (season, front position).
        sensor: sensor token (looks, dynamic range).
        rng: per-image random generator.
        front_pos: along-flow front position override (0..1).
        na_areas: add radar shadow / swath-edge NA areas.

    Returns:
        ``(sar uint8 [H, W], zones class ids uint8 [H, W], melange fraction float32 [H, W])``.
    """
    h, w = shape
    rotated = (geo.orientation % 2 == 1) != geo.transpose
    hc, wc = (w, h) if rotated else (h, w)
    yy, xx = np.meshgrid(np.linspace(0, 1, hc), np.linspace(0, 1, wc), indexing="ij")
    season = season_of(geo.name, date.month) if geo.name in GLACIERS else _season_north(date)
    winter = season == "winter"

    # Fjord walls: the static shape comes from the glacier's wall seed (same in every image).
    wall_rng = np.random.default_rng(geo.wall_seed)
    y1 = np.linspace(0, 1, hc)
    centre = geo.centre + geo.meander_amp * np.sin(
        2 * np.pi * geo.meander_freq * y1 + geo.meander_phase
    )
    half = geo.half_width + geo.widening * (y1 - 0.5)
    half = half + 3.0 * np.clip(y1 - geo.coast, 0, None)  # opens to the sea
    half = half + 0.25 * np.clip(0.15 - y1, 0, None) / 0.15  # ice field upstream
    left = centre - half - 0.03 * _fractal_noise(wall_rng, (hc,), 6)
    right = centre + half + 0.03 * _fractal_noise(wall_rng, (hc,), 6)
    inside = (xx > left[:, None]) & (xx < right[:, None])
    terrain = _fractal_noise(wall_rng, (hc, wc), 5)
    nunatak = (terrain > 1.6) & (yy < geo.front_mean - 0.1)  # rock islands in the ice field

    # Calving front: irregular, concave, moving with time.
    fpos = _front_position(geo, date, rng) if front_pos is None else front_pos
    x1 = np.linspace(0, 1, wc)
    # Curved front (bulging or concave), bounded so it never runs down the open coast.
    across = np.clip((x1 - geo.centre) / max(geo.half_width, 1e-3), -1.5, 1.5)
    bow = 0.04 * rng.uniform(-1, 1.5) * across**2
    jag = 0.025 * _fractal_noise(rng, (wc,), 10, octaves=5) + 0.01 * _fractal_noise(rng, (wc,), 40)
    front_y = fpos - bow + jag
    glacier = inside & (yy < front_y[None, :]) & ~nunatak
    ocean = inside & (yy >= front_y[None, :])
    zones = np.full((hc, wc), ROCK, dtype=np.uint8)
    zones[glacier] = GLACIER
    zones[ocean] = OCEAN

    # Distance below the front (in normalised units) for melange density and crevasses.
    below = yy - front_y[None, :]
    # --- Backscatter model in dB ------------------------------------------------------------
    db = np.zeros((hc, wc))
    # Rock: bright, rough terrain with layover/foreshortening texture.
    rock_db = -7.0 + 4.0 * terrain + 2.0 * _fractal_noise(rng, (hc, wc), 25, octaves=2)
    # Glacier: dry snow/ice bright in winter; wet snow dark in summer (contrast drops); crevasse
    # bands across the flow near the front.
    ice_base = rng.normal(-6.0, 1.0) if winter else rng.normal(-13.0, 1.5)
    crevasse_zone = np.exp(-np.clip(-below, 0, None) / 0.12)
    crevasse = np.sin(2 * np.pi * (yy * rng.uniform(25, 45) + 0.3 * terrain)) > 0.3
    ice_db = (
        ice_base
        + 1.5 * _fractal_noise(rng, (hc, wc), 8)
        + crevasse_zone * (3.0 + 4.0 * crevasse * (rng.random() < 0.8))
    )
    # Ocean: wind-roughened sea; sometimes as bright as the glacier.
    wind = rng.uniform(-22.0, -9.0)
    ocean_db = wind + 2.5 * _fractal_noise(rng, (hc, wc), 4, octaves=3)
    # Melange: granular bright floes, dense near the front, more in winter; sea ice in winter.
    melange_len = rng.uniform(0.05, 0.25) * (1.5 if winter else 0.7)
    density = np.exp(-np.clip(below, 0, None) / melange_len) * rng.uniform(0.5, 1.0)
    floes = _smooth_noise(rng, (hc, wc), max(hc, wc) / 6.0)
    melange = ocean & (floes > (1.6 - 2.6 * density))
    melange_db = -5.0 + 2.0 * _smooth_noise(rng, (hc, wc), max(hc, wc) / 4.0)
    db = np.where(zones == ROCK, rock_db, db)
    db = np.where(zones == GLACIER, ice_db, db)
    db = np.where(zones == OCEAN, np.where(melange, melange_db, ocean_db), db)

    # --- NA areas: radar shadow behind walls and a straight swath edge ------------------------
    na = np.zeros((hc, wc), dtype=bool)
    if na_areas:
        look_dir = rng.choice([-1, 1])
        slope = np.gradient(terrain, axis=1) * look_dir * wc
        shadow = (zones == ROCK) & (slope > np.quantile(slope, rng.uniform(0.9, 0.985)))
        shadow = ndimage.binary_opening(shadow, iterations=1)
        na |= shadow
        if rng.random() < 0.5:
            ang = rng.uniform(0, 2 * np.pi)
            proj = np.cos(ang) * (xx - 0.5) + np.sin(ang) * (yy - 0.5)
            na |= proj > rng.uniform(0.35, 0.6)
    zones[na] = NA

    # --- Speckle (multiplicative, gamma with L looks on the linear intensity), log quantise ----
    looks = SENSOR_LOOKS[sensor]
    intensity = 10 ** (db / 10) * rng.gamma(looks, 1.0 / looks, size=db.shape)
    db_speckled = 10 * np.log10(np.maximum(intensity, 1e-6))
    lo = rng.uniform(-30, -24)
    hi = rng.uniform(2, 8)
    gamma = rng.uniform(0.8, 1.25)  # per-image processing differences
    scaled = np.clip((db_speckled - lo) / (hi - lo), 0, 1) ** gamma
    sar = (1 + np.round(scaled * 254)).astype(np.uint8)  # 0 is reserved for no-data
    sar[na] = 0
    mel = np.where(melange, 1.0, 0.0).astype(np.float32)

    sar, zones, mel = (_orient(a, geo) for a in (sar, zones, mel))
    assert sar.shape == (h, w), (sar.shape, shape)
    return sar, zones, mel


def _season_north(date: datetime.date) -> str:
    return "winter" if date.month in (1, 2, 3, 9, 10, 11, 12) else "summer"


def _orient(a: np.ndarray, geo: GlacierGeometry) -> np.ndarray:
    if geo.transpose:
        a = a.T
    return np.ascontiguousarray(np.rot90(a, geo.orientation))


def front_line(zones: np.ndarray) -> np.ndarray:
    """1-pixel front: glacier pixels with a 4-neighbour ocean pixel -> uint8 {0, 1} [H, W]."""
    g = zones == GLACIER
    o = zones == OCEAN
    touch = np.zeros_like(g)
    touch[1:, :] |= o[:-1, :]
    touch[:-1, :] |= o[1:, :]
    touch[:, 1:] |= o[:, :-1]
    touch[:, :-1] |= o[:, 1:]
    return (g & touch).astype(np.uint8)


def front_bbox(front: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Box around the front in file order (lu, ll, rl, ru) as float32 [4, 2] of (x, y).

    "Upper" y is the larger row index (as the CaFFe code reads the box), so the kept window is rows
    ``[rl_y, lu_y)`` x cols ``[lu_x, rl_x)``.
    """
    h, w = front.shape
    ys, xs = np.nonzero(front)
    if len(ys) == 0:
        x0, x1, y0, y1 = 0.0, w - 1.0, 0.0, h - 1.0
    else:
        mx, my = rng.uniform(0.03, 0.12) * w, rng.uniform(0.03, 0.12) * h
        x0 = max(0.0, xs.min() - mx)
        x1 = min(w - 1.0, xs.max() + mx)
        y0 = max(0.0, ys.min() - my)
        y1 = min(h - 1.0, ys.max() + my)
    return np.array([[x0, y1], [x0, y0], [x1, y0], [x1, y1]], dtype=np.float32)


def _write_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path, format="PNG", optimize=False)


def _allocate(counts: dict[str, int], total: int) -> list[str]:
    """Largest-remainder allocation of `total` draws over sensors (each real sensor kept)."""
    names = sorted(counts)
    weights = np.array([counts[n] for n in names], dtype=np.float64)
    share = weights / weights.sum() * total
    alloc = np.floor(share).astype(int)
    for i in np.argsort(-(share - alloc))[: total - alloc.sum()]:
        alloc[i] += 1
    return [n for n, k in zip(names, alloc, strict=True) for _ in range(k)]


def _random_date(rng: np.random.Generator, years: tuple[int, int]) -> datetime.date:
    start = datetime.date(years[0], 1, 1).toordinal()
    end = datetime.date(years[1], 12, 31).toordinal()
    return datetime.date.fromordinal(int(rng.integers(start, end + 1)))


def _image_shape(spec: SyntheticCaffeSpec, geo: GlacierGeometry, res_m: int) -> tuple[int, int]:
    # Same scene extent: finer pixel spacing -> more pixels (compressed so sizes stay small).
    side = spec.base_size * (20.0 / res_m) ** 0.45
    h = int(np.clip(side / math.sqrt(geo.aspect), spec.min_size, spec.max_size))
    w = int(np.clip(side * math.sqrt(geo.aspect), spec.min_size, spec.max_size))
    return h, w


def generate_caffe(root: Path | str, spec: SyntheticCaffeSpec | None = None) -> Path:
    """Writes a synthetic CaFFe ``data_raw/`` tree under `root` (atomically) and returns it.

    Args:
        root: output folder; ``root/data_raw`` is created (replaced if it exists).
        spec: generator knobs (seed, counts, sizes).

    Returns:
        Path of the written ``data_raw`` folder.
    """
    spec = spec or SyntheticCaffeSpec()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".data_raw_tmp_", dir=root))
    try:
        for folder in ("sar_images", "zones", "fronts"):
            for split in ("train", "test"):
                (tmp / folder / split).mkdir(parents=True)
        (tmp / "bounding_boxes").mkdir()
        for glacier, n in spec.glacier_counts().items():
            split = "test" if glacier in TEST_GLACIERS else "train"
            geo = glacier_geometry(glacier, spec.seed)
            rng = np.random.default_rng(_stable_seed("caffe", glacier, spec.seed))
            sensors = _allocate(CAFFE_SENSOR_COUNTS[glacier], n)
            stems: set[str] = set()
            for sensor in sensors:
                while True:  # unique stems
                    date = _random_date(rng, SENSOR_YEARS[sensor])
                    res = sensor_resolution(glacier, sensor, rng)
                    quality = int(rng.choice(6, p=QUALITY_WEIGHTS / QUALITY_WEIGHTS.sum())) + 1
                    orbit = f"{int(rng.integers(1, 500)):03d}"
                    stem = format_stem(glacier, date.isoformat(), sensor, res, quality, orbit)
                    if stem not in stems:
                        stems.add(stem)
                        break
                image_rng = np.random.default_rng(_stable_seed("image", stem, spec.seed))
                shape = _image_shape(spec, geo, res)
                sar, zones, _ = render_scene(geo, shape, date, sensor, image_rng)
                front = front_line(zones)
                bbox = front_bbox(front, image_rng)
                zones_png = np.asarray(ZONE_PNG_VALUES, dtype=np.uint8)[zones]
                _write_png(tmp / "sar_images" / split / f"{stem}.png", sar)
                _write_png(tmp / "zones" / split / f"{stem}{ZONES_SUFFIX}", zones_png)
                _write_png(tmp / "fronts" / split / f"{stem}{FRONT_SUFFIX}", front * 255)
                lines = ["x,y"] + [f"{x:.2f},{y:.2f}" for x, y in bbox]
                (tmp / "bounding_boxes" / f"{stem}{BBOX_SUFFIX}").write_text("\n".join(lines))
        final = root / "data_raw"
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------
# SSL4SAR (Sentinel-1 time series + one Sentinel-2 GeoTIFF per glacier)
# ----------------------------------------------------------------------------------------------

# EPSG codes (UTM north zones over Greenland) and upper-left origins in metres.
_SSL4SAR_CRS = {"Helheim": 32624, "Kangerlussuaq": 32625, "Petermann": 32620, "Zachariae": 32627}
# 15 bands as exported from GEE COPERNICUS/S2_SR (B1..B12 with B8A, AOT, WVP, SCL).
S2_EXPORT_BANDS = (
    "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12", "AOT", "WVP", "SCL",
)  # fmt: skip
# Surface reflectance x 10000 per surface (water dark in NIR/SWIR, ice bright in the visible and
# dark in SWIR, rock moderately bright everywhere).
_S2_REFLECTANCE = {
    "water": (900, 700, 550, 350, 250, 180, 150, 120, 110, 80, 40, 30),
    "ice": (8500, 8800, 8700, 8400, 8200, 7900, 7600, 7300, 7000, 5200, 900, 700),
    "melange": (6000, 6200, 6100, 5800, 5500, 5200, 5000, 4700, 4500, 3400, 600, 450),
    "rock": (1100, 1300, 1600, 1900, 2200, 2400, 2500, 2600, 2700, 2300, 3000, 2500),
}
_SCL_CODE = {"water": 6, "ice": 11, "melange": 11, "rock": 5, "no_data": 0, "cloud": 9}


def render_optical(zones: np.ndarray, melange: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Plausible 15-band S2 L2A values (float32 [15, H, W], reflectance x 1e4; NaN where no data)."""
    h, w = zones.shape
    bands = np.zeros((15, h, w), dtype=np.float32)
    surface = np.where(zones == OCEAN, 0, np.where(zones == GLACIER, 1, 2))
    surface = np.where((zones == OCEAN) & (melange > 0.5), 3, surface)
    table = np.array(
        [_S2_REFLECTANCE[k] for k in ("water", "ice", "rock", "melange")], dtype=np.float32
    )
    texture = 1.0 + 0.08 * _fractal_noise(rng, (h, w), 10).astype(np.float32)
    bands[:12] = np.moveaxis(table[surface], -1, 0) * texture[None]
    bands[:12] += rng.normal(0, 40, size=(12, h, w)).astype(np.float32)
    bands[:12] = np.clip(bands[:12], 1, 12000)
    bands[12] = 120 + 20 * _smooth_noise(rng, (h, w), 2)  # AOT
    bands[13] = 900 + 300 * _smooth_noise(rng, (h, w), 2)  # WVP
    scl_table = np.array([_SCL_CODE[k] for k in ("water", "ice", "rock", "melange")])
    scl = scl_table[surface].astype(np.float32)
    cloud = _smooth_noise(rng, (h, w), 3) > 1.8  # a few thin clouds
    scl[cloud] = _SCL_CODE["cloud"]
    bands[:12, cloud] = 0.5 * bands[:12, cloud] + 0.5 * 7000
    bands[14] = scl
    nodata = zones == NA
    bands[:14, nodata] = np.nan
    bands[14, nodata] = _SCL_CODE["no_data"]
    return bands


def generate_ssl4sar(root: Path | str, spec: SyntheticSSL4SARSpec | None = None) -> Path:
    """Writes synthetic SSL4SAR inputs (S1 PNG time series + S2 GeoTIFF per glacier) to `root`.

    Returns:
        `root` (containing ``unlabeled_data_raw_{train,val}/`` and ``data_optical/``).
    """
    import rasterio
    from rasterio.transform import from_origin

    spec = spec or SyntheticSSL4SARSpec()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ssl4sar_tmp_", dir=root))
    try:
        for sub in ("unlabeled_data_raw_train", "unlabeled_data_raw_val", "data_optical"):
            (tmp / sub).mkdir()
        for glacier in spec.glaciers:
            geo = dataclasses.replace(
                glacier_geometry(glacier, spec.seed), orientation=0, transpose=False
            )
            rng = np.random.default_rng(_stable_seed("ssl4sar", glacier, spec.seed))
            # The static optical scene; NA (no data) only at a swath-like edge.
            s2_date = datetime.date(2019, 8, int(rng.integers(1, 29)))
            _, zones, mel = render_scene(geo, spec.size, s2_date, "S1", rng, na_areas=False)
            edge = np.zeros(spec.size, dtype=bool)
            edge[:, : int(rng.integers(0, spec.size[1] // 10))] = True
            zones = np.where(edge, NA, zones).astype(np.uint8)
            optical = render_optical(zones, mel, rng)
            crs = _SSL4SAR_CRS.get(glacier, 32624)
            transform = from_origin(
                float(rng.integers(4, 6) * 1e5), 8.0e6, spec.pixel_m, spec.pixel_m
            )
            tif = tmp / "data_optical" / f"{glacier}_S2_{s2_date.isoformat()}.tif"
            profile = dict(
                driver="GTiff",
                height=spec.size[0],
                width=spec.size[1],
                count=15,
                dtype="float32",
                crs=f"EPSG:{crs}",
                transform=transform,
                compress="deflate",
            )
            with rasterio.open(tif, "w", **profile) as dst:
                dst.write(optical)
                for i, name in enumerate(S2_EXPORT_BANDS, start=1):
                    dst.set_band_description(i, name)
            # Sentinel-1 time series on the same grid, the front moving through the seasons.
            start = datetime.date(2017, 1, 1).toordinal()
            for k in range(spec.images_per_glacier):
                date = datetime.date.fromordinal(
                    start + int(k * 1200 / spec.images_per_glacier) + int(rng.integers(0, 30))
                )
                sar, _, _ = render_scene(geo, spec.size, date, "S1", rng)
                sar[edge] = 0
                platform = "S1A" if rng.random() < 0.6 else "S1B"
                orbit = f"{int(rng.integers(1, 175)):03d}"
                stem = f"{platform}_{glacier}_{date.isoformat()}_{orbit}"
                sub = (
                    "unlabeled_data_raw_val"
                    if k >= spec.images_per_glacier - spec.val_per_glacier
                    else "unlabeled_data_raw_train"
                )
                _write_png(tmp / sub / f"{stem}.png", sar)
        for sub in ("unlabeled_data_raw_train", "unlabeled_data_raw_val", "data_optical"):
            if (root / sub).exists():
                shutil.rmtree(root / sub)
            os.replace(tmp / sub, root / sub)
        shutil.rmtree(tmp, ignore_errors=True)
        return root
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------------------------
# Preview
# ----------------------------------------------------------------------------------------------


def save_preview(path: Path | str, seed: int = 0, num: int = 6) -> Path:
    """Generates a small synthetic CaFFe set and plots SAR / zones / front+box for `num` images.

    Goes through the real parser (`validate_caffe_root`), so the picture shows what the builder sees.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    from ssl4sar_jax.data.caffe_files import read_item_arrays, validate_caffe_root

    with tempfile.TemporaryDirectory() as tmp:
        spec = SyntheticCaffeSpec(seed=seed, count_scale=0.0, min_per_glacier=2)
        data_raw = generate_caffe(tmp, spec)
        items = validate_caffe_root(data_raw)
        all_items = items["train"] + items["test"]
        arrays = {it.name.stem: read_item_arrays(it) for it in all_items}
    rng = np.random.default_rng(seed)
    # One per glacier first, then the rest, so the picture shows the variety.
    by_glacier: dict[str, list] = {}
    for it in all_items:
        by_glacier.setdefault(it.name.glacier, []).append(it)
    chosen = [v[int(rng.integers(len(v)))] for v in by_glacier.values()][:num]
    cmap = ListedColormap(["black", "saddlebrown", "lightskyblue", "navy"])
    fig, axes = plt.subplots(3, len(chosen), figsize=(3.0 * len(chosen), 9.0))
    for col, it in enumerate(chosen):
        n = it.name
        sar, zones, front = arrays[n.stem]
        axes[0, col].imshow(sar, cmap="gray", vmin=0, vmax=255)
        axes[0, col].set_title(
            f"{n.glacier} {n.sensor} {n.resolution_m} m\n{n.date} ({n.season})", fontsize=9
        )
        axes[1, col].imshow(zones, cmap=cmap, vmin=0, vmax=3, interpolation="nearest")
        axes[2, col].imshow(sar, cmap="gray", vmin=0, vmax=255)
        fy, fx = np.nonzero(front)
        axes[2, col].scatter(fx, fy, s=0.3, c="red")
        box = it.bbox
        x0, x1 = box[0, 0], box[2, 0]
        y0, y1 = box[1, 1], box[0, 1]
        axes[2, col].plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], "y-", lw=1)
        for r in range(3):
            axes[r, col].set_xticks([])
            axes[r, col].set_yticks([])
    axes[0, 0].set_ylabel("SAR (uint8)")
    axes[1, 0].set_ylabel("zones: NA / rock / glacier / ocean")
    axes[2, 0].set_ylabel("front (red) + bbox (yellow)")
    fig.suptitle(f"Synthetic CaFFe (ssl4sar_jax.data.synthetic, seed {seed})")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp_path, dpi=90)
    plt.close(fig)
    os.replace(tmp_path, path)
    return path


def save_ssl4sar_preview(path: Path | str, seed: int = 0, glaciers: int = 2) -> Path:
    """Plots synthetic SSL4SAR data as the builder reads it: an S1 time series per glacier and the
    normalised S2 image (true colour B4/B3/B2, false colour B12/B8/B3, SCL)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ssl4sar_jax.data import ssl4sar_files
    from ssl4sar_jax.data.caffe_files import read_gray_png

    spec = SyntheticSSL4SARSpec(seed=seed, glaciers=SSL4SAR_SYNTHETIC_GLACIERS[:glaciers])
    with tempfile.TemporaryDirectory() as tmp:
        items, optical_paths = ssl4sar_files.validate_ssl4sar_root(generate_ssl4sar(tmp, spec))
        rows = []
        for glacier in spec.glaciers:
            scenes = sorted(
                (it for it in items["train"] + items["validation"] if it.glacier == glacier),
                key=lambda it: it.date,
            )[::2][:3]
            sars = [(it.date, read_gray_png(it.path.read_bytes(), it.stem)) for it in scenes]
            rows.append((glacier, sars, ssl4sar_files.read_optical(optical_paths[glacier])))
    fig, axes = plt.subplots(len(rows), 6, figsize=(18, 3.2 * len(rows)), squeeze=False)
    for r, (glacier, sars, optical) in enumerate(rows):
        for c, (date, sar) in enumerate(sars):
            axes[r, c].imshow(sar, cmap="gray", vmin=0, vmax=255)
            axes[r, c].set_title(f"{glacier} S1 {date}", fontsize=9)
        rgb = optical[..., [3, 2, 1]].astype(np.float32) / 255
        false = optical[..., [11, 7, 2]].astype(np.float32) / 255
        axes[r, 3].imshow(np.clip(rgb * 1.2, 0, 1))
        axes[r, 3].set_title("S2 true colour (B4 B3 B2)", fontsize=9)
        axes[r, 4].imshow(np.clip(false * 1.2, 0, 1))
        axes[r, 4].set_title("S2 false colour (B12 B8 B3)", fontsize=9)
        axes[r, 5].imshow(optical[..., 13], cmap="tab10", interpolation="nearest")
        axes[r, 5].set_title("SCL (normalised)", fontsize=9)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"Synthetic SSL4SAR (ssl4sar_jax.data.synthetic, seed {seed})")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp_path, dpi=80)
    plt.close(fig)
    os.replace(tmp_path, path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preview", type=str, help="write a PNG of generated CaFFe samples")
    parser.add_argument("--ssl4sar-preview", type=str, help="write a PNG of SSL4SAR samples")
    parser.add_argument("--caffe-out", type=str, help="write a synthetic CaFFe data_raw/ here")
    parser.add_argument("--ssl4sar-out", type=str, help="write synthetic SSL4SAR inputs here")
    parser.add_argument("--count-scale", type=float, default=SyntheticCaffeSpec.count_scale)
    parser.add_argument("--min-per-glacier", type=int, default=SyntheticCaffeSpec.min_per_glacier)
    parser.add_argument("--min-size", type=int, default=SyntheticCaffeSpec.min_size)
    parser.add_argument("--max-size", type=int, default=SyntheticCaffeSpec.max_size)
    parser.add_argument("--base-size", type=int, default=SyntheticCaffeSpec.base_size)
    parser.add_argument(
        "--ssl4sar-size", type=int, nargs=2, default=SyntheticSSL4SARSpec.size, metavar=("H", "W")
    )
    parser.add_argument(
        "--ssl4sar-images-per-glacier", type=int, default=SyntheticSSL4SARSpec.images_per_glacier
    )
    parser.add_argument("--ssl4sar-glaciers", type=int, default=len(SSL4SAR_SYNTHETIC_GLACIERS))
    args = parser.parse_args(argv)
    if not (args.preview or args.ssl4sar_preview or args.caffe_out or args.ssl4sar_out):
        parser.error("give one of --preview, --ssl4sar-preview, --caffe-out, --ssl4sar-out")
    if args.ssl4sar_preview:
        print("wrote", save_ssl4sar_preview(args.ssl4sar_preview, seed=args.seed))
    if args.preview:
        print("wrote", save_preview(args.preview, seed=args.seed))
    if args.caffe_out:
        spec = SyntheticCaffeSpec(
            seed=args.seed,
            count_scale=args.count_scale,
            min_per_glacier=args.min_per_glacier,
            min_size=args.min_size,
            max_size=args.max_size,
            base_size=args.base_size,
        )
        print("wrote", generate_caffe(args.caffe_out, spec))
    if args.ssl4sar_out:
        spec = SyntheticSSL4SARSpec(
            seed=args.seed,
            glaciers=SSL4SAR_SYNTHETIC_GLACIERS[: args.ssl4sar_glaciers],
            images_per_glacier=args.ssl4sar_images_per_glacier,
            size=tuple(args.ssl4sar_size),
        )
        print("wrote", generate_ssl4sar(args.ssl4sar_out, spec))


if __name__ == "__main__":
    main()
