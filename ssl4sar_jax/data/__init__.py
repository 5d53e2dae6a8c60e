"""Data: raw-file parsing, synthetic generators, TFDS preparation and grain pipelines.

The public names are imported lazily so that ``import ssl4sar_jax`` (which registers the TFDS
builders through ``caffe_files``/``synthetic``) stays cheap; grain is loaded on first use.

Public API (see docs/data.md):
    prepare, is_prepared, make_finetune_iterator, make_pretrain_iterator, make_train_iterator,
    default_data_config, FinetuneSamplerConfig, PretrainSamplerConfig.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "prepare": "ssl4sar_jax.data.pipeline",
    "is_prepared": "ssl4sar_jax.data.pipeline",
    "make_finetune_iterator": "ssl4sar_jax.data.pipeline",
    "make_pretrain_iterator": "ssl4sar_jax.data.pipeline",
    "make_train_iterator": "ssl4sar_jax.data.pipeline",
    "default_data_config": "ssl4sar_jax.data.pipeline",
    "FinetuneSamplerConfig": "ssl4sar_jax.data.transforms",
    "PretrainSamplerConfig": "ssl4sar_jax.data.transforms",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ssl4sar_jax.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
