"""Georeferenced synthetic scenes: GeoTIFFs in a polar CRS with the true front as vector lines.

Builds on the scene renderer of ``ssl4sar_jax.data.synthetic`` (``render_scene``) and adds what
the predictor needs to be tested on map coordinates:

* :func:`write_scene`: one scene as a single-band uint8 GeoTIFF (0 = no data) in a real CRS
  (default EPSG:3413, NSIDC Sea Ice Polar Stereographic North) with the true zones GeoTIFF and the
  true front as lines (GeoJSON, EPSG:4326);
* :func:`reproject_scene`: the same scene warped to another CRS (nearest neighbour), for tests
  that one scene in two CRSs gives one front;
* :func:`write_time_series`: one glacier on several dates whose front moves by a known number of
  pixels per date, a rectangular box polygon across the fjord, and the true terminus changes;
* :func:`zone_code_image` / :func:`oracle_predict_fn`: a scene whose pixel values encode the true
  zones and a predict function that decodes them - a "model" that outputs the true zones, to test
  everything after the network exactly.

The true front is the exact glacier/ocean boundary along pixel edges (:func:`true_front_lines`),
built independently of the predictor's vectoriser.

Command line (writes a small demo set, or the README picture)::

    python -m ssl4sar_jax.data.synthetic_geo --out /tmp/ssl4sar_geo_demo
    python -m ssl4sar_jax.data.synthetic_geo --preview docs/images/predict_front.png
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
import shapely
from rasterio.crs import CRS
from rasterio.transform import Affine
from rasterio.warp import Resampling, calculate_default_transform, reproject

from ssl4sar_jax import io_utils
from ssl4sar_jax.constants import GLACIER, NUM_ZONE_CLASSES, OCEAN
from ssl4sar_jax.data import synthetic
from ssl4sar_jax.predict import vector

# Near Jakobshavn Isbrae (Sermeq Kujalleq) in EPSG:3413 metres; only a plausible place on Earth.
DEFAULT_ORIGIN_3413 = (-190_000.0, -2_270_000.0)
ZONE_CODE_BASE, ZONE_CODE_STEP = 40, 60  # zone_code_image: value = 40 + 60 * zone id


def grid_transform(origin: tuple[float, float], spacing_m: float) -> Affine:
    """North-up transform with the upper-left corner at ``origin`` (x, y) and square pixels."""
    return Affine(spacing_m, 0.0, origin[0], 0.0, -spacing_m, origin[1])


def true_front_lines(zones: np.ndarray, transform: Affine) -> shapely.MultiLineString:
    """The exact glacier/ocean boundary (pixel edges) of ``zones [H, W]`` in map coordinates.

    Every line is oriented with the glacier on its left (the predictor's convention).
    """
    g = zones == GLACIER
    o = zones == OCEAN
    segments = []
    # Vertical edges between (r, c) and (r, c + 1): from corner (c + 1, r) to (c + 1, r + 1).
    r, c = np.nonzero((g[:, :-1] & o[:, 1:]) | (o[:, :-1] & g[:, 1:]))
    segments.append(np.stack([c + 1, r, c + 1, r + 1], axis=1))
    # Horizontal edges between (r, c) and (r + 1, c): from corner (c, r + 1) to (c + 1, r + 1).
    r, c = np.nonzero((g[:-1, :] & o[1:, :]) | (o[:-1, :] & g[1:, :]))
    segments.append(np.stack([c, r + 1, c + 1, r + 1], axis=1))
    seg = np.concatenate(segments).astype(np.float64)
    if len(seg) == 0:
        return shapely.MultiLineString([])
    x0, y0 = transform @ (seg[:, 0], seg[:, 1])
    x1, y1 = transform @ (seg[:, 2], seg[:, 3])
    lines = shapely.linestrings(np.stack([np.stack([x0, y0], 1), np.stack([x1, y1], 1)], axis=1))
    merged = shapely.line_merge(shapely.MultiLineString(list(lines)))
    parts = [merged] if merged.geom_type == "LineString" else list(merged.geoms)
    # Same convention as the predictor's lines: glacier on the left.
    return shapely.MultiLineString(
        [vector.orient_glacier_left(np.asarray(p.coords), zones, transform) for p in parts]
    )


def zone_code_image(zones: np.ndarray) -> np.ndarray:
    """uint8 image whose values encode the zones (``40 + 60 * id``; never 0 = no data)."""
    return (ZONE_CODE_BASE + ZONE_CODE_STEP * zones.astype(np.int32)).astype(np.uint8)


def oracle_predict_fn(tiles: np.ndarray) -> np.ndarray:
    """Decodes :func:`zone_code_image` tiles ``[N, S, S, 1]`` in [0, 1] into one-hot logits."""
    values = np.asarray(tiles)[..., 0] * 255.0
    ids = np.clip(np.round((values - ZONE_CODE_BASE) / ZONE_CODE_STEP), 0, NUM_ZONE_CLASSES - 1)
    return 20.0 * np.eye(NUM_ZONE_CLASSES, dtype=np.float32)[ids.astype(np.int64)] - 10.0


def _write_tif(path: Path, array: np.ndarray, crs, transform, nodata, tags=None) -> None:
    profile = dict(
        driver="GTiff",
        height=array.shape[0],
        width=array.shape[1],
        count=1,
        dtype=array.dtype.name,
        crs=crs,
        transform=transform,
        nodata=nodata,
        compress="deflate",
    )
    with io_utils.atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(array, 1)
        if tags:
            dst.update_tags(**tags)


def _write_lines(path: Path, geom, crs, attributes: dict) -> None:
    key = {".geojson": "geojson", ".gpkg": "gpkg"}[path.suffix]
    parts = list(geom.geoms) if hasattr(geom, "geoms") else [geom]
    attrs = {k: [v] * len(parts) for k, v in attributes.items()}
    with io_utils.atomic_path(path) as tmp:
        vector.write_vector(tmp, parts, attrs, crs, key, layer=path.stem)


@dataclasses.dataclass
class GeoScene:
    """Paths and truth of one written scene."""

    sar_path: Path
    zones_path: Path
    front_path: Path
    zones: np.ndarray
    transform: Affine
    crs: CRS
    front: shapely.MultiLineString  # true front in ``crs``


def write_scene(
    out_dir: Path | str,
    name: str,
    *,
    shape: tuple[int, int] = (256, 320),
    spacing_m: float = 30.0,
    crs: str = "EPSG:3413",
    origin: tuple[float, float] = DEFAULT_ORIGIN_3413,
    seed: int = 0,
    date: datetime.date = datetime.date(2020, 7, 1),
    sensor: str = "S1",
    glacier: str = "SynthGlacier",
    front_pos: float | None = None,
    na_areas: bool = True,
    zone_coded: bool = False,
    geometry: synthetic.GlacierGeometry | None = None,
    render_date: datetime.date | None = None,
) -> GeoScene:
    """Renders one scene and writes ``<name>.tif``, ``<name>_zones.tif``, ``<name>_front.geojson``.

    Args:
        out_dir: Output folder.
        name: File stem.
        shape: ``(H, W)`` pixels.
        spacing_m: Pixel spacing (metres, the CRS unit).
        crs: A projected CRS in metres.
        origin: Upper-left corner (x, y) in ``crs``.
        seed: Scene seed (geometry and texture).
        date: Acquisition date written to the tags (and used for rendering unless
            ``render_date``).
        sensor: Sensor token (speckle looks) written to the tags.
        glacier: Glacier name written to the tags.
        front_pos: Along-flow front position (0..1) override.
        na_areas: Render radar shadow / swath edge NA areas (written as nodata).
        zone_coded: Write :func:`zone_code_image` instead of the SAR (for the oracle predictor).
        geometry: Glacier geometry (default: ``glacier_geometry(glacier, seed)``).
        render_date: Date passed to the renderer (season, texture), default ``date``.

    Returns:
        The :class:`GeoScene`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    geo = geometry or synthetic.glacier_geometry(glacier, seed)
    rng = np.random.default_rng(seed)
    sar, zones, _ = synthetic.render_scene(
        geo, tuple(shape), render_date or date, sensor, rng, front_pos=front_pos, na_areas=na_areas
    )
    transform = grid_transform(origin, spacing_m)
    crs_obj = CRS.from_user_input(crs)
    tags = {"date": date.isoformat(), "sensor": sensor, "glacier": glacier}
    image = zone_code_image(zones) if zone_coded else sar
    if zone_coded:
        image[sar == 0] = 0  # keep the no-data areas of the SAR
    paths = (out / f"{name}.tif", out / f"{name}_zones.tif", out / f"{name}_front.geojson")
    _write_tif(paths[0], image, crs_obj, transform, 0, tags)
    _write_tif(paths[1], zones, crs_obj, transform, None, tags)
    front = true_front_lines(zones, transform)
    _write_lines(paths[2], front, crs_obj.to_wkt(), {"scene": name, "date": date.isoformat()})
    return GeoScene(*paths, zones=zones, transform=transform, crs=crs_obj, front=front)


def reproject_scene(src_path: Path | str, dst_path: Path | str, dst_crs: str) -> Path:
    """Warps a scene GeoTIFF to ``dst_crs`` (nearest neighbour; same pixel size if projected)."""
    dst_path = Path(dst_path)
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(src_path) as src:
        # Same pixel size in a projected target; GDAL's default (about the same number of pixels)
        # in a geographic one, whose degrees are not metres.
        extra = (
            {"resolution": abs(src.transform.a)}
            if CRS.from_user_input(dst_crs).is_projected
            else {}
        )
        transform, width, height = calculate_default_transform(
            src.crs, dst_crs, src.width, src.height, *src.bounds, **extra
        )
        data = np.zeros((height, width), dtype=src.dtypes[0])
        reproject(
            src.read(1),
            data,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=transform,
            dst_crs=dst_crs,
            resampling=Resampling.nearest,
            src_nodata=src.nodata,
            dst_nodata=src.nodata,
        )
        tags = src.tags()
        nodata = src.nodata
    _write_tif(dst_path, data, CRS.from_user_input(dst_crs), transform, nodata, tags)
    return dst_path


@dataclasses.dataclass
class TimeSeries:
    """A written time series: scenes, true fronts, the box and the known terminus changes."""

    scenes: list[GeoScene]
    dates: list[datetime.date]
    box_path: Path
    box: shapely.Polygon  # in the scene CRS
    terminus_change_m: list[float]  # known change vs the first date (positive = advance)
    truth_csv: Path


def write_time_series(
    out_dir: Path | str,
    *,
    dates: Sequence[datetime.date] = (
        datetime.date(2019, 3, 1),
        datetime.date(2019, 9, 1),
        datetime.date(2020, 3, 1),
        datetime.date(2020, 9, 1),
    ),
    steps_px: Sequence[int] = (0, -8, 5, -14),
    shape: tuple[int, int] = (256, 256),
    spacing_m: float = 30.0,
    crs: str = "EPSG:3413",
    seed: int = 3,
    zone_coded: bool = False,
    box_format: str = "gpkg",
) -> TimeSeries:
    """One glacier on several dates, its front moved along the flow by ``steps_px`` pixels.

    The glacier flows "down" the image (rows increase towards the ocean); every date reuses the
    same scene texture and front shape, only the front position changes, so the true terminus
    change of date ``k`` is exactly ``steps_px[k] * spacing_m`` (positive = advance).

    Args:
        out_dir: Output folder (scenes, fronts, ``box.<box_format>``, ``truth.csv``).
        dates: Acquisition dates.
        steps_px: Front displacement of each date in pixels (relative to a base position).
        shape: ``(H, W)`` of every scene.
        spacing_m: Pixel spacing.
        crs: Scene CRS.
        seed: Glacier seed.
        zone_coded: Write zone-coded images (oracle predictor) instead of SAR.
        box_format: ``gpkg`` (scene CRS) or ``geojson`` (EPSG:4326).

    Returns:
        The :class:`TimeSeries`.
    """
    if len(dates) != len(steps_px):
        raise ValueError(f"dates ({len(dates)}) and steps_px ({len(steps_px)}) differ in length")
    out = Path(out_dir)
    geo = dataclasses.replace(
        synthetic.glacier_geometry("SynthSeries", seed), orientation=0, transpose=False
    )
    h = shape[0]
    base = 0.5
    written = []
    for date, step in zip(dates, steps_px, strict=True):
        written.append(
            write_scene(
                out,
                f"SynthSeries_{date.isoformat()}_S1",
                shape=shape,
                spacing_m=spacing_m,
                crs=crs,
                seed=seed,
                date=date,
                glacier="SynthSeries",
                front_pos=base + step / (h - 1),
                na_areas=False,
                zone_coded=zone_coded,
                geometry=geo,
                render_date=dates[0],
            )
        )
    # Box: rows spanning every front with a margin, columns where every date has glacier above
    # ocean across the whole row range (inside the fjord walls).
    rows_front = [
        np.nonzero((s.zones[1:] == OCEAN) & (s.zones[:-1] == GLACIER))[0] for s in written
    ]
    top = max(0, min(int(r.min()) for r in rows_front) - 10)
    bottom = min(h - 1, max(int(r.max()) for r in rows_front) + 10)
    ok = np.ones(shape[1], bool)
    for s in written:
        ok &= (s.zones[top] == GLACIER) & (s.zones[bottom] == OCEAN)
    cols = np.nonzero(ok)[0]
    if len(cols) < 8:
        raise RuntimeError("the synthetic fjord is too narrow for a box; use another seed")
    runs = np.split(cols, np.nonzero(np.diff(cols) != 1)[0] + 1)
    run = max(runs, key=len)
    left, right = int(run[0]) + 2, int(run[-1]) - 1
    t = written[0].transform
    corners = [t @ (left, top), t @ (right, top), t @ (right, bottom), t @ (left, bottom)]
    box = shapely.Polygon(corners)
    box_path = out / f"box.{box_format}"

    with io_utils.atomic_path(box_path) as tmp:
        vector.write_vector(
            tmp,
            [box],
            {"name": ["box"]},
            CRS.from_user_input(crs).to_wkt(),
            box_format,
            layer="box",
        )
    change = [float((s - steps_px[0]) * spacing_m) for s in steps_px]
    truth = out / "truth.csv"
    with open(truth, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["date", "front", "terminus_change_m"])
        for date, scene, value in zip(dates, written, change, strict=True):
            writer.writerow([date.isoformat(), scene.front_path.name, value])
    return TimeSeries(written, list(dates), box_path, box, change, truth)


def save_preview(path: Path | str, seed: int = 2, size: int = 384, spacing_m: float = 30.0) -> Path:
    """Picture of the predictor's front over a synthetic scene (written to ``path``, PNG).

    The front comes from the true-zones predictor (:func:`oracle_predict_fn`) run through the
    whole ``ssl4sar_jax.predict`` pipeline (tiling, stitching, post-processing, vectorisation,
    GeoJSON in EPSG:4326), drawn back over the SAR of the same scene next to the true front. It
    shows the geometry of the outputs, not the skill of a network.
    """
    import tempfile

    import matplotlib
    import ml_collections

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ssl4sar_jax.predict import runner, scenes

    work = Path(tempfile.mkdtemp(prefix="synthetic_geo_preview_"))
    kwargs = dict(shape=(size, size), spacing_m=spacing_m, seed=seed, na_areas=True)
    sar_scene = write_scene(work, "sar", **kwargs)
    write_scene(work, "coded", zone_coded=True, **kwargs)
    config = ml_collections.ConfigDict(
        dict(
            centre_size=32,
            stride=16,
            model_pixel_spacing_m=0.0,
            resampling="auto",
            tta=False,
            batch_size=32,
            stitch_mode="gaussian",
            length_rule="tyrion",
        )
    )
    coded = scenes.read_scene(str(work / "coded.tif"))
    pred = runner.predict_scene(coded, [oracle_predict_fn], config, context=64)
    features = vector.front_features(pred.front, pred.zones, coded.transform)
    # Round trip through EPSG:4326 as the GeoJSON output does, then back to pixels.
    lines = vector.reproject_geometries([f["geometry"] for f in features], coded.crs, "EPSG:4326")
    lines = vector.reproject_geometries(lines, "EPSG:4326", coded.crs)
    with rasterio.open(sar_scene.sar_path) as src:
        sar = src.read(1)
    fig, ax = plt.subplots(figsize=(6.4, 6.4))
    x0, y0 = coded.transform @ (0, size)
    x1, y1 = coded.transform @ (size, 0)
    ax.imshow(sar, cmap="gray", extent=(x0 / 1e3, x1 / 1e3, y0 / 1e3, y1 / 1e3))
    for part in getattr(sar_scene.front, "geoms", [sar_scene.front]):
        x, y = part.xy
        ax.plot(np.asarray(x) / 1e3, np.asarray(y) / 1e3, color="#28e63c", lw=3, label="true front")
    for geom in lines:
        for part in getattr(geom, "geoms", [geom]):
            x, y = part.xy
            ax.plot(
                np.asarray(x) / 1e3,
                np.asarray(y) / 1e3,
                color="#ff2828",
                lw=1.2,
                label="predicted front (GeoJSON)",
            )
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.legend(unique.values(), unique.keys(), loc="lower left", fontsize=8)
    ax.set_xlabel("EPSG:3413 x (km)")
    ax.set_ylabel("EPSG:3413 y (km)")
    ax.set_title(
        f"Synthetic {size}x{size} scene, {spacing_m:g} m pixels\n"
        "front of the true-zones predictor through the predict pipeline",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format="png")
    plt.close(fig)
    buffer.seek(0)
    from PIL import Image

    # 256 colours: a quarter of the size of the RGBA picture, no visible difference.
    picture = Image.open(buffer).convert("RGB").quantize(256)
    with io_utils.atomic_path(path) as tmp:
        picture.save(tmp, format="PNG", optimize=True)
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="output folder")
    parser.add_argument("--preview", help="write the front picture (PNG) here instead")
    parser.add_argument("--scenes", type=int, default=3, help="number of single scenes")
    parser.add_argument("--size", type=int, default=384, help="scene height and width (px)")
    parser.add_argument("--spacing_m", type=float, default=30.0)
    parser.add_argument("--crs", default="EPSG:3413")
    args = parser.parse_args(argv)
    if args.preview:
        print(f"wrote {save_preview(args.preview)}")
        return
    if not args.out:
        parser.error("--out or --preview is required")
    out = Path(args.out)
    for i in range(args.scenes):
        s = write_scene(
            out / "scenes",
            f"Synth{i}_2021-0{1 + i % 9}-15_S1",
            shape=(args.size, args.size),
            spacing_m=args.spacing_m,
            crs=args.crs,
            seed=i,
            date=datetime.date(2021, 1 + i % 9, 15),
            origin=(DEFAULT_ORIGIN_3413[0] + 20_000 * i, DEFAULT_ORIGIN_3413[1]),
        )
        for p in (s.zones_path, s.front_path):  # truth next to, not inside, the input folder
            (out / "truth").mkdir(parents=True, exist_ok=True)
            os.replace(p, out / "truth" / p.name)
    series = write_time_series(out / "series", spacing_m=args.spacing_m, crs=args.crs)
    print(
        f"wrote {args.scenes} scene(s) to {out / 'scenes'} and a time series to {series.box_path.parent}"
    )


if __name__ == "__main__":
    main()
