"""Shared building blocks: initialisers matching the PyTorch reference, convolutions, norms.

Initialisation (as Nora-Go/TYRION ``Tyrion.__init__`` / ``_init_weights``), all with
`jax.nn.initializers` / `jax.random`, so the whole model is drawn inside one jitted init (the
persistent compilation cache absorbs its compile time):

* Linear layers of the Swin encoder: weight ~ N(0, 0.02^2) truncated at +-2 (absolute, as
  timm's ``trunc_normal_``, i.e. +-100 sigma), bias 0 (`trunc_normal_linear`).
* Convolutions and pretraining-only layers: PyTorch's default, weight and bias
  ~ U(+-1/sqrt(fan_in)) (`torch_default_linear`, `conv2d_layer`).
* LayerNorm / GroupNorm: scale 1, bias 0. LayerNorm eps 1e-5 (PyTorch; flax default is 1e-6),
  GroupNorm eps 1e-6 with 32 groups.

Norms use the exact two-pass variance (``use_fast_variance=False``): post-norm Swin blocks
see activations with large means, where E[x^2] - E[x]^2 loses precision in float32.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ssl4sar_jax.models.cpu_conv import conv_general_dilated_matmul_grad

LAYER_NORM_EPS = 1e-5
GROUP_NORM_EPS = 1e-6
GROUP_NORM_GROUPS = 32


# PyTorch's default Linear/Conv init, kaiming_uniform_(a=sqrt(5)), is U(+-1/sqrt(fan_in)):
# variance 1 / (3 fan_in). Kernels are [..., in, out] (Dense [in, out], Conv [kh, kw, in, out]),
# which is the layout variance_scaling's fan_in (in_axis=-2, receptive field = leading axes)
# expects.
torch_default_kernel_init = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# timm's trunc_normal_(std=.02) cuts at absolute +-2, i.e. +-100 sigma: in effect N(0, 0.02^2).
# (jax.nn.initializers.truncated_normal(0.02) would cut at +-2 sigma and rescale, a different
# distribution, so the plain normal is the faithful one.)
trunc_normal_002 = jax.nn.initializers.normal(0.02)


def torch_default_bias_init(fan_in: int) -> nnx.Initializer:
    """PyTorch's default bias init U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def trunc_normal_linear(
    in_features: int,
    out_features: int,
    *,
    use_bias: bool = True,
    dtype: Any = None,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """Linear layer with the Swin init (trunc-normal 0.02 weight, zero bias)."""
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=dtype,
        kernel_init=trunc_normal_002,
        bias_init=nnx.initializers.zeros_init(),
        rngs=rngs,
    )


def torch_default_linear(
    in_features: int,
    out_features: int,
    *,
    use_bias: bool = True,
    dtype: Any = None,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """Linear layer with PyTorch's default init (pretraining-only heads)."""
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=use_bias,
        dtype=dtype,
        kernel_init=torch_default_kernel_init,
        bias_init=torch_default_bias_init(in_features),
        rngs=rngs,
    )


def layer_norm(
    num_features: int, *, zero_init: bool = False, dtype: Any = None, rngs: nnx.Rngs
) -> nnx.LayerNorm:
    """LayerNorm with PyTorch's eps 1e-5 (scale 0 if ``zero_init``: SwinV2 res-post-norm)."""
    return nnx.LayerNorm(
        num_features,
        epsilon=LAYER_NORM_EPS,
        dtype=dtype,
        use_fast_variance=False,
        scale_init=nnx.initializers.zeros_init() if zero_init else nnx.initializers.ones_init(),
        rngs=rngs,
    )


def group_norm(num_features: int, *, dtype: Any = None, rngs: nnx.Rngs) -> nnx.GroupNorm:
    """GroupNorm over contiguous channel groups (32 groups, eps 1e-6, as latent-diffusion)."""
    return nnx.GroupNorm(
        num_features,
        num_groups=min(GROUP_NORM_GROUPS, num_features),
        epsilon=GROUP_NORM_EPS,
        dtype=dtype,
        use_fast_variance=False,
        rngs=rngs,
    )


def conv2d_layer(
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    stride: int = 1,
    padding: int = 0,
    use_bias: bool = True,
    dtype: Any = None,
    matmul_grad: bool = False,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """NHWC ``nnx.Conv`` with PyTorch's default init and the optional CPU matmul-gradient path.

    Parameters: ``kernel [kh, kw, Cin, Cout]`` and ``bias [Cout]`` (float32), both
    U(+-1/sqrt(Cin kh kw)) as ``torch.nn.Conv2d``. ``matmul_grad`` injects
    `conv_general_dilated_matmul_grad` (kernel gradient as shifted matmuls, fast on CPU);
    otherwise the convolution is ``lax.conv_general_dilated``.
    """
    fan_in = in_features * kernel_size * kernel_size
    return nnx.Conv(
        in_features,
        out_features,
        (kernel_size, kernel_size),
        strides=stride,
        padding=padding,
        use_bias=use_bias,
        dtype=dtype,
        kernel_init=torch_default_kernel_init,
        bias_init=torch_default_bias_init(fan_in),
        conv_general_dilated=(
            conv_general_dilated_matmul_grad if matmul_grad else jax.lax.conv_general_dilated
        ),
        rngs=rngs,
    )
