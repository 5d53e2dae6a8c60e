"""Datasets from a config: the one place that resolves, prepares and opens TFDS data.

Training tasks, evaluation and prediction go through here: `open_sources` turns a
``config.data`` block into ``{split: random-access source}`` (preparing the dataset first when
allowed), and `make_iterator` turns a source into the training iterator of that dataset.

``config.data`` (`data_config` returns the defaults)::

    name            "caffe" | "ssl4sar"
    config          "synthetic" | "full" | "folder" (a folder of your own, see docs/data.md)
    data_dir        TFDS data dir
    manual_dir      the raw data: archive/folder for "full", the folder for "folder"
    prepare         build the dataset when it is not prepared yet
    train_split / val_split
    test_glaciers   "folder": glaciers held out, moved from train/ to test ("SI,JAC")
    val_glaciers    "folder": glaciers forming the validation split ("" = official recipe;
                    ssl4sar: "" = unlabeled_data_raw_val/)
    pixel_spacing_m "folder": "" (the file name's), a number of metres, or a CSV path
    northern_glaciers / southern_glaciers
                    "folder": hemispheres of non-CaFFe glaciers (season rule)
    sar_conversion  "none" (refuse SAR that is not 8-bit grey) | "gray8"
    num_threads / prefetch_buffer_size / num_workers   grain reading
    sampler         the dataset's sampler fields (`FinetuneSamplerConfig` / `PretrainSamplerConfig`)

A ``folder`` dataset is prepared under its own TFDS config ``folder-<key>``, the key hashing the
folder path, its content listing and the options, so a different folder or other options never
reuse prepared data.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain

from ssl4sar_jax.data import caffe_files, pipeline, ssl4sar_files
from ssl4sar_jax.data.transforms import FinetuneSamplerConfig, PretrainSamplerConfig

Record = Mapping[str, Any]

# Options only a "folder" config reads (strings so that they read naturally on the CLI).
OWN_DATA_OPTIONS: dict[str, str] = {
    "test_glaciers": "",
    "val_glaciers": "",
    "pixel_spacing_m": "",
    "northern_glaciers": "",
    "southern_glaciers": "",
}
_CAFFE_ONLY = ("test_glaciers", "pixel_spacing_m", "northern_glaciers", "southern_glaciers")


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """What the data layer knows about one dataset name.

    Attributes:
        sampler_cls: the sampler config dataclass of its training iterator.
        iterator: ``(source, *, sampler, **kwargs) -> grain iterator``.
        error_type: the raw-file error type of its builder.
        locate: checks a manual_dir (fast, no TFDS) and raises ``error_type`` naming what was
            found and what was expected.
    """

    sampler_cls: type
    iterator: Callable[..., grain.DatasetIterator]
    error_type: type[ValueError]
    locate: Callable[[str], Any]


DATASETS: dict[str, DatasetEntry] = {
    "caffe": DatasetEntry(
        FinetuneSamplerConfig,
        pipeline.make_finetune_iterator,
        caffe_files.CaffeDataError,
        caffe_files.locate_manual_dir,
    ),
    "ssl4sar": DatasetEntry(
        PretrainSamplerConfig,
        pipeline.make_pretrain_iterator,
        ssl4sar_files.SSL4SARDataError,
        ssl4sar_files.locate_manual_dir,
    ),
}


def _entry(name: str) -> DatasetEntry:
    if name not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[name]


def data_config(name: str, *, type_safe: bool = True, **overrides):
    """The default ``config.data`` block of dataset ``name`` (ml_collections ConfigDict).

    ``type_safe=False`` lets ``config`` take a builder config object (Python use).
    """
    import ml_collections

    entry = _entry(name)
    fields = {
        "name": name,
        "config": "synthetic",
        "data_dir": "~/tensorflow_datasets",
        "manual_dir": "",
        "prepare": True,
        "train_split": "train",
        "val_split": "validation",
        **OWN_DATA_OPTIONS,
        "sar_conversion": "none",
        "num_threads": 2,
        "prefetch_buffer_size": 8,
        "num_workers": 0,
        "sampler": dataclasses.asdict(entry.sampler_cls()),
    }
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"data_config({name!r}) has no fields {unknown}")
    if "sampler" in overrides:  # replaces the block (e.g. without the crop side, see configs/)
        overrides["sampler"] = dict(overrides["sampler"])
    fields.update(overrides)
    return ml_collections.ConfigDict(fields, type_safe=type_safe)


def default_data_config(task: str):
    """`data_config` of the dataset a task trains on (``"finetune"`` or ``"pretrain"``)."""
    names = {"finetune": "caffe", "pretrain": "ssl4sar"}
    if task not in names:
        raise ValueError(f"task must be 'finetune' or 'pretrain', got {task!r}")
    return data_config(names[task], type_safe=False)


def _names(text: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(text, str):
        return tuple(sorted({t.strip() for t in text.split(",") if t.strip()}))
    return tuple(sorted(set(text)))


def resolve_config(
    name: str,
    config: Any = "synthetic",
    manual_dir: str | None = None,
    **options: Any,
) -> Any:
    """The TFDS builder config for a name like ``"full"`` / ``"folder"`` and the options.

    Returns:
        The config name (``"synthetic"``, ``"full"``) or a config object (``folder``).

    Raises:
        ValueError: for options given to a config that ignores them, or a missing manual_dir.
        CaffeDataError / SSL4SARDataError: for a folder without the expected layout.
    """
    entry = _entry(name)
    given = {k: v for k, v in options.items() if k in OWN_DATA_OPTIONS and v}
    unknown = sorted(set(options) - set(OWN_DATA_OPTIONS) - {"sar_conversion"})
    if unknown:
        raise ValueError(f"unknown dataset options {unknown}")
    sar_conversion = options.get("sar_conversion") or "none"
    if not isinstance(config, str) or config != "folder":
        if given or sar_conversion != "none":
            shown = sorted(given) + (["sar_conversion"] if sar_conversion != "none" else [])
            raise ValueError(
                f"config.data options {shown} apply to your own data only: use "
                f"--config.data.config=folder --config.data.manual_dir=<folder> "
                f"(got config {getattr(config, 'name', config)!r})"
            )
        return config
    if not manual_dir:
        raise ValueError(
            "config.data.config='folder' reads your own data: set "
            "--config.data.manual_dir=<folder> (docs/data.md, 'Your own data')"
        )
    entry.locate(manual_dir)  # fast check with a clear message before TFDS is involved
    from ssl4sar_jax.builders.caffe import caffe_dataset_builder
    from ssl4sar_jax.builders.ssl4sar import ssl4sar_dataset_builder

    if name == "ssl4sar":
        caffe_only = sorted(k for k in given if k in _CAFFE_ONLY)
        if caffe_only:
            raise ValueError(f"config.data options {caffe_only} do not apply to ssl4sar")
        return ssl4sar_dataset_builder.folder_config(
            manual_dir,
            val_glaciers=_names(options.get("val_glaciers", "")),
            sar_conversion=sar_conversion,
        )
    hemispheres = caffe_files.parse_hemispheres(
        _names(options.get("northern_glaciers", "")), _names(options.get("southern_glaciers", ""))
    )
    return caffe_dataset_builder.folder_config(
        manual_dir,
        test_glaciers=_names(options.get("test_glaciers", "")),
        val_glaciers=_names(options.get("val_glaciers", "")),
        pixel_spacing=options.get("pixel_spacing_m", ""),
        hemispheres=hemispheres,
        sar_conversion=sar_conversion,
    )


def _builder(name: str, config: Any, data_dir: str | None):
    import tensorflow_datasets as tfds

    from ssl4sar_jax import builders

    builders.register()
    _entry(name)
    data_dir = os.path.expanduser(data_dir) if data_dir else None
    return tfds.builder(name, config=config, data_dir=data_dir, file_format="array_record")


def prepare(
    name: str,
    config: Any = "synthetic",
    data_dir: str | None = None,
    manual_dir: str | None = None,
    *,
    splits: Sequence[str] | None = None,
    **options: Any,
) -> dict[str, Sequence[Record]]:
    """Builds (first call) or opens a prepared dataset and returns its ``tfds.data_source`` splits.

    Args:
        name: ``"caffe"`` or ``"ssl4sar"``.
        config: builder config name (``"synthetic"``, ``"full"``, ``"folder"``) or a config
            object (e.g. ``CaffeConfig(name="synthetic_big", synthetic=SyntheticCaffeSpec(...))``).
        data_dir: TFDS data dir (default: ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
        manual_dir: the raw data (``full``: archive or folder; ``folder``: your folder). When
            given it is used or the call fails; it never falls back to a download.
        splits: split names or expressions (``"train+validation"``); default: every split.
        **options: the own-data options of the module docstring (``folder`` only).

    Returns:
        ``{split: ArrayRecord data source}`` (random access, records as in docs/interfaces.md).
    """
    import tensorflow_datasets as tfds

    manual_dir = os.path.expanduser(manual_dir) if manual_dir else None
    config = resolve_config(name, config, manual_dir, **options)
    if manual_dir and isinstance(config, str) and config != "synthetic":
        _entry(name).locate(manual_dir)  # never a silent download
    builder = _builder(name, config, data_dir)
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    builder.download_and_prepare(download_config=download_config)
    splits = list(splits) if splits is not None else list(builder.info.splits.keys())
    return {split: builder.as_data_source(split=split) for split in splits}


def is_prepared(
    name: str,
    config: Any = "synthetic",
    data_dir: str | None = None,
    manual_dir: str | None = None,
    **options: Any,
) -> bool:
    """Whether `prepare` would only open (not build) the dataset."""
    config = resolve_config(name, config, manual_dir, **options)
    return bool(_builder(name, config, data_dir).is_prepared())


def _options(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    keys = (*OWN_DATA_OPTIONS, "sar_conversion")
    return {k: data_cfg[k] for k in keys if k in data_cfg}


def _hint(name: str, config: Any, err: Exception) -> str | None:
    text = str(err)
    if "manual_dir" in text and ("found" in text or "does not exist" in text):
        if config == "full":
            return (
                "Put data_raw.zip (or the extracted data_raw/) into that folder, or prepare a "
                "folder of your own: --config.data.config=folder --config.data.manual_dir=<it>"
                if name == "caffe"
                else "Extract the SSL4SAR tars into that folder (docs/data.md)."
            )
        return "Point --config.data.manual_dir at the folder in the layout of docs/data.md."
    if "expected" in text and "images, found" in text:
        return (
            "The counts are those of the complete CaFFe archive. To prepare your own subset: "
            "--config.data.config=folder --config.data.manual_dir=<folder>"
        )
    if "does not belong in" in text or "unknown glacier" in text or "unknown sensor" in text:
        return (
            "Config 'full' accepts only the CaFFe archive's names and splits. For other "
            "glaciers, sensors or a held-out glacier: --config.data.config=folder "
            "--config.data.manual_dir=<folder> [--config.data.test_glaciers=SI]"
        )
    if "resolution" in text:
        return (
            "For another pixel spacing: --config.data.config=folder "
            "--config.data.pixel_spacing_m=<metres or CSV>"
        )
    return None


def open_sources(
    data_cfg: Mapping[str, Any], splits: Sequence[str] | None = None
) -> dict[str, Sequence[Record]]:
    """``{split: source}`` of the dataset ``data_cfg`` describes; prepares it when allowed.

    ``splits``: split names or expressions to open (``"train[:10]"``); None = every split.

    Raises:
        FileNotFoundError: the dataset is not prepared and ``prepare`` is off.
        CaffeDataError / SSL4SARDataError: the raw files are wrong (every problem once, then
            the one hint that fits).
        ValueError: a bad combination of options.
    """
    name = data_cfg["name"]
    entry = _entry(name)
    config = data_cfg["config"]
    data_dir = os.path.expanduser(os.path.expandvars(data_cfg["data_dir"] or "")) or None
    manual_dir = os.path.expanduser(data_cfg.get("manual_dir") or "") or None
    options = _options(data_cfg)
    try:
        resolved = resolve_config(name, config, manual_dir, **options)
        if config != "synthetic" and not data_cfg.get("prepare", True):
            if not _builder(name, resolved, data_dir).is_prepared():
                raise FileNotFoundError(
                    f"Dataset {name}/{getattr(resolved, 'name', resolved)} is not prepared in "
                    f"{data_dir}. Prepare it (docs/data.md) or run with "
                    "--config.data.prepare=True."
                )
        if splits is not None:
            splits = list(dict.fromkeys(splits))
        return prepare(name, config, data_dir, manual_dir, splits=splits, **options)
    except entry.error_type as err:
        raise err.with_hint(_hint(name, config, err)) from None


def make_iterator(
    data_cfg: Mapping[str, Any],
    source: Sequence[Record],
    *,
    global_batch_size: int,
    seed: int,
    sampler: Any = None,
    **kwargs: Any,
) -> grain.DatasetIterator:
    """The training iterator of dataset ``data_cfg.name`` over ``source``.

    Args:
        data_cfg: a ``config.data`` block (``name``, ``sampler``, grain reading options).
        source: records of one split (from `open_sources`).
        global_batch_size: batch over all processes.
        seed: pipeline seed.
        sampler: the sampler dataclass instance; None builds it from ``data_cfg.sampler``
            (which then holds every field).
        **kwargs: ``num_epochs``, ``process_index``, ``process_count``.
    """
    entry = _entry(data_cfg["name"])
    if sampler is None:
        values = dict(data_cfg["sampler"])
        known = {f.name for f in dataclasses.fields(entry.sampler_cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"config.data.sampler has keys {unknown} unknown to {entry.sampler_cls.__name__}"
            )
        sampler = entry.sampler_cls(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        )
    elif not isinstance(sampler, entry.sampler_cls):
        raise TypeError(f"sampler must be a {entry.sampler_cls.__name__}, got {type(sampler)}")
    for key in ("num_threads", "prefetch_buffer_size", "num_workers"):
        if key in data_cfg:
            kwargs.setdefault(key, data_cfg[key])
    return entry.iterator(
        source, global_batch_size=global_batch_size, seed=seed, sampler=sampler, **kwargs
    )


def make_train_iterator(
    data_config: Mapping[str, Any],
    *,
    global_batch_size: int,
    seed: int,
    split: str | None = None,
    **kwargs: Any,
) -> grain.DatasetIterator:
    """`open_sources` + `make_iterator` of the training split (``split`` overrides it)."""
    split = split or data_config.get("train_split", "train")
    sources = open_sources(data_config)
    return make_iterator(
        data_config, sources[split], global_batch_size=global_batch_size, seed=seed, **kwargs
    )
