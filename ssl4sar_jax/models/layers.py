"""Shared building blocks: initialisers matching the PyTorch reference, Conv2d, norms.

Initialisation (as Nora-Go/TYRION ``Tyrion.__init__`` / ``_init_weights``):

* Linear layers of the Swin encoder: weight ~ N(0, 0.02^2) truncated at +-2 (absolute, as
  timm's ``trunc_normal_``, i.e. +-100 sigma), bias 0 (`trunc_normal_linear`).
* Convolutions and pretraining-only layers: PyTorch's default, weight and bias
  ~ U(+-1/sqrt(fan_in)) (`torch_default_linear`, `Conv2d`).
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
import numpy as np
from flax import nnx

from ssl4sar_jax.models.cpu_conv import conv2d

LAYER_NORM_EPS = 1e-5
GROUP_NORM_EPS = 1e-6
GROUP_NORM_GROUPS = 32


def _host_init(draw: Any) -> nnx.Initializer:
    """Initialiser whose values are drawn by NumPy, seeded from the parameter's JAX key.

    ``draw(rng, shape)`` returns float64 values. With `jax.random`, XLA compiles a separate
    RNG program for each of the ~230 parameters, which made building even the tiny model
    take 20-40 s on a 2-core CPU (eagerly or under `jit`). Drawing on the host takes
    milliseconds and gives the same values eagerly, under `jit` (through
    `jax.pure_callback`) and under `eval_shape` (nothing is drawn).
    """

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        shape = tuple(int(d) for d in shape)
        np_dtype = np.dtype(dtype)

        def host(key_data: np.ndarray) -> np.ndarray:
            seed = np.asarray(key_data).astype(np.uint64).ravel().tolist()
            return np.asarray(draw(np.random.default_rng(seed), shape), np_dtype)

        key_data = jax.random.key_data(key)
        try:
            concrete = np.asarray(key_data)
        except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
            return jax.pure_callback(host, jax.ShapeDtypeStruct(shape, np_dtype), key_data)
        return jnp.asarray(host(concrete))

    return init


def _fan_in(shape: tuple[int, ...]) -> int:
    # Kernels are [..., in, out] (Dense [in, out], Conv [kh, kw, in, out]).
    return int(np.prod(shape[:-1]))


# PyTorch's kaiming_uniform_(a=sqrt(5)) gives U(+-1/sqrt(fan_in)) = variance 1/(3 fan_in).
torch_default_kernel_init = _host_init(
    lambda rng, shape: rng.uniform(-1.0, 1.0, shape) / math.sqrt(_fan_in(shape))
)
# timm trunc_normal_(std=.02) cuts at absolute +-2 (= +-100 sigma): in effect N(0, 0.02^2).
trunc_normal_002 = _host_init(
    lambda rng, shape: np.clip(0.02 * rng.standard_normal(shape), -2.0, 2.0)
)


def torch_default_bias_init(fan_in: int) -> nnx.Initializer:
    """PyTorch's default bias init U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return _host_init(lambda rng, shape: rng.uniform(-bound, bound, shape))


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


class Conv2d(nnx.Module):
    """NHWC convolution with PyTorch-default init and optional CPU matmul-gradient path.

    Parameters: ``kernel [kh, kw, Cin, Cout]`` and ``bias [Cout]`` (float32).
    """

    def __init__(
        self,
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
    ):
        self.in_features = in_features
        self.out_features = out_features
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dtype = dtype
        self.matmul_grad = matmul_grad
        shape = (kernel_size, kernel_size, in_features, out_features)
        self.kernel = nnx.Param(torch_default_kernel_init(rngs.params(), shape, jnp.float32))
        fan_in = in_features * kernel_size * kernel_size
        self.bias = (
            nnx.Param(torch_default_bias_init(fan_in)(rngs.params(), (out_features,), jnp.float32))
            if use_bias
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the convolution.

        Args:
            x: ``[B, H, W, Cin]``.

        Returns:
            ``[B, H', W', Cout]`` in the compute dtype.
        """
        dtype = self.dtype or x.dtype
        y = conv2d(
            x.astype(dtype),
            self.kernel[...].astype(dtype),
            stride=self.stride,
            padding=self.padding,
            matmul_grad=self.matmul_grad,
        )
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y
