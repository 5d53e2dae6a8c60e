"""Flax NNX models of ssl4sar_jax (SwinV2-T encoder + residual CNN decoder, NHWC).

Public API:

* `ModelConfig` (``ModelConfig.named("paper" | "tiny")``),
* `SSL4SARSegmenter` (zone segmentation), `OptSimMIMModel`, `OptTranslatorModel`
  (self-supervised pretraining; the segmenter sits under ``.backbone``),
* `build_model(config, seed=0, objective="segment")`: the model of any objective registered in
  `ssl4sar_jax.objectives` (``"segment"``, ``"opt_simmim"``, ``"opt_translator"``, ...),
* `patchify` (OptSimMIM target layout), `expand_sar_channels` (the 1 -> 3 channel rule).

Weight import from PyTorch lives in `ssl4sar_jax.models.convert_torch`.
"""

from ssl4sar_jax.models.builder import build_model
from ssl4sar_jax.models.config import VARIANTS, ModelConfig
from ssl4sar_jax.models.pretrain_heads import OptSimMIMModel, OptTranslatorModel, patchify
from ssl4sar_jax.models.segmenter import SSL4SARSegmenter, expand_sar_channels

__all__ = [
    "VARIANTS",
    "ModelConfig",
    "OptSimMIMModel",
    "OptTranslatorModel",
    "SSL4SARSegmenter",
    "build_model",
    "expand_sar_channels",
    "patchify",
]
