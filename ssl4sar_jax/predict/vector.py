"""Front pixels -> vector lines in map coordinates, and vector file I/O (shapely + pyogrio).

A front piece (one 8-connected component of the post-processed front mask) becomes one feature:
its longest pixel path (the piece's "diameter" through the 8-neighbour graph, found with two
Dijkstra sweeps) as a LineString through pixel centres, plus a LineString for every side branch
of at least ``min_branch_px`` pixels (then a MultiLineString). Pixels left out lie within one
pixel of a kept line (the 2-pixel "staircase" of a diagonal front).

Orientation convention: every line is oriented with the **glacier on its left** (walking along
the line in map coordinates, x east / y north); the time-series box method relies on it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import numpy as np
import shapely
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from rasterio.transform import Affine
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra

from ssl4sar_jax.constants import GLACIER

_EIGHT = np.ones((3, 3), dtype=bool)
# Half of the 8-neighbourhood (each undirected edge once).
_OFFSETS = ((0, 1, 1.0), (1, -1, np.sqrt(2.0)), (1, 0, 1.0), (1, 1, np.sqrt(2.0)))
VECTOR_DRIVERS = {
    "geojson": ("GeoJSON", ".geojson"),
    "gpkg": ("GPKG", ".gpkg"),
    "shp": ("ESRI Shapefile", ".shp"),
}


def _piece_graph(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]):
    index = -np.ones(shape, dtype=np.int64)
    index[rows, cols] = np.arange(len(rows))
    src, dst, weight = [], [], []
    for dr, dc, w in _OFFSETS:
        r2, c2 = rows + dr, cols + dc
        inside = (r2 >= 0) & (r2 < shape[0]) & (c2 >= 0) & (c2 < shape[1])
        nb = np.full(len(rows), -1, dtype=np.int64)
        nb[inside] = index[r2[inside], c2[inside]]
        ok = nb >= 0
        src.append(np.nonzero(ok)[0])
        dst.append(nb[ok])
        weight.append(np.full(int(ok.sum()), w))
    src, dst, weight = (np.concatenate(a) for a in (src, dst, weight))
    n = len(rows)
    graph = coo_matrix((weight, (src, dst)), shape=(n, n)).tocsr()
    return graph


def _longest_path(graph, nodes: np.ndarray) -> np.ndarray:
    """Approximate diameter path (exact on trees) among ``nodes`` of ``graph``."""
    start = int(nodes[0])
    dist = dijkstra(graph, directed=False, indices=start)
    a = int(nodes[np.argmax(np.where(np.isfinite(dist[nodes]), dist[nodes], -1))])
    dist, pred = dijkstra(graph, directed=False, indices=a, return_predecessors=True)
    b = int(nodes[np.argmax(np.where(np.isfinite(dist[nodes]), dist[nodes], -1))])
    path = [b]
    while path[-1] != a:
        path.append(int(pred[path[-1]]))
    return np.array(path[::-1], dtype=np.int64)


def piece_paths(piece: np.ndarray, min_branch_px: int = 3) -> list[np.ndarray]:
    """Pixel paths of one 8-connected piece ``[h, w]`` bool -> list of ``[n, 2]`` (row, col)."""
    rows, cols = np.nonzero(piece)
    if len(rows) == 1:
        return [np.stack([rows, cols], axis=1)]
    graph = _piece_graph(rows, cols, piece.shape)
    remaining = np.ones(len(rows), dtype=bool)
    paths = []
    main = _longest_path(graph, np.arange(len(rows)))
    paths.append(main)
    remaining[main] = False
    # Branches: components of the pixels that are neither on a kept path nor touching one.
    on_path = np.zeros(piece.shape, bool)
    on_path[rows[main], cols[main]] = True
    near = ndimage.binary_dilation(on_path, structure=_EIGHT)
    for _ in range(64):  # bounded: each round keeps at least min_branch_px pixels
        left = remaining & ~near[rows, cols]
        if left.sum() < min_branch_px:
            break
        mask = np.zeros(piece.shape, bool)
        mask[rows[left], cols[left]] = True
        labels, count = ndimage.label(mask, structure=_EIGHT)
        sizes = np.bincount(labels[rows[left], cols[left]], minlength=count + 1)
        best = int(np.argmax(sizes))
        if sizes[best] < min_branch_px:
            break
        members = np.nonzero(left & (labels[rows, cols] == best))[0]
        branch = _longest_path(graph, members)
        # Attach the branch to the closest kept pixel so the feature stays connected.
        kept = np.nonzero(~remaining)[0]
        for end in (0, -1):
            r, c = rows[branch[end]], cols[branch[end]]
            d = np.hypot(rows[kept] - r, cols[kept] - c)
            if d.min() <= 2.0:
                nearest = kept[np.argmin(d)]
                branch = (
                    np.concatenate([[nearest], branch])
                    if end == 0
                    else np.concatenate([branch, [nearest]])
                )
                break
        paths.append(branch)
        remaining[branch] = False
        on_path[rows[branch], cols[branch]] = True
        near = ndimage.binary_dilation(on_path, structure=_EIGHT)
    return [np.stack([rows[p], cols[p]], axis=1) for p in paths]


def pixel_to_map(rc: np.ndarray, transform: Affine) -> np.ndarray:
    """``[n, 2]`` (row, col) pixel indices -> ``[n, 2]`` (x, y) map coordinates of the centres."""
    t = transform
    c = rc[:, 1].astype(np.float64) + 0.5
    r = rc[:, 0].astype(np.float64) + 0.5
    return np.stack([t.a * c + t.b * r + t.c, t.d * c + t.e * r + t.f], axis=1)


def _glacier_left_score(xy: np.ndarray, zones: np.ndarray, transform: Affine) -> float:
    """> 0 when glacier lies on the left of the polyline ``xy``, < 0 when on its right."""
    if len(xy) < 2:
        return 0.0
    seg = np.diff(xy, axis=0)
    length = np.hypot(seg[:, 0], seg[:, 1])
    ok = length > 0
    mid = (xy[:-1] + xy[1:])[ok] / 2
    normal = np.stack([-seg[ok, 1], seg[ok, 0]], axis=1) / length[ok, None]  # left normal
    step = float(np.hypot(transform.a, transform.d))
    inverse = ~transform
    score = 0.0
    for sign in (1.0, -1.0):
        for dist in (1.0, 2.0):
            pts = mid + sign * dist * step * normal
            cols, rows = inverse @ (pts[:, 0], pts[:, 1])
            r, c = np.floor(rows).astype(int), np.floor(cols).astype(int)
            inside = (r >= 0) & (r < zones.shape[0]) & (c >= 0) & (c < zones.shape[1])
            glacier = np.zeros(len(r), bool)
            glacier[inside] = zones[r[inside], c[inside]] == GLACIER
            score += sign * float(glacier.sum())
    return score


def orient_glacier_left(xy: np.ndarray, zones: np.ndarray, transform: Affine) -> np.ndarray:
    """``[n, 2]`` map coordinates of a line, reversed if needed so the glacier is on its left."""
    return xy[::-1] if _glacier_left_score(xy, zones, transform) < 0 else xy


def front_features(
    front: np.ndarray, zones: np.ndarray, transform: Affine, min_branch_px: int = 3
) -> list[dict]:
    """Front mask -> one feature per 8-connected piece.

    Args:
        front: ``[H, W]`` bool post-processed front (ocean pixels next to glacier).
        zones: ``[H, W]`` cleaned zones (orients the lines: glacier on the left).
        transform: Pixel -> map affine of the grid.
        min_branch_px: Shortest side branch kept as an extra line.

    Returns:
        ``[{"geometry": shapely (Multi)LineString in map coordinates, "pixels": [n, 2] (row,
        col) of the line vertices, "num_pixels": int}]`` ordered by size (largest first).
    """
    labels, count = ndimage.label(front, structure=_EIGHT)
    if count == 0:
        return []
    features = []
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        piece = labels[box] == label
        offset = np.array([box[0].start, box[1].start])
        lines, pixels = [], []
        for path in piece_paths(piece, min_branch_px):
            rc = path + offset
            xy = pixel_to_map(rc, transform)
            if len(xy) == 1:
                xy = np.concatenate([xy, xy])  # a 1-pixel piece: a degenerate line
            if _glacier_left_score(xy, zones, transform) < 0:
                xy, rc = xy[::-1], rc[::-1]
            lines.append(shapely.LineString(xy))
            pixels.append(rc)
        geometry = lines[0] if len(lines) == 1 else shapely.MultiLineString(lines)
        features.append(
            {"geometry": geometry, "pixels": np.concatenate(pixels), "num_pixels": int(piece.sum())}
        )
    features.sort(key=lambda f: -f["num_pixels"])
    return features


def reproject_geometries(geoms: Sequence, src_crs, dst_crs) -> list:
    """Reprojects shapely geometries between CRSs (anything pyproj accepts)."""
    src, dst = ProjCRS.from_user_input(src_crs), ProjCRS.from_user_input(dst_crs)
    if src == dst:
        return list(geoms)
    transformer = Transformer.from_crs(src, dst, always_xy=True)
    return [
        shapely.transform(g, lambda xy: np.stack(transformer.transform(xy[:, 0], xy[:, 1]), axis=1))
        for g in geoms
    ]


def geometry_length_m(geom, crs) -> float:
    """Length in metres: planar in a projected CRS (times its unit), geodesic in a geographic one."""
    crs = ProjCRS.from_user_input(crs)
    if crs.is_geographic:
        return float(crs.get_geod().geometry_length(geom))
    factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    return float(geom.length * factor)


def write_vector(
    path: str,
    geometries: Sequence,
    attributes: Mapping[str, Sequence],
    crs,
    driver_key: str,
    layer: str | None = None,
) -> None:
    """Writes geometries (front lines, boxes) with attributes through pyogrio (GDAL/OGR); GeoJSON is RFC 7946 (EPSG:4326).

    Args:
        path: Output file (the caller makes it atomic by writing into a temporary folder).
        geometries: shapely geometries in ``crs``.
        attributes: ``{field: values}`` (one value per geometry; str, int or float).
        crs: CRS of the geometries; GeoJSON output is reprojected to EPSG:4326.
        driver_key: ``geojson``, ``gpkg`` or ``shp``.
        layer: Layer name (GeoPackage); default: the file name without extension.
    """
    import pyogrio.raw

    if driver_key not in VECTOR_DRIVERS:
        raise ValueError(
            f"vector format must be one of {sorted(VECTOR_DRIVERS)}, got {driver_key!r}"
        )
    driver = VECTOR_DRIVERS[driver_key][0]
    options = {}
    if driver_key == "geojson":
        geometries = reproject_geometries(geometries, crs, "EPSG:4326")
        crs = "EPSG:4326"
        options = {"RFC7946": "YES", "WRITE_NAME": "NO"}
    geometries = list(geometries)
    kinds = {g.geom_type for g in geometries}
    if kinds <= {"LineString", "MultiLineString"}:
        geometry_type = "MultiLineString" if "MultiLineString" in kinds else "LineString"
        if geometry_type == "MultiLineString":  # one geometry type per layer (Shapefile/GPKG)
            geometries = [
                shapely.MultiLineString([g]) if g.geom_type == "LineString" else g
                for g in geometries
            ]
    elif len(kinds) == 1:
        geometry_type = kinds.pop()
    else:
        geometry_type = "Unknown"
    fields = list(attributes)
    field_data = []
    for key in fields:
        values = list(attributes[key])
        if values and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values
        ):
            field_data.append(np.asarray(values, dtype=np.int64))
        elif values and all(isinstance(v, (int, float, np.floating, np.integer)) for v in values):
            field_data.append(np.asarray(values, dtype=np.float64))
        else:
            field_data.append(np.asarray([str(v) for v in values], dtype=object))
    if not geometries:
        # pyogrio needs typed, empty columns to create the fields of an empty layer.
        field_data = [np.asarray([], dtype=object) for _ in fields]
    wkb = np.asarray([shapely.to_wkb(g) for g in geometries], dtype=object)
    pyogrio.raw.write(
        path,
        geometry=wkb,
        field_data=field_data,
        fields=fields,
        driver=driver,
        geometry_type=geometry_type,
        crs=ProjCRS.from_user_input(crs).to_wkt(),
        layer=(layer or _layer_name(path)) if driver_key == "gpkg" else None,
        layer_options=options or None,
    )


def _layer_name(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    return re.sub(r"[^A-Za-z0-9_]", "_", stem).strip("_") or "layer"


def read_vector(path: str) -> tuple[list, dict[str, np.ndarray], str | None]:
    """Reads a vector file -> ``(shapely geometries, {field: values}, CRS as WKT or None)``.

    Raises:
        ValueError: naming the file when it cannot be read.
    """
    import pyogrio.raw

    try:
        meta, _, wkb, field_data = pyogrio.raw.read(path)
    except Exception as err:  # pyogrio raises its own DataSourceError/DataLayerError
        raise ValueError(f"{path}: cannot read the vector file ({err})") from err
    geoms = [shapely.from_wkb(g) if g is not None else None for g in wkb]
    fields = {
        name: np.asarray(values) for name, values in zip(meta["fields"], field_data, strict=True)
    }
    return geoms, fields, meta.get("crs")
