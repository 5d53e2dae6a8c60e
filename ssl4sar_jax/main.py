r"""Command-line entry point: pretraining, fine-tuning and evaluation.

Examples::

    python -m ssl4sar_jax.main --config configs/finetune.py:demo --workdir /tmp/ft_demo
    python -m ssl4sar_jax.main --config configs/pretrain.py:opt_simmim --workdir runs/simmim
    python -m ssl4sar_jax.main --config configs/finetune.py --workdir runs/ft \
        --config.init.mode=workdir --config.init.path=runs/simmim
    python -m ssl4sar_jax.main --config configs/evaluate.py --workdir runs/eval \
        --config.checkpoints="('runs/ft',)" --config.tta=True

Exit codes: 0 finished (or ``stop_after_steps``), 1 error (the message says what to do),
2 bad flags or config keys, 42 preempted by SIGTERM after a clean save (rerun to resume),
75 the workdir is locked by another live run.

Any config field can be overridden with ``--config.<key>=<value>``; configs are locked, so a
key that does not exist stops with an error naming it. Multi-host runs (docs/training.md) start
``jax.distributed`` from ``--coordinator_address/--num_processes/--process_id`` or from a
detected cluster (SLURM, Open MPI, Cloud TPU VM).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ssl4sar_jax import config_lib, io_utils

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py[:variant]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, outputs).")
flags.mark_flags_as_required(["config", "workdir"])

# Plain multi-host launch (no cluster manager): the same coordinator on every process.
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0's coordinator (multi-host runs)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0-based.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "on", "off"],
    "jax.distributed: auto = from the flags above or a detected cluster (SLURM, Open MPI); "
    "on = always (JAX detects the cluster, e.g. a TPU VM pod slice); off = never.",
)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    import jax

    cpu_devices = int(config.get("num_cpu_devices", 0) or 0)
    if cpu_devices and "JAX_NUM_CPU_DEVICES" not in os.environ:
        # Must happen before the backend starts; only affects the CPU platform.
        jax.config.update("jax_num_cpu_devices", cpu_devices)
    from ssl4sar_jax import sharding

    sharding.initialize_distributed(
        _COORDINATOR.value,
        _NUM_PROCESSES.value,
        _PROCESS_ID.value,
        enable={"auto": None, "on": True, "off": False}[_DISTRIBUTED.value],
    )
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
    from ssl4sar_jax import workdir as workdir_lib

    entry = tasks.get_entry(config.task)
    try:
        result = entry.run(config, _WORKDIR.value)
    except workdir_lib.WorkdirLockedError as err:
        logging.error("%s", err)
        return workdir_lib.EXIT_LOCKED
    except _user_errors() as err:
        # Errors whose message says what is wrong and what to do: no traceback.
        logging.error("%s: %s", type(err).__name__, err)
        return workdir_lib.EXIT_ERROR
    if entry.trains:
        _log_summary(result)
        if result["stopped"] == "preempted":
            # Distinct from a finished run, so a scheduler knows to requeue (state is saved).
            return workdir_lib.EXIT_PREEMPTED
    return workdir_lib.EXIT_OK


def _user_errors() -> tuple[type[BaseException], ...]:
    """Refusals whose message says what is wrong and what to do (logged without traceback)."""
    from ssl4sar_jax import checkpointing, health, metrics_lib
    from ssl4sar_jax import workdir as workdir_lib

    return (
        workdir_lib.WorkdirHistoryError,
        workdir_lib.ConfigChangeError,
        checkpointing.CheckpointSaveError,
        checkpointing.CheckpointIntegrityError,
        checkpointing.CheckpointMismatchError,
        metrics_lib.NonFiniteLossError,
        health.DivergenceError,
    )


def _log_summary(summary: dict) -> None:
    """First -> last validation metrics and how the run ended."""
    import jax

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
    if history and jax.process_index() == 0:
        _write_final_metrics(_WORKDIR.value, summary)
    logging.info(
        "Finished (%s) at step %d in %.1f s.",
        summary["stopped"],
        summary["final_step"],
        summary["wall_time_s"],
    )


def _write_final_metrics(workdir: str, summary: dict) -> None:
    """Prints the last validation and writes it to ``<workdir>/final_metrics.json`` (atomically)."""

    last = summary["val_history"][-1]
    final = {
        "step": last["step"],
        "wall_time_s": summary["wall_time_s"],
        "best": summary["best"],
        **{k: v for k, v in last.items() if k != "step"},
    }
    keys = (
        "val/zones/iou_mean",
        "val/zones/iou_glacier",
        "val/front/mde_m",
        "val/front/mde_px",
        "val/front/missing_fronts",
        "val/front/num_images",
        "val/loss",
    )
    shown = ", ".join(f"{k.split('/')[-1]}={last[k]:.4g}" for k in keys if k in last)
    logging.info("Final validation (step %d): %s", last["step"], shown)
    print(f"Final validation (step {last['step']}): {shown}", flush=True)
    path = os.path.join(workdir, "final_metrics.json")
    io_utils.write_json_atomic(path, final, default=float)


def run() -> None:
    """Console-script entry point."""
    app.run(main, flags_parser=config_lib.parse_flags)


if __name__ == "__main__":
    sys.exit(run())
