"""The hand-written resize kernels of the samplers against PyTorch's own interpolation.

torch ``F.interpolate`` is the reference implementation of the three modes the samplers use:
``nearest-exact`` (labels; PIL NEAREST), ``bilinear`` with ``align_corners=False`` and no
antialias (torchvision's resize of the fine-tuning SAR), and ``bicubic`` (Keys a = -0.75,
clamped borders: the kernel of OpenCV's INTER_CUBIC used for pretraining crops).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl4sar_jax.data.transforms import resize

SIZES = [((37, 53), (64, 64)), ((64, 64), (37, 29)), ((100, 80), (33, 120)), ((16, 16), (48, 40))]


def _torch(image: np.ndarray, size, mode: str) -> np.ndarray:
    x = torch.from_numpy(image.astype(np.float64))[None, None]
    kwargs = {} if mode == "nearest-exact" else dict(align_corners=False, antialias=False)
    return torch.nn.functional.interpolate(x, size=size, mode=mode, **kwargs)[0, 0].numpy()


@pytest.mark.parametrize(("shape", "size"), SIZES)
def test_nearest_equals_torch_nearest_exact(shape, size):
    labels = np.random.default_rng(0).integers(0, 4, shape).astype(np.uint8)
    np.testing.assert_array_equal(
        resize(labels, size, "nearest"), _torch(labels, size, "nearest-exact")
    )


@pytest.mark.parametrize(("shape", "size"), SIZES)
@pytest.mark.parametrize(("method", "mode"), [("bilinear", "bilinear"), ("cubic", "bicubic")])
def test_interpolation_equals_torch_to_rounding(shape, size, method, mode):
    image = np.random.default_rng(1).integers(0, 256, shape).astype(np.uint8)
    ours = resize(image, size, method).astype(np.int64)
    theirs = np.clip(np.round(_torch(image, size, mode)), 0, 255).astype(np.int64)
    # float32 (ours) vs float64 (reference) accumulation: at most one grey level apart, and
    # only where the exact value sits at a rounding boundary.
    assert np.abs(ours - theirs).max() <= 1
    assert np.mean(ours == theirs) > 0.95
