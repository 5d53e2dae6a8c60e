"""TFDS builder ``caffe``: CaFFe full images (PANGAEA 940950) and an offline synthetic variant.

Configs:
    * ``full``: the real ``data_raw.zip`` (manual_dir holding the zip or an extracted
      ``data_raw/``; otherwise downloaded from PANGAEA). Checks 559/122 images and the per-glacier
      counts of data_and_evaluation.md §1.6.
    * ``synthetic``: a small CaFFe-like tree generated from a seed by
      ``ssl4sar_jax.data.synthetic`` and written to ``<data_dir>/downloads/`` in the real layout,
      so the real parsing path runs.

Splits: ``train`` / ``validation`` = the official ``RandomState(1).permutation(n)`` recipe over
the sorted ``sar_images/train`` names (503 / 56 on real data), ``test`` = ``sar_images/test``.
Use ``split="train+validation"`` for all 559 training images.

The default file format is ArrayRecord (readable with ``tfds.data_source`` and grain, no
TensorFlow). Pass ``file_format="tfrecord"`` (needs TensorFlow) for ``tfds.load``.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from ssl4sar_jax.data import caffe_files
from ssl4sar_jax.data.synthetic_specs import SyntheticCaffeSpec

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
        synthetic: generate offline data with this spec; None -> the real archive / manual_dir.
        check_counts: for real data, require 559/122 images and the per-glacier counts of §1.6
            (turn off only to build a subset, e.g. the builder test over ``dummy_data/``).
    """

    synthetic: SyntheticCaffeSpec | None = None
    check_counts: bool = True


def png_bytes(array: np.ndarray) -> bytes:
    """Encodes a uint8 [H, W] array as a grayscale PNG (no TensorFlow needed)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), mode="L").save(buf, "PNG")
    return buf.getvalue()


class Builder(tfds.core.GeneratorBasedBuilder):
    """CaFFe full images with zones, front, bounding box and file-name metadata."""

    # README.md / CITATIONS.bib / TAGS.txt sit next to this file (tfds' own lookup goes through the
    # package name, which differs between a source checkout and an installed wheel).
    pkg_dir_path = epath.Path(__file__).parent
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release (full images, official train/val split)."}
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
    a manual_dir the archive (about 2.9 GB) is downloaded. Config `synthetic` needs nothing.
    """

    def __init__(self, *, file_format: str | None = None, **kwargs):
        super().__init__(file_format=file_format, **kwargs)
        # ArrayRecord by default: it is written and read without TensorFlow. A dataset already
        # prepared on disk keeps its own format (e.g. TFRecord for `tfds.load`).
        if file_format is None and not self.is_prepared():
            self.info.set_file_format("array_record", override=True)

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
                    "bbox": tfds.features.Tensor(shape=(4, 2), dtype=np.float32),
                    "glacier": tfds.features.Text(),
                    "date": tfds.features.Text(),
                    "sensor": tfds.features.Text(),
                    "resolution_m": tfds.features.Scalar(dtype=np.int32),
                    "quality_factor": tfds.features.Scalar(dtype=np.int32),
                    "orbit": tfds.features.Text(),
                    "stem": tfds.features.Text(),
                    "season": tfds.features.Text(),
                }
            ),
            supervised_keys=("sar", "zones"),
            homepage=_HOMEPAGE,
        )

    def _data_raw_root(self, dl_manager: tfds.download.DownloadManager) -> Path:
        spec = self.builder_config.synthetic
        if spec is not None:
            out = Path(dl_manager.download_dir) / f"synthetic_caffe_{self.builder_config.name}"
            from ssl4sar_jax.data.synthetic import generate_caffe  # numpy/scipy renderer

            return generate_caffe(out, spec)
        manual = None
        try:
            manual = Path(dl_manager.manual_dir)
        except AssertionError:  # tfds asserts when the manual dir does not exist or is empty
            manual = None
        if manual is not None:
            for cand in (manual, manual / "data_raw"):
                if (cand / "sar_images").is_dir():
                    return cand
            if (manual / "data_raw.zip").is_file():
                return caffe_files.resolve_data_raw(dl_manager.extract(manual / "data_raw.zip"))
        return caffe_files.resolve_data_raw(dl_manager.download_and_extract(_URL))

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = self._data_raw_root(dl_manager)
        if self.builder_config.synthetic is None and not self.builder_config.check_counts:
            expected_splits, expected_glaciers = None, None
        elif self.builder_config.synthetic is None:
            expected_splits = {
                "train": caffe_files.CAFFE_NUM_TRAIN,
                "test": caffe_files.CAFFE_NUM_TEST,
            }
            expected_glaciers = caffe_files.CAFFE_GLACIER_COUNTS
        else:
            counts = self.builder_config.synthetic.glacier_counts()
            expected_glaciers = counts
            expected_splits = {
                "train": sum(counts[g] for g in caffe_files.TRAIN_GLACIERS),
                "test": sum(counts[g] for g in caffe_files.TEST_GLACIERS),
            }
        # Everything is decoded and checked before a single example is written, so bad input
        # raises (naming every offending file) and leaves no partial dataset behind.
        items = caffe_files.validate_caffe_root(
            root, expected_split_counts=expected_splits, expected_glacier_counts=expected_glaciers
        )
        train_all = items["train"]  # sorted by name, as the official indices assume
        train_idx, val_idx = caffe_files.split_indices(len(train_all))
        return {
            "train": self._generate_examples([train_all[i] for i in train_idx]),
            "validation": self._generate_examples([train_all[i] for i in val_idx]),
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
                    "quality_factor": n.quality_factor,
                    "orbit": n.orbit,
                    "stem": n.stem,
                    "season": n.season,
                },
            )
