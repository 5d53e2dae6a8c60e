"""Self-supervised pretraining models (OptSimMIM and OptTranslator of Gourmelon et al.
2025, TGRS; Nora-Go/TYRION ``model/pretraining/OptSimMIM.py`` and ``OptTranslator.py``).

Both hold the full `SSL4SARSegmenter` under the attribute ``backbone`` (the same parameter
tree as fine-tuning, so weights transfer by path; TYRION's ``swin_unet.*``), and bypass its
4-class head. Their own layers keep PyTorch's default init (U(+-1/sqrt(fan_in)) weights and
biases), as in the reference, where Tyrion's ``_init_weights`` does not reach them.

* `OptSimMIMModel`: masked tokens are set to the mask token after the patch-embedding
  LayerNorm; the whole U-Net runs; a 1x1 conv reconstructs a 3-channel full-resolution map;
  a second patch embedding re-embeds it; a Linear predicts the ``patch x patch x 14`` optical
  values of every token (the loss picks the masked ones). The mask token is TYRION's frozen
  zero by default (no parameter), or a learnable ``[embed_dim]`` parameter.
* `OptTranslatorModel`: dense SAR -> 14-band optical translation with a 1x1 conv.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ssl4sar_jax.models.config import ModelConfig, as_config
from ssl4sar_jax.models.layers import conv2d_layer, layer_norm, torch_default_linear
from ssl4sar_jax.models.segmenter import SSL4SARSegmenter, feature_head


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """Cuts images into token rows, the layout of OptSimMIM's predictions.

    Equivalent to lightly's ``patchify`` in NHWC: tokens row-major, per-token values ordered
    ``(py, px, channel)`` with the channel fastest.

    Args:
        images: ``[B, H, W, C]``.
        patch_size: Patch side p.

    Returns:
        ``[B, (H/p)(W/p), p*p*C]``.
    """
    b, h, w, c = images.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"patchify: image {h}x{w} is not divisible by patch {patch_size}")
    nh, nw, p = h // patch_size, w // patch_size, patch_size
    # One axis split/merge per reshape keeps batch sharding inferable (Explicit meshes).
    x = images.reshape(b, nh, p, w, c).reshape(b, nh, p, nw, p, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # [B, nh, nw, p, p, C]
    x = x.reshape(b, nh * nw, p, p, c).reshape(b, nh * nw, p, p * c)
    return x.reshape(b, nh * nw, p * p * c)


class ReEmbed(nnx.Module):
    """PatchEmbed with PyTorch default init (TYRION ``patch_embed_after_decoder``)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.proj = conv2d_layer(
            config.mim_reconstruction_channels,
            config.embed_dim,
            config.patch_size,
            stride=config.patch_size,
            dtype=config.compute_dtype,
            rngs=rngs,
        )
        self.norm = layer_norm(config.embed_dim, dtype=config.compute_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, H, W, 3]`` -> ``[B, H/p, W/p, embed_dim]``."""
        return self.norm(self.proj(x))


class OptSimMIMModel(nnx.Module):
    """OptSimMIM: masked SAR tokens -> optical patch predictions.

    Attributes:
        backbone: `SSL4SARSegmenter` (TYRION ``swin_unet``).
        reconstruct: 1x1 conv ``embed_dim -> 3`` (``last_model_decoder_layer``).
        reembed: `ReEmbed` (``patch_embed_after_decoder``).
        predict: Linear ``embed_dim -> p*p*optical_channels`` (``decoder``).
        mask_token: ``nnx.Param [embed_dim]`` if ``config.learnable_mask_token``, else None
            (constant zero).
    """

    def __init__(self, config: ModelConfig | str | None = None, *, rngs: nnx.Rngs):
        config = as_config(config)
        self.config = config
        self.backbone = SSL4SARSegmenter(config, rngs=rngs)
        self.reconstruct = feature_head(config, config.mim_reconstruction_channels, rngs=rngs)
        self.reembed = ReEmbed(config, rngs=rngs)
        out = config.patch_size * config.patch_size * config.optical_channels
        self.predict = torch_default_linear(
            config.embed_dim, out, dtype=config.compute_dtype, rngs=rngs
        )
        self.mask_token = (
            nnx.Param(jnp.zeros((config.embed_dim,), jnp.float32))
            if config.learnable_mask_token
            else None
        )

    def __call__(
        self, sar: jax.Array, token_mask: jax.Array, *, rngs: nnx.Rngs | None = None
    ) -> jax.Array:
        """Predicts optical patches for every token.

        Args:
            sar: ``[B, H, W, 1]`` in [0, 1].
            token_mask: bool ``[B, H/p, W/p]``, True = masked.
            rngs: Enables decoder dropout when given.

        Returns:
            float32 ``[B, (H/p)(W/p), p*p*optical_channels]`` in `patchify` layout.
        """
        mask_token = self.mask_token[...] if self.mask_token is not None else None
        out = self.backbone(
            sar, token_mask=token_mask, mask_token=mask_token, rngs=rngs, return_logits=False
        )
        recon = self.reconstruct(out["features"])  # [B, H, W, 3]
        tokens = self.reembed(recon)  # [B, h, w, D]
        b, h, w, d = tokens.shape
        return self.predict(tokens.reshape(b, h * w, d)).astype(jnp.float32)


class OptTranslatorModel(nnx.Module):
    """OptTranslator: SAR -> 14-band optical image.

    Attributes:
        backbone: `SSL4SARSegmenter` (TYRION ``swin_unet``).
        translate: 1x1 conv ``embed_dim -> optical_channels`` (``last_model_decoder_layer``).
    """

    def __init__(self, config: ModelConfig | str | None = None, *, rngs: nnx.Rngs):
        config = as_config(config)
        self.config = config
        self.backbone = SSL4SARSegmenter(config, rngs=rngs)
        self.translate = feature_head(config, config.optical_channels, rngs=rngs)

    def __call__(self, sar: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """``[B, H, W, 1]`` -> float32 ``[B, H, W, optical_channels]`` (no output activation)."""
        out = self.backbone(sar, rngs=rngs, return_logits=False)
        return self.translate(out["features"]).astype(jnp.float32)
