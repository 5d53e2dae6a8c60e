"""Synthetic CaFFe / SSL4SAR generators: layout, determinism and realism checks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from ssl4sar_jax.data import caffe_files, ssl4sar_files, synthetic

SMALL = synthetic.SyntheticCaffeSpec(
    seed=5, count_scale=0.0, min_per_glacier=3, min_size=96, max_size=160, base_size=110
)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.name.encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def caffe_root(tmp_path_factory):
    return synthetic.generate_caffe(tmp_path_factory.mktemp("synth"), SMALL)


def test_layout_names_and_validation(caffe_root):
    items = caffe_files.validate_caffe_root(
        caffe_root,
        expected_split_counts={"train": 15, "test": 6},
        expected_glacier_counts=SMALL.glacier_counts(),
    )
    glaciers = {it.name.glacier for it in items["train"]}
    assert glaciers == {"Crane", "DBE", "JAC", "Jorum", "SI"}
    assert {it.name.glacier for it in items["test"]} == {"COL", "Mapple"}
    for it in items["train"] + items["test"]:
        assert 96 <= min(it.shape) and max(it.shape) <= 160
        real_sensors = caffe_files.CAFFE_SENSOR_COUNTS[it.name.glacier]
        assert it.name.sensor in real_sensors
        if it.name.sensor in ("TSX", "TDX"):
            assert it.name.resolution_m == (6 if it.name.glacier == "JAC" else 7)


def test_generation_is_deterministic(tmp_path, caffe_root):
    again = synthetic.generate_caffe(tmp_path / "again", SMALL)
    assert _digest(again) == _digest(caffe_root)
    other = synthetic.generate_caffe(
        tmp_path / "other", synthetic.SyntheticCaffeSpec(**{**SMALL.__dict__, "seed": 6})
    )
    assert _digest(other) != _digest(caffe_root)


def test_scene_content_is_realistic(caffe_root):
    items = caffe_files.validate_caffe_root(caffe_root)
    sar_all, zones_all = [], []
    for it in items["train"] + items["test"]:
        sar, zones, front = caffe_files.read_item_arrays(it)
        assert {1, 2, 3} <= set(np.unique(zones).tolist())  # rock, glacier, ocean in every image
        assert np.all(sar[zones == 0] == 0) and np.all(sar[zones != 0] > 0)  # NA <=> value 0
        ys, xs = np.nonzero(front)
        assert len(ys) > 10
        box = it.bbox  # the kept window rows [rl_y, lu_y] x cols [lu_x, rl_x] holds the front
        assert box[0, 0] <= xs.min() and xs.max() <= box[2, 0]
        assert box[2, 1] <= ys.min() and ys.max() <= box[0, 1]
        sar_all.append(sar[zones > 0])
        zones_all.append(zones[zones > 0])
    sar_v, zones_v = np.concatenate(sar_all), np.concatenate(zones_all)
    # No intensity shortcut: the best per-grey-value classifier (Bayes on the pooled histogram,
    # an upper bound for any pixel-intensity rule) stays far from perfect.
    hist = np.zeros((256, 4))
    np.add.at(hist, (sar_v, zones_v), 1)
    accuracy = hist.max(axis=1).sum() / hist.sum()
    assert accuracy < 0.8, accuracy


def test_front_moves_over_time():
    geo = synthetic.glacier_geometry("JAC", 0)
    rng = np.random.default_rng(0)
    import datetime

    positions = [
        synthetic._front_position(geo, datetime.date(2010, m, 1), rng) for m in range(1, 13)
    ]
    assert np.ptp(positions) > 0.02


def test_ssl4sar_synthetic_pairs(tmp_path):
    spec = synthetic.SyntheticSSL4SARSpec(
        seed=2, glaciers=("Helheim", "Petermann"), images_per_glacier=3, size=(64, 72)
    )
    root = synthetic.generate_ssl4sar(tmp_path, spec)
    items, optical = ssl4sar_files.validate_ssl4sar_root(root)
    assert len(items["train"]) == 4 and len(items["validation"]) == 2
    assert set(optical) == {"Helheim", "Petermann"}
    import rasterio

    with rasterio.open(optical["Helheim"]) as src:
        assert src.count == 15 and src.crs.to_epsg() == 32624
        assert src.transform.a == 40.0 and src.descriptions[14] == "SCL"
        bands = src.read()
    assert np.isnan(bands[:14]).any()  # no-data edge -> NaN, mapped to 0 by the reader
    scl = bands[14]
    blue, swir = bands[1], bands[10]
    assert blue[scl == 11].mean() > 5 * blue[scl == 6].mean()  # ice bright in the visible
    assert swir[scl == 11].mean() < 0.3 * blue[scl == 11].mean()  # snow/ice dark in SWIR
    normalised = ssl4sar_files.read_optical(optical["Helheim"])
    assert normalised.shape == (64, 72, 14) and normalised.dtype == np.uint8
    # Fronts move between the S1 scenes of one glacier.
    from PIL import Image

    scenes = sorted((root / "unlabeled_data_raw_train").glob("*Helheim*.png"))
    a, b = (np.asarray(Image.open(p)).astype(int) for p in scenes[:2])
    assert a.shape == b.shape == (64, 72) and np.abs(a - b).mean() > 5


def test_preview_is_written(tmp_path):
    out = synthetic.save_preview(tmp_path / "p.png", seed=0, num=3)
    assert out.stat().st_size > 10_000
    out = synthetic.save_ssl4sar_preview(tmp_path / "s.png", seed=0, glaciers=1)
    assert out.stat().st_size > 10_000


@pytest.mark.parametrize("radius", [0, 1, 3, 4, 7, 12])
def test_disk_dilation_equals_binary_dilation(radius):
    from scipy import ndimage

    rng = np.random.default_rng(radius)
    for shape, rate in (((61, 47), 0.002), ((40, 90), 0.03), ((33, 33), 0.0)):
        seeds = rng.random(shape) < rate
        seeds[0, -1] = seeds[-1, 0] = rate > 0  # seeds on the border: the disk is clipped
        got = synthetic._dilate_disk(seeds, radius)
        expected = (
            seeds
            if radius <= 0
            else ndimage.binary_dilation(seeds, structure=synthetic._disk(radius))
        )
        np.testing.assert_array_equal(got, expected)
        assert got.dtype == bool and got.shape == shape
    assert synthetic._EDT_MIN_RADIUS <= 7  # the distance-transform path is among the radii
