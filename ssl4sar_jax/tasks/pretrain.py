"""Self-supervised pretraining on SAR + Sentinel-2 pairs (`model_and_training.md` §4).

* ``opt_simmim``: 30 % of the 4×4 tokens are masked (the mask comes from the input pipeline,
  ``batch["mim_mask"]``), the model predicts 4×4×14 optical values for every token and the L1
  loss is taken over the masked tokens only, against the optical image laid out by ``patchify``.
* ``opt_translator``: dense SAR → 14-band optical translation with an L1 loss.

Validation: the mean loss over ``config.val.num_batches`` batches of the validation split drawn
with a fixed seed (the same batches at every validation), which also drives reduce-on-plateau
and the best checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from ssl4sar_jax import losses
from ssl4sar_jax.tasks import base
from ssl4sar_jax.tasks.finetune import prepare_sources

OBJECTIVES = ("opt_simmim", "opt_translator")


class PretrainTask(base.Task):
    """OptSimMIM or OptTranslator, chosen by ``config.objective``."""

    name = "pretrain"
    selection_metric = "val/loss"
    selection_mode = "min"
    plateau_metric = "val/loss"

    def __init__(self, config):
        super().__init__(config)
        if config.objective not in OBJECTIVES:
            raise ValueError(
                f"config.objective must be one of {OBJECTIVES}, got {config.objective!r}"
            )
        self.objective = config.objective
        self.crop = int(config.data.sampler.crop_size)
        if self.model_config.img_size != self.crop:
            raise ValueError(
                f"config.model.img_size ({self.model_config.img_size}) must equal "
                f"config.data.sampler.crop_size ({self.crop})"
            )

    def loss_fn(self, model: nnx.Module, batch, dropout_key):
        rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
        optical = batch["optical"]
        if self.objective == "opt_simmim":
            mask = batch["mim_mask"]
            predictions = model(batch["sar"], mask, rngs=rngs)
            targets = losses.patchify(optical, self.model_config.patch_size)
            loss = losses.masked_l1_loss(predictions, targets, mask)
            metrics = {"loss": loss, "mask_ratio": jnp.mean(mask.astype(jnp.float32))}
        else:
            predictions = model(batch["sar"], rngs=rngs)
            loss = losses.dense_l1_loss(predictions, optical)
            metrics = {"loss": loss}
        return loss, metrics

    def predict(self, model, sar):
        raise NotImplementedError("pretraining models do not predict zones")

    def batch_spec(self, batch_size):
        size = self.crop
        grid = size // self.model_config.patch_size
        bands = self.model_config.optical_channels
        return {
            "sar": jax.ShapeDtypeStruct((batch_size, size, size, 1), jnp.float32),
            "optical": jax.ShapeDtypeStruct((batch_size, size, size, bands), jnp.float32),
            "mim_mask": jax.ShapeDtypeStruct((batch_size, grid, grid), jnp.bool_),
        }

    def prepare_data(self):
        return prepare_sources(self.config, "ssl4sar")

    def _iterator(self, source, batch_size, seed):
        from ssl4sar_jax import data

        return data.make_iterator(
            {"name": "ssl4sar", **self.config.data.to_dict()},
            source,
            global_batch_size=batch_size,
            seed=seed,
        )

    def train_iterator(self, sources, seed) -> Iterator[dict]:
        return self._iterator(sources[self.config.data.train_split], self.config.batch_size, seed)

    def validate(self, sources, ctx: base.ValidationContext) -> dict[str, float]:
        val = self.config.val
        iterator = self._iterator(sources[self.config.data.val_split], val.batch_size, val.seed)
        totals: dict[str, float] = {}
        for _ in range(val.num_batches):
            local = next(iterator)
            local = {k: local[k] for k in self.batch_spec(1)}
            metrics = ctx.eval_loss_fn(ctx.make_global_batch(local))
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + float(value)
        return {f"val/{k}": v / max(1, val.num_batches) for k, v in totals.items()}
