"""Multi-host training on one machine: JAX processes on 127.0.0.1 train as one.

Loopback multi-process runs (``tests/multiprocess.py``: P processes, gloo CPU collectives,
simulated CPU devices) are compared with single-process runs of the same config and global
batch (in this pytest process, one device). Two launches are shared by all the tests:

* P = 2 × 2 devices: OptTranslator with FSDP and OptSimMIM (3 steps each), an epoch audit, then
  fine-tuning that gets SIGTERM on process 1 at step 2 — both processes save the same step ``s``
  and stop;
* P = 4 × 1 device: the 2-process checkpoint of step ``s`` resumed to the end (resharded state,
  iterator state of 2 processes on 4), an epoch audit, OptTranslator and OptSimMIM (3 steps each).

Checked: losses and parameters equal one process (1e-5); per-process epoch shards are disjoint
and cover the split; every process wrote its own checkpoint files and the integrity manifest
covers them; validation metrics (zones, front) on 2 processes equal one process; the
2-process checkpoint resumes on 4 and on 1 process (this one) with the losses of the
uninterrupted run.

Each launch has a hard timeout that kills its process groups (``LaunchError`` then fails the
test with every process's log tail).
"""

from __future__ import annotations

import json
import os
import shutil
import signal

import numpy as np
import pytest
from multiprocess import launch
from multiprocess_worker import _config

from ssl4sar_jax import checkpointing, metrics_lib, train_lib
from ssl4sar_jax.tasks import get_task

TOTAL = 6  # fine-tuning run length; the SIGTERM at step 2 stops the 2-process run before it
LAUNCH_TIMEOUT_S = 900  # generous: CI machines are shared; a hang still ends here
ATOL = 1e-5
VAL_STEP = 2
FINETUNE = {
    "total_steps": TOTAL,
    "val.every_steps": VAL_STEP,
    "val.max_images": 2,
    "val.batch_size": 8,
    "val.write_pictures_every": 0,
    "checkpoint.every_steps": 100,  # only the preemption save and the final one
}
PRETRAIN = {"total_steps": 3}
PRETRAIN_TASKS = ("opt_translator", "opt_simmim")
FINETUNE_JOB = 3  # index of the fine-tuning job of the 2-process launch


def _losses(workdir) -> dict[int, float]:
    history = metrics_lib.read_history(str(workdir))
    return {r["step"]: r["train/loss"] for r in history if "train/loss" in r}


def _vals(workdir) -> dict[int, dict]:
    history = metrics_lib.read_history(str(workdir))
    return {r["step"]: r for r in history if "val/zones/iou_mean" in r}


def _assert_losses(run, reference, steps):
    steps = list(steps)
    assert steps and set(steps) <= set(run), (steps, sorted(run))
    np.testing.assert_allclose(
        [run[s] for s in steps], [reference[s] for s in steps], atol=ATOL, rtol=0
    )


def _assert_params(step_dir_a, step_dir_b, normwise: bool = False):
    """Parameters equal within 1e-5: elementwise, or relative to each array's largest entry.

    ``normwise`` is for OptSimMIM: its micro run drives the attention ``q_bias`` (initialised
    at 0) to ~1e6 in 3 SGD steps through gradients that are sums of huge terms of both signs,
    so float32 summation order (device layout) moves single entries by ~1e-4 of their value
    while every array agrees to 1e-5 of its largest entry.
    """
    a, b = checkpointing.read_params(str(step_dir_a)), checkpointing.read_params(str(step_dir_b))
    assert a and set(a) == set(b)
    for key in a:
        if normwise:
            scale = float(np.max(np.abs(b[key]))) if np.size(b[key]) else 0.0
            error = float(np.max(np.abs(a[key] - b[key]))) if np.size(b[key]) else 0.0
            assert error <= ATOL * (1.0 + scale), (key, error, scale)
        else:
            # rtol as well: float32 summation order differs between device layouts.
            np.testing.assert_allclose(a[key], b[key], atol=ATOL, rtol=ATOL, err_msg=key)


def _step_dir(workdir, step):
    return os.path.join(str(workdir), checkpointing.CHECKPOINT_DIR, str(step))


def _process_files(step_dir) -> list[str]:
    names = os.listdir(os.path.join(str(step_dir), checkpointing.DATA_ITER_ITEM))
    return sorted(n for n in names if n.startswith("process_"))


@pytest.fixture(scope="module")
def env(data_dir, compilation_cache):
    """Prepared data (built here once: processes must not build it concurrently), shared cache."""
    for task in ("finetune", "opt_translator"):
        get_task(_config(task, data_dir, {})).prepare_data()
    return {"data_dir": data_dir, "cache": compilation_cache}


def _launch(env, jobs, out, processes, devices, **kwargs):
    return launch(
        [{**job, "data_dir": env["data_dir"]} for job in jobs],
        num_processes=processes,
        devices_per_process=devices,
        out_dir=out,
        timeout_s=LAUNCH_TIMEOUT_S,
        env={"MULTIPROCESS_TEST_CACHE": env["cache"]},
        **kwargs,
    )


def _finetune_config(env):
    config = _config("finetune", env["data_dir"], FINETUNE)
    config.num_devices = 1
    return config


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    """Single-process runs: uninterrupted fine-tuning (a checkpoint every step), OptTranslator."""
    root = tmp_path_factory.mktemp("reference")
    config = _finetune_config(env)
    config.checkpoint.every_steps, config.checkpoint.keep = 1, TOTAL
    train_lib.train_and_evaluate(config, str(root / "finetune"))
    for objective in PRETRAIN_TASKS:
        config = _config(objective, env["data_dir"], PRETRAIN)
        config.num_devices = 1
        train_lib.train_and_evaluate(config, str(root / objective))
    return root


@pytest.fixture(scope="module")
def two(env, tmp_path_factory):
    """P = 2 × 2: OptTranslator (FSDP), epoch audit, fine-tuning stopped by SIGTERM."""
    root = tmp_path_factory.mktemp("two")
    jobs = [
        {
            "kind": "train",
            "task": "opt_translator",
            "workdir": str(root / "opt_translator"),
            "overrides": {**PRETRAIN, "sharding": "fsdp"},
        },
        {
            "kind": "train",
            "task": "opt_simmim",
            "workdir": str(root / "opt_simmim"),
            "overrides": PRETRAIN,
        },
        {"kind": "epoch", "task": "finetune", "batch_size": 8},
        {
            "kind": "train",
            "task": "finetune",
            "workdir": str(root / "finetune"),
            "overrides": FINETUNE,
            "marker_at_step": 2,
        },
    ]
    sent = []

    def signal_process_1(children):
        if not sent and (root / "out" / "marker_1").exists():
            os.kill(children[1].popen.pid, signal.SIGTERM)
            sent.append(True)

    results = _launch(env, jobs, root / "out", 2, 2, on_poll=signal_process_1)
    assert sent, "the marker of step 2 never appeared"
    return root, results


@pytest.fixture(scope="module")
def four(env, two, tmp_path_factory):
    """P = 4 × 1: the 2-process fine-tuning checkpoint resumed to the end; epoch audit."""
    root = tmp_path_factory.mktemp("four")
    shutil.copytree(two[0] / "finetune", root / "resumed")
    jobs = [
        {
            "kind": "train",
            "task": "finetune",
            "workdir": str(root / "resumed"),
            # No validation (a resumable change): 4 processes would compile it on 2 cores.
            "overrides": {**FINETUNE, "val.every_steps": 0},
        },
        {"kind": "epoch", "task": "finetune", "batch_size": 8},
        *(
            {
                "kind": "train",
                "task": objective,
                "workdir": str(root / objective),
                "overrides": PRETRAIN,
            }
            for objective in PRETRAIN_TASKS
        ),
    ]
    return root, _launch(env, jobs, root / "out", 4, 1)


def _preempted_step(two) -> int:
    return two[1][0]["jobs"][FINETUNE_JOB]["final_step"]


def test_sigterm_to_one_process_stops_both_at_the_same_saved_step(two):
    root, results = two
    stops = [r["jobs"][FINETUNE_JOB] for r in results]
    assert all(s["stopped"] == "preempted" for s in stops), stops
    saved = stops[0]["final_step"]
    assert all(s["final_step"] == saved for s in stops) and 2 <= saved < TOTAL, stops
    assert checkpointing.RunCheckpointer(str(root / "finetune")).latest_step() == saved


def test_two_processes_train_as_one(two, reference):
    root, results = two
    assert [r["device_count"] for r in results] == [4, 4]
    assert [r["process_index"] for r in results] == [0, 1]
    for job, objective in zip(results[0]["jobs"][:2], PRETRAIN_TASKS, strict=True):
        assert job["first_step"] == 0 and job["final_step"] == 3, objective
        ref = reference / objective
        _assert_losses(_losses(root / objective), _losses(ref), (1, 2, 3))
        _assert_params(
            _step_dir(root / objective, 3), _step_dir(ref, 3), normwise=objective == "opt_simmim"
        )
    saved = _preempted_step(two)
    ref = reference / "finetune"
    _assert_losses(_losses(root / "finetune"), _losses(ref), range(1, saved + 1))
    _assert_params(_step_dir(root / "finetune", saved), _step_dir(ref, saved))


def test_validation_on_two_processes_equals_one(two, reference):
    ref = _vals(reference / "finetune")[VAL_STEP]
    run = _vals(two[0] / "finetune")[VAL_STEP]
    keys = [k for k in ref if k.startswith(("val/zones/", "val/front/"))]
    assert "val/zones/iou_mean" in keys and "val/front/mde_m" in keys
    np.testing.assert_allclose(
        [run[k] for k in keys], [ref[k] for k in keys], atol=ATOL, rtol=0, err_msg=str(keys)
    )


def test_every_process_writes_its_checkpoint_files_under_the_manifest(two):
    root, _ = two
    step = _step_dir(root / "finetune", _preempted_step(two))
    assert _process_files(step) == ["process_0-of-2.json", "process_1-of-2.json"]
    # FSDP arrays: each process wrote its own shards (orbax OCDBT per-process files).
    translator = _step_dir(root / "opt_translator", 3)
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(os.listdir(f"{translator}/state"))
    # Process 0's integrity manifest covers every process's files, and they verify.
    for step_dir in (step, translator):
        assert checkpointing.verify_step_dir(step_dir).verified
        with open(os.path.join(step_dir, checkpointing.MANIFEST_FILE)) as f:
            manifest = json.load(f)["files"]
        assert "data_iter/process_1-of-2.json" in manifest
        assert any(m.startswith("state/ocdbt.process_1/") for m in manifest), manifest


@pytest.mark.parametrize("which", ["two", "four"])
def test_each_process_reads_a_disjoint_shard_covering_the_epoch(which, request):
    _, results = request.getfixturevalue(which)
    epochs = [next(j for j in r["jobs"] if "split_size" in j) for r in results]
    size = epochs[0]["split_size"]
    for e in epochs:
        assert e["read"] == sorted(e["ids"])  # a process reads only the records it yields
        assert len(e["ids"]) == size // len(results)
    union = [i for e in epochs for i in e["ids"]]
    assert sorted(union) == list(range(size))  # complete, no duplicates
    stems = [s for e in epochs for s in e["stems"]]
    assert len(set(stems)) == size


def test_two_process_checkpoint_resumes_on_four(two, four, reference):
    saved = _preempted_step(two)
    root, results = four
    assert [r["device_count"] for r in results] == [4] * 4
    for r in results:
        assert r["jobs"][0]["first_step"] == saved and r["jobs"][0]["final_step"] == TOTAL
    ref = reference / "finetune"
    _assert_losses(_losses(root / "resumed"), _losses(ref), range(saved + 1, TOTAL + 1))
    _assert_params(_step_dir(root / "resumed", TOTAL), _step_dir(ref, TOTAL))
    names = _process_files(_step_dir(root / "resumed", TOTAL))
    assert names == [f"process_{i}-of-4.json" for i in range(4)]


def test_four_processes_pretrain_as_one(four, reference):
    """Both pretraining objectives, 3 steps on P = 4 x 1 device, equal one process."""
    root, results = four
    for objective, job in zip(PRETRAIN_TASKS, results[0]["jobs"][2:], strict=True):
        assert job["first_step"] == 0 and job["final_step"] == 3, objective
        ref = reference / objective
        _assert_losses(_losses(root / objective), _losses(ref), (1, 2, 3))
        _assert_params(
            _step_dir(root / objective, 3), _step_dir(ref, 3), normwise=objective == "opt_simmim"
        )


def test_two_process_checkpoint_resumes_on_one(two, reference, env, tmp_path):
    saved = _preempted_step(two)
    workdir = tmp_path / "one"
    shutil.copytree(two[0] / "finetune", workdir)
    summary = train_lib.train_and_evaluate(_finetune_config(env), str(workdir))
    assert summary["first_step"] == saved and summary["final_step"] == TOTAL
    ref = reference / "finetune"
    _assert_losses(_losses(workdir), _losses(ref), range(saved + 1, TOTAL + 1))
    _assert_params(_step_dir(workdir, TOTAL), _step_dir(ref, TOTAL))
