"""The evaluate task: score fine-tuned checkpoint(s) on a CaFFe split (no training).

``python -m ssl4sar_jax.main --config configs/evaluate.py --workdir OUT
--config.checkpoints="('runs/ft1','runs/ft2')"`` loads each checkpoint into the model of
``config.model`` (one member per checkpoint: an ensemble when several), predicts the split with
overlapping (stride 128, Gaussian blending) or non-overlapping tiles, optionally with the 4
rotations of test-time augmentation, and writes ``metrics.json``, ``per_image.csv`` and pictures
through ``ssl4sar_jax.evaluation.evaluate_records`` into the workdir.

Accepted checkpoints: a run workdir (its best checkpoint by default, ``config.which``), a
checkpoint step directory, or an ``.npz`` written by ``ssl4sar_jax.models.convert_torch``.
"""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from ssl4sar_jax import checkpointing, io_utils, steps
from ssl4sar_jax import sharding as sharding_lib
from ssl4sar_jax.models import build_model
from ssl4sar_jax.tasks.base import model_config_from
from ssl4sar_jax.tasks.finetune import prepare_sources


def check_segmenter_checkpoint(path: str, which: str) -> None:
    """Refuse a checkpoint that is not a zone segmenter (e.g. a pretraining run's).

    A pretraining model holds the segmenter under ``backbone/``, so its weights *load* into a
    segmenter, but its decoder head was never trained for zones: scoring it would write
    meaningless metrics. Workdir checkpoints say their task in their metadata; ``.npz`` files
    of a pretraining model are recognised by their ``backbone/`` parameters.

    Raises:
        ValueError: naming the checkpoint, its task and objective.
    """
    path = os.path.expanduser(path)
    if path.endswith(".npz"):
        from ssl4sar_jax.models import convert_torch

        flat, _ = convert_torch.read_params_npz(path)
        if any(k.startswith("backbone/") for k in flat):
            raise ValueError(
                f"{path} holds the parameters of a pretraining model (backbone/...), not of a "
                "fine-tuned segmenter; fine-tune it first (--config.init.mode=workdir)."
            )
        return
    step_dir = checkpointing.resolve_step_dir(path, which)
    meta = checkpointing.read_step_meta(step_dir)
    objective = meta.get("objective")
    if objective is not None and objective != "segment":
        raise ValueError(
            f"{step_dir} is a checkpoint of task {meta.get('task')!r} (objective "
            f"{objective!r}), not a fine-tuned zone segmenter: its head never learned the "
            "zones. Evaluate a fine-tuning workdir, or fine-tune from this one first with "
            f"--config.init.mode=workdir --config.init.path={path}."
        )


def load_member(path: str, template: dict[str, Any], which: str) -> dict[str, Any]:
    """Parameters of one ensemble member as a pure dict shaped like ``template``."""
    check_segmenter_checkpoint(path, which)  # also guards other callers (predict)
    path = os.path.expanduser(path)
    if path.endswith(".npz"):
        from ssl4sar_jax.models import convert_torch

        flat, _ = convert_torch.read_params_npz(path)
    else:
        flat = checkpointing.read_params(path, which=which)
    params, _ = checkpointing.transfer_params(template, flat, source_name=f"checkpoint {path}")
    return params


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Run the evaluation described by ``config``; returns the flat metrics dict."""
    if not config.checkpoints:
        raise ValueError(
            "config.checkpoints is empty: pass the fine-tuning workdir(s), e.g. "
            "--config.checkpoints=\"('/tmp/ft_demo',)\""
        )
    t0 = time.perf_counter()
    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)
    model_config = model_config_from(config)
    context = model_config.img_size  # the network input is the context tile
    for path in config.checkpoints:
        check_segmenter_checkpoint(path, config.which)  # before any data or model work
    sources = prepare_sources(config, "caffe")
    if config.split not in sources:
        raise ValueError(f"config.split {config.split!r} not in the dataset: {sorted(sources)}")
    source = sources[config.split]

    mesh = sharding_lib.make_mesh([tuple(a) for a in config.mesh])
    model = build_model(model_config, seed=0, objective="segment")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    template = jax.device_get(nnx.to_pure_dict(params))
    rest = nnx.to_pure_dict(rest)
    batch_sh = sharding_lib.batch_sharding(mesh)
    repl = sharding_lib.replicated(mesh)
    predict_jit = jax.jit(
        steps.make_predict_fn(graphdef),
        in_shardings=(repl, repl, batch_sh),
        out_shardings=batch_sh,
    )
    predict_fns = []
    for path in config.checkpoints:
        member = jax.device_put(load_member(path, template, config.which), repl)
        predict_fns.append(
            steps.numpy_predictor(
                predict_jit,
                member,
                jax.device_put(rest, repl),
                mesh,
                config.batch_size,
            )
        )
        logging.info("loaded ensemble member %s", path)

    from ssl4sar_jax.evaluation import evaluate_records

    count = len(source) if config.max_images <= 0 else min(len(source), config.max_images)
    result = evaluate_records(
        predict_fns,
        (source[i] for i in range(count)),
        context=context,
        centre=int(config.centre_size),
        stride=int(config.stride),
        stitch_mode=config.stitch_mode or None,
        tta=bool(config.tta),
        batch_size=int(config.batch_size),
        out_dir=workdir,
        length_rule=config.length_rule,
        allow_empty_true_front=True,
        max_overlays=None if config.max_overlays < 0 else config.max_overlays,
        num_records=count,
    )
    metrics = {k: float(v) for k, v in result.metrics.items()}
    info = {
        "checkpoints": list(config.checkpoints),
        "split": config.split,
        "tta": bool(config.tta),
        "stride": int(config.stride),
        "num_images": count,
        "seconds": time.perf_counter() - t0,
    }
    io_utils.write_json_atomic(os.path.join(workdir, "evaluate_info.json"), info)
    logging.info(
        "%s: MDE %.1f m, IoU %.3f over %d images (%.1f s)",
        config.split,
        metrics.get("front/mde_m", np.nan),
        metrics.get("zones/iou_mean", np.nan),
        count,
        info["seconds"],
    )
    return metrics
