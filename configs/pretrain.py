r"""Self-supervised pretraining on Sentinel-1 SAR + Sentinel-2 optical pairs (OptSimMIM / OptTranslator of
Gourmelon et al. 2025, TGRS; recipes of Nora-Go/TYRION ``Config/model/OptSimMIM.yaml`` and
``Config/model/OptTranslator.yaml``).

Variants (``--config configs/pretrain.py:<variant>``):

* ``opt_simmim`` (default): 30 % of the 4×4 tokens masked, L1 on the masked 4×4×14 optical
  patches; SGD lr 1e-3, momentum 0.9, wd 1e-4, reduce-on-plateau ×0.5 / patience 5 on val loss;
  global batch 32 (2 accumulated micro-batches of 16), 512² crops; one "epoch" = 76,496 samples
  (2,391 steps) between validations.
* ``opt_translator``: dense SAR → 14-band optical L1, lr 5e-3, otherwise the same.
* any other objective registered in ``ssl4sar_jax.objectives`` (its entry's ``hparams``), with
  ``demo_<name>`` / ``smoke_<name>`` variants.
* ``demo`` / ``demo_opt_translator``: tiny model on the synthetic SSL4SAR data (built
  automatically), 128² crops, a few minutes on a 2-core CPU; the losses fall::

      python -m ssl4sar_jax.main --config configs/pretrain.py:demo --workdir /tmp/pt_demo

* ``smoke`` / ``smoke_opt_translator``: the smallest runs (tests, CI).

Both objectives start from the ImageNet SwinV2-T encoder in the paper recipe
(``--config.init.path``); ``--config.init.mode=scratch`` gives the "no ImageNet" variants.
The whole network (encoder + decoder) transfers to fine-tuning: ``configs/finetune.py`` with
``--config.init.mode=workdir --config.init.path=<this workdir>``.
"""

import ml_collections

from ssl4sar_jax import data, objectives
from ssl4sar_jax.config_lib import apply_overrides, load_sibling

common = load_sibling(__file__, "common")
DEFAULT_OBJECTIVE = "opt_simmim"


def variants() -> tuple[str, ...]:
    """Every variant name: ``<objective>``, ``demo[_<objective>]``, ``smoke[_<objective>]``."""
    names = objectives.objective_names(trainable_only=True)
    return (
        *names,
        *(
            f"{kind}{'' if n == DEFAULT_OBJECTIVE else '_' + n}"
            for kind in ("demo", "smoke")
            for n in names
        ),
    )


def _split_variant(variant: str) -> tuple[str, str]:
    """``"demo_opt_translator"`` -> ``("demo", "opt_translator")``; ``"demo"`` -> simmim."""
    for kind in ("demo", "smoke"):
        if variant == kind:
            return kind, DEFAULT_OBJECTIVE
        if variant.startswith(kind + "_"):
            return kind, variant[len(kind) + 1 :]
    return "paper", variant


def _sampler(**overrides) -> dict:
    """The pretraining sampler block (its crop side is ``config.model.img_size``)."""
    return common.sampler(data.PretrainSamplerConfig, "crop_size", **overrides)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config of variant ``arg`` (see the module docstring)."""
    variant = arg or DEFAULT_OBJECTIVE
    if variant not in variants():
        raise ValueError(f"unknown pretrain variant {variant!r}: one of {variants()}")
    kind, objective = _split_variant(variant)
    entry = objectives.get_objective(objective)
    c = common.base("pretrain", f"pretrain_{variant}", objective=objective)
    c.data = common.dataset("ssl4sar", _sampler())
    c.optim = common.sgd(learning_rate=1e-3, plateau=True)
    # One reference epoch (76,496 samples) = 2,391 steps between validations; 1000 epochs
    # (the reference stops at its 24 h wall clock).
    common.schedule(
        c,
        batch_size=32,
        grad_accum_steps=2,
        total_steps=2_391 * 1000,
        log_every=50,
        val_every=2_391,
        ckpt_every=2_391,
    )
    c.val.num_batches = 50  # fixed validation batches (same crops/masks every time)
    c.val.seed = 12345
    c.init = common.init_from("imagenet")
    apply_overrides(c, entry.hparams)  # the objective's paper recipe (learning rate, ...)

    if kind == "demo":
        common.small_run(c, demo=True)
        # From scratch (no ImageNet weights offline): a larger LR than the paper's so the losses
        # fall within minutes; objective-specific demo settings come from its registry entry.
        c.optim.learning_rate = 0.01
        c.optim.plateau.patience = 2
        c.batch_size = 8
        c.total_steps = 150
        c.log_every_steps = 10
        c.val.every_steps = 25
        c.val.at_start = True
        c.val.num_batches = 4
        c.checkpoint.every_steps = 50
        apply_overrides(c, entry.demo_hparams)
    elif kind == "smoke":
        common.small_run(c, demo=False)
        c.val.num_batches = 1
        c.val.batch_size = 4
    return c
