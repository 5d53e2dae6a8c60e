r"""Bytes of parameters + optimiser state per device: replicated vs FSDP vs FSDP + tensor parallel.

Computed from the shardings of the abstract train state of a real config (``jax.eval_shape`` of
the jitted init; no array is allocated and no model is run), on ``--devices`` simulated CPU
devices — the placement rules are those ``ssl4sar_jax.train_lib`` uses, so the numbers hold for
the same mesh of GPUs or TPU chips::

    python benchmarks/memory_per_device.py --config configs/finetune.py --devices 4 8
    python benchmarks/memory_per_device.py --config configs/pretrain.py:opt_simmim --devices 8

Each device count runs in its own subprocess (the CPU device count is fixed when JAX starts).
Prints a Markdown table and writes ``--json`` if given. Activations are not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUTS = (
    ("replicated", None),
    ("fsdp", None),
    ("fsdp_tensor", 2),  # data × model mesh with a model axis of 2
)


def _child(config_arg: str, devices: int) -> list[dict]:
    import jax

    jax.config.update("jax_num_cpu_devices", devices)
    sys.path.insert(0, REPO)

    from ssl4sar_jax import optim, steps
    from ssl4sar_jax import sharding as sharding_lib
    from ssl4sar_jax.tasks import get_task

    config = _load(config_arg)
    task = get_task(config)
    tx = optim.make_optimizer(config)
    abstract_state, _ = jax.eval_shape(steps.make_init_fn(task, tx, 0))
    rows = []
    for preset, model in LAYOUTS:
        axes = [("data", -1)] + ([("model", model)] if model else [])
        mesh = sharding_lib.make_mesh(axes)
        shardings = sharding_lib.state_shardings(abstract_state, mesh, preset=preset)
        params = sharding_lib.bytes_per_device(abstract_state["params"], shardings["params"])
        opt = sharding_lib.bytes_per_device(abstract_state["opt_state"], shardings["opt_state"])
        full = sharding_lib.bytes_per_device(
            abstract_state, sharding_lib.state_shardings(abstract_state, mesh)
        )
        rows.append(
            {
                "config": config_arg,
                "devices": devices,
                "mesh": dict(mesh.shape),
                "sharding": preset,
                "params_bytes": params,
                "opt_state_bytes": opt,
                "total_bytes": params + opt,
                "fraction_of_replicated": (params + opt) / max(1, full),
                "param_count": steps.count_params(abstract_state["params"]),
            }
        )
    return rows


def _load(config_arg: str):
    import importlib.util

    path, _, variant = config_arg.partition(":")
    spec = importlib.util.spec_from_file_location("bench_config", os.path.join(REPO, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant or None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/finetune.py", help="config[:variant]")
    parser.add_argument("--devices", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--json", default="", help="also write the rows to this JSON file")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.config, args.child)))
        return 0
    rows = []
    for devices in args.devices:
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        env.pop("JAX_NUM_CPU_DEVICES", None)
        out = subprocess.run(
            [sys.executable, __file__, "--config", args.config, "--child", str(devices)],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        rows += json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{args.config}: {rows[0]['param_count']:,} parameters (float32), SGD momentum state")
    print(
        "| devices | mesh | sharding | params MiB/device | optimiser MiB/device | total | vs replicated |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        mesh = " × ".join(f"{k} {v}" for k, v in r["mesh"].items())
        print(
            f"| {r['devices']} | {mesh} | {r['sharding']} | {r['params_bytes'] / 2**20:.1f} | "
            f"{r['opt_state_bytes'] / 2**20:.1f} | {r['total_bytes'] / 2**20:.1f} | "
            f"{r['fraction_of_replicated']:.3f} |"
        )
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(rows, f, indent=2)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
