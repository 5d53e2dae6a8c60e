"""CaFFe file-name grammar, label mapping, bounding boxes and the official split recipe."""

from __future__ import annotations

import numpy as np
import pytest

from ssl4sar_jax.constants import TEST_GLACIERS, TRAIN_GLACIERS
from ssl4sar_jax.data import caffe_files


def test_parse_stem_reads_every_field():
    name = caffe_files.parse_stem("COL_2015-12-18_S1_20_1_094")
    assert (name.glacier, name.date, name.sensor) == ("COL", "2015-12-18", "S1")
    assert (name.resolution_m, name.quality_factor, name.orbit) == (20, 1, "094")
    assert name.season == "winter"  # COL is northern: December is winter
    # Southern glacier: July is winter, December summer.
    assert caffe_files.parse_stem("Mapple_2010-07-02_TSX_7_3_009").season == "winter"
    assert caffe_files.parse_stem("Mapple_2010-12-02_TSX_7_3_009").season == "summer"


@pytest.mark.parametrize(
    "stem, fragment",
    [
        ("COL_2015-12-18_S1_20_1", "6 '_'-separated fields.*got 5"),
        ("Foo_2015-12-18_S1_20_1_094", "unknown glacier"),
        ("COL_2015-13-18_S1_20_1_094", "invalid date"),
        ("COL_20151218_S1_20_1_094", "not YYYY-MM-DD"),
        ("COL_2015-12-18_S2_20_1_094", "unknown sensor"),
        ("COL_2015-12-18_S1_10_1_094", "resolution"),
        ("COL_2015-12-18_S1_20_7_094", "quality factor"),
        ("COL_2015-12-18_S1_20_1_", "orbit"),
    ],
)
def test_parse_stem_rejects_broken_names(stem, fragment):
    with pytest.raises(ValueError, match=fragment) as err:
        caffe_files.parse_caffe_stem(stem)  # the grammar plus CaFFe's names and spacings
    assert stem in str(err.value)


def test_format_stem_round_trips():
    stem = caffe_files.format_stem("JAC", "2016-11-01", "TSX", 6, 1, "330")
    assert caffe_files.parse_stem(stem).stem == stem == "JAC_2016-11-01_TSX_6_1_330"


def test_zone_mapping():
    png = np.array([[0, 64], [127, 254]], dtype=np.uint8)
    np.testing.assert_array_equal(caffe_files.zones_png_to_ids(png), [[0, 1], [2, 3]])
    assert caffe_files.zones_png_to_ids(np.array([63, 255], dtype=np.uint8)).tolist() == [255, 255]


def test_parse_bbox():
    text = "x,y\n10.4,200.6\n10.4,50\n300,50\n300,200.6\n"
    box = caffe_files.parse_bbox(text, "b.txt")
    assert box.dtype == np.float64 and box.shape == (4, 2)
    np.testing.assert_allclose(box[0], [10.4, 200.6], rtol=1e-12)
    with pytest.raises(ValueError, match="b.txt"):
        caffe_files.parse_bbox("x,y\n1,2\n", "b.txt")


def test_official_split_is_reproduced():
    train, val = caffe_files.split_indices(caffe_files.CAFFE_NUM_TRAIN)
    assert len(train) == 503 and len(val) == 56
    assert sorted(val.tolist()) == list(caffe_files.CAFFE_VAL_INDICES)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(559))
    # Sorted training names: Crane [0, 69), DBE [69, 202), JAC [202, 361), Jorum [361, 438),
    # SI [438, 559) -> validation holds Crane 8, DBE 10, JAC 16, Jorum 8, SI 14 (the official CaFFe split).
    edges = np.cumsum([0] + [caffe_files.CAFFE_GLACIER_COUNTS[g] for g in TRAIN_GLACIERS])
    per_glacier = np.histogram(val, bins=edges)[0].tolist()
    assert per_glacier == [8, 10, 16, 8, 14]


def test_real_count_tables_are_consistent():
    train = sum(caffe_files.CAFFE_GLACIER_COUNTS[g] for g in TRAIN_GLACIERS)
    test = sum(caffe_files.CAFFE_GLACIER_COUNTS[g] for g in TEST_GLACIERS)
    assert (train, test) == (559, 122)
