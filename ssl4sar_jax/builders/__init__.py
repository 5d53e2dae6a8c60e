"""TFDS dataset builders of ssl4sar_jax: ``caffe`` and ``ssl4sar``.

Each builder lives in its own TFDS dataset folder (``caffe/``, ``ssl4sar/``: builder module,
``README.md``, ``CITATIONS.bib``, ``TAGS.txt``, ``checksums.tsv``, ``dummy_data/`` and the builder
test). TFDS registers a builder when the module defining it is imported; `register` does that
explicitly and is idempotent:

* the data layer (``ssl4sar_jax.data.datasets``) calls it before it asks TFDS for a builder;
* ``import ssl4sar_jax`` arranges for it to run as soon as ``tensorflow_datasets`` is imported
  (or at once when it already is), so ``tfds.load("caffe")`` / ``tfds.data_source("caffe")``
  work after ``import ssl4sar_jax`` without ``ssl4sar_jax`` importing TFDS itself;
* the TFDS command line imports it with ``--imports``, as TFDS documents for external builders::

      tfds build caffe --imports=ssl4sar_jax.builders --manual_dir=<folder>

Importing this package registers both builders (it imports TFDS and Pillow; nothing else in
``ssl4sar_jax`` imports it at import time).
"""

from __future__ import annotations

from ssl4sar_jax.builders.caffe import caffe_dataset_builder
from ssl4sar_jax.builders.ssl4sar import ssl4sar_dataset_builder

BUILDERS = {"caffe": caffe_dataset_builder.Builder, "ssl4sar": ssl4sar_dataset_builder.Builder}


def register() -> dict[str, type]:
    """Registers the ``caffe`` and ``ssl4sar`` builders with TFDS (idempotent).

    Registration happens when this package is imported (class definition), so calling this
    only makes the intent explicit at the call site.

    Returns:
        ``{name: builder class}``.
    """
    return dict(BUILDERS)


__all__ = ["BUILDERS", "register"]
