"""Hand-computed Mean Distance Error cases and zone-metric conventions."""

import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from ssl4sar_jax.evaluation.metrics import (
    breakdowns,
    front_distances,
    front_points,
    mean_distance_error,
    sensor_group,
    zone_metrics,
)


def _front(shape, pixels):
    front = np.zeros(shape, dtype=np.uint8)
    for r, c in pixels:
        front[r, c] = 1
    return front


def test_single_pixels_3_4_5_triangle():
    pred = _front((8, 8), [(0, 0)])
    true = _front((8, 8), [(3, 4)])
    result = mean_distance_error([pred], [true], [10])
    # Both directions: 5 px * 10 m = 50 m, twice.
    assert result["mde_m"] == pytest.approx(50.0)
    assert result["missing_fronts"] == 0


def test_fronts_of_different_lengths():
    pred = _front((4, 4), [(0, 0), (0, 1), (0, 2)])
    true = _front((4, 4), [(0, 0)])
    # pred -> true: 0, 1, 2; true -> pred: 0. Sum 3 over 4 samples.
    dist = front_distances(pred, true, 1.0)
    np.testing.assert_allclose(np.sort(dist.pred_to_true_m), [0, 1, 2])
    np.testing.assert_allclose(dist.true_to_pred_m, [0])
    assert mean_distance_error([pred], [true], [1])["mde_m"] == pytest.approx(0.75)


def test_different_resolutions_pooled_not_mean_of_means():
    # Image A at 2 m: distances 0, 2, 4 | 0 -> sum 6 over 4 samples (mean 1.5).
    pred_a = _front((4, 4), [(0, 0), (0, 1), (0, 2)])
    true_a = _front((4, 4), [(0, 0)])
    # Image B at 10 m: 50 | 50, 50 (two true pixels at (3,4) and (4,3), both 5 px from (0,0)).
    pred_b = _front((8, 8), [(0, 0)])
    true_b = _front((8, 8), [(3, 4), (4, 3)])
    # Image C: no predicted front -> excluded and counted.
    pred_c = np.zeros((5, 5), np.uint8)
    true_c = _front((5, 5), [(2, 2)])
    result = mean_distance_error([pred_a, pred_b, pred_c], [true_a, true_b, true_c], [2, 10, 6])
    assert result["mde_m"] == pytest.approx((6 + 150) / (4 + 3))
    assert result["mde_per_image_mean_m"] == pytest.approx((1.5 + 50) / 2)
    # Weighted by true-front length: A has 1 true pixel, B has 2.
    assert result["mde_front_length_weighted_m"] == pytest.approx((1.5 * 1 + 50 * 2) / 3)
    assert result["missing_fronts"] == 1
    assert result["num_images"] == 3
    assert result["num_images_with_front"] == 2


def test_no_predicted_front_anywhere_gives_nan():
    true = _front((5, 5), [(1, 1)])
    result = mean_distance_error([np.zeros((5, 5))], [true], [20])
    assert math.isnan(result["mde_m"])
    assert result["missing_fronts"] == 1


def test_kdtree_matches_brute_force_cdist():
    rng = np.random.default_rng(0)
    pred = rng.random((60, 70)) < 0.02
    true = rng.random((60, 70)) < 0.03
    dist = front_distances(pred, true, 7.0)
    p, g = np.argwhere(pred), np.argwhere(true)
    d = cdist(p, g)
    np.testing.assert_allclose(dist.pred_to_true_m, 7.0 * d.min(axis=1))
    np.testing.assert_allclose(dist.true_to_pred_m, 7.0 * d.min(axis=0))


@pytest.mark.parametrize(
    "case", ["empty", "one_pixel", "corners", "thin_curve", "dense", "edge_rows", "bool_uint8"]
)
def test_front_points_equal_argwhere_exactly(case):
    """The box-cropped search gives np.argwhere's points in np.argwhere's order."""
    rng = np.random.default_rng(len(case))
    shape = (37, 53)
    front = np.zeros(shape, dtype=bool)
    if case == "one_pixel":
        front[20, 7] = True
    elif case == "corners":
        front[0, 0] = front[-1, -1] = front[0, -1] = front[-1, 0] = True
    elif case == "thin_curve":
        rows = np.arange(3, 30)
        front[rows, (25 + 6 * np.sin(rows / 4)).astype(int)] = True
    elif case == "dense":
        front = rng.random(shape) < 0.3
    elif case == "edge_rows":
        front[-1, 10:40] = True
        front[5, 50] = True
    elif case == "bool_uint8":
        front = (rng.random(shape) < 0.05).astype(np.uint8) * 255
    points = front_points(front)
    expected = np.argwhere(front).astype(np.float64)
    assert points.dtype == np.float64 and points.shape == expected.shape
    np.testing.assert_array_equal(points, expected)


def test_front_distances_bit_identical_to_full_image_search():
    """Sums over the distances are bit-identical to the plain np.argwhere formulation."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(3)
    pred = np.zeros((300, 400), bool)
    true = np.zeros((300, 400), bool)
    rows = np.arange(40, 260)
    true[rows, (200 + 30 * np.sin(rows / 17)).astype(int)] = True
    pred[rows, (205 + 28 * np.sin(rows / 15)).astype(int)] = True
    pred[rng.integers(0, 300, 40), rng.integers(0, 400, 40)] = True  # scattered pieces
    dist = front_distances(pred, true, 6.0)
    p, g = np.argwhere(pred).astype(np.float64), np.argwhere(true).astype(np.float64)
    plain_p2t = cKDTree(g).query(p, k=1)[0] * 6.0
    plain_t2p = cKDTree(p).query(g, k=1)[0] * 6.0
    np.testing.assert_array_equal(dist.pred_to_true_m, plain_p2t)
    np.testing.assert_array_equal(dist.true_to_pred_m, plain_t2p)
    assert dist.total_m == float(plain_p2t.sum() + plain_t2p.sum())


def test_front_distance_shape_mismatch():
    with pytest.raises(ValueError, match="differ in shape"):
        front_distances(np.zeros((3, 3)), np.zeros((3, 4)), 1.0)


def test_zone_metrics_hand_computed_and_absent_class_is_zero():
    target = np.array([[2, 2, 3, 3]])
    pred = np.array([[2, 3, 3, 3]])
    m = zone_metrics(pred, target)
    # Glacier: TP 1, FN 1 -> IoU 1/2, precision 1, recall 1/2, F1 2/3.
    assert m["iou_glacier"] == pytest.approx(0.5)
    assert m["precision_glacier"] == pytest.approx(1.0)
    assert m["recall_glacier"] == pytest.approx(0.5)
    assert m["f1_glacier"] == pytest.approx(2 / 3)
    # Ocean: TP 2, FP 1 -> IoU 2/3, precision 2/3, recall 1.
    assert m["iou_ocean"] == pytest.approx(2 / 3)
    assert m["recall_ocean"] == pytest.approx(1.0)
    # NA and rock absent from both: 0 (torchmetrics 1.x), so they pull the mean down.
    assert m["iou_na"] == 0.0 and m["iou_rock"] == 0.0
    assert m["iou_mean"] == pytest.approx((0.5 + 2 / 3) / 4)


def test_zone_metrics_rejects_bad_ids():
    with pytest.raises(ValueError, match="class ids"):
        zone_metrics(np.array([[4]]), np.array([[0]]))


def test_breakdowns_pool_within_subsets():
    rows = [
        dict(
            glacier="COL",
            season="winter",
            sensor_group=sensor_group("TDX"),
            resolution_m=7,
            has_front=True,
            front_sum_m=10.0,
            front_count=2,
            n_true_front=1,
            **{k: 1.0 for k in zone_metrics(np.zeros((1, 1)), np.zeros((1, 1)))},
        ),
        dict(
            glacier="COL",
            season="summer",
            sensor_group=sensor_group("TSX"),
            resolution_m=7,
            has_front=True,
            front_sum_m=30.0,
            front_count=2,
            n_true_front=1,
            **{k: 0.5 for k in zone_metrics(np.zeros((1, 1)), np.zeros((1, 1)))},
        ),
        dict(
            glacier="Mapple",
            season="winter",
            sensor_group="S1",
            resolution_m=20,
            has_front=False,
            front_sum_m=float("nan"),
            front_count=0,
            n_true_front=3,
            **{k: 0.0 for k in zone_metrics(np.zeros((1, 1)), np.zeros((1, 1)))},
        ),
    ]
    b = breakdowns(rows)
    assert b["glacier"]["COL"]["mde_m"] == pytest.approx(10.0)
    assert b["glacier"]["Mapple"]["missing_fronts"] == 1
    assert set(b["sensor"]) == {"TSX/TDX", "S1"}
    assert b["sensor"]["TSX/TDX"]["num_images"] == 2
    assert b["season"]["winter"]["mde_m"] == pytest.approx(5.0)
    assert b["glacier_season"]["COL/summer"]["mde_m"] == pytest.approx(15.0)
    assert b["resolution"]["7"]["iou_mean"] == pytest.approx(0.75)
