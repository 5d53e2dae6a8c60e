"""SSL4SAR raw files: Sentinel-1 PNGs paired with one Sentinel-2 GeoTIFF per glacier.

Layout expected in the manual dir (the folders TYRION's pretraining scripts untar; the Zenodo
14748506 archive names are unverified)::

    <root>/unlabeled_data_raw_train/<f0>_<Glacier>_<...>.png    glacier = stem.split('_')[1]
    <root>/unlabeled_data_raw_val/<f0>_<Glacier>_<...>.png
    <root>/data_optical/<Glacier>_<...>.tif                      glacier = stem.split('_')[0]
                                                                 (also data_optical/data_optical/)

Optical bands: when the GeoTIFF names its bands (band descriptions, as Google Earth Engine
exports do), the 14 bands B1..B12 with B8A, WVP, SCL are picked by name, in that order, and a
file lacking one of them is refused. Without descriptions the band positions are assumed, as in
TYRION: a file with >= 15 bands is read at bands 1-12, 14, 15 (band 13 = AOT skipped), a file with
exactly 14 bands is taken as already selected in that order, any other count is refused. NaN -> 0,
each band divided by its maximum over the image, then stored as ``round(x * 255)`` uint8 (TYRION's
normalisation; SCL is normalised like the others). An image that is all NaN, or whose every band
is constant, carries no signal and is refused by name.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from ssl4sar_jax.constants import NUM_OPTICAL_BANDS, OPTICAL_BAND_INDICES, OPTICAL_BAND_NAMES
from ssl4sar_jax.data.caffe_files import DataFilesError, describe_folder, read_gray_png

SPLIT_FOLDERS = {"train": "unlabeled_data_raw_train", "validation": "unlabeled_data_raw_val"}
OPTICAL_FOLDER = "data_optical"
_DATE_RES = (
    re.compile(r"^(\d{4})-(\d{2})-(\d{2})$"),
    re.compile(r"^(\d{4})(\d{2})(\d{2})(T\d+)?$"),
)


class SSL4SARDataError(DataFilesError):
    """Raised when SSL4SAR inputs are invalid (see ``caffe_files.DataFilesError``)."""

    what = "SSL4SAR input files"


@dataclasses.dataclass(frozen=True)
class S1Item:
    """A validated Sentinel-1 image and its glacier's optical file."""

    path: Path
    stem: str
    glacier: str
    date: str
    optical_path: Path
    shape: tuple[int, int]


def s1_glacier(stem: str) -> str:
    """Glacier token of a Sentinel-1 stem (field [1], as TYRION's unlabeled datasets)."""
    fields = stem.split("_")
    if len(fields) < 2 or not fields[1]:
        raise ValueError(f"{stem!r}: expected '<f0>_<Glacier>_...' (glacier is field [1])")
    return fields[1]


def s1_date(stem: str) -> str:
    """First date-like field of a stem as ``YYYY-MM-DD`` ("" if there is none)."""
    for field in stem.split("_"):
        for rx in _DATE_RES:
            m = rx.match(field)
            if m:
                return f"{m.group(1)}-{m.group(2)}-{m.group(3)}"
    return ""


def optical_dir(root: Path) -> Path:
    nested = root / OPTICAL_FOLDER / OPTICAL_FOLDER
    return nested if nested.is_dir() else root / OPTICAL_FOLDER


def _band_key(description: str | None) -> str:
    """``"B01"`` / ``"b8a"`` / ``" B2 "`` -> ``"B1"`` / ``"B8A"`` / ``"B2"``."""
    text = (description or "").strip().upper()
    match = re.fullmatch(r"B0*(\d+)(A?)", text)
    return f"B{match.group(1)}{match.group(2)}" if match else text


def optical_band_indexes(count: int, descriptions: tuple[str | None, ...], name: str) -> list[int]:
    """1-based band indexes of B1..B12 (with B8A), WVP, SCL in a GeoTIFF (see module docstring).

    Raises:
        ValueError: naming the file, for missing named bands or a wrong band count.
    """
    keys = [_band_key(d) for d in descriptions]
    if any(keys):
        positions = {key: i + 1 for i, key in reversed(list(enumerate(keys))) if key}
        missing = [band for band in OPTICAL_BAND_NAMES if band not in positions]
        if missing:
            raise ValueError(
                f"{name}: band descriptions {list(descriptions)} lack {missing}; expected "
                f"the bands {list(OPTICAL_BAND_NAMES)} (named)"
            )
        return [positions[band] for band in OPTICAL_BAND_NAMES]
    if count >= 15:
        return list(OPTICAL_BAND_INDICES)
    if count == NUM_OPTICAL_BANDS:
        return list(range(1, NUM_OPTICAL_BANDS + 1))
    raise ValueError(
        f"{name}: has {count} unnamed bands; need >= 15 (B1..B12 with B8A, AOT, WVP, SCL) or "
        f"exactly 14 already selected ({', '.join(OPTICAL_BAND_NAMES)})"
    )


def read_optical(path: Path) -> np.ndarray:
    """Reads and normalises one Sentinel-2 GeoTIFF -> uint8 [H, W, 14].

    Raises:
        ValueError: naming the file, for unreadable files, wrong or unnamed band sets, and
            images without signal (all NaN, or every band constant).
    """
    import rasterio

    try:
        with rasterio.open(path) as src:
            indexes = optical_band_indexes(src.count, src.descriptions, str(path))
            bands = src.read(indexes)
    except ValueError as e:
        if str(path) in str(e):
            raise
        raise ValueError(f"{path}: cannot read GeoTIFF ({type(e).__name__}: {e})") from None
    except Exception as e:  # rasterio raises RasterioIOError, CPLE_* errors, ...
        raise ValueError(f"{path}: cannot read GeoTIFF ({type(e).__name__}: {e})") from None
    bands = bands.astype(np.float32)
    finite = np.isfinite(bands)
    if not finite.any():
        raise ValueError(f"{path}: every value is NaN/inf (no optical signal)")
    flat = np.where(finite, bands, np.nan).reshape(bands.shape[0], -1)
    with np.errstate(all="ignore"):
        constant = np.nanmax(flat, axis=1) == np.nanmin(flat, axis=1)
    empty = ~finite.reshape(bands.shape[0], -1).any(axis=1)
    if np.all(constant | empty):
        raise ValueError(f"{path}: every band is constant (no optical signal)")
    bands = np.nan_to_num(bands, nan=0.0, posinf=0.0, neginf=0.0)
    maxima = bands.reshape(bands.shape[0], -1).max(axis=1)
    scale = np.where(maxima > 0, maxima, 1.0)[:, None, None]
    normalised = np.clip(bands / scale, 0.0, 1.0)
    return np.moveaxis(np.round(normalised * 255).astype(np.uint8), 0, -1)


def locate_manual_dir(manual_dir: Path | str) -> Path:
    """Checks that a manual_dir holds the SSL4SAR layout (see module docstring).

    Raises:
        FileNotFoundError: when ``manual_dir`` does not exist.
        SSL4SARDataError: saying what was found and what was expected.
    """
    path = Path(manual_dir).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"manual_dir {path} does not exist; expected a folder holding "
            "unlabeled_data_raw_train/, unlabeled_data_raw_val/ and data_optical/ (docs/data.md)"
        )
    if not path.is_dir():
        raise SSL4SARDataError([f"manual_dir {path}: is not a folder"])
    expected = [*SPLIT_FOLDERS.values(), OPTICAL_FOLDER]
    if all((path / folder).is_dir() for folder in expected):
        return path
    raise SSL4SARDataError(
        [
            f"manual_dir {path}: found {describe_folder(path)}; expected the "
            f"folders {', '.join(f + '/' for f in expected)} (the extracted Zenodo 14748506 tars)"
        ]
    )


def validate_ssl4sar_root(
    root: Path | str,
    *,
    val_glaciers: tuple[str, ...] = (),
    sar_conversion: str = "none",
) -> tuple[dict[str, list[S1Item]], dict[str, Path]]:
    """Checks every S1 PNG and S2 GeoTIFF of a root; collects ALL problems before raising.

    Checks: folders present, S1 name grammar, one optical file per glacier, decodable PNGs
    (8-bit grey unless ``sar_conversion="gray8"``) and GeoTIFFs (named or counted bands, some
    signal), equal H x W for every (S1, S2) pair, and non-empty train and validation splits.

    Args:
        root: the folder with ``unlabeled_data_raw_{train,val}/`` and ``data_optical/``.
        val_glaciers: glaciers whose training images form the validation split (the
            validation folder is then not read; it may be empty).
        sar_conversion: ``"none"`` or ``"gray8"`` (see ``caffe_files.read_gray_png``).

    Returns:
        ``({"train": [S1Item...], "validation": [...]}, {glacier: optical path})``.

    Raises:
        SSL4SARDataError: one line per offending file.
    """
    import rasterio

    root = Path(root)
    problems: list[str] = []
    for folder in [*SPLIT_FOLDERS.values(), OPTICAL_FOLDER]:
        if not (root / folder).is_dir():
            problems.append(f"{root / folder}: missing folder")
    if problems:
        raise SSL4SARDataError(problems)
    optical: dict[str, Path] = {}
    optical_shapes: dict[str, tuple[int, int]] = {}
    for path in sorted(optical_dir(root).glob("*.tif*"), key=lambda p: p.name):
        glacier = path.name.split("_")[0]
        if glacier in optical:  # the reference takes the first match; we insist on one
            problems.append(f"{path}: second optical file for glacier {glacier!r}")
            continue
        try:
            with rasterio.open(path) as src:
                shape = (src.height, src.width)
            read_optical(path)  # full decode: bands, signal, truncated files
        except ValueError as e:
            problems.append(str(e) if str(path) in str(e) else f"{path}: {e}")
            continue
        except Exception as e:
            problems.append(f"{path}: cannot use GeoTIFF ({type(e).__name__}: {e})")
            continue
        optical[glacier] = path
        optical_shapes[glacier] = shape
    items: dict[str, list[S1Item]] = {}
    for split, folder in SPLIT_FOLDERS.items():
        items[split] = []
        if split == "validation" and val_glaciers:
            continue
        for path in sorted((root / folder).glob("*.png"), key=lambda p: p.name):
            stem = path.name[:-4]
            try:
                glacier = s1_glacier(stem)
            except ValueError as e:
                problems.append(f"{path}: bad file name: {e}")
                continue
            try:
                sar = read_gray_png(path.read_bytes(), str(path), sar_conversion)
            except ValueError as e:
                problems.append(str(e))
                continue
            if glacier not in optical:
                problems.append(f"{path}: no optical GeoTIFF '{glacier}_*.tif' in data_optical/")
                continue
            if sar.shape != optical_shapes[glacier]:
                problems.append(
                    f"{path}: shape {sar.shape} != optical {optical[glacier].name} "
                    f"shape {optical_shapes[glacier]} (S1 must be co-registered with S2)"
                )
                continue
            items[split].append(
                S1Item(path, stem, glacier, s1_date(stem), optical[glacier], sar.shape)
            )
    if val_glaciers:
        present = {item.glacier for item in items["train"]}
        missing = sorted(set(val_glaciers) - present)
        if missing:
            problems.append(
                f"{root / SPLIT_FOLDERS['train']}: val_glaciers {missing} have no images "
                f"(glaciers found: {sorted(present)})"
            )
        items["validation"] = [it for it in items["train"] if it.glacier in val_glaciers]
        items["train"] = [it for it in items["train"] if it.glacier not in val_glaciers]
    for split, folder in SPLIT_FOLDERS.items():
        if not items[split] and not (split == "validation" and val_glaciers):
            problems.append(
                f"{root / folder}: no usable Sentinel-1 PNGs (the {split} split would be empty"
                + (
                    "; or take validation glaciers from train with val_glaciers)"
                    if split == "validation"
                    else ")"
                )
            )
    if problems:
        raise SSL4SARDataError(problems)
    return items, optical
