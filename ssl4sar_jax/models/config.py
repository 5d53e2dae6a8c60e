"""Model configuration of the SSL4SAR hybrid network (SwinV2 encoder + residual CNN decoder).

`ModelConfig` is a frozen dataclass that holds every size of the network, so tests and demos
can build tiny variants of the same code. Two named variants exist:

* ``"paper"``: SwinV2-Tiny at 512x512 input, window 16, exactly as TYRION/SSL4SAR
  (50,033,614 parameters: encoder 27,576,618 + decoder and head 22,456,996).
* ``"tiny"``: 64x64 input, embed 32, window 4. It still exercises the shifted windows with
  the -100 mask (stages 0-1) and the window clamp rule (stages 2-3), for fast CPU tests.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_CONV_IMPLS = ("auto", "xla", "matmul_grad")
_UPSAMPLE_IMPLS = ("subpixel", "plain")
_ATTENTION_IMPLS = ("manual_vjp", "autodiff")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Every size and switch of the SSL4SAR network.

    Attributes:
        img_size: Input height and width in pixels (square; the reference asserts 512).
        patch_size: Patch-embedding kernel and stride (a power of two >= 2).
        in_chans: Channels the encoder's patch embedding expects (3: RGB-shaped ImageNet weights).
        sar_channels: Channels of the SAR input; they are replicated to ``in_chans`` in
            `expand_sar_channels` (the only place where this happens).
        embed_dim: Width of the first Swin stage; stage i has ``embed_dim * 2**i`` channels.
        depths: Swin blocks per stage.
        num_heads: Attention heads per stage.
        window_size: Attention window (clamped per stage to the token resolution).
        mlp_ratio: Hidden width of the Swin MLP relative to the stage width.
        num_classes: Output classes of the 1x1 segmentation head.
        decoder_dropout: Dropout rate inside the decoder ResnetBlocks (active only when an
            ``rngs`` is passed to ``__call__``).
        pretrained_window_sizes: Per-stage CPB normalisation window; 0 means "normalise by
            the stage's own window - 1" (TYRION default). The official SwinV2 fine-tuning
            recipe would use the pre-training window, e.g. (16, 16, 16, 8).
        dtype: Compute dtype name ("float32", "bfloat16", "float16"); parameters stay float32.
        res_post_norm_zero_init: If True, the two post-norm LayerNorms of every Swin block
            start at scale 0 (official SwinV2). TYRION's init order overwrites this, so the
            faithful default is False (scale 1).
        optical_channels: Sentinel-2 bands predicted by the pretraining heads (14).
        mim_reconstruction_channels: Channels of OptSimMIM's full-resolution bottleneck (3).
        learnable_mask_token: OptSimMIM mask token as a trainable parameter. TYRION freezes it
            at zero (default False: a constant zero, no parameter).
        conv_impl: "xla" (plain `lax.conv_general_dilated`), "matmul_grad" (custom VJP whose
            kernel gradient is a matmul; fast on CPU) or "auto" (matmul_grad on the CPU
            backend only).
        remat: Rematerialise Swin blocks and decoder blocks in the backward pass (saves
            activation memory on accelerators at ~30% extra compute).
        upsample_impl: How the decoder's "nearest x2 + 3x3 conv" is computed: "subpixel"
            (default; the same operator as four 2x2 phase convolutions at low resolution,
            2.25x fewer FLOPs, equal up to float32 rounding) or "plain" (upsample, then conv,
            as TYRION writes it). Parameters are the same for both.
        attention_impl: How the window attention's backward pass is computed: "manual_vjp"
            (default; a hand-written VJP of ``softmax(cos * scale + bias + mask) @ v`` whose
            position-bias gradient is a matmul with a ones vector instead of a reduction over
            the batch and windows, ~1.5x faster on CPU) or "autodiff" (JAX differentiates the
            forward). Same forward, gradients equal up to float32 rounding.
    """

    img_size: int = 512
    patch_size: int = 4
    in_chans: int = 3
    sar_channels: int = 1
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 16
    mlp_ratio: float = 4.0
    num_classes: int = 4
    decoder_dropout: float = 0.1
    pretrained_window_sizes: tuple[int, ...] = (0, 0, 0, 0)
    dtype: str = "float32"
    res_post_norm_zero_init: bool = False
    optical_channels: int = 14
    mim_reconstruction_channels: int = 3
    learnable_mask_token: bool = False
    conv_impl: str = "auto"
    remat: bool = False
    upsample_impl: str = "subpixel"
    attention_impl: str = "manual_vjp"

    def __post_init__(self) -> None:
        # Normalise sequences to tuples so the config stays hashable (it is static in jit).
        for name in ("depths", "num_heads", "pretrained_window_sizes"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        self.validate()

    # ------------------------------------------------------------------ derived sizes
    @property
    def num_stages(self) -> int:
        """Number of Swin stages."""
        return len(self.depths)

    @property
    def patch_grid(self) -> int:
        """Token grid side after the patch embedding (128 for the paper config)."""
        return self.img_size // self.patch_size

    def stage_dim(self, i: int) -> int:
        """Channels of Swin stage ``i``."""
        return self.embed_dim * 2**i

    def stage_resolution(self, i: int) -> int:
        """Token grid side of Swin stage ``i``."""
        return self.patch_grid // 2**i

    @property
    def bottleneck_dim(self) -> int:
        """Width of decoder block 0 (TYRION hard-codes 768 = 8 * 96 for the paper config)."""
        return self.stage_dim(self.num_stages - 1)

    @property
    def compute_dtype(self) -> Any:
        """The jnp dtype used for activations."""
        return _DTYPES[self.dtype]

    def use_matmul_grad_conv(self) -> bool:
        """Whether convolutions use the custom-VJP kernel-gradient-as-matmul path."""
        if self.conv_impl == "auto":
            return jax.default_backend() == "cpu"
        return self.conv_impl == "matmul_grad"

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raises ValueError if the sizes are inconsistent."""
        n = len(self.depths)
        if n < 1:
            raise ValueError("ModelConfig.depths must name at least one stage")
        if len(self.num_heads) != n or len(self.pretrained_window_sizes) != n:
            raise ValueError(
                f"ModelConfig: depths {self.depths}, num_heads {self.num_heads} and "
                f"pretrained_window_sizes {self.pretrained_window_sizes} must have equal length"
            )
        if self.patch_size < 2 or self.patch_size & (self.patch_size - 1):
            raise ValueError(
                f"ModelConfig.patch_size must be a power of two >= 2, got {self.patch_size}"
            )
        if self.img_size % (self.patch_size * 2 ** (n - 1)):
            raise ValueError(
                f"ModelConfig.img_size {self.img_size} must be divisible by "
                f"patch_size * 2**(stages-1) = {self.patch_size * 2 ** (n - 1)}"
            )
        for i in range(n):
            dim, heads = self.stage_dim(i), self.num_heads[i]
            if dim % heads:
                raise ValueError(f"stage {i}: width {dim} not divisible by {heads} heads")
            res = self.stage_resolution(i)
            window = min(self.window_size, res)
            if res % window:
                raise ValueError(
                    f"stage {i}: token resolution {res} is not a multiple of the window {window}"
                )
        for c in self.decoder_channels():
            groups = min(32, c)
            if c % groups:
                raise ValueError(
                    f"decoder width {c} is not divisible into {groups} GroupNorm groups"
                )
        if self.dtype not in _DTYPES:
            raise ValueError(
                f"ModelConfig.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}"
            )
        if self.conv_impl not in _CONV_IMPLS:
            raise ValueError(
                f"ModelConfig.conv_impl must be one of {_CONV_IMPLS}, got {self.conv_impl!r}"
            )
        if self.upsample_impl not in _UPSAMPLE_IMPLS:
            raise ValueError(
                f"ModelConfig.upsample_impl must be one of {_UPSAMPLE_IMPLS}, "
                f"got {self.upsample_impl!r}"
            )
        if self.attention_impl not in _ATTENTION_IMPLS:
            raise ValueError(
                f"ModelConfig.attention_impl must be one of {_ATTENTION_IMPLS}, "
                f"got {self.attention_impl!r}"
            )
        if self.sar_channels not in (1, self.in_chans):
            raise ValueError(
                f"ModelConfig.sar_channels must be 1 or in_chans={self.in_chans}, got {self.sar_channels}"
            )

    def decoder_channels(self) -> list[int]:
        """Output width of every decoder block, in forward order (paper: 768,384,192,96,96,96)."""
        out = [self.bottleneck_dim]
        for i in reversed(range(self.num_stages)):
            dim = self.stage_dim(i)
            out.append(dim // 2 if i != 0 else dim)
        out += [self.embed_dim] * self.num_extra_upsample_blocks
        return out

    @property
    def num_extra_upsample_blocks(self) -> int:
        """Decoder blocks after the U-Net part that undo the patch stride (paper: 1).

        The stage loop upsamples ``num_stages`` times (one more than the merges), so
        ``log2(patch_size) - 1`` extra x2 blocks reach the input resolution.
        """
        return int(math.log2(self.patch_size)) - 1

    # ------------------------------------------------------------------ variants
    @classmethod
    def named(cls, name: str, **overrides: Any) -> ModelConfig:
        """Returns a named variant ("paper" or "tiny"), optionally with field overrides."""
        if name not in VARIANTS:
            raise ValueError(f"unknown model variant {name!r}; known: {sorted(VARIANTS)}")
        fields = dict(VARIANTS[name])
        fields.update(overrides)
        return cls(**fields)

    def replace(self, **overrides: Any) -> ModelConfig:
        """Returns a copy with some fields changed."""
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for logging and configs)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; unknown keys raise ValueError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}")
        return cls(**values)


VARIANTS: dict[str, dict[str, Any]] = {
    # SwinV2-T at 512 x 512, window 16 (TYRION Config/model/Tyrion.yaml).
    "paper": {},
    # 64 x 64 input, 16 x 16 tokens; window 4 gives 16/4 windows with shift 2 and the -100 mask
    # in stages 0-1, and the clamp rule (one window, no shift) in stages 2 (4x4) and 3 (2x2).
    "tiny": dict(
        img_size=64,
        embed_dim=32,
        depths=(2, 2, 2, 2),
        num_heads=(2, 2, 4, 4),
        window_size=4,
    ),
}


def as_config(config: ModelConfig | str | dict[str, Any] | None) -> ModelConfig:
    """Coerces a variant name, a dict of fields or None ("paper") to a `ModelConfig`."""
    if config is None:
        return ModelConfig.named("paper")
    if isinstance(config, ModelConfig):
        return config
    if isinstance(config, str):
        return ModelConfig.named(config)
    if isinstance(config, dict):
        return ModelConfig.from_dict(config)
    raise TypeError(f"expected ModelConfig, variant name or dict, got {type(config).__name__}")
