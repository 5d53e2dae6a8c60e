"""Scene statistics and the cues of the synthetic SAR scenes (texture, NA, fronts)."""

from __future__ import annotations

import datetime

import numpy as np
import pytest

from ssl4sar_jax.data import scene_stats, synthetic


def _scenes(n: int, size: int = 160, seed: int = 0) -> list[scene_stats.Scene]:
    glaciers = ("Crane", "DBE", "JAC", "Jorum", "SI", "COL", "Mapple")
    out = []
    for i in range(n):
        g = glaciers[i % len(glaciers)]
        geo = synthetic.glacier_geometry(g, seed)
        rng = np.random.default_rng(1000 * seed + i)
        date = datetime.date(2010 + i % 8, 1 + (5 * i) % 12, 1 + i % 27)
        sar, zones, _ = synthetic.render_scene(geo, (size, size + 16 * (i % 3)), date, "TSX", rng)
        out.append(scene_stats.Scene(f"{g}_{i}", g, sar, zones, synthetic.front_line(zones)))
    return out


@pytest.fixture(scope="module")
def scenes():
    return _scenes(12)


def test_texture_only_classifier_separates_glacier_from_rock(scenes):
    # Trained on 6 images, scored on 6 others; the features carry no grey value.
    acc = scene_stats.texture_classifier_accuracy(scenes, seed=0)
    assert acc > 0.75, acc


def test_texture_features_ignore_brightness(scenes):
    sar = scenes[0].sar.astype(np.float64)
    a = scene_stats.texture_features(sar * 0.5)
    b = scene_stats.texture_features(sar)
    # Ratios of local statistics: halving every grey value barely moves them (the +1 in the
    # local mean keeps dark no-data areas finite, hence not exactly equal).
    inner = scenes[0].zones > 0
    rel = np.abs(a[inner] - b[inner]).mean(0) / (np.abs(b[inner]).mean(0) + 1e-6)
    assert (rel < 0.1).all(), rel


def test_glacier_stripes_are_more_coherent_than_open_water(scenes):
    stats = scene_stats.scene_statistics(scenes)
    tex = stats["texture"]
    assert tex["glacier"]["coherence"] > tex["ocean"]["coherence"]
    # Rock: layover and shadow make the roughest texture relative to its brightness.
    assert tex["rock"]["coeff_variation"] > tex["glacier"]["coeff_variation"]
    assert stats["na_zero"] == 1.0  # NA is exactly 0
    assert stats["fraction"][2] > 0.3  # glacier dominates the frame, as in CaFFe
    assert 1.0 <= stats["tortuosity"] < 3.0


def test_front_geometry_of_a_straight_and_a_zigzag_line():
    front = np.zeros((40, 40), np.uint8)
    front[20, 5:35] = 1
    length, tort = scene_stats.front_geometry(front)
    assert length == 30 and tort == pytest.approx(30 / 29)
    # A square wave: 4-px steps along x, 10-px jumps in y -> much longer than its chord.
    zig = np.zeros((40, 40), np.uint8)
    for k, x0 in enumerate(range(5, 33, 4)):
        row = 10 if k % 2 == 0 else 20
        zig[row, x0 : x0 + 5] = 1
        zig[10:21, x0 + 4] = 1
    length, tort = scene_stats.front_geometry(zig)
    assert tort > 2.0 and length > 80
    assert scene_stats.front_geometry(np.zeros((5, 5)))[0] == 0.0


def test_logistic_regression_learns_a_linear_rule():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = (x[:, 0] - 2 * x[:, 2] > 0).astype(int)
    model = scene_stats.fit_logistic(x, y)
    assert (model.predict(x) == y).mean() > 0.97


def test_load_scenes_reads_a_caffe_folder(tmp_path):
    spec = synthetic.SyntheticCaffeSpec(
        seed=3, count_scale=0.0, min_per_glacier=1, min_size=96, max_size=128, base_size=100
    )
    root = synthetic.generate_caffe(tmp_path, spec)
    scenes = scene_stats.load_scenes(root)
    assert len(scenes) == 7
    assert all(s.sar.shape == s.zones.shape == s.front.shape for s in scenes)
    with pytest.raises(FileNotFoundError, match="no SAR images"):
        scene_stats.load_scenes(root, splits=("nope",))
