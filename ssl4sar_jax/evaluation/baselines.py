"""Label-only baselines, scored with the same post-processing and metrics as a model.

A model that segments SAR images should beat predictions that never look at the image:

* **majority class**: the most frequent class of the training labels, everywhere (no front
  can be drawn from it: its MDE is undefined and every image counts as a missing front);
* **positional prior**: the per-pixel majority of the training zone maps, each resized to a
  common grid, resized back to every test image (it knows *where* glacier and ocean usually
  are in the frame, which is a lot for images of the same glaciers cut the same way).

Both are fitted on the ``zones`` of training records (the project's record format,
docs/interfaces.md) and evaluated with `ssl4sar_jax.evaluation.runner.evaluate_image` and
`summarise`, i.e. the same front extraction, MDE and IoU code as `evaluate_records`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from PIL import Image

from ssl4sar_jax.evaluation import runner

NUM_CLASSES = 4


def _resize_labels(zones: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a class-id map to ``(H, W)``."""
    if zones.shape == tuple(shape):
        return zones
    img = Image.fromarray(np.ascontiguousarray(zones, dtype=np.uint8))
    return np.asarray(img.resize((shape[1], shape[0]), Image.NEAREST))


@dataclasses.dataclass(frozen=True)
class MajorityClass:
    """Predicts the training labels' most frequent class everywhere."""

    class_id: int
    name: str = "majority class"

    @classmethod
    def fit(cls, zone_maps: Iterable[np.ndarray]) -> MajorityClass:
        counts = np.zeros(NUM_CLASSES, dtype=np.int64)
        n = 0
        for z in zone_maps:
            counts += np.bincount(np.asarray(z).ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
            n += 1
        if n == 0:
            raise ValueError("MajorityClass.fit needs at least one training zone map")
        return cls(int(np.argmax(counts)))

    def predict(self, shape: tuple[int, int]) -> np.ndarray:
        return np.full(shape, self.class_id, dtype=np.uint8)


@dataclasses.dataclass(frozen=True)
class PositionalPrior:
    """Per-pixel majority class of the training zone maps on a common grid."""

    prior: np.ndarray  # uint8 [gh, gw]
    name: str = "positional prior"

    @classmethod
    def fit(
        cls, zone_maps: Iterable[np.ndarray], grid: tuple[int, int] = (256, 256)
    ) -> PositionalPrior:
        votes = np.zeros((*grid, NUM_CLASSES), dtype=np.int32)
        n = 0
        for z in zone_maps:
            small = _resize_labels(np.asarray(z), grid)
            np.add.at(votes, (*np.indices(grid), np.minimum(small, NUM_CLASSES - 1)), 1)
            n += 1
        if n == 0:
            raise ValueError("PositionalPrior.fit needs at least one training zone map")
        return cls(np.argmax(votes, axis=-1).astype(np.uint8))

    def predict(self, shape: tuple[int, int]) -> np.ndarray:
        return _resize_labels(self.prior, shape)


def evaluate_baseline(
    baseline: MajorityClass | PositionalPrior | Callable[[tuple[int, int]], np.ndarray],
    records: Sequence[dict] | Iterable[dict],
    *,
    allow_empty_true_front: bool = True,
    length_rule: str = "tyrion",
) -> runner.EvaluationResult:
    """Scores a baseline on records with the project's post-processing and metrics.

    Args:
        baseline: an object with ``predict(shape) -> uint8 [H, W]`` (or such a callable).
        records: evaluation records (``zones``, ``front``, ``bbox``, metadata; SAR not needed).
        allow_empty_true_front: accept images whose true front is empty.
        length_rule: front-length rule of the post-processing.

    Returns:
        The `EvaluationResult` (``metrics`` as ``front/mde_m``, ``zones/iou_mean`` ...).
    """
    import time

    predict = baseline.predict if hasattr(baseline, "predict") else baseline
    t0 = time.perf_counter()
    rows = []
    for i, record in enumerate(records):
        image = runner.parse_record(
            record, index=i, allow_empty_true_front=allow_empty_true_front, require_sar=False
        )
        row, _ = runner.evaluate_image(image, predict(image.zones.shape), length_rule=length_rule)
        rows.append(row)
    flat, breakdowns = runner.summarise(rows)
    return runner.EvaluationResult(flat, rows, breakdowns, time.perf_counter() - t0)
