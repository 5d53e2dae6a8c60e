"""Workdir guarantees of the training loop, probed as a faulty cluster and a hostile user would.

Corrupt latest checkpoint -> fallback; history without checkpoint -> refused; config changes on
resume -> printed, refused or in effect (optimizer state included); huge learning rate -> NaN
-> the advice works; kill -9 / SIGTERM during a checkpoint write and disk full -> the run
resumes exactly or stops at once with the OS error. Micro model, a few steps each.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from train_helpers import REPO, micro_config

from ssl4sar_jax import checkpointing, metrics_lib, train_lib
from ssl4sar_jax import workdir as workdir_lib

CHILD = os.path.join(REPO, "tests", "training_child.py")


@pytest.fixture()
def make_config(data_dir, compilation_cache):
    def make(**overrides):
        config = micro_config("finetune", "smoke", data_dir, 1)
        config.total_steps = 4
        for key, value in overrides.items():
            node = config
            *parents, leaf = key.split(".")
            for name in parents:
                node = node[name]
            node[leaf] = value
        return config

    make.data_dir, make.cache_dir = data_dir, compilation_cache
    return make


def _history(workdir, key="train/loss"):
    return {r["step"]: r[key] for r in metrics_lib.read_history(str(workdir)) if key in r}


def _params(workdir):
    return checkpointing.read_params(str(workdir), which="latest")


def _assert_same_params(a, b, atol=1e-6):
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=atol, rtol=0, err_msg=key)


def _flip_a_byte(step_dir):
    files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
    victim = max(files, key=os.path.getsize)
    data = bytearray(open(victim, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(victim, "wb").write(bytes(data))
    return victim


def test_corrupt_checkpoint_falls_back_and_history_is_never_silently_lost(
    make_config, tmp_path, caplog
):
    workdir = tmp_path / "run"
    train_lib.train_and_evaluate(make_config(), str(workdir))
    reference = _params(workdir)
    losses = _history(workdir)
    victim = _flip_a_byte(workdir / "checkpoints" / "4")
    # Before: loaded without error and trained on with corrupt parameters.
    with caplog.at_level("WARNING"):
        summary = train_lib.train_and_evaluate(make_config(), str(workdir))
    assert summary["first_step"] == 2 and summary["final_step"] == 4
    assert any(
        victim in r.getMessage() and "Falling back" in r.getMessage() for r in caplog.records
    )
    _assert_same_params(_params(workdir), reference)
    assert _history(workdir) == pytest.approx(losses, abs=1e-6)
    assert os.listdir(workdir / checkpointing.QUARANTINE_DIR)

    # Before: with checkpoints/ gone, the run restarted from scratch and truncated the history.
    shutil.rmtree(workdir / "checkpoints")
    rows = (workdir / "metrics.jsonl").read_text()
    with pytest.raises(workdir_lib.WorkdirHistoryError, match="metrics.jsonl.*overwrite=True"):
        train_lib.train_and_evaluate(make_config(), str(workdir))
    assert (workdir / "metrics.jsonl").read_text() == rows
    summary = train_lib.train_and_evaluate(make_config(overwrite=True), str(workdir))
    assert summary["first_step"] == 0 and summary["final_step"] == 4
    (moved,) = os.listdir(workdir / workdir_lib.OVERWRITTEN_DIR)
    assert (workdir / workdir_lib.OVERWRITTEN_DIR / moved / "metrics.jsonl").read_text() == rows


def test_resume_config_changes_take_effect_or_are_refused(make_config, tmp_path):
    workdir = str(tmp_path / "run")
    train_lib.train_and_evaluate(make_config(stop_after_steps=2), workdir)
    # Before: another seed or batch size was accepted silently and config.json overwritten.
    with pytest.raises(workdir_lib.ConfigChangeError, match=r"seed: 0 -> 1.*allow_config_change"):
        train_lib.train_and_evaluate(make_config(seed=1), workdir)
    assert json.loads(open(os.path.join(workdir, "config.json")).read())["seed"] == 0
    # Before: a new learning rate was recorded but training went on with the restored one.
    summary = train_lib.train_and_evaluate(make_config(**{"optim.learning_rate": 0.005}), workdir)
    assert summary["first_step"] == 2 and summary["final_step"] == 4
    lrs = _history(workdir, "train/lr")
    assert lrs[1] == pytest.approx(0.01) and lrs[2] == pytest.approx(0.01)
    assert lrs[3] == pytest.approx(0.005) and lrs[4] == pytest.approx(0.005)
    rows = [json.loads(r) for r in open(os.path.join(workdir, "config_history.jsonl"))]
    assert [(r["event"], r["step"]) for r in rows] == [("start", 0), ("resume", 2)]
    assert {"key": "optim.learning_rate", "old": 0.01, "new": 0.005, "kind": "resumable"} in (
        rows[1]["changes"]
    )
    stored = checkpointing.read_step_meta(os.path.join(workdir, "checkpoints", "4"))["config"]
    assert stored["optim"]["learning_rate"] == 0.005


def test_huge_learning_rate_nan_advice_works(make_config, tmp_path):
    workdir = str(tmp_path / "run")
    train_lib.train_and_evaluate(make_config(total_steps=8, stop_after_steps=2), workdir)
    # Before: the checkpoint named "last good" had already diverged and the advice (lower the
    # rate, resume) was ignored on resume.
    with pytest.raises(FloatingPointError, match="last good checkpoint is step 2") as err:
        train_lib.train_and_evaluate(
            make_config(total_steps=8, **{"checkpoint.every_steps": 1, "optim.learning_rate": 1e6}),
            workdir,
        )
    assert checkpointing.select_resume_point(workdir).step == 2
    assert checkpointing.RunCheckpointer(workdir).latest_step() == 2  # nothing diverged saved
    advised = re.search(r"--config\.optim\.learning_rate=(\S+)", str(err.value)).group(1)
    assert float(advised) == pytest.approx(0.01)
    summary = train_lib.train_and_evaluate(
        make_config(total_steps=6, **{"optim.learning_rate": float(advised)}), workdir
    )
    assert summary["first_step"] == 2 and summary["final_step"] == 6
    l2 = _history(workdir, "train/l2_params")
    assert all(np.isfinite(v) for v in l2.values()) and max(l2.values()) < 10 * l2[1]


# ---------------------------------------------------------------------------- faults
def _child(spec, timeout=600, env_extra=None, wrapper=()):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    return subprocess.run(
        [*wrapper, sys.executable, CHILD, json.dumps(spec)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture()
def reference_run(make_config, tmp_path):
    """An uninterrupted 6-step run (checkpoints every 2 steps, async saves)."""
    workdir = tmp_path / "reference"
    train_lib.train_and_evaluate(
        make_config(total_steps=6, **{"checkpoint.async_save": True}), str(workdir)
    )
    return _params(workdir), _history(workdir)


@pytest.mark.parametrize("at", ["orbax_tmp", "manifest"])
def test_kill_9_during_a_checkpoint_write_resumes_exactly(make_config, reference_run, tmp_path, at):
    workdir = str(tmp_path / "run")
    spec = {
        "workdir": workdir,
        "data_dir": make_config.data_dir,
        "cache_dir": make_config.cache_dir,
        "overrides": {"total_steps": 6, "checkpoint.async_save": True},
        "kill": {"at": at, "step": 4},
    }
    result = _child(spec)
    assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
    point = checkpointing.select_resume_point(workdir, quarantine=False)
    assert point.step == 2  # step 4 was never completed (no manifest)
    summary = train_lib.train_and_evaluate(
        make_config(total_steps=6, **{"checkpoint.async_save": True}), workdir
    )
    assert summary["first_step"] == 2 and summary["final_step"] == 6
    params, losses = reference_run
    _assert_same_params(_params(workdir), params)
    assert _history(workdir) == pytest.approx(losses, abs=1e-6)


def test_sigterm_during_a_checkpoint_write_saves_then_resumes_exactly(
    make_config, reference_run, tmp_path, monkeypatch
):
    original = checkpointing.write_manifest

    def write_with_sigterm(step_dir, step=None):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while step 2 is being written
        return original(step_dir, step)

    monkeypatch.setattr(checkpointing, "write_manifest", write_with_sigterm)
    workdir = str(tmp_path / "run")
    config = make_config(total_steps=6, **{"checkpoint.async_save": True})
    summary = train_lib.train_and_evaluate(config, workdir)
    # The signal arrives in the save thread while step 2 is written; the loop stops at the
    # first step boundary after it (when depends on the write time), after a clean save.
    assert summary["stopped"] == "preempted" and 2 <= summary["final_step"] < 6
    monkeypatch.setattr(checkpointing, "write_manifest", original)
    final = os.path.join(workdir, "checkpoints", str(summary["final_step"]))
    assert checkpointing.verify_step_dir(final).verified
    resumed = train_lib.train_and_evaluate(config, workdir)
    assert resumed["final_step"] == 6
    params, losses = reference_run
    _assert_same_params(_params(workdir), params)
    assert _history(workdir) == pytest.approx(losses, abs=1e-6)


def _small_filesystem_wrapper(path, size="3m"):
    """Run a child inside a private tmpfs mount of ``size`` at ``path`` (user namespace)."""
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {path}"],
        capture_output=True,
    )
    if probe.returncode != 0:
        return None
    return (
        "unshare",
        "-rm",
        "sh",
        "-c",
        f'mount -t tmpfs -o size={size} tmpfs {path} && "$@"',
        "sh",
    )


def test_disk_full_stops_at_the_next_step_with_the_os_error(make_config, tmp_path):
    """A real ENOSPC (a 3 MB tmpfs) or, where mounts are not allowed, a real EFBIG.

    The EFBIG fallback (RLIMIT_FSIZE of 1 MB per file on the child) is a different OS error
    from the same write path: the checkpoint write fails in the background thread either way.
    """
    mount = tmp_path / "small_fs"
    mount.mkdir()
    workdir = str(mount / "run")
    spec = {
        "workdir": workdir,
        "data_dir": make_config.data_dir,
        "cache_dir": make_config.cache_dir,
        "overrides": {"total_steps": 12, "log_every_steps": 1, "checkpoint.async_save": True},
    }
    from ssl4sar_jax import data

    data.prepare("caffe", "synthetic", data_dir=make_config.data_dir)  # not on the small fs
    wrapper = _small_filesystem_wrapper(str(mount))
    if wrapper is not None:
        expected = "No space left on device"
        result = _child({**spec, "size_note": "tmpfs"}, wrapper=wrapper)
        rows_text = None  # the tmpfs is gone with the child's namespace; read its output
    else:
        expected = "File too large"
        limit = 1 << 20  # per file: the largest checkpoint file of the micro model is ~1.6 MB
        code = (
            "import resource,signal,runpy,sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            f"sys.argv = [{CHILD!r}, sys.argv[1]]; runpy.run_path({CHILD!r}, run_name='__main__')"
        )
        env = dict(os.environ, PYTHONPATH=REPO)
        result = subprocess.run(
            [sys.executable, "-c", code, json.dumps(spec)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        rows_text = open(os.path.join(workdir, "metrics.jsonl")).read()
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert "CheckpointSaveError" in output and expected in output, output[-3000:]
    failed = re.search(r"Saving checkpoint (\S+)/checkpoints/(\d+) failed", output)
    assert failed, output[-3000:]
    # Before: reported at the next save, 10 steps and a validation later, in 13,000 lines.
    if wrapper is not None:
        assert "Event loop is closed" not in output
        assert output.count(expected) <= 6, output[-5000:]
        assert len(output.splitlines()) < 400
    else:
        # Measured on the EFBIG path: the failure is raised once, but some TensorStore echoes
        # ("Event loop is closed", printed before the failure reaches the save thread) remain.
        assert len(output.splitlines()) < 1000
    # Raised at the first step boundary after the background write failed (the save of step
    # N runs while steps N+1, N+2 train; on this micro model a write takes about a step).
    stopped = int(re.search(r"The run stopped at step (\d+)", output).group(1))
    assert int(failed.group(2)) < stopped <= int(failed.group(2)) + 3
    if rows_text is not None:
        steps = [json.loads(r)["step"] for r in rows_text.splitlines() if "train/loss" in r]
        assert max(steps) == stopped


def test_dataset_prepare_killed_midway_leaves_nothing_half_prepared(tmp_path):
    """TFDS builds into an ``incomplete`` folder renamed at the end: a kill -9 leaves no dataset."""
    tfds_dir = str(tmp_path / "tfds")
    code = f"""
import glob, os, signal, threading, time
def watch():
    while True:
        files = [f for f in glob.glob({tfds_dir!r} + "/**/*incomplete*/**", recursive=True)
                 if os.path.isfile(f)]
        if files:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.001)
threading.Thread(target=watch, daemon=True).start()
from ssl4sar_jax import data
data.prepare("caffe", "synthetic", data_dir={tfds_dir!r})
print("prepared (the kill came too late)")
"""
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr[-3000:]
    import tensorflow_datasets as tfds

    from ssl4sar_jax import data

    builder = tfds.builder("caffe", config="synthetic", data_dir=tfds_dir)
    assert not builder.is_prepared()
    sources = data.prepare("caffe", "synthetic", data_dir=tfds_dir)
    assert builder.is_prepared() and all(len(s) > 0 for s in sources.values())
