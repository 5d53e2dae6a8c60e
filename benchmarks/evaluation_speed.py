"""Speed of the evaluation of a whole CaFFe test split from saved predictions (no model).

122 synthetic images with the test split's composition (COL: 18 S1 + 47 TDX; Mapple: 10 ENVISAT,
2 ERS, 8 PALSAR, 15 S1, 22 TSX; Gourmelon et al. 2022, ESSD) and per-glacier image sizes that
scale with the pixel spacing (the extent of a glacier scene is fixed in metres). The sizes are
assumptions within the range of the CaFFe images (heights 405-3,561, widths 382-4,476 pixels):
the largest
(3561 x 4476) is used for COL at 7 m. Content: a wavy glacier/ocean boundary with rock, an NA
strip, icebergs and lakes; the "prediction" is the label with a shifted boundary and extra blobs,
so hole filling, component selection, length filtering and the box all do work.

Timed: `evaluate_zone_predictions` over the split: record validation, post-processing, MDE
(KD-tree) and zone metrics per image in ``--workers`` processes (default 2, both cores of the
reference machine), then the pooling and the breakdowns. Not timed: building the synthetic
arrays (they stand in for reading saved files; two per glacier/sensor group, cycled). Also
printed: the CPU seconds of all processes, which shared load distorts less than wall time.

Usage:
    PYTHONPATH=. python benchmarks/evaluation_speed.py [--scale 1.0] [--images 122] [--workers 2]
    PYTHONPATH=. python benchmarks/evaluation_speed.py --stitch   # tiling/stitching overhead
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from ssl4sar_jax.constants import GLACIER, NA, OCEAN, ROCK
from ssl4sar_jax.evaluation.ensemble import predict_probabilities
from ssl4sar_jax.evaluation.postprocess import front_from_zones
from ssl4sar_jax.evaluation.runner import evaluate_zone_predictions
from ssl4sar_jax.evaluation.tiling import make_layout

# (glacier, sensor, resolution_m, count, (height, width)); sizes assumed, see the docstring.
TEST_SPLIT = [
    ("COL", "S1", 20, 18, (1247, 1567)),
    ("COL", "TDX", 7, 47, (3561, 4476)),
    ("Mapple", "ENVISAT", 20, 10, (405, 382)),
    ("Mapple", "ERS", 20, 2, (405, 382)),
    ("Mapple", "PALSAR", 17, 8, (476, 449)),
    ("Mapple", "S1", 20, 15, (405, 382)),
    ("Mapple", "TSX", 7, 22, (1157, 1091)),
]


def synthetic_pair(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Returns (true zones, predicted zones), uint8 ``[H, W]``."""
    rng = np.random.default_rng(seed)
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]
    phase = rng.uniform(0, 2 * np.pi)

    def boundary(shift: float) -> np.ndarray:
        wave = 0.08 * width * np.sin(rows / (0.07 * height) + phase)
        return 0.55 * width + wave + shift

    zones = np.full((height, width), GLACIER, np.uint8)
    zones[cols >= boundary(0.0)] = OCEAN
    zones[:, : width // 10] = ROCK
    zones[: height // 20] = NA
    pred = np.full((height, width), GLACIER, np.uint8)
    pred[cols >= boundary(rng.uniform(-0.02, 0.02) * width)] = OCEAN
    pred[:, : width // 10] = ROCK
    pred[: height // 20] = NA
    for _ in range(30):  # icebergs in the sea, lakes on the glacier, rock specks
        r, c = rng.integers(0, height - 8), rng.integers(0, width - 8)
        size = rng.integers(2, 8)
        pred[r : r + size, c : c + size] = rng.choice([GLACIER, OCEAN, ROCK])
    return zones, pred


def stitch_overhead(height: int = 3561, width: int = 4476) -> None:
    """Times the model-free part of one stitched pass of the largest image, both modes."""
    image = np.random.default_rng(0).random((height, width, 1), dtype=np.float32)

    def trivial_model(tiles: np.ndarray) -> np.ndarray:
        return np.concatenate([tiles, -tiles, tiles * 0.5, 1 - tiles], axis=-1)

    for stride, mode in ((256, "plain"), (128, "gaussian")):
        layout = make_layout((height, width), context=512, centre=256, stride=stride)
        start = time.perf_counter()
        predict_probabilities(
            trivial_model, image, context=512, centre=256, stride=stride, stitch_mode=mode
        )
        seconds = time.perf_counter() - start
        print(
            f"stitching {height}x{width}, stride {stride} ({mode}), {layout.num_tiles} tiles: "
            f"{seconds:.1f} s ({layout.num_tiles / seconds:.0f} tiles/s, model excluded)"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="Image size factor")
    parser.add_argument("--images", type=int, default=122, help="Stop after this many images")
    parser.add_argument("--out-dir", default=None, help="Also write metrics.json, CSV, summary.png")
    parser.add_argument(
        "--workers", type=int, default=2, help="Processes for post-processing + metrics"
    )
    parser.add_argument("--quiet", action="store_true", help="No per-image progress lines")
    parser.add_argument(
        "--stitch",
        action="store_true",
        help="Instead: time tiling + softmax + stitching of one 3561x4476 image (trivial model)",
    )
    args = parser.parse_args(argv)
    if args.stitch:
        stitch_overhead()
        return

    # Two synthetic pairs per (glacier, sensor) group, cycled over the group's images: building
    # all 122 at full size would hold ~2.4 GB; the per-image work does not depend on which.
    specs, pairs, pixels = [], {}, 0
    for glacier, sensor, res, count, (h, w) in TEST_SPLIT:
        h, w = max(16, int(h * args.scale)), max(16, int(w * args.scale))
        for i in range(count):
            if len(specs) >= args.images:
                break
            key = (glacier, sensor, i % 2)
            if key not in pairs:
                pairs[key] = synthetic_pair(h, w, seed=len(pairs))
            specs.append((key, f"{glacier}_2016-0{1 + i % 9}-15_{sensor}_{res}_1_{i:03d}", h, w))
            pixels += h * w
    true_fronts = {key: front_from_zones(z).astype(np.uint8) for key, (z, _) in pairs.items()}

    def records():
        for key, stem, h, w in specs:
            yield {
                "zones": pairs[key][0],
                "front": true_fronts[key],
                "bbox": np.array([[0, h], [0, 0], [w, 0], [w, h]], np.float32),
                "stem": stem,
            }

    predictions = (pairs[key][1] for key, _, _, _ in specs)
    self_start = resource.getrusage(resource.RUSAGE_SELF)
    children_start = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = evaluate_zone_predictions(
        predictions,
        records(),
        num_records=len(specs),
        num_workers=args.workers,
        out_dir=args.out_dir,  # written files are part of the timing when asked for
        verbose=not args.quiet,
    )
    timed = time.perf_counter() - start

    def cpu_seconds(start, who) -> tuple[float, float]:
        end = resource.getrusage(who)
        return end.ru_utime - start.ru_utime, end.ru_stime - start.ru_stime

    parent_user, parent_sys = cpu_seconds(self_start, resource.RUSAGE_SELF)
    workers_user, workers_sys = cpu_seconds(children_start, resource.RUSAGE_CHILDREN)
    cpu = parent_user + parent_sys + workers_user + workers_sys
    metrics, rows = result.metrics, result.per_image
    print(
        f"images {len(rows)}, megapixels {pixels / 1e6:.0f}, workers {args.workers}: "
        f"evaluation {timed:.1f} s wall ({timed / len(rows):.2f} s/image, "
        f"{pixels / 1e6 / timed:.1f} Mpx/s), {cpu:.1f} CPU-s in all processes; "
        f"pooled MDE {metrics['front/mde_m']:.1f} m, missing {metrics['front/missing_fronts']}, "
        f"mean IoU {metrics['zones/iou_mean']:.3f}\n"
        f"CPU-s user/system: this process {parent_user:.1f}/{parent_sys:.1f} (reading records, "
        f"sending them to the workers), workers {workers_user:.1f}/{workers_sys:.1f}"
    )


if __name__ == "__main__":
    main()
