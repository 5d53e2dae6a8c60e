r"""Training throughput of the paper configuration (SwinV2-T + decoder, 512² context) on CPU.

Runs the real jitted train step of ``ssl4sar_jax.train_lib`` (fine-tuning loss, SGD, data
parallel over ``--devices`` XLA CPU devices, global batch ``--batch``) on random inputs and reports
images/s after a warm-up step. Each device count runs in its own subprocess because the number of
CPU devices is fixed when JAX starts::

    python benchmarks/train_speed.py --devices 1 2 --batch 2 --steps 2

It is slow on a laptop-class CPU (tens of seconds per step); the numbers printed are medians of
the timed steps. Use ``--model tiny --size 128`` for a quick check.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child(args: argparse.Namespace) -> dict:
    import jax
    import ml_collections
    import numpy as np

    sys.path.insert(0, REPO)
    from ssl4sar_jax import optim, steps
    from ssl4sar_jax import sharding as sharding_lib
    from ssl4sar_jax.models import ModelConfig
    from ssl4sar_jax.tasks.finetune import FinetuneTask

    config = ml_collections.ConfigDict()
    config.task = "finetune"
    config.model = ModelConfig.named(args.model, img_size=args.size).to_dict()
    config.data = dict(sampler=dict(centre_size=args.size // 2))  # context = model.img_size
    config.loss = dict(
        ce_weights=(0.5, 0.5),
        dice_weights=(0.5, 0.5),
        label_smoothing=0.1,
        smoothing_mode="reference",
        dice_group_size=0,
    )
    config.optim = dict(name="sgd", learning_rate=0.01, momentum=0.9, weight_decay=1e-4)
    config.init = dict(allow_missing=())
    task = FinetuneTask(config)
    mesh = sharding_lib.make_mesh([("data", -1)])
    tx = optim.make_optimizer(config)
    init_fn = steps.make_init_fn(task, tx, 0)
    abstract_state, abstract_rest = jax.eval_shape(init_fn)
    state_sh = sharding_lib.state_shardings(abstract_state, mesh)
    rest_sh = sharding_lib.state_shardings(abstract_rest, mesh)
    state, rest = jax.jit(init_fn, out_shardings=(state_sh, rest_sh))()
    graphdef = steps.graphdef_of(task, 0)
    repl = sharding_lib.replicated(mesh)
    step_fn = jax.jit(
        steps.make_train_step(task, graphdef, tx, 1, mesh),
        in_shardings=(state_sh, rest_sh, sharding_lib.batch_sharding(mesh), repl),
        out_shardings=(state_sh, repl),
        donate_argnums=(0,),
    )
    rng = np.random.default_rng(0)
    local = {
        "sar": rng.random((args.batch, args.size, args.size, 1), dtype=np.float32),
        "zones": rng.integers(0, 4, (args.batch, args.size, args.size)).astype(np.int32),
    }
    batch = sharding_lib.make_global_batch(local, mesh)
    key = jax.random.key(0)
    t0 = time.perf_counter()
    state, metrics = step_fn(state, rest, batch, key)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, metrics = step_fn(state, rest, batch, key)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    return {
        "devices": jax.device_count(),
        "model": args.model,
        "size": args.size,
        "batch": args.batch,
        "params": steps.count_params(state["params"]),
        "compile_plus_first_step_s": round(first, 2),
        "step_s_median": round(step_s, 3),
        "images_per_s": round(args.batch / step_s, 4),
        "loss": float(metrics["loss"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the warm-up")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--model", default="paper")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print("RESULT " + json.dumps(_child(args)), flush=True)
        return
    rows = []
    for count in args.devices:
        env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(count))
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--child",
            "--batch",
            str(args.batch),
            "--steps",
            str(args.steps),
            "--size",
            str(args.size),
            "--model",
            args.model,
        ]
        print(f"[{count} device(s)] running ...", flush=True)
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        line = next((s for s in out.stdout.splitlines() if s.startswith("RESULT ")), None)
        if line is None:
            sys.stderr.write(out.stderr[-3000:])
            raise SystemExit(f"benchmark with {count} device(s) failed")
        rows.append(json.loads(line[len("RESULT ") :]))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| devices | model | input | batch | step (s) | images/s | compile+1st step (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['devices']} | {r['model']} | {r['size']}² | {r['batch']} | "
            f"{r['step_s_median']} | {r['images_per_s']} | {r['compile_plus_first_step_s']} |"
        )


if __name__ == "__main__":
    main()
