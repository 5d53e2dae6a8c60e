"""One process of a loopback multi-process test (launched by ``tests/multiprocess.py``).

Starts ``jax.distributed`` through ``ssl4sar_jax.sharding.initialize_distributed`` (the path
``main.py`` takes), then runs the jobs of ``--jobs`` in order and writes
``results_<process>.json``. Jobs:

* ``{"kind": "train", "task": "finetune" | "opt_simmim" | "opt_translator", "workdir": ...,
  "overrides": {...}, "marker_at_step": k}``: ``train_lib.train_and_evaluate`` on the micro
  model of the training tests; with ``marker_at_step`` this process writes
  ``marker_<process>`` when it draws the batch of step k, then pauses 3 s (so a signal sent by
  the launcher arrives mid-run).
* ``{"kind": "epoch", "task": "finetune", "data_dir": ..., "batch_size": B}``: one epoch of
  this process's training iterator over the split cut to a multiple of ``B``
  (``samples_per_epoch`` = that size); records the record ids it yielded and every record it
  read from the data source.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _config(task: str, data_dir: str, overrides: dict):
    from train_helpers import micro_config

    arg = {"finetune": "smoke", "opt_simmim": "smoke", "opt_translator": "smoke_opt_translator"}[
        task
    ]
    name = "finetune" if task == "finetune" else "pretrain"
    config = micro_config(name, arg, data_dir, num_devices=0)
    config.batch_size = 8
    config.grad_accum_steps = 2
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config


def _train(job: dict, process: int, out: str) -> dict:
    from ssl4sar_jax import train_lib
    from ssl4sar_jax.tasks import get_task

    config = _config(job["task"], job["data_dir"], job.get("overrides", {}))
    marker_at = job.get("marker_at_step")
    if marker_at:
        task_cls = type(get_task(config))
        original = task_cls.train_iterator

        def marked(self, sources, seed):
            iterator = original(self, sources, seed)
            return _MarkingIterator(iterator, marker_at, os.path.join(out, f"marker_{process}"))

        task_cls.train_iterator = marked
    summary = train_lib.train_and_evaluate(config, job["workdir"])
    return {
        k: summary[k] for k in ("first_step", "final_step", "stopped", "val_history", "param_count")
    }


class _MarkingIterator:
    def __init__(self, iterator, at_step: int, path: str):
        self.iterator, self.at_step, self.path, self.calls = iterator, at_step, path, 0

    def __next__(self):
        self.calls += 1
        if self.calls == self.at_step:
            with open(self.path, "w") as f:
                f.write(str(os.getpid()))
            time.sleep(3.0)
        return next(self.iterator)

    def get_state(self):
        return self.iterator.get_state()

    def set_state(self, state):
        self.iterator.set_state(state)


class _ReadLog:
    """The first ``size`` records of a data source; records which records were read."""

    def __init__(self, source, size: int):
        self.source, self.size, self.read = source, size, set()

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        if not 0 <= index < self.size:
            raise IndexError(index)
        self.read.add(int(index))
        return self.source[index]


def _epoch(job: dict) -> dict:
    import dataclasses

    from ssl4sar_jax import data
    from ssl4sar_jax.tasks import base, get_task

    config = _config(job["task"], job["data_dir"], {})
    task = get_task(config)
    source = task.prepare_data()[config.data.train_split]
    batch = job["batch_size"]
    # An epoch of whole global batches: the split cut to a multiple of the batch.
    logged = _ReadLog(source, len(source) - len(source) % batch)
    fields = base.sampler_fields(
        data.FinetuneSamplerConfig,
        config.data.sampler.to_dict(),
        task.sampler_size_field,
        task.context,
    )
    # No mix-up here: its partner image is drawn from the whole split, not the process's shard.
    sampler = dataclasses.replace(
        data.FinetuneSamplerConfig(**fields), samples_per_epoch=len(logged), prob_mix_up=0.0
    )
    iterator = data.make_finetune_iterator(
        logged, global_batch_size=batch, seed=0, sampler=sampler, record_ids=True, num_threads=0
    )
    ids = []
    for _ in range(len(logged) // batch):
        ids += [int(i) for i in next(iterator)["record_index"]]
    stems = [source[i]["stem"].decode() for i in ids]
    return {"ids": ids, "stems": stems, "read": sorted(logged.read), "split_size": len(logged)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--coordinator_address", required=True)
    parser.add_argument("--num_processes", type=int, required=True)
    parser.add_argument("--process_id", type=int, required=True)
    parser.add_argument("--jobs", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if os.environ.get("MULTIPROCESS_TEST_STACKS"):
        import faulthandler

        faulthandler.dump_traceback_later(float(os.environ["MULTIPROCESS_TEST_STACKS"]), True)

    from absl import flags, logging

    flags.FLAGS.mark_as_parsed()
    logging.set_verbosity(logging.INFO)
    logging.use_absl_handler()  # timestamped lines in the process logs
    import jax

    from ssl4sar_jax import sharding

    cache = os.environ.get("MULTIPROCESS_TEST_CACHE")
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    started = sharding.initialize_distributed(
        args.coordinator_address,
        args.num_processes,
        args.process_id,
        initialization_timeout=60,
    )
    assert started and jax.process_count() == args.num_processes, jax.process_count()
    results = {"process_index": jax.process_index(), "device_count": jax.device_count()}
    results["jobs"] = []
    with open(args.jobs) as f:
        jobs = json.load(f)
    for job in jobs:
        t0 = time.perf_counter()
        if job["kind"] == "train":
            result = _train(job, jax.process_index(), args.out)
        elif job["kind"] == "epoch":
            result = _epoch(job)
        else:
            raise ValueError(f"unknown job kind {job['kind']!r}")
        result["seconds"] = time.perf_counter() - t0
        results["jobs"].append(result)
    path = os.path.join(args.out, f"results_{jax.process_index()}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(results, f, default=str)
    os.replace(path + ".tmp", path)
    jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
