"""Label-only baselines: majority class and positional prior, scored with the project's metrics."""

from __future__ import annotations

import numpy as np
import pytest

from ssl4sar_jax.evaluation import baselines


def _record(zones: np.ndarray, stem: str) -> dict:
    g, o = zones == 2, zones == 3
    front = np.zeros_like(g)
    front[:-1] |= g[:-1] & o[1:]
    return dict(
        stem=stem, zones=zones.astype(np.uint8), front=front.astype(np.uint8),
        bbox=np.array([[0, zones.shape[0] - 1], [0, 0], [zones.shape[1] - 1, 0],
                       [zones.shape[1] - 1, zones.shape[0] - 1]], np.float32),
    )  # fmt: skip


def _scene(h: int, w: int, front_row: int) -> np.ndarray:
    z = np.full((h, w), 1, np.uint8)
    z[:, w // 4 : 3 * w // 4] = 2
    z[front_row:, w // 4 : 3 * w // 4] = 3
    z[:3] = 0
    return z


def test_majority_class_is_the_most_frequent_label():
    maps = [_scene(64, 64, 40), _scene(64, 64, 44)]
    base = baselines.MajorityClass.fit(maps)
    assert base.class_id == 1  # rock covers half of each map
    assert (base.predict((5, 7)) == 1).all()
    result = baselines.evaluate_baseline(base, [_record(m, f"SI_2010-01-0{i + 1}_TSX_7_1_001")
                                                for i, m in enumerate(maps)])  # fmt: skip
    assert result.metrics["front/missing_fronts"] == 2  # no glacier/ocean boundary at all
    assert result.metrics["zones/iou_rock"] == pytest.approx(30 * 64 / (61 * 64), abs=0.02)


def test_positional_prior_votes_per_pixel_and_resizes():
    maps = [_scene(64, 64, 40), _scene(64, 64, 40), _scene(128, 128, 64)]
    prior = baselines.PositionalPrior.fit(maps, grid=(32, 32))
    assert prior.prior.shape == (32, 32)
    assert prior.prior[25, 16] == 3 and prior.prior[5, 16] == 2 and prior.prior[10, 2] == 1
    pred = prior.predict((96, 80))
    assert pred.shape == (96, 80)
    test = [_record(_scene(96, 80, 60), "SI_2011-02-03_ERS_20_1_002")]
    result = baselines.evaluate_baseline(prior, test)
    m = result.metrics
    assert m["front/missing_fronts"] == 0
    # The prior puts the front at 40/64 of the height, as the test image (60/96) has it.
    assert 0 <= m["front/mde_m"] < 2 * 20
    assert m["zones/iou_glacier"] > 0.8


def test_fit_needs_training_maps():
    with pytest.raises(ValueError, match="at least one"):
        baselines.MajorityClass.fit([])
    with pytest.raises(ValueError, match="at least one"):
        baselines.PositionalPrior.fit([])
