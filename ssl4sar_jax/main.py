r"""Command-line entry point: pretraining, fine-tuning and evaluation.

Examples::

    python -m ssl4sar_jax.main --config configs/finetune.py:demo --workdir /tmp/ft_demo
    python -m ssl4sar_jax.main --config configs/pretrain.py:opt_simmim --workdir runs/simmim
    python -m ssl4sar_jax.main --config configs/finetune.py --workdir runs/ft \
        --config.init.mode=workdir --config.init.path=runs/simmim
    python -m ssl4sar_jax.main --config configs/evaluate.py --workdir runs/eval \
        --config.checkpoints="('runs/ft',)" --config.tta=True

Any config field can be overridden with ``--config.<key>=<value>``; configs are locked, so a
key that does not exist stops with an error naming it. Multi-host runs call
``jax.distributed.initialize()`` when the usual cluster environment variables are present.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py[:variant]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, outputs).")
flags.mark_flags_as_required(["config", "workdir"])

# Environment variables that signal a multi-process launch (jax.distributed auto-detection).
_MULTIPROCESS_ENV = (
    "JAX_COORDINATOR_ADDRESS",
    "COORDINATOR_ADDRESS",
    "SLURM_NTASKS",
    "OMPI_COMM_WORLD_SIZE",
    "TPU_WORKER_HOSTNAMES",
    "MEGASCALE_COORDINATOR_ADDRESS",
)


def _maybe_initialize_distributed() -> None:
    import jax

    if int(os.environ.get("SLURM_NTASKS", "1")) <= 1 and "SLURM_NTASKS" in os.environ:
        return
    if any(name in os.environ for name in _MULTIPROCESS_ENV):
        jax.distributed.initialize()


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    import jax

    cpu_devices = int(config.get("num_cpu_devices", 0) or 0)
    if cpu_devices and "JAX_NUM_CPU_DEVICES" not in os.environ:
        # Must happen before the backend starts; only affects the CPU platform.
        jax.config.update("jax_num_cpu_devices", cpu_devices)
    _maybe_initialize_distributed()
    from ssl4sar_jax.compilation_cache import enable_compilation_cache

    cache_dir = enable_compilation_cache(config.get("compilation_cache_dir", "auto"))

    logging.info(
        "JAX %s, process %d/%d, devices: %s, compilation cache: %s",
        jax.__version__,
        jax.process_index(),
        jax.process_count(),
        jax.devices(),
        cache_dir or "off",
    )
    from ssl4sar_jax import tasks

    entry = tasks.get_entry(config.task)
    result = entry.run(config, _WORKDIR.value)
    if entry.trains:
        _log_summary(result)
    return 0


def _log_summary(summary: dict) -> None:
    """First -> last validation metrics and how the run ended."""
    history = summary["val_history"]
    if history:
        first, last = history[0], history[-1]
        for key in ("val/front/mde_m", "val/zones/iou_mean", "val/loss"):
            if key in last:
                logging.info(
                    "%s: %.4f (step %d) -> %.4f (step %d)",
                    key,
                    first.get(key, float("nan")),
                    first["step"],
                    last[key],
                    last["step"],
                )
    logging.info(
        "Finished (%s) at step %d in %.1f s.",
        summary["stopped"],
        summary["final_step"],
        summary["wall_time_s"],
    )


def _parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that fails clearly on ``--config.<key>`` naming no config field."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as err:
        overrides = [a.split("=")[0][len("--config.") :] for a in argv if a.startswith("--config.")]
        bad = [key for key in overrides if key.split(".")[-1] in str(err)]
        if not bad:
            raise
        sys.stderr.write(
            f"Unknown config key(s) {bad}: the config has no such field (configs are locked). "
            "See the config file for the available keys.\n"
        )
        sys.exit(2)
    except flags.Error as err:
        sys.stderr.write(f"FATAL Flags parsing error: {err}\nPass --helpshort or --helpfull.\n")
        sys.exit(1)


def run() -> None:
    """Console-script entry point."""
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    sys.exit(run())
