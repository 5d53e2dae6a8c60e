"""The task contract used by the one training loop (``ssl4sar_jax.train_lib``).

A task says *what* is trained — model, loss, batch layout, data, validation — while the loop
says *how* (sharding, accumulation, checkpointing, logging). Tasks never see the train step.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from ssl4sar_jax.models import ModelConfig, build_model

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


def model_config_from(config: ml_collections.ConfigDict) -> ModelConfig:
    """The `ModelConfig` described by ``config.model`` (every field of the dataclass)."""
    fields = config.model.to_dict()
    for key, value in list(fields.items()):
        if isinstance(value, list):
            fields[key] = tuple(value)
    try:
        return ModelConfig.from_dict(fields)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config.model is not a valid ModelConfig: {err}") from err


class ValidationContext:
    """What a task's validation may use (built by the loop for the current parameters).

    Attributes:
        predict_fn: numpy ``[N, S, S, 1]`` SAR tiles -> numpy ``[N, S, S, K]`` logits (eval mode).
        eval_loss_fn: global batch dict -> dict of scalar loss metrics (eval mode, no dropout).
        make_global_batch: per-process numpy batch -> global sharded arrays.
        step: Current optimiser step.
        out_dir: Directory for validation pictures of this step (or None).
    """

    def __init__(
        self,
        predict_fn: Callable[[np.ndarray], np.ndarray],
        eval_loss_fn: Callable[[Batch], Mapping[str, float]],
        make_global_batch: Callable[[Mapping[str, np.ndarray]], Batch],
        step: int,
        out_dir: str | None,
    ):
        self.predict_fn = predict_fn
        self.eval_loss_fn = eval_loss_fn
        self.make_global_batch = make_global_batch
        self.step = step
        self.out_dir = out_dir


class Task(abc.ABC):
    """One training objective.

    Attributes:
        name: Task name (``config.task``).
        objective: Name of the model's entry in `ssl4sar_jax.objectives` (``"segment"``,
            ``"opt_simmim"``, ``"opt_translator"``, ...).
        predicts_zones: Whether `predict` gives zone logits (the loop then compiles a predict
            function for validation; pretraining tasks validate with the loss only).
        selection_metric: Validation metric used for the best checkpoint.
        selection_mode: ``"min"`` or ``"max"``.
        plateau_metric: Validation metric driving reduce-on-plateau (None = constant LR).
        sampler_size_field: The data sampler's crop-side field, filled in from
            ``config.model.img_size`` (so the config must not set it).
    """

    name: str = ""
    objective: str = "segment"
    predicts_zones: bool = False
    selection_metric: str = "val/loss"
    selection_mode: str = "min"
    plateau_metric: str | None = None
    sampler_size_field: str | None = None

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.model_config = model_config_from(config)
        if self.sampler_size_field:
            _check_no_input_size(config.data.sampler, self.sampler_size_field, self.model_config)

    # ------------------------------------------------------------------ model
    def build_model(self, seed: int) -> nnx.Module:
        """A freshly initialised model (called inside ``jax.jit`` / ``nnx.eval_shape``)."""
        return build_model(self.model_config, seed=seed, objective=self.objective)

    @abc.abstractmethod
    def loss_fn(
        self, model: nnx.Module, batch: Batch, dropout_key: jax.Array | None
    ) -> tuple[jax.Array, Metrics]:
        """Scalar loss and a flat dict of scalar metrics (``loss`` included) for one micro-batch.

        ``dropout_key`` is None in evaluation mode (no dropout).
        """

    def predict(self, model: nnx.Module, sar: jax.Array) -> jax.Array:
        """Evaluation-mode zone logits ``[N, S, S, K]`` for SAR tiles ``[N, S, S, 1]``."""
        return model(sar)["logits"]

    @abc.abstractmethod
    def batch_spec(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes and dtypes of a (global) training batch of ``batch_size`` examples."""

    # ------------------------------------------------------------------ data
    @abc.abstractmethod
    def prepare_data(self) -> dict[str, Any]:
        """Open (and for synthetic configs, build) the dataset; ``{split: source}``.

        Raises a clear error when the dataset is not prepared.
        """

    @abc.abstractmethod
    def train_iterator(self, sources: Mapping[str, Any], seed: int) -> Iterator[dict]:
        """Infinite per-process batch iterator with ``get_state()`` / ``set_state()``."""

    @abc.abstractmethod
    def validate(self, sources: Mapping[str, Any], ctx: ValidationContext) -> dict[str, float]:
        """Validation metrics (keys prefixed ``val/``)."""

    def required_splits(self) -> dict[str, str]:
        """``{config key: split name}`` of every split this run reads (checked at start-up)."""
        data = self.config.data
        splits = {"config.data.train_split": data.train_split}
        val = self.config.get("val", None)
        if val is not None and (val.get("every_steps", 0) > 0 or val.get("at_start", False)):
            splits["config.data.val_split"] = data.val_split
        return splits

    # ------------------------------------------------------------------ init
    def init_allow_missing(self) -> tuple[str, ...]:
        """Parameter path regexes that may stay fresh when initialising from another run."""
        return tuple(self.config.init.get("allow_missing", ()))


def sampler_fields(
    cls: type, values: Mapping[str, Any], size_field: str, input_size: int
) -> dict[str, Any]:
    """Keyword arguments of sampler dataclass ``cls`` from ``config.data.sampler``.

    The network input size has one home, ``config.model.img_size``; the sampler's crop side
    (``size_field``) is filled in from it here and must not be set in the sampler block.

    Raises:
        ValueError: naming unknown keys, or ``size_field`` when the config sets it.
    """
    import dataclasses

    known = {f.name for f in dataclasses.fields(cls)} - {size_field}
    if size_field in values:
        raise ValueError(_input_size_message(size_field, input_size))
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"config.data.sampler has keys {unknown} unknown to {cls.__name__}")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    fields[size_field] = int(input_size)
    return fields


def _input_size_message(size_field: str, input_size: int) -> str:
    return (
        f"config.data.sampler.{size_field} is not a setting: the crop side is "
        f"config.model.img_size ({input_size}); remove it from the sampler block"
    )


def _check_no_input_size(sampler: Mapping[str, Any], size_field: str, model: ModelConfig) -> None:
    if size_field in sampler:
        raise ValueError(_input_size_message(size_field, model.img_size))


def data_dir_of(config: ml_collections.ConfigDict) -> str:
    """``config.data.data_dir`` with ``~`` and environment variables expanded."""
    return os.path.expanduser(os.path.expandvars(config.data.data_dir))


def check_splits(sources: Mapping[str, Any], required: Mapping[str, str]) -> None:
    """Every split the run will read exists and is non-empty — before any training.

    Args:
        sources: ``{split: data source}`` from :meth:`Task.prepare_data`.
        required: ``{config key: split name}`` from :meth:`Task.required_splits`.

    Raises:
        ValueError: naming the config key, the split and the splits that exist.
    """
    for key, split in required.items():
        if split not in sources:
            raise ValueError(
                f"{key}={split!r}: the dataset has no split {split!r} (it has "
                f"{sorted(sources)}). Prepare the dataset with that split, or set {key} to one "
                "of those."
            )
        if len(sources[split]) == 0:
            raise ValueError(
                f"{key}={split!r}: the split {split!r} of the dataset is empty. Add data to it "
                "(and prepare the dataset again), or set "
                + (
                    "--config.val.every_steps=0 to train without validation."
                    if "val" in key
                    else f"{key} to a non-empty split."
                )
            )
