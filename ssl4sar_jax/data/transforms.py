"""Numpy transforms of the input pipelines (as Nora-Go/TYRION ``CaFFe/dataset_hook.py``,
``CaFFe/fetcher.py`` and ``CaFFe/dataset_unlabeled.py``).

All functions are pure numpy, take an explicit ``np.random.Generator`` and work on uint8 images
``[H, W]`` / ``[H, W, C]`` until the final float conversion, like the reference.

Padding is never materialised: a crop of the symmetrically padded image is gathered directly from
the original with reflected indices (`symmetric_indices`), which is identical to
``np.pad(..., mode="symmetric")`` followed by slicing but costs only the crop.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ssl4sar_jax.constants import OCEAN

# ----------------------------------------------------------------------------------------------
# Padding and cropping
# ----------------------------------------------------------------------------------------------


def pad_amounts(size: int, tile: int) -> tuple[int, int]:
    """(before, after) padding of TYRION ``pad_whole_image`` along one axis (NumPy ``symmetric``).

    Target ``(size // tile + 2) * tile``; before = ``round(d / 2)``, after = ``round((d + 1) / 2)``
    with Python's half-to-even round, so the result is one pixel larger when ``d % 4`` is 2 or 3.
    """
    d = (size // tile + 2) * tile - size
    return int(round(d / 2)), int(round((d + 1) / 2))


def symmetric_indices(idx: np.ndarray, n: int) -> np.ndarray:
    """Maps indices of a symmetrically padded axis (numpy ``symmetric``) to the original axis."""
    m = np.mod(idx, 2 * n)
    return np.where(m < n, m, 2 * n - 1 - m)


def pad_whole_image(image: np.ndarray, tile: int) -> np.ndarray:
    """Materialised ``pad_whole_image`` (used by tests and small images): symmetric pad, HW[C]."""
    (t, b), (l_, r) = pad_amounts(image.shape[0], tile), pad_amounts(image.shape[1], tile)
    pads = [(t, b), (l_, r)] + [(0, 0)] * (image.ndim - 2)
    return np.pad(image, pads, mode="symmetric")


def crop_padded(
    image: np.ndarray, tile: int, top: int, left: int, height: int, width: int
) -> np.ndarray:
    """``pad_whole_image(image, tile)[top:top+height, left:left+width]`` without padding.

    The window is truncated at the padded border (as slicing would).
    """
    (pt, pb), (pl, pr) = pad_amounts(image.shape[0], tile), pad_amounts(image.shape[1], tile)
    hp, wp = image.shape[0] + pt + pb, image.shape[1] + pl + pr
    rows = np.arange(top, min(top + height, hp)) - pt
    cols = np.arange(left, min(left + width, wp)) - pl
    rows = symmetric_indices(rows, image.shape[0])
    cols = symmetric_indices(cols, image.shape[1])
    return image[rows[:, None], cols[None, :]]


def padded_shape(shape: tuple[int, ...], tile: int) -> tuple[int, int]:
    (pt, pb), (pl, pr) = pad_amounts(shape[0], tile), pad_amounts(shape[1], tile)
    return shape[0] + pt + pb, shape[1] + pl + pr


# ----------------------------------------------------------------------------------------------
# Resizing (separable, explicit kernels so the behaviour is pinned)
# ----------------------------------------------------------------------------------------------


def _taps(n_in: int, n_out: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Source indices [n_out, k] and weights [n_out, k] for one axis."""
    scale = n_in / n_out
    dst = np.arange(n_out, dtype=np.float64)
    if method == "nearest":
        # Centre-aligned nearest (torch "nearest-exact", PIL NEAREST): picks the bilinear tap
        # with the larger weight, so labels stay aligned with the bilinear-resized SAR.
        # torch's legacy "nearest" (floor(dst * scale)) would shift labels by (scale - 1) / 2 px.
        idx = np.minimum(np.floor((dst + 0.5) * scale).astype(np.int64), n_in - 1)
        return idx[:, None], np.ones((n_out, 1))
    src = (dst + 0.5) * scale - 0.5  # half-pixel centres (align_corners=False)
    if method == "bilinear":  # torch bilinear, antialias=False: negative coordinates clamp to 0
        src = np.maximum(src, 0.0)
        i0 = np.floor(src).astype(np.int64)
        f = src - i0
        idx = np.stack([i0, np.minimum(i0 + 1, n_in - 1)], axis=1)
        return np.minimum(idx, n_in - 1), np.stack([1 - f, f], axis=1)
    if method == "cubic":  # cv2 INTER_CUBIC: Keys kernel a = -0.75, replicated border
        i0 = np.floor(src).astype(np.int64)
        f = src - i0
        a = -0.75
        d = np.stack([1 + f, f, 1 - f, 2 - f], axis=1)
        w = np.where(
            d <= 1,
            (a + 2) * d**3 - (a + 3) * d**2 + 1,
            a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a,
        )
        idx = np.clip(i0[:, None] + np.arange(-1, 3)[None, :], 0, n_in - 1)
        return idx, w
    raise ValueError(f"Unknown resize method {method!r}; expected nearest, bilinear or cubic")


def _resize_rows(x: np.ndarray, n_out: int, method: str, block: int = 32) -> np.ndarray:
    """Resizes axis 0. Gathers whole rows and works in blocks of output rows so the temporaries
    stay in cache (2x faster than whole-array passes; this is the samplers' hot loop)."""
    idx, w = _taps(x.shape[0], n_out, method)
    if idx.shape[1] == 1:
        return x[idx[:, 0]]
    xf = x if x.dtype == np.float32 else x.astype(np.float32)
    weights = w.astype(np.float32).reshape(w.shape + (1,) * (x.ndim - 1))
    out = np.empty((n_out,) + x.shape[1:], dtype=np.float32)
    for start in range(0, n_out, block):
        stop = min(n_out, start + block)
        acc = out[start:stop]
        np.multiply(xf[idx[start:stop, 0]], weights[start:stop, 0], out=acc)
        for k in range(1, idx.shape[1]):
            acc += xf[idx[start:stop, k]] * weights[start:stop, k]
    return out


def resize(image: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
    """Resizes ``[H, W]`` or ``[H, W, C]`` to ``size``.

    Args:
        image: uint8 (or integer label) array.
        size: ``(out_h, out_w)``.
        method: ``"nearest"`` (labels), ``"bilinear"`` (fine-tuning SAR, like torchvision on
            uint8 tensors without antialias) or ``"cubic"`` (pretraining, like cv2.INTER_CUBIC).

    Returns:
        Array of the input dtype; interpolated uint8 values are rounded and saturated.
    """
    if image.shape[:2] == tuple(size):
        return image
    rows = _resize_rows(image, size[0], method)
    # Columns: transpose, resize rows, transpose back (gathering rows is much faster).
    out = np.swapaxes(
        _resize_rows(np.ascontiguousarray(np.swapaxes(rows, 0, 1)), size[1], method), 0, 1
    )
    if method == "nearest":
        return out
    return np.clip(np.round(out), 0, 255).astype(image.dtype)


# ----------------------------------------------------------------------------------------------
# Fine-tuning augmentations (TYRION CaFFe/dataset_hook.py:RandomPatchDataset)
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FinetuneSamplerConfig:
    """Fine-tuning sampler settings (defaults = TYRION ``randomCrop512.yaml``).

    Attributes:
        context_size: side of the network input (512 in the paper).
        centre_size: side of the supervised centre (256); the loss cuts it, the sampler only checks
            it fits.
        samples_per_epoch: global samples per epoch (40000 in the paper).
        prob_rezoom: probability of a random zoom of the context.
        zoom_range: zoom factor range ``[lo, hi)``; the crop side is ``int(context * z)``.
        prob_mix_up: probability of the ocean-only mix-up with another context.
        mix_up_range: mix-up weight range ``[lo, hi)``.
        prob_speckle / prob_brightness / prob_gamma: Ocrodeg-style distortions.
        brightness_range / gamma_range: their factor ranges.
        prob_hflip / prob_vflip / prob_rot90: flips, then a rotation by 90/180/270 degrees.
        label_resize: ``"nearest"`` (default; labels stay valid class ids) or ``"bilinear"``
            (the reference's behaviour: interpolated ids appear at class boundaries).
    """

    context_size: int = 512
    centre_size: int = 256
    samples_per_epoch: int = 40000
    prob_rezoom: float = 0.5
    zoom_range: tuple[float, float] = (0.33, 2.83)
    prob_mix_up: float = 0.3
    mix_up_range: tuple[float, float] = (0.15, 0.30)
    prob_speckle: float = 0.2
    prob_brightness: float = 0.2
    brightness_range: tuple[float, float] = (0.6, 1.4)
    prob_gamma: float = 0.2
    gamma_range: tuple[float, float] = (0.7, 1.3)
    prob_hflip: float = 0.5
    prob_vflip: float = 0.5
    prob_rot90: float = 0.5
    label_resize: str = "nearest"

    def __post_init__(self):
        if self.centre_size > self.context_size or self.context_size <= 0:
            raise ValueError(
                f"Need 0 < centre_size <= context_size, got {self.centre_size}/{self.context_size}"
            )
        if self.label_resize not in ("nearest", "bilinear"):
            raise ValueError(f"label_resize must be nearest|bilinear, got {self.label_resize!r}")


def random_context(
    sar: np.ndarray, zones: np.ndarray, rng: np.random.Generator, cfg: FinetuneSamplerConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Random (optionally rezoomed) context of the padded image, resized to the context size.

    Args:
        sar: uint8 [H, W].
        zones: uint8 [H, W] class ids.
        rng: random generator.
        cfg: sampler settings.

    Returns:
        ``(sar uint8 [C, C], zones uint8 [C, C])``.
    """
    c = cfg.context_size
    zoom = rng.uniform(*cfg.zoom_range) if rng.random() < cfg.prob_rezoom else 1.0
    side = int(c * zoom)
    hp, wp = padded_shape(sar.shape, c)
    top = int(rng.integers(0, max(1, hp - side)))
    left = int(rng.integers(0, max(1, wp - side)))
    sar_crop = crop_padded(sar, c, top, left, side, side)
    zones_crop = crop_padded(zones, c, top, left, side, side)
    sar_out = resize(sar_crop, (c, c), "bilinear")
    if cfg.label_resize == "bilinear":
        zones_out = resize(zones_crop, (c, c), "bilinear")
    else:
        zones_out = resize(zones_crop, (c, c), "nearest")
    return sar_out, zones_out


def mix_up_ocean(
    sar: np.ndarray, zones: np.ndarray, other_sar: np.ndarray, weight: float
) -> np.ndarray:
    """Blends another context into the ocean pixels: ``(a + f b) / (1 + f)``, truncated to uint8."""
    mixed = (sar.astype(np.float32) + weight * other_sar.astype(np.float32)) / (1.0 + weight)
    mixed = np.clip(mixed, 0, 255).astype(np.uint8)
    return np.where(zones == OCEAN, mixed, sar)


def ocrodeg(sar: np.ndarray, rng: np.random.Generator, cfg: FinetuneSamplerConfig) -> np.ndarray:
    """Poisson speckle -> brightness -> gamma, each with its probability (TYRION
    ``RandomPatchDataset``, after the geometric augmentations)."""
    if rng.random() < cfg.prob_speckle:
        peak = int(3 * rng.random()) + 1
        noise = rng.random(sar.shape) * (rng.poisson(peak, sar.shape) - peak)
        top = noise.max()
        if top > 0:
            noise = noise / top
        x = np.clip(sar / 255.0 + noise, 0.0, 1.0)
        sar = (x * 255).astype(np.uint8)  # truncation, as the reference
    if rng.random() < cfg.prob_brightness:
        factor = rng.uniform(*cfg.brightness_range)
        sar = np.clip(sar * factor, 0, 255).astype(np.uint8)
    if rng.random() < cfg.prob_gamma:
        g = rng.uniform(*cfg.gamma_range)
        lut = np.floor(255.999 * (np.arange(256) / 255.0) ** g).astype(np.uint8)
        sar = lut[sar]
    return sar


def flips(
    arrays: tuple[np.ndarray, ...], rng: np.random.Generator, cfg: FinetuneSamplerConfig
) -> tuple[np.ndarray, ...]:
    """Same horizontal flip, vertical flip, then rotation for every array (HW first axes)."""
    if rng.random() < cfg.prob_hflip:
        arrays = tuple(a[:, ::-1] for a in arrays)
    if rng.random() < cfg.prob_vflip:
        arrays = tuple(a[::-1] for a in arrays)
    if rng.random() < cfg.prob_rot90:
        k = int(rng.integers(1, 4))
        arrays = tuple(np.rot90(a, k) for a in arrays)
    return tuple(np.ascontiguousarray(a) for a in arrays)


# ----------------------------------------------------------------------------------------------
# Pretraining (TYRION CaFFe/dataset_unlabeled.py: Random_Dataset_OptSimMIM / _OptTranslator)
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PretrainSamplerConfig:
    """Pretraining sampler settings (defaults = TYRION ``OptSimMIM.yaml``).

    Attributes:
        crop_size: side of the crop fed to the network (512).
        samples_per_epoch: global samples per epoch (76496 in the paper).
        rrc_scale: random-resized-crop side fraction range ``[lo, hi)``.
        prob_flip: probability of the (vertical) flip applied to SAR and optical together.
        mask_patch_size: token side in pixels (4, the patch-embedding size).
        mask_ratio: fraction of tokens masked (lightly: ``int(n * (1 - ratio))`` are kept).
        mask_first_token: False = token 0 is never masked (lightly's class-token default, as the
            reference); True = every token can be masked.
    """

    crop_size: int = 512
    samples_per_epoch: int = 76496
    rrc_scale: tuple[float, float] = (0.7, 1.0)
    prob_flip: float = 0.5
    mask_patch_size: int = 4
    mask_ratio: float = 0.3
    mask_first_token: bool = False

    def __post_init__(self):
        if self.crop_size % self.mask_patch_size:
            raise ValueError(
                f"crop_size {self.crop_size} must be a multiple of mask_patch_size "
                f"{self.mask_patch_size}"
            )
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")


def token_mask(rng: np.random.Generator, grid: tuple[int, int], ratio: float, mask_first: bool):
    """SimMIM token mask as lightly ``random_token_mask``: bool [gh, gw], True = masked.

    Noise per token, token 0 forced first unless `mask_first`, argsort, keep the first
    ``int(n * (1 - ratio))``; the rest are masked (4916 of 16384 at 512 / 4 / 0.3).
    """
    n = grid[0] * grid[1]
    noise = rng.random(n)
    if not mask_first:
        noise[0] = -1.0
    keep = np.argsort(noise, kind="stable")[: int(n * (1 - ratio))]
    mask = np.ones(n, dtype=bool)
    mask[keep] = False
    return mask.reshape(grid)


def pretrain_crop(
    sar: np.ndarray, optical: np.ndarray, rng: np.random.Generator, cfg: PretrainSamplerConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Random crop + random-resized crop + flip, identical for SAR and optical.

    Args:
        sar: uint8 [H, W].
        optical: uint8 [H, W, 14] (same grid).
        rng: random generator.
        cfg: sampler settings.

    Returns:
        ``(sar uint8 [C, C], optical uint8 [C, C, 14])``.
    """
    if sar.shape[:2] != optical.shape[:2]:
        raise ValueError(f"SAR shape {sar.shape} and optical shape {optical.shape} differ")
    c = cfg.crop_size
    hp, wp = padded_shape(sar.shape, c)
    top = int(rng.integers(0, hp - c))
    left = int(rng.integers(0, wp - c))
    scale = rng.uniform(*cfg.rrc_scale)
    side = int(c * scale)
    top += int(rng.integers(0, c - side + 1))
    left += int(rng.integers(0, c - side + 1))
    # SAR and the 14 bands are resized in one call (the same as separately: per-channel kernel).
    stacked = np.concatenate(
        [
            crop_padded(sar, c, top, left, side, side)[..., None],
            crop_padded(optical, c, top, left, side, side),
        ],
        axis=-1,
    )
    crop = resize(stacked, (c, c), "cubic")
    sar_c, opt_c = crop[..., 0], crop[..., 1:]
    if rng.random() < cfg.prob_flip:  # cv2.flip(.., 1) on CHW arrays = an up-down flip
        sar_c, opt_c = sar_c[::-1], opt_c[::-1]
    return np.ascontiguousarray(sar_c), np.ascontiguousarray(opt_c)
