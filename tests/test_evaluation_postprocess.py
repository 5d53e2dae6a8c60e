"""Zones -> front post-processing on constructed masks, and bounding-box clamp cases."""

import numpy as np
import pytest

from ssl4sar_jax.constants import GLACIER, NA, OCEAN, ROCK
from ssl4sar_jax.evaluation.postprocess import (
    bbox_window,
    fill_ocean_holes,
    front_from_zones,
    keep_largest_ocean,
    mask_with_bbox,
    postprocess_zones,
    remove_short_fronts,
)


def _split_map(height=20, width=20, boundary=10):
    zones = np.full((height, width), GLACIER, np.uint8)
    zones[:, boundary:] = OCEAN
    return zones


def test_front_is_ocean_side_of_glacier_boundary():
    zones = _split_map()
    front = front_from_zones(zones)
    expected = np.zeros_like(front)
    expected[:, 10] = True  # the ocean column touching glacier
    np.testing.assert_array_equal(front, expected)


def test_ocean_next_to_rock_or_na_is_not_front_and_diagonal_does_not_count():
    zones = np.full((6, 6), OCEAN, np.uint8)
    zones[0, 0] = GLACIER  # touches (0, 1) and (1, 0) by 4-adjacency, (1, 1) only diagonally
    zones[5, 0] = ROCK
    zones[5, 5] = NA
    front = front_from_zones(zones)
    assert front.sum() == 2
    assert front[0, 1] and front[1, 0] and not front[1, 1]
    assert not front[4, 0] and not front[5, 4]


def test_holes_in_ocean_are_filled_and_islands_disappear():
    zones = _split_map()
    zones[3:5, 15:17] = GLACIER  # glacier island in the sea -> ocean
    zones[12, 17] = ROCK  # rock island -> ocean
    filled = fill_ocean_holes(zones)
    assert (filled[3:5, 15:17] == OCEAN).all() and filled[12, 17] == OCEAN
    assert (filled[:, :10] == GLACIER).all()


def test_only_largest_ocean_survives():
    zones = _split_map()
    zones[5:7, 2:4] = OCEAN  # a lake inside the glacier -> glacier
    cleaned = keep_largest_ocean(zones)
    assert (cleaned[5:7, 2:4] == GLACIER).all()
    assert (cleaned[:, 10:] == OCEAN).all()


def test_postprocess_full_pipeline_on_constructed_mask():
    zones = _split_map(40, 40, 20)
    zones[:, :5] = ROCK  # rock on the far side
    zones[:3, 20:] = NA  # NA strip on top of the sea: the front touches NA, nothing removed
    zones[10:12, 30:32] = GLACIER  # iceberg -> ocean, no front around it
    zones[30:32, 8:10] = OCEAN  # lake -> glacier
    front = postprocess_zones(zones, resolution_m=20)  # threshold 37.5 px
    expected = np.zeros((40, 40), bool)
    expected[3:, 20] = True  # 37 px < 37.5 -> dropped!
    assert front.sum() == 0
    zones[2, 20:] = OCEAN  # NA strip 2 rows high: now 38 px >= 37.5 -> kept
    expected[:] = False
    expected[2:, 20] = True
    np.testing.assert_array_equal(postprocess_zones(zones, resolution_m=20), expected)


@pytest.mark.parametrize(("rule", "kept"), [("tyrion", True), ("caffe", False)])
def test_length_rule_at_exact_threshold(rule, kept):
    front = np.zeros((130, 3), bool)
    front[:125, 1] = True  # exactly 750 / 6 = 125 px
    out = remove_short_fronts(front, 6, rule)
    assert out.any() == kept
    front[125, 1] = True  # 126 px: both keep
    assert remove_short_fronts(front, 6, rule).sum() == 126


def test_pieces_are_8_connected_pixel_counts():
    front = np.zeros((10, 10), bool)
    idx = np.arange(10)
    front[idx, idx] = True  # diagonal line: one 8-connected piece of 10 px
    assert remove_short_fronts(front, 75, "tyrion").sum() == 10  # threshold 10
    front[5, 5] = False  # two pieces of 5 -> both dropped
    assert remove_short_fronts(front, 75, "tyrion").sum() == 0


def test_bad_length_rule():
    with pytest.raises(ValueError, match="length rule"):
        remove_short_fronts(np.zeros((2, 2), bool), 6, "other")


def _box(lu, ll, rl, ru):
    return np.array([lu, ll, rl, ru], dtype=np.float64)


def test_bbox_inside_keeps_window():
    # Kept window: rows [rl_y, lu_y) x cols [lu_x, rl_x).
    box = _box((2, 8), (2, 3), (7, 3), (7, 8))
    assert bbox_window(box, (10, 10)) == (3, 8, 2, 7)
    out = mask_with_bbox(np.ones((10, 10), bool), box)
    expected = np.zeros((10, 10), bool)
    expected[3:8, 2:7] = True
    np.testing.assert_array_equal(out, expected)


def test_bbox_round_half_to_even():
    box = _box((2.5, 8.5), (0, 0), (6.5, 3.5), (0, 0))
    # 2.5 -> 2, 8.5 -> 8, 6.5 -> 6, 3.5 -> 4
    assert bbox_window(box, (10, 10)) == (4, 8, 2, 6)


def test_bbox_asymmetric_clamp():
    height, width = 10, 12
    # Equal to W / H: not clamped, the last column / row survive.
    box = _box((-3, height), (0, 0), (width, -2), (0, 0))
    assert bbox_window(box, (height, width)) == (0, height, 0, width)
    assert mask_with_bbox(np.ones((height, width), bool), box).all()
    # One more than W / H: clamped to W - 1 / H - 1, which blanks the last column / row.
    box = _box((0, height + 1), (0, 0), (width + 1, 0), (0, 0))
    assert bbox_window(box, (height, width)) == (0, height - 1, 0, width - 1)
    out = mask_with_bbox(np.ones((height, width), bool), box)
    assert out[:-1, :-1].all() and not out[-1].any() and not out[:, -1].any()


def test_bbox_none_is_noop_and_bad_shape_raises():
    front = np.ones((3, 3), bool)
    assert mask_with_bbox(front, None) is front
    with pytest.raises(ValueError, match=r"\[4, 2\]"):
        bbox_window(np.zeros((3, 2)), (3, 3))


def test_largest_component_tie_goes_to_first_in_raster_order():
    zones = np.full((7, 9), GLACIER, np.uint8)
    zones[0:2, 5:8] = OCEAN  # 6 px, first in raster order (row 0)
    zones[4:6, 0:3] = OCEAN  # 6 px, later
    cleaned = keep_largest_ocean(zones)
    assert (cleaned[0:2, 5:8] == OCEAN).all()
    assert (cleaned[4:6, 0:3] == GLACIER).all()


def test_all_ocean_is_left_unchanged_and_has_no_front():
    zones = np.full((5, 5), OCEAN, np.uint8)
    front, cleaned = postprocess_zones(zones, 20, return_cleaned_zones=True)
    np.testing.assert_array_equal(cleaned, zones)
    assert not front.any()


# ------------------------------------------------------------ fast paths vs plain formulation
# The plain full-image formulations of steps 1-4 (labels over the whole image, a dilation for
# the front), against which the optimised implementations must agree pixel for pixel.
_EIGHT = np.ones((3, 3), bool)


def _plain_largest_others(mask):
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=_EIGHT)
    if count == 0:
        return np.zeros(mask.shape, bool)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    largest = int(np.argmax(sizes))
    return (labels != 0) & (labels != largest)


def _plain_postprocess(zones, resolution_m, rule):
    from scipy import ndimage

    out = zones.copy()
    out[_plain_largest_others(zones != OCEAN)] = OCEAN
    out[_plain_largest_others(out == OCEAN)] = GLACIER
    glacier = out == GLACIER
    near = ndimage.binary_dilation(glacier, ndimage.generate_binary_structure(2, 1))
    front = (out == OCEAN) & near
    labels, count = ndimage.label(front, structure=_EIGHT)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    threshold = 750.0 / resolution_m
    keep = sizes >= threshold if rule == "tyrion" else sizes > threshold
    keep[0] = False
    return keep[labels], out


def _constructed_cases():
    rng = np.random.default_rng(0)
    cases = []
    for height, width in ((1, 1), (1, 9), (9, 1), (2, 2), (17, 23), (64, 48)):
        cases.append(rng.integers(0, 4, (height, width)).astype(np.uint8))  # noise
    # Blocky maps: a front along the image border, a thin front touching the corners,
    # icebergs and lakes, one-class maps.
    for seed in range(12):
        r = np.random.default_rng(seed)
        zones = np.full((40, 57), GLACIER, np.uint8)
        zones[:, r.integers(0, 57) :] = OCEAN
        for _ in range(r.integers(0, 25)):
            y, x, s = r.integers(0, 40), r.integers(0, 57), r.integers(1, 6)
            zones[y : y + s, x : x + s] = r.integers(0, 4)
        cases.append(zones)
    cases += [np.full((8, 8), c, np.uint8) for c in (NA, ROCK, GLACIER, OCEAN)]
    diagonal = np.full((30, 30), OCEAN, np.uint8)
    diagonal[np.triu_indices(30)] = GLACIER  # a front from corner to corner
    cases.append(diagonal)
    long_front = np.full((300, 40), GLACIER, np.uint8)  # fronts of 149 and 150 px (> 125)
    long_front[:, 25:] = OCEAN
    long_front[150, 25:] = ROCK  # splits the front in two pieces
    cases.append(long_front)
    # More than 65,535 components (the 16-bit labels fall back to 32 bits): 90,000 glacier
    # specks in the ocean (hole filling) and 90,000 ocean specks on the glacier (single ocean),
    # all of size 1 so the largest is decided by the raster-order tie rule.
    specks = np.full((600, 600), OCEAN, np.uint8)
    specks[::2, ::2] = GLACIER
    cases.append(specks)
    lakes = np.full((600, 600), GLACIER, np.uint8)
    lakes[::2, ::2] = OCEAN
    cases.append(lakes)
    return cases


@pytest.mark.parametrize("rule", ["tyrion", "caffe"])
@pytest.mark.parametrize("resolution_m", [6.0, 50.0, 150.0, 750.0])
def test_optimised_steps_equal_plain_full_image_formulation(rule, resolution_m):
    for zones in _constructed_cases():
        expected_front, expected_zones = _plain_postprocess(zones, resolution_m, rule)
        front, cleaned = postprocess_zones(
            zones, resolution_m, None, length_rule=rule, return_cleaned_zones=True
        )
        np.testing.assert_array_equal(cleaned, expected_zones)
        np.testing.assert_array_equal(front, expected_front)
    # The cases are not trivial: some fronts are kept, some removed.
    kept = [
        postprocess_zones(z, resolution_m, None, length_rule=rule).sum()
        for z in _constructed_cases()
    ]
    assert any(kept) and not all(kept)
