"""Inputs that must not slip through wrong: SAR PNG modes, optical GeoTIFF bands and signal,
float64 bounding boxes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ssl4sar_jax.constants import OPTICAL_BAND_NAMES
from ssl4sar_jax.data import caffe_files, ssl4sar_files
from ssl4sar_jax.evaluation.postprocess import bbox_window


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, "PNG")
    return buf.getvalue()


def test_sar_png_must_be_8bit_grey_unless_converted():
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    np.testing.assert_array_equal(caffe_files.read_gray_png(_png(grey), "g.png", "none"), grey)
    rgb = np.stack([grey, grey, grey], axis=-1)
    with pytest.raises(ValueError, match=r"rgb\.png: SAR image is RGB .*sar_conversion"):
        caffe_files.read_gray_png(_png(rgb), "rgb.png", "none")
    np.testing.assert_array_equal(caffe_files.read_gray_png(_png(rgb), "rgb.png", "gray8"), grey)
    wide = (grey.astype(np.int64) * 257 * 4 % 65536).astype(np.uint16)
    wide[0, 0] = 65535
    with pytest.raises(ValueError, match=r"w\.png: SAR image is 16-bit"):
        caffe_files.read_gray_png(_png(wide), "w.png", "none")
    converted = caffe_files.read_gray_png(_png(wide), "w.png", "gray8")
    np.testing.assert_array_equal(converted, np.round(wide / 257.0).astype(np.uint8))
    assert converted[0, 0] == 255  # linear, not saturated
    # Labels keep the lenient decoding (their value sets are checked afterwards).
    assert caffe_files.read_gray_png(_png(rgb), "zones.png").shape == (8, 8)


def test_validate_caffe_root_names_an_rgb_sar_image(tmp_path):
    import shutil
    from pathlib import Path

    dummy = Path(__file__).parents[1] / "ssl4sar_jax" / "builders" / "caffe" / "dummy_data"
    root = tmp_path / "data_raw"
    shutil.copytree(dummy / "data_raw", root)
    path = sorted((root / "sar_images" / "train").glob("*.png"))[0]
    grey = np.asarray(Image.open(path))
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(path)
    with pytest.raises(caffe_files.CaffeDataError, match=f"{path.name}: SAR image is RGB"):
        caffe_files.validate_caffe_root(root)
    items = caffe_files.validate_caffe_root(root, sar_conversion="gray8")
    item = next(i for i in items["train"] if i.sar_path == path)
    np.testing.assert_array_equal(caffe_files.read_item_arrays(item)[0], grey)


def test_bbox_keeps_float64_to_the_rounding():
    text = "x,y\n0,1001.499990\n0,0\n1001.499990,0\n1001.499990,1001.499990\n"
    assert bbox_window(caffe_files.parse_bbox(text, "t"), (3000, 3000)) == (0, 1001, 0, 1001)


def _geotiff(path, bands: np.ndarray, descriptions=None):
    import rasterio
    from rasterio.transform import from_origin

    count, height, width = bands.shape
    profile = dict(
        driver="GTiff", height=height, width=width, count=count, dtype="float32",
        crs="EPSG:32624", transform=from_origin(5e5, 8e6, 40.0, 40.0),
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(bands.astype(np.float32))
        for i, name in enumerate(descriptions or (), start=1):
            dst.set_band_description(i, name)
    return path


def test_optical_bands_by_description_order_checked(tmp_path):
    rng = np.random.default_rng(0)
    bands = rng.uniform(1, 100, size=(15, 6, 7))
    names = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12", "AOT"]
    names += ["WVP", "SCL"]
    # Shuffled band order with descriptions: picked by name, in the documented order.
    order = rng.permutation(15)
    shuffled = _geotiff(tmp_path / "s.tif", bands[order], [names[i] for i in order])
    got = ssl4sar_files.read_optical(shuffled)
    expected = ssl4sar_files.read_optical(_geotiff(tmp_path / "o.tif", bands, names))
    np.testing.assert_array_equal(got, expected)
    assert got.shape == (6, 7, len(OPTICAL_BAND_NAMES))
    # A named band set without SCL is refused by name.
    lacking = _geotiff(tmp_path / "l.tif", bands[:14], names[:14])
    with pytest.raises(ValueError, match=r"l\.tif: band descriptions .* lack \['SCL'\]"):
        ssl4sar_files.read_optical(lacking)
    # Unnamed: 14 bands are taken as selected, other counts below 15 are refused.
    assert ssl4sar_files.read_optical(_geotiff(tmp_path / "u14.tif", bands[:14])).shape[-1] == 14
    with pytest.raises(ValueError, match=r"u13\.tif: has 13 unnamed bands"):
        ssl4sar_files.read_optical(_geotiff(tmp_path / "u13.tif", bands[:13]))


def test_optical_without_signal_is_refused(tmp_path):
    nan = np.full((15, 4, 4), np.nan)
    with pytest.raises(ValueError, match=r"nan\.tif: every value is NaN"):
        ssl4sar_files.read_optical(_geotiff(tmp_path / "nan.tif", nan))
    constant = np.full((15, 4, 4), 7.0)
    with pytest.raises(ValueError, match=r"c\.tif: every band is constant"):
        ssl4sar_files.read_optical(_geotiff(tmp_path / "c.tif", constant))
