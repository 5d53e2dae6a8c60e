"""Tiling/stitching identity in both reference modes, padding formulas, TTA and ensembles."""

import numpy as np
import pytest

from ssl4sar_jax.evaluation.ensemble import (
    RunningMeanStd,
    ensemble_probabilities,
    predict_probabilities,
    rotate_back,
    rotate_clockwise,
)
from ssl4sar_jax.evaluation.tiling import (
    centre_crop,
    gaussian_importance_map,
    make_layout,
    stitch_probabilities,
    tile_image,
)


def _probability_map(shape, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(*shape, classes)).astype(np.float32)
    e = np.exp(logits)
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("shape", [(37, 50), (64, 64), (65, 129), (100, 31)])
@pytest.mark.parametrize(("stride", "mode"), [(32, "plain"), (16, "gaussian"), (8, "gaussian")])
def test_stitching_identity(shape, stride, mode):
    probs = _probability_map(shape)
    tiles, layout = tile_image(probs, context=64, centre=32, stride=stride)
    assert tiles.shape == (layout.num_tiles, 64, 64, 4)
    stitched = stitch_probabilities(centre_crop(tiles, 64, 32), layout, mode=mode)
    assert stitched.shape == probs.shape
    if mode == "plain":
        np.testing.assert_array_equal(stitched, probs)  # exact paste
    else:
        np.testing.assert_allclose(stitched, probs, rtol=0, atol=2e-6)


def test_stitch_rejects_wrong_tile_count():
    _, layout = tile_image(np.zeros((40, 40, 1)), context=64, centre=32, stride=32)
    with pytest.raises(ValueError, match="centre_probs"):
        stitch_probabilities(np.zeros((layout.num_tiles + 1, 32, 32, 4)), layout)


@pytest.mark.parametrize("size", [382, 405, 511, 512, 513, 640, 1000, 3561, 4476])
def test_reference_padding_formulas(size):
    # Non-overlapping (pad_whole_image, T = 256): left pad round(d / 2), d = (size//T + 2) T - size.
    d = (size // 256 + 2) * 256 - size
    grid = make_layout((size, size), context=512, centre=256, stride=256)
    assert grid.pad_top == int(round(d / 2))
    assert grid.num_tiles == (size // 256 + 1) ** 2
    # Overlapping (pad_whole_image_overlapping): 128 + extra (1..128) at the bottom.
    extra = 128 - ((size - 512) % 128)
    over = make_layout((size, size), context=512, centre=256, stride=128)
    assert over.pad_top == 128
    assert over.padded_shape[0] == size + 256 + extra
    assert 1 <= over.pad_bottom - 128 <= 128


def test_gaussian_importance_map_reference_properties():
    w = gaussian_importance_map(256)
    assert w.shape == (256, 256)
    assert w.max() == 1.0 and w[128, 128] == 1.0
    assert w.min() > 0
    # sigma = 32: one sigma away from the peak the weight is exp(-1/2).
    assert w[128, 160] == pytest.approx(np.exp(-0.5), rel=1e-3)


def test_bad_sizes():
    with pytest.raises(ValueError, match="stride"):
        make_layout((100, 100), context=64, centre=32, stride=48)
    with pytest.raises(ValueError, match="even"):
        make_layout((100, 100), context=63, centre=32, stride=32)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_rotation_round_trip(k):
    image = np.arange(5 * 7 * 2).reshape(5, 7, 2)
    np.testing.assert_array_equal(rotate_back(rotate_clockwise(image, k), k), image)


def test_rotate_clockwise_direction():
    image = np.array([[1, 2], [3, 4]])
    # 90 degrees clockwise: the left column (1, 3) becomes the top row (3, 1).
    np.testing.assert_array_equal(rotate_clockwise(image, 1), [[3, 1], [4, 2]])


def _position_dependent_fn(tiles):
    """Logits depending on the absolute position inside the tile: not rotation-equivariant."""
    n, h, w, _ = tiles.shape
    rows = np.linspace(-2, 2, h, dtype=np.float32)[None, :, None, None]
    base = np.concatenate([tiles * 3, tiles * 0 + rows, -tiles, tiles * 0], axis=-1)
    return np.broadcast_to(base, (n, h, w, 4)).astype(np.float32)


def test_tta_equals_mean_of_manually_rotated_passes():
    rng = np.random.default_rng(1)
    image = rng.random((45, 70, 1), dtype=np.float32)
    kw = dict(context=32, centre=16, stride=8, stitch_mode="gaussian", batch_size=7)
    mean, std, passes = ensemble_probabilities([_position_dependent_fn], image, tta=True, **kw)
    assert passes == 4
    maps = []
    for k in range(4):
        rotated = np.ascontiguousarray(np.rot90(image, -k))
        maps.append(np.rot90(predict_probabilities(_position_dependent_fn, rotated, **kw), k))
    np.testing.assert_allclose(mean, np.mean(maps, axis=0), atol=1e-6)
    np.testing.assert_allclose(std, np.std(maps, axis=0), atol=1e-5)
    assert std.max() > 1e-3  # the function is not rotation-equivariant


def test_ensemble_of_constant_members():
    image = np.zeros((20, 20, 1), np.float32)
    a = np.array([2.0, 0.0, 0.0, 0.0], np.float32)
    b = np.array([0.0, 0.0, 3.0, 0.0], np.float32)

    def const(logits):
        return lambda tiles: np.broadcast_to(logits, (*tiles.shape[:3], 4))

    mean, std, passes = ensemble_probabilities(
        [const(a), const(b)], image, context=16, centre=8, stride=8, stitch_mode="plain"
    )
    pa, pb = np.exp(a) / np.exp(a).sum(), np.exp(b) / np.exp(b).sum()
    assert passes == 2
    np.testing.assert_allclose(mean, np.broadcast_to((pa + pb) / 2, mean.shape), atol=1e-6)
    np.testing.assert_allclose(std, np.broadcast_to(np.abs(pa - pb) / 2, std.shape), atol=1e-6)


def test_running_mean_std_matches_numpy():
    rng = np.random.default_rng(3)
    maps = rng.random((5, 4, 3, 2)).astype(np.float32)
    acc = RunningMeanStd()
    for m in maps:
        acc.add(m)
    np.testing.assert_allclose(acc.mean, maps.mean(0), atol=1e-6)
    np.testing.assert_allclose(acc.std, maps.std(0), atol=1e-6)


def test_predict_fn_with_wrong_output_shape_names_image():
    with pytest.raises(ValueError, match="COL_x: predict_fn returned"):
        predict_probabilities(
            lambda t: np.zeros((len(t), 16, 16, 3)),
            np.zeros((10, 10, 1), np.float32),
            context=16,
            centre=8,
            stride=8,
            name="COL_x",
        )


def test_jitted_jax_predict_fn_sees_one_batch_shape():
    import jax
    import jax.numpy as jnp

    traces = []

    @jax.jit
    def predict(tiles):
        traces.append(tiles.shape)  # runs only while tracing
        return jnp.concatenate([tiles, -tiles, tiles * 0, tiles * 2], axis=-1).astype(jnp.bfloat16)

    image = np.random.default_rng(0).random((50, 41, 1), dtype=np.float32)
    probs = predict_probabilities(
        predict, image, context=32, centre=16, stride=8, batch_size=8, stitch_mode="gaussian"
    )
    assert traces == [(8, 32, 32, 1)]
    assert probs.shape == (50, 41, 4) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    # The last class has the largest logit wherever the SAR is positive.
    assert (probs.argmax(-1)[image[..., 0] > 0.05] == 3).all()


def test_softmax_matches_reference_formula():
    from ssl4sar_jax.evaluation.ensemble import softmax

    logits = np.random.default_rng(2).normal(size=(3, 5, 6, 4)).astype(np.float32) * 30
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(softmax(logits), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(softmax(logits[..., :2], axis=-1).sum(-1), 1.0, atol=1e-6)
