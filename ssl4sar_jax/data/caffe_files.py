"""CaFFe raw-data files: file-name grammar, split recipe and a validating scanner.

The TFDS ``caffe`` builder (``ssl4sar_jax/builders/caffe``) and the synthetic generator share this
module, so the synthetic data goes through exactly the parsing path used for the real ``data_raw/``
tree (layout and names of the CaFFe archive, PANGAEA 940950; Gourmelon et al., ESSD 2022).

Layout of a CaFFe root::

    data_raw/
      sar_images/{train,test}/<stem>.png
      zones/{train,test}/<stem>_zones.png
      fronts/{train,test}/<stem>_front.png
      bounding_boxes/<stem>_front_extent_coord.txt

Stem grammar: ``<Glacier>_<YYYY-MM-DD>_<Sensor>_<Res>_<Quality>_<Orbit>``. `parse_stem` reads what
a name carries for any glacier and sensor (own data); `caffe_name_problems` is the check of the
official CaFFe archive (its seven glaciers, seven sensors and five pixel spacings), applied by the
``caffe`` builder's ``full`` and ``synthetic`` configs only.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ssl4sar_jax.constants import (
    FRONT_PNG_VALUE,
    GLACIERS,
    RESOLUTIONS_M,
    SENSORS,
    STEM_FIELDS,
    TEST_GLACIERS,
    TRAIN_GLACIERS,
    ZONE_PNG_VALUES,
    season_of,
)

# Real per-glacier, per-sensor image counts of the CaFFe archive (totals: 559 train / 122 test).
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
# Sorted validation indices of the official split over the 559 training names; used by the tests.
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


class DataFilesError(ValueError):
    """Raised when raw input files are invalid; the message lists every offending file once.

    Attributes:
        problems: one line per problem.
        hint: the one suggestion that fits the case (or None).
    """

    what = "input files"

    def __init__(self, problems: Sequence[str], hint: str | None = None):
        self.problems = list(problems)
        self.hint = hint
        shown = "\n  ".join(self.problems)
        message = f"{len(self.problems)} problem(s) in the {self.what}:\n  {shown}"
        super().__init__(message + (f"\n{hint}" if hint else ""))

    def with_hint(self, hint: str | None) -> DataFilesError:
        """The same problems with another hint."""
        return type(self)(self.problems, hint)

    def __reduce__(self):  # picklable with both arguments
        return type(self), (self.problems, self.hint)


class CaffeDataError(DataFilesError):
    """Raised when raw CaFFe files are invalid (see `DataFilesError`)."""

    what = "CaFFe input files"


def describe_folder(path: Path, limit: int = 10) -> str:
    """``"a/, b.zip, ... (N entries)"`` or ``"nothing (empty folder)"``, for error messages."""
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    more = f" ... ({len(entries)} entries)" if len(entries) > limit else ""
    return ", ".join(entries[:limit]) + more if entries else "nothing (empty folder)"


@dataclasses.dataclass(frozen=True)
class CaffeName:
    """Metadata parsed from a CaFFe-style file stem.

    Attributes:
        stem: full stem, e.g. ``COL_2015-12-18_S1_20_1_094``.
        glacier: glacier token (CaFFe: ``COL``, ``Mapple``, ``Crane``, ``DBE``, ``JAC``, ``Jorum``,
            ``SI``; own data: any token).
        date: acquisition date ``YYYY-MM-DD``.
        sensor: sensor token (CaFFe: ``RSAT``, ``S1``, ``ENVISAT``, ``ERS``, ``PALSAR``, ``TSX``,
            ``TDX``; own data: any token).
        resolution_m: pixel spacing in metres written in the name (nominal: an image resampled
            after naming has another spacing, see `pixel_spacing_table`).
        quality_factor: 1 (best) .. 6 (worst).
        orbit: orbit string (kept as text, leading zeros matter).
        season: ``"winter"``, ``"summer"`` (CaFFe hemisphere rule) or ``"unknown"`` (a glacier
            whose hemisphere is not known).
    """

    stem: str
    glacier: str
    date: str
    sensor: str
    resolution_m: int
    quality_factor: int
    orbit: str
    season: str


def parse_stem(stem: str, hemispheres: Mapping[str, str] | None = None) -> CaffeName:
    """Parses a SAR image stem ``<Glacier>_<YYYY-MM-DD>_<Sensor>_<Res>_<Quality>_<Orbit>``.

    Reads what the name carries for any glacier and sensor token; the check against the CaFFe
    archive's names is `caffe_name_problems` (or `parse_caffe_stem`).

    Args:
        stem: file name without ``.png`` (and without a ``_zones``/``_front`` suffix).
        hemispheres: ``{glacier: "north" | "south"}`` for glaciers outside CaFFe (season rule);
            others get season ``"unknown"``.

    Returns:
        The parsed `CaffeName`.

    Raises:
        ValueError: naming the stem and the broken field.
    """
    fields = stem.split("_")
    if len(fields) != len(STEM_FIELDS):
        raise ValueError(
            f"{stem!r}: expected 6 '_'-separated fields "
            f"<Glacier>_<YYYY-MM-DD>_<Sensor>_<Res>_<Quality>_<Orbit>, got {len(fields)}"
        )
    glacier, date, sensor, res, quality, orbit = fields
    if not glacier or not glacier.replace("-", "").isalnum():
        raise ValueError(f"{stem!r}: glacier {glacier!r} must be a non-empty alphanumeric token")
    if not _DATE_RE.match(date):
        raise ValueError(f"{stem!r}: date {date!r} is not YYYY-MM-DD")
    try:
        month = datetime.date.fromisoformat(date).month
    except ValueError as e:
        raise ValueError(f"{stem!r}: invalid date {date!r} ({e})") from None
    if not sensor or not sensor.replace("-", "").isalnum():
        raise ValueError(f"{stem!r}: sensor {sensor!r} must be a non-empty alphanumeric token")
    if not res.isdigit() or int(res) <= 0:
        raise ValueError(f"{stem!r}: resolution {res!r} must be a positive whole number of metres")
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
        season=season_of(glacier, month, (hemispheres or {}).get(glacier)),
    )


def caffe_name_problems(name: CaffeName) -> list[str]:
    """What in a parsed name is not one of the CaFFe archive's glaciers, sensors or spacings."""
    stem = name.stem
    problems = []
    if name.glacier not in GLACIERS:
        problems.append(f"{stem!r}: unknown glacier {name.glacier!r}; expected one of {GLACIERS}")
    if name.sensor not in SENSORS:
        problems.append(f"{stem!r}: unknown sensor {name.sensor!r}; expected one of {SENSORS}")
    if name.resolution_m not in RESOLUTIONS_M:
        problems.append(f"{stem!r}: resolution {name.resolution_m} not in {RESOLUTIONS_M} (metres)")
    return problems


def parse_caffe_stem(stem: str) -> CaffeName:
    """`parse_stem` plus the check that glacier, sensor and spacing are CaFFe's.

    Raises:
        ValueError: naming the stem and the broken field.
    """
    name = parse_stem(stem)
    problems = caffe_name_problems(name)
    if problems:
        raise ValueError("; ".join(problems))
    return name


def format_stem(
    glacier: str, date: str, sensor: str, resolution_m: int, quality_factor: int, orbit: str
) -> str:
    """Inverse of `parse_stem` (validates the result)."""
    stem = f"{glacier}_{date}_{sensor}_{resolution_m}_{quality_factor}_{orbit}"
    parse_stem(stem)
    return stem


def parse_hemispheres(northern: Iterable[str] = (), southern: Iterable[str] = ()) -> dict:
    """``{glacier: "north" | "south"}`` from two name lists (a glacier may be in only one)."""
    out = {g: "north" for g in northern}
    both = sorted(set(out) & set(southern))
    if both:
        raise ValueError(f"glaciers {both} are listed as both northern and southern")
    out.update({g: "south" for g in southern})
    return out


def pixel_spacing_table(spec: str | float | None) -> float | dict[str, float] | None:
    """Reads a pixel-spacing override: a number (metres, every image) or a CSV file.

    The CSV has two columns, a key and the spacing in metres (a header line is allowed); the key
    is an image stem or a glacier token (a stem's entry wins over its glacier's), e.g.::

        stem,pixel_spacing_m
        Helheim,30
        SI_2011-06-14_TSX_7_1_125,55.2

    Args:
        spec: ``None``/``""`` (the file name's spacing), a positive number, or a CSV path.

    Returns:
        None, a float, or ``{key: metres}``.

    Raises:
        ValueError: naming the file and line for unreadable or non-positive entries.
    """
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return None
    if isinstance(spec, int | float):
        value = float(spec)
    else:
        try:
            value = float(spec)
        except ValueError:
            return _read_spacing_csv(Path(spec).expanduser())
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"pixel spacing must be a positive number of metres, got {spec!r}")
    return value


def _read_spacing_csv(path: Path) -> dict[str, float]:
    import csv

    if not path.is_file():
        raise ValueError(
            f"pixel spacing {str(path)!r} is neither a number nor an existing CSV file"
        )
    table: dict[str, float] = {}
    with path.open(newline="") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            row = [cell.strip() for cell in row]
            if not row or not any(row) or row[0].startswith("#"):
                continue
            if len(row) != 2:
                raise ValueError(f"{path}:{line_no}: expected 2 columns (key, metres), got {row}")
            try:
                value = float(row[1])
            except ValueError:
                if line_no == 1:  # header
                    continue
                raise ValueError(f"{path}:{line_no}: {row[1]!r} is not a number") from None
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"{path}:{line_no}: spacing must be positive, got {row[1]!r}")
            if row[0] in table:
                raise ValueError(f"{path}:{line_no}: {row[0]!r} appears twice")
            table[row[0]] = value
    if not table:
        raise ValueError(f"{path}: no (key, metres) rows")
    return table


def pixel_spacing_of(name: CaffeName, table: float | Mapping[str, float] | None) -> float | None:
    """The spacing of one image: the stem's entry, its glacier's, the number, or the name's.

    Returns None when a CSV table covers neither the stem nor its glacier.
    """
    if table is None:
        return float(name.resolution_m)
    if isinstance(table, int | float):
        return float(table)
    if name.stem in table:
        return float(table[name.stem])
    if name.glacier in table:
        return float(table[name.glacier])
    return None


def split_indices(num_images: int, val_fraction: float = 0.1, seed: int = 1):
    """The official CaFFe train/val recipe (CaFFe repository, data preparation of the benchmark).

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


SAR_CONVERSIONS = ("none", "gray8")


def read_gray_png(data: bytes, name: str, conversion: str | None = None) -> np.ndarray:
    """Decodes an 8-bit single-channel PNG fully (detects truncation) -> uint8 [H, W].

    Args:
        data: PNG bytes.
        name: file name for the messages.
        conversion: None (labels: any mode is converted to 8-bit grey, the value checks then
            catch nonsense); ``"none"`` (SAR: only 8-bit grey, ``L`` or a grey palette, is
            accepted, anything else is refused naming the file); ``"gray8"`` (SAR: RGB/RGBA/LA
            become their ITU-R 601 luma, as Pillow's ``convert("L")``; 16-bit grey is mapped
            linearly onto 0..255 as ``round(v / 257)``).

    Raises:
        ValueError: naming the file.
    """
    if conversion not in (None, *SAR_CONVERSIONS):
        raise ValueError(f"sar conversion must be one of {SAR_CONVERSIONS}, got {conversion!r}")
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode = im.mode
            if conversion is not None:
                if mode == "P" and _grey_palette(im):
                    return np.asarray(im.convert("L"))
                if mode != "L" and conversion == "none":
                    raise _SarModeError(mode)
                if mode.startswith("I;16") or mode == "I":
                    values = np.asarray(im, dtype=np.float64)
                    if values.min() < 0 or values.max() > 65535:
                        raise ValueError(f"{mode} values outside 0..65535")
                    return np.round(values / 257.0).astype(np.uint8)
                if mode not in ("L", "RGB", "RGBA", "LA", "P"):
                    raise ValueError(f"unexpected PIL mode {mode!r}")
                return np.asarray(im.convert("L"))
            if mode not in ("L", "P", "1", "I;16", "RGB", "RGBA", "LA"):
                raise ValueError(f"unexpected PIL mode {mode!r}")
            return np.asarray(im.convert("L"))
    except _SarModeError as e:
        raise ValueError(
            f"{name}: SAR image is {_describe_mode(e.mode)} (PIL mode {e.mode!r}), expected "
            "8-bit single-channel grey; convert it, or prepare with sar_conversion='gray8' "
            "(--config.data.sar_conversion=gray8: luma of RGB, 16-bit scaled by 1/257)"
        ) from None
    except Exception as e:  # PIL raises many different types for broken files.
        raise ValueError(f"{name}: cannot decode PNG ({type(e).__name__}: {e})") from None


class _SarModeError(Exception):
    def __init__(self, mode: str):
        self.mode = mode


def _describe_mode(mode: str) -> str:
    if mode.startswith("I;16") or mode == "I":
        return "16-bit" if mode.startswith("I;16") else "32-bit integer"
    return {"RGB": "RGB", "RGBA": "RGBA", "LA": "grey + alpha", "P": "a colour palette"}.get(
        mode, f"mode {mode}"
    )


def _grey_palette(im: Image.Image) -> bool:
    palette = np.asarray(im.getpalette() or [], dtype=np.int64).reshape(-1, 3)
    return palette.size > 0 and bool(np.all(palette == palette[:, :1]))


def parse_bbox(text: str, name: str) -> np.ndarray:
    """Parses a bounding-box file (header line + 4 ``x,y`` lines) -> float64 [4, 2].

    float64 from the text to the rounding in post-processing: a float32 corner within half a
    float32 step of ``.5`` would round the other way (e.g. 1001.49999 -> 1001.5 -> 1002).
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) < 5:
        raise ValueError(f"{name}: expected a header and 4 'x,y' lines, got {len(lines)} lines")
    try:
        corners = [[float(v) for v in line.split(",")] for line in lines[1:5]]
        arr = np.asarray(corners, dtype=np.float64)
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
    split_folder: str  # "train" or "test" (the folder the files are in)
    sar_path: Path
    zones_path: Path
    front_path: Path
    bbox: np.ndarray  # float64 [4, 2]
    shape: tuple[int, int]
    pixel_spacing_m: float = 0.0  # effective spacing (0 = the name's resolution_m)
    sar_conversion: str = "none"

    @property
    def spacing_m(self) -> float:
        return self.pixel_spacing_m or float(self.name.resolution_m)


def read_item_arrays(item: CaffeItem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decodes an item -> (sar uint8 [H, W], zones class ids uint8 [H, W], front uint8 {0,1})."""
    sar = read_gray_png(_read_bytes(item.sar_path), str(item.sar_path), item.sar_conversion)
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


ARCHIVE_NAME = "data_raw.zip"


def locate_manual_dir(manual_dir: Path | str) -> tuple[str, Path]:
    """What a manual_dir holds: an extracted CaFFe tree or the ``data_raw.zip`` archive.

    Accepted: the ``data_raw`` folder itself (it has ``sar_images/``), a folder holding
    ``data_raw/`` or ``data_raw.zip``.

    Returns:
        ``("folder", data_raw path)`` or ``("zip", archive path)``.

    Raises:
        FileNotFoundError: when ``manual_dir`` does not exist.
        CaffeDataError: saying what was found and what was expected (never falls back to a
            download).
    """
    path = Path(manual_dir).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"manual_dir {path} does not exist; expected a folder holding '{ARCHIVE_NAME}' or "
            "the extracted 'data_raw/' (--config.data.manual_dir, docs/data.md)"
        )
    if path.is_file():
        if path.suffix == ".zip":
            return "zip", path
        raise CaffeDataError([f"manual_dir {path}: is a file, expected a folder or a .zip"])
    for candidate in (path, path / "data_raw"):
        if (candidate / "sar_images").is_dir():
            return "folder", candidate
    if (path / ARCHIVE_NAME).is_file():
        return "zip", path / ARCHIVE_NAME
    raise CaffeDataError(
        [
            f"manual_dir {path}: found {describe_folder(path)}; expected "
            f"'{ARCHIVE_NAME}', a 'data_raw/' folder, or the data_raw folder itself "
            "(with sar_images/, zones/, fronts/, bounding_boxes/)"
        ]
    )


def extract_zip(archive: Path | str, out_root: Path | str) -> Path:
    """Extracts a zip archive with `zipfile` (no TensorFlow), atomically, once.

    The archive is unpacked into a temporary folder next to the destination and renamed, so an
    interrupted extraction leaves no half-filled tree; a second call reuses the result. The
    destination is keyed on the archive's name, size and modification time.

    Returns:
        The extracted CaFFe ``data_raw`` folder.

    Raises:
        CaffeDataError: for a corrupt archive or member paths outside the destination.
    """
    import shutil
    import tempfile
    import zipfile

    archive = Path(archive)
    stat = archive.stat()
    out_root = Path(out_root)
    dest = out_root / f"{archive.stem}_{stat.st_size}_{stat.st_mtime_ns}"
    if not dest.is_dir():
        out_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{archive.stem}_tmp_", dir=out_root))
        try:
            with zipfile.ZipFile(archive) as zf:
                bad = zf.testzip()
                if bad is not None:
                    raise CaffeDataError([f"{archive}: corrupt member {bad!r}"])
                for member in zf.namelist():
                    target = (tmp / member).resolve()
                    if not target.is_relative_to(tmp.resolve()):
                        raise CaffeDataError([f"{archive}: member {member!r} leaves the folder"])
                zf.extractall(tmp)
            try:
                os.replace(tmp, dest)
            except OSError:  # another process finished first
                if not dest.is_dir():
                    raise
        except zipfile.BadZipFile as e:
            raise CaffeDataError([f"{archive}: not a readable zip archive ({e})"]) from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return resolve_data_raw(dest)


def folder_fingerprint(path: Path | str) -> list:
    """Names, sizes and mtimes of the files under ``path`` (or of ``path`` itself), sorted.

    Keys a prepared dataset on the folder's content, so a changed folder is prepared again.
    """
    path = Path(path)
    if path.is_file():
        stat = path.stat()
        return [[path.name, stat.st_size, stat.st_mtime_ns]]
    rows = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        rel = os.path.relpath(dirpath, path)
        for filename in sorted(filenames):
            stat = os.stat(os.path.join(dirpath, filename))
            rows.append([os.path.join(rel, filename), stat.st_size, stat.st_mtime_ns])
    return rows


def validate_caffe_root(
    root: Path | str,
    *,
    expected_split_counts: dict[str, int] | None = None,
    expected_glacier_counts: dict[str, int] | None = None,
    caffe_names: bool = True,
    test_glaciers: Sequence[str] = (),
    pixel_spacing: float | Mapping[str, float] | None = None,
    hemispheres: Mapping[str, str] | None = None,
    sar_conversion: str = "none",
) -> dict[str, list[CaffeItem]]:
    """Decodes and validates every image of a CaFFe root; collects ALL problems before raising.

    Checks: file-name grammar, presence of the zones, front and bounding-box files, PNG
    decodability (SAR: 8-bit grey unless ``sar_conversion``), equal shapes, zone values in
    {0, 64, 127, 254}, front values in {0, 255}; with ``caffe_names`` also that glacier, sensor
    and spacing are CaFFe's and that each glacier is in its CaFFe split folder; optionally the
    split / per-glacier counts.

    Args:
        root: ``data_raw`` folder (or its parent).
        expected_split_counts: e.g. ``{"train": 559, "test": 122}``; None skips the check.
        expected_glacier_counts: e.g. `CAFFE_GLACIER_COUNTS`; None skips the check.
        caffe_names: require the CaFFe archive's names (official configs); False accepts any
            glacier and sensor token (own data; the unknown ones are logged once).
        test_glaciers: glaciers whose images are moved from ``train/`` to the returned ``test``
            list (a held-out glacier); each must occur in ``train/``.
        pixel_spacing: override of the name's spacing (see `pixel_spacing_table`).
        hemispheres: ``{glacier: "north" | "south"}`` for the season of non-CaFFe glaciers.
        sar_conversion: ``"none"`` or ``"gray8"`` (see `read_gray_png`).

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
    unknown: dict[str, set[str]] = {"glacier": set(), "sensor": set()}
    no_spacing: list[str] = []
    for split, sar_paths in files.items():
        for sar_path in sar_paths:
            stem = sar_path.name[: -len(".png")]
            try:
                name = parse_stem(stem, hemispheres)
            except ValueError as e:
                problems.append(f"{sar_path}: bad file name: {e}")
                continue
            if caffe_names:
                name_problems = caffe_name_problems(name)
                if name_problems:
                    problems.extend(f"{sar_path}: bad file name: {p}" for p in name_problems)
                    continue
                allowed = TRAIN_GLACIERS if split == "train" else TEST_GLACIERS
                if name.glacier not in allowed:
                    problems.append(
                        f"{sar_path}: glacier {name.glacier} does not belong in '{split}'"
                    )
            else:
                if name.glacier not in GLACIERS:
                    unknown["glacier"].add(name.glacier)
                if name.sensor not in SENSORS:
                    unknown["sensor"].add(name.sensor)
            spacing = pixel_spacing_of(name, pixel_spacing)
            if spacing is None:
                no_spacing.append(stem)
                continue
            zones_path = root / "zones" / split / (stem + ZONES_SUFFIX)
            front_path = root / "fronts" / split / (stem + FRONT_SUFFIX)
            bbox_path = bbox_dir / (stem + BBOX_SUFFIX)
            arrays = {}
            for key, path in (("sar", sar_path), ("zones", zones_path), ("front", front_path)):
                if not path.is_file():
                    problems.append(f"{path}: missing {key} file for {stem}")
                    continue
                try:
                    conversion = sar_conversion if key == "sar" else None
                    arrays[key] = read_gray_png(_read_bytes(path), str(path), conversion)
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
            target = "test" if split == "train" and name.glacier in test_glaciers else split
            items[target].append(
                CaffeItem(
                    name=name,
                    split_folder=split,
                    sar_path=sar_path,
                    zones_path=zones_path,
                    front_path=front_path,
                    bbox=bbox,
                    shape=arrays["sar"].shape,
                    pixel_spacing_m=spacing,
                    sar_conversion=sar_conversion,
                )
            )
    if no_spacing:
        shown = ", ".join(no_spacing[:5]) + (" ..." if len(no_spacing) > 5 else "")
        problems.append(
            f"the pixel-spacing table has no entry for {len(no_spacing)} image(s) (neither the "
            f"stem nor its glacier): {shown}"
        )
    train_glaciers = {p.name.split("_")[0] for p in files["train"]}
    missing_held_out = sorted(set(test_glaciers) - train_glaciers)
    if missing_held_out:
        problems.append(
            f"{root / 'sar_images' / 'train'}: test_glaciers {missing_held_out} have no images "
            f"there (glaciers found: {sorted(train_glaciers)})"
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
        raise CaffeDataError(problems)
    for kind, names in unknown.items():
        if names:
            logging.getLogger(__name__).warning(
                "%s: %s name(s) %s are not CaFFe's; kept as metadata (breakdowns by name)%s",
                root,
                kind,
                sorted(names),
                ""
                if kind == "sensor" or not (names - set(hemispheres or {}))
                else "; their season is 'unknown' unless listed in northern/southern_glaciers",
            )
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
