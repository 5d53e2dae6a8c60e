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

``--compare-torch`` (needs the ``torch`` extra and ``transformers``) instead times our model
against its PyTorch twin (`ssl4sar_jax.models.torch_reference`: Hugging Face ``Swinv2Model``
encoder + a torch decoder, holding the same weights, exported by `export_torch_state`) at the
same batch, resolution and thread count: forward (eval, no grad) and an SGD train step (same
loss, momentum and weight decay; parameters updated in place / donated), for each of
``--dtypes`` (bfloat16: our ``ModelConfig.dtype="bfloat16"``, float32 parameters; torch
``autocast("cpu", bfloat16)``). The timings are interleaved JAX / torch / JAX / torch for
``--rounds`` rounds, so load from other processes hits both sides alike; each timed call
follows ``--warm-steps`` (default 1) untimed calls of the same side, since the first call after
the other framework ran is slower (caches, freed memory faulted in again); the report gives the
median, the min-max spread, the ratio of medians and the spread of the per-round ratios,
together with the CPU model and ISA flags (AVX-512, AMX, ...)::

    python benchmarks/model_speed.py --compare-torch --batch 2 --devices 2 --rounds 5
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
    p.add_argument(
        "--upsample-impl",
        default="subpixel",
        choices=("subpixel", "plain"),
        help="ModelConfig.upsample_impl (A/B of the decoder's sub-pixel upsampling)",
    )
    p.add_argument("--remat", action="store_true")
    p.add_argument("--matmul-size", type=int, default=4096)
    p.add_argument("--skip", nargs="*", default=[], choices=("conv", "forward", "train"))
    p.add_argument("--json", help="also write the results as JSON to this path")
    p.add_argument(
        "--compare-torch", action="store_true", help="time against the PyTorch twin (see above)"
    )
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (--compare-torch)")
    p.add_argument(
        "--warm-steps",
        type=int,
        default=1,
        help="untimed calls of the same side right before each timed one (--compare-torch); "
        "0 times the first call after the other framework ran",
    )
    p.add_argument(
        "--dtypes",
        nargs="+",
        default=["float32", "bfloat16"],
        choices=("float32", "bfloat16"),
        help="compute dtypes compared (--compare-torch)",
    )
    p.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (0 = all CPU cores)"
    )
    p.add_argument(
        "--measure",
        nargs="+",
        default=["forward", "train"],
        choices=("forward", "train"),
        help="what --compare-torch times",
    )
    return p.parse_args(argv)


_ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "avx512_fp16",
    "avx512_vnni",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
)


def sgd_train_step(graphdef):
    """``(tx, step)``: the benchmarks' SGD (momentum 0.9, weight decay 1e-4) and its train step
    ``step(params, opt_state, sar, labels, key) -> (params, opt_state, loss)`` (cross-entropy,
    decoder dropout on). Shared by the torch comparison, the plain timing and op_profile.py."""
    import jax
    import optax
    from flax import nnx

    tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.01, momentum=0.9))

    def loss_fn(p, x, y, key):
        logits = nnx.merge(graphdef, p)(x, rngs=nnx.Rngs(dropout=key))["logits"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(p, opt, x, y, key):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y, key)
        updates, opt = tx.update(grads, opt, p)
        return optax.apply_updates(p, updates), opt, loss

    return tx, step


def cpu_description() -> dict[str, object]:
    """CPU model name, core count and the ISA flags that matter for matmul speed."""
    model, flags = "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model == "unknown":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {
        "model_name": model,
        "cores": os.cpu_count(),
        "isa_flags": [f for f in _ISA_FLAGS if f in flags],
    }


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


def compare_torch(args: argparse.Namespace) -> dict[str, object]:
    """Interleaved JAX vs PyTorch timings; returns the results dict and prints a table."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from flax import nnx
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from ssl4sar_jax.models import ModelConfig, SSL4SARSegmenter
    from ssl4sar_jax.models.torch_reference import torch_segmenter_from_jax

    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    cpu = cpu_description()
    devices = jax.devices()[: args.devices]
    mesh = jax.make_mesh((args.devices,), ("data",), devices=devices)
    replicated = NamedSharding(mesh, P())
    batch_sharded = NamedSharding(mesh, P("data"))
    print(
        f"CPU: {cpu['model_name']}, {cpu['cores']} cores, flags {' '.join(cpu['isa_flags'])}\n"
        f"jax {jax.__version__} ({len(devices)} device(s)), torch {torch.__version__} "
        f"({threads} threads), batch {args.batch}, {args.rounds} interleaved rounds",
        flush=True,
    )
    results: dict[str, object] = {
        "cpu": cpu,
        "jax": jax.__version__,
        "torch": torch.__version__,
        "batch": args.batch,
        "devices": args.devices,
        "torch_threads": threads,
        "rounds": args.rounds,
        "warm_steps": args.warm_steps,
        "variant": args.variant,
        "conv_impl": args.conv_impl,
        "upsample_impl": args.upsample_impl,
    }
    rows = []

    def run_dtype(dtype: str) -> int:
        """Times forward / train of one compute dtype; appends to rows and results."""
        config = ModelConfig.named(
            args.variant, dtype=dtype, conv_impl=args.conv_impl, upsample_impl=args.upsample_impl
        )
        # One jitted init (one compilation) instead of one per parameter shape eagerly.
        model = nnx.jit(lambda: SSL4SARSegmenter(config, rngs=nnx.Rngs(0)))()
        twin = torch_segmenter_from_jax(model)
        graphdef, params = nnx.split(model)
        params = jax.device_put(params, replicated)
        size = config.img_size
        rng = np.random.default_rng(0)
        sar_np = rng.uniform(size=(args.batch, size, size, 1)).astype(np.float32)
        labels_np = rng.integers(0, config.num_classes, (args.batch, size, size)).astype(np.int64)
        sar = jax.device_put(jnp.asarray(sar_np), batch_sharded)
        labels = jax.device_put(jnp.asarray(labels_np, jnp.int32), batch_sharded)
        sar_t = torch.from_numpy(sar_np).permute(0, 3, 1, 2).contiguous()
        labels_t = torch.from_numpy(labels_np)
        autocast = dict(device_type="cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")

        # ---------------------------------------------------------------- JAX side
        timers: dict[str, tuple] = {}
        if "forward" in args.measure:
            forward = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x)["logits"])
            t0 = time.perf_counter()
            fwd_c = forward.lower(params, sar).compile()
            print(f"[{dtype}] JAX forward compiled in {time.perf_counter() - t0:.1f} s", flush=True)

            def jax_fwd():
                jax.block_until_ready(fwd_c(params, sar))

            def torch_fwd():
                twin.eval()
                with torch.no_grad(), torch.autocast(**autocast):
                    twin(sar_t)

            timers["forward"] = (jax_fwd, torch_fwd)
        if "train" in args.measure:
            tx, step = sgd_train_step(graphdef)
            state = {"params": params, "opt": jax.device_put(tx.init(params), replicated)}

            key = jax.random.key(0)
            t0 = time.perf_counter()
            step_c = (
                jax.jit(step, donate_argnums=(0, 1))
                .lower(state["params"], state["opt"], sar, labels, key)
                .compile()
            )
            print(
                f"[{dtype}] JAX train step compiled in {time.perf_counter() - t0:.1f} s", flush=True
            )
            optimizer = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

            def jax_train():
                p, o, loss = step_c(state["params"], state["opt"], sar, labels, key)
                state["params"], state["opt"] = p, o
                if not np.isfinite(float(loss)):
                    raise FloatingPointError(f"JAX train step loss is {float(loss)}")

            def torch_train():
                twin.train()
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(**autocast):
                    logits = twin(sar_t)
                loss = torch.nn.functional.cross_entropy(logits.float(), labels_t)
                loss.backward()
                optimizer.step()
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"torch train step loss is {float(loss)}")

            timers["train"] = (jax_train, torch_train)

        for name, (jax_fn, torch_fn) in timers.items():
            jax_fn(), torch_fn()  # warm-up (first-call allocations, oneDNN primitive caches)
            jax_s, torch_s = [], []
            for r in range(args.rounds):
                for fn, out in ((jax_fn, jax_s), (torch_fn, torch_s)):
                    # A step right after the other framework's runs slower (measured: JAX's
                    # paper train step 14-15 s after a torch step, 10-11 s after its own), so
                    # each timed call follows --warm-steps untimed calls of the same side: the
                    # steady state of a training loop, for both sides alike.
                    for _ in range(args.warm_steps):
                        fn()
                    t0 = time.perf_counter()
                    fn()
                    out.append(time.perf_counter() - t0)
                print(
                    f"[{dtype} {name}] round {r + 1}/{args.rounds}: JAX {jax_s[-1]:.2f} s, "
                    f"torch {torch_s[-1]:.2f} s",
                    flush=True,
                )
            ratios = [t / j for j, t in zip(jax_s, torch_s, strict=True)]
            ratio = statistics.median(torch_s) / statistics.median(jax_s)
            rows.append((dtype, name, jax_s, torch_s, ratios, ratio))
            results[f"{dtype}/{name}"] = {
                "jax_s": jax_s,
                "torch_s": torch_s,
                "jax_images_per_s": args.batch / statistics.median(jax_s),
                "torch_images_per_s": args.batch / statistics.median(torch_s),
                "speedup_median": ratio,
                "speedup_per_round": ratios,
            }
        return config.img_size

    for dtype in args.dtypes:
        size = run_dtype(dtype)  # frees that dtype's models before the next
    table = [
        f"CPU {cpu['model_name']} ({cpu['cores']} cores; {' '.join(cpu['isa_flags'])}), "
        f"batch {args.batch} x {size}^2, JAX {args.devices} device(s), torch {threads} threads",
        "",
        "| dtype | measurement | JAX s/step median [min-max] | torch s/step median [min-max] | "
        "JAX img/s | torch img/s | speed-up (torch/JAX time) | per-round speed-ups [min-max] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dtype, name, jax_s, torch_s, ratios, ratio in rows:
        table.append(
            f"| {dtype} | {name} | {_spread(jax_s)} | {_spread(torch_s)} | "
            f"{args.batch / statistics.median(jax_s):.3f} | "
            f"{args.batch / statistics.median(torch_s):.3f} | **{ratio:.2f}x** | "
            f"{min(ratios):.2f}-{max(ratios):.2f} |"
        )
    print("\n" + "\n".join(table), flush=True)
    return results


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
    from flax import nnx
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from ssl4sar_jax.models import ModelConfig, SSL4SARSegmenter

    if args.compare_torch:
        _write_json(args.json, compare_torch(args))
        return 0

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
        "upsample_impl": args.upsample_impl,
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

        # The decoder's last upsampling (96 channels, 256^2 -> 512^2), fwd + bwd: upsample then
        # 3x3 conv vs the sub-pixel form (decoder.upsample2x_conv); both with matmul kernel grads.
        from ssl4sar_jax.models.decoder import upsample2x_conv, upsample_nearest2x

        for name, up in (
            ("upsample plain", lambda x, k: conv2d_matmul_grad(upsample_nearest2x(x), k, 1)),
            ("upsample subpixel", lambda x, k: upsample2x_conv(x, k, matmul_grad=True)),
        ):
            grad = jax.jit(jax.grad(lambda x, k, u=up: jnp.sum(u(x, k) ** 2), (0, 1)))
            _, up_s, _, _ = compile_and_time(grad, x, k, iters=3, label=name)
            # GFLOP/s of the plain form's FLOPs (4x the pixels), so the rows compare directly.
            conv_rows.append((name, up_s, 4 * conv_gflop / up_s))

    config = ModelConfig.named(
        args.variant,
        dtype=args.dtype,
        conv_impl=args.conv_impl,
        remat=args.remat,
        upsample_impl=args.upsample_impl,
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
        tx, step = sgd_train_step(graphdef)
        opt_state = jax.device_put(tx.init(params), replicated)
        train_step = jax.jit(step)

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
            "| conv 3x3 96->96, 2x256x256, fwd+bwd (upsample rows: 2x256x256 -> 512x512, "
            "plain-form FLOPs) | step (s) | GFLOP/s |",
            "|---|---|---|",
        ]
        table += [f"| {name} | {sec:.3f} | {gf:.1f} |" for name, sec, gf in conv_rows]
    print("\n" + "\n".join(table))
    _write_json(args.json, results)
    return 0


def _write_json(path: str | None, results: dict[str, object]) -> None:
    from ssl4sar_jax import io_utils

    if path:
        io_utils.write_json_atomic(path, results, indent=1)


if __name__ == "__main__":
    sys.exit(main())
