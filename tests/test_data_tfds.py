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


LOAD_THEN_SOURCE = """
import ssl4sar_jax
import tensorflow_datasets as tfds

n = sum(1 for _ in tfds.load("{name}", split="train"))
m = len(tfds.data_source("{name}", split="train"))
print("COUNTS", n, m)
"""
SOURCE_THEN_LOAD = """
import ssl4sar_jax
import tensorflow_datasets as tfds

m = len(tfds.data_source("{name}", split="train"))
n = sum(1 for _ in tfds.load("{name}", split="train"))
print("COUNTS", n, m)
"""


def test_tfds_load_and_data_source_verbatim_in_both_orders(tmp_path):
    """The documented entry points, typed as a user would, on fresh data_dirs (TFDS_DATA_DIR)."""
    _require_tensorflow()
    import os
    import subprocess

    runs = {
        ("caffe", "load first"): LOAD_THEN_SOURCE,
        ("caffe", "data_source first"): SOURCE_THEN_LOAD,
        ("ssl4sar", "data_source first"): SOURCE_THEN_LOAD,
    }
    procs = {}
    for i, ((name, order), code) in enumerate(runs.items()):
        env = dict(os.environ, TFDS_DATA_DIR=str(tmp_path / f"tfds{i}"))
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        procs[name, order] = subprocess.Popen(
            [sys.executable, "-c", code.format(name=name)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    for key, proc in procs.items():
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, (key, err[-3000:])
        counts = [line for line in out.splitlines() if line.startswith("COUNTS")]
        assert counts, (key, out)
        n, m = map(int, counts[0].split()[1:])
        assert n == m > 0, key
