"""The hand-written backward of the SwinV2 window attention equals JAX's autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ssl4sar_jax.models import ModelConfig
from ssl4sar_jax.models.swinv2 import (
    SwinV2Encoder,
    _l2_normalize,
    cosine_attention_autodiff,
    cosine_attention_manual_vjp,
    shift_attention_mask,
)
from ssl4sar_jax.models.testing import randomize_params

# Two shifted 4x4 windows per side of an 8x8 grid: nW = 4 windows of N = 16 tokens.
RESOLUTION, WINDOW, SHIFT = 8, 4, 2
HEADS, HEAD_DIM = 3, 5


def _inputs(batch: int, seed: int, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    windows, tokens = (RESOLUTION // WINDOW) ** 2, WINDOW * WINDOW
    shape = (batch, windows, tokens, HEADS, HEAD_DIM)

    def normal(*s):
        return jnp.asarray(rng.standard_normal(s), jnp.float32)

    qn = _l2_normalize(normal(*shape))
    kn = _l2_normalize(normal(*shape))
    v = normal(*shape).astype(dtype)
    bias = 16.0 * jax.nn.sigmoid(normal(HEADS, tokens, tokens))
    scale = jnp.exp(normal(HEADS))  # logit scales around 1, like SwinV2's init of 10
    cotangent = normal(*shape).astype(dtype)
    return qn, kn, v, bias, scale, cotangent


def _grads(core, mask):
    def loss(qn, kn, v, bias, scale, cotangent):
        out = core(qn, kn, v, bias, scale, mask)
        return jnp.sum(out.astype(jnp.float32) * cotangent.astype(jnp.float32))

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4)))


def _assert_close(got, expected, rel):
    scale = max(float(jnp.max(jnp.abs(expected))), 1e-6)
    np.testing.assert_allclose(
        np.asarray(got, np.float32), np.asarray(expected, np.float32), atol=rel * scale
    )


@pytest.mark.parametrize("shifted", [False, True])
def test_manual_vjp_equals_autodiff(shifted):
    mask = jnp.asarray(shift_attention_mask(RESOLUTION, WINDOW, SHIFT)) if shifted else None
    args = _inputs(2, seed=int(shifted))
    value, grads = _grads(cosine_attention_manual_vjp, mask)(*args)
    value_ref, grads_ref = _grads(cosine_attention_autodiff, mask)(*args)
    np.testing.assert_allclose(float(value), float(value_ref), rtol=1e-6)
    for name, got, expected in zip(("q", "k", "v", "bias", "scale"), grads, grads_ref, strict=True):
        assert got.shape == expected.shape and got.dtype == expected.dtype, name
        assert float(jnp.max(jnp.abs(expected))) > 0, name
        _assert_close(got, expected, 1e-5)


def test_manual_vjp_in_bfloat16_matches_autodiff():
    mask = jnp.asarray(shift_attention_mask(RESOLUTION, WINDOW, SHIFT))
    args = _inputs(2, seed=3, dtype=jnp.bfloat16)
    _, grads = _grads(cosine_attention_manual_vjp, mask)(*args)
    _, grads_ref = _grads(cosine_attention_autodiff, mask)(*args)
    for got, expected in zip(grads, grads_ref, strict=True):
        assert got.dtype == expected.dtype
        _assert_close(got, expected, 3e-2)  # bf16 matmuls on both sides


@pytest.mark.parametrize("axis_type", ["Explicit", "Auto"])
def test_bias_gradient_under_batch_sharding(axis_type):
    # Data parallel over 2 devices: the position-bias and scale gradients are full-batch sums.
    mesh = jax.make_mesh(
        (2,),
        ("data",),
        devices=jax.devices()[:2],
        axis_types=(getattr(jax.sharding.AxisType, axis_type),),
    )
    mask = jnp.asarray(shift_attention_mask(RESOLUTION, WINDOW, SHIFT))
    qn, kn, v, bias, scale, cotangent = _inputs(4, seed=4)
    _, expected = _grads(cosine_attention_autodiff, mask)(qn, kn, v, bias, scale, cotangent)
    sharded = NamedSharding(mesh, P("data"))
    with jax.set_mesh(mesh):
        batch_args = [jax.device_put(a, sharded) for a in (qn, kn, v)]
        _, got = _grads(cosine_attention_manual_vjp, mask)(
            *batch_args, bias, scale, jax.device_put(cotangent, sharded)
        )
    for index in (3, 4):  # bias, scale: replicated parameter gradients
        assert got[index].sharding.is_fully_replicated
        _assert_close(got[index], expected[index], 1e-5)
    _assert_close(got[0], expected[0], 1e-5)


def test_encoder_gradients_equal_across_attention_impls():
    # The tiny encoder has shifted (masked) and clamped windows and every attention parameter.
    models = {}
    for impl in ("autodiff", "manual_vjp"):
        config = ModelConfig.named("tiny", attention_impl=impl)
        models[impl] = SwinV2Encoder(config, rngs=nnx.Rngs(0))
    size = config.img_size
    randomize_params(models["autodiff"], 5)
    nnx.update(models["manual_vjp"], nnx.state(models["autodiff"]))
    x = jnp.asarray(np.random.default_rng(6).uniform(size=(2, size, size, 3)), jnp.float32)

    def loss(model):
        skips = model(x)
        return sum(jnp.mean(jnp.sin(s)) for s in skips), skips

    skips, grads = {}, {}
    for impl, model in models.items():
        (_, skips[impl]), grads[impl] = nnx.jit(nnx.value_and_grad(loss, has_aux=True))(model)
    for a, b in zip(skips["autodiff"], skips["manual_vjp"], strict=True):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
    flat_ref = jax.tree.leaves(grads["autodiff"])
    flat_new = jax.tree.leaves(grads["manual_vjp"])
    assert len(flat_ref) == len(flat_new)
    largest = max(float(jnp.max(jnp.abs(a))) for a in flat_ref)
    for a, b in zip(flat_ref, flat_new, strict=True):
        scale = max(float(jnp.max(jnp.abs(a))), 1e-3 * largest)
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-4 * scale, rtol=1e-4)


def test_unknown_attention_impl_is_rejected():
    with pytest.raises(ValueError, match="attention_impl"):
        ModelConfig(attention_impl="flash")
