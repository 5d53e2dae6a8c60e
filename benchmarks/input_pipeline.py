"""Input-pipeline throughput (samples/s) of the fine-tuning and pretraining samplers.

Builds the synthetic ``caffe`` and ``ssl4sar`` datasets (ArrayRecord, no TensorFlow) in
``--data_dir`` and times the grain iterators at the paper's context size (512) with the paper's
augmentation probabilities. The training step must consume fewer samples/s than this.

    python benchmarks/input_pipeline.py --data_dir /tmp/ssl4sar_bench --context 512 --threads 0 2
"""

from __future__ import annotations

import argparse
import dataclasses
import time

from ssl4sar_jax import data


def _time(iterator, batches: int, batch_size: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for i in range(batches):
        next(iterator)
        if (i + 1) % max(1, batches // 4) == 0:
            rate = (i + 1) * batch_size / (time.perf_counter() - start)
            print(f"    {i + 1}/{batches} batches, {rate:.1f} samples/s", flush=True)
    return batches * batch_size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default="/tmp/ssl4sar_jax_bench")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--threads", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--workers", type=int, default=0, help="grain worker processes")
    args = parser.parse_args(argv)
    if args.workers:
        from absl import flags

        flags.FLAGS.mark_as_parsed()  # grain workers read absl flags

    caffe = data.prepare("caffe", "synthetic", args.data_dir, splits=["train"])["train"]
    ssl4sar = data.prepare("ssl4sar", "synthetic", args.data_dir, splits=["train"])["train"]
    ft_cfg = dataclasses.replace(
        data.FinetuneSamplerConfig(), context_size=args.context, centre_size=args.context // 2
    )
    pt_cfg = dataclasses.replace(data.PretrainSamplerConfig(), crop_size=args.context)
    results = {}
    for threads in args.threads:
        for name, make, source, cfg in (
            ("finetune", data.make_finetune_iterator, caffe, ft_cfg),
            ("pretrain", data.make_pretrain_iterator, ssl4sar, pt_cfg),
        ):
            print(
                f"{name} sampler, context {args.context}, {threads} thread(s), "
                f"{args.workers} worker process(es):",
                flush=True,
            )
            it = make(
                source,
                global_batch_size=args.batch_size,
                seed=0,
                sampler=cfg,
                process_index=0,
                process_count=1,
                num_threads=threads,
                num_workers=args.workers,
            )
            results[(name, threads)] = _time(it, args.batches, args.batch_size)
    print(
        f"\nsamples/s at context {args.context} (batch {args.batch_size}, "
        f"{args.workers} worker processes):"
    )
    for (name, threads), rate in results.items():
        print(f"  {name:9s} threads={threads}: {rate:7.1f}")


if __name__ == "__main__":
    main()
