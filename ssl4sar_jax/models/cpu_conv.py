"""2-D convolution with an optional CPU-friendly backward pass.

On the XLA CPU backend (jax 0.10) the kernel-gradient convolution of a 3x3 conv runs at
roughly a sixth of the forward speed (measured ~21 vs ~128 GFLOP/s for 96->96 channels at
2x256x256), while a plain matmul runs near peak. `conv2d_matmul_grad` is a `jax.custom_vjp`
convolution whose forward pass and input gradient are XLA's own convolutions, and whose
kernel gradient is computed as ``kh * kw`` shifted matmuls::

    dK[i, j] = sum_b sum_{y, x} pad(x)[b, y + i, x + j, :]^T  g[b, y, x, :]     [Cin, Cout]

This is the same sum XLA computes, in a different order, so the gradients agree to float32
rounding. It only supports stride 1 with symmetric "same" padding (every 3x3 and 1x1 conv of
the decoder). It is selected by `ModelConfig.conv_impl` ("auto" = CPU backend only) and reaches
the model's ``nnx.Conv`` layers as their injected ``conv_general_dilated``
(`conv_general_dilated_matmul_grad`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

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


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv2d_matmul_grad(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """Stride-1 convolution whose kernel gradient is a sum of shifted matmuls.

    Args:
        x: Input ``[B, H, W, Cin]``.
        kernel: Kernel ``[kh, kw, Cin, Cout]`` with ``kh == kw == 2 * padding + 1``.
        padding: Symmetric zero padding ("same" output size).

    Returns:
        ``[B, H, W, Cout]``; values and gradients equal `conv2d_xla` up to float32 rounding.
    """
    return conv2d_xla(x, kernel, 1, padding)


def _fwd(x: jax.Array, kernel: jax.Array, padding: int):
    return conv2d_xla(x, kernel, 1, padding), (x, kernel)


def _bwd(padding: int, residuals, g: jax.Array):
    x, kernel = residuals
    # Input gradient: XLA's transposed convolution is already fast on CPU.
    _, input_vjp = jax.vjp(lambda inp: conv2d_xla(inp, kernel, 1, padding), x)
    (dx,) = input_vjp(g)
    kh, kw, cin, cout = kernel.shape
    height, width = g.shape[1], g.shape[2]
    batch = x.shape[0]
    g2 = g.reshape(batch, height * width, cout)
    if kh == kw == 1:  # 1x1: a single matmul, no padding or shifting
        per_sample = lax.dot_general(
            x.reshape(batch, height * width, cin),
            g2,
            (((1,), (1,)), ((0,), (0,))),
            preferred_element_type=jnp.float32,
        )
        return dx.astype(x.dtype), per_sample.sum(axis=0).reshape(kernel.shape).astype(kernel.dtype)
    x_padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

    def tap(offset: jax.Array) -> jax.Array:
        shifted = lax.dynamic_slice(
            x_padded, (0, offset[0], offset[1], 0), (batch, height, width, cin)
        ).reshape(batch, height * width, cin)
        # Per sample [Cin, H*W] @ [H*W, Cout], then a sum over the batch. Keeping the batch
        # as a dot_general batch axis (instead of contracting B*H*W at once) lets JAX infer
        # the sharding of a batch-sharded input (the sum becomes an all-reduce).
        per_sample = lax.dot_general(
            shifted, g2, (((1,), (1,)), ((0,), (0,))), preferred_element_type=jnp.float32
        )
        return per_sample.sum(axis=0)

    # lax.map runs the taps one after the other, so only one shifted copy of the input is
    # alive at a time (unrolled, XLA kept all kh*kw copies: +1.7 GB at 512 x 512).
    offsets = jnp.asarray([(i, j) for i in range(kh) for j in range(kw)], jnp.int32)
    dk = lax.map(tap, offsets).reshape(kh, kw, cin, cout).astype(kernel.dtype)
    return dx.astype(x.dtype), dk


conv2d_matmul_grad.defvjp(_fwd, _bwd)


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
