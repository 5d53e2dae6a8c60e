"""Terminus change by the rectilinear box method (Moon & Joughin 2008).

For each date the glacier area inside a fixed box polygon is the area of the box on the glacier
side of the front line(s); its change since the first date divided by the box width is the
width-averaged terminus change (positive = advance, the glacier side grew). Areas are computed in
a Lambert azimuthal equal-area projection centred on the box, so they are true areas whatever the
CRS of the inputs (fronts in another CRS than the box are reprojected).

Which side is glacier comes from the geometry: either the orientation of the lines (the predictor
writes every line with the glacier on its left) or a point known to lie on the glacier
(``glacier_point``), from which each line is oriented. A front that does not split the box into at
least two parts is reported by name and skipped.
"""

from __future__ import annotations

import datetime
import glob
import math
import os
from collections.abc import Sequence

import ml_collections
import numpy as np
import shapely
from absl import logging
from pyproj import CRS as ProjCRS
from shapely import ops

from ssl4sar_jax import io_utils
from ssl4sar_jax.evaluation.report import write_csv, write_json
from ssl4sar_jax.predict import vector
from ssl4sar_jax.predict.scenes import metadata_from_name

FRONT_EXTENSIONS = (".geojson", ".json", ".gpkg", ".shp")


def find_fronts(inputs: str | Sequence[str]) -> list[str]:
    """Expands files, folders and globs of front files into a sorted list."""
    items = [v.strip() for v in inputs.split(",")] if isinstance(inputs, str) else list(inputs)
    found = []
    for item in filter(None, items):
        item = os.path.expanduser(item)
        if os.path.isdir(item):
            matches = [
                os.path.join(item, f)
                for f in os.listdir(item)
                if f.lower().endswith(FRONT_EXTENSIONS)
            ]
        elif os.path.isfile(item):
            matches = [item]
        else:
            matches = [p for p in glob.glob(item) if os.path.isfile(p)]
        if not matches:
            raise FileNotFoundError(f"fronts {item!r} match no vector file ({FRONT_EXTENSIONS})")
        found += [os.path.abspath(m) for m in matches]
    if not found:
        raise ValueError("config.fronts is empty: pass the front files (comma-separated or a glob)")
    return sorted(set(found))


def read_box(path: str) -> tuple[shapely.Polygon, ProjCRS]:
    """The box polygon and its CRS.

    Raises:
        ValueError: naming the file when it holds no single polygon.
    """
    geoms, _, crs = vector.read_vector(path)
    polys = [g for g in geoms if g is not None and not g.is_empty]
    if len(polys) == 1 and polys[0].geom_type == "MultiPolygon" and len(polys[0].geoms) == 1:
        polys = [polys[0].geoms[0]]
    if len(polys) != 1 or polys[0].geom_type != "Polygon":
        kinds = sorted({g.geom_type for g in polys}) or ["nothing"]
        raise ValueError(
            f"box {path}: expected exactly one Polygon, found {len(polys)} geometries "
            f"({', '.join(kinds)})"
        )
    if crs is None:
        raise ValueError(f"box {path}: has no CRS; write it with one (e.g. the scenes' CRS)")
    return polys[0], ProjCRS.from_user_input(crs)


def equal_area_crs(box: shapely.Polygon, crs: ProjCRS) -> ProjCRS:
    """Lambert azimuthal equal-area CRS centred on the box."""
    centre = vector.reproject_geometries([box.centroid], crs, "EPSG:4326")[0]
    return ProjCRS.from_proj4(
        f"+proj=laea +lat_0={centre.y:.6f} +lon_0={centre.x:.6f} +x_0=0 +y_0=0 +datum=WGS84 +units=m"
    )


def _line_parts(geoms) -> list[shapely.LineString]:
    parts = []
    for g in geoms:
        if g is None or g.is_empty:
            continue
        if g.geom_type == "LineString":
            parts.append(g)
        elif g.geom_type == "MultiLineString":
            parts += list(g.geoms)
        else:
            raise ValueError(f"expected (Multi)LineString fronts, found a {g.geom_type}")
    return parts


def orient_towards(parts: Sequence[shapely.LineString], point: shapely.Point):
    """Orients each line so that ``point`` (on the glacier) lies on its left."""
    out = []
    for line in parts:
        xy = np.asarray(line.coords)
        seg = np.diff(xy, axis=0)
        mid = (xy[:-1] + xy[1:]) / 2
        d = np.hypot(mid[:, 0] - point.x, mid[:, 1] - point.y)
        i = int(np.argmin(d))
        cross = seg[i, 0] * (point.y - xy[i, 1]) - seg[i, 1] * (point.x - xy[i, 0])
        out.append(line if cross >= 0 else shapely.LineString(xy[::-1]))
    return out


def glacier_area(box: shapely.Polygon, parts: Sequence[shapely.LineString]):
    """Box area on the glacier side (left) of the oriented lines.

    Returns:
        ``(area, pieces)`` or ``(None, pieces)`` when the lines do not split the box.
    """
    pieces = list(ops.split(box, shapely.MultiLineString(list(parts))).geoms)
    if len(pieces) < 2:
        return None, pieces
    eps = 1e-3 * math.sqrt(box.area)  # offset of the side test points, far below a pixel
    votes = np.zeros(len(pieces))
    for line in parts:
        xy = np.asarray(line.coords)
        seg = np.diff(xy, axis=0)
        length = np.hypot(seg[:, 0], seg[:, 1])
        ok = length > 0
        mid = (xy[:-1] + xy[1:])[ok] / 2
        normal = np.stack([-seg[ok, 1], seg[ok, 0]], axis=1) / length[ok, None]
        weight = length[ok]
        for sign in (1.0, -1.0):  # +1: left = glacier, -1: right = ocean
            pts = mid + sign * eps * normal
            for k, piece in enumerate(pieces):
                inside = shapely.contains_xy(piece, pts[:, 0], pts[:, 1])
                votes[k] += sign * float(weight[inside].sum())
    area = float(sum(p.area for p, v in zip(pieces, votes, strict=True) if v > 0))
    return area, pieces


def flow_direction(all_parts: Sequence[Sequence[shapely.LineString]], box: shapely.Polygon):
    """Unit vector from glacier to ocean: the length-weighted mean right normal inside the box."""
    total = np.zeros(2)
    for parts in all_parts:
        for line in parts:
            clipped = line.intersection(box)
            for piece in _line_parts([clipped]) if not clipped.is_empty else []:
                xy = np.asarray(piece.coords)
                seg = np.diff(xy, axis=0)
                total += np.stack([seg[:, 1], -seg[:, 0]], axis=1).sum(0)  # right normals
    norm = np.hypot(*total)
    if norm == 0:
        raise ValueError("cannot find the flow direction: no front crosses the box")
    return total / norm


def box_width(box: shapely.Polygon, flow: np.ndarray) -> float:
    """Mean box width across the flow: box area / box length along the flow axis.

    The flow axis is the side of the box's minimum rotated rectangle closest to ``flow`` (the
    mean glacier -> ocean direction of the fronts), so jagged fronts that tilt the estimated
    direction do not change the result; for a rectangular box this is its exact width.
    """
    corners = np.asarray(box.minimum_rotated_rectangle.exterior.coords)[:3]
    sides = [corners[1] - corners[0], corners[2] - corners[1]]
    axis = max(sides, key=lambda v: abs(float(v @ flow)) / max(float(np.hypot(*v)), 1e-12))
    length = float(np.hypot(*axis))
    return float(box.area / length)


def _date_of(path: str, fields: dict, date_field: str) -> str:
    if date_field in fields and len(fields[date_field]):
        value = fields[date_field][0]
        text = str(value)[:10] if not isinstance(value, bytes) else value.decode()[:10]
        try:
            return datetime.date.fromisoformat(text).isoformat()
        except ValueError:
            pass
    return metadata_from_name(os.path.splitext(os.path.basename(path))[0]).get("date", "")


def box_timeseries(config: ml_collections.ConfigDict) -> list[dict]:
    """Runs the box method described by ``config`` (``configs/timeseries.py``); returns rows."""
    if not config.output_dir:
        raise ValueError("config.output_dir is empty: where should the time series go?")
    if not config.box:
        raise ValueError("config.box is empty: pass a polygon vector file across the fjord")
    box, box_crs = read_box(config.box)
    ea = equal_area_crs(box, box_crs)
    box_ea = vector.reproject_geometries([box], box_crs, ea)[0]
    point = None
    if config.glacier_point:
        try:
            x, y = (float(v) for v in str(config.glacier_point).split(","))
        except ValueError as err:
            raise ValueError(
                f"config.glacier_point {config.glacier_point!r}: expected 'x,y' in the box CRS"
            ) from err
        point = vector.reproject_geometries([shapely.Point(x, y)], box_crs, ea)[0]
    rows, oriented = [], []
    for path in find_fronts(config.fronts):
        name = os.path.basename(path)
        row = {"front": name, "path": path}
        try:
            geoms, fields, crs = vector.read_vector(path)
            row["date"] = _date_of(path, fields, config.date_field)
            if not row["date"]:
                raise ValueError(
                    f"{path}: no date (no {config.date_field!r} attribute, none in the file name)"
                )
            if crs is None:
                raise ValueError(f"{path}: the front file has no CRS")
            parts = _line_parts(vector.reproject_geometries(geoms, crs, ea))
            if not parts:
                raise ValueError(f"{path}: holds no front line")
            if point is not None:
                parts = orient_towards(parts, point)
            area, pieces = glacier_area(box_ea, parts)
            if area is None:
                row.update(status="skipped", reason="the front does not split the box")
                logging.warning("%s: the front does not cross the box; skipped", path)
            else:
                row.update(status="ok", glacier_area_km2=area / 1e6, box_parts=len(pieces))
                oriented.append(parts)
        except ValueError as err:
            row.update(status="failed", reason=str(err))
            logging.error("%s", err)
        rows.append(row)
    good = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: r["date"])
    if config.box_width_m > 0:
        width = float(config.box_width_m)
    elif oriented:
        width = box_width(box_ea, flow_direction(oriented, box_ea))
    else:
        width = float("nan")
    if good:
        first = good[0]["glacier_area_km2"]
        for r in good:
            r["area_change_km2"] = r["glacier_area_km2"] - first
            r["terminus_change_km"] = r["area_change_km2"] / (width / 1000.0)
            r["box_width_km"] = width / 1000.0
            r["direction"] = (
                "advance"
                if r["area_change_km2"] > 0
                else "retreat"
                if r["area_change_km2"] < 0
                else ""
            )
    others = [r for r in rows if r["status"] != "ok"]
    ordered = good + others
    os.makedirs(config.output_dir, exist_ok=True)
    write_csv(os.path.join(config.output_dir, "timeseries.csv"), ordered)
    write_json(
        os.path.join(config.output_dir, "timeseries.json"),
        {"box": os.path.abspath(config.box), "box_width_km": width / 1000.0, "rows": ordered},
    )
    if good:
        plot_timeseries(
            os.path.join(config.output_dir, "timeseries.png"),
            good,
            oriented,
            box_ea,
            ea,
            config.basemap,
        )
    logging.info(
        "%d dates measured, %d skipped or failed (%s); box width %.3f km -> %s",
        len(good),
        len(others),
        ", ".join(r["front"] for r in others) or "none",
        width / 1000.0,
        config.output_dir,
    )
    return ordered


def plot_timeseries(path, rows, parts_by_date, box, ea_crs, basemap: str = "") -> None:
    """Terminus change over time (with a linear trend per year) and a map of the fronts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dates = [datetime.date.fromisoformat(r["date"]) for r in rows]
    change = np.array([r["terminus_change_km"] for r in rows])
    fig, (ax, mp) = plt.subplots(1, 2, figsize=(12, 4.8))
    ax.plot(dates, change, "o-", color="tab:blue", label="terminus change")
    if len(dates) >= 2:
        t = np.array([d.toordinal() for d in dates], float)
        slope, icpt = np.polyfit(t, change, 1)
        ax.plot(
            dates,
            slope * t + icpt,
            "--",
            color="tab:red",
            label=f"trend {slope * 365.25:+.3f} km/yr",
        )
    for year in range(dates[0].year, dates[-1].year + 2):
        ax.axvline(datetime.date(year, 1, 1), color="0.85", lw=0.8, zorder=0)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_ylabel("terminus change since first date (km, + = advance)")
    ax.set_title("Box method")
    ax.legend(loc="best")
    ax.tick_params(axis="x", labelrotation=30)
    if basemap:
        _draw_basemap(mp, basemap, ea_crs)
    cmap = plt.get_cmap("viridis")
    for i, parts in enumerate(parts_by_date):
        colour = cmap(i / max(1, len(parts_by_date) - 1))
        for line in parts:
            x, y = line.xy
            mp.plot(x, y, color=colour, lw=1.5, label=rows[i]["date"] if line is parts[0] else None)
    bx, by = box.exterior.xy
    mp.plot(bx, by, color="tab:orange", lw=1.2, label="box")
    (minx, miny, maxx, maxy) = box.buffer(box.length * 0.15).bounds
    mp.set_xlim(minx, maxx)
    mp.set_ylim(miny, maxy)
    mp.set_aspect("equal")
    mp.set_title("Fronts by date (equal-area metres)")
    mp.legend(fontsize=7, loc="best")
    fig.tight_layout()
    io_utils.save_figure(fig, path, dpi=110, format="png")


def _draw_basemap(ax, path: str, ea_crs) -> None:
    import rasterio
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(path) as src:
        transform, width, height = calculate_default_transform(
            src.crs, ea_crs.to_wkt(), src.width, src.height, *src.bounds
        )
        data = np.zeros((height, width), np.float32)
        reproject(
            src.read(1).astype(np.float32),
            data,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=transform,
            dst_crs=ea_crs.to_wkt(),
            resampling=Resampling.bilinear,
        )
    extent = (
        transform.c,
        transform.c + transform.a * width,
        transform.f + transform.e * height,
        transform.f,
    )
    ax.imshow(data, cmap="gray", extent=extent, origin="upper")
