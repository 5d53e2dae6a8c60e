"""The decoder's sub-pixel upsampling against the plain "nearest x2, then 3x3 conv" form."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ssl4sar_jax.models import ModelConfig, SSL4SARSegmenter
from ssl4sar_jax.models.decoder import (
    Upsample,
    _interleave_phases,
    interleave_phases,
    upsample2x_conv,
    upsample_nearest2x,
)
from ssl4sar_jax.models.testing import randomize_params


def _plain(x, kernel):
    return jax.lax.conv_general_dilated(
        upsample_nearest2x(x),
        kernel,
        (1, 1),
        ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


@pytest.mark.parametrize("matmul_grad", [False, True])
@pytest.mark.parametrize("shape", [(2, 7, 5, 6, 4), (1, 1, 1, 3, 3), (1, 8, 8, 16, 16)])
def test_subpixel_values_and_gradients_equal_plain(matmul_grad, shape):
    batch, height, width, cin, cout = shape
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, height, width, cin)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, cin, cout)), jnp.float32)
    # A non-uniform cotangent, so every phase and tap gets its own gradient signal.
    cot = jnp.asarray(rng.standard_normal((batch, 2 * height, 2 * width, cout)), jnp.float32)

    def loss(fn):
        return lambda x, k: jnp.sum(fn(x, k) * cot)

    ours = jax.jit(
        jax.value_and_grad(
            loss(lambda x, k: upsample2x_conv(x, k, matmul_grad=matmul_grad)), (0, 1)
        )
    )
    ref = jax.jit(jax.value_and_grad(loss(_plain), (0, 1)))
    np.testing.assert_allclose(
        np.asarray(upsample2x_conv(x, kernel, matmul_grad=matmul_grad)),
        np.asarray(_plain(x, kernel)),
        rtol=1e-5,
        atol=1e-5,
    )
    (v1, (dx1, dk1)), (v2, (dx2, dk2)) = ours(x, kernel), ref(x, kernel)
    np.testing.assert_allclose(float(v1), float(v2), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dx1), np.asarray(dx2), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dk1), np.asarray(dk2), rtol=1e-5, atol=1e-4)


def test_subpixel_phases_are_not_interchangeable():
    """A kernel with one tap set: each output phase must see its own shifted input."""
    x = jnp.arange(1.0, 17.0).reshape(1, 4, 4, 1)
    for ky in range(3):
        for kx in range(3):
            kernel = jnp.zeros((3, 3, 1, 1)).at[ky, kx].set(1.0)
            np.testing.assert_array_equal(
                np.asarray(upsample2x_conv(x, kernel)), np.asarray(_plain(x, kernel))
            )


def test_upsample_module_same_parameters_both_forms():
    plain = Upsample(8, subpixel=False, rngs=nnx.Rngs(0))
    randomize_params(plain, 2)
    sub = Upsample(8, subpixel=True, rngs=nnx.Rngs(1))
    nnx.update(sub, nnx.state(plain))
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, 6, 8)), jnp.float32)
    np.testing.assert_allclose(np.asarray(sub(x)), np.asarray(plain(x)), atol=1e-5)
    assert jax.tree.structure(nnx.state(sub)) == jax.tree.structure(nnx.state(plain))


def test_segmenter_logits_and_gradients_equal_across_upsample_impls():
    models = {}
    for impl in ("plain", "subpixel"):
        config = ModelConfig.named("tiny", upsample_impl=impl, decoder_dropout=0.0)
        models[impl] = SSL4SARSegmenter(config, rngs=nnx.Rngs(0))
    size = ModelConfig.named("tiny").img_size
    randomize_params(models["plain"], 3)
    nnx.update(models["subpixel"], nnx.state(models["plain"]))
    x = jnp.asarray(np.random.default_rng(2).uniform(size=(2, size, size, 1)), jnp.float32)

    def loss(model):
        logits = model(x)["logits"]
        return jnp.mean(logits**2), logits

    # One jitted forward + backward per form (eager calls of the model are slow).
    logits, grads = {}, {}
    for impl, model in models.items():
        (_, logits[impl]), grads[impl] = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model)
    np.testing.assert_allclose(
        np.asarray(logits["subpixel"]), np.asarray(logits["plain"]), atol=1e-5
    )
    flat_plain = jax.tree.leaves(grads["plain"])
    flat_sub = jax.tree.leaves(grads["subpixel"])
    assert len(flat_plain) == len(flat_sub)
    # Rounding noise of a leaf is relative to the gradient magnitudes feeding it, not to the
    # leaf's own (possibly tiny) maximum: floor the scale at 1e-3 of the largest gradient.
    largest = max(float(jnp.max(jnp.abs(a))) for a in flat_plain)
    assert largest > 1e-3
    for a, b in zip(flat_plain, flat_sub, strict=True):
        scale = max(float(jnp.max(jnp.abs(a))), 1e-3 * largest)
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-4 * scale, rtol=1e-4)


def test_bfloat16_compute_dtype():
    up = Upsample(4, dtype=jnp.bfloat16, subpixel=True, rngs=nnx.Rngs(0))
    out = up(jnp.ones((1, 3, 3, 4), jnp.float32))
    assert out.dtype == jnp.bfloat16 and out.shape == (1, 6, 6, 4)


def test_unknown_upsample_impl_is_rejected():
    with pytest.raises(ValueError, match="upsample_impl"):
        ModelConfig(upsample_impl="bilinear").validate()


def test_subpixel_under_batch_sharding():
    """Data parallel over 2 devices of an Explicit-axes mesh: every reshape keeps a sharding."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((2,), ("data",), devices=jax.devices()[:2])
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.standard_normal((4, 6, 6, 8)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 8, 8)), jnp.float32)

    def grads(x, k):
        return jax.grad(lambda x, k: jnp.sum(upsample2x_conv(x, k, matmul_grad=True) ** 2), (0, 1))(
            x, k
        )

    expected = jax.jit(grads)(x, kernel)
    with jax.set_mesh(mesh):
        got = jax.jit(grads)(jax.device_put(x, NamedSharding(mesh, P("data"))), kernel)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-3)


def test_interleave_phases_backward_equals_autodiff():
    # The hand-written transpose must route every output pixel's gradient to its phase slot
    # and leave the unused border slots of z at zero.
    z = jnp.asarray(np.random.default_rng(7).standard_normal((2, 4, 6, 2, 2, 3)), jnp.float32)
    cot = jnp.asarray(np.random.default_rng(8).standard_normal((2, 6, 10, 3)), jnp.float32)
    np.testing.assert_array_equal(
        np.asarray(interleave_phases(z)), np.asarray(_interleave_phases(z))
    )
    _, vjp = jax.vjp(interleave_phases, z)
    _, vjp_ref = jax.vjp(_interleave_phases, z)
    (got,), (expected,) = vjp(cot), vjp_ref(cot)
    assert float(jnp.sum(expected == 0)) > 0 and float(jnp.max(jnp.abs(expected))) > 0
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
