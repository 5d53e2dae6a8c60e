"""2-D convolution with an optional CPU-friendly backward pass.

On the XLA CPU backend (jax 0.10) the kernel-gradient convolution of a 3x3 conv runs at
roughly a sixth of the forward speed (measured ~21 vs ~128 GFLOP/s for 96->96 channels at
2x256x256), while a plain matmul runs near peak. `conv2d_matmul_grad` is a `jax.custom_vjp`
convolution whose forward pass and input gradient are XLA's own convolutions (matmuls over
the channels for a 1x1 kernel), and whose kernel gradient is computed as ``kh * kw`` shifted
matmuls::

    dK[i, j] = sum_b sum_{y, x} pad(x)[b, y + i, x + j, :]^T  g[b, y, x, :]     [Cin, Cout]

This is the same sum XLA computes, in a different order, so the gradients agree to float32
rounding. It supports stride 1, undilated, with any kernel size and any zero padding (every
3x3 and 1x1 conv of the decoder, and the 2x2 phase convolution of its sub-pixel upsampling,
`ssl4sar_jax.models.decoder.upsample2x_conv`). It is selected by `ModelConfig.conv_impl`
("auto" = CPU backend only) and reaches the model's ``nnx.Conv`` layers as their injected
``conv_general_dilated`` (`conv_general_dilated_matmul_grad`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def conv2d_xla(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
    """Plain XLA convolution.

    Args:
        x: Input ``[B, H, W, Cin]``.
        kernel: Kernel ``[kh, kw, Cin, Cout]``.
        stride: Stride in both spatial directions.
        padding: Zero padding on every side.

    Returns:
        ``[B, H', W', Cout]`` in the promoted dtype of ``x`` and ``kernel``.
    """
    return lax.conv_general_dilated(
        x,
        kernel,
        window_strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        dimension_numbers=_DIMENSION_NUMBERS,
    )


PaddingPairs = tuple[tuple[int, int], tuple[int, int]]


def padding_pairs(padding: int | Sequence[Sequence[int]]) -> PaddingPairs:
    """``p`` or ``((top, bottom), (left, right))`` -> ``((top, bottom), (left, right))``."""
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    (top, bottom), (left, right) = padding
    return ((int(top), int(bottom)), (int(left), int(right)))


def _conv_padded(x: jax.Array, kernel: jax.Array, padding: PaddingPairs) -> jax.Array:
    return lax.conv_general_dilated(
        x, kernel, window_strides=(1, 1), padding=padding, dimension_numbers=_DIMENSION_NUMBERS
    )


def conv2d_matmul_grad(
    x: jax.Array, kernel: jax.Array, padding: int | Sequence[Sequence[int]]
) -> jax.Array:
    """Stride-1 convolution whose kernel gradient is a sum of shifted matmuls.

    Args:
        x: Input ``[B, H, W, Cin]``.
        kernel: Kernel ``[kh, kw, Cin, Cout]`` of any size.
        padding: Zero padding, ``p`` on every side or ``((top, bottom), (left, right))``.

    Returns:
        ``[B, H + top + bottom - kh + 1, W + left + right - kw + 1, Cout]``; values and
        gradients equal XLA's convolution up to float32 rounding.
    """
    return _conv2d_matmul_grad(x, kernel, padding_pairs(padding))


def _is_pointwise(kernel: jax.Array, padding: PaddingPairs) -> bool:
    return kernel.shape[:2] == (1, 1) and padding == ((0, 0), (0, 0))


def _pointwise(x: jax.Array, weight: jax.Array) -> jax.Array:
    """``[B, H, W, Cin] x [Cin, Cout] -> [B, H, W, Cout]`` as a matmul over the channels."""
    return lax.dot_general(x, weight, (((3,), (0,)), ((), ())))


def _conv_forward(x: jax.Array, kernel: jax.Array, padding: PaddingPairs) -> jax.Array:
    # A 1x1 convolution is a matmul over the channels; XLA CPU's convolution runs it far
    # slower when few output channels remain (the 96 -> 4 zone head at 512^2: 98 vs 15 ms).
    if _is_pointwise(kernel, padding):
        return _pointwise(x, kernel[0, 0])
    return _conv_padded(x, kernel, padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv2d_matmul_grad(x: jax.Array, kernel: jax.Array, padding: PaddingPairs) -> jax.Array:
    return _conv_forward(x, kernel, padding)


def _fwd(x: jax.Array, kernel: jax.Array, padding: PaddingPairs):
    return _conv_forward(x, kernel, padding), (x, kernel)


# Below this many pixels per sample the kernel gradient contracts the batch and the pixels in
# one matmul; above it, it is a per-sample matmul followed by a sum over the batch. XLA CPU lowers
# the per-sample form of small maps to a slow reduction fusion (on the tiny model's 2x2 - 8x8
# decoder maps it was 38 % of the train step, benchmarks/op_profile.py), while for large maps the
# per-sample matmuls are up to 2x faster than the joint contraction (measured 19 vs 44 ms for
# 2 x 256^2 x 96 -> 96; 3 vs 1.2 ms for 4 x 16^2 x 256 -> 256, AVX-512 AMD EPYC).
_JOINT_CONTRACTION_MAX_PIXELS = 16 * 16


def _kernel_grad_matmul(x: jax.Array, g: jax.Array) -> jax.Array:
    """``[B, N, Cin] x [B, N, Cout] -> [Cin, Cout]`` in float32, summed over B and N.

    The batch stays its own (unmerged) axis in both forms, so a batch-sharded input keeps an
    inferable sharding: the sum over a sharded batch becomes partial sums + an all-reduce.
    """
    if x.shape[1] > _JOINT_CONTRACTION_MAX_PIXELS:
        per_sample = lax.dot_general(
            x, g, (((1,), (1,)), ((0,), (0,))), preferred_element_type=jnp.float32
        )
        return per_sample.sum(axis=0)
    return lax.dot_general(
        x,
        g,
        (((0, 1), (0, 1)), ((), ())),
        preferred_element_type=jnp.float32,
        out_sharding=contraction_out_sharding(x, (0, 1)),
    )


def contraction_out_sharding(x: jax.Array, contracted_axes: Sequence[int]) -> Any:
    """Output sharding of a contraction of ``x`` over ``contracted_axes``.

    Under an Explicit-axes mesh a contraction over a sharded axis needs its output sharding
    spelled out (here: replicated, e.g. a parameter gradient summed over the sharded batch);
    otherwise None lets JAX infer it.
    """
    sharding = jax.typeof(x).sharding
    spec = tuple(getattr(sharding, "spec", ()))
    if any(a < len(spec) and spec[a] is not None for a in contracted_axes):
        return NamedSharding(sharding.mesh, PartitionSpec())
    return None


def _bwd(padding: PaddingPairs, residuals, g: jax.Array):
    x, kernel = residuals
    kh, kw, cin, cout = kernel.shape
    if _is_pointwise(kernel, padding):
        dx = _pointwise(g, kernel[0, 0].T)
    elif kh == kw and kh % 2 == 1 and padding == padding_pairs(kh // 2):
        # Input gradient of a "same" convolution: XLA's transposed convolution is fast on CPU.
        _, input_vjp = jax.vjp(lambda inp: _conv_padded(inp, kernel, padding), x)
        (dx,) = input_vjp(g)
    else:
        dx = _input_grad_col2im(g, kernel, padding, x.shape)
    height, width = g.shape[1], g.shape[2]
    batch = x.shape[0]
    g2 = g.reshape(batch, height * width, cout)
    if _is_pointwise(kernel, padding):  # a single matmul, no shifting
        dk = _kernel_grad_matmul(x.reshape(batch, height * width, cin), g2)
        return dx.astype(x.dtype), dk.reshape(kernel.shape).astype(kernel.dtype)
    x_padded = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))

    def tap(offset: jax.Array) -> jax.Array:
        shifted = lax.dynamic_slice(
            x_padded, (0, offset[0], offset[1], 0), (batch, height, width, cin)
        ).reshape(batch, height * width, cin)
        return _kernel_grad_matmul(shifted, g2)

    # lax.map runs the taps one after the other, so only one shifted copy of the input is
    # alive at a time (unrolled, XLA kept all kh*kw copies: +1.7 GB at 512 x 512).
    offsets = jnp.asarray([(i, j) for i in range(kh) for j in range(kw)], jnp.int32)
    dk = lax.map(tap, offsets).reshape(kh, kw, cin, cout).astype(kernel.dtype)
    return dx.astype(x.dtype), dk


def _input_grad_col2im(
    g: jax.Array, kernel: jax.Array, padding: PaddingPairs, x_shape: tuple[int, ...]
) -> jax.Array:
    """Input gradient as one matmul plus a shifted sum ("col2im").

    ``y[p] = sum_t pad(x)[p + t] K[t]`` gives ``d pad(x)[p + t] += g[p] K[t]^T``: one
    ``[B*H'*W', Cout] @ [Cout, kh*kw*Cin]`` matmul, then each tap's slice added at its offset.
    Used where XLA's CPU transposed convolution is slow (measured 39 GFLOP/s for the 2x2,
    384 -> 96 channel phase convolution of the sub-pixel upsampling, vs ~130 for a matmul).
    """
    kh, kw, cin, _ = kernel.shape
    (top, bottom), (left, right) = padding
    per_tap = jnp.einsum("bhwo,ijco->bhwijc", g, kernel, preferred_element_type=jnp.float32)
    dx_padded = None
    for i in range(kh):
        for j in range(kw):
            shifted = jnp.pad(
                per_tap[:, :, :, i, j], ((0, 0), (i, kh - 1 - i), (j, kw - 1 - j), (0, 0))
            )
            dx_padded = shifted if dx_padded is None else dx_padded + shifted
    height, width = x_shape[1], x_shape[2]
    return dx_padded[:, top : top + height, left : left + width].astype(g.dtype)


_conv2d_matmul_grad.defvjp(_fwd, _bwd)


def conv_general_dilated_matmul_grad(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Any,
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
    **kwargs: Any,
) -> jax.Array:
    """Drop-in ``lax.conv_general_dilated`` that takes `conv2d_matmul_grad` where it applies.

    Injected into ``nnx.Conv(conv_general_dilated=...)``: a 2-D, NHWC/HWIO, stride-1,
    undilated, ungrouped convolution with symmetric "same" padding goes through the custom
    VJP; everything else (strided patch embeddings, other layouts) is passed to
    ``lax.conv_general_dilated`` unchanged, as are the remaining keyword arguments.
    """
    plain = functools.partial(
        lax.conv_general_dilated,
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count,
        precision=precision,
        **kwargs,
    )
    if lhs.ndim != 4 or rhs.ndim != 4 or feature_group_count != 1 or precision is not None:
        return plain()
    if kwargs.get("preferred_element_type") is not None:
        return plain()
    nhwc = lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DIMENSION_NUMBERS)
    if lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != nhwc:
        return plain()
    kh, kw = rhs.shape[0], rhs.shape[1]
    ones = (1, 1)
    if tuple(window_strides) != ones or kh != kw or kh % 2 == 0:
        return plain()
    if tuple(lhs_dilation or ones) != ones or tuple(rhs_dilation or ones) != ones:
        return plain()
    pad = kh // 2
    if isinstance(padding, str) or [tuple(p) for p in padding] != [(pad, pad), (pad, pad)]:
        return plain()
    return conv2d_matmul_grad(lhs, rhs, pad)


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    stride: int = 1,
    padding: int = 0,
    matmul_grad: bool = False,
) -> jax.Array:
    """Convolution that dispatches to the CPU-friendly path where it applies.

    Args:
        x: Input ``[B, H, W, Cin]``.
        kernel: Kernel ``[kh, kw, Cin, Cout]``.
        stride: Stride in both directions.
        padding: Zero padding on every side.
        matmul_grad: Use `conv2d_matmul_grad` when the conv is stride 1 with "same" padding.

    Returns:
        ``[B, H', W', Cout]``.
    """
    kh, kw = kernel.shape[0], kernel.shape[1]
    same = stride == 1 and kh == kw == 2 * padding + 1
    if matmul_grad and same:
        return conv2d_matmul_grad(x, kernel, padding)
    return conv2d_xla(x, kernel, stride, padding)
