"""Prediction on georeferenced scenes: fronts in map coordinates, outputs, bad inputs, resume."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import rasterio
import shapely
from train_helpers import load_config

from ssl4sar_jax.constants import GLACIER, NA, OCEAN
from ssl4sar_jax.data import synthetic_geo as sg
from ssl4sar_jax.predict import runner, scenes, vector

SPACING = 30.0


def _config(inputs, output_dir, **overrides):
    c = load_config("predict", "demo")
    c.inputs = str(inputs)
    c.output_dir = str(output_dir)
    c.model.img_size, c.centre_size, c.stride, c.batch_size = 64, 32, 16, 16
    c.progress_every_s = 0.0
    for key, value in overrides.items():
        setattr(c, key, value)
    return c


def _oracle_run(inputs, output_dir, **overrides):
    return runner.predict_scenes(
        _config(inputs, output_dir, **overrides), predict_fns=[sg.oracle_predict_fn]
    )


def _front_lines(path, crs) -> shapely.MultiLineString:
    geoms, fields, file_crs = vector.read_vector(str(path))
    assert file_crs == "EPSG:4326"
    parts = vector.reproject_geometries(geoms, "EPSG:4326", crs)
    return shapely.union_all(parts), fields


def _directed_max(a, b) -> float:
    """Largest distance from a vertex of ``a`` to geometry ``b``."""
    return max(b.distance(shapely.Point(p)) for p in shapely.get_coordinates(a))


@pytest.fixture(scope="module")
def oracle_scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("geo")
    scene = sg.write_scene(
        root / "in",
        "SynthA_2020-07-01_S1",
        shape=(200, 240),
        spacing_m=SPACING,
        seed=1,
        zone_coded=True,
        na_areas=True,
    )
    os.makedirs(root / "truth")
    for p in (scene.zones_path, scene.front_path):
        shutil.move(p, root / "truth" / p.name)
    rows = _oracle_run(root / "in", root / "out", vector_formats="geojson,gpkg,shp")
    return root, scene, rows


def test_oracle_front_within_one_pixel_of_true_front(oracle_scene):
    root, scene, rows = oracle_scene
    assert [r["status"] for r in rows] == ["ok"]
    name = "SynthA_2020-07-01_S1"
    pred, fields = _front_lines(root / "out" / name / f"{name}_front.geojson", scene.crs.to_wkt())
    truth = scene.front
    assert truth.length > 20 * SPACING  # a real front, not a speck
    # Every predicted vertex (an ocean pixel centre next to glacier) is within 1 px of the truth,
    assert _directed_max(pred, truth) <= 1.0 * SPACING
    # and the prediction covers the whole true front (pixel corners of diagonal steps <= 1.5 px).
    assert _directed_max(truth, pred) <= 1.5 * SPACING
    assert pred.length == pytest.approx(truth.length, rel=0.25)
    assert set(fields) >= {"scene", "date", "sensor", "spacing_m", "length_m", "entropy", "model"}
    assert fields["scene"][0] == name and str(fields["date"][0])[:10] == "2020-07-01"
    assert fields["spacing_m"][0] == pytest.approx(SPACING)
    assert rows[0]["front_length_m"] == pytest.approx(float(np.sum(fields["length_m"])))
    # GeoPackage and Shapefile hold the same lines in the scene CRS.
    for ext in ("gpkg", "shp"):
        geoms, _, crs = vector.read_vector(str(root / "out" / name / f"{name}_front.{ext}"))
        assert rasterio.crs.CRS.from_user_input(crs) == scene.crs
        assert shapely.union_all(geoms).hausdorff_distance(pred) < 0.01 * SPACING


def test_front_lines_have_glacier_on_the_left(oracle_scene):
    root, scene, _ = oracle_scene
    name = "SynthA_2020-07-01_S1"
    geoms, _, _ = vector.read_vector(str(root / "out" / name / f"{name}_front.gpkg"))
    inv = ~scene.transform
    glacier_left = ocean_left = 0
    for geom in geoms:
        for line in getattr(geom, "geoms", [geom]):
            xy = np.asarray(line.coords)
            seg = np.diff(xy, axis=0)
            mid = (xy[:-1] + xy[1:]) / 2
            normal = np.stack([-seg[:, 1], seg[:, 0]], 1) / np.hypot(*seg.T)[:, None]
            cols, rows_ = inv @ tuple((mid + 1.5 * SPACING * normal).T)
            zone = scene.zones[np.floor(rows_).astype(int), np.floor(cols).astype(int)]
            glacier_left += int((zone == GLACIER).sum())
            ocean_left += int((zone == OCEAN).sum())
    assert glacier_left > 5 * ocean_left


def test_zones_geotiff_round_trip(oracle_scene):
    root, scene, _ = oracle_scene
    name = "SynthA_2020-07-01_S1"
    with rasterio.open(root / "in" / f"{name}.tif") as src:
        valid = src.read_masks(1) > 0
        crs, transform = src.crs, src.transform
    assert not valid.all()  # the scene has no-data areas
    with rasterio.open(root / "out" / name / f"{name}_zones.tif") as out:
        assert out.crs == crs and out.transform == transform
        assert out.nodata == runner.ZONES_NODATA and out.dtypes[0] == "uint8"
        assert out.profile["tiled"] and out.compression.name.lower() == "deflate"
        zones = out.read(1)
        assert out.tags()["date"] == "2020-07-01"
    np.testing.assert_array_equal(zones == runner.ZONES_NODATA, ~valid)
    truth = scene.zones
    # The oracle's zones survive (post-processing only fills ocean holes / extra ocean pieces).
    agree = (zones == truth)[valid].mean()
    assert agree > 0.99
    with rasterio.open(root / "out" / name / f"{name}_probability.tif") as prob:
        p = prob.read(masked=True).astype(np.float64) * prob.scales[0]
        assert prob.count == 4 and prob.crs == crs
        np.testing.assert_allclose(p.sum(0).compressed(), 1.0, atol=0.02)
    with rasterio.open(root / "out" / name / f"{name}_uncertainty.tif") as unc:
        assert unc.count == 5 and unc.descriptions[0].startswith("normalised entropy")
    assert (root / "out" / name / f"{name}_overlay.png").stat().st_size > 0
    summary = json.loads((root / "out" / "summary.json").read_text())
    assert summary["num_failed"] == 0 and summary["scenes"][0]["crs"] == "EPSG:3413"


def test_same_scene_in_two_crs_gives_the_same_front(oracle_scene, tmp_path):
    root, scene, _ = oracle_scene
    name = "SynthA_2020-07-01_S1"
    sg.reproject_scene(root / "in" / f"{name}.tif", tmp_path / "in" / "utm.tif", "EPSG:32622")
    rows = _oracle_run(tmp_path / "in", tmp_path / "out")
    assert rows[0]["status"] == "ok" and rows[0]["crs"] == "EPSG:32622"
    metric = scene.crs.to_wkt()  # compare both in metres (EPSG:3413)
    a, _ = _front_lines(root / "out" / name / f"{name}_front.geojson", metric)
    b, _ = _front_lines(tmp_path / "out" / "utm" / "utm_front.geojson", metric)
    # Nearest-neighbour warping moves boundary pixels by up to one pixel.
    mean_ab = np.mean([b.distance(shapely.Point(p)) for p in shapely.get_coordinates(a)])
    assert mean_ab <= 1.0 * SPACING
    assert a.hausdorff_distance(b) <= 2.0 * SPACING
    assert rows[0]["front_length_m"] == pytest.approx(a.length, rel=0.15)


def test_geographic_crs_scene(oracle_scene, tmp_path):
    """EPSG:4326 pixels: geodesic spacing (not square in metres), geodesic lengths."""
    root, scene, _ = oracle_scene
    name = "SynthA_2020-07-01_S1"
    sg.reproject_scene(root / "in" / f"{name}.tif", tmp_path / "in" / "geo.tif", "EPSG:4326")
    rows = _oracle_run(tmp_path / "in", tmp_path / "out")
    row = rows[0]
    assert row["status"] == "ok" and row["crs"] == "EPSG:4326"
    assert "non-square pixels" in row["warnings"]
    coarse = max(scenes.read_scene(str(tmp_path / "in" / "geo.tif")).spacing_m)
    assert 0.5 * SPACING < row["spacing_m"] < 2 * SPACING
    pred, _ = _front_lines(tmp_path / "out" / "geo" / "geo_front.geojson", scene.crs.to_wkt())
    mean = np.mean([scene.front.distance(shapely.Point(p)) for p in shapely.get_coordinates(pred)])
    assert mean <= coarse
    assert row["front_length_m"] == pytest.approx(scene.front.length, rel=0.2)


def test_caffe_png_uses_the_spacing_of_its_name(tmp_path):
    from PIL import Image

    zones = np.full((60, 60), 1, np.uint8)
    Image.fromarray(sg.zone_code_image(zones)).save(tmp_path / "COL_2015-12-18_S1_20_1_094.png")
    rows = _oracle_run(
        tmp_path / "COL_2015-12-18_S1_20_1_094.png", tmp_path / "out", vector_formats=""
    )
    assert rows[0]["status"] == "ok"
    assert (rows[0]["spacing_m"], rows[0]["glacier"], rows[0]["date"]) == (
        20.0,
        "COL",
        "2015-12-18",
    )
    assert rows[0]["missing_front"]


def test_resampling_to_the_model_spacing(oracle_scene, tmp_path):
    root, scene, _ = oracle_scene
    name = "SynthA_2020-07-01_S1"
    # Nearest neighbour: averaging zone codes would invent classes (the SAR default averages).
    rows = _oracle_run(
        root / "in" / f"{name}.tif",
        tmp_path,
        model_pixel_spacing_m=2 * SPACING,
        resampling="nearest",
    )
    assert rows[0]["model_spacing_m"] == 2 * SPACING and rows[0]["spacing_m"] == SPACING
    with rasterio.open(tmp_path / name / f"{name}_zones.tif") as out:
        assert out.shape == scene.zones.shape  # back on the scene grid
    pred, _ = _front_lines(tmp_path / name / f"{name}_front.geojson", scene.crs.to_wkt())
    assert _directed_max(pred, scene.front) <= 2.0 * SPACING  # one model pixel


def test_roi_polygon_drops_front_outside(oracle_scene, tmp_path):
    root, scene, rows = oracle_scene
    name = "SynthA_2020-07-01_S1"
    minx, miny, maxx, maxy = scene.front.bounds
    half = shapely.box(minx - 100, miny - 100, (minx + maxx) / 2, maxy + 100)
    vector.write_vector(str(tmp_path / "roi.gpkg"), [half], {"n": [1]}, scene.crs.to_wkt(), "gpkg")
    out = _oracle_run(root / "in", tmp_path / "out", roi=str(tmp_path / "roi.gpkg"))
    pred, _ = _front_lines(tmp_path / "out" / name / f"{name}_front.geojson", scene.crs.to_wkt())
    assert pred.bounds[2] <= (minx + maxx) / 2 + SPACING
    assert 0 < out[0]["front_length_m"] < rows[0]["front_length_m"]


def test_bad_inputs_fail_per_scene_without_partial_outputs(tmp_path, oracle_scene):
    root, scene, _ = oracle_scene
    src = tmp_path / "in"
    src.mkdir()
    good = root / "in" / "SynthA_2020-07-01_S1.tif"
    shutil.copy(good, src / "good.tif")
    profile = dict(
        driver="GTiff",
        width=40,
        height=30,
        dtype="uint8",
        crs="EPSG:3413",
        transform=scene.transform,
        nodata=0,
    )
    with rasterio.open(src / "two_bands.tif", "w", count=2, **profile) as dst:
        dst.write(np.full((2, 30, 40), 100, np.uint8))
    with rasterio.open(src / "empty.tif", "w", count=1, **profile) as dst:
        dst.write(np.zeros((1, 30, 40), np.uint8))
    (src / "broken.tif").write_bytes(b"this is not a GeoTIFF")
    from PIL import Image

    Image.fromarray(np.full((40, 40), 100, np.uint8)).save(src / "plain.png")
    # Smaller than one 64 px tile: padded and predicted, not refused.
    with rasterio.open(src / "small.tif", "w", count=1, **profile) as dst:
        dst.write(sg.zone_code_image(scene.zones[80:110, 100:140])[None])
    # 200 m pixels: far from the training range -> a warning, still predicted.
    coarse = dict(profile, transform=rasterio.Affine(200, 0, -190000, 0, -200, -2270000))
    with rasterio.open(src / "coarse.tif", "w", count=1, **coarse) as dst:
        dst.write(sg.zone_code_image(scene.zones[80:110, 100:140])[None])
    rows = {r["scene"]: r for r in _oracle_run(src, tmp_path / "out")}
    assert rows["good"]["status"] == "ok"
    expected = {
        "two_bands": "2 bands",
        "empty": "every pixel is nodata",
        "broken": "cannot read",
        "plain": "no georeferencing",
    }
    for name, text in expected.items():
        assert rows[name]["status"] == "failed", name
        assert text in rows[name]["error"] and str(src / name) in rows[name]["error"]
        assert not (tmp_path / "out" / name).exists()
    assert rows["small"]["status"] == "ok" and rows["small"]["height"] == 30
    assert (
        rows["coarse"]["status"] == "ok"
        and "far from the training range" in rows["coarse"]["warnings"]
    )
    assert not [p for p in os.listdir(tmp_path / "out") if p.startswith(".")]  # no temp left
    # PNG without spacing and without vector output: the 750 m rule still needs a spacing.
    rows = _oracle_run(src / "plain.png", tmp_path / "out2", vector_formats="")
    assert rows[0]["status"] == "failed" and "pixel spacing is unknown" in rows[0]["error"]
    rows = _oracle_run(
        src / "plain.png", tmp_path / "out3", vector_formats="", pixel_spacing_m=20.0
    )
    assert rows[0]["status"] == "ok" and rows[0]["crs"] == ""


def test_failed_write_leaves_nothing(oracle_scene, tmp_path, monkeypatch):
    root, _, _ = oracle_scene

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(vector, "write_vector", boom)
    rows = _oracle_run(root / "in", tmp_path)
    assert rows[0]["status"] == "failed" and "disk full" in rows[0]["error"]
    assert sorted(os.listdir(tmp_path)) == ["summary.csv", "summary.json"]


def test_float_backscatter_conversion():
    valid = np.ones((2, 3), bool)
    valid[0, 0] = False
    db = np.array([[np.nan, -27.0, 5.0], [-11.0, -40.0, 10.0]])
    out = scenes.to_uint8(db, valid, "db", (-27.0, 5.0))
    np.testing.assert_array_equal(out, [[0, 1, 255], [128, 1, 255]])
    power = 10 ** (db / 10)
    np.testing.assert_array_equal(scenes.to_uint8(power, valid, "linear", (-27.0, 5.0)), out)
    assert scenes._infer_scale(db, valid & np.isfinite(db), "float32") == "db"
    assert scenes._infer_scale(power, valid & np.isfinite(db), "float32") == "linear"


def test_float_db_geotiff_with_nan_nodata(tmp_path, oracle_scene):
    _, scene, _ = oracle_scene
    db = np.random.default_rng(0).uniform(-25, 0, (40, 50)).astype(np.float32)
    db[:5] = np.nan
    profile = dict(
        driver="GTiff",
        width=50,
        height=40,
        count=1,
        dtype="float32",
        crs="EPSG:3413",
        transform=scene.transform,
    )
    with rasterio.open(tmp_path / "sigma0_db.tif", "w", **profile) as dst:
        dst.write(db[None])
        dst.update_tags(ACQUISITION_DATE="2022-02-03T10:00:00", MISSION="SENTINEL-1")
    read = scenes.read_scene(str(tmp_path / "sigma0_db.tif"))
    assert read.source_scale == "db" and read.date == "2022-02-03" and read.sensor == "S1"
    assert not read.valid[:5].any() and read.valid[5:].all()
    assert (read.sar[:5] == 0).all() and (read.sar[5:] >= 1).all()
    np.testing.assert_array_equal(read.sar, scenes.to_uint8(db, read.valid, "db", (-27.0, 5.0)))
    assert read.spacing_m == (SPACING, SPACING)


def test_metadata_from_file_names_of_any_glacier():
    assert scenes.metadata_from_name("COL_2015-12-18_S1_20_1_094") == {
        "date": "2015-12-18",
        "sensor": "S1",
        "glacier": "COL",
        "spacing_m": "20",
    }
    meta = scenes.metadata_from_name("S1A_IW_GRDH_1SDH_20210314T093512_Helheim")
    assert meta["date"] == "2021-03-14" and meta["sensor"] == "S1"
    meta = scenes.metadata_from_name("Helheim_2019-05-02_TSX_7_1_x")
    assert meta == {"date": "2019-05-02", "sensor": "TSX", "glacier": "Helheim", "spacing_m": "7"}
    assert scenes.metadata_from_name("scene") == {}


def test_process_split_and_resume(oracle_scene, tmp_path):
    root, _, _ = oracle_scene
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        shutil.copy(root / "in" / "SynthA_2020-07-01_S1.tif", src / f"s{i}.tif")
    paths = scenes.find_scenes(str(src))
    parts = [scenes.split_for_process(paths, i, 2) for i in range(2)]
    assert sorted(parts[0] + parts[1]) == paths and not set(parts[0]) & set(parts[1])
    rows = _oracle_run(src, tmp_path / "out", process_index=1, process_count=2)
    assert [r["scene"] for r in rows] == ["s1"]
    assert (tmp_path / "out" / "summary_process1-of-2.csv").exists()
    rows = _oracle_run(src, tmp_path / "out")
    assert [(r["scene"], r["status"]) for r in rows] == [
        ("s1", "skipped"),
        ("s0", "ok"),
        ("s2", "ok"),
    ]
    (tmp_path / "out" / "s0" / "stale.txt").write_text("from an older run")
    rows = _oracle_run(src / "s0.tif", tmp_path / "out", overwrite=True)
    assert rows[0]["status"] == "ok"
    assert not (tmp_path / "out" / "s0" / "stale.txt").exists()  # the old folder was replaced
    assert (tmp_path / "out" / "s0" / "s0_front.geojson").exists()
    assert not [p for p in os.listdir(tmp_path / "out") if p.startswith(".")]
    with pytest.raises(scenes.SceneError, match="same name"):
        os.makedirs(src / "sub")
        shutil.copy(src / "s0.tif", src / "sub" / "s0.tif")
        scenes.find_scenes([str(src), str(src / "sub")])
    with pytest.raises(FileNotFoundError, match="matches no scene"):
        scenes.find_scenes(str(tmp_path / "nothing*.tif"))


def test_progress_reports_tiles_per_second_and_eta(caplog):
    import logging

    progress = runner.Progress(every_s=0.0)
    progress.start_scene("x", total_tiles=8, scenes_left=2)
    fn = progress.wrap(lambda t: t)
    with caplog.at_level(logging.INFO):
        fn(np.zeros((4, 1)))
        fn(np.zeros((4, 1)))
    text = caplog.text
    assert "x: 4/8 tiles" in text and "tiles/s" in text and "ETA" in text and "8/8" in text


def test_vectoriser_orders_a_diagonal_and_keeps_branches():
    front = np.zeros((20, 20), bool)
    idx = np.arange(2, 18)
    front[idx, idx] = True  # a diagonal
    front[10, 11:17] = True  # a side branch
    zones = np.full((20, 20), OCEAN, np.uint8)
    zones[np.triu_indices(20, 1)] = GLACIER
    zones[0, 0] = NA
    feats = vector.front_features(front, zones, rasterio.Affine(10, 0, 0, 0, -10, 200))
    assert len(feats) == 1
    geom = feats[0]["geometry"]
    assert geom.geom_type == "MultiLineString" and len(geom.geoms) == 2
    main = geom.geoms[0]
    assert main.length == pytest.approx(15 * np.sqrt(2) * 10)
