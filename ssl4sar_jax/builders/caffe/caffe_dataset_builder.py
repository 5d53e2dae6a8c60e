"""TFDS builder ``caffe``: CaFFe full images (PANGAEA 940950), your own CaFFe-layout folder, and
an offline synthetic variant.

Configs:
    * ``full``: the real ``data_raw.zip``. With a manual_dir it is taken from there (the zip, an
      extracted ``data_raw/`` or the data_raw folder itself) and a manual_dir holding none of
      these is an error; without one the archive is downloaded. Checks the archive's 559 / 122
      images, the per-glacier counts and that every name is one of CaFFe's glaciers, sensors and
      spacings.
    * ``folder-<key>`` (made by `folder_config`, CLI ``--config.data.config=folder``): any folder
      in the CaFFe layout. No counts, any glacier and sensor token, splits from the folder
      (``train/``, ``test/``), optional held-out glaciers moved from train to test, validation by
      the official recipe or by glacier, a pixel-spacing override. The key is a hash of the
      folder path, its content listing and the options, so another folder or other options never
      reuse a prepared dataset.
    * ``synthetic``: a small CaFFe-like tree generated from a seed by
      ``ssl4sar_jax.data.synthetic`` and written to ``<data_dir>/downloads/`` in the real layout,
      so the real parsing path runs.

Splits: ``train`` / ``validation`` = the official ``RandomState(1).permutation(n)`` recipe over
the sorted training names (503 / 56 on real data), ``test`` = ``sar_images/test`` (plus held-out
glaciers). Use ``split="train+validation"`` for all training images.

File formats: prepared as ArrayRecord (``tfds.data_source`` and grain, no TensorFlow).
``tfds.load`` / ``as_dataset`` need TFRecord: the first call converts the prepared dataset with
TFDS's own format conversion and records it as an alternative format, so both entry points work
on the same ``data_dir`` in either order (the same holds the other way round for a dataset
prepared with ``file_format="tfrecord"``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from ssl4sar_jax import io_utils
from ssl4sar_jax.data import caffe_files
from ssl4sar_jax.data.synthetic_specs import SPACING_TABLE, SyntheticCaffeSpec

_URL = "https://download.pangaea.de/dataset/940950/files/data_raw.zip"
_HOMEPAGE = "https://doi.pangaea.de/10.1594/PANGAEA.940950"

_DESCRIPTION = """
CaFFe (Calving Fronts and where to Find thEm): 681 SAR images of seven marine-terminating glaciers
(Gourmelon et al., ESSD 2022) with zone masks (NA, rock, glacier, ocean+melange), 1-pixel calving
fronts and front bounding boxes. One example per full image; metadata parsed from the file name.
"""


@dataclasses.dataclass(eq=False)
class CaffeConfig(tfds.core.BuilderConfig):
    """Builder config.

    Attributes:
        synthetic: generate offline data with this spec; None -> real files.
        check_counts: for the CaFFe archive, require 559/122 images and the per-glacier counts
            (off for a subset of the archive with CaFFe names, e.g. the builder test over
            ``dummy_data/``; for any other folder use `folder_config`).
        root: own data (`folder_config`): the folder (a data_raw tree, a folder holding one, or
            ``data_raw.zip``); "" = the official archive / manual_dir.
        test_glaciers: own data: glaciers moved from ``train/`` to the test split.
        val_glaciers: own data: glaciers of ``train/`` that form the validation split (empty =
            the official random recipe).
        pixel_spacing: own data: a number (metres) or a CSV path (see
            ``caffe_files.pixel_spacing_table``); "" = the file name's spacing.
        hemispheres: own data: ``(("Helheim", "north"), ...)`` for the season rule.
        sar_conversion: ``"none"`` (refuse SAR that is not 8-bit grey) or ``"gray8"``.
    """

    synthetic: SyntheticCaffeSpec | None = None
    check_counts: bool = True
    root: str = ""
    test_glaciers: tuple[str, ...] = ()
    val_glaciers: tuple[str, ...] = ()
    pixel_spacing: str = ""
    hemispheres: tuple[tuple[str, str], ...] = ()
    sar_conversion: str = "none"

    @property
    def own_data(self) -> bool:
        return bool(self.root)


def folder_config(
    root: str | os.PathLike,
    *,
    test_glaciers: tuple[str, ...] = (),
    val_glaciers: tuple[str, ...] = (),
    pixel_spacing: str | float = "",
    hemispheres: dict[str, str] | None = None,
    sar_conversion: str = "none",
) -> CaffeConfig:
    """The config for a CaFFe-layout folder of your own (see the module docstring).

    Args:
        root: the folder: a ``data_raw`` tree, a folder holding ``data_raw/`` or
            ``data_raw.zip``, or the zip itself.
        test_glaciers: glaciers held out (moved from ``train/`` to ``test``).
        val_glaciers: glaciers forming the validation split (default: official random recipe).
        pixel_spacing: number of metres or CSV of key -> metres ("" = the file name's).
        hemispheres: ``{glacier: "north" | "south"}`` for non-CaFFe glaciers (season rule).
        sar_conversion: ``"none"`` or ``"gray8"``.

    Returns:
        A config named ``folder-<12 hex digits>`` keyed on the folder, its content and the
        options.

    Raises:
        CaffeDataError: when the folder holds no CaFFe data (says what was found).
    """
    kind, located = caffe_files.locate_manual_dir(root)
    test_glaciers = tuple(sorted(set(test_glaciers)))
    val_glaciers = tuple(sorted(set(val_glaciers)))
    overlap = sorted(set(test_glaciers) & set(val_glaciers))
    if overlap:
        raise ValueError(f"glaciers {overlap} are in both test_glaciers and val_glaciers")
    if sar_conversion not in caffe_files.SAR_CONVERSIONS:
        raise ValueError(
            f"sar_conversion must be one of {caffe_files.SAR_CONVERSIONS}, got {sar_conversion!r}"
        )
    spacing = str(pixel_spacing).strip()
    table = caffe_files.pixel_spacing_table(spacing)  # validates early, naming the file
    if isinstance(table, dict):
        spacing = str(Path(spacing).expanduser().resolve())
    hemis = tuple(sorted((hemispheres or {}).items()))
    key = {
        "root": str(located.resolve()),
        "kind": kind,
        "content": caffe_files.folder_fingerprint(located),
        "test_glaciers": test_glaciers,
        "val_glaciers": val_glaciers,
        "pixel_spacing": spacing,
        "pixel_spacing_table": table if isinstance(table, dict) else None,
        "hemispheres": hemis,
        "sar_conversion": sar_conversion,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return CaffeConfig(
        name=f"folder-{digest}",
        description=(
            f"Own CaFFe-layout data from {located} (test_glaciers={list(test_glaciers)}, "
            f"val_glaciers={list(val_glaciers)}, pixel_spacing={spacing or 'file name'})."
        ),
        check_counts=False,
        root=str(located.resolve()),
        test_glaciers=test_glaciers,
        val_glaciers=val_glaciers,
        pixel_spacing=spacing,
        hemispheres=hemis,
        sar_conversion=sar_conversion,
    )


def _raw_records(path: str, file_format):
    """The serialized examples of one shard, in order."""
    if file_format == tfds.core.FileFormat.ARRAY_RECORD:
        from array_record.python import array_record_data_source

        source = array_record_data_source.ArrayRecordDataSource([path])
        for index in range(len(source)):
            yield source[index]
    elif file_format == tfds.core.FileFormat.TFRECORD:
        import tensorflow as tf

        yield from tf.data.TFRecordDataset(path).as_numpy_iterator()
    else:
        raise ValueError(f"cannot convert {file_format} shards ({path})")


def png_bytes(array: np.ndarray) -> bytes:
    """Encodes a uint8 [H, W] array as a grayscale PNG (no TensorFlow needed)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), mode="L").save(buf, "PNG")
    return buf.getvalue()


class FormatConvertingBuilder(tfds.core.GeneratorBasedBuilder):
    """A builder whose prepared data serves both ``tfds.data_source`` and ``tfds.load``.

    Prepared as ArrayRecord by default (no TensorFlow needed). The first ``as_dataset`` call
    (``tfds.load``) on ArrayRecord data converts it to TFRecord with TFDS's format conversion and
    records TFRecord as an alternative format of the dataset; the first ``as_data_source`` call
    on TFRecord data does the converse. Later calls read the converted files directly.
    """

    def __init__(self, *, file_format: str | None = None, **kwargs):
        super().__init__(file_format=file_format, **kwargs)
        # ArrayRecord by default: it is written and read without TensorFlow. A dataset already
        # prepared on disk keeps its own format.
        if file_format is None and not self.is_prepared():
            self.info.set_file_format("array_record", override=True)

    def download_and_prepare(self, *, download_dir=None, download_config=None, **kwargs):
        # Remember whether the caller named a manual_dir: then it is used or the build fails,
        # never a download.
        self._explicit_manual_dir = getattr(download_config, "manual_dir", None)
        return super().download_and_prepare(
            download_dir=download_dir, download_config=download_config, **kwargs
        )

    def _shards(self, file_format) -> list[str]:
        """Shard paths of every split in ``file_format`` (whether or not they exist)."""
        suffix = f".{self.info.file_format.file_suffix}-"
        wanted = f".{file_format.file_suffix}-"
        paths = []
        for split_info in self.info.splits.values():
            for path in split_info.filepaths:
                folder, name = os.path.split(os.fspath(path))
                paths.append(os.path.join(folder, name.replace(suffix, wanted)))
        return paths

    def _ensure_format(self, wanted: str) -> None:
        """Makes the prepared dataset readable in format ``wanted`` (converts it once).

        The shards are copied record by record (both formats hold the same serialized
        examples), each written to a temporary name and renamed; ``dataset_info.json`` then lists
        the format under ``alternativeFileFormats``, as TFDS's own format conversion does.
        """
        target = tfds.core.FileFormat.from_value(wanted)
        if not self.is_prepared():
            return
        if not all(os.path.exists(p) for p in self._shards(target)):
            self._convert(target)
        if target not in self.info.available_file_formats():
            self.info.add_alternative_file_format(target)

    def _convert(self, target) -> None:
        source = self.info.file_format
        writer = tfds.core.file_adapters.ADAPTER_FOR_FORMAT[target]
        for src, dest in zip(self._shards(source), self._shards(target), strict=True):
            with io_utils.atomic_path(dest) as tmp:
                writer.write_examples(tmp, ((None, raw) for raw in _raw_records(src, source)))
        info_path = os.path.join(os.fspath(self.data_dir), "dataset_info.json")
        with open(info_path) as f:
            info = json.load(f)
        formats = info.setdefault("alternativeFileFormats", [])
        if target.value not in formats and target.value != info.get("fileFormat"):
            formats.append(target.value)
        io_utils.write_json_atomic(info_path, info, indent=4)

    def as_dataset(self, split=None, **kwargs):
        if self.is_prepared() and self.info.file_format != tfds.core.FileFormat.TFRECORD:
            self._ensure_format("tfrecord")
            # As `as_data_source` does for random-access formats: read the TFRecord copy.
            self.info.set_file_format("tfrecord", override=True, override_if_initialized=True)
        return super().as_dataset(split=split, **kwargs)

    def as_data_source(self, split=None, *, file_format=None, **kwargs):
        if file_format is None and self.info.file_format == tfds.core.FileFormat.TFRECORD:
            self._ensure_format("array_record")
            file_format = "array_record"
        return super().as_data_source(split=split, file_format=file_format, **kwargs)


class Builder(FormatConvertingBuilder):
    """CaFFe full images with zones, front, bounding box and file-name metadata."""

    # README.md / CITATIONS.bib / TAGS.txt sit next to this file.
    pkg_dir_path = epath.Path(__file__).parent
    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release (full images, official train/val split).",
        "1.1.0": "pixel_spacing_m per image; bbox float64; own-data folder configs.",
        "1.2.0": "synthetic: effective pixel spacing (scene extent / image side), not the name's.",
    }
    BUILDER_CONFIGS = [
        CaffeConfig(name="full", description="Real CaFFe data_raw.zip (PANGAEA 940950)."),
        CaffeConfig(
            name="synthetic",
            description="Synthetic CaFFe-like images generated offline from seed 0.",
            synthetic=SyntheticCaffeSpec(seed=0),
        ),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "synthetic"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    For config `full`: put `data_raw.zip` from {_URL} (PANGAEA 940950, CC-BY-4.0), or the extracted
    `data_raw/` folder (sar_images/, zones/, fronts/, bounding_boxes/), into the manual_dir. Without
    a manual_dir the archive (about 2.9 GB) is downloaded. Config `synthetic` needs nothing. A
    folder of your own in this layout: `folder_config(path)` (CLI: --config.data.config=folder
    --config.data.manual_dir=<path>).
    """

    def _info(self) -> tfds.core.DatasetInfo:
        zlib = tfds.features.Encoding.ZLIB
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "sar": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
                    "zones": tfds.features.Tensor(
                        shape=(None, None), dtype=np.uint8, encoding=zlib
                    ),
                    "front": tfds.features.Tensor(
                        shape=(None, None), dtype=np.uint8, encoding=zlib
                    ),
                    # Raw bytes: tf.Example float lists are float32 (see `parse_bbox` on why
                    # the corners stay float64 up to the rounding).
                    "bbox": tfds.features.Tensor(
                        shape=(4, 2), dtype=np.float64, encoding=tfds.features.Encoding.BYTES
                    ),
                    "glacier": tfds.features.Text(),
                    "date": tfds.features.Text(),
                    "sensor": tfds.features.Text(),
                    "resolution_m": tfds.features.Scalar(dtype=np.int32),
                    "pixel_spacing_m": tfds.features.Tensor(
                        shape=(), dtype=np.float64, encoding=tfds.features.Encoding.BYTES
                    ),
                    "quality_factor": tfds.features.Scalar(dtype=np.int32),
                    "orbit": tfds.features.Text(),
                    "stem": tfds.features.Text(),
                    "season": tfds.features.Text(),
                }
            ),
            supervised_keys=("sar", "zones"),
            homepage=_HOMEPAGE,
        )

    def _manual_source(self, dl_manager) -> Path | None:
        """The manual_dir to read, or None (download). An explicit one must hold the data."""
        explicit = getattr(self, "_explicit_manual_dir", None)
        if explicit:
            return Path(os.fspath(explicit)).expanduser()
        default = Path(os.fspath(dl_manager.download_dir)) / "manual"
        if default.is_dir() and any(default.iterdir()):
            return default
        return None

    def _data_raw_root(self, dl_manager: tfds.download.DownloadManager) -> Path:
        cfg = self.builder_config
        extract_root = Path(os.fspath(dl_manager.download_dir)) / "extracted"
        if cfg.synthetic is not None:
            out = Path(dl_manager.download_dir) / f"synthetic_caffe_{cfg.name}"
            from ssl4sar_jax.data.synthetic import generate_caffe  # numpy/scipy renderer

            return generate_caffe(out, cfg.synthetic)
        source = Path(cfg.root) if cfg.own_data else self._manual_source(dl_manager)
        if source is None:
            archive = Path(os.fspath(dl_manager.download(_URL)))
            return caffe_files.extract_zip(archive, extract_root)
        kind, path = caffe_files.locate_manual_dir(source)
        if kind == "zip":
            return caffe_files.extract_zip(path, extract_root)
        return path

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        cfg = self.builder_config
        root = self._data_raw_root(dl_manager)
        expected_splits = expected_glaciers = None
        if cfg.synthetic is not None:
            expected_glaciers = cfg.synthetic.glacier_counts()
            expected_splits = {
                "train": sum(expected_glaciers[g] for g in caffe_files.TRAIN_GLACIERS),
                "test": sum(expected_glaciers[g] for g in caffe_files.TEST_GLACIERS),
            }
        elif not cfg.own_data and cfg.check_counts:
            expected_splits = {
                "train": caffe_files.CAFFE_NUM_TRAIN,
                "test": caffe_files.CAFFE_NUM_TEST,
            }
            expected_glaciers = caffe_files.CAFFE_GLACIER_COUNTS
        # Everything is decoded and checked before a single example is written, so bad input
        # raises (naming every offending file) and leaves no partial dataset behind.
        items = caffe_files.validate_caffe_root(
            root,
            expected_split_counts=expected_splits,
            expected_glacier_counts=expected_glaciers,
            caffe_names=not cfg.own_data,
            test_glaciers=cfg.test_glaciers,
            pixel_spacing=caffe_files.pixel_spacing_table(
                str(root / SPACING_TABLE) if cfg.synthetic is not None else cfg.pixel_spacing
            ),
            hemispheres=dict(cfg.hemispheres),
            sar_conversion=cfg.sar_conversion,
        )
        train_all = items["train"]  # sorted by name, as the official indices assume
        if cfg.val_glaciers:
            present = {item.name.glacier for item in train_all}
            missing = sorted(set(cfg.val_glaciers) - present)
            if missing:
                raise caffe_files.CaffeDataError(
                    [
                        f"{root}: val_glaciers {missing} have no training images "
                        f"(training glaciers: {sorted(present)})"
                    ]
                )
            train = [it for it in train_all if it.name.glacier not in cfg.val_glaciers]
            val = [it for it in train_all if it.name.glacier in cfg.val_glaciers]
        else:
            if len(train_all) < 2:
                raise caffe_files.CaffeDataError(
                    [
                        f"{root / 'sar_images' / 'train'}: {len(train_all)} training image(s); "
                        "the validation split needs at least 2"
                    ]
                )
            train_idx, val_idx = caffe_files.split_indices(len(train_all))
            train = [train_all[i] for i in train_idx]
            val = [train_all[i] for i in val_idx]
        problems = [
            f"{root}: the {split} split is empty (put images into sar_images/{split}/"
            + (" or hold out a glacier with test_glaciers)" if split == "test" else ")")
            for split, its in (("train", train), ("test", items["test"]))
            if not its
        ]
        if problems:
            raise caffe_files.CaffeDataError(problems)
        return {
            "train": self._generate_examples(train),
            "validation": self._generate_examples(val),
            "test": self._generate_examples(items["test"]),
        }

    def _generate_examples(self, items: list[caffe_files.CaffeItem]):
        for item in items:
            sar, zones, front = caffe_files.read_item_arrays(item)
            n = item.name
            yield (
                n.stem,
                {
                    "sar": png_bytes(sar),
                    "zones": zones,
                    "front": front,
                    "bbox": item.bbox,
                    "glacier": n.glacier,
                    "date": n.date,
                    "sensor": n.sensor,
                    "resolution_m": n.resolution_m,
                    "pixel_spacing_m": item.spacing_m,
                    "quality_factor": n.quality_factor,
                    "orbit": n.orbit,
                    "stem": n.stem,
                    "season": n.season,
                },
            )
