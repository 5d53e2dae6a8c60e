"""Self-supervised pretraining on SAR + Sentinel-2 pairs, for any registered objective.

``config.objective`` names an entry of `ssl4sar_jax.objectives` (built-in: ``opt_simmim``,
``opt_translator``); the entry supplies the model, the loss and the batch keys, this task the
data (the ``ssl4sar`` dataset, crops of ``config.model.img_size``) and the validation:

Validation is the mean loss over ``config.val.num_batches`` batches of the validation split
drawn with a fixed seed (the same batches at every validation), which also drives
reduce-on-plateau and the best checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator

from flax import nnx

from ssl4sar_jax import objectives
from ssl4sar_jax.tasks import base
from ssl4sar_jax.tasks.finetune import prepare_sources


class PretrainTask(base.Task):
    """Pretraining with the registered objective ``config.objective``."""

    name = "pretrain"
    selection_metric = "val/loss"
    selection_mode = "min"
    sampler_size_field = "crop_size"
    plateau_metric = "val/loss"

    def __init__(self, config):
        super().__init__(config)
        trainable = objectives.objective_names(trainable_only=True)
        if config.objective not in trainable:
            raise ValueError(
                f"config.objective must be one of {trainable}, got {config.objective!r}"
            )
        self.objective = config.objective
        self.entry = objectives.get_objective(config.objective)

    def loss_fn(self, model: nnx.Module, batch, dropout_key):
        rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
        return self.entry.loss(model, batch, rngs, self.model_config)

    def predict(self, model, sar):
        raise NotImplementedError("pretraining models do not predict zones")

    def batch_spec(self, batch_size):
        return self.entry.batch_spec(self.model_config, batch_size)

    def prepare_data(self):
        return prepare_sources(self.config, "ssl4sar")

    def _iterator(self, source, batch_size, seed):
        from ssl4sar_jax import data

        sampler = data.PretrainSamplerConfig(
            **base.sampler_fields(
                data.PretrainSamplerConfig,
                self.config.data.sampler.to_dict(),
                self.sampler_size_field,
                self.model_config.img_size,
            )
        )
        return data.make_iterator(
            {"name": "ssl4sar", **self.config.data.to_dict()},
            source,
            global_batch_size=batch_size,
            seed=seed,
            sampler=sampler,
        )

    def train_iterator(self, sources, seed) -> Iterator[dict]:
        return self._iterator(sources[self.config.data.train_split], self.config.batch_size, seed)

    def val_iterator(self, sources) -> Iterator[dict]:
        """The validation batches: the same ones at every validation (``config.val.seed``)."""
        val = self.config.val
        return self._iterator(sources[self.config.data.val_split], val.batch_size, val.seed)

    def validate(self, sources, ctx: base.ValidationContext) -> dict[str, float]:
        val = self.config.val
        iterator = self.val_iterator(sources)
        totals: dict[str, float] = {}
        for _ in range(val.num_batches):
            local = next(iterator)
            local = {k: local[k] for k in self.batch_spec(1)}
            metrics = ctx.eval_loss_fn(ctx.make_global_batch(local))
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + float(value)
        return {f"val/{k}": v / max(1, val.num_batches) for k, v in totals.items()}
