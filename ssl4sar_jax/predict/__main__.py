r"""Command line: ``python -m ssl4sar_jax.predict {scenes,timeseries} --config CONFIG``.

    python -m ssl4sar_jax.predict scenes --config configs/predict.py \
        --config.inputs=/data/scenes --config.output_dir=runs/fronts \
        --config.checkpoints=runs/ft_seed0
    python -m ssl4sar_jax.predict timeseries --config configs/timeseries.py \
        --config.fronts="runs/fronts/*/*_front.geojson" --config.box=box.gpkg \
        --config.output_dir=runs/series

Any config field can be overridden with ``--config.<key>=<value>``. Exit status 0 when every
scene/front succeeded, 1 when some failed (they are listed in the summary), 1 or 2 on a usage error.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from ssl4sar_jax import config_lib

COMMANDS = ("scenes", "timeseries")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "configs/predict.py[:variant] or configs/timeseries.py", lock_config=True
)
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"expected one command, {' or '.join(COMMANDS)}; got {argv[1:]}")
    command = argv[1]
    config = _CONFIG.value
    if config.get("command") != command:
        raise app.UsageError(
            f"the config {config.get('name', '?')!r} is for {config.get('command')!r}, not "
            f"{command!r} (scenes: configs/predict.py, timeseries: configs/timeseries.py)"
        )
    if command == "timeseries":
        from ssl4sar_jax.predict.timeseries import box_timeseries

        rows = box_timeseries(config)
        return 0 if all(r["status"] != "failed" for r in rows) else 1
    import jax

    cpu_devices = int(config.get("num_cpu_devices", 0) or 0)
    if cpu_devices and "JAX_NUM_CPU_DEVICES" not in os.environ:
        jax.config.update("jax_num_cpu_devices", cpu_devices)
    from ssl4sar_jax.predict.runner import predict_scenes

    rows = predict_scenes(config)
    failed = [r["scene"] for r in rows if r.get("status") == "failed"]
    if failed:
        logging.error("%d scene(s) failed: %s (see the summary)", len(failed), ", ".join(failed))
        return 1
    return 0


def run() -> None:
    """Console-script entry point."""
    app.run(main, flags_parser=config_lib.parse_flags)


if __name__ == "__main__":
    sys.exit(run())
