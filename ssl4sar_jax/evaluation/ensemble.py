"""Full-image prediction, test-time augmentation (TTA), ensembles.

As Nora-Go/TYRION ``Evaluation_test_time_aug_ensemble.py``: the members' softmax outputs over
the 4 rotations (0/90/180/270 degrees, no flips) are averaged.

* One pass: tile the image, run ``predict_fn`` on batches of contexts, cut the centre of the
  logits, softmax, stitch (``tiling.py``).
* TTA: the image is rotated ``k * 90`` degrees clockwise (``k = 0..3``, the reference's rotated
  copies on disk), predicted, and the probability map is rotated back ``k * 90`` degrees
  counter-clockwise (``np.rot90(k)``, the exact inverse).
* Ensemble: the plain arithmetic mean of the probability maps of all members x rotations, and the
  per-class population standard deviation (``np.std``, ddof 0) as the uncertainty map. The mean is
  accumulated in float32 with Welford's update, so memory does not grow with the number of passes
  (the reference averages float16 maps; the difference only matters for exact ties).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from ssl4sar_jax import array_utils
from ssl4sar_jax.evaluation.tiling import Stitcher, centre_crop, iter_tile_batches, make_layout

PredictFn = Callable[[np.ndarray], np.ndarray]


def rotate_clockwise(image: np.ndarray, k: int) -> np.ndarray:
    """Rotates ``[H, W, ...]`` by ``k * 90`` degrees clockwise (as cv2.ROTATE_90_CLOCKWISE)."""
    return np.rot90(image, k=-k, axes=(0, 1))


def rotate_back(probs: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`rotate_clockwise`: ``k * 90`` degrees counter-clockwise."""
    return np.rot90(probs, k=k, axes=(0, 1))


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable float32 softmax (a new array, same shape as ``logits``)."""
    # Reductions over a short innermost axis (K = 4) are slow in numpy; moving the class axis to
    # the front turns them into element-wise operations over contiguous planes (~7x faster).
    planes = np.array(np.moveaxis(logits, axis, 0), dtype=np.float32, order="C")
    planes -= planes.max(axis=0)
    np.exp(planes, out=planes)
    planes /= planes.sum(axis=0)
    return np.moveaxis(planes, 0, axis)


def _prefetch(items: Iterable, depth: int) -> Iterator:
    """Yields ``items`` produced ahead by a daemon thread (queue of ``depth``).

    An exception in the producer is re-raised in the consumer; if the consumer stops early the
    producer is told to stop and never blocks forever.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    done, stop = object(), threading.Event()

    def put(entry: tuple) -> bool:
        while not stop.is_set():
            try:
                buffer.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((done, None))
        except BaseException as err:  # handed to the consumer
            put((done, err))

    thread = threading.Thread(target=produce, daemon=True, name="tile-prefetch")
    thread.start()
    try:
        while True:
            item, err = buffer.get()
            if item is done:
                if err is not None:
                    raise err
                return
            yield item
    finally:
        stop.set()


def predict_probabilities(
    predict_fn: PredictFn,
    image: np.ndarray,
    *,
    context: int = 512,
    centre: int = 256,
    stride: int = 128,
    stitch_mode: str = "gaussian",
    batch_size: int = 8,
    num_classes: int = 4,
    name: str = "image",
    pad_batches: bool = True,
    prefetch: int = 2,
) -> np.ndarray:
    """One stitched forward pass over a full image.

    This is the batched tile inference every full-image path uses (evaluation, TTA,
    ensembles, scene prediction): tiles are cut on the host in a background thread, fed to
    ``predict_fn`` in batches of one fixed shape, and the previous batch is stitched while the
    current one runs.

    Args:
        predict_fn: float32 ``[N, context, context, 1]`` in [0, 1] -> logits
            ``[N, context, context, num_classes]`` (numpy or jax).
        image: float32 ``[H, W, 1]`` SAR in [0, 1].
        context: Tile size.
        centre: Kept centre size.
        stride: Tile step (``centre``: non-overlapping).
        stitch_mode: ``"gaussian"`` or ``"plain"``.
        batch_size: Tiles per ``predict_fn`` call.
        num_classes: Number of output classes.
        name: Image name used in error messages.
        pad_batches: Pad the last batch with zero tiles to ``batch_size`` (fixed shapes for a
            jitted ``predict_fn``); the padded outputs are discarded.
        prefetch: Tile batches cut ahead in a background thread (0 = no thread). The result
            does not depend on it.

    Returns:
        float32 ``[H, W, num_classes]`` probabilities.
    """
    layout = make_layout(image.shape[:2], context=context, centre=centre, stride=stride)
    stitcher = Stitcher(layout, num_classes, stitch_mode)

    def padded_batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for indices, tiles in iter_tile_batches(image, layout, batch_size):
            tiles = tiles.astype(np.float32, copy=False)
            if pad_batches:
                # One batch shape: a jitted predict_fn compiles once, also for the last batch.
                tiles, _ = array_utils.pad_batch(tiles, batch_size)
            yield indices, tiles

    def stitch(indices: np.ndarray, tiles: np.ndarray, output) -> None:
        logits = np.asarray(output)  # waits for an asynchronously dispatched result
        expected = (len(tiles), context, context, num_classes)
        if logits.shape != expected:
            raise ValueError(
                f"{name}: predict_fn returned logits of shape {logits.shape}, expected {expected}"
            )
        stitcher.add(indices, softmax(centre_crop(logits[: len(indices)], context, centre)))

    # Software pipeline: batch i+1 is cut (prefetch thread) and dispatched before batch i is
    # read back and stitched, so with an asynchronous predict_fn (a jitted JAX function returning
    # device arrays) the host work overlaps the model. Stitching order is unchanged.
    batches = _prefetch(padded_batches(), prefetch) if prefetch > 0 else padded_batches()
    previous = None
    for indices, tiles in batches:
        output = predict_fn(tiles)
        if previous is not None:
            stitch(*previous)
        previous = (indices, tiles, output)
    if previous is not None:
        stitch(*previous)
    return stitcher.result()


class RunningMeanStd:
    """Welford accumulator of ``[H, W, K]`` maps: mean and population std over passes."""

    def __init__(self) -> None:
        self.count = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def add(self, value: np.ndarray) -> None:
        value = np.asarray(value, dtype=np.float32)
        self.count += 1
        if self._mean is None:
            self._mean = value.copy()
            self._m2 = np.zeros_like(value)
            return
        if value.shape != self._mean.shape:
            raise ValueError(f"Map shape {value.shape} differs from {self._mean.shape}")
        delta = value - self._mean
        self._mean += delta / self.count
        self._m2 += delta * (value - self._mean)

    @property
    def mean(self) -> np.ndarray:
        if self._mean is None:
            raise ValueError("No map was added")
        return self._mean

    @property
    def std(self) -> np.ndarray:
        if self._m2 is None:
            raise ValueError("No map was added")
        return np.sqrt(np.maximum(self._m2 / self.count, 0.0))


def ensemble_probabilities(
    predict_fns: Sequence[PredictFn],
    image: np.ndarray,
    *,
    tta: bool = False,
    **predict_kwargs,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean and per-class std of the probability maps of all members (x 4 rotations with TTA).

    Args:
        predict_fns: One predict function per ensemble member (see :func:`predict_probabilities`).
        image: float32 ``[H, W, 1]`` SAR in [0, 1].
        tta: Add the 4 rotations (0, 90, 180, 270 degrees clockwise).
        **predict_kwargs: Forwarded to :func:`predict_probabilities`.

    Returns:
        ``(mean [H, W, K], std [H, W, K], number of passes)``.
    """
    if not predict_fns:
        raise ValueError("predict_fns is empty: need at least one predict function")
    acc = RunningMeanStd()
    rotations = (0, 1, 2, 3) if tta else (0,)
    for predict_fn in predict_fns:
        for k in rotations:
            rotated = np.ascontiguousarray(rotate_clockwise(image, k))
            probs = predict_probabilities(predict_fn, rotated, **predict_kwargs)
            acc.add(rotate_back(probs, k))
    return acc.mean, acc.std, acc.count
