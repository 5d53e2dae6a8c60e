"""TFDS integration: registration after `import ssl4sar_jax`, tfds.load / tfds.data_source."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

import ssl4sar_jax  # noqa: F401  (registers the builders once TFDS is imported)

REPO = Path(__file__).parents[1]


def _require_tensorflow() -> None:
    """`tfds.load` needs TensorFlow (the `tf` extra, part of the `test` extra): never skipped."""
    import tensorflow  # noqa: F401  (a missing install fails the test with ImportError)


def test_builders_register_on_import_with_array_record_default(tmp_path):
    for name in ("caffe", "ssl4sar"):
        builder = tfds.builder(name, data_dir=str(tmp_path))
        assert builder.builder_config.name == "synthetic"  # the default needs no download
        assert builder.info.file_format.value == "array_record"
        assert "@" in builder.info.citation  # CITATIONS.bib found next to the builder


def test_tfds_load_with_tfrecord(tmp_path):
    """`tfds.load` needs TFRecord (written and read with TensorFlow, the `tf` extra)."""
    _require_tensorflow()
    from ssl4sar_jax.builders.caffe.caffe_dataset_builder import CaffeConfig

    config = CaffeConfig(name="dummy", description="dummy_data", check_counts=False)
    manual = REPO / "ssl4sar_jax" / "builders" / "caffe" / "dummy_data"
    builder = tfds.builder("caffe", config=config, data_dir=str(tmp_path), file_format="tfrecord")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
    )
    ds = tfds.load("caffe/dummy", split="test", data_dir=str(tmp_path))
    records = list(tfds.as_numpy(ds))
    assert len(records) == 4
    rec = records[0]
    assert rec["sar"].shape[-1] == 1 and rec["sar"].dtype == np.uint8
    assert rec["zones"].shape == rec["sar"].shape[:2]
    assert set(np.unique(rec["zones"])) <= {0, 1, 2, 3}
    assert rec["bbox"].shape == (4, 2)
    assert "tensorflow" in sys.modules


def test_tfds_load_ssl4sar_with_tfrecord(tmp_path):
    _require_tensorflow()
    manual = REPO / "ssl4sar_jax" / "builders" / "ssl4sar" / "dummy_data"
    builder = tfds.builder("ssl4sar/full", data_dir=str(tmp_path), file_format="tfrecord")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual))
    )
    ds = tfds.load("ssl4sar/full", split="train", data_dir=str(tmp_path))
    records = list(tfds.as_numpy(ds))
    assert len(records) == 4
    assert records[0]["optical"].shape == (*records[0]["sar"].shape[:2], 14)
