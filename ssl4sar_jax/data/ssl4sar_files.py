"""SSL4SAR raw files: Sentinel-1 PNGs paired with one Sentinel-2 GeoTIFF per glacier.

Layout expected in the manual dir (the folders TYRION's pretraining scripts untar; reference
data_and_evaluation.md §2.1-§2.2; the Zenodo 14748506 archive names are unverified)::

    <root>/unlabeled_data_raw_train/<f0>_<Glacier>_<...>.png    glacier = stem.split('_')[1]
    <root>/unlabeled_data_raw_val/<f0>_<Glacier>_<...>.png
    <root>/data_optical/<Glacier>_<...>.tif                      glacier = stem.split('_')[0]
                                                                 (also data_optical/data_optical/)

Optical bands: a GeoTIFF with >= 15 bands is read at bands 1-12, 14, 15 (B1..B12 with B8A, WVP,
SCL; band 13 = AOT skipped, as the reference); a file with exactly 14 bands is taken as already
selected, in that order. NaN -> 0, each band divided by its maximum over the image, then stored
as ``round(x * 255)`` uint8 (reference §2.2 normalisation; SCL is normalised like the others).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np

from ssl4sar_jax.constants import NUM_OPTICAL_BANDS, OPTICAL_BAND_INDICES
from ssl4sar_jax.data.caffe_files import read_gray_png

SPLIT_FOLDERS = {"train": "unlabeled_data_raw_train", "validation": "unlabeled_data_raw_val"}
OPTICAL_FOLDER = "data_optical"
_DATE_RES = (
    re.compile(r"^(\d{4})-(\d{2})-(\d{2})$"),
    re.compile(r"^(\d{4})(\d{2})(\d{2})(T\d+)?$"),
)


class SSL4SARDataError(ValueError):
    """Raised when SSL4SAR inputs are invalid; the message lists every offending file."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        shown = "\n  ".join(self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the SSL4SAR input files:\n  {shown}")


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


def read_optical(path: Path) -> np.ndarray:
    """Reads and normalises one Sentinel-2 GeoTIFF -> uint8 [H, W, 14].

    Raises:
        ValueError: naming the file, for unreadable files or too few bands.
    """
    import rasterio

    try:
        with rasterio.open(path) as src:
            if src.count >= 15:
                bands = src.read(list(OPTICAL_BAND_INDICES))
            elif src.count == NUM_OPTICAL_BANDS:
                bands = src.read()
            else:
                raise ValueError(f"has {src.count} bands; need >= 15 (or exactly 14 selected)")
    except Exception as e:  # rasterio raises RasterioIOError, CPLE_* errors, ...
        raise ValueError(f"{path}: cannot read GeoTIFF ({type(e).__name__}: {e})") from None
    bands = np.nan_to_num(bands.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    maxima = bands.reshape(bands.shape[0], -1).max(axis=1)
    scale = np.where(maxima > 0, maxima, 1.0)[:, None, None]
    normalised = np.clip(bands / scale, 0.0, 1.0)
    return np.moveaxis(np.round(normalised * 255).astype(np.uint8), 0, -1)


def validate_ssl4sar_root(root: Path | str) -> tuple[dict[str, list[S1Item]], dict[str, Path]]:
    """Checks every S1 PNG and S2 GeoTIFF of a root; collects ALL problems before raising.

    Checks: folders present, S1 name grammar, one optical file per glacier, decodable PNGs and
    GeoTIFFs, and equal H x W for every (S1, S2) pair.

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
                count, shape = src.count, (src.height, src.width)
            if count < NUM_OPTICAL_BANDS:
                raise ValueError(f"has {count} bands; need >= 15 (or exactly 14 selected)")
            read_optical(path)  # full decode: catches truncated files
        except Exception as e:
            problems.append(f"{path}: cannot use GeoTIFF ({type(e).__name__}: {e})")
            continue
        optical[glacier] = path
        optical_shapes[glacier] = shape
    items: dict[str, list[S1Item]] = {}
    for split, folder in SPLIT_FOLDERS.items():
        items[split] = []
        for path in sorted((root / folder).glob("*.png"), key=lambda p: p.name):
            stem = path.name[:-4]
            try:
                glacier = s1_glacier(stem)
            except ValueError as e:
                problems.append(f"{path}: bad file name: {e}")
                continue
            try:
                sar = read_gray_png(path.read_bytes(), str(path))
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
    if not items["train"]:
        problems.append(f"{root / SPLIT_FOLDERS['train']}: no usable Sentinel-1 PNGs")
    if problems:
        raise SSL4SARDataError(problems)
    return items, optical
