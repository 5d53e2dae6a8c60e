"""CaFFe evaluation: tiling/stitching, zones -> front, MDE and zone metrics, TTA/ensembles, reports.

See ``docs/evaluation.md``. Main entry point: :func:`evaluate_records`.
"""

from ssl4sar_jax.evaluation.ensemble import (
    ensemble_probabilities,
    predict_probabilities,
    rotate_back,
    rotate_clockwise,
)
from ssl4sar_jax.evaluation.metrics import (
    front_distances,
    mean_distance_error,
    zone_metrics,
)
from ssl4sar_jax.evaluation.postprocess import bbox_window, mask_with_bbox, postprocess_zones
from ssl4sar_jax.evaluation.runner import (
    EvaluationResult,
    evaluate_records,
    evaluate_zone_predictions,
    parse_record,
)
from ssl4sar_jax.evaluation.tiling import (
    TileLayout,
    gaussian_importance_map,
    make_layout,
    stitch_probabilities,
    tile_image,
)

__all__ = [
    "EvaluationResult",
    "TileLayout",
    "bbox_window",
    "ensemble_probabilities",
    "evaluate_records",
    "evaluate_zone_predictions",
    "front_distances",
    "gaussian_importance_map",
    "make_layout",
    "mask_with_bbox",
    "mean_distance_error",
    "parse_record",
    "postprocess_zones",
    "predict_probabilities",
    "rotate_back",
    "rotate_clockwise",
    "stitch_probabilities",
    "tile_image",
    "zone_metrics",
]
