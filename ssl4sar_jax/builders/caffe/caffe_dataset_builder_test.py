"""Tests of the ``caffe`` TFDS builder over ``dummy_data/`` (and bad-input handling).

An equivalent of ``tfds.testing.DatasetBuilderTestCase`` that runs without TensorFlow: the builder
is prepared from the dummy ``data_raw/`` tree, split sizes and disjointness are checked, and every
record is compared with the files on disk.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import ssl4sar_jax  # noqa: F401  (registers the builders)
from ssl4sar_jax.builders.caffe.caffe_dataset_builder import CaffeConfig
from ssl4sar_jax.data import caffe_files
from ssl4sar_jax.data.synthetic_specs import SyntheticCaffeSpec

DUMMY = Path(__file__).parent / "dummy_data"
DUMMY_CONFIG = CaffeConfig(name="dummy", description="dummy_data", check_counts=False)


def _prepare(data_dir: Path, manual_dir: Path, config=DUMMY_CONFIG):
    builder = tfds.builder("caffe", config=config, data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    return _prepare(data_dir, DUMMY)


def test_split_sizes_follow_the_official_recipe(prepared):
    train_names = sorted(p.name[:-4] for p in (DUMMY / "data_raw/sar_images/train").glob("*.png"))
    test_names = sorted(p.name[:-4] for p in (DUMMY / "data_raw/sar_images/test").glob("*.png"))
    train_idx, val_idx = caffe_files.split_indices(len(train_names))
    splits = {s: prepared.as_data_source(split=s) for s in ("train", "validation", "test")}
    stems = {s: sorted(r["stem"].decode() for r in src) for s, src in splits.items()}
    assert stems["validation"] == sorted(train_names[i] for i in val_idx)
    assert stems["train"] == sorted(train_names[i] for i in train_idx)
    assert stems["test"] == test_names
    assert not set(stems["train"]) & set(stems["validation"])
    assert len(stems["validation"]) == 1 and len(stems["train"]) == 9  # ceil(0.1 * 10) = 1
    assert prepared.info.splits["train"].num_examples == 9


def test_records_match_files_and_interface(prepared):
    src = prepared.as_data_source(split="test")
    for rec in src:
        stem = rec["stem"].decode()
        name = caffe_files.parse_stem(stem)
        sar_png = np.asarray(Image.open(DUMMY / f"data_raw/sar_images/test/{stem}.png"))
        zones_png = np.asarray(Image.open(DUMMY / f"data_raw/zones/test/{stem}_zones.png"))
        front_png = np.asarray(Image.open(DUMMY / f"data_raw/fronts/test/{stem}_front.png"))
        assert rec["sar"].dtype == np.uint8 and rec["sar"].shape == (*sar_png.shape, 1)
        np.testing.assert_array_equal(rec["sar"][..., 0], sar_png)
        assert rec["zones"].dtype == np.uint8 and rec["zones"].shape == sar_png.shape
        # Label mapping PNG {0, 64, 127, 254} -> ids {0, 1, 2, 3}.
        lut = {0: 0, 64: 1, 127: 2, 254: 3}
        np.testing.assert_array_equal(rec["zones"], np.vectorize(lut.get)(zones_png))
        np.testing.assert_array_equal(rec["front"], (front_png == 255).astype(np.uint8))
        assert rec["bbox"].shape == (4, 2) and rec["bbox"].dtype == np.float64
        box_text = (DUMMY / f"data_raw/bounding_boxes/{stem}_front_extent_coord.txt").read_text()
        np.testing.assert_array_equal(rec["bbox"], caffe_files.parse_bbox(box_text, stem))
        assert rec["pixel_spacing_m"] == float(name.resolution_m)
        assert rec["glacier"].decode() == name.glacier in ("COL", "Mapple")
        assert rec["sensor"].decode() == name.sensor
        assert rec["resolution_m"] == name.resolution_m
        assert rec["quality_factor"] == name.quality_factor
        assert rec["orbit"].decode() == name.orbit
        assert rec["date"].decode() == name.date
        assert rec["season"].decode() == name.season


def test_full_config_checks_real_counts(tmp_path):
    with pytest.raises(caffe_files.CaffeDataError) as err:
        _prepare(tmp_path / "tfds", DUMMY, config="full")
    message = str(err.value)
    assert "expected 559 images, found 10" in message
    assert "expected 122 images, found 4" in message
    assert "expected 159 JAC images, found 2" in message


def _broken_copy(tmp_path: Path) -> tuple[Path, list[str]]:
    """Copies dummy_data and breaks it in six different ways; returns the offending paths."""
    root = tmp_path / "broken"
    shutil.copytree(DUMMY, root)
    raw = root / "data_raw"
    train = sorted((raw / "sar_images/train").glob("*.png"))
    # 1. truncated SAR PNG
    data = train[0].read_bytes()
    train[0].write_bytes(data[: len(data) // 2])
    # 2. missing zones file
    zones_missing = raw / "zones/train" / (train[1].name[:-4] + "_zones.png")
    zones_missing.unlink()
    # 3. zone value outside {0, 64, 127, 254}
    bad_zone = raw / "zones/train" / (train[2].name[:-4] + "_zones.png")
    z = np.asarray(Image.open(bad_zone)).copy()
    z[0, 0] = 100
    Image.fromarray(z).save(bad_zone)
    # 4. shape mismatch between SAR and front
    bad_front = raw / "fronts/train" / (train[3].name[:-4] + "_front.png")
    f = np.asarray(Image.open(bad_front))
    Image.fromarray(f[:-3]).save(bad_front)
    # 5. file name that breaks the grammar
    bad_name = train[4].with_name(train[4].name.replace("_", "-", 1))
    train[4].rename(bad_name)
    # 6. missing bounding box
    box = raw / "bounding_boxes" / (train[5].name[:-4] + "_front_extent_coord.txt")
    box.unlink()
    return root, [
        str(train[0]),
        str(zones_missing),
        str(bad_zone),
        str(train[3]),
        bad_name.name,
        str(box),
    ]


def test_bad_input_names_every_file_and_writes_nothing(tmp_path, prepared):
    root, offenders = _broken_copy(tmp_path)
    data_dir = Path(prepared.data_dir).parents[2]  # <data_dir>/caffe/dummy/1.0.0
    other = CaffeConfig(name="dummy_broken", description="broken", check_counts=False)
    with pytest.raises(caffe_files.CaffeDataError) as err:
        _prepare(data_dir, root, config=other)
    message = str(err.value)
    for offender in offenders:
        assert offender in message, offender
    assert len(err.value.problems) >= len(offenders)
    # No partial dataset for the broken config ...
    broken_dir = data_dir / "caffe" / "dummy_broken"
    assert not broken_dir.exists() or not any(broken_dir.rglob("*.array_record*"))
    # ... and the dataset prepared before is intact and readable.
    assert len(prepared.as_data_source(split="test")) == 4
    assert tfds.data_source("caffe/dummy", data_dir=str(data_dir), split="test")[0]["sar"].ndim == 3


def test_synthetic_config_builds_offline(tmp_path):
    spec = SyntheticCaffeSpec(seed=1, count_scale=0, min_per_glacier=2, min_size=48, max_size=64)
    config = CaffeConfig(name="synthetic_tiny", description="tiny", synthetic=spec)
    builder = _prepare(tmp_path / "tfds", tmp_path / "no_manual", config=config)
    assert builder.info.splits["test"].num_examples == 4
    assert (
        builder.info.splits["train"].num_examples + builder.info.splits["validation"].num_examples
        == 10
    )
    # The generated raw tree is in the real layout, under the download dir, plus the table of
    # effective pixel spacings (the images are scenes scaled down).
    raw = tmp_path / "tfds" / "downloads" / "synthetic_caffe_synthetic_tiny" / "data_raw"
    assert sorted(p.name for p in raw.iterdir()) == [
        "bounding_boxes",
        "fronts",
        "pixel_spacing.csv",
        "sar_images",
        "zones",
    ]
    rec = builder.as_data_source(split="test")[0]
    assert set(np.unique(rec["zones"])) <= {0, 1, 2, 3}
    assert rec["front"].sum() > 0
    for split in ("train", "validation", "test"):
        for rec in builder.as_data_source(split=split):
            expected = spec.scene_extent_m / max(rec["zones"].shape)
            assert rec["pixel_spacing_m"] == pytest.approx(expected, rel=1e-5)
            assert rec["pixel_spacing_m"] > 4 * rec["resolution_m"]  # not the sensor's spacing


def test_full_config_reads_the_zip_from_manual_dir(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    shutil.make_archive(str(manual / "data_raw"), "zip", root_dir=DUMMY, base_dir="data_raw")
    assert (manual / "data_raw.zip").is_file()
    builder = _prepare(tmp_path / "tfds", manual)
    assert builder.info.splits["test"].num_examples == 4
    assert builder.info.splits["train"].num_examples == 9
