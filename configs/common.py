"""What pretraining and fine-tuning configs share (loaded by the configs through
``ssl4sar_jax.config_lib.load_sibling``).

The network input size has one home, ``config.model.img_size``: the samplers' crop side and
the evaluation context tile are taken from it by the tasks.
"""

import dataclasses

import ml_collections

from ssl4sar_jax.models import ModelConfig

SYNTHETIC_DATA_DIR = "/tmp/ssl4sar_jax_data"


def base(task: str, name: str, objective: str) -> ml_collections.ConfigDict:
    """Task, seed, devices and mesh; the model block is the paper's SwinV2-T at 512²."""
    c = ml_collections.ConfigDict()
    c.name = name
    c.task = task
    c.objective = objective
    c.seed = 0
    # Devices: 0 = all. num_cpu_devices > 0 splits the host CPU into that many XLA devices
    # (set by main before JAX starts; data parallelism over CPU cores is ~2x on 2 cores).
    c.num_devices = 0
    c.num_cpu_devices = 0
    # Persistent XLA compilation cache: "auto" (user cache dir), "none", or a directory.
    c.compilation_cache_dir = "auto"
    c.mesh = [("data", -1)]
    c.sharding_rules = []  # e.g. [(".*kernel", (None, None, None, "data"))]
    # Parameters + optimiser state: "replicated" | "fsdp" (split over "data") | "fsdp_tensor"
    # (also Megatron-style over a "model" mesh axis); see ssl4sar_jax/sharding.py.
    c.sharding = "replicated"
    c.model = model("paper")
    return c


def model(variant: str, **overrides) -> dict:
    """``config.model``: a named `ModelConfig` (``img_size`` is the network input size)."""
    return ModelConfig.named(variant, **overrides).to_dict()


def sampler(sampler_cls: type, size_field: str, **overrides) -> dict:
    """Every field of a data sampler dataclass but its crop side (= ``config.model.img_size``)."""
    fields = dataclasses.asdict(sampler_cls())
    del fields[size_field]
    fields.update(overrides)
    return fields


def dataset(name: str, sampler_fields: dict) -> ml_collections.ConfigDict:
    """``config.data``: the real dataset ``name`` in the TFDS default folder, prepared on first
    use (every field of ``ssl4sar_jax.data.data_config``: own-data options, reading options)."""
    from ssl4sar_jax import data

    return data.data_config(name, config="full", sampler=sampler_fields)


def sgd(learning_rate: float, plateau: bool) -> ml_collections.ConfigDict:
    """``config.optim``: SGD momentum 0.9, coupled weight decay 1e-4, optional reduce-on-plateau."""
    c = ml_collections.ConfigDict()
    c.name = "sgd"
    c.learning_rate = learning_rate
    c.momentum = 0.9
    c.weight_decay = 1e-4
    c.grad_clip_norm = 0.0
    c.plateau = ml_collections.ConfigDict(
        dict(enabled=plateau, factor=0.5, patience=5, threshold=1e-4, cooldown=0, min_lr=0.0)
    )
    return c


def schedule(c, *, batch_size, grad_accum_steps, total_steps, log_every, val_every, ckpt_every):
    """Batch, length, logging, validation cadence and checkpointing of a training run."""
    c.batch_size = batch_size
    c.grad_accum_steps = grad_accum_steps
    c.total_steps = total_steps
    c.stop_after_steps = 0  # > 0: save and stop early (time-boxed jobs, tests)
    c.log_every_steps = log_every
    c.val = ml_collections.ConfigDict()
    c.val.every_steps = val_every
    c.val.at_start = False
    c.val.batch_size = 8  # tiles / examples per predict or loss call (global)
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=ckpt_every, keep=2, async_save=True))
    # Save only healthy states: finite, loss and l2_params within this factor of their recent
    # median (0 = finite only); stop after max_refused_saves refused saves in a row.
    c.checkpoint.health_factor = 10.0
    c.checkpoint.max_refused_saves = 3
    # Workdir rules (docs/training.md, "Workdir guarantees"): start anew in a workdir with
    # history (the old files are moved to overwritten/); accept meaning-changing config keys
    # on resume, e.g. "seed,batch_size" ("*" = any).
    c.overwrite = False
    c.allow_config_change = ""


def init_from(mode: str = "imagenet", path: str = "swinv2_tiny_patch4_window16_256.pth"):
    """``config.init``: scratch | imagenet | workdir | tyrion (ImageNet SwinV2-T by default)."""
    return ml_collections.ConfigDict(
        dict(
            mode=mode,
            path=path,
            partial=False,  # torch formats: load the matching part only
            trust_pickle=False,
            allow_missing=(),  # regexes of parameters that may stay fresh (workdir mode)
        )
    )


def small_run(c, *, demo: bool) -> None:
    """Shared by the demo and smoke variants: synthetic data, tiny model, from scratch."""
    c.model = model("tiny", img_size=128) if demo else model("tiny")
    c.num_cpu_devices = 2 if demo else c.num_cpu_devices
    c.data.config = "synthetic"
    c.data.data_dir = SYNTHETIC_DATA_DIR
    c.grad_accum_steps = 1
    c.init.mode = "scratch"
    c.init.path = ""
    if not demo:
        c.batch_size = 4
        c.total_steps = 3
        c.log_every_steps = 1
        c.val.every_steps = 3
        c.checkpoint.every_steps = 2
        c.checkpoint.async_save = False
