"""The pipelined tile inference (prefetch thread + asynchronous dispatch) changes nothing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssl4sar_jax.evaluation.ensemble import _prefetch, predict_probabilities


def _model(tiles):
    # Position-dependent logits, so any mix-up of batches or tiles changes the result.
    t = jnp.asarray(tiles)
    ramp = jnp.arange(t.shape[1], dtype=jnp.float32)[None, :, None, None] / t.shape[1]
    return jnp.concatenate([t, -t, t * ramp, 1 - t + ramp], axis=-1)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_prefetch_and_async_dispatch_give_the_same_probabilities(batch_size):
    image = np.random.default_rng(0).random((70, 90, 1), dtype=np.float32)
    jitted = jax.jit(_model)  # returns device arrays: dispatch is asynchronous
    kwargs = dict(context=32, centre=16, stride=8, batch_size=batch_size)
    plain = predict_probabilities(lambda t: np.asarray(_model(t)), image, prefetch=0, **kwargs)
    piped = predict_probabilities(jitted, image, prefetch=2, **kwargs)
    np.testing.assert_array_equal(plain, piped)
    assert plain.shape == (70, 90, 4) and np.ptp(plain) > 0.1


def test_prefetch_keeps_order_and_reraises_producer_errors():
    assert list(_prefetch(iter(range(50)), 2)) == list(range(50))

    def failing():
        yield 1
        raise OSError("tile source broke")

    with pytest.raises(OSError, match="tile source broke"):
        list(_prefetch(failing(), 2))
    # A consumer that stops early does not hang the producer.
    for value in _prefetch(iter(range(10**6)), 2):
        if value == 3:
            break


def test_wrong_logit_shape_still_names_the_image():
    image = np.zeros((40, 40, 1), np.float32)
    with pytest.raises(ValueError, match="scene_7: predict_fn returned logits"):
        predict_probabilities(
            lambda t: np.zeros((len(t), 32, 32, 3), np.float32),
            image,
            context=32,
            centre=16,
            stride=16,
            name="scene_7",
        )


def test_numpy_predictor_returns_dispatched_arrays_for_full_batches():
    # A full batch comes back as the jax array (the tiled inference waits for it only after
    # dispatching the next one); other sizes as numpy. Values and stitched maps are identical.
    from ssl4sar_jax import sharding as sharding_lib
    from ssl4sar_jax import steps

    mesh = sharding_lib.make_mesh([("data", -1)], jax.devices()[:2])
    predict_jit = jax.jit(lambda params, rest, sar: _model(sar) * params["scale"] + rest["shift"])
    params, rest = {"scale": jnp.float32(2.0)}, {"shift": jnp.float32(0.5)}
    fn = steps.numpy_predictor(predict_jit, params, rest, mesh, batch_size=4)
    tiles = np.random.default_rng(1).random((4, 32, 32, 1), dtype=np.float32)
    expected = np.asarray(_model(tiles)) * 2.0 + 0.5
    full = fn(tiles)
    assert isinstance(full, jax.Array) and full.sharding.mesh.size == 2
    np.testing.assert_allclose(np.asarray(full), expected, rtol=1e-6)
    partial = fn(tiles[:3])
    assert isinstance(partial, np.ndarray)
    np.testing.assert_allclose(partial, expected[:3], rtol=1e-6)
    longer = fn(np.concatenate([tiles, tiles[:1]]))
    assert isinstance(longer, np.ndarray) and longer.shape == (5, 32, 32, 4)
    np.testing.assert_allclose(longer[4], expected[0], rtol=1e-6)

    image = np.random.default_rng(2).random((70, 90, 1), dtype=np.float32)
    kwargs = dict(context=32, centre=16, stride=8, batch_size=4)
    synchronous = predict_probabilities(lambda t: np.asarray(fn(t)), image, prefetch=0, **kwargs)
    piped = predict_probabilities(fn, image, prefetch=2, **kwargs)
    np.testing.assert_array_equal(synchronous, piped)
