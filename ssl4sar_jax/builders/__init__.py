"""TFDS builder packages of ssl4sar_jax.

The builder sources live in the repository's top-level ``datasets/<name>/`` folders (TFDS
dataset-folder convention; ``datasets/`` deliberately has no ``__init__.py`` so it never shadows
Hugging Face ``datasets``). An installed package maps them to ``ssl4sar_jax.builders.<name>``
(setuptools ``package-dir``). When running from a source checkout or an editable install we add
``datasets/`` to this package's search path so the same import names work.
"""

from pathlib import Path

_SOURCE_DATASETS = Path(__file__).resolve().parents[2] / "datasets"
if _SOURCE_DATASETS.is_dir() and not (Path(__file__).parent / "caffe").is_dir():
    __path__.append(str(_SOURCE_DATASETS))  # noqa: F821  (module __path__ of this package)


def register_all() -> None:
    """Imports every builder module, which registers ``caffe`` and ``ssl4sar`` with TFDS."""
    from ssl4sar_jax.builders.caffe import caffe_dataset_builder  # noqa: F401
    from ssl4sar_jax.builders.ssl4sar import ssl4sar_dataset_builder  # noqa: F401
