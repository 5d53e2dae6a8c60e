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
