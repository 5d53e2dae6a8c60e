"""Speed of the SSL4SAR model: jitted forward and train step, against the machine's matmul peak.

Measures, in one process:

1. the peak float32 GFLOP/s of a large jitted matmul (``--matmul-size``),
2. the jitted forward pass (eval mode) of the model at ``--batch`` x 512 x 512,
3. a jitted train step: forward + backward + SGD (momentum 0.9, weight decay 1e-4, as the
   fine-tuning recipe) on label-smoothing-free cross-entropy with random labels, with decoder
   dropout on,

and prints a Markdown table with images/s and achieved GFLOP/s. The paper configuration
costs 163.0 GFLOPs per forward at 512 x 512 (matmul + conv, counted with
``torch.utils.flop_counter`` on the TYRION model, 2 FLOPs per multiply-add) and
about 3x that per train step; XLA's own count (``cost_analysis``) is shown next to it.

``--devices N`` simulates N host devices (``JAX_NUM_CPU_DEVICES``) and shards the batch over
them (data parallel, parameters replicated): on a 2-core CPU XLA uses the second core poorly
inside one convolution, so 2 devices are faster than one.

Example (the numbers in docs/model.md)::

    python benchmarks/model_speed.py --batch 2 --iters 3 --devices 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

PAPER_FORWARD_GFLOPS = 163.0  # per 512 x 512 image
TRAIN_STEP_FACTOR = 3.0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variant", default="paper", help="ModelConfig.named variant")
    p.add_argument("--batch", type=int, default=2, help="global batch size")
    p.add_argument("--iters", type=int, default=3, help="timed iterations per measurement")
    p.add_argument("--devices", type=int, default=1, help="host devices for data parallelism")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--conv-impl", default="auto", choices=("auto", "xla", "matmul_grad"))
    p.add_argument("--remat", action="store_true")
    p.add_argument("--matmul-size", type=int, default=4096)
    p.add_argument("--skip", nargs="*", default=[], choices=("conv", "forward", "train"))
    p.add_argument("--json", help="also write the results as JSON to this path")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.batch % args.devices:
        raise ValueError(f"--batch {args.batch} must be divisible by --devices {args.devices}")
    # Must happen before JAX initialises its backend.
    os.environ["JAX_NUM_CPU_DEVICES"] = str(args.devices)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from ssl4sar_jax import io_utils
    from ssl4sar_jax.models import ModelConfig, SSL4SARSegmenter

    temp_gb_by_label: dict[str, float] = {}

    def compile_and_time(jitted, *fn_args, iters: int, label: str):
        """AOT-compiles ``jitted`` for ``fn_args``, then times ``iters`` calls.

        Returns:
            (compile_s, median_step_s, xla_gflop_or_None, last_output).
        """
        t0 = time.perf_counter()
        compiled = jitted.lower(*fn_args).compile()
        compile_s = time.perf_counter() - t0
        print(f"[{label}] compiled in {compile_s:.1f} s", flush=True)
        try:  # XLA's own FLOP count (per device), best effort
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, list) else cost
            xla = float(cost["flops"]) / 1e9
        except Exception:
            xla = None
        try:
            temp_gb = compiled.memory_analysis().temp_size_in_bytes / 1e9
            print(f"[{label}] XLA temp buffers per device: {temp_gb:.2f} GB", flush=True)
            temp_gb_by_label[label] = temp_gb
        except Exception:
            pass
        out = jax.block_until_ready(compiled(*fn_args))  # warm-up
        times = []
        for i in range(iters):
            t0 = time.perf_counter()
            out = jax.block_until_ready(compiled(*fn_args))
            times.append(time.perf_counter() - t0)
            eta = statistics.mean(times) * (iters - i - 1)
            print(
                f"[{label}] iter {i + 1}/{iters}: {times[-1]:.2f} s (ETA {eta:.0f} s)", flush=True
            )
        return compile_s, statistics.median(times), xla, out

    devices = jax.devices()[: args.devices]
    mesh = jax.make_mesh((args.devices,), ("data",), devices=devices)
    replicated = NamedSharding(mesh, P())
    batch_sharded = NamedSharding(mesh, P("data"))
    print(
        f"jax {jax.__version__}, backend {jax.default_backend()}, {len(devices)} device(s), "
        f"{os.cpu_count()} CPU cores",
        flush=True,
    )

    results: dict[str, object] = {
        "variant": args.variant,
        "batch": args.batch,
        "devices": args.devices,
        "dtype": args.dtype,
        "conv_impl": args.conv_impl,
        "remat": args.remat,
    }

    # 1. Peak: a large float32 matmul on one device (XLA's dot uses all cores).
    n = args.matmul_size
    rng0 = np.random.default_rng(0)
    a = jnp.asarray(rng0.standard_normal((n, n)), jnp.float32)
    matmul = jax.jit(lambda x, y: x @ y)
    _, mm_s, _, _ = compile_and_time(matmul, a, a, iters=max(args.iters, 3), label="matmul")
    peak = 2 * n**3 / mm_s / 1e9
    results["peak_matmul_gflops"] = peak
    print(f"peak float32 matmul ({n}^3): {peak:.1f} GFLOP/s", flush=True)

    # 2. The decoder's typical conv (3x3, 96 -> 96, 2 x 256 x 256), forward + backward, with XLA's
    # kernel gradient and with the custom-VJP matmul kernel gradient (cpu_conv.py).
    conv_rows = []
    if "conv" not in args.skip:
        from ssl4sar_jax.models.cpu_conv import conv2d_matmul_grad, conv2d_xla

        x = jnp.asarray(rng0.standard_normal((2, 256, 256, 96)), jnp.float32)
        k = jnp.asarray(rng0.standard_normal((3, 3, 96, 96)) * 0.03, jnp.float32)
        conv_gflop = 3 * 2 * 2 * 256 * 256 * 96 * 96 * 9 / 1e9  # fwd + 2 grads
        for name, conv in (
            ("xla", lambda x, k: conv2d_xla(x, k, 1, 1)),
            ("matmul_grad", lambda x, k: conv2d_matmul_grad(x, k, 1)),
        ):
            grad = jax.jit(jax.grad(lambda x, k, c=conv: jnp.sum(c(x, k) ** 2), (0, 1)))
            _, conv_s, _, _ = compile_and_time(grad, x, k, iters=3, label=f"conv {name}")
            conv_rows.append((name, conv_s, conv_gflop / conv_s))
        results["conv3x3_fwd_bwd_gflops"] = {name: gf for name, _, gf in conv_rows}

    config = ModelConfig.named(
        args.variant, dtype=args.dtype, conv_impl=args.conv_impl, remat=args.remat
    )
    model = SSL4SARSegmenter(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    params = jax.device_put(params, replicated)
    size = config.img_size
    rng = np.random.default_rng(0)
    sar = jax.device_put(
        jnp.asarray(rng.uniform(size=(args.batch, size, size, 1)), jnp.float32), batch_sharded
    )
    labels = jax.device_put(
        jnp.asarray(rng.integers(0, config.num_classes, (args.batch, size, size)), jnp.int32),
        batch_sharded,
    )
    nominal = PAPER_FORWARD_GFLOPS if (args.variant == "paper" and size == 512) else None

    rows = []

    # 3. Forward (eval mode).
    if "forward" not in args.skip:

        @jax.jit
        def forward(params, sar):
            return nnx.merge(graphdef, params)(sar)["logits"]

        compile_s, step_s, xla, _ = compile_and_time(
            forward, params, sar, iters=args.iters, label="forward"
        )
        gflop = nominal * args.batch if nominal else (xla or float("nan"))
        rows.append(("forward", compile_s, step_s, gflop, xla))

    # 4. Train step: forward + backward + SGD with momentum and weight decay.
    if "train" not in args.skip:
        tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.01, momentum=0.9))
        opt_state = jax.device_put(tx.init(params), replicated)

        def loss_fn(params, sar, labels, key):
            logits = nnx.merge(graphdef, params)(sar, rngs=nnx.Rngs(dropout=key))["logits"]
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        @jax.jit
        def train_step(params, opt_state, sar, labels, key):
            loss, grads = jax.value_and_grad(loss_fn)(params, sar, labels, key)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, loss

        key = jax.random.key(0)
        # Not donated, so every timed call starts from the same parameters.
        compile_s, step_s, xla, out = compile_and_time(
            train_step, params, opt_state, sar, labels, key, iters=args.iters, label="train"
        )
        loss = out[2]
        if not np.isfinite(float(loss)):
            raise FloatingPointError(f"train step loss is {float(loss)}")
        gflop = nominal * TRAIN_STEP_FACTOR * args.batch if nominal else (xla or float("nan"))
        rows.append(("train step", compile_s, step_s, gflop, xla))

    table = [
        f"| measurement | batch | devices | compile (s) | step (s) | images/s | GFLOP/s | "
        f"% of matmul peak ({peak:.0f} GFLOP/s) | XLA GFLOP per device-step | "
        "XLA temp GB per device |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    label_of = {"forward": "forward", "train step": "train"}
    for name, compile_s, step_s, gflop, xla in rows:
        achieved = gflop / step_s
        results[name] = {
            "compile_s": compile_s,
            "step_s": step_s,
            "images_per_s": args.batch / step_s,
            "gflops_per_s": achieved,
            "utilisation": achieved / peak,
            "xla_gflop_per_device_step": xla,
            "xla_temp_gb_per_device": temp_gb_by_label.get(label_of[name]),
        }
        table.append(
            f"| {name} | {args.batch} | {args.devices} | {compile_s:.1f} | {step_s:.2f} | "
            f"{args.batch / step_s:.3f} | {achieved:.1f} | {100 * achieved / peak:.0f}% | "
            f"{xla if xla is None else round(xla, 1)} | "
            f"{temp_gb_by_label.get(label_of[name], float('nan')):.2f} |"
        )
    if conv_rows:
        table += [
            "",
            "| conv 3x3 96->96, 2x256x256, fwd+bwd | step (s) | GFLOP/s |",
            "|---|---|---|",
        ]
        table += [f"| {name} | {sec:.3f} | {gf:.1f} |" for name, sec, gf in conv_rows]
    print("\n" + "\n".join(table))
    if args.json:
        io_utils.write_json_atomic(args.json, results, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
