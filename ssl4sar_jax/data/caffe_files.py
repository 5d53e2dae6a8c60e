"""CaFFe raw-data files: file-name grammar, split recipe and a validating scanner.

The TFDS ``caffe`` builder (``datasets/caffe``) and the synthetic generator share this module, so the
synthetic data goes through exactly the parsing path used for the real ``data_raw/`` tree
(reference: data_and_evaluation.md §1.2-§1.7).

Layout of a CaFFe root::

    data_raw/
      sar_images/{train,test}/<stem>.png
      zones/{train,test}/<stem>_zones.png
      fronts/{train,test}/<stem>_front.png
      bounding_boxes/<stem>_front_extent_coord.txt

Stem grammar: ``<Glacier>_<YYYY-MM-DD>_<Sensor>_<Res>_<Quality>_<Orbit>``.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ssl4sar_jax.constants import (
    FRONT_PNG_VALUE,
    GLACIERS,
    RESOLUTIONS_M,
    SENSORS,
    TEST_GLACIERS,
    TRAIN_GLACIERS,
    ZONE_PNG_VALUES,
    season_of,
)

# Real per-glacier, per-sensor image counts (reference §1.6, [3P]; totals match the code's 559/122).
CAFFE_SENSOR_COUNTS: dict[str, dict[str, int]] = {
    "COL": {"S1": 18, "TDX": 47},
    "Mapple": {"ENVISAT": 10, "ERS": 2, "PALSAR": 8, "S1": 15, "TSX": 22},
    "Crane": {"ENVISAT": 9, "ERS": 5, "PALSAR": 7, "TSX": 48},
    "DBE": {"ENVISAT": 26, "ERS": 16, "PALSAR": 20, "RSAT": 27, "TSX": 44},
    "JAC": {"TSX": 159},
    "Jorum": {"ENVISAT": 10, "ERS": 3, "PALSAR": 6, "S1": 15, "TSX": 43},
    "SI": {"ENVISAT": 27, "ERS": 28, "PALSAR": 7, "RSAT": 27, "TSX": 32},
}
CAFFE_GLACIER_COUNTS: dict[str, int] = {g: sum(c.values()) for g, c in CAFFE_SENSOR_COUNTS.items()}
CAFFE_NUM_TRAIN = 559
CAFFE_NUM_TEST = 122
# Sorted validation indices of the official split (reference §1.6); used by the tests.
CAFFE_VAL_INDICES: tuple[int, ...] = (
    0, 9, 29, 41, 47, 49, 65, 67, 85, 90, 119, 132, 135, 146, 157, 162, 165, 192, 213, 225, 237,
    244, 245, 261, 274, 284, 286, 292, 307, 323, 342, 346, 350, 360, 364, 374, 385, 404, 405, 406,
    419, 427, 440, 442, 448, 465, 474, 480, 494, 500, 504, 525, 530, 531, 540, 548,
)  # fmt: skip

ZONES_SUFFIX = "_zones.png"
FRONT_SUFFIX = "_front.png"
BBOX_SUFFIX = "_front_extent_coord.txt"
SPLIT_FOLDERS = ("train", "test")

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ZONE_VALUE_TO_ID = np.full(256, 255, dtype=np.uint8)
for _class_id, _value in enumerate(ZONE_PNG_VALUES):
    _ZONE_VALUE_TO_ID[_value] = _class_id


class CaffeDataError(ValueError):
    """Raised when raw CaFFe files are invalid; the message lists every offending file."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        shown = "\n  ".join(self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the CaFFe input files:\n  {shown}")


@dataclasses.dataclass(frozen=True)
class CaffeName:
    """Metadata parsed from a CaFFe file stem (reference §1.3).

    Attributes:
        stem: full stem, e.g. ``COL_2015-12-18_S1_20_1_094``.
        glacier: glacier token (``COL``, ``Mapple``, ``Crane``, ``DBE``, ``JAC``, ``Jorum``, ``SI``).
        date: acquisition date ``YYYY-MM-DD``.
        sensor: sensor token (``RSAT``, ``S1``, ``ENVISAT``, ``ERS``, ``PALSAR``, ``TSX``, ``TDX``).
        resolution_m: pixel spacing in metres.
        quality_factor: 1 (best) .. 6 (worst).
        orbit: orbit string (kept as text, leading zeros matter).
        season: ``"winter"`` or ``"summer"`` by the CaFFe hemisphere rule.
    """

    stem: str
    glacier: str
    date: str
    sensor: str
    resolution_m: int
    quality_factor: int
    orbit: str
    season: str


def parse_stem(stem: str) -> CaffeName:
    """Parses a SAR image stem ``<Glacier>_<YYYY-MM-DD>_<Sensor>_<Res>_<Quality>_<Orbit>``.

    Args:
        stem: file name without ``.png`` (and without a ``_zones``/``_front`` suffix).

    Returns:
        The parsed `CaffeName`.

    Raises:
        ValueError: naming the stem and the broken field.
    """
    fields = stem.split("_")
    if len(fields) != 6:
        raise ValueError(
            f"{stem!r}: expected 6 '_'-separated fields "
            f"<Glacier>_<YYYY-MM-DD>_<Sensor>_<Res>_<Quality>_<Orbit>, got {len(fields)}"
        )
    glacier, date, sensor, res, quality, orbit = fields
    if glacier not in GLACIERS:
        raise ValueError(f"{stem!r}: unknown glacier {glacier!r}; expected one of {GLACIERS}")
    if not _DATE_RE.match(date):
        raise ValueError(f"{stem!r}: date {date!r} is not YYYY-MM-DD")
    try:
        month = datetime.date.fromisoformat(date).month
    except ValueError as e:
        raise ValueError(f"{stem!r}: invalid date {date!r} ({e})") from None
    if sensor not in SENSORS:
        raise ValueError(f"{stem!r}: unknown sensor {sensor!r}; expected one of {SENSORS}")
    if not res.isdigit() or int(res) not in RESOLUTIONS_M:
        raise ValueError(f"{stem!r}: resolution {res!r} not in {RESOLUTIONS_M} (metres)")
    if not quality.isdigit() or not 1 <= int(quality) <= 6:
        raise ValueError(f"{stem!r}: quality factor {quality!r} not in 1..6")
    if not orbit or not orbit.isalnum():
        raise ValueError(f"{stem!r}: orbit {orbit!r} must be a non-empty alphanumeric string")
    return CaffeName(
        stem=stem,
        glacier=glacier,
        date=date,
        sensor=sensor,
        resolution_m=int(res),
        quality_factor=int(quality),
        orbit=orbit,
        season=season_of(glacier, month),
    )


def format_stem(
    glacier: str, date: str, sensor: str, resolution_m: int, quality_factor: int, orbit: str
) -> str:
    """Inverse of `parse_stem` (validates the result)."""
    stem = f"{glacier}_{date}_{sensor}_{resolution_m}_{quality_factor}_{orbit}"
    parse_stem(stem)
    return stem


def split_indices(num_images: int, val_fraction: float = 0.1, seed: int = 1):
    """The official CaFFe train/val recipe (reference §1.6).

    ``sklearn.model_selection.train_test_split(np.arange(n), test_size=0.1, random_state=1)`` is
    ShuffleSplit: ``perm = RandomState(1).permutation(n)``, val = the first ``ceil(0.1 n)`` entries,
    train = the rest (both in permutation order). For n = 559 this gives 503 / 56.

    Args:
        num_images: number of images in ``sar_images/train`` (indices point into the sorted names).
        val_fraction: test_size of the recipe.
        seed: random_state of the recipe.

    Returns:
        ``(train_indices, val_indices)`` as int arrays, in permutation order.
    """
    if num_images < 2:
        raise ValueError(f"Need at least 2 training images to split, got {num_images}")
    n_val = math.ceil(val_fraction * num_images)
    perm = np.random.RandomState(seed).permutation(num_images)
    return perm[n_val:], perm[:n_val]


def zones_png_to_ids(zones_png: np.ndarray) -> np.ndarray:
    """Maps zone PNG grey values {0, 64, 127, 254} to class ids {0, 1, 2, 3}; others -> 255."""
    return _ZONE_VALUE_TO_ID[zones_png]


def read_gray_png(data: bytes, name: str) -> np.ndarray:
    """Decodes an 8-bit single-channel PNG fully (detects truncation) -> uint8 [H, W]."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            if im.mode not in ("L", "P", "1", "I;16", "RGB", "RGBA", "LA"):
                raise ValueError(f"unexpected PIL mode {im.mode!r}")
            return np.asarray(im.convert("L"))
    except Exception as e:  # PIL raises many different types for broken files.
        raise ValueError(f"{name}: cannot decode PNG ({type(e).__name__}: {e})") from None


def parse_bbox(text: str, name: str) -> np.ndarray:
    """Parses a bounding-box file (header line + 4 ``x,y`` lines) -> float32 [4, 2]."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) < 5:
        raise ValueError(f"{name}: expected a header and 4 'x,y' lines, got {len(lines)} lines")
    try:
        corners = [[float(v) for v in line.split(",")] for line in lines[1:5]]
        arr = np.asarray(corners, dtype=np.float32)
    except ValueError as e:
        raise ValueError(f"{name}: bad 'x,y' line ({e})") from None
    if arr.shape != (4, 2) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: expected 4 finite (x, y) pairs, got {arr.tolist()}")
    return arr


@dataclasses.dataclass(frozen=True)
class CaffeItem:
    """One validated CaFFe image: metadata, file paths and its bounding box.

    The pixel arrays are not kept (the real images reach 3561 x 4476 px); read them with
    `read_item_arrays`.
    """

    name: CaffeName
    split_folder: str  # "train" or "test"
    sar_path: Path
    zones_path: Path
    front_path: Path
    bbox: np.ndarray  # float32 [4, 2]
    shape: tuple[int, int]


def read_item_arrays(item: CaffeItem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decodes an item -> (sar uint8 [H, W], zones class ids uint8 [H, W], front uint8 {0,1})."""
    sar = read_gray_png(_read_bytes(item.sar_path), str(item.sar_path))
    zones = zones_png_to_ids(read_gray_png(_read_bytes(item.zones_path), str(item.zones_path)))
    front = read_gray_png(_read_bytes(item.front_path), str(item.front_path))
    return sar, zones, (front == FRONT_PNG_VALUE).astype(np.uint8)


def _read_bytes(path: Path) -> bytes:
    return path.read_bytes()


def scan_caffe_root(root: Path | str) -> dict[str, list[Path]]:
    """Lists the SAR PNGs of a CaFFe root per split folder and checks the folder layout.

    Args:
        root: the ``data_raw`` folder (or a folder that contains ``data_raw/``).

    Returns:
        ``{"train": [paths sorted by name], "test": [...]}``.

    Raises:
        CaffeDataError: listing every missing folder.
    """
    root = resolve_data_raw(root)
    problems = []
    for folder in ("sar_images", "zones", "fronts"):
        for split in SPLIT_FOLDERS:
            if not (root / folder / split).is_dir():
                problems.append(f"{root / folder / split}: missing folder")
    if not (root / "bounding_boxes").is_dir():
        problems.append(f"{root / 'bounding_boxes'}: missing folder")
    if problems:
        raise CaffeDataError(problems)
    # Plain code-point order, as both the CaFFe code and TYRION sort (uppercase before lowercase).
    return {
        split: sorted((root / "sar_images" / split).glob("*.png"), key=lambda p: p.name)
        for split in SPLIT_FOLDERS
    }


def resolve_data_raw(root: Path | str) -> Path:
    """Returns ``root`` if it is a ``data_raw`` tree, else ``root/data_raw`` if that exists."""
    root = Path(root)
    if (root / "sar_images").is_dir():
        return root
    if (root / "data_raw" / "sar_images").is_dir():
        return root / "data_raw"
    raise CaffeDataError([f"{root}: no 'sar_images/' or 'data_raw/sar_images/' folder found"])


def validate_caffe_root(
    root: Path | str,
    *,
    expected_split_counts: dict[str, int] | None = None,
    expected_glacier_counts: dict[str, int] | None = None,
) -> dict[str, list[CaffeItem]]:
    """Decodes and validates every image of a CaFFe root; collects ALL problems before raising.

    Checks: file-name grammar, glacier membership of the split folder, presence of the zones,
    front and bounding-box files, PNG decodability, equal shapes, zone values in
    {0, 64, 127, 254}, front values in {0, 255}, and optionally the split / per-glacier counts.

    Args:
        root: ``data_raw`` folder (or its parent).
        expected_split_counts: e.g. ``{"train": 559, "test": 122}``; None skips the check.
        expected_glacier_counts: e.g. `CAFFE_GLACIER_COUNTS`; None skips the check.

    Returns:
        ``{"train": [CaffeItem sorted by stem], "test": [...]}``.

    Raises:
        CaffeDataError: with one line per offending file.
    """
    root = resolve_data_raw(root)
    files = scan_caffe_root(root)
    problems: list[str] = []
    items: dict[str, list[CaffeItem]] = {split: [] for split in SPLIT_FOLDERS}
    bbox_dir = root / "bounding_boxes"
    for split, sar_paths in files.items():
        for sar_path in sar_paths:
            stem = sar_path.name[: -len(".png")]
            try:
                name = parse_stem(stem)
            except ValueError as e:
                problems.append(f"{sar_path}: bad file name: {e}")
                continue
            allowed = TRAIN_GLACIERS if split == "train" else TEST_GLACIERS
            if name.glacier not in allowed:
                problems.append(f"{sar_path}: glacier {name.glacier} does not belong in '{split}'")
            zones_path = root / "zones" / split / (stem + ZONES_SUFFIX)
            front_path = root / "fronts" / split / (stem + FRONT_SUFFIX)
            bbox_path = bbox_dir / (stem + BBOX_SUFFIX)
            arrays = {}
            for key, path in (("sar", sar_path), ("zones", zones_path), ("front", front_path)):
                if not path.is_file():
                    problems.append(f"{path}: missing {key} file for {stem}")
                    continue
                try:
                    arrays[key] = read_gray_png(_read_bytes(path), str(path))
                except ValueError as e:
                    problems.append(str(e))
            bbox = None
            if not bbox_path.is_file():
                problems.append(f"{bbox_path}: missing bounding-box file for {stem}")
            else:
                try:
                    bbox = parse_bbox(bbox_path.read_text(), str(bbox_path))
                except (ValueError, UnicodeDecodeError) as e:
                    problems.append(str(e))
            if len(arrays) != 3 or bbox is None:
                continue
            shapes = {k: v.shape for k, v in arrays.items()}
            if len(set(shapes.values())) != 1:
                problems.append(f"{sar_path}: shapes differ between sar/zones/front: {shapes}")
                continue
            bad_zones = sorted(set(np.unique(arrays["zones"]).tolist()) - set(ZONE_PNG_VALUES))
            if bad_zones:
                problems.append(
                    f"{zones_path}: zone values {bad_zones} not in {list(ZONE_PNG_VALUES)}"
                )
                continue
            bad_front = sorted(set(np.unique(arrays["front"]).tolist()) - {0, FRONT_PNG_VALUE})
            if bad_front:
                problems.append(f"{front_path}: front values {bad_front} not in [0, 255]")
                continue
            items[split].append(
                CaffeItem(
                    name=name,
                    split_folder=split,
                    sar_path=sar_path,
                    zones_path=zones_path,
                    front_path=front_path,
                    bbox=bbox,
                    shape=arrays["sar"].shape,
                )
            )
    problems.extend(_orphan_problems(root, files))
    if expected_split_counts is not None:
        for split, expected in expected_split_counts.items():
            found = len(files.get(split, []))
            if found != expected:
                problems.append(
                    f"{root / 'sar_images' / split}: expected {expected} images, found {found}"
                )
    if expected_glacier_counts is not None:
        found_counts = _count_glaciers(p.name for ps in files.values() for p in ps)
        for glacier, expected in expected_glacier_counts.items():
            if found_counts.get(glacier, 0) != expected:
                problems.append(
                    f"{root / 'sar_images'}: expected {expected} {glacier} images, "
                    f"found {found_counts.get(glacier, 0)}"
                )
    if problems:
        if any("expected" in p and "found" in p for p in problems):
            problems.append(
                "(the expected counts are the published CaFFe numbers; to build a subset use "
                "CaffeConfig(name='subset', check_counts=False))"
            )
        raise CaffeDataError(problems)
    return items


def _count_glaciers(names: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in names:
        g = n.split("_")[0]
        counts[g] = counts.get(g, 0) + 1
    return counts


def _orphan_problems(root: Path, files: dict[str, list[Path]]) -> list[str]:
    """Label files without a SAR image usually mean a renamed or missing SAR file."""
    problems = []
    for split, sar_paths in files.items():
        stems = {p.name[:-4] for p in sar_paths}
        for folder, suffix in (("zones", ZONES_SUFFIX), ("fronts", FRONT_SUFFIX)):
            for path in sorted((root / folder / split).glob("*.png")):
                if not path.name.endswith(suffix):
                    problems.append(f"{path}: name does not end with {suffix!r}")
                elif path.name[: -len(suffix)] not in stems:
                    problems.append(f"{path}: no matching SAR image in sar_images/{split}")
    return problems
