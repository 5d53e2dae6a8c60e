"""The SSL4SAR hybrid segmentation network: SwinV2 encoder + residual CNN decoder + 1x1 head.

``SSL4SARSegmenter(config, rngs=...)(sar)`` maps a SAR patch ``[B, H, W, 1]`` in [0, 1] to zone
logits ``[B, H, W, num_classes]``. The single SAR channel is replicated to the encoder's
3 input channels in `expand_sar_channels`, the only place where this happens (TYRION
repeats the channel in its wrapper; no mean/std normalisation is applied, as in the paper).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ssl4sar_jax.models.config import ModelConfig, as_config
from ssl4sar_jax.models.decoder import Decoder
from ssl4sar_jax.models.layers import conv2d_layer
from ssl4sar_jax.models.swinv2 import SwinV2Encoder


def expand_sar_channels(sar: jax.Array, config: ModelConfig) -> jax.Array:
    """Checks the input shape and replicates single-channel SAR to ``in_chans`` channels.

    Args:
        sar: ``[B, img_size, img_size, C]`` with ``C`` = ``sar_channels`` (usually 1) or
            ``in_chans`` (already replicated).
        config: Model configuration.

    Returns:
        ``[B, img_size, img_size, in_chans]``.

    Raises:
        ValueError: if the shape is not ``[B, img_size, img_size, 1 or in_chans]``.
    """
    expected = f"[B, {config.img_size}, {config.img_size}, {config.sar_channels}]"
    if sar.ndim != 4:
        raise ValueError(f"SAR input must be {expected} (NHWC), got shape {tuple(sar.shape)}")
    _, h, w, c = sar.shape
    if (h, w) != (config.img_size, config.img_size) or c not in (
        config.sar_channels,
        config.in_chans,
    ):
        raise ValueError(
            f"SAR input must be {expected} (or {config.in_chans} channels), got shape {tuple(sar.shape)}"
        )
    if c == config.in_chans:
        return sar
    return jnp.tile(sar, (1, 1, 1, config.in_chans // c))


def check_token_mask(token_mask: jax.Array, config: ModelConfig, batch: int) -> None:
    """Raises ValueError unless ``token_mask`` is ``[B, img/patch, img/patch]``."""
    g = config.patch_grid
    if tuple(token_mask.shape) != (batch, g, g):
        raise ValueError(
            f"token_mask must be [B, {g}, {g}] = {(batch, g, g)}, got {tuple(token_mask.shape)}"
        )


def feature_head(config: ModelConfig, out_channels: int, *, rngs: nnx.Rngs) -> nnx.Conv:
    """1x1 conv on the decoder features ``[B, H, W, embed_dim] -> [B, H, W, out_channels]``.

    The zone head and both pretraining heads are this layer (PyTorch default init, the CPU
    matmul-gradient path where enabled).
    """
    return conv2d_layer(
        config.embed_dim,
        out_channels,
        1,
        dtype=config.compute_dtype,
        matmul_grad=config.use_matmul_grad_conv(),
        rngs=rngs,
    )


class SSL4SARSegmenter(nnx.Module):
    """SwinV2 encoder + residual CNN decoder + 1x1 head (TYRION ``Tyrion``), NHWC.

    Attributes:
        encoder: `SwinV2Encoder` (patch embedding + stages).
        decoder: `Decoder` (6 residual blocks for the paper configuration).
        head: 1x1 conv ``embed_dim -> num_classes``.
    """

    def __init__(self, config: ModelConfig | str | None = None, *, rngs: nnx.Rngs):
        config = as_config(config)
        self.config = config
        self.encoder = SwinV2Encoder(config, rngs=rngs)
        self.decoder = Decoder(config, rngs=rngs)
        self.head = feature_head(config, config.num_classes, rngs=rngs)

    def __call__(
        self,
        sar: jax.Array,
        *,
        token_mask: jax.Array | None = None,
        mask_token: jax.Array | None = None,
        rngs: nnx.Rngs | None = None,
        return_logits: bool = True,
    ) -> dict[str, Any]:
        """Forward pass.

        Args:
            sar: ``[B, H, W, 1]`` float in [0, 1] (H = W = ``config.img_size``).
            token_mask: Optional bool ``[B, H/patch, W/patch]``; True tokens are replaced by
                ``mask_token`` after the patch-embedding LayerNorm (OptSimMIM).
            mask_token: ``[embed_dim]`` replacement for masked tokens; default zeros
                (TYRION's frozen zero token).
            rngs: ``nnx.Rngs(dropout=key)`` enables decoder dropout (training); None = eval.
            return_logits: If False the head is skipped (pretraining) and ``logits`` is None.

        Returns:
            Dict with ``logits`` ``[B, H, W, num_classes]`` (float32), ``features``
            ``[B, H, W, embed_dim]`` (decoder output before the head) and ``skips``
            ``[s0..s3]`` with s_i ``[B, H/(patch 2^i), W/(patch 2^i), embed_dim 2^i]``.
        """
        images = expand_sar_channels(sar, self.config)
        tokens = self.encoder.embed(images)
        if token_mask is not None:
            check_token_mask(token_mask, self.config, images.shape[0])
            if mask_token is None:
                replacement = jnp.zeros((), tokens.dtype)
            else:
                replacement = mask_token.astype(tokens.dtype)
            tokens = jnp.where(token_mask[..., None], replacement, tokens)
        skips = self.encoder.stages(tokens)
        features = self.decoder(skips, rngs=rngs)
        logits = self.head(features).astype(jnp.float32) if return_logits else None
        return {"logits": logits, "features": features, "skips": skips}
