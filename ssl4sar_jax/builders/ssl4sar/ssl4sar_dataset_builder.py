"""TFDS builder ``ssl4sar``: Sentinel-1 images paired with their glacier's Sentinel-2 image.

Configs:
    * ``full``: the SSL4SAR pretraining data (Zenodo 14748506), extracted into the manual_dir in
      the layout of ``ssl4sar_jax.data.ssl4sar_files`` (``unlabeled_data_raw_{train,val}/`` +
      ``data_optical/``). The Zenodo file names are not known here; see README.md.
    * ``folder-<key>`` (made by `folder_config`, CLI ``--config.data.config=folder``): a folder of
      your own in that layout, keyed on the folder path, its content listing and the options;
      validation from ``unlabeled_data_raw_val/`` or from named glaciers of the training folder.
    * ``synthetic``: S1 time series with a moving front + one 15-band S2 GeoTIFF (real CRS and
      transform) per glacier, generated from a seed by ``ssl4sar_jax.data.synthetic``.

Each example is one S1 image with the (per-band max-normalised, uint8) optical image of its
glacier on the same pixel grid. The optical image is stored with every S1 example (simple random
access for the pipeline; costs disk space on the real data, see README.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from ssl4sar_jax.builders.caffe.caffe_dataset_builder import FormatConvertingBuilder, png_bytes
from ssl4sar_jax.constants import NUM_OPTICAL_BANDS
from ssl4sar_jax.data import caffe_files, ssl4sar_files
from ssl4sar_jax.data.caffe_files import read_gray_png
from ssl4sar_jax.data.synthetic_specs import SyntheticSSL4SARSpec

_HOMEPAGE = "https://doi.org/10.5281/zenodo.14748506"
_DESCRIPTION = """
SSL4SAR pretraining pairs (Gourmelon et al., IEEE TGRS 2025): Sentinel-1 SAR images of Arctic
glaciers, each paired with the single Sentinel-2 L2A image of its glacier (14 bands: B1-B12 with
B8A, WVP, SCL), co-registered on the same pixel grid.
"""


@dataclasses.dataclass(eq=False)
class SSL4SARConfig(tfds.core.BuilderConfig):
    """Config.

    Attributes:
        synthetic: generate offline data with this spec; None -> real files.
        root: own data (`folder_config`): the folder; "" = the manual_dir.
        val_glaciers: glaciers of the training folder that form the validation split (empty =
            ``unlabeled_data_raw_val/``).
        sar_conversion: ``"none"`` (refuse SAR that is not 8-bit grey) or ``"gray8"``.
    """

    synthetic: SyntheticSSL4SARSpec | None = None
    root: str = ""
    val_glaciers: tuple[str, ...] = ()
    sar_conversion: str = "none"


def folder_config(
    root: str | os.PathLike, *, val_glaciers: tuple[str, ...] = (), sar_conversion: str = "none"
) -> SSL4SARConfig:
    """The config for an SSL4SAR-layout folder of your own, named ``folder-<12 hex digits>``.

    Raises:
        SSL4SARDataError: when the folder lacks the layout (says what was found).
    """
    located = ssl4sar_files.locate_manual_dir(root).resolve()
    if sar_conversion not in caffe_files.SAR_CONVERSIONS:
        raise ValueError(
            f"sar_conversion must be one of {caffe_files.SAR_CONVERSIONS}, got {sar_conversion!r}"
        )
    val_glaciers = tuple(sorted(set(val_glaciers)))
    key = {
        "root": str(located),
        "content": caffe_files.folder_fingerprint(located),
        "val_glaciers": val_glaciers,
        "sar_conversion": sar_conversion,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return SSL4SARConfig(
        name=f"folder-{digest}",
        description=f"Own SSL4SAR-layout data from {located} (val_glaciers={list(val_glaciers)}).",
        root=str(located),
        val_glaciers=val_glaciers,
        sar_conversion=sar_conversion,
    )


class Builder(FormatConvertingBuilder):
    """SSL4SAR S1/S2 pairs for OptSimMIM / OptTranslator pretraining."""

    # README.md / CITATIONS.bib / TAGS.txt sit next to this file (tfds' own lookup goes through the
    # package name, which differs between a source checkout and an installed wheel).
    pkg_dir_path = epath.Path(__file__).parent
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "1.1.0": "Own-data folder configs; input checks; synthetic scenes with real-SAR cues.",
    }
    BUILDER_CONFIGS = [
        SSL4SARConfig(name="full", description="Real SSL4SAR data from the manual_dir."),
        SSL4SARConfig(
            name="synthetic",
            description="Synthetic S1 time series + S2 GeoTIFF per glacier (seed 0).",
            synthetic=SyntheticSSL4SARSpec(seed=0),
        ),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "synthetic"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download the SSL4SAR data (Zenodo 14748506) and extract it into the manual_dir so that it holds
    `unlabeled_data_raw_train/*.png`, `unlabeled_data_raw_val/*.png` (glacier = 2nd '_' field of the
    name) and `data_optical/<Glacier>_*.tif` (one Sentinel-2 GeoTIFF per glacier; also accepted:
    `data_optical/data_optical/`). TYRION's scripts extract `unlabeled_data_raw_train.tar`,
    `unlabeled_data_raw_val.tar` and `data_optical.tar` this way.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "sar": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
                    "optical": tfds.features.Tensor(
                        shape=(None, None, NUM_OPTICAL_BANDS),
                        dtype=np.uint8,
                        encoding=tfds.features.Encoding.ZLIB,
                    ),
                    "glacier": tfds.features.Text(),
                    "stem": tfds.features.Text(),
                    "date": tfds.features.Text(),
                }
            ),
            homepage=_HOMEPAGE,
        )

    def _root(self, dl_manager: tfds.download.DownloadManager) -> Path:
        spec = self.builder_config.synthetic
        if spec is not None:
            out = Path(dl_manager.download_dir) / f"synthetic_ssl4sar_{self.builder_config.name}"
            from ssl4sar_jax.data.synthetic import generate_ssl4sar  # numpy/scipy renderer

            return generate_ssl4sar(out, spec)
        cfg = self.builder_config
        if cfg.root:
            return ssl4sar_files.locate_manual_dir(cfg.root)
        explicit = getattr(self, "_explicit_manual_dir", None)
        manual = explicit or Path(os.fspath(dl_manager.download_dir)) / "manual"
        return ssl4sar_files.locate_manual_dir(os.fspath(manual))

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        cfg = self.builder_config
        items, _ = ssl4sar_files.validate_ssl4sar_root(
            self._root(dl_manager), val_glaciers=cfg.val_glaciers, sar_conversion=cfg.sar_conversion
        )
        return {split: self._generate_examples(its) for split, its in items.items()}

    def _generate_examples(self, items: list[ssl4sar_files.S1Item]):
        cache: dict[Path, np.ndarray] = {}
        for item in items:
            if item.optical_path not in cache:  # one per glacier (14 on the real data)
                cache[item.optical_path] = ssl4sar_files.read_optical(item.optical_path)
            sar = read_gray_png(
                item.path.read_bytes(), str(item.path), self.builder_config.sar_conversion
            )
            yield (
                item.stem,
                {
                    "sar": png_bytes(sar),
                    "optical": cache[item.optical_path],
                    "glacier": item.glacier,
                    "stem": item.stem,
                    "date": item.date,
                },
            )
