"""The registry of model objectives: one `Objective` entry per way of training the network.

An objective bundles everything that differs between, say, OptSimMIM and OptTranslator:

* ``build``: the model factory ``(ModelConfig, *, rngs) -> nnx.Module``;
* ``loss``: ``(model, batch, rngs, model_config) -> (scalar loss, {name: scalar})`` for one
  micro-batch (``rngs`` is None in evaluation mode);
* ``batch_spec``: ``(model_config, batch_size) -> {key: ShapeDtypeStruct}``, the batch keys the
  loss reads (the loop passes exactly these keys to the step);
* ``hparams``: config overrides of the paper recipe (e.g. ``{"optim.learning_rate": 1e-3}``)
  and ``demo_hparams`` for the small from-scratch demo, applied by ``configs/pretrain.py``;
* ``torch_head_keys``: top-level parameter name -> PyTorch (TYRION) module name of the heads
  outside the shared ``backbone``, read by `ssl4sar_jax.models.convert_torch`.

The pretraining task (``config.objective``), `ssl4sar_jax.models.build_model`,
``configs/pretrain.py`` and the converter read this registry and nothing else, so a new
objective is one `register_objective` call (see ``docs/extending.md``). ``"segment"`` (zone
segmentation) is registered too, for the model builder and the converter; its loss needs the
fine-tuning loss config and lives in the fine-tuning task.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ssl4sar_jax import losses
from ssl4sar_jax.models.config import ModelConfig
from ssl4sar_jax.models.pretrain_heads import OptSimMIMModel, OptTranslatorModel
from ssl4sar_jax.models.segmenter import SSL4SARSegmenter
from ssl4sar_jax.registry import Registry

Batch = Mapping[str, jax.Array]
LossFn = Callable[
    [nnx.Module, Batch, "nnx.Rngs | None", ModelConfig], tuple[jax.Array, dict[str, jax.Array]]
]
BatchSpecFn = Callable[[ModelConfig, int], dict[str, jax.ShapeDtypeStruct]]


@dataclasses.dataclass(frozen=True)
class Objective:
    """One registered objective (see the module docstring for the fields).

    Attributes:
        name: Registry key (``config.objective``).
        build: Model factory ``(ModelConfig, *, rngs) -> nnx.Module``.
        loss: Micro-batch loss, or None where a task owns the loss (``"segment"``).
        batch_spec: Batch keys, shapes and dtypes of the loss, or None with ``loss``.
        hparams: Paper-recipe config overrides (dotted keys), e.g. the learning rate.
        demo_hparams: Overrides applied on top of the demo recipe.
        torch_head_keys: Parameter name of each head -> its TYRION module name.
        description: One line for listings and error messages.
    """

    name: str
    build: Callable[..., nnx.Module]
    loss: LossFn | None = None
    batch_spec: BatchSpecFn | None = None
    hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    demo_hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    torch_head_keys: Mapping[str, str] = dataclasses.field(default_factory=dict)
    description: str = ""

    @property
    def trainable(self) -> bool:
        """Whether the pretraining task can train it (it has a loss and a batch layout)."""
        return self.loss is not None and self.batch_spec is not None


_REGISTRY: Registry[Objective] = Registry("objective")


def register_objective(objective: Objective, *, replace: bool = False) -> Objective:
    """Adds ``objective`` to the registry (``replace=True`` to overwrite an entry)."""
    return _REGISTRY.add(objective.name, objective, replace=replace)


def unregister_objective(name: str) -> None:
    """Removes an entry (tests that register a temporary objective)."""
    _REGISTRY.remove(name)


def get_objective(name: str) -> Objective:
    """The registered objective ``name``; ValueError naming the known ones otherwise."""
    return _REGISTRY.get(name)


def objective_names(*, trainable_only: bool = False) -> tuple[str, ...]:
    """Registered names in registration order (``trainable_only``: the pretraining ones)."""
    return tuple(o.name for o in _REGISTRY.values() if o.trainable or not trainable_only)


def torch_head_keys() -> dict[str, str]:
    """Union of every objective's head-name -> TYRION-name mapping."""
    keys: dict[str, str] = {}
    for objective in _REGISTRY.values():
        keys.update(objective.torch_head_keys)
    return keys


# ---------------------------------------------------------------------------- built-ins
def _sar_optical_spec(config: ModelConfig, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    size, bands = config.img_size, config.optical_channels
    return {
        "sar": jax.ShapeDtypeStruct((batch_size, size, size, 1), jnp.float32),
        "optical": jax.ShapeDtypeStruct((batch_size, size, size, bands), jnp.float32),
    }


def _simmim_spec(config: ModelConfig, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    grid = config.patch_grid
    spec = _sar_optical_spec(config, batch_size)
    spec["mim_mask"] = jax.ShapeDtypeStruct((batch_size, grid, grid), jnp.bool_)
    return spec


def _simmim_loss(model, batch, rngs, config: ModelConfig):
    """L1 over the masked tokens; the mask comes from the input pipeline (30 % of tokens)."""
    mask = batch["mim_mask"]
    predictions = model(batch["sar"], mask, rngs=rngs)
    targets = losses.patchify(batch["optical"], config.patch_size)
    loss = losses.masked_l1_loss(predictions, targets, mask)
    return loss, {"loss": loss, "mask_ratio": jnp.mean(mask.astype(jnp.float32))}


def _translator_loss(model, batch, rngs, config: ModelConfig):
    """Dense L1 between the translated and the real 14-band optical image."""
    del config
    loss = losses.dense_l1_loss(model(batch["sar"], rngs=rngs), batch["optical"])
    return loss, {"loss": loss}


register_objective(
    Objective(
        name="segment",
        build=SSL4SARSegmenter,
        description="zone segmentation (fine-tuning, evaluation)",
    )
)
register_objective(
    Objective(
        name="opt_simmim",
        build=OptSimMIMModel,
        loss=_simmim_loss,
        batch_spec=_simmim_spec,
        hparams={"optim.learning_rate": 1e-3},
        # From scratch the first block's q_bias sees huge gradients (masked tokens are zero,
        # q_bias starts at zero, cosine attention divides by |q|), so the demo clips them.
        demo_hparams={"optim.grad_clip_norm": 1.0},
        torch_head_keys={
            "reconstruct": "last_model_decoder_layer",
            "reembed": "patch_embed_after_decoder",
            "predict": "decoder",
            "mask_token": "mask_token",
        },
        description="masked SAR tokens -> optical 4x4x14 patches, L1 on the masked tokens",
    )
)
register_objective(
    Objective(
        name="opt_translator",
        build=OptTranslatorModel,
        loss=_translator_loss,
        batch_spec=_sar_optical_spec,
        hparams={"optim.learning_rate": 5e-3},
        torch_head_keys={"translate": "last_model_decoder_layer"},
        description="dense SAR -> 14-band optical translation, L1",
    )
)
