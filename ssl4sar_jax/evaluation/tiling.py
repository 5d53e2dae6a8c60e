"""Full-image tiling and stitching, as the reference evaluates whole CaFFe images.

Two modes of Nora-Go/TYRION (``CaFFe/fetcher.py`` and ``CaFFe/dataset_hook.py``; padding is
NumPy ``symmetric``, i.e. mirrored including the edge pixel):

* **Non-overlapping** (``stride == centre``, TYRION ``PatchDataSet``): the image is padded with
  ``pad_whole_image`` and cut into a grid of ``(H // centre + 1) x (W // centre + 1)`` contexts
  whose centres tile a canvas that is then centre-cropped (half-to-even) back to ``H x W``.
* **Overlapping** (``stride < centre``, TYRION ``OverlappingPatchDataSet``): symmetric padding of
  ``(context - centre) / 2`` on every side plus ``1..stride`` extra pixels at the bottom/right
  (``pad_whole_image_overlapping``); contexts at ``stride``; the centre softmax is blended with a
  Gaussian importance map (sigma = centre / 8).

All padding is numpy ``"symmetric"`` (reflection that repeats the edge pixel). Sizes are not
hard-coded: the reference values are ``context=512, centre=256, stride=256|128``. For the
non-overlapping mode the reference formula assumes ``context == 2 * centre``; the general form used
here, ``top = (context - centre) // 2 + round((n * centre - H) / 2)``, reduces to it exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
from scipy import ndimage

from ssl4sar_jax import array_utils

STITCH_MODES = ("plain", "gaussian")


@dataclasses.dataclass(frozen=True)
class TileLayout:
    """Everything needed to cut tiles from an image and stitch the centres back.

    Attributes:
        image_shape: ``(H, W)`` of the original image.
        padded_shape: ``(Hp, Wp)`` of the padded image the tiles are cut from.
        pad_top: Rows added above the image.
        pad_left: Columns added left of the image.
        context: Tile size fed to the model.
        centre: Size of the tile centre that is kept.
        stride: Step between tiles (``== centre``: non-overlapping; ``< centre``: overlapping).
        origins: ``[N, 2]`` int64 top-left corners ``(row, col)`` of the tiles (padded coords).
    """

    image_shape: tuple[int, int]
    padded_shape: tuple[int, int]
    pad_top: int
    pad_left: int
    context: int
    centre: int
    stride: int
    origins: np.ndarray

    @property
    def num_tiles(self) -> int:
        return int(self.origins.shape[0])

    @property
    def margin(self) -> int:
        """Offset of the centre inside a context tile."""
        return (self.context - self.centre) // 2

    @property
    def overlapping(self) -> bool:
        return self.stride < self.centre

    @property
    def pad_bottom(self) -> int:
        return self.padded_shape[0] - self.image_shape[0] - self.pad_top

    @property
    def pad_right(self) -> int:
        return self.padded_shape[1] - self.image_shape[1] - self.pad_left


def _check_sizes(context: int, centre: int, stride: int) -> None:
    if centre <= 0 or context < centre:
        raise ValueError(f"Need 0 < centre <= context, got centre={centre}, context={context}")
    if (context - centre) % 2:
        raise ValueError(f"context - centre must be even, got context={context}, centre={centre}")
    if not 0 < stride <= centre:
        raise ValueError(
            f"stride must be in 1..centre={centre} so the centres cover the image, got {stride}"
        )


def _grid_axis(size: int, context: int, centre: int) -> tuple[int, int, int]:
    """Non-overlapping axis: returns (pad_before, padded_size, n_tiles)."""
    n = size // centre + 1
    # Reference: the centre canvas (n * centre) is centre-cropped with torchvision's
    # int(round((n * centre - size) / 2)) (half-to-even) back to `size`.
    crop = int(round((n * centre - size) / 2))
    before = (context - centre) // 2 + crop
    padded = (n - 1) * centre + context
    return before, padded, n


def _overlap_axis(size: int, context: int, centre: int, stride: int) -> tuple[int, int, int]:
    """Overlapping axis: returns (pad_before, padded_size, n_tiles)."""
    margin = (context - centre) // 2
    padded = size + 2 * margin
    extra = stride - ((padded - context) % stride)  # 1..stride, a full stride when aligned
    while padded + extra < context:  # tiny images only (never for CaFFe sizes >= 382 px)
        extra += stride
    padded += extra
    n = (padded - context) // stride + 1
    return margin, padded, n


def make_layout(
    image_shape: tuple[int, int], *, context: int = 512, centre: int = 256, stride: int = 256
) -> TileLayout:
    """Computes the padding and the tile origins of one image.

    Args:
        image_shape: ``(H, W)`` of the image.
        context: Tile size fed to the model.
        centre: Size of the kept centre.
        stride: ``centre`` for reference mode B (non-overlapping), less (128) for mode A.

    Returns:
        The :class:`TileLayout`.
    """
    _check_sizes(context, centre, stride)
    height, width = (int(s) for s in image_shape)
    if height <= 0 or width <= 0:
        raise ValueError(f"image_shape must be positive, got {image_shape}")
    if stride == centre:
        top, padded_h, n_rows = _grid_axis(height, context, centre)
        left, padded_w, n_cols = _grid_axis(width, context, centre)
    else:
        top, padded_h, n_rows = _overlap_axis(height, context, centre, stride)
        left, padded_w, n_cols = _overlap_axis(width, context, centre, stride)
    rows, cols = np.meshgrid(
        np.arange(n_rows, dtype=np.int64) * stride,
        np.arange(n_cols, dtype=np.int64) * stride,
        indexing="ij",
    )
    origins = np.stack([rows.ravel(), cols.ravel()], axis=1)  # row-major, as the reference
    return TileLayout(
        image_shape=(height, width),
        padded_shape=(padded_h, padded_w),
        pad_top=top,
        pad_left=left,
        context=context,
        centre=centre,
        stride=stride,
        origins=origins,
    )


def pad_image(image: np.ndarray, layout: TileLayout) -> np.ndarray:
    """Symmetric padding of ``image`` ``[H, W, ...]`` to ``layout.padded_shape``."""
    if tuple(image.shape[:2]) != layout.image_shape:
        raise ValueError(
            f"Image shape {image.shape[:2]} does not match the layout {layout.image_shape}"
        )
    widths = [(layout.pad_top, layout.pad_bottom), (layout.pad_left, layout.pad_right)]
    widths += [(0, 0)] * (image.ndim - 2)
    return np.pad(image, widths, mode="symmetric")


def cut_tiles(padded: np.ndarray, layout: TileLayout, indices: np.ndarray) -> np.ndarray:
    """Cuts the tiles ``indices`` from a padded image ``[Hp, Wp, C]`` -> ``[n, ctx, ctx, C]``."""
    ctx = layout.context
    return np.stack([padded[r : r + ctx, c : c + ctx] for r, c in layout.origins[indices]])


def tile_image(
    image: np.ndarray, *, context: int = 512, centre: int = 256, stride: int = 256
) -> tuple[np.ndarray, TileLayout]:
    """Pads a full image and cuts all context tiles.

    Args:
        image: ``[H, W, C]`` image (any dtype).
        context: Tile size.
        centre: Kept centre size.
        stride: ``centre`` (non-overlapping) or smaller (overlapping).

    Returns:
        ``(tiles [N, context, context, C], layout)``. For big images prefer
        :func:`iter_tile_batches`, which does not hold all tiles at once.
    """
    if image.ndim != 3:
        raise ValueError(f"tile_image expects [H, W, C], got shape {image.shape}")
    layout = make_layout(image.shape[:2], context=context, centre=centre, stride=stride)
    padded = pad_image(image, layout)
    return cut_tiles(padded, layout, np.arange(layout.num_tiles)), layout


def iter_tile_batches(
    image: np.ndarray, layout: TileLayout, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields ``(indices [n], tiles [n, ctx, ctx, C])`` batches of one image."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    padded = pad_image(image, layout)
    for start in range(0, layout.num_tiles, batch_size):
        indices = np.arange(start, min(start + batch_size, layout.num_tiles))
        yield indices, cut_tiles(padded, layout, indices)


def gaussian_importance_map(centre: int) -> np.ndarray:
    """The reference's blending weights ``[centre, centre]`` (float64).

    An impulse at ``(centre // 2, centre // 2)`` blurred by ``scipy.ndimage.gaussian_filter``
    (sigma = centre / 8, mode constant), normalised to max 1, zeros replaced by the smallest
    non-zero value (TYRION ``evaluate_model.py``).
    """
    impulse = np.zeros((centre, centre), dtype=np.float64)
    impulse[centre // 2, centre // 2] = 1.0
    weights = ndimage.gaussian_filter(impulse, sigma=centre / 8, mode="constant", cval=0.0)
    weights = weights / weights.max()
    if np.any(weights == 0):
        weights[weights == 0] = weights[weights != 0].min()
    return weights


def centre_crop(tiles: np.ndarray, context: int, centre: int) -> np.ndarray:
    """Cuts the centre ``[N, centre, centre, ...]`` of ``[N, context, context, ...]`` tiles."""
    if tiles.shape[1] != context or tiles.shape[2] != context:
        raise ValueError(
            f"Expected tiles of size {context}x{context}, got shape {tuple(tiles.shape)}"
        )
    return array_utils.centre_crop(tiles, centre)


class Stitcher:
    """Accumulates centre probabilities of the tiles of one image (batch by batch).

    ``plain``: un-weighted (for non-overlapping tiles every pixel has exactly one tile, so this is
    the reference's paste); ``gaussian``: weighted by :func:`gaussian_importance_map`, the output
    being ``sum(w * p) / max(sum(w), 1e-12)`` as the reference.
    """

    def __init__(self, layout: TileLayout, num_classes: int, mode: str = "gaussian"):
        if mode not in STITCH_MODES:
            raise ValueError(f"stitch mode must be one of {STITCH_MODES}, got {mode!r}")
        self.layout = layout
        self.mode = mode
        self.num_classes = num_classes
        self._sum = np.zeros((*layout.padded_shape, num_classes), dtype=np.float32)
        self._weight = np.zeros(layout.padded_shape, dtype=np.float32)
        if mode == "gaussian":
            self._tile_weight = gaussian_importance_map(layout.centre).astype(np.float32)
        else:
            self._tile_weight = np.ones((layout.centre, layout.centre), dtype=np.float32)
        self._seen = np.zeros(layout.num_tiles, dtype=bool)

    def add(self, indices: np.ndarray, centre_probs: np.ndarray) -> None:
        """Adds ``centre_probs [n, centre, centre, K]`` of the tiles ``indices [n]``."""
        c, m = self.layout.centre, self.layout.margin
        expected = (len(indices), c, c, self.num_classes)
        if tuple(centre_probs.shape) != expected:
            raise ValueError(f"centre_probs has shape {centre_probs.shape}, expected {expected}")
        w = self._tile_weight
        for (r, col), probs in zip(self.layout.origins[indices], centre_probs, strict=True):
            window = (slice(r + m, r + m + c), slice(col + m, col + m + c))
            self._sum[window] += w[..., None] * probs
            self._weight[window] += w
        self._seen[indices] = True

    def result(self) -> np.ndarray:
        """Returns the stitched ``[H, W, K]`` float32 probabilities (padding removed)."""
        if not self._seen.all():
            raise ValueError(
                f"{int((~self._seen).sum())} of {self.layout.num_tiles} tiles were never added"
            )
        lay = self.layout
        rows = slice(lay.pad_top, lay.pad_top + lay.image_shape[0])
        cols = slice(lay.pad_left, lay.pad_left + lay.image_shape[1])
        total = self._sum[rows, cols]
        weight = np.maximum(self._weight[rows, cols], 1e-12)
        return total / weight[..., None]


def stitch_probabilities(
    centre_probs: np.ndarray, layout: TileLayout, mode: str = "gaussian"
) -> np.ndarray:
    """Stitches tile centre probabilities back into the full image.

    Args:
        centre_probs: ``[N, centre, centre, K]`` probabilities (softmax of the centre logits),
            in the order of ``layout.origins``.
        layout: The layout returned by :func:`tile_image` / :func:`make_layout`.
        mode: ``"plain"`` (non-overlapping paste / uniform mean) or ``"gaussian"``.

    Returns:
        ``[H, W, K]`` float32 probabilities of the original image.
    """
    if centre_probs.ndim != 4 or centre_probs.shape[0] != layout.num_tiles:
        raise ValueError(
            f"centre_probs must be [N={layout.num_tiles}, {layout.centre}, {layout.centre}, K], "
            f"got {centre_probs.shape}"
        )
    stitcher = Stitcher(layout, centre_probs.shape[-1], mode)
    stitcher.add(np.arange(layout.num_tiles), centre_probs)
    return stitcher.result()
