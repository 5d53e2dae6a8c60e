"""Where the time of a jitted forward or train step goes, per XLA op.

Traces one call with ``jax.profiler``, sums the duration of every executed XLA op (thunk) of the
trace, and maps each op back to its HLO instruction: result shape and the JAX operation it came
from (``op_name`` metadata, e.g. ``transpose(jvp())/conv_general_dilated`` = a convolution of the
backward pass). Prints the largest ops and a summary per JAX operation, forward vs backward.
This is how the decoder's upsampling was found to be the largest op of the train step (README,
"What moved the numbers").

    python benchmarks/op_profile.py --mode train --batch 1 --top 25
    python benchmarks/op_profile.py --mode forward --variant tiny

Durations are per op as the profiler records them; ops that ran at the same time on the two
XLA worker threads overlap, so the total can exceed the wall time of the call.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_SKIP = ("ThunkExecutor", "SlinkyThreadPool")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="paper", help="ModelConfig.named variant")
    p.add_argument("--mode", choices=("train", "forward"), default="train")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--upsample-impl", choices=("subpixel", "plain"), default="subpixel")
    p.add_argument("--top", type=int, default=25, help="largest ops listed")
    return p.parse_args(argv)


def _hlo_info(hlo_text: str) -> dict[str, tuple[str, str]]:
    """HLO instruction name -> (result shape, JAX op_name metadata)."""
    info = {}
    pattern = r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+) \w+\((.*)$"
    for match in re.finditer(pattern, hlo_text, re.M):
        name, shape, rest = match.groups()
        op = re.search(r'op_name="([^"]+)"', rest)
        info.setdefault(name, (shape, op.group(1) if op else ""))
    return info


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from model_speed import sgd_train_step  # this folder is sys.path[0]

    from ssl4sar_jax.models import ModelConfig, SSL4SARSegmenter

    config = ModelConfig.named(args.variant, upsample_impl=args.upsample_impl)
    model = nnx.jit(lambda: SSL4SARSegmenter(config, rngs=nnx.Rngs(0)))()
    graphdef, params = nnx.split(model)
    rng = np.random.default_rng(0)
    size = config.img_size
    sar = jnp.asarray(rng.uniform(size=(args.batch, size, size, 1)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, config.num_classes, (args.batch, size, size)), jnp.int32)
    key = jax.random.key(0)
    tx, train_step = sgd_train_step(graphdef)

    def forward(p, x):
        return nnx.merge(graphdef, p)(x)["logits"]

    if args.mode == "train":
        fn, fn_args = train_step, (params, tx.init(params), sar, labels, key)
    else:
        fn, fn_args = forward, (params, sar)
    compiled = jax.jit(fn).lower(*fn_args).compile()
    info = _hlo_info(compiled.as_text())
    jax.block_until_ready(compiled(*fn_args))  # warm-up
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*fn_args))
    wall = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            jax.block_until_ready(compiled(*fn_args))
        (path,) = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
        profile = jax.profiler.ProfileData.from_file(path)
    per_op: collections.Counter[str] = collections.Counter()
    for plane in profile.planes:
        for line in plane.lines:
            for event in line.events:
                if event.name in info and not event.name.startswith(_SKIP):
                    per_op[event.name] += event.duration_ns
    total = sum(per_op.values()) or 1
    print(
        f"{args.variant} {args.mode}, batch {args.batch}, upsample {args.upsample_impl}: "
        f"{wall:.2f} s wall (untraced call); {total / 1e9:.2f} s summed over {len(per_op)} ops"
    )
    print("\n| ms | % | XLA op | result shape | JAX operation |\n|---|---|---|---|---|")
    for name, ns in per_op.most_common(args.top):
        shape, op = info[name]
        print(f"| {ns / 1e6:.1f} | {100 * ns / total:.1f} | {name} | {shape} | {op[-90:]} |")
    by_kind: collections.Counter[tuple[str, str]] = collections.Counter()
    for name, ns in per_op.items():
        op = info[name][1]
        direction = "backward" if "transpose(" in op else "forward"
        by_kind[(direction, op.split("/")[-1] or "(no metadata)")] += ns
    print("\n| ms | % | pass | JAX operation |\n|---|---|---|---|")
    for (direction, kind), ns in by_kind.most_common(args.top):
        print(f"| {ns / 1e6:.0f} | {100 * ns / total:.1f} | {direction} | {kind} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
