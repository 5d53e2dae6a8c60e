"""Multi-host training on one machine: JAX processes on 127.0.0.1 train as one.

Every case compares loopback multi-process runs (``tests/multiprocess.py``: P processes, gloo
CPU collectives, simulated CPU devices) with a single-process run of the same config and global
batch (in this pytest process, one device):

* P = 2 × 2 devices and P = 4 × 1 device: 3 fine-tuning, 3 OptSimMIM and 3 OptTranslator steps
  give the same losses and parameters (1e-5);
* per-process data shards over an epoch are disjoint and cover the split (record ids, stems);
* a checkpoint written by 2 processes restores on 1 and on 4 processes (resharded) and training
  continues with the losses of the uninterrupted run; every process wrote its own files;
* SIGTERM to one of 2 processes: both save the same step and exit cleanly; the relaunch resumes
  with the uninterrupted losses;
* validation (stitched MDE / IoU) on 2 processes equals the single-process value.

Each launch has a hard timeout that kills its process groups (``LaunchError`` then fails the
test with every process's log tail).
"""

from __future__ import annotations

import os
import shutil
import signal

import numpy as np
import pytest
from multiprocess import launch
from multiprocess_worker import _config
from test_train_utils import compilation_cache, data_dir  # noqa: F401

from ssl4sar_jax import checkpointing, metrics_lib, train_lib
from ssl4sar_jax.tasks import get_task

TOTAL = 8  # fine-tuning run length (runs stop early with stop_after_steps)
LAUNCH_TIMEOUT_S = 900  # generous: CI machines are shared; a hang still ends here
ATOL = 1e-5
FINETUNE = {
    "total_steps": TOTAL,
    "val.every_steps": 3,
    "val.max_images": 2,
    "val.batch_size": 8,
    "val.write_pictures_every": 0,
}
PRETRAIN = {"total_steps": 3}
OBJECTIVES = ("opt_simmim", "opt_translator")


def _losses(workdir) -> dict[int, float]:
    history = metrics_lib.read_history(str(workdir))
    return {r["step"]: r["train/loss"] for r in history if "train/loss" in r}


def _vals(workdir) -> dict[int, dict]:
    history = metrics_lib.read_history(str(workdir))
    return {r["step"]: r for r in history if "val/zones/iou_mean" in r}


def _assert_losses(run, reference, steps):
    np.testing.assert_allclose(
        [run[s] for s in steps], [reference[s] for s in steps], atol=ATOL, rtol=0
    )


def _assert_params(step_dir_a, step_dir_b):
    a, b = checkpointing.read_params(str(step_dir_a)), checkpointing.read_params(str(step_dir_b))
    assert set(a) == set(b)
    for key in a:
        # rtol as well: the micro OptSimMIM's first-block q_bias grows to ~2e6 within 2 steps (a
        # property of the micro model, not of multi-process runs), where float32 summation order
        # alone moves it by ~10 (5e-6 relative).
        np.testing.assert_allclose(a[key], b[key], atol=ATOL, rtol=ATOL, err_msg=key)


def _step_dir(workdir, step):
    return os.path.join(str(workdir), checkpointing.CHECKPOINT_DIR, str(step))


@pytest.fixture(scope="module")
def env(tmp_path_factory, data_dir, compilation_cache):  # noqa: F811
    """Prepared data (built here once: processes must not build it concurrently), shared cache."""
    for task in ("finetune", *OBJECTIVES):
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


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    """Single-process runs: uninterrupted fine-tuning (a checkpoint every step), pretraining."""
    root = tmp_path_factory.mktemp("reference")
    overrides = {**FINETUNE, "checkpoint.every_steps": 1, "checkpoint.keep": TOTAL}
    config = _config("finetune", env["data_dir"], overrides)
    config.num_devices = 1
    train_lib.train_and_evaluate(config, str(root / "finetune"))
    for objective in OBJECTIVES:
        config = _config(objective, env["data_dir"], PRETRAIN)
        config.num_devices = 1
        train_lib.train_and_evaluate(config, str(root / objective))
    return root


def _training_jobs(root, extra_finetune=None):
    finetune = {**FINETUNE, "stop_after_steps": 3, **(extra_finetune or {})}
    jobs = [
        {
            "kind": "train",
            "task": "finetune",
            "workdir": str(root / "finetune"),
            "overrides": finetune,
        }
    ]
    for objective in OBJECTIVES:
        jobs.append(
            {
                "kind": "train",
                "task": objective,
                "workdir": str(root / objective),
                "overrides": PRETRAIN,
            }
        )
    return jobs


@pytest.fixture(scope="module")
def two_processes(env, tmp_path_factory):
    """P = 2 × 2 devices: the three objectives (OptTranslator with FSDP) and an epoch audit."""
    root = tmp_path_factory.mktemp("two")
    jobs = _training_jobs(root)
    jobs[2]["overrides"] = {**PRETRAIN, "sharding": "fsdp"}
    jobs.append({"kind": "epoch", "task": "finetune", "batch_size": 8})
    results = _launch(env, jobs, root / "out", processes=2, devices=2)
    return root, results


@pytest.fixture(scope="module")
def four_processes(env, two_processes, tmp_path_factory):
    """P = 4 × 1 device: the three objectives, and the 2-process checkpoint resumed to the end."""
    root = tmp_path_factory.mktemp("four")
    shutil.copytree(two_processes[0] / "finetune", root / "resumed")
    jobs = _training_jobs(root)
    jobs.append(
        {
            "kind": "train",
            "task": "finetune",
            "workdir": str(root / "resumed"),
            "overrides": FINETUNE,
        }
    )
    jobs.append({"kind": "epoch", "task": "finetune", "batch_size": 8})
    results = _launch(env, jobs, root / "out", processes=4, devices=1)
    return root, results


@pytest.mark.parametrize("which", ["two_processes", "four_processes"])
def test_processes_train_as_one(which, reference, request):
    root, results = request.getfixturevalue(which)
    assert len({r["device_count"] for r in results}) == 1 and results[0]["device_count"] == 4
    for job in results[0]["jobs"][:3]:
        assert job["first_step"] == 0 and job["final_step"] == 3
    ref = _losses(reference / "finetune")
    _assert_losses(_losses(root / "finetune"), ref, (1, 2, 3))
    _assert_params(_step_dir(root / "finetune", 3), _step_dir(reference / "finetune", 3))
    for objective in OBJECTIVES:
        _assert_losses(_losses(root / objective), _losses(reference / objective), (1, 2, 3))
        _assert_params(_step_dir(root / objective, 3), _step_dir(reference / objective, 3))


@pytest.mark.parametrize("which", ["two_processes", "four_processes"])
def test_each_process_reads_a_disjoint_shard_covering_the_epoch(which, request):
    _, results = request.getfixturevalue(which)
    epochs = [r["jobs"][-1] for r in results]
    size = epochs[0]["split_size"]
    ids = [e["ids"] for e in epochs]
    for e in epochs:
        assert e["read"] == sorted(e["ids"])  # a process reads only the records it yields
        assert len(e["ids"]) == size // len(results)
    union = [i for part in ids for i in part]
    assert sorted(union) == list(range(size))  # complete, no duplicates
    stems = [s for e in epochs for s in e["stems"]]
    assert len(set(stems)) == size


def test_checkpoint_of_two_processes_is_written_by_both(two_processes):
    root, _ = two_processes
    step = _step_dir(root / "finetune", 3)
    names = sorted(os.listdir(os.path.join(step, checkpointing.DATA_ITER_ITEM)))
    assert names == ["process_0-of-2.json", "process_1-of-2.json"]
    # Sharded (FSDP) arrays: each process wrote its own shards (orbax OCDBT per-process files).
    state = os.listdir(os.path.join(_step_dir(root / "opt_translator", 3), "state"))
    assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(state), state


def test_two_process_checkpoint_resumes_on_one_and_on_four(
    reference, two_processes, four_processes, env, tmp_path
):
    ref = _losses(reference / "finetune")
    # Four processes (resharded state, iterator state of 2 processes on 4).
    four_root, four_results = four_processes
    resumed = four_results[0]["jobs"][3]
    assert resumed["first_step"] == 3 and resumed["final_step"] == TOTAL
    _assert_losses(_losses(four_root / "resumed"), ref, range(4, TOTAL + 1))
    _assert_params(
        _step_dir(four_root / "resumed", TOTAL), _step_dir(reference / "finetune", TOTAL)
    )
    names = os.listdir(os.path.join(_step_dir(four_root / "resumed", TOTAL), "data_iter"))
    assert len(names) == 4
    # One process (this one, one device).
    workdir = tmp_path / "one"
    shutil.copytree(two_processes[0] / "finetune", workdir)
    config = _config("finetune", env["data_dir"], FINETUNE)
    config.num_devices = 1
    summary = train_lib.train_and_evaluate(config, str(workdir))
    assert summary["first_step"] == 3 and summary["final_step"] == TOTAL
    _assert_losses(_losses(workdir), ref, range(4, TOTAL + 1))
    _assert_params(_step_dir(workdir, TOTAL), _step_dir(reference / "finetune", TOTAL))


def test_validation_on_two_processes_equals_one(reference, two_processes):
    ref = _vals(reference / "finetune")[3]
    run = _vals(two_processes[0] / "finetune")[3]
    for key in ("val/front/mde_m", "val/zones/iou_mean", "val/loss"):
        if key in ref:
            assert run[key] == pytest.approx(ref[key], abs=ATOL), key
    assert "val/zones/iou_mean" in ref


def test_sigterm_to_one_process_saves_the_same_step_everywhere_and_resumes(
    env, reference, tmp_path
):
    workdir = tmp_path / "run"
    overrides = {**FINETUNE, "checkpoint.every_steps": 100, "val.every_steps": 0}
    job = {"kind": "train", "task": "finetune", "workdir": str(workdir), "overrides": overrides}
    sent = []

    def signal_process_1(children):
        if not sent and (tmp_path / "out" / "marker_1").exists():
            os.kill(children[1].popen.pid, signal.SIGTERM)
            sent.append(True)

    marked = {**job, "marker_at_step": 2}
    results = _launch(env, [marked], tmp_path / "out", 2, 2, on_poll=signal_process_1)
    assert sent
    stops = [r["jobs"][0] for r in results]
    assert all(s["stopped"] == "preempted" for s in stops), stops
    saved = stops[0]["final_step"]
    assert all(s["final_step"] == saved for s in stops) and 2 <= saved < TOTAL
    assert checkpointing.RunCheckpointer(str(workdir)).latest_step() == saved
    again = _launch(env, [job], tmp_path / "out2", 2, 2)
    assert again[0]["jobs"][0]["first_step"] == saved
    assert again[0]["jobs"][0]["final_step"] == TOTAL
    _assert_losses(_losses(workdir), _losses(reference / "finetune"), range(1, TOTAL + 1))
