"""Offline synthetic CaFFe and SSL4SAR data, written to disk in the real layouts.

The generators render glacier scenes procedurally (numpy + scipy, deterministic from a seed)
with the cues of real CaFFe SAR scenes (`render_scene` / `render_layers`; measured against real
images by ``experiments/synthetic_vs_real.py``, docs/data.md):

* a glacier trunk down a meandering fjord, tributaries, rock outcrops rising out of the ice;
  flow-parallel stripes, debris bands, crevasse fields and a bright ice cliff along the front;
* an irregular calving front whose position moves with time (trend + seasonal cycle);
* rock with bright layover and dark radar shadow from the terrain slope and the look direction;
* open water by wind, granular ice melange and icebergs near the front (class "ocean");
* NA exactly 0 (deepest shadow, swath edges); gamma speckle, amplitude-linear grey values;
* the real mix of sensors and pixel spacings per glacier (the CaFFe archive's counts),
  scaled-down sizes; co-registered Sentinel-2 bands for SSL4SAR.

CaFFe output (the archive's exact layout and file-name grammar)::

    <root>/data_raw/sar_images/{train,test}/<stem>.png
    <root>/data_raw/zones/{train,test}/<stem>_zones.png
    <root>/data_raw/fronts/{train,test}/<stem>_front.png
    <root>/data_raw/bounding_boxes/<stem>_front_extent_coord.txt

SSL4SAR output (the layout the `ssl4sar` builder reads)::

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
import functools
import math
import os
import shutil
import tempfile
import types
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from ssl4sar_jax import io_utils
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
    SPACING_TABLE,
    SSL4SAR_SYNTHETIC_GLACIERS,
    SyntheticCaffeSpec,
    SyntheticSSL4SARSpec,
    effective_spacing_m,
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
# Quality-factor frequencies 1..6 of the real CaFFe archive.
QUALITY_WEIGHTS = np.array([334, 141, 111, 54, 36, 5], dtype=np.float64)


def sensor_resolution(glacier: str, sensor: str, rng: np.random.Generator) -> int:
    """Pixel spacing (m) per sensor, consistent with the real per-resolution counts."""
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


def _interp_weights(n_out: int, n_grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid index and smoothstep weight of each of `n_out` samples (a C1-smooth upsampler)."""
    t = np.linspace(0, n_grid - 1.000001, n_out)
    i0 = np.floor(t).astype(int)
    f = t - i0
    return i0, f * f * (3 - 2 * f)


def _upsample_axis(grid: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    i0, s = _interp_weights(n_out, grid.shape[axis])
    a, b = np.take(grid, i0, axis=axis), np.take(grid, i0 + 1, axis=axis)
    shape = [1] * grid.ndim
    shape[axis] = n_out
    s = s.reshape(shape)
    return a * (1 - s) + b * s


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], cells: float) -> np.ndarray:
    """Zero-mean, unit-std smooth noise with about `cells` features along each axis."""
    n_grid = max(2, int(math.ceil(cells)) + 1)
    if len(shape) == 1:
        out = _upsample_axis(rng.standard_normal(n_grid), shape[0], 0)
    else:
        out = rng.standard_normal((n_grid, n_grid))
        out = _upsample_axis(_upsample_axis(out, shape[0], 0), shape[1], 1)
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
        half_width=float(rng.uniform(0.17, 0.27)),
        widening=float(rng.uniform(0.0, 0.12)),
        coast=float(rng.uniform(0.82, 0.95)),
        front_mean=float(rng.uniform(0.55, 0.68)),
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
    return float(np.clip(pos, 0.35, min(0.82, geo.coast - 0.06)))


@dataclasses.dataclass(frozen=True)
class SceneLayers:
    """Everything one rendered acquisition is made of, in the output orientation ``[H, W]``.

    Attributes:
        sar: uint8 SAR image (0 = no data).
        zones: uint8 class ids (0 NA, 1 rock, 2 glacier, 3 ocean + ice melange).
        melange: float32 ice cover of the ocean in [0, 1] (floes, icebergs, sea ice).
        shade: float32 terrain illumination in [0, 1] (sun hill-shading; 0.5 on flat ground).
        debris: float32 surface debris / dirt in [0, 1] (medial moraines on the glacier).
        db: float32 backscatter before speckle (dB), for diagnostics.
    """

    sar: np.ndarray
    zones: np.ndarray
    melange: np.ndarray
    shade: np.ndarray
    debris: np.ndarray
    db: np.ndarray


def _polyline_coords(points: np.ndarray, yy: np.ndarray, xx: np.ndarray, aspect: float):
    """Distance, signed across-coordinate and along-coordinate of every pixel to a polyline.

    Args:
        points: ``[N, 2]`` (y, x) vertices in normalised units.
        yy, xx: ``[H, W]`` normalised pixel coordinates.
        aspect: width / height of the frame (so distances are isotropic).

    Returns:
        ``(distance, across, along)``, each ``[H, W]``; ``along`` in [0, 1] from the first vertex.
    """
    from scipy.spatial import cKDTree

    pts = points * np.array([1.0, aspect])
    tree = cKDTree(pts)
    query = np.stack([yy.ravel(), xx.ravel() * aspect], axis=1)
    dist, idx = tree.query(query)
    tangent = np.gradient(pts, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-12
    rel = query - pts[idx]
    across = rel[:, 0] * tangent[idx, 1] - rel[:, 1] * tangent[idx, 0]
    along = idx / max(len(pts) - 1, 1)
    return dist.reshape(yy.shape), across.reshape(yy.shape), along.reshape(yy.shape)


def _stripe_profile(rng: np.random.Generator, coordinate: np.ndarray, cycles: float) -> np.ndarray:
    """Flow-parallel stripes: a 1-D fractal profile read at each pixel's across-flow coordinate."""
    n = 2048
    profile = _fractal_noise(rng, (n,), cycles, octaves=3)
    idx = np.clip(((coordinate + 2.0) / 4.0 * (n - 1)).astype(int), 0, n - 1)
    return profile[idx]


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2 + 0.5


def _granules(
    rng: np.random.Generator, density: np.ndarray, radius: int, per_pixel: float
) -> np.ndarray:
    """Random disks of `radius` px whose centres are drawn with probability ``per_pixel·density``."""
    seeds = rng.random(density.shape) < per_pixel * density
    return _dilate_disk(seeds, radius)


_EDT_MIN_RADIUS = 4


def _dilate_disk(seeds: np.ndarray, radius: int) -> np.ndarray:
    """``binary_dilation(seeds, _disk(radius))``, exactly, in time independent of the radius.

    Args:
        seeds: ``[H, W]`` bool.
        radius: Disk radius in pixels (``<= 0``: the seeds themselves).

    Returns:
        ``[H, W]`` bool: the pixels within the disk of some seed.
    """
    if radius <= 0:
        return seeds
    if radius < _EDT_MIN_RADIUS:
        return ndimage.binary_dilation(seeds, structure=_disk(radius))
    if not seeds.any():
        return np.zeros_like(seeds)
    # The disk is dy² + dx² <= r² + 0.5 and squared distances are integers, so thresholding the
    # exact Euclidean distance transform at r² + 0.5 selects the same pixels. A dilation costs
    # O(pixels × disk area): minutes for the 100-px icebergs of a 4000² scene; this is O(pixels).
    squared = ndimage.distance_transform_edt(~seeds, return_distances=True) ** 2
    return squared <= radius * radius + 0.5


@functools.lru_cache(maxsize=32)
def _static_scene(geo: GlacierGeometry, hc: int, wc: int) -> types.SimpleNamespace:
    """The parts of a glacier's scene that do not change between its images (canonical frame).

    Fjord walls, terrain, tributaries, rock outcrops, flow stripes, debris bands, icefalls and
    the range slope of the terrain, all drawn from the glacier's wall seed. Cached per
    (glacier, frame size), since a glacier's images share a few sizes; the arrays are read-only.
    """
    aspect = wc / hc
    yy, xx = np.meshgrid(np.linspace(0, 1, hc), np.linspace(0, 1, wc), indexing="ij")
    wall_rng = np.random.default_rng(geo.wall_seed)
    y1 = np.linspace(0, 1, hc)
    centre = geo.centre + geo.meander_amp * np.sin(
        2 * np.pi * geo.meander_freq * y1 + geo.meander_phase
    )
    half = geo.half_width + geo.widening * (y1 - 0.5)
    half = half + 3.0 * np.clip(y1 - geo.coast, 0, None)  # the fjord opens to the sea
    left = centre - half - 0.025 * _fractal_noise(wall_rng, (hc,), 6)
    right = centre + half + 0.025 * _fractal_noise(wall_rng, (hc,), 6)
    trunk = (xx > left[:, None]) & (xx < right[:, None])
    across_trunk = (xx - centre[:, None]) / np.maximum(half[:, None], 1e-3)
    # Terrain height (rock walls rise away from the fjord) for layover/shadow and hill-shading.
    terrain = _fractal_noise(wall_rng, (hc, wc), 4, octaves=5)
    ridges = 1.0 - np.abs(_fractal_noise(wall_rng, (hc, wc), 7, octaves=3))
    wall_dist = np.clip(np.minimum(np.abs(xx - left[:, None]), np.abs(xx - right[:, None])), 0, 1)
    height = 1.2 * terrain + 0.8 * ridges + 3.0 * np.sqrt(wall_dist)
    # Tributary glaciers joining the trunk from the sides, and an ice field upstream.
    tributary = np.zeros((hc, wc), dtype=bool)
    across_trib = np.zeros((hc, wc))
    along_trib = np.zeros((hc, wc))
    n_trib = int(wall_rng.integers(1, 4))
    for k in range(n_trib):
        side = 1.0 if wall_rng.random() < 0.5 else 0.0
        y_start = float(wall_rng.uniform(0.0, 0.4))
        y_join = min(y_start + float(wall_rng.uniform(0.1, 0.3)), geo.front_mean - 0.1)
        j = int(np.clip(y_join * (hc - 1), 0, hc - 1))
        x_join = centre[j]
        ctrl = np.array([(y_start + y_join) / 2 - 0.05, (side + x_join) / 2])
        t = np.linspace(0, 1, 120)[:, None]
        p0, p2 = np.array([y_start, side]), np.array([y_join, x_join])
        pts = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * ctrl + t**2 * p2
        dist, acr, alo = _polyline_coords(pts, yy, xx, aspect)
        width = float(wall_rng.uniform(0.04, 0.08)) * (
            1 + 0.25 * _fractal_noise(wall_rng, (hc, wc), 5)
        )
        inside = (dist < width) & ~trunk
        tributary |= inside
        across_trib = np.where(inside, acr / width, across_trib)
        along_trib = np.where(inside, alo + k, along_trib)
    # Land outside the trunk: mountains (rock) poke out of the ice where the terrain is high,
    # most of all along the fjord walls; the rest is ice (the ice field and its outlets).
    mountains = ridges + 0.6 * terrain + 1.2 * np.exp(-wall_dist / 0.04)
    land = ~trunk & ~tributary
    rock_share = float(wall_rng.uniform(0.3, 0.55))
    rock = land & (mountains > np.quantile(mountains[land], 1 - rock_share) if land.any() else land)
    ice = ~rock

    psi = np.where(tributary & ~trunk, across_trib + 3.0 * along_trib, across_trunk)
    psi = psi + 0.04 * _smooth_noise(wall_rng, (hc, wc), 3)
    stripes = _stripe_profile(wall_rng, np.clip(psi, -1.9, 1.9) * 0.25, 60)
    debris = np.clip(_stripe_profile(wall_rng, np.clip(psi, -1.9, 1.9) * 0.25, 25) - 0.9, 0, 1)
    along = np.where(tributary & ~trunk, along_trib, yy)
    icefall = _smooth_noise(wall_rng, (hc, wc), 5) > 1.1
    facies = _smooth_noise(wall_rng, (hc, wc), 3)
    range_slope = -np.gradient(height, axis=1) * wc * 0.02
    slope_noise = 0.3 * ndimage.gaussian_filter(_fractal_noise(wall_rng, (hc, wc), 30, 2), 0.7)
    out = types.SimpleNamespace(
        yy=yy,
        xx=xx,
        trunk=trunk,
        tributary=tributary,
        across_trunk=across_trunk,
        height=height,
        ice=ice,
        psi=psi,
        stripes=stripes,
        debris=debris,
        along=along,
        icefall=icefall,
        facies=facies,
        range_slope=range_slope,
        slope_noise=slope_noise,
    )
    for value in vars(out).values():
        value.setflags(write=False)
    return out


def render_layers(
    geo: GlacierGeometry,
    shape: tuple[int, int],
    date: datetime.date,
    sensor: str,
    rng: np.random.Generator,
    *,
    front_pos: float | None = None,
    na_areas: bool = True,
) -> SceneLayers:
    """Renders one acquisition and returns all its layers (see `render_scene` for the arguments).

    The scene is built in a canonical frame where the glacier flows "down" (increasing row) and
    then rotated/transposed by the glacier's orientation. Static parts (fjord walls, terrain,
    tributaries, flow stripes) come from the glacier's wall seed, so they are the same in every
    image of a glacier; the front position, melange, crevasse state, look direction, speckle and
    grey-value mapping vary per image.
    """
    h, w = shape
    rotated = (geo.orientation % 2 == 1) != geo.transpose
    hc, wc = (w, h) if rotated else (h, w)
    season = season_of(geo.name, date.month) if geo.name in GLACIERS else _season_north(date)
    winter = season == "winter"
    px = 1.0 / max(hc, wc)  # one pixel in normalised units

    st = _static_scene(geo, hc, wc)
    yy, trunk, ice, psi = st.yy, st.trunk, st.ice, st.psi
    across_trunk, stripes, debris, along = st.across_trunk, st.stripes, st.debris, st.along
    xx = st.xx

    # --- Calving front (moves with time) -----------------------------------------------------
    fpos = _front_position(geo, date, rng) if front_pos is None else front_pos
    x1 = np.linspace(0, 1, wc)
    across = np.clip((x1 - geo.centre) / max(geo.half_width, 1e-3), -1.5, 1.5)
    bow = 0.05 * rng.uniform(-1, 1.5) * across**2
    jag = 0.03 * _fractal_noise(rng, (wc,), 8, octaves=5) + 0.012 * _fractal_noise(rng, (wc,), 40)
    front_y = fpos - bow + jag
    below = yy - front_y[None, :]  # > 0: seaward of the front
    glacier = ice & ~(trunk & (below >= 0))
    ocean = trunk & (below >= 0)
    zones = np.full((hc, wc), ROCK, dtype=np.uint8)
    zones[glacier] = GLACIER
    zones[ocean] = OCEAN

    # --- Glacier backscatter: flow stripes, crevasse fields, bright ice cliff ----------------
    ice_base = rng.normal(-8.0, 1.2) if winter else rng.normal(-12.5, 1.5)
    period = rng.uniform(4.0, 8.0) * px  # crevasse spacing
    chevron = 0.35 * np.abs(psi) ** 1.5 * np.sign(rng.uniform(-1, 1))
    phase = 2 * np.pi * (along + chevron * geo.half_width) / period
    wave = np.sin(phase + 1.5 * _smooth_noise(rng, (hc, wc), 12))
    crevasse_field = (
        np.exp(-np.clip(-below, 0, None) / rng.uniform(0.06, 0.16))  # near the front
        + np.clip(np.abs(across_trunk) - 0.7, 0, None) * 3 * trunk  # shear margins
        + st.icefall
    )
    crevasse_field = np.clip((crevasse_field - 0.3) * 2.5, 0, 1) * rng.uniform(0.6, 1.0)
    crevasse_db = crevasse_field * (6.0 * (wave > 0.55) - 4.0 * (wave < -0.75))
    ice_db = (
        ice_base
        + rng.uniform(1.5, 3.0) * stripes
        + 1.0 * _fractal_noise(rng, (hc, wc), 6, octaves=3)
        + rng.uniform(1.0, 3.0) * st.facies
        + crevasse_db
        - 3.0 * debris
    )
    dist_to_ocean = ndimage.distance_transform_edt(~ocean)
    cliff = glacier & (dist_to_ocean <= rng.uniform(1.0, 3.0))
    ice_db = np.where(cliff, rng.uniform(0.0, 4.0), ice_db)

    # --- Rock: layover (slopes facing the sensor, bright) and radar shadow (facing away) ------
    look = 1.0 if rng.random() < 0.5 else -1.0  # sensor on the left (+1) or right (-1)
    slope = st.range_slope * look + st.slope_noise  # > 0: faces the sensor
    rock_db = -12.0 + 6.0 * np.tanh(1.5 * slope)
    rock_slopes = slope[zones == ROCK] if (zones == ROCK).any() else slope
    layover = slope > np.quantile(rock_slopes, rng.uniform(0.8, 0.9))
    rock_db = rock_db + np.where(layover, rng.uniform(8.0, 12.0), 0.0)
    rock_db = rock_db + 1.5 * _fractal_noise(rng, (hc, wc), 40, octaves=2)
    shadow = (
        slope < np.quantile(slope[zones == ROCK], rng.uniform(0.3, 0.45))
        if (zones == ROCK).any()
        else np.zeros_like(slope, dtype=bool)
    )
    rock_db = np.where(shadow, -24.0, rock_db)

    # --- Ocean: open water by wind; granular melange of floes and icebergs near the front -----
    wind = rng.uniform(-30.0, -14.0)
    streak = _smooth_noise(rng, (hc, max(4, wc // 8)), 3)
    streak = np.repeat(streak, int(math.ceil(wc / streak.shape[1])), axis=1)[:, :wc]
    water_db = wind + 1.5 * streak + 1.5 * _fractal_noise(rng, (hc, wc), 6, octaves=3)
    melange_len = rng.uniform(0.04, 0.2) * (1.6 if winter else 0.7)
    density = np.exp(-np.clip(below, 0, None) / melange_len) * rng.uniform(0.5, 1.0)
    density = density * np.clip(1 + 0.6 * _smooth_noise(rng, (hc, wc), 6), 0, None) * ocean
    floes = np.zeros((hc, wc), dtype=bool)
    for radius, rate in ((0, 0.25), (1, 0.06), (2, 0.02)):
        floes |= _granules(rng, density, radius, rate)
    bergs = np.zeros((hc, wc), dtype=bool)
    n_bergs = int(rng.integers(2, 10))
    for _ in range(n_bergs):
        r = int(rng.integers(2, max(3, int(0.025 / px))))
        m = _granules(rng, np.clip(density * 3, 0, 1) * ocean, r, 1.0 / (hc * wc) * 3)
        bergs |= m
    bergs &= ocean
    berg_shadow = np.roll(bergs, int(-look * rng.integers(1, 3)), axis=1) & ~bergs & ocean
    floes &= ocean
    slush = ocean & (density > 0.25)
    sea_ice = ocean & (below > 0) & winter & (rng.random() < 0.4)
    ocean_db = np.where(slush, -14.0 + 2.0 * density, water_db)
    ocean_db = np.where(sea_ice & ~slush, -15.0 + _fractal_noise(rng, (hc, wc), 10), ocean_db)
    ocean_db = np.where(floes, -5.0 + 2.0 * rng.standard_normal((hc, wc)), ocean_db)
    ocean_db = np.where(bergs, -1.0 + 1.5 * _smooth_noise(rng, (hc, wc), 20), ocean_db)
    ocean_db = np.where(berg_shadow, -26.0, ocean_db)
    cover = np.where(bergs | floes, 1.0, np.where(slush, 0.5 * density, 0.0))
    cover = np.where(sea_ice, np.maximum(cover, 0.6), cover) * ocean

    db = np.where(zones == ROCK, rock_db, np.where(zones == GLACIER, ice_db, ocean_db))

    # --- NA: the deepest radar shadow of the rock and an optional straight swath edge ---------
    na = np.zeros((hc, wc), dtype=bool)
    if na_areas:
        deep = shadow & (zones == ROCK)
        deep = ndimage.binary_opening(deep, iterations=1)
        na |= deep
        if rng.random() < 0.4:
            ang = rng.uniform(0, 2 * np.pi)
            proj = np.cos(ang) * (xx - 0.5) + np.sin(ang) * (yy - 0.5)
            na |= proj > rng.uniform(0.4, 0.65)
    # Keep every class present: NA may not eat the whole ocean or glacier.
    zones[na] = NA
    if not (zones == OCEAN).any() or not (zones == GLACIER).any():
        zones = np.where(
            na & ((db == ocean_db) | glacier), np.where(glacier, GLACIER, OCEAN), zones
        )
        na = zones == NA

    # --- Speckle (gamma, L looks on the linear intensity) and log quantisation -------------
    # The images stand for scenes downsampled several times (hundreds of px instead of
    # thousands), so the speckle is averaged over more looks than the sensor's own.
    looks = SENSOR_LOOKS[sensor] * rng.uniform(1.0, 2.0)
    intensity = 10 ** (db / 10) * rng.gamma(looks, 1.0 / looks, size=db.shape)
    intensity = ndimage.gaussian_filter(intensity, 0.4)  # the resampling's smoothing
    # Grey values: linear in amplitude, scaled so the median land pixel sits at a per-image
    # level (processing differs between products), bright targets saturating at 255.
    amplitude = np.sqrt(intensity)
    valid = ~na
    ref = np.median(amplitude[valid]) if valid.any() else 1.0
    gamma = rng.uniform(0.85, 1.15)
    scaled = (amplitude / ref) ** gamma * rng.uniform(35.0, 75.0)
    sar = np.clip(np.round(scaled), 1, 255).astype(np.uint8)  # 0 is reserved for no-data
    sar[na] = 0

    # Sun hill-shading (for the optical bands; the sun is low in the south-west, arbitrary).
    gy, gx = np.gradient(st.height)
    shade = np.clip(0.5 + 40.0 * (0.6 * gx - 0.8 * gy) / max(hc, wc) * 10, 0, 1)
    shade = np.where(zones == OCEAN, 0.5, shade)
    layers = [sar, zones, cover.astype(np.float32), shade.astype(np.float32)]
    layers += [(debris * glacier).astype(np.float32), db.astype(np.float32)]
    out = [_orient(a, geo) for a in layers]
    assert out[0].shape == (h, w), (out[0].shape, shape)
    return SceneLayers(*out)


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

    The cues of real CaFFe scenes are drawn in: flow-parallel stripes and crevasse fields on the
    glacier (transverse bands near the front, at the shear margins and in icefalls) and a bright
    ice cliff along the front; rock with bright layover on slopes facing the sensor and dark
    radar shadow on slopes facing away (the deepest shadow is no data); open water darkened or
    brightened by wind; granular ice melange and icebergs (with shadows) near the front; NA
    exactly 0.

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
    layers = render_layers(geo, shape, date, sensor, rng, front_pos=front_pos, na_areas=na_areas)
    return layers.sar, layers.zones, layers.melange


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

    "Upper" y is the larger row index (CaFFe's box convention), so the kept window is rows
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

    Besides the CaFFe layout, ``data_raw/pixel_spacing.csv`` gives each image's effective
    pixel spacing (`effective_spacing_m`); the file names keep the sensors' spacings, as the
    archive's names do (breakdowns by resolution stay those of CaFFe).

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
        spacing_rows = ["stem,pixel_spacing_m"]
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
                spacing_rows.append(f"{stem},{effective_spacing_m(spec, shape):.6g}")
        (tmp / SPACING_TABLE).write_text("\n".join(spacing_rows) + "\n")
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


def render_optical(
    zones: np.ndarray,
    melange: np.ndarray,
    rng: np.random.Generator,
    *,
    shade: np.ndarray | None = None,
    debris: np.ndarray | None = None,
) -> np.ndarray:
    """Plausible 15-band S2 L2A values (float32 [15, H, W], reflectance x 1e4; NaN where no data).

    Co-registered with the SAR scene of the same layers: open water is dark in NIR/SWIR, snow and
    ice are bright in the visible and dark in SWIR (high NDSI), rock is moderately bright with a
    flat spectrum and hill-shading, melange mixes ice and water by its ice cover, and debris bands
    (medial moraines) dirty the glacier.

    Args:
        zones: class ids ``[H, W]``.
        melange: ice cover of the ocean in [0, 1] ``[H, W]``.
        rng: random generator (noise, clouds).
        shade: terrain illumination in [0, 1] (0.5 = flat), or None.
        debris: debris cover of the glacier in [0, 1], or None.
    """
    h, w = zones.shape
    bands = np.zeros((15, h, w), dtype=np.float32)
    table = {k: np.asarray(v, dtype=np.float32)[:, None, None] for k, v in _S2_REFLECTANCE.items()}
    shade = np.full((h, w), 0.5, np.float32) if shade is None else shade.astype(np.float32)
    debris = np.zeros((h, w), np.float32) if debris is None else debris.astype(np.float32)
    cover = np.clip(melange, 0, 1).astype(np.float32)[None]
    illum_rock = (0.35 + 1.3 * shade)[None]
    illum_ice = (0.85 + 0.3 * shade)[None]
    ice = table["ice"] * illum_ice * (1 - debris[None]) + table["rock"] * debris[None]
    ocean = table["water"] * (1 - cover) + table["melange"] * cover
    refl = np.where(zones[None] == GLACIER, ice, table["rock"] * illum_rock)
    refl = np.where(zones[None] == OCEAN, ocean, refl)
    texture = 1.0 + 0.05 * _fractal_noise(rng, (h, w), 10).astype(np.float32)
    bands[:12] = refl * texture[None]
    bands[:12] += rng.normal(0, 40, size=(12, h, w)).astype(np.float32)
    bands[:12] = np.clip(bands[:12], 1, 12000)
    surface = np.where(zones == OCEAN, 0, np.where(zones == GLACIER, 1, 2))
    surface = np.where((zones == OCEAN) & (melange > 0.5), 3, surface)
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
            layers = render_layers(geo, spec.size, s2_date, "S1", rng, na_areas=False)
            zones, mel = layers.zones, layers.melange
            edge = np.zeros(spec.size, dtype=bool)
            edge[:, : int(rng.integers(0, spec.size[1] // 10))] = True
            zones = np.where(edge, NA, zones).astype(np.uint8)
            optical = render_optical(zones, mel, rng, shade=layers.shade, debris=layers.debris)
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
    io_utils.save_figure(fig, path, dpi=90)  # creates missing parent folders
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
    io_utils.save_figure(fig, path, dpi=80)  # creates missing parent folders
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
