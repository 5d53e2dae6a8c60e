"""Zones -> calving front post-processing and the evaluation bounding box.

As Nora-Go/TYRION ``Evaluation.py:post_processing`` and the CaFFe code
(Nora-Go/Calving_Fronts_and_Where_to_Find_Them ``data_processing/data_postprocessing.py``,
``validate_or_test.py:mask_prediction_with_bounding_box``).

Steps, for a predicted zone map (class ids, ``ssl4sar_jax.constants``) of an image with
resolution ``r`` metres per pixel:

1. fill ocean holes: of the 8-connected components of non-ocean pixels keep the largest
   (ties -> lowest label, i.e. first in raster order); all others become ocean;
2. single ocean: of the 8-connected ocean components keep the largest; the others become glacier
   (skipped when there is no ocean; when everything is ocean the map is left unchanged, the CaFFe
   behaviour; TYRION raises there);
3. front = ocean pixels with at least one 4-neighbour that is glacier (outside the image counts as
   not glacier);
4. drop 8-connected front pieces by pixel count: ``"tyrion"`` keeps ``size >= 750 / r``
   (default, the paper's code), ``"caffe"`` drops ``size <= 750 / r``;
5. bounding-box masking with the reference's slicing, half-to-even rounding and asymmetric clamp.

Everything is vectorised with ``scipy.ndimage`` / numpy. Step 3 is four shifted boolean ORs and
step 4 labels only the bounding box of the front pixels (fronts are thin), which give the
outputs of the plain full-image formulation exactly (``tests/test_evaluation_postprocess.py``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ssl4sar_jax.array_utils import nonzero_box
from ssl4sar_jax.constants import GLACIER, OCEAN

LENGTH_RULES = ("tyrion", "caffe")
MIN_FRONT_LENGTH_M = 750.0
_EIGHT = np.ones((3, 3), dtype=bool)
_FOUR = ndimage.generate_binary_structure(2, 1)


def _largest_component(mask: np.ndarray) -> tuple[np.ndarray, int, int] | None:
    """8-connected components of ``mask``: ``(labels [H, W], count, largest label)``.

    None if ``mask`` is empty.
    """
    try:
        # 16-bit labels halve the memory traffic of labelling, counting and masking a 16-Mpx
        # map (~30 % of this function); the numbering is the same as with any wider type.
        labels, count = ndimage.label(mask, structure=_EIGHT, output=np.uint16)
    except RuntimeError:  # more than 65,535 components: scipy refuses the narrow type
        labels, count = ndimage.label(mask, structure=_EIGHT)
    if count == 0:
        return None
    if count == 1:
        return labels, 1, 1
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0  # background
    largest = int(np.argmax(sizes))  # ties -> lowest label (raster order), as skimage
    return labels, count, largest


def _relabel_others(
    out: np.ndarray, mask: np.ndarray, labels: np.ndarray, largest: int, value: int
) -> None:
    """``out[mask & (labels != largest)] = value`` (``mask`` = the labelled pixels)."""
    others = labels != largest
    others &= mask
    out[others] = value


def fill_ocean_holes(zones: np.ndarray) -> np.ndarray:
    """Step 1: every non-ocean 8-component except the largest becomes ocean. ``[H, W]`` -> copy."""
    out = zones.copy()
    mask = zones != OCEAN
    found = _largest_component(mask)
    if found is not None and found[1] > 1:  # one component: nothing to fill
        _relabel_others(out, mask, found[0], found[2], OCEAN)
    return out


def keep_largest_ocean(zones: np.ndarray) -> np.ndarray:
    """Step 2: every ocean 8-component except the largest becomes glacier. ``[H, W]`` -> copy."""
    out = zones.copy()
    mask = zones == OCEAN
    found = _largest_component(mask)
    if found is not None and found[1] > 1:
        _relabel_others(out, mask, found[0], found[2], GLACIER)
    return out


def front_from_zones(zones: np.ndarray) -> np.ndarray:
    """Step 3: ocean pixels with a 4-neighbour that is glacier. ``[H, W]`` -> bool ``[H, W]``."""
    glacier = zones == GLACIER
    # The 4-dilation of glacier with "not glacier" outside the image, as four shifted ORs
    # (the same set as ndimage.binary_dilation(glacier, 4-structure, border_value=0) minus
    # glacier itself, which is never ocean; ~10x faster on 16-Mpx maps).
    near = np.zeros_like(glacier)
    near[1:] |= glacier[:-1]
    near[:-1] |= glacier[1:]
    near[:, 1:] |= glacier[:, :-1]
    near[:, :-1] |= glacier[:, 1:]
    near &= zones == OCEAN
    return near


def length_threshold_px(resolution_m: float) -> float:
    """Minimum front length in pixels, the float ``750 / r``."""
    if resolution_m <= 0:
        raise ValueError(f"resolution_m must be positive, got {resolution_m}")
    return MIN_FRONT_LENGTH_M / float(resolution_m)


def remove_short_fronts(front: np.ndarray, resolution_m: float, rule: str = "tyrion") -> np.ndarray:
    """Step 4: removes 8-connected front pieces below ``750 m / r`` (pixel count).

    Args:
        front: bool ``[H, W]`` front map.
        resolution_m: Pixel spacing in metres.
        rule: ``"tyrion"`` keeps pieces with ``size >= threshold``; ``"caffe"`` keeps
            ``size > threshold``. They differ only for pieces of exactly the threshold (125 px at
            6 m).

    Returns:
        bool ``[H, W]``.
    """
    if rule not in LENGTH_RULES:
        raise ValueError(f"length rule must be one of {LENGTH_RULES}, got {rule!r}")
    threshold = length_threshold_px(resolution_m)
    out = np.zeros(front.shape, dtype=bool)
    # Fronts are thin: label only the bounding box of the front pixels (a component never
    # leaves it, so the labels and sizes are those of the full image).
    box = nonzero_box(front)
    if box is None:
        return out
    labels, count = ndimage.label(front[box], structure=_EIGHT)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= threshold if rule == "tyrion" else sizes > threshold
    keep[0] = False
    out[box] = keep[labels]
    return out


def bbox_window(bbox: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Rounds and clamps a raw box as the reference does.

    Args:
        bbox: ``[4, 2]`` raw ``(x, y)`` corners in file order: left-upper, left-lower,
            right-lower, right-upper.
        shape: ``(H, W)`` of the prediction.

    Returns:
        ``(rl_y, lu_y, lu_x, rl_x)``: the reference zeroes rows ``[:rl_y]``, rows ``[lu_y:]``,
        columns ``[:lu_x]`` and columns ``[rl_x:]`` (numpy slice semantics, so negative values
        count from the end exactly as in the reference).
    """
    bbox = np.asarray(bbox, dtype=np.float64)
    if bbox.shape != (4, 2):
        raise ValueError(f"bbox must be [4, 2] (x, y) corners, got shape {bbox.shape}")
    if not np.all(np.isfinite(bbox)):
        raise ValueError(f"bbox has non-finite values: {bbox.tolist()}")
    # Python round() is half-to-even, as np.round.
    (lu_x, lu_y), (ll_x, ll_y), (rl_x, rl_y), (ru_x, ru_y) = (
        (int(np.round(x)), int(np.round(y))) for x, y in bbox
    )
    height, width = shape
    # The asymmetric clamp of the reference: only these comparisons, a value equal to W or H is
    # not clamped and one greater becomes W - 1 / H - 1. ll_x, ru_x, ll_y, ru_y are clamped but
    # never used by the slicing.
    if lu_x < 0:
        lu_x = 0
    if ll_x < 0:
        ll_x = 0
    if ru_x > width:
        ru_x = width - 1
    if rl_x > width:
        rl_x = width - 1
    if lu_y > height:
        lu_y = height - 1
    if ru_y > height:
        ru_y = height - 1
    if ll_y < 0:
        ll_y = 0
    if rl_y < 0:
        rl_y = 0
    return rl_y, lu_y, lu_x, rl_x


def mask_with_bbox(front: np.ndarray, bbox: np.ndarray | None) -> np.ndarray:
    """Step 5: zeroes predicted front pixels outside the box (no-op when ``bbox`` is None)."""
    if bbox is None:
        return front
    rl_y, lu_y, lu_x, rl_x = bbox_window(bbox, front.shape)
    out = front.copy()
    out[:rl_y] = 0
    out[lu_y:] = 0
    out[:, :lu_x] = 0
    out[:, rl_x:] = 0
    return out


def postprocess_zones(
    zones: np.ndarray,
    resolution_m: float,
    bbox: np.ndarray | None = None,
    *,
    length_rule: str = "tyrion",
    return_cleaned_zones: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Predicted zones -> predicted calving front (all the steps listed in the module docstring).

    Args:
        zones: ``[H, W]`` integer class ids (0 NA, 1 rock, 2 glacier, 3 ocean).
        resolution_m: Pixel spacing in metres.
        bbox: ``[4, 2]`` raw box corners, or None for no masking.
        length_rule: ``"tyrion"`` (default) or ``"caffe"``, see :func:`remove_short_fronts`.
        return_cleaned_zones: Also return the zone map after steps 1-2.

    Returns:
        bool ``[H, W]`` front map (and the cleaned ``[H, W]`` zones if asked).
    """
    zones = np.asarray(zones)
    if zones.ndim != 2:
        raise ValueError(f"zones must be [H, W], got shape {zones.shape}")
    cleaned = keep_largest_ocean(fill_ocean_holes(zones))
    front = front_from_zones(cleaned)
    front = remove_short_fronts(front, resolution_m, length_rule)
    front = mask_with_bbox(front, bbox)
    if return_cleaned_zones:
        return front, cleaned
    return front
