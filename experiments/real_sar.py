r"""Fine-tune on real SAR glaciers, test on a held-out glacier, against label-only baselines.

Works on any CaFFe-layout ``data_raw/`` folder (``sar_images/``, ``zones/``, ``fronts/``,
``bounding_boxes/`` with ``train/`` and ``test/`` split folders; any glaciers)::

    python experiments/real_sar.py --data-raw /path/to/data_raw --workdir /tmp/real_sar \
        [--pixel-spacing 50] [--steps 600] [--model tiny] [--context 256 --centre 128] \
        [--class-balance 0.5] [--set optim.learning_rate=1e-3 --set data.sampler.prob_gamma=0.5 ...]

* trains the small fine-tuning model (``configs/finetune.py:demo`` with the overrides of
  ``--set``) on ``train/`` (minus 10 % held back by the official CaFFe split recipe);
* validates on ``test/`` (the held-out glacier) every third of the run with the project's
  evaluation (non-overlapping tiles, zones → front post-processing, MDE and IoU) and reports
  the last step (no model selection on the test set); scores the two label-only baselines of
  `ssl4sar_jax.evaluation.baselines` with the same code: the training labels' majority class
  everywhere and their per-pixel majority map (positional prior);
* writes ``real_sar.json`` and ``real_sar.md`` (per-class and mean IoU, MDE in pixels and
  metres, missing fronts) and test overlays into the workdir.

Pixel spacing: images resized from their original size (e.g. the 256² copy of CaFFe) no
longer have the spacing of their file name, so ``--pixel-spacing`` sets one nominal spacing for
every image (the 750 m minimum front-piece length of the post-processing is converted with
it); MDE is reported in pixels, and in metres at that nominal spacing. ``--pixel-spacing 0``
keeps the file names' spacings (full-resolution archives).

The records are read from the folder into memory, so glaciers may sit in any split folder
(the held-out glacier in ``test/``) and the run needs no TFDS preparation.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from experiments.pretraining_benefit import apply, load_config  # noqa: E402
from ssl4sar_jax import io_utils  # noqa: E402  (after the path set-up)


def read_records(data_raw: Path, split: str, pixel_spacing: float) -> list[dict]:
    """The images of one split folder as evaluation/training records (docs/interfaces.md)."""
    from ssl4sar_jax.data import caffe_files

    root = caffe_files.resolve_data_raw(data_raw)
    paths = sorted((root / "sar_images" / split).glob("*.png"))
    if not paths:
        raise FileNotFoundError(f"{root}/sar_images/{split}: no PNG images (CaFFe layout)")
    records = []
    for path in paths:
        stem = path.name[: -len(".png")]
        name = caffe_files.parse_stem(stem)
        zones_path = root / "zones" / split / f"{stem}{caffe_files.ZONES_SUFFIX}"
        front_path = root / "fronts" / split / f"{stem}{caffe_files.FRONT_SUFFIX}"
        bbox_path = root / "bounding_boxes" / f"{stem}{caffe_files.BBOX_SUFFIX}"
        for need in (zones_path, front_path, bbox_path):
            if not need.is_file():
                raise FileNotFoundError(f"{need}: missing for {path}")
        sar = caffe_files.read_gray_png(path.read_bytes(), str(path))
        zones = caffe_files.zones_png_to_ids(
            caffe_files.read_gray_png(zones_path.read_bytes(), str(zones_path))
        )
        if (zones > 3).any():
            raise ValueError(f"{zones_path}: values outside {{0, 64, 127, 254}}")
        front = caffe_files.read_gray_png(front_path.read_bytes(), str(front_path)) > 0
        bbox = caffe_files.parse_bbox(bbox_path.read_text(), str(bbox_path))
        records.append(
            dict(
                sar=sar[..., None],
                zones=zones,
                front=front.astype(np.uint8),
                bbox=bbox,
                glacier=name.glacier,
                date=name.date,
                sensor=name.sensor,
                resolution_m=np.int32(name.resolution_m),
                quality_factor=np.int32(name.quality_factor),
                orbit=name.orbit,
                stem=stem,
                season=name.season,
            )
        )
        if pixel_spacing > 0:  # the effective spacing of a resized image (not the name's)
            records[-1]["pixel_spacing_m"] = np.float32(pixel_spacing)
    return records


def _parse_set(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def _pixel_row(metrics: dict, per_image: list[dict]) -> dict:
    del per_image  # the pooled pixel MDE is in the metrics (front/mde_px)
    return {
        "iou_na": metrics["zones/iou_na"],
        "iou_rock": metrics["zones/iou_rock"],
        "iou_glacier": metrics["zones/iou_glacier"],
        "iou_ocean": metrics["zones/iou_ocean"],
        "iou_mean": metrics["zones/iou_mean"],
        "mde_px": metrics["front/mde_px"],
        "mde_m": metrics["front/mde_m"],
        "missing_fronts": int(metrics["front/missing_fronts"]),
        "num_images": int(metrics["front/num_images"]),
    }


def run(args) -> dict:
    from ssl4sar_jax import losses, train_lib
    from ssl4sar_jax.evaluation import baselines
    from ssl4sar_jax.models import ModelConfig
    from ssl4sar_jax.tasks import finetune

    t0 = time.perf_counter()
    data_raw = Path(args.data_raw).expanduser()
    train_all = read_records(data_raw, "train", args.pixel_spacing)
    test = read_records(data_raw, "test", args.pixel_spacing)
    from ssl4sar_jax.data.caffe_files import split_indices

    tr_idx, val_idx = split_indices(len(train_all))
    sources = {
        "train": [train_all[i] for i in tr_idx],
        "validation": [train_all[i] for i in val_idx],
        "test": test,
    }
    glaciers = lambda recs: sorted({r["glacier"] for r in recs})  # noqa: E731
    print(
        f"[real_sar] train {len(sources['train'])} ({glaciers(sources['train'])}), "
        f"validation {len(sources['validation'])}, test {len(test)} ({glaciers(test)})",
        flush=True,
    )
    workdir = Path(args.workdir).expanduser().resolve()
    workdir.mkdir(parents=True, exist_ok=True)

    # Baselines, fitted on the training labels (train + validation folders' images).
    train_zones = [r["zones"] for r in train_all]
    rows = {}
    for base in (
        baselines.MajorityClass.fit(train_zones),
        baselines.PositionalPrior.fit(train_zones),
    ):
        res = baselines.evaluate_baseline(base, test)
        rows[base.name] = _pixel_row(res.metrics, res.per_image)

    config = load_config("finetune", "demo")
    over = {
        "model": ModelConfig.named(args.model, img_size=args.context).to_dict(),
        "data.sampler.centre_size": args.centre,
        "total_steps": args.steps,
        "optim.warmup_steps": max(1, args.steps // 10),
        "data.val_split": "test",
        "val.every_steps": max(1, args.steps // 3),
        "checkpoint.every_steps": max(1, args.steps // 3),
        "val.write_pictures_every": 3,
        "val.num_overlays": 6,
        "seed": args.seed,
        **_parse_set(args.set),
    }
    if args.class_balance > 0:
        # Pixel frequencies of the training split (not of the held-out test glacier).
        weights = losses.class_balance_weights(
            [r["zones"] for r in sources["train"]], power=args.class_balance
        )
        print(f"[real_sar] class weights (NA, rock, glacier, ocean): {weights}", flush=True)
        over["loss.class_weights"] = weights
    config = apply(config, over)

    class InMemoryFinetune(finetune.FinetuneTask):
        def prepare_data(self):
            return sources

    done = workdir / "train_summary.json"
    if done.is_file():
        summary = json.loads(done.read_text())
    elif args.report_only:
        # A run that was stopped: its validations so far (metrics.jsonl) and checkpoints.
        history = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
        history = [h for h in history if "val/zones/iou_mean" in h]
        if not history:
            raise SystemExit(f"{workdir}: no validation in metrics.jsonl to report")
        summary = {"final_step": history[-1]["step"], "val_history": history}
    else:
        # The loop takes the folder's records instead of TFDS; restored afterwards so that a
        # caller in the same process (a test, a notebook) keeps the real task registry.
        original_get_task = train_lib.get_task
        train_lib.get_task = lambda cfg: InMemoryFinetune(cfg)
        try:
            summary = train_lib.train_and_evaluate(config, str(workdir))
        finally:
            train_lib.get_task = original_get_task
        summary = {k: summary[k] for k in ("final_step", "wall_time_s", "val_history")}
        io_utils.write_text_atomic(done, json.dumps(summary, default=float))
    # The run's validation split is the test folder (held-out glacier): its validations give
    # the test curve; the table reports the last step (no model selection on the test set).
    last = summary["val_history"][-1]
    rows["model"] = {
        "iou_na": last["val/zones/iou_na"],
        "iou_rock": last["val/zones/iou_rock"],
        "iou_glacier": last["val/zones/iou_glacier"],
        "iou_ocean": last["val/zones/iou_ocean"],
        "iou_mean": last["val/zones/iou_mean"],
        "mde_px": last["val/front/mde_px"],
        "mde_m": last["val/front/mde_m"],
        "missing_fronts": int(last["val/front/missing_fronts"]),
        "num_images": int(last["val/front/num_images"]),
    }
    if args.overlays:
        write_test_overlays(config, workdir, test[:: max(1, len(test) // args.overlays)])
    report = dict(
        args=vars(args),
        config_overrides={k: v for k, v in over.items() if k != "model"},
        model=args.model,
        rows=rows,
        wall_time_s=time.perf_counter() - t0,
    )
    md = _markdown(rows, args)
    print(md)
    for name, text in (("real_sar.json", json.dumps(report, indent=2, default=float)),
                       ("real_sar.md", md + "\n")):  # fmt: skip
        io_utils.write_text_atomic(workdir / name, text)
    return report


def write_test_overlays(config, workdir: Path, records: list[dict]) -> None:
    """Predicts `records` with the run's latest checkpoint; overlays into ``workdir/test/``."""
    import jax
    from flax import nnx

    from ssl4sar_jax import checkpointing, steps
    from ssl4sar_jax import sharding as sharding_lib
    from ssl4sar_jax.evaluation import evaluate_records
    from ssl4sar_jax.models import ModelConfig, build_model

    model = build_model(ModelConfig.from_dict(config.model.to_dict()), seed=0, objective="segment")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    template = jax.device_get(nnx.to_pure_dict(params))
    flat = checkpointing.read_params(str(workdir), which="latest")
    params, _ = checkpointing.transfer_params(template, flat, source_name=str(workdir))
    mesh = sharding_lib.make_mesh([tuple(a) for a in config.mesh])
    repl, batch_sh = sharding_lib.replicated(mesh), sharding_lib.batch_sharding(mesh)
    predict_jit = jax.jit(
        steps.make_predict_fn(graphdef), in_shardings=(repl, repl, batch_sh), out_shardings=batch_sh
    )
    predict = steps.numpy_predictor(
        predict_jit, jax.device_put(params, repl), jax.device_put(nnx.to_pure_dict(rest), repl),
        mesh, 16,
    )  # fmt: skip
    centre = int(config.data.sampler.centre_size)
    evaluate_records(
        predict,
        records,
        context=int(config.model.img_size),
        centre=centre,
        stride=centre,
        batch_size=16,
        out_dir=str(workdir / "test"),
        allow_empty_true_front=True,
        num_records=len(records),
        verbose=False,
    )


def _markdown(rows: dict, args) -> str:
    head = (
        "| predictor | IoU NA | IoU rock | IoU glacier | IoU ocean | mean IoU | MDE (px) | "
        f"MDE (m at {args.pixel_spacing:g} m/px) | missing fronts |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['iou_na']:.3f} | {r['iou_rock']:.3f} | {r['iou_glacier']:.3f} | "
            f"{r['iou_ocean']:.3f} | {r['iou_mean']:.3f} | {r['mde_px']:.1f} | {r['mde_m']:.0f} | "
            f"{r['missing_fronts']} of {r['num_images']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-raw", required=True, help="CaFFe-layout data_raw/ folder")
    p.add_argument("--workdir", required=True)
    p.add_argument("--pixel-spacing", type=float, default=50.0)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--model", default="tiny", help="ModelConfig variant (tiny | paper)")
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--centre", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], help="config override key=value")
    p.add_argument(
        "--class-balance",
        type=float,
        default=0.0,
        help="weight the cross-entropy by f_c ** -P, f_c the training labels' class pixel "
        "frequencies (0.5: inverse square root; 0: unweighted, the default)",
    )
    p.add_argument("--cpu-devices", type=int, default=2)
    p.add_argument(
        "--report-only",
        action="store_true",
        help="no training: report a stopped run's last validation from its metrics.jsonl",
    )
    p.add_argument("--overlays", type=int, default=0, help="test overlays of the last checkpoint")
    args = p.parse_args(argv)
    if not Path(args.data_raw).is_dir():
        p.error(f"--data-raw {args.data_raw!r} is not a folder")
    if args.cpu_devices and "JAX_NUM_CPU_DEVICES" not in os.environ:
        import jax

        jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    return run(args)


if __name__ == "__main__":
    main()
