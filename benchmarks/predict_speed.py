r"""Prediction speed on one large synthetic scene: tiles/s, seconds per scene, peak memory.

The scene is a synthetic georeferenced GeoTIFF (``ssl4sar_jax.data.synthetic_geo``) of
``--size`` x ``--size`` pixels, predicted with the evaluation protocol (512-pixel tiles, centre 256,
stride 128, Gaussian stitching), with and without 4-rotation TTA. Two parts are timed:

* **pipeline**: the full ``ssl4sar_jax.predict`` run (read, tiling, stitching, softmax, ensemble
  statistics, post-processing, vectorisation, GeoTIFF/GeoJSON/PNG writing) with a constant
  predictor, i.e. everything except the network; measured end to end;
* **model**: the jitted network, batch sharded over ``--devices`` host devices as in
  ``ssl4sar_jax.predict`` (`ssl4sar_jax.steps.numpy_predictor`), on ``--batches`` batches of
  tiles (after one warm-up/compile batch) -> tiles/s.

Seconds per scene = tiles / model tiles/s + pipeline seconds (an upper bound: the tiled inference
overlaps host work with the model). With ``--full`` the real model predicts the whole scene as
well and the measured time and tiles/s are reported next to the model-only rate (use on an
accelerator or with the tiny model: on a few CPU cores the paper model needs hours for
4000 x 4000 with TTA). Every stage prints its progress as it goes.

    python benchmarks/predict_speed.py --size 4000 --model paper --batches 3
    python benchmarks/predict_speed.py --size 1000 --model tiny --full
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4000, help="scene height = width (px)")
    parser.add_argument("--model", choices=("paper", "tiny"), default="paper")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=3, help="timed model batches")
    parser.add_argument("--full", action="store_true", help="also run the real model on it all")
    parser.add_argument(
        "--devices", type=int, default=os.cpu_count() or 1, help="host (CPU) devices; 0 = JAX's"
    )
    parser.add_argument("--out", default="", help="JSON result file")
    args = parser.parse_args(argv)
    if args.devices and "JAX_NUM_CPU_DEVICES" not in os.environ:
        os.environ["JAX_NUM_CPU_DEVICES"] = str(args.devices)
    start = time.perf_counter()

    def progress(message: str) -> None:
        print(f"[{time.perf_counter() - start:7.1f} s] {message}", flush=True)

    import jax
    from flax import nnx

    from configs import predict as predict_configs
    from ssl4sar_jax import sharding as sharding_lib
    from ssl4sar_jax import steps
    from ssl4sar_jax.data import synthetic_geo
    from ssl4sar_jax.models import ModelConfig, build_model
    from ssl4sar_jax.predict import runner

    model_config = (
        ModelConfig.named(args.model)
        if args.model == "paper"
        else ModelConfig.named("tiny", img_size=512)
    )
    context = model_config.img_size
    sizes = dict(context=context, centre=context // 2, stride=context // 4)
    work = tempfile.mkdtemp(prefix="predict_speed_")
    progress(f"rendering a {args.size} x {args.size} synthetic scene into {work}")
    t0 = time.perf_counter()
    synthetic_geo.write_scene(
        work + "/in", "bench", shape=(args.size, args.size), spacing_m=20.0, seed=0
    )
    for suffix in ("_zones.tif", "_front.geojson"):
        os.remove(f"{work}/in/bench{suffix}")
    render_s = time.perf_counter() - t0
    result = {
        "size": args.size,
        "model": args.model,
        "context": context,
        "stride": sizes["stride"],
        "batch_size": args.batch_size,
        "devices": [str(d) for d in jax.devices()],
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "render_s": round(render_s, 2),
    }

    def constant(tiles):
        return np.zeros((*tiles.shape[:3], 4), np.float32)

    for tta in (False, True):
        config = predict_configs.get_config("paper")
        config.inputs = work + "/in"
        config.output_dir = f"{work}/out_tta{int(tta)}"
        config.model = model_config.to_dict()
        config.centre_size, config.stride = sizes["centre"], sizes["stride"]
        config.tta = tta
        config.batch_size = args.batch_size
        config.progress_every_s = 30.0
        progress(f"pipeline with a constant predictor, tta={tta}")
        t0 = time.perf_counter()
        rows = runner.predict_scenes(config, predict_fns=[constant])
        assert rows[0]["status"] == "ok", rows[0]
        key = "tta" if tta else "no_tta"
        result[f"{key}_tiles"] = rows[0]["tiles"]
        result[f"{key}_pipeline_s"] = round(time.perf_counter() - t0, 2)
    result["pipeline_peak_rss_mb"] = round(_peak_rss_mb(), 1)

    devices = jax.local_devices()
    if args.batch_size % len(devices):
        raise SystemExit(
            f"--batch_size {args.batch_size} is not a multiple of {len(devices)} devices"
        )
    mesh = sharding_lib.make_mesh([("data", -1)], devices)
    model = build_model(model_config, seed=0, objective="segment")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    repl, batch_sh = sharding_lib.replicated(mesh), sharding_lib.batch_sharding(mesh)
    params, rest = jax.device_put((params, rest), repl)
    forward = jax.jit(
        steps.make_predict_fn(graphdef), in_shardings=(repl, repl, batch_sh), out_shardings=batch_sh
    )
    predict_fn = steps.numpy_predictor(forward, params, rest, mesh, args.batch_size)
    result["model_devices"] = len(devices)

    x = np.random.default_rng(0).random((args.batch_size, context, context, 1), np.float32)
    progress(f"model: compiling + first batch of {args.batch_size} tiles on {len(devices)} devices")
    t0 = time.perf_counter()
    np.asarray(predict_fn(x))
    result["compile_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    for i in range(args.batches):
        np.asarray(predict_fn(x))
        done = (i + 1) * args.batch_size
        progress(
            f"model: batch {i + 1}/{args.batches}, {done / (time.perf_counter() - t0):.3f} tiles/s"
        )
    elapsed = time.perf_counter() - t0
    tiles_per_s = args.batches * args.batch_size / elapsed
    result["model_tiles_per_s"] = round(tiles_per_s, 3)
    for key in ("no_tta", "tta"):
        model_s = result[f"{key}_tiles"] / tiles_per_s
        result[f"{key}_model_s_extrapolated"] = round(model_s, 1)
        result[f"{key}_s_per_scene_estimate"] = round(model_s + result[f"{key}_pipeline_s"], 1)
    if args.full:
        for tta in (False, True):
            config = predict_configs.get_config("paper")
            config.inputs = work + "/in"
            config.output_dir = f"{work}/full_tta{int(tta)}"
            config.model = model_config.to_dict()
            config.centre_size, config.stride = sizes["centre"], sizes["stride"]
            config.tta, config.batch_size, config.progress_every_s = tta, args.batch_size, 30.0
            progress(f"full prediction with the model, tta={tta}")
            t0 = time.perf_counter()
            runner.predict_scenes(config, predict_fns=[predict_fn])
            key = "tta" if tta else "no_tta"
            result[f"{key}_s_per_scene_measured"] = round(time.perf_counter() - t0, 1)
            measured = result[f"{key}_tiles"] / result[f"{key}_s_per_scene_measured"]
            result[f"{key}_tiles_per_s_measured"] = round(measured, 3)
            # The bar: the whole pipeline within 10 % of the model-only rate.
            result[f"{key}_pipeline_vs_model"] = round(measured / tiles_per_s, 3)
    result["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
