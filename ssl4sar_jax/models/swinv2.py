"""SwinV2 encoder (NHWC), as used by SSL4SAR (Nora-Go/TYRION ``SwinV2.py`` and
``SwinV2Modules.py``; SwinV2 of Liu et al. 2022).

Shapes for the paper configuration (512 x 512 input, patch 4, window 16):

=====  ==========  =====  =====  ======================  ========  ==================
stage  tokens      C      heads  window/shift per block  #windows  skip (pre-merge)
=====  ==========  =====  =====  ======================  ========  ==================
0      128 x 128   96     3      16/0, 16/8              64        [B, 128, 128, 96]
1      64 x 64     192    6      16/0, 16/8              16        [B, 64, 64, 192]
2      32 x 32     384    12     16/0, 16/8 (x3)         4         [B, 32, 32, 384]
3      16 x 16     768    24     16/0, 16/0 (clamp)      1         [B, 16, 16, 768]
=====  ==========  =====  =====  ======================  ========  ==================

Faithful details: post-norm residual blocks (attention and MLP run on un-normalised input,
their outputs are LayerNorm-ed before the residual add); cosine attention with a learnable
per-head logit scale clamped at ln(100); continuous relative position bias (CPB: an MLP over
log-spaced relative coordinates, then 16*sigmoid); q and v biases but no k bias; cyclic shift
with a -100 mask; the window clamp rule (window >= resolution -> one window, no shift);
patch merging in the V2 order (reduce, then LayerNorm) with sub-grids ordered
(even row, even col), (odd row, even col), (even row, odd col), (odd row, odd col).

The relative coordinate table, relative position index and shift masks are NumPy constants
computed from the static sizes (cached), not parameters: optimisers and checkpoints never
see them.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from ssl4sar_jax.models.config import ModelConfig
from ssl4sar_jax.models.cpu_conv import contraction_out_sharding
from ssl4sar_jax.models.layers import conv2d_layer, layer_norm, trunc_normal_linear

LOGIT_SCALE_MAX = math.log(1.0 / 0.01)  # ln(100): clamp of the learnable attention scale
LOGIT_SCALE_INIT = math.log(10.0)
MASK_VALUE = -100.0  # added to logits of token pairs from different shift regions
CPB_HIDDEN = 512
NORMALIZE_EPS = 1e-12  # F.normalize


# ----------------------------------------------------------------------------- constants
def effective_window_and_shift(
    resolution: int, window_size: int, block_index: int
) -> tuple[int, int]:
    """Window clamp rule of the reference SwinTransformerBlock.

    Args:
        resolution: Token grid side of the stage.
        window_size: Configured window.
        block_index: Index of the block in its stage (odd blocks are shifted).

    Returns:
        ``(window, shift)``: if ``resolution <= window_size`` the window becomes the whole
        grid and the shift 0; otherwise odd blocks shift by ``window_size // 2``.
    """
    if resolution <= window_size:
        return resolution, 0
    return window_size, (window_size // 2 if block_index % 2 else 0)


@functools.cache
def relative_coords_table(window: int, pretrained_window: int) -> np.ndarray:
    """Log-spaced relative coordinates fed to the CPB MLP.

    Args:
        window: Effective window side W.
        pretrained_window: Normalisation window (0: use ``window`` itself).

    Returns:
        float32 ``[2W-1, 2W-1, 2]`` (dy, dx), values in +-1.0566 when normalised by W-1.
    """
    rel = np.arange(-(window - 1), window, dtype=np.float64)
    table = np.stack(np.meshgrid(rel, rel, indexing="ij"), axis=-1)  # [2W-1, 2W-1, 2]
    norm = (pretrained_window if pretrained_window > 0 else window) - 1
    if norm > 0:
        table = table / norm
    table = table * 8.0
    table = np.sign(table) * np.log2(np.abs(table) + 1.0) / np.log2(8.0)
    return table.astype(np.float32)


@functools.cache
def relative_position_index(window: int) -> np.ndarray:
    """Index into the flattened (2W-1)^2 table for every token pair of a window.

    Returns:
        int32 ``[W*W, W*W]`` with entry ``(dy + W - 1) * (2W - 1) + (dx + W - 1)`` where
        ``(dy, dx) = coord_i - coord_j`` and tokens are row-major inside the window.
    """
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
    coords = coords.reshape(2, -1)  # [2, N]
    rel = coords[:, :, None] - coords[:, None, :]  # [2, N, N]
    index = (rel[0] + window - 1) * (2 * window - 1) + (rel[1] + window - 1)
    return index.astype(np.int32)


@functools.cache
def shift_attention_mask(resolution: int, window: int, shift: int) -> np.ndarray:
    """The -100 mask of shifted-window attention.

    Args:
        resolution: Token grid side (square).
        window: Window side.
        shift: Cyclic shift (> 0).

    Returns:
        float32 ``[nW, W*W, W*W]``: 0 for token pairs in the same region, -100 otherwise;
        windows ordered row-major over the grid.
    """
    region = np.zeros((resolution,), np.int64)
    region[resolution - window :] = 1
    region[resolution - shift :] = 2
    labels = region[:, None] * 3 + region[None, :]  # [R, R], 9 regions
    n = resolution // window
    windows = labels.reshape(n, window, n, window).transpose(0, 2, 1, 3).reshape(n * n, -1)
    mask = np.where(windows[:, :, None] != windows[:, None, :], MASK_VALUE, 0.0)
    return mask.astype(np.float32)


# ----------------------------------------------------------------------------- windows
# Every reshape below splits or merges ONE axis at a time: with a batch-sharded input under
# an Explicit-axes mesh (the jax.make_mesh default in jax 0.10), JAX cannot infer the output
# sharding of a reshape that splits or merges several axes at once.
def window_partition(x: jax.Array, window: int) -> jax.Array:
    """``[B, H, W, C]`` -> ``[B, nW, window*window, C]`` (windows row-major, tokens row-major)."""
    b, h, w, c = x.shape
    nh, nw = h // window, w // window
    x = x.reshape(b, nh, window, w, c).reshape(b, nh, window, nw, window, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # [B, nh, nw, window, window, C]
    x = x.reshape(b, nh * nw, window, window, c)
    return x.reshape(b, nh * nw, window * window, c)


def window_reverse(windows: jax.Array, window: int, height: int, width: int) -> jax.Array:
    """Inverse of `window_partition`: ``[B, nW, window*window, C]`` -> ``[B, H, W, C]``."""
    b, n_windows, _, c = windows.shape
    nh, nw = height // window, width // window
    x = windows.reshape(b, n_windows, window, window, c).reshape(b, nh, nw, window, window, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # [B, nh, window, nw, window, C]
    x = x.reshape(b, height, nw, window, c)
    return x.reshape(b, height, width, c)


# ----------------------------------------------------------------------------- modules
class PatchEmbed(nnx.Module):
    """Conv(patch x patch, stride patch) + LayerNorm: ``[B, H, W, Cin] -> [B, H/p, W/p, D]``."""

    def __init__(
        self, in_chans: int, embed_dim: int, patch_size: int, *, dtype: Any = None, rngs: nnx.Rngs
    ):
        self.proj = conv2d_layer(
            in_chans, embed_dim, patch_size, stride=patch_size, dtype=dtype, rngs=rngs
        )
        self.norm = layer_norm(embed_dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.norm(self.proj(x))


def _l2_normalize(x: jax.Array) -> jax.Array:
    """``x / max(||x||, eps)`` over the last axis, like torch ``F.normalize``.

    The norm is taken as ``sqrt(max(sum(x^2), eps^2))`` rather than ``jnp.linalg.norm``: the
    latter's gradient is 0/0 = NaN for an all-zero vector, which OptSimMIM produces (masked tokens
    are exactly zero and k has no bias). Both give the same forward values.
    """
    sum_sq = jnp.sum(x * x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sum_sq, NORMALIZE_EPS**2))


def _attention_forward(qn, kn, v, bias, scale, mask):
    dt = v.dtype
    cos = jnp.einsum(
        "bwqhd,bwkhd->bwhqk", qn.astype(dt), kn.astype(dt), preferred_element_type=jnp.float32
    )
    logits = cos * scale[:, None, None] + bias
    if mask is not None:
        logits = logits + mask[None, :, None]
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("bwhqk,bwkhd->bwqhd", probs.astype(dt), v)
    return out, cos, probs


def cosine_attention_autodiff(
    qn: jax.Array,
    kn: jax.Array,
    v: jax.Array,
    bias: jax.Array,
    scale: jax.Array,
    mask: jax.Array | None,
) -> jax.Array:
    """``softmax(cos(q, k) * scale + bias + mask) @ v``, differentiated by JAX.

    Args:
        qn: L2-normalised queries ``[B, nW, N, h, d]`` (float32).
        kn: L2-normalised keys ``[B, nW, N, h, d]`` (float32).
        v: Values ``[B, nW, N, h, d]`` in the compute dtype (which the matmuls use).
        bias: Relative position bias ``[h, N, N]`` (float32).
        scale: Per-head logit scale ``[h]`` (float32, already exponentiated).
        mask: Additive shift mask ``[nW, N, N]`` (a constant) or None.

    Returns:
        ``[B, nW, N, h, d]`` in the compute dtype.
    """
    return _attention_forward(qn, kn, v, bias, scale, mask)[0]


@jax.custom_vjp
def cosine_attention_manual_vjp(qn, kn, v, bias, scale, mask):
    """`cosine_attention_autodiff` with a hand-written backward pass (same arguments).

    JAX's own backward sums the logits' gradient over the batch and the windows for the
    position bias as a reduction fusion, which XLA CPU runs slowly (with the softmax backward
    fused in: ~17 % of the paper model's train step, ``benchmarks/op_profile.py``). Here the
    softmax backward is computed once and the bias gradient is a matmul with a ones vector.
    The mask gets no gradient (a constant).
    """
    return _attention_forward(qn, kn, v, bias, scale, mask)[0]


def _attention_vjp_fwd(qn, kn, v, bias, scale, mask):
    out, cos, probs = _attention_forward(qn, kn, v, bias, scale, mask)
    return out, (qn, kn, v, scale, mask, cos, probs)


def _attention_vjp_bwd(residuals, g):
    qn, kn, v, scale, mask, cos, probs = residuals
    dt = v.dtype
    g = g.astype(dt)
    dv = jnp.einsum("bwhqk,bwqhd->bwkhd", probs.astype(dt), g)
    dprobs = jnp.einsum("bwqhd,bwkhd->bwhqk", g, v, preferred_element_type=jnp.float32)
    dlogits = probs * (dprobs - jnp.sum(probs * dprobs, axis=-1, keepdims=True))
    batch, windows = dlogits.shape[:2]
    dbias = lax.dot_general(
        jnp.ones((batch, windows), jnp.float32),
        dlogits,
        (((0, 1), (0, 1)), ((), ())),
        out_sharding=contraction_out_sharding(dlogits, (0, 1)),
    )
    dscale = jnp.einsum(
        "bwhqk,bwhqk->h", dlogits, cos, out_sharding=contraction_out_sharding(dlogits, (0, 1))
    )
    dcos = (dlogits * scale[:, None, None]).astype(dt)
    dqn = jnp.einsum("bwhqk,bwkhd->bwqhd", dcos, kn.astype(dt), preferred_element_type=jnp.float32)
    dkn = jnp.einsum("bwhqk,bwqhd->bwkhd", dcos, qn.astype(dt), preferred_element_type=jnp.float32)
    dmask = None if mask is None else jnp.zeros_like(mask)
    return (
        dqn.astype(qn.dtype),
        dkn.astype(kn.dtype),
        dv.astype(v.dtype),
        dbias,
        dscale.astype(scale.dtype),
        dmask,
    )


cosine_attention_manual_vjp.defvjp(_attention_vjp_fwd, _attention_vjp_bwd)

_ATTENTION_CORES = {
    "manual_vjp": cosine_attention_manual_vjp,
    "autodiff": cosine_attention_autodiff,
}


class WindowAttention(nnx.Module):
    """SwinV2 cosine window attention with continuous relative position bias.

    Parameters: ``qkv.kernel [C, 3C]`` (no bias), ``q_bias [C]``, ``v_bias [C]``,
    ``logit_scale [heads]``, ``cpb_mlp_0`` (Linear 2->512 with bias), ``cpb_mlp_2``
    (Linear 512->heads, no bias), ``proj`` (Linear C->C with bias).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window: int,
        pretrained_window: int,
        *,
        dtype: Any = None,
        attention_impl: str = "manual_vjp",
        rngs: nnx.Rngs,
    ):
        self.dim = dim
        self.num_heads = num_heads
        self.attention_impl = attention_impl
        self.window = window
        self.pretrained_window = pretrained_window
        self.dtype = dtype
        self.logit_scale = nnx.Param(jnp.full((num_heads,), LOGIT_SCALE_INIT, jnp.float32))
        self.cpb_mlp_0 = trunc_normal_linear(2, CPB_HIDDEN, rngs=rngs)
        self.cpb_mlp_2 = trunc_normal_linear(CPB_HIDDEN, num_heads, use_bias=False, rngs=rngs)
        self.qkv = trunc_normal_linear(dim, 3 * dim, use_bias=False, dtype=dtype, rngs=rngs)
        self.q_bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.v_bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.proj = trunc_normal_linear(dim, dim, dtype=dtype, rngs=rngs)

    def position_bias(self) -> jax.Array:
        """``16 * sigmoid(CPB)`` as ``[heads, N, N]`` float32 (N = window^2)."""
        table = jnp.asarray(relative_coords_table(self.window, self.pretrained_window))
        hidden = jax.nn.relu(self.cpb_mlp_0(table.reshape(-1, 2)))
        bias_table = self.cpb_mlp_2(hidden)  # [(2W-1)^2, heads]
        index = relative_position_index(self.window)
        bias = bias_table[index.reshape(-1)].reshape(index.shape + (self.num_heads,))
        return 16.0 * jax.nn.sigmoid(jnp.transpose(bias, (2, 0, 1)))

    def __call__(self, windows: jax.Array, mask: np.ndarray | None) -> jax.Array:
        """Attention inside every window.

        Args:
            windows: ``[B, nW, N, C]`` tokens of each window.
            mask: ``[nW, N, N]`` additive shift mask or None.

        Returns:
            ``[B, nW, N, C]``.
        """
        b, nw, n, c = windows.shape
        h, d = self.num_heads, c // self.num_heads
        # SwinV2 has q and v biases but no k bias.
        k_bias = jnp.zeros((c,), jnp.float32)
        qkv_bias = jnp.concatenate([self.q_bias[...], k_bias, self.v_bias[...]])
        qkv = self.qkv(windows) + qkv_bias.astype(windows.dtype)
        qkv = qkv.reshape(b, nw, n, 3, h, d)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]  # [B, nW, N, h, d]
        # Cosine similarity in float32 (the logits reach +-100 after scaling).
        qn = _l2_normalize(q.astype(jnp.float32))
        kn = _l2_normalize(k.astype(jnp.float32))
        scale = jnp.exp(jnp.minimum(self.logit_scale[...], LOGIT_SCALE_MAX))
        core = _ATTENTION_CORES[self.attention_impl]
        out = core(
            qn, kn, v, self.position_bias(), scale, None if mask is None else jnp.asarray(mask)
        )
        return self.proj(out.reshape(b, nw, n, c))


class Mlp(nnx.Module):
    """Linear(C -> rC) -> exact GELU -> Linear(rC -> C)."""

    def __init__(self, dim: int, hidden: int, *, dtype: Any = None, rngs: nnx.Rngs):
        self.fc1 = trunc_normal_linear(dim, hidden, dtype=dtype, rngs=rngs)
        self.fc2 = trunc_normal_linear(hidden, dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class SwinV2Block(nnx.Module):
    """Post-norm Swin block: ``x + LN1(attn(x))``, then ``x + LN2(mlp(x))``; ``[B, H, W, C]``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        resolution: int,
        window_size: int,
        block_index: int,
        pretrained_window: int,
        mlp_ratio: float,
        *,
        zero_init_norms: bool = False,
        dtype: Any = None,
        attention_impl: str = "manual_vjp",
        rngs: nnx.Rngs,
    ):
        self.resolution = resolution
        self.window, self.shift = effective_window_and_shift(resolution, window_size, block_index)
        self.attn = WindowAttention(
            dim,
            num_heads,
            self.window,
            pretrained_window,
            dtype=dtype,
            attention_impl=attention_impl,
            rngs=rngs,
        )
        self.norm1 = layer_norm(dim, zero_init=zero_init_norms, dtype=dtype, rngs=rngs)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)
        self.norm2 = layer_norm(dim, zero_init=zero_init_norms, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        _, h, w, _ = x.shape
        shifted = jnp.roll(x, (-self.shift, -self.shift), axis=(1, 2)) if self.shift else x
        mask = shift_attention_mask(h, self.window, self.shift) if self.shift else None
        attn = self.attn(window_partition(shifted, self.window), mask)
        attn = window_reverse(attn, self.window, h, w)
        if self.shift:
            attn = jnp.roll(attn, (self.shift, self.shift), axis=(1, 2))
        x = x + self.norm1(attn)
        return x + self.norm2(self.mlp(x))


class PatchMerging(nnx.Module):
    """2x2 merge in the V2 order: concat sub-grids -> Linear(4C -> 2C, no bias) -> LayerNorm."""

    def __init__(self, dim: int, *, dtype: Any = None, rngs: nnx.Rngs):
        self.reduction = trunc_normal_linear(
            4 * dim, 2 * dim, use_bias=False, dtype=dtype, rngs=rngs
        )
        self.norm = layer_norm(2 * dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """``[B, H, W, C]`` -> ``[B, H/2, W/2, 2C]``."""
        x0 = x[:, 0::2, 0::2]
        x1 = x[:, 1::2, 0::2]
        x2 = x[:, 0::2, 1::2]
        x3 = x[:, 1::2, 1::2]
        return self.norm(self.reduction(jnp.concatenate([x0, x1, x2, x3], axis=-1)))


class SwinV2Stage(nnx.Module):
    """A stack of Swin blocks followed by an optional patch merge."""

    def __init__(self, config: ModelConfig, index: int, *, rngs: nnx.Rngs):
        dim = config.stage_dim(index)
        dtype = config.compute_dtype
        self.remat = config.remat
        self.blocks = nnx.List(
            [
                SwinV2Block(
                    dim,
                    config.num_heads[index],
                    config.stage_resolution(index),
                    config.window_size,
                    j,
                    config.pretrained_window_sizes[index],
                    config.mlp_ratio,
                    zero_init_norms=config.res_post_norm_zero_init,
                    dtype=dtype,
                    attention_impl=config.attention_impl,
                    rngs=rngs,
                )
                for j in range(config.depths[index])
            ]
        )
        last = index == config.num_stages - 1
        self.downsample = None if last else PatchMerging(dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Returns ``(x_after_merge, x_before_merge)`` (the same array for the last stage)."""
        for block in self.blocks:
            x = nnx.remat(block)(x) if self.remat else block(x)
        skip = x
        if self.downsample is not None:
            x = self.downsample(x)
        return x, skip


class SwinV2Encoder(nnx.Module):
    """Patch embedding + Swin stages; returns the pre-merge feature of every stage."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.patch_embed = PatchEmbed(
            config.in_chans,
            config.embed_dim,
            config.patch_size,
            dtype=config.compute_dtype,
            rngs=rngs,
        )
        self.layers = nnx.List(
            [SwinV2Stage(config, i, rngs=rngs) for i in range(config.num_stages)]
        )

    def embed(self, images: jax.Array) -> jax.Array:
        """Patch embedding: ``[B, H, W, in_chans]`` -> ``[B, H/p, W/p, D]``."""
        return self.patch_embed(images.astype(self.config.compute_dtype))

    def stages(self, tokens: jax.Array) -> list[jax.Array]:
        """Runs all stages on embedded tokens ``[B, h, w, D]``.

        Returns:
            Skips ``[s0, ..., s_{L-1}]``, s_i of shape ``[B, h/2^i, w/2^i, D*2^i]``.
        """
        skips = []
        x = tokens
        for stage in self.layers:
            x, skip = stage(x)
            skips.append(skip)
        return skips

    def __call__(self, images: jax.Array) -> list[jax.Array]:
        """``[B, H, W, in_chans]`` -> list of pre-merge stage features (see `stages`)."""
        return self.stages(self.embed(images))
