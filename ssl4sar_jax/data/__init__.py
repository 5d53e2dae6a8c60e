"""Data: raw-file parsing, synthetic generators, TFDS preparation and grain pipelines.

Public API (see docs/data.md):
    open_sources, make_iterator (the config-driven pair the tasks use), prepare, is_prepared,
    data_config, default_data_config, make_train_iterator, make_finetune_iterator,
    make_pretrain_iterator, FinetuneSamplerConfig, PretrainSamplerConfig.

Importing this package imports grain and Pillow but not TFDS (loaded on first use).
"""

from ssl4sar_jax.data.datasets import (
    DATASETS,
    data_config,
    default_data_config,
    is_prepared,
    make_iterator,
    make_train_iterator,
    open_sources,
    prepare,
)
from ssl4sar_jax.data.pipeline import make_finetune_iterator, make_pretrain_iterator
from ssl4sar_jax.data.transforms import FinetuneSamplerConfig, PretrainSamplerConfig

__all__ = [
    "DATASETS",
    "FinetuneSamplerConfig",
    "PretrainSamplerConfig",
    "data_config",
    "default_data_config",
    "is_prepared",
    "make_finetune_iterator",
    "make_iterator",
    "make_pretrain_iterator",
    "make_train_iterator",
    "open_sources",
    "prepare",
]
