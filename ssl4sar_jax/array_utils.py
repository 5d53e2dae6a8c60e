"""Small shape helpers shared by training, evaluation and prediction (NumPy or JAX arrays).

Only slicing and ``concatenate`` of the array's own module are used, so the same function
serves the jitted loss (``jax.Array``) and the NumPy evaluation code, and importing this
module pulls in neither JAX nor the data layer.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np

ArrayT = TypeVar("ArrayT")


def centre_crop(x: ArrayT, size: int) -> ArrayT:
    """Central ``size x size`` crop of ``[B, H, W, ...]``, at torchvision ``CenterCrop`` offsets.

    The offsets are ``round((H - size) / 2)`` and ``round((W - size) / 2)`` (torchvision
    ``transforms.functional.center_crop``); for an even ``H - size`` that is exactly half the
    margin, as the TYRION context/centre loss and the tiling of full images cut it.

    Args:
        x: Array ``[B, H, W, ...]`` (NumPy or JAX).
        size: Side of the crop; must not exceed ``H`` or ``W``.

    Returns:
        ``[B, size, size, ...]``.
    """
    height, width = x.shape[1], x.shape[2]
    if size > height or size > width:
        raise ValueError(f"centre crop {size} larger than the input {height}x{width}")
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return x[:, top : top + size, left : left + size]


def pad_batch(x: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """Pads the leading axis of ``x`` with zeros up to ``size`` rows.

    A jitted function then always sees the same batch shape (one compilation) even for the
    last, short batch; the caller keeps the first ``count`` outputs.

    Args:
        x: ``[N, ...]`` with ``N <= size``.
        size: Batch size wanted.

    Returns:
        ``(padded [size, ...], count N)``.
    """
    count = len(x)
    if count > size:
        raise ValueError(f"batch of {count} rows does not fit the padded size {size}")
    if count == size:
        return x, count
    filler: Any = np.zeros((size - count, *x.shape[1:]), x.dtype)
    return np.concatenate([x, filler]), count


def nonzero_box(mask: np.ndarray) -> tuple[slice, slice] | None:
    """``(rows, cols)`` slices of the smallest box holding every non-zero of a ``[H, W]`` map.

    None when the map is all zero. Two reductions over the map; the fronts' post-processing
    and MDE then work inside the box, which is a small part of a 16-Mpx image for a thin
    front (a connected component and a row-major scan never leave it).
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
