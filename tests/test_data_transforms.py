"""Augmentation invariants of the fine-tuning and pretraining samplers."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ssl4sar_jax.data import transforms
from ssl4sar_jax.data.transforms import FinetuneSamplerConfig, PretrainSamplerConfig

NO_AUG = FinetuneSamplerConfig(
    context_size=64,
    centre_size=32,
    prob_rezoom=0.0,
    prob_mix_up=0.0,
    prob_speckle=0.0,
    prob_brightness=0.0,
    prob_gamma=0.0,
    prob_hflip=0.0,
    prob_vflip=0.0,
    prob_rot90=0.0,
)


def _scene(h=90, w=70, seed=0):
    rng = np.random.default_rng(seed)
    zones = rng.integers(0, 4, size=(h // 5, w // 5)).repeat(5, 0).repeat(5, 1).astype(np.uint8)
    sar = (zones * 60 + 10).astype(np.uint8)  # SAR encodes the label: alignment is checkable
    return sar, zones


def test_pad_amounts_reproduce_half_to_even_quirk():
    # d = target - size; before = round(d / 2), after = round((d + 1) / 2) with half-to-even:
    # d = 6 -> 3 + 4 and d = 7 -> 4 + 4 (one pixel more than the target), d = 5, 8 exact.
    assert transforms.pad_amounts(2, 4) == (3, 4)
    assert transforms.pad_amounts(1, 4) == (4, 4)
    assert transforms.pad_amounts(3, 4) == (2, 3)
    assert transforms.pad_amounts(4, 4) == (4, 4)
    assert transforms.pad_amounts(254, 256) == (129, 130)  # target 512, d = 258
    assert transforms.pad_amounts(300, 512) == (362, 362)


def test_crop_padded_equals_numpy_symmetric_pad():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, size=(37, 53, 2), dtype=np.uint8)
    padded = transforms.pad_whole_image(image, 16)
    assert padded.shape[:2] == transforms.padded_shape(image.shape, 16)
    for _ in range(20):
        top, left = rng.integers(0, padded.shape[0]), rng.integers(0, padded.shape[1])
        h, w = rng.integers(1, 40, size=2)
        np.testing.assert_array_equal(
            transforms.crop_padded(image, 16, top, left, h, w),
            padded[top : top + h, left : left + w],
        )


@pytest.mark.parametrize("method", ["nearest", "bilinear", "cubic"])
def test_resize_keeps_constants_and_identity(method):
    image = np.full((20, 30), 77, dtype=np.uint8)
    out = transforms.resize(image, (33, 17), method)
    assert out.shape == (33, 17) and out.dtype == np.uint8 and np.all(out == 77)
    ramp = np.arange(40, dtype=np.uint8).reshape(5, 8)
    assert transforms.resize(ramp, (5, 8), method) is ramp


def test_bilinear_upsample_matches_half_pixel_formula():
    row = np.array([[0, 100]], dtype=np.uint8).repeat(2, 0)
    out = transforms.resize(row, (2, 4), "bilinear")
    # src = (dst + 0.5) / 2 - 0.5 = [-0.25 -> 0, 0.25, 0.75, 1.25 -> 1]
    assert out[0].tolist() == [0, 25, 75, 100]


def test_context_without_augmentation_keeps_alignment():
    sar, zones = _scene()
    rng = np.random.default_rng(0)
    for _ in range(10):
        s, z = transforms.random_context(sar, zones, rng, NO_AUG)
        assert s.shape == z.shape == (64, 64)
        np.testing.assert_array_equal(s, z * 60 + 10)


def test_rezoom_keeps_labels_valid_and_aligned():
    sar, zones = _scene()
    zones = np.where(zones < 2, 0, 3).astype(np.uint8)  # two classes: SAR 10 or 190
    sar = (zones * 60 + 10).astype(np.uint8)
    cfg = dataclasses.replace(NO_AUG, prob_rezoom=1.0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        s, z = transforms.random_context(sar, zones, rng, cfg)
        assert set(np.unique(z)) <= {0, 3}
        # A SAR pixel that is purely one class (all bilinear taps agree) has that label.
        pure = np.isin(s, [10, 190])
        assert pure.mean() > 0.5
        np.testing.assert_array_equal(s[pure], (z * 60 + 10)[pure])


def test_bilinear_label_option_reproduces_reference_quirk():
    zones = np.zeros((40, 40), dtype=np.uint8)
    zones[:, 20:] = 3
    sar = zones * 60 + 10
    cfg = dataclasses.replace(
        NO_AUG, prob_rezoom=1.0, zoom_range=(0.5, 0.51), label_resize="bilinear"
    )
    seen = set()
    for seed in range(30):
        _, z = transforms.random_context(sar, zones, np.random.default_rng(seed), cfg)
        seen |= set(np.unique(z).tolist())
    assert seen & {1, 2}  # interpolated ids at the 0|3 edge, as TYRION's bilinear mask resize


def test_flips_move_image_and_labels_together():
    sar, zones = _scene(64, 64)
    cfg = dataclasses.replace(NO_AUG, prob_hflip=0.5, prob_vflip=0.5, prob_rot90=0.5)
    rng = np.random.default_rng(3)
    outcomes = set()
    for _ in range(30):
        s, z = transforms.flips((sar, zones), rng, cfg)
        np.testing.assert_array_equal(s, z * 60 + 10)
        outcomes.add(s.tobytes())
    assert len(outcomes) > 4  # several distinct orientations were drawn


def test_known_flip():
    sar = np.arange(16, dtype=np.uint8).reshape(4, 4)
    cfg = dataclasses.replace(NO_AUG, prob_hflip=1.0)
    (out,) = transforms.flips((sar,), np.random.default_rng(0), cfg)
    np.testing.assert_array_equal(out, sar[:, ::-1])


def test_mix_up_changes_only_ocean():
    sar, zones = _scene(64, 64)
    other = np.full_like(sar, 250)
    out = transforms.mix_up_ocean(sar, zones, other, 0.2)
    np.testing.assert_array_equal(out[zones != 3], sar[zones != 3])
    # (190 + 0.2 * 250) / 1.2 = 200, truncated to uint8 (199 when float32 rounds down).
    assert set(np.unique(out[zones == 3]).tolist()) <= {199, 200}


def test_ocrodeg_gamma_and_brightness_are_monotone_luts():
    sar = np.arange(256, dtype=np.uint8).reshape(16, 16)
    cfg = dataclasses.replace(NO_AUG, prob_gamma=1.0, prob_brightness=1.0)
    out = transforms.ocrodeg(sar, np.random.default_rng(0), cfg)
    assert out.dtype == np.uint8 and np.all(np.diff(out.ravel().astype(int)) >= 0)


def test_token_mask_count_and_first_token():
    rng = np.random.default_rng(0)
    mask = transforms.token_mask(rng, (128, 128), 0.3, mask_first=False)
    assert mask.shape == (128, 128) and mask.sum() == 16384 - int(16384 * 0.7) == 4916
    assert not any(transforms.token_mask(rng, (8, 8), 0.9, False)[0, 0] for _ in range(50))
    assert any(transforms.token_mask(rng, (8, 8), 0.9, True)[0, 0] for _ in range(50))


def test_pretrain_crop_is_identical_on_sar_and_optical():
    rng = np.random.default_rng(0)
    sar = rng.integers(0, 256, size=(70, 90), dtype=np.uint8)
    optical = np.repeat(sar[..., None], 14, axis=-1)
    optical[..., 5] = 255 - sar  # a different band transforms the same way
    cfg = PretrainSamplerConfig(crop_size=32)
    for _ in range(10):
        s, o = transforms.pretrain_crop(sar, optical, rng, cfg)
        assert s.shape == (32, 32) and o.shape == (32, 32, 14)
        np.testing.assert_array_equal(o[..., 0], s)
        # Cubic resize rounds per channel: 255 - x may differ from the resized x by 1.
        assert np.abs(o[..., 5].astype(int) - (255 - s.astype(int))).max() <= 1
    with pytest.raises(ValueError, match="differ"):
        transforms.pretrain_crop(sar, optical[:-1], rng, cfg)


def test_config_validation():
    with pytest.raises(ValueError, match="centre_size"):
        FinetuneSamplerConfig(context_size=64, centre_size=128)
    with pytest.raises(ValueError, match="multiple"):
        PretrainSamplerConfig(crop_size=30)
