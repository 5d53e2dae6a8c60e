"""Tests of the ``ssl4sar`` TFDS builder over ``dummy_data/`` (and bad-input handling)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tensorflow_datasets as tfds
from PIL import Image

import ssl4sar_jax  # noqa: F401  (registers the builders)
from ssl4sar_jax.data import ssl4sar_files

DUMMY = Path(__file__).parent / "dummy_data"


def _prepare(data_dir: Path, manual_dir: Path, config="full"):
    builder = tfds.builder("ssl4sar", config=config, data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return _prepare(tmp_path_factory.mktemp("tfds"), DUMMY)


def test_splits_and_pairs(prepared):
    train = prepared.as_data_source(split="train")
    val = prepared.as_data_source(split="validation")
    assert len(train) == 4 and len(val) == 2
    train_stems = {r["stem"].decode() for r in train}
    assert train_stems == {p.name[:-4] for p in (DUMMY / "unlabeled_data_raw_train").glob("*.png")}
    for rec in train:
        stem = rec["stem"].decode()
        glacier = rec["glacier"].decode()
        assert glacier == stem.split("_")[1]
        assert rec["date"].decode() == stem.split("_")[2]
        sar = np.asarray(Image.open(DUMMY / "unlabeled_data_raw_train" / f"{stem}.png"))
        np.testing.assert_array_equal(rec["sar"][..., 0], sar)
        assert rec["optical"].shape == (*sar.shape, 14) and rec["optical"].dtype == np.uint8


def test_optical_band_selection_and_normalisation(prepared):
    rec = prepared.as_data_source(split="train")[0]
    glacier = rec["glacier"].decode()
    (tif,) = (DUMMY / "data_optical").glob(f"{glacier}_*.tif")
    with rasterio.open(tif) as src:
        assert src.count == 15 and src.crs is not None and src.crs.to_epsg() > 32600
        raw = src.read().astype(np.float64)
    # Bands 1..12, 14, 15 (1-based): AOT (13) is skipped, SCL is last.
    selected = np.nan_to_num(raw[[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14]])
    expected = np.round(selected / selected.reshape(14, -1).max(1)[:, None, None] * 255)
    np.testing.assert_array_equal(rec["optical"], np.moveaxis(expected, 0, -1).astype(np.uint8))
    assert rec["optical"].reshape(-1, 14).max(0).tolist() == [255] * 14
    # Synthetic SCL holds valid L2A classes only (0 no data, 5 bare, 6 water, 9 cloud, 11 snow).
    assert set(np.unique(raw[14]).astype(int).tolist()) <= {0, 5, 6, 8, 9, 11}
    # Plausible surfaces: water (SCL 6) darker than ice (SCL 11) in NIR (B8, band 8).
    assert raw[7][raw[14] == 6].mean() < 0.2 * raw[7][raw[14] == 11].mean()


def test_bad_input_names_every_file_and_writes_nothing(tmp_path, prepared):
    root = tmp_path / "broken"
    shutil.copytree(DUMMY, root)
    train = sorted((root / "unlabeled_data_raw_train").glob("*.png"))
    offenders = []
    data = train[0].read_bytes()  # truncated PNG
    train[0].write_bytes(data[: len(data) // 3])
    offenders.append(str(train[0]))
    sar = np.asarray(Image.open(train[1]))  # shape mismatch with the optical image
    Image.fromarray(sar[:-2]).save(train[1])
    offenders.append(str(train[1]))
    orphan = train[2].with_name("S1A_Nowhere_2018-01-01_001.png")  # glacier without optical
    train[2].rename(orphan)
    offenders.append(str(orphan))
    bad_name = train[3].with_name("noglacierfield.png")  # breaks the name grammar
    train[3].rename(bad_name)
    offenders.append(str(bad_name))
    with pytest.raises(ssl4sar_files.SSL4SARDataError) as err:
        _prepare(tmp_path / "tfds", root)
    for offender in offenders:
        assert offender in str(err.value), offender
    assert not list((tmp_path / "tfds").rglob("*.array_record*"))


def test_corrupt_geotiff_is_named(tmp_path):
    root = tmp_path / "broken_tif"
    shutil.copytree(DUMMY, root)
    tif = sorted((root / "data_optical").glob("*.tif"))[0]
    tif.write_bytes(tif.read_bytes()[:300])
    with pytest.raises(ssl4sar_files.SSL4SARDataError) as err:
        ssl4sar_files.validate_ssl4sar_root(root)
    assert str(tif) in str(err.value)
