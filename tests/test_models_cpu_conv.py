"""The custom-VJP convolution (kernel gradient as matmuls) against XLA's plain convolution."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ssl4sar_jax.models import ModelConfig, SSL4SARSegmenter, cpu_conv
from ssl4sar_jax.models.cpu_conv import (
    conv2d,
    conv2d_matmul_grad,
    conv2d_xla,
    conv_general_dilated_matmul_grad,
)
from ssl4sar_jax.models.layers import conv2d_layer


def _inputs(batch, size, cin, cout, k, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((batch, size, size, cin)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin), jnp.float32)
    cot = jnp.asarray(rng.standard_normal((batch, size, size, cout)), jnp.float32)
    return x, kernel, cot


# Sizes on both sides of the kernel gradient's switch between one joint (batch, pixels)
# contraction (small maps) and per-sample matmuls + a batch sum (large maps).
SMALL, LARGE = 10, 20
assert SMALL**2 <= cpu_conv._JOINT_CONTRACTION_MAX_PIXELS < LARGE**2


@pytest.mark.parametrize("size", [SMALL, LARGE])
@pytest.mark.parametrize("k,pad,cin,cout", [(3, 1, 8, 12), (1, 0, 16, 4), (5, 2, 4, 4)])
def test_values_and_gradients_match_xla(k, pad, cin, cout, size):
    x, kernel, cot = _inputs(2, size, cin, cout, k)

    def loss(fn):
        return lambda x, w: jnp.sum(fn(x, w) * cot)

    ours = jax.jit(jax.value_and_grad(loss(lambda x, w: conv2d_matmul_grad(x, w, pad)), (0, 1)))
    ref = jax.jit(jax.value_and_grad(loss(lambda x, w: conv2d_xla(x, w, 1, pad)), (0, 1)))
    (v1, (dx1, dk1)), (v2, (dx2, dk2)) = ours(x, kernel), ref(x, kernel)
    np.testing.assert_allclose(float(v1), float(v2), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(dx1), np.asarray(dx2), atol=1e-5)
    scale = float(jnp.max(jnp.abs(dk2)))
    assert scale > 1.0  # a real gradient, not zeros
    np.testing.assert_allclose(np.asarray(dk1), np.asarray(dk2), atol=1e-5 * scale)


@pytest.mark.parametrize(
    "k,padding", [(2, ((1, 1), (1, 1))), (2, ((0, 1), (1, 0))), (3, ((2, 0), (0, 1))), (1, 1)]
)
def test_any_padding_and_even_kernels_match_xla(k, padding):
    """Asymmetric padding and even kernels take the col2im input gradient; compare with XLA."""
    x, kernel, _ = _inputs(2, 9, 6, 5, k, seed=3)
    pads = padding if not isinstance(padding, int) else ((padding, padding), (padding, padding))

    def xla(x, w):
        return jax.lax.conv_general_dilated(
            x, w, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    out = xla(x, kernel)
    cot = jnp.asarray(np.random.default_rng(4).standard_normal(out.shape), jnp.float32)

    def loss(fn):
        return lambda x, w: jnp.sum(fn(x, w) * cot)

    ours = jax.jit(jax.value_and_grad(loss(lambda x, w: conv2d_matmul_grad(x, w, padding)), (0, 1)))
    ref = jax.jit(jax.value_and_grad(loss(xla), (0, 1)))
    (v1, (dx1, dk1)), (v2, (dx2, dk2)) = ours(x, kernel), ref(x, kernel)
    assert conv2d_matmul_grad(x, kernel, padding).shape == out.shape
    np.testing.assert_allclose(float(v1), float(v2), rtol=1e-6)
    assert float(jnp.max(jnp.abs(dx2))) > 0.1
    np.testing.assert_allclose(np.asarray(dx1), np.asarray(dx2), atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(dk1), np.asarray(dk2), atol=1e-5 * float(jnp.max(jnp.abs(dk2)))
    )


def test_dispatch_only_for_same_padding_stride_one():
    x, kernel, _ = _inputs(1, 8, 4, 4, 3)
    # Strided or unpadded convs fall back to XLA; results agree either way.
    for stride, pad in ((2, 1), (1, 0)):
        a = conv2d(x, kernel, stride=stride, padding=pad, matmul_grad=True)
        b = conv2d_xla(x, kernel, stride, pad)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    jaxpr = str(jax.make_jaxpr(lambda x: conv2d(x, kernel, padding=1, matmul_grad=True))(x))
    assert "custom_vjp" in jaxpr
    jaxpr = str(jax.make_jaxpr(lambda x: conv2d(x, kernel, padding=1, matmul_grad=False))(x))
    assert "custom_vjp" not in jaxpr


def test_config_flag_selects_path():
    tiny = ModelConfig.named("tiny")
    assert jax.default_backend() == "cpu"
    assert tiny.use_matmul_grad_conv()  # "auto" on the CPU backend
    assert not tiny.replace(conv_impl="xla").use_matmul_grad_conv()
    assert tiny.replace(conv_impl="matmul_grad").use_matmul_grad_conv()
    auto = nnx.eval_shape(lambda: SSL4SARSegmenter(tiny, rngs=nnx.Rngs(0)))
    xla = nnx.eval_shape(lambda: SSL4SARSegmenter(tiny.replace(conv_impl="xla"), rngs=nnx.Rngs(0)))
    fast = conv_general_dilated_matmul_grad
    assert auto.decoder.blocks[1].block.conv1.conv_general_dilated is fast
    assert auto.head.conv_general_dilated is fast
    assert xla.decoder.blocks[1].block.conv1.conv_general_dilated is jax.lax.conv_general_dilated
    # The strided patch embedding never uses it (it falls back to XLA anyway).
    assert auto.encoder.patch_embed.proj.conv_general_dilated is jax.lax.conv_general_dilated


@pytest.mark.parametrize("k,stride,pad", [(3, 1, 1), (1, 1, 0), (4, 4, 0), (3, 2, 1), (3, 1, 0)])
def test_nnx_conv_with_injected_matmul_grad_equals_plain_conv(k, stride, pad):
    # The layer the model uses (nnx.Conv + injected conv) against a plain XLA conv + bias, for
    # values and both gradients; only stride-1 "same" convs take the custom VJP.
    layer = conv2d_layer(6, 5, k, stride=stride, padding=pad, matmul_grad=True, rngs=nnx.Rngs(0))
    x, _, _ = _inputs(2, 8, 6, 5, k, seed=2)

    graphdef, params = nnx.split(layer)

    def ours(p, x):
        return nnx.merge(graphdef, p)(x)

    def plain(p, x):
        return conv2d_xla(x, p["kernel"][...], stride, pad) + p["bias"][...]

    cot = jnp.asarray(np.random.default_rng(3).standard_normal(plain(params, x).shape), jnp.float32)
    (v1, (g1, dx1)), (v2, (g2, dx2)) = [
        jax.jit(jax.value_and_grad(lambda p, x, f=f: jnp.sum(f(p, x) * cot), (0, 1)))(params, x)
        for f in (ours, plain)
    ]
    np.testing.assert_allclose(float(v1), float(v2), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(dx1), np.asarray(dx2), atol=1e-5)
    for name in ("kernel", "bias"):
        np.testing.assert_allclose(np.asarray(g1[name][...]), np.asarray(g2[name][...]), atol=1e-4)
    jaxpr = str(jax.make_jaxpr(layer)(x))
    assert ("custom_vjp" in jaxpr) == (stride == 1 and k == 2 * pad + 1)


@pytest.mark.parametrize("size", [SMALL, LARGE])
@pytest.mark.parametrize("axis_type", ["Explicit", "Auto"])
@pytest.mark.parametrize("k,pad", [(3, 1), (1, 0)])
def test_gradient_under_batch_sharding(axis_type, size, k, pad):
    # Data parallel over 2 devices: Explicit axes (jax.make_mesh's default) and Auto axes (the
    # training mesh, ssl4sar_jax.sharding.make_mesh); the kernel gradient must be the full-batch
    # gradient, replicated.
    mesh = jax.make_mesh(
        (2,),
        ("data",),
        devices=jax.devices()[:2],
        axis_types=(getattr(jax.sharding.AxisType, axis_type),),
    )
    x, kernel, cot = _inputs(4, size, 8, 6, k, seed=1)

    def grads(fn):
        return lambda x, w, c: jax.grad(lambda w: jnp.sum(fn(x, w) * c))(w)

    expected = jax.jit(grads(lambda x, w: conv2d_xla(x, w, 1, pad)))(x, kernel, cot)
    sharded = NamedSharding(mesh, P("data"))
    with jax.set_mesh(mesh):
        got = jax.jit(grads(lambda x, w: conv2d_matmul_grad(x, w, pad)))(
            jax.device_put(x, sharded), kernel, jax.device_put(cot, sharded)
        )
    assert got.sharding.is_fully_replicated
    scale = float(jnp.max(jnp.abs(expected)))
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5 * scale)
