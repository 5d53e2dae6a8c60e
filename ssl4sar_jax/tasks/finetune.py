"""CaFFe zone-segmentation fine-tuning (Nora-Go/TYRION
``model/modules/TyrionWrapper.py``).

Loss: ``0.5·CE(centre) + 0.5·CE(context) + 0.5·Dice(centre) + 0.5·Dice(context)`` on the context
logits and their central crop. Validation: the validation images are tiled (non-overlapping,
stride = centre, as the reference's ``PatchDataSet``), stitched, post-processed into fronts and
scored by ``ssl4sar_jax.evaluation`` — val MDE (model selection, lower is better) and IoU.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

from ssl4sar_jax import losses, metrics_lib
from ssl4sar_jax.tasks import base

# Value the reference logs for an undefined val MDE (no image with a predicted front).
UNDEFINED_MDE = metrics_lib.MDE_UNDEFINED


def prepare_sources(config, dataset_name: str | None = None, splits=None) -> dict[str, Any]:
    """``{split: source}`` of ``config.data`` (see ``ssl4sar_jax.data.open_sources``).

    ``dataset_name`` is the task's dataset when the config names none (``config.data.name``);
    ``splits`` are split names or TFDS split expressions to open (e.g. ``"train[:10]"`` for the
    first 10 training images; None opens every split).
    """
    from ssl4sar_jax import data

    data_cfg = config.data.to_dict()
    data_cfg.setdefault("name", dataset_name)
    return data.open_sources(data_cfg, splits=splits)


class FinetuneTask(base.Task):
    """Zone segmentation on CaFFe context/centre patches."""

    name = "finetune"
    objective = "segment"
    predicts_zones = True
    selection_metric = "val/front/mde_m"
    selection_mode = "min"
    sampler_size_field = "context_size"
    plateau_metric = None  # constant LR (reference)

    def __init__(self, config):
        super().__init__(config)
        self.context = self.model_config.img_size  # the network input is the context patch
        self.centre = int(config.data.sampler.centre_size)
        if not 0 < self.centre <= self.context:
            raise ValueError(
                f"config.data.sampler.centre_size ({self.centre}) must be in "
                f"(0, config.model.img_size = {self.context}]"
            )
        weights = config.loss.get("class_weights")
        # () or None: unweighted cross-entropy, as in the reference.
        self.class_weights = tuple(float(w) for w in weights) if weights else None
        if self.class_weights is not None and (
            len(self.class_weights) != self.model_config.num_classes
            or min(self.class_weights) < 0
            or sum(self.class_weights) <= 0
        ):
            raise ValueError(
                f"config.loss.class_weights must be {self.model_config.num_classes} non-negative "
                f"weights (NA, rock, glacier, ocean) with a positive sum, got {weights!r}"
            )

    def loss_fn(self, model: nnx.Module, batch, dropout_key):
        rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
        logits = model(batch["sar"], rngs=rngs)["logits"]
        loss_cfg = self.config.loss
        return losses.finetune_loss(
            logits,
            batch["zones"],
            centre_size=self.centre,
            ce_weights=tuple(loss_cfg.ce_weights),
            dice_weights=tuple(loss_cfg.dice_weights),
            label_smoothing=loss_cfg.label_smoothing,
            smoothing_mode=loss_cfg.smoothing_mode,
            dice_group_size=loss_cfg.dice_group_size,
            class_weights=self.class_weights,
        )

    def batch_spec(self, batch_size):
        size = self.context
        return {
            "sar": jax.ShapeDtypeStruct((batch_size, size, size, 1), jnp.float32),
            "zones": jax.ShapeDtypeStruct((batch_size, size, size), jnp.int32),
        }

    def prepare_data(self):
        data = self.config.data
        return prepare_sources(self.config, "caffe", splits=(data.train_split, data.val_split))

    def train_iterator(self, sources, seed) -> Iterator[dict]:
        from ssl4sar_jax import data

        sampler = data.FinetuneSamplerConfig(
            **base.sampler_fields(
                data.FinetuneSamplerConfig,
                self.config.data.sampler.to_dict(),
                self.sampler_size_field,
                self.context,
            )
        )
        return data.make_iterator(
            {"name": "caffe", **self.config.data.to_dict()},
            sources[self.config.data.train_split],
            global_batch_size=self.config.batch_size,
            seed=seed,
            sampler=sampler,
        )

    def validate(self, sources, ctx: base.ValidationContext) -> dict[str, float]:
        from ssl4sar_jax.evaluation import evaluate_records

        val = self.config.val
        source = sources[self.config.data.val_split]
        count = len(source) if val.max_images <= 0 else min(len(source), val.max_images)
        records = (source[i] for i in range(count))
        result = evaluate_records(
            ctx.predict_fn,
            records,
            context=self.context,
            centre=self.centre,
            stride=val.stride or self.centre,
            tta=False,
            batch_size=val.batch_size,
            out_dir=ctx.out_dir,
            max_overlays=val.num_overlays,
            num_records=count,
            allow_empty_true_front=True,
            verbose=False,
        )
        metrics = {f"val/{k}": float(v) for k, v in result.metrics.items()}
        mde = metrics.get("val/front/mde_m", math.nan)
        if not math.isfinite(mde):
            logging.info("val MDE undefined (no predicted front); logged as %s", UNDEFINED_MDE)
            metrics["val/front/mde_m"] = UNDEFINED_MDE
        return metrics
