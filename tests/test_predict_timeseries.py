"""Box method: known terminus change, exact area split, fronts that miss the box, bad boxes."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import shapely
from train_helpers import load_config

from ssl4sar_jax.data import synthetic_geo as sg
from ssl4sar_jax.predict import runner, timeseries, vector

CRS_3413 = "EPSG:3413"


def _config(fronts, box, out, **overrides):
    c = load_config("timeseries")
    c.fronts, c.box, c.output_dir = str(fronts), str(box), str(out)
    for key, value in overrides.items():
        setattr(c, key, value)
    return c


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    return sg.write_time_series(tmp_path_factory.mktemp("series"), zone_coded=True)


def test_true_fronts_give_the_known_terminus_change(series, tmp_path):
    # Fronts are GeoJSON (EPSG:4326), the box a GeoPackage in EPSG:3413: reprojected, not refused.
    rows = timeseries.box_timeseries(
        _config(f"{series.box_path.parent}/*_front.geojson", series.box_path, tmp_path)
    )
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert [r["date"] for r in rows] == [d.isoformat() for d in series.dates]
    got = np.array([r["terminus_change_km"] * 1000 for r in rows])
    known = np.array(series.terminus_change_m)
    np.testing.assert_allclose(got[1:], known[1:], rtol=0.01)
    assert got[0] == 0.0
    assert [r["direction"] for r in rows[1:]] == ["retreat", "advance", "retreat"]
    width = rows[0]["box_width_km"] * 1000
    minx, _, maxx, _ = series.box.bounds
    assert width == pytest.approx(maxx - minx, rel=0.01)  # the box is aligned with the flow
    assert (tmp_path / "timeseries.png").stat().st_size > 0
    with open(tmp_path / "timeseries.csv") as f:
        assert len(list(csv.DictReader(f))) == 4


def test_predicted_fronts_give_the_known_terminus_change(series, tmp_path):
    """Scene -> predicted front (true-zones predictor) -> box method, end to end."""
    c = runner_config(series.box_path.parent, tmp_path / "fronts")
    rows = runner.predict_scenes(c, predict_fns=[sg.oracle_predict_fn])
    assert all(r["status"] == "ok" for r in rows)
    out = timeseries.box_timeseries(
        _config(
            tmp_path / "fronts" / "*" / "*_front.geojson",
            series.box_path,
            tmp_path / "ts",
            basemap=str(series.scenes[0].sar_path),
        )
    )
    got = np.array([r["terminus_change_km"] * 1000 for r in out])
    np.testing.assert_allclose(got[1:], np.array(series.terminus_change_m)[1:], rtol=0.01)


def runner_config(inputs, out):

    c = load_config("predict", "demo")
    c.inputs = f"{inputs}/SynthSeries_*_S1.tif"
    c.output_dir = str(out)
    c.model.img_size, c.centre_size, c.stride, c.batch_size = 64, 32, 32, 16
    return c


def _write_lines(path, lines, crs=CRS_3413, date="2020-01-01"):
    vector.write_vector(str(path), lines, {"date": [date] * len(lines)}, crs, "gpkg")


def _write_box(path, geom, crs=CRS_3413):
    vector.write_vector(str(path), [geom], {"name": ["box"]}, crs, "gpkg")


def test_hand_built_split_is_exact_and_a_missing_line_is_reported(tmp_path):
    box = shapely.box(0, 0, 1000, 2000)
    _write_box(tmp_path / "box.gpkg", box)
    # Glacier on the left of a line running west -> east is the north side (y > 1200).
    _write_lines(
        tmp_path / "a_2020-01-01.gpkg",
        [shapely.LineString([(-50, 1200), (1050, 1200)])],
        date="2020-01-01",
    )
    # A tilted line, y = 583.33 at x = 0 and 416.67 at x = 1000: the glacier (north) part is a
    # trapezoid of 1000 * (1416.67 + 1583.33) / 2 = 1.5e6 m^2.
    _write_lines(
        tmp_path / "b.gpkg", [shapely.LineString([(-100, 600), (1100, 400)])], date="2020-06-01"
    )
    # Outside the box: reported by name and skipped.
    _write_lines(
        tmp_path / "c.gpkg", [shapely.LineString([(2000, 0), (2000, 2000)])], date="2020-09-01"
    )
    names = ",".join(str(tmp_path / n) for n in ("a_2020-01-01.gpkg", "b.gpkg", "c.gpkg"))
    config = _config(names, tmp_path / "box.gpkg", tmp_path / "out")
    rows = {r["front"]: r for r in timeseries.box_timeseries(config)}
    assert rows["c.gpkg"]["status"] == "skipped" and "does not split" in rows["c.gpkg"]["reason"]
    # Areas are equal-area (LAEA) km^2 of EPSG:3413 boxes, so allow the projection scale.
    a = rows["a_2020-01-01.gpkg"]["glacier_area_km2"]
    b = rows["b.gpkg"]["glacier_area_km2"]
    scale = a / (1000 * 800 / 1e6)
    assert b / scale == pytest.approx(1.5, rel=1e-6)
    assert rows["b.gpkg"]["direction"] == "advance"
    # In an equal-area frame the split is exact: check it directly (no reprojection).
    area, pieces = timeseries.glacier_area(box, [shapely.LineString([(-50, 1200), (1050, 1200)])])
    assert area == pytest.approx(1000 * 800) and len(pieces) == 2
    flipped = [shapely.LineString([(1050, 1200), (-50, 1200)])]
    assert timeseries.glacier_area(box, flipped)[0] == pytest.approx(1000 * 1200)
    point = shapely.Point(500, 100)  # glacier to the south: orient the lines from the point
    assert timeseries.glacier_area(box, timeseries.orient_towards(flipped, point))[0] == (
        pytest.approx(1000 * 1200)
    )
    # A front crossing the box twice (a bulge) splits it into three parts.
    bulge = [shapely.LineString([(-10, 500), (300, 500), (300, -10)])]
    area, pieces = timeseries.glacier_area(box, bulge)
    assert len(pieces) == 2 and area == pytest.approx(2000 * 1000 - 300 * 500)


def test_glacier_point_and_box_errors(tmp_path):
    box = shapely.box(0, 0, 1000, 2000)
    _write_box(tmp_path / "box.gpkg", box)
    _write_lines(tmp_path / "f_2021-05-05.gpkg", [shapely.LineString([(1050, 1200), (-50, 1200)])])
    rows = timeseries.box_timeseries(
        _config(
            tmp_path / "f_2021-05-05.gpkg",
            tmp_path / "box.gpkg",
            tmp_path / "o",
            glacier_point="500,1900",
        )
    )
    assert rows[0]["status"] == "ok"
    _write_lines(tmp_path / "line_box.gpkg", [shapely.LineString([(0, 0), (1, 1)])])
    with pytest.raises(ValueError, match="line_box.gpkg: expected exactly one Polygon"):
        timeseries.box_timeseries(
            _config(tmp_path / "f_2021-05-05.gpkg", tmp_path / "line_box.gpkg", tmp_path / "o")
        )
    two = tmp_path / "two.gpkg"
    vector.write_vector(str(two), [box, shapely.box(5, 5, 6, 6)], {"n": [1, 2]}, CRS_3413, "gpkg")
    with pytest.raises(ValueError, match="found 2 geometries"):
        timeseries.box_timeseries(_config(tmp_path / "f_2021-05-05.gpkg", two, tmp_path / "o"))
    with pytest.raises(FileNotFoundError, match="match no vector file"):
        timeseries.box_timeseries(
            _config(tmp_path / "none*.gpkg", tmp_path / "box.gpkg", tmp_path / "o")
        )
