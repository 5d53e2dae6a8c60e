"""A PyTorch twin of `SSL4SARSegmenter`, for speed comparisons and parity checks.

The encoder is Hugging Face ``transformers.Swinv2Model`` (an independent SwinV2
implementation); the residual decoder and the 1x1 head are written here with plain
``torch.nn`` layers, in TYRION's module layout (``pred_target.{i}.block.*``,
``pred_target.{i}.up.conv.*``, head ``pred_target.{N}``), so the weights come straight from
`export_torch_state` (the same tensors ``python -m ssl4sar_jax.models.convert_torch export``
writes). It is not TYRION's code: it computes the same function with the same parameters,
which ``tests/test_torch_reference.py`` checks against the JAX model.

Needs the ``torch`` extra and ``transformers`` (both in the ``test`` extra). Inputs and outputs
are NCHW tensors, as PyTorch convention has it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import transformers
from torch import nn

from ssl4sar_jax.models.config import ModelConfig
from ssl4sar_jax.models.layers import GROUP_NORM_EPS, GROUP_NORM_GROUPS, LAYER_NORM_EPS
from ssl4sar_jax.models.testing import microsoft_to_hf_swinv2

TYRION_PREFIX = "swin_unet."


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(GROUP_NORM_GROUPS, channels), channels, eps=GROUP_NORM_EPS)


class TorchResnetBlock(nn.Module):
    """``shortcut(x) + conv2(drop(silu(gn2(conv1(silu(gn1(x)))))))``, NCHW."""

    def __init__(self, cin: int, cout: int, dropout: float):
        super().__init__()
        self.norm1 = _group_norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _group_norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = self.conv2(self.dropout(nn.functional.silu(self.norm2(h))))
        return (self.nin_shortcut(x) if self.nin_shortcut is not None else x) + h


class TorchUpsample(nn.Module):
    """Nearest x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(nn.functional.interpolate(x, scale_factor=2.0, mode="nearest"))


class TorchResUpBlock(nn.Module):
    """`TorchResnetBlock`, optionally followed by `TorchUpsample`."""

    def __init__(self, cin: int, cout: int, *, upsample: bool, dropout: float):
        super().__init__()
        self.block = TorchResnetBlock(cin, cout, dropout)
        self.up = TorchUpsample(cout) if upsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(x)
        return self.up(x) if self.up is not None else x


def hf_swinv2_config(config: ModelConfig) -> transformers.Swinv2Config:
    """The Hugging Face configuration of the encoder of ``config`` (no dropout, GELU)."""
    return transformers.Swinv2Config(
        image_size=config.img_size,
        patch_size=config.patch_size,
        num_channels=config.in_chans,
        embed_dim=config.embed_dim,
        depths=list(config.depths),
        num_heads=list(config.num_heads),
        window_size=config.window_size,
        pretrained_window_sizes=list(config.pretrained_window_sizes),
        mlp_ratio=config.mlp_ratio,
        qkv_bias=True,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
        hidden_act="gelu",
        layer_norm_eps=LAYER_NORM_EPS,
        use_absolute_embeddings=False,
    )


class TorchSegmenter(nn.Module):
    """HF SwinV2 encoder + residual decoder + 1x1 head: ``[B, 1, H, W] -> [B, K, H, W]``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.encoder = transformers.Swinv2Model(hf_swinv2_config(config), add_pooling_layer=False)
        blocks = [
            TorchResUpBlock(
                config.bottleneck_dim,
                config.bottleneck_dim,
                upsample=False,
                dropout=config.decoder_dropout,
            )
        ]
        for i in reversed(range(config.num_stages)):
            dim = config.stage_dim(i)
            out = dim // 2 if i != 0 else dim
            blocks.append(
                TorchResUpBlock(2 * dim, out, upsample=True, dropout=config.decoder_dropout)
            )
        for _ in range(config.num_extra_upsample_blocks):
            blocks.append(
                TorchResUpBlock(
                    config.embed_dim,
                    config.embed_dim,
                    upsample=True,
                    dropout=config.decoder_dropout,
                )
            )
        self.num_blocks = len(blocks)
        self.pred_target = nn.ModuleList(
            blocks + [nn.Conv2d(config.embed_dim, config.num_classes, 1)]
        )

    def forward(self, sar: torch.Tensor) -> torch.Tensor:
        """Zone logits ``[B, num_classes, H, W]`` of SAR ``[B, 1, H, W]`` in [0, 1]."""
        images = sar.repeat(1, self.config.in_chans // sar.shape[1], 1, 1)
        embeddings, dims = self.encoder.embeddings(images)
        out = self.encoder.encoder(
            embeddings,
            dims,
            output_hidden_states=True,
            output_hidden_states_before_downsampling=True,
        )
        skips = out.reshaped_hidden_states[1:]  # per stage, pre-merge, NCHW
        n = self.config.num_stages
        x = self.pred_target[0](skips[-1])
        for k in range(1, n + 1):
            x = self.pred_target[k](torch.cat([x, skips[n - k]], dim=1))
        for k in range(n + 1, self.num_blocks):
            x = self.pred_target[k](x)
        return self.pred_target[self.num_blocks](x)

    def load_exported(self, state: Mapping[str, np.ndarray]) -> None:
        """Loads a TYRION-format export (`export_torch_state(model, fmt="tyrion")`).

        Raises:
            ValueError: If a decoder/head tensor is missing or unexpected, or an encoder tensor
                other than HF's unused final LayerNorm is missing.
        """
        encoder, decoder = {}, {}
        for key, value in state.items():
            if not key.startswith(TYRION_PREFIX):
                raise ValueError(f"unexpected key {key!r}: not a segmenter (swin_unet.*) tensor")
            key = key[len(TYRION_PREFIX) :]
            (decoder if key.startswith("pred_target.") else encoder)[key] = value
        tensors = {
            k: torch.from_numpy(np.array(v, dtype=np.float32))
            for k, v in microsoft_to_hf_swinv2(encoder).items()
        }
        result = self.encoder.load_state_dict(tensors, strict=False)
        missing = set(result.missing_keys) - {"layernorm.weight", "layernorm.bias"}
        if missing or result.unexpected_keys:
            raise ValueError(
                f"encoder weights do not fit: missing {sorted(missing)}, "
                f"unexpected {sorted(result.unexpected_keys)}"
            )
        dec = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in decoder.items()}
        self.pred_target.load_state_dict(
            {k[len("pred_target.") :]: v for k, v in dec.items()}, strict=True
        )


def torch_segmenter_from_jax(model) -> TorchSegmenter:
    """A `TorchSegmenter` holding the parameters of the JAX `SSL4SARSegmenter` ``model``."""
    from ssl4sar_jax.models.convert_torch import export_torch_state

    torch_model = TorchSegmenter(model.config)
    torch_model.load_exported(export_torch_state(model, fmt="tyrion"))
    return torch_model
