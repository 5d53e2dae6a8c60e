"""Workdir guarantees without training: integrity manifests, fallback, lock, config changes.

Each test is a probe that failed before the guarantee existed (issue "Trust the workdir").
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ssl4sar_jax import checkpointing, health
from ssl4sar_jax import workdir as workdir_lib
from ssl4sar_jax.tasks import base as task_base


def _state(value: float = 0.0):
    params = {"enc": {"kernel": jnp.arange(16.0).reshape(2, 8) + value}, "head": {"b": jnp.ones(4)}}
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
    return {"step": jnp.asarray(3, jnp.int32), "params": params, "opt_state": tx.init(params)}


def _save_steps(workdir, steps, async_save=True, meta=None):
    ckpt = checkpointing.RunCheckpointer(str(workdir), keep=5, async_save=async_save)
    for step in steps:
        ckpt.save(step, _state(step), {"step": step, **(meta or {})})
    ckpt.wait()
    assert ckpt.close() is None
    return os.path.join(str(workdir), checkpointing.CHECKPOINT_DIR)


def _largest_file(step_dir):
    files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs]
    return max(files, key=os.path.getsize)


def test_every_saved_step_carries_a_manifest_that_verifies(tmp_path):
    root = _save_steps(tmp_path, (1, 2))
    for step in (1, 2):
        step_dir = os.path.join(root, str(step))
        manifest = json.loads(open(os.path.join(step_dir, checkpointing.MANIFEST_FILE)).read())
        assert manifest["step"] == step and "state/_METADATA" in manifest["files"]
        assert checkpointing.verify_step_dir(step_dir).verified


@pytest.mark.parametrize("damage", ["one_byte", "4kib", "missing_metadata", "truncated"])
def test_corrupt_latest_checkpoint_is_named_and_skipped(tmp_path, damage):
    root = _save_steps(tmp_path, (1, 2))
    step_dir = os.path.join(root, "2")
    if damage == "missing_metadata":
        victim = os.path.join(step_dir, "state", "_METADATA")
        os.remove(victim)
    else:
        victim = _largest_file(step_dir)
        data = bytearray(open(victim, "rb").read())
        if damage == "one_byte":
            data[len(data) // 2] ^= 0x01
        elif damage == "4kib":
            data[: min(4096, len(data))] = os.urandom(min(4096, len(data)))
        else:
            data = data[: len(data) // 2]
        open(victim, "wb").write(bytes(data))
    check = checkpointing.verify_step_dir(step_dir)
    assert check.status == "invalid" and victim in check.reason
    # Restoring it explicitly is refused by path; a resume falls back to step 1.
    ckpt = checkpointing.RunCheckpointer(str(tmp_path), async_save=False)
    abstract = jax.eval_shape(_state)
    with pytest.raises(checkpointing.CheckpointIntegrityError, match=victim):
        ckpt.restore(abstract, checkpointing.param_shapes(abstract["params"]), step=2)
    ckpt.close()
    point = checkpointing.select_resume_point(str(tmp_path))
    assert point.step == 1 and not point.best and point.verified
    assert [c.step for c in point.skipped] == [2]
    # The corrupt step was moved aside (orbax neither restores nor counts it).
    assert not os.path.exists(step_dir)
    assert os.listdir(tmp_path / checkpointing.QUARANTINE_DIR)[0].startswith("checkpoints-2-")
    with pytest.raises(checkpointing.CheckpointIntegrityError, match="corrupt|missing|bytes"):
        checkpointing.read_params(
            os.path.join(
                str(tmp_path),
                checkpointing.QUARANTINE_DIR,
                os.listdir(tmp_path / checkpointing.QUARANTINE_DIR)[0],
            )
        )


def test_empty_step_folder_and_legacy_checkpoint(tmp_path):
    root = _save_steps(tmp_path, (1,))
    os.makedirs(os.path.join(root, "50"))
    check = checkpointing.verify_step_dir(os.path.join(root, "50"))
    assert check.status == "invalid" and "empty step folder" in check.reason
    assert "50" in check.reason
    point = checkpointing.select_resume_point(str(tmp_path), quarantine=False)
    assert point.step == 1
    # A complete checkpoint without manifest (older version) is "unverified", used only when
    # nothing verified is there, and read with a warning.
    os.remove(os.path.join(root, "1", checkpointing.MANIFEST_FILE))
    assert checkpointing.verify_step_dir(os.path.join(root, "1")).status == "unverified"
    point = checkpointing.select_resume_point(str(tmp_path), quarantine=False)
    assert point.step == 1 and not point.verified
    params = checkpointing.read_params(str(tmp_path), which="latest")
    np.testing.assert_array_equal(params["enc/kernel"], np.arange(16.0).reshape(2, 8) + 1)


def test_best_checkpoint_is_the_fallback_when_no_periodic_one_is_left(tmp_path):
    ckpt = checkpointing.RunCheckpointer(str(tmp_path), async_save=False)
    ckpt.save(3, _state(3), {}, best=True)
    ckpt.close()
    point = checkpointing.select_resume_point(str(tmp_path))
    assert point.best and point.step == 3


def test_diverged_checkpoint_is_not_a_resume_point(tmp_path):
    _save_steps(tmp_path, (1,))
    ckpt = checkpointing.RunCheckpointer(str(tmp_path), keep=5, async_save=False)
    ckpt.save(2, _state(2), {"health": {"ok": False, "reason": "l2_params = 1e6"}})
    ckpt.close()
    point = checkpointing.select_resume_point(str(tmp_path))
    assert point.step == 1 and point.skipped[0].status == "diverged"


def test_failed_background_save_is_raised_once_with_path_and_os_error(tmp_path, monkeypatch):
    ckpt = checkpointing.RunCheckpointer(str(tmp_path), async_save=True)

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device", "/fake/file")

    monkeypatch.setattr(checkpointing, "write_manifest", no_space)
    ckpt.save(1, _state(), {})
    if ckpt._thread is not None:
        ckpt._thread.join()
    with pytest.raises(checkpointing.CheckpointSaveError) as err:
        ckpt.check()
    text = str(err.value)
    assert "No space left on device [errno 28]" in text and os.path.join("checkpoints", "1") in text
    ckpt.check()  # reported once
    assert ckpt.close() is None


def test_state_copy_survives_donation_of_the_original(tmp_path):
    """Async saves copy the state on device: the loop donates its buffers right after."""
    ckpt = checkpointing.RunCheckpointer(str(tmp_path), async_save=True)
    state = _state(5)
    step_fn = jax.jit(lambda s: jax.tree.map(lambda x: x * 2, s), donate_argnums=0)
    ckpt.save(1, state, {})
    state = step_fn(state)  # deletes the saved buffers (on backends that donate)
    assert ckpt.close() is None
    restored = checkpointing.read_params(str(tmp_path), which="latest")
    np.testing.assert_array_equal(restored["enc/kernel"], np.arange(16.0).reshape(2, 8) + 5)


# ---------------------------------------------------------------------------- one writer
def test_second_lock_names_the_holder_and_stale_lock_is_taken_over(tmp_path, caplog):
    workdir = str(tmp_path)
    with workdir_lib.WorkdirLock(workdir):
        with pytest.raises(workdir_lib.WorkdirLockedError) as err:
            workdir_lib.WorkdirLock(workdir).acquire()
        assert f"PID {os.getpid()}" in str(err.value) and socket.gethostname() in str(err.value)
    # A holder killed with SIGKILL leaves its record behind but not the lock.
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; from ssl4sar_jax import workdir as w; "
            f"w.WorkdirLock({workdir!r}).acquire(); print('locked', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))},
    )
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(workdir_lib.WorkdirLockedError, match=f"PID {child.pid}"):
            workdir_lib.WorkdirLock(workdir).acquire()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert str(child.pid) in open(os.path.join(workdir, workdir_lib.LOCK_FILE)).read()
    with caplog.at_level("WARNING"):
        lock = workdir_lib.WorkdirLock(workdir).acquire()
    assert any(
        "stale lock" in r.getMessage() and str(child.pid) in r.getMessage() for r in caplog.records
    )
    holder = json.loads(open(lock.path).read())
    assert holder["pid"] == os.getpid()
    lock.release()


# ---------------------------------------------------------------------------- history
def test_workdir_with_history_is_refused_unless_overwrite(tmp_path):
    workdir = str(tmp_path)
    workdir_lib.check_fresh_start(workdir, overwrite=False)  # empty: fine
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    (tmp_path / "best_checkpoint" / "7").mkdir(parents=True)
    with pytest.raises(workdir_lib.WorkdirHistoryError, match="metrics.jsonl.*overwrite=True"):
        workdir_lib.check_fresh_start(workdir, overwrite=False)
    workdir_lib.check_fresh_start(workdir, overwrite=True)
    assert not (tmp_path / "metrics.jsonl").exists()
    (moved,) = os.listdir(tmp_path / workdir_lib.OVERWRITTEN_DIR)
    assert (tmp_path / workdir_lib.OVERWRITTEN_DIR / moved / "metrics.jsonl").exists()


# ---------------------------------------------------------------------------- honest resume
def _config(**overrides):
    base = {
        "seed": 0,
        "batch_size": 8,
        "total_steps": 40,
        "model": {"embed_dim": 32, "depths": [1, 1]},
        "optim": {"learning_rate": 0.01, "momentum": 0.9},
        "init": {"mode": "scratch"},
        "data": {"config": "synthetic", "data_dir": "/a"},
    }
    for key, value in overrides.items():
        node = base
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return base


def test_config_changes_are_classified_printed_and_refused(caplog):
    stored = _config()
    current = _config(
        **{
            "optim.learning_rate": 1e-3,
            "total_steps": 60,
            "seed": 1,
            "batch_size": 4,
            "init.mode": "imagenet",
            "data.data_dir": "/b",
            "model.depths": (1, 2),
        }
    )
    kinds = {c.key: c.kind for c in workdir_lib.resume_config_changes(stored, current)}
    assert kinds == {
        "optim.learning_rate": "resumable",
        "total_steps": "resumable",
        "data.data_dir": "resumable",
        "init.mode": "ignored",
        "seed": "refused",
        "batch_size": "refused",
        "model.depths": "refused",
    }
    with caplog.at_level("WARNING"), pytest.raises(workdir_lib.ConfigChangeError) as err:
        workdir_lib.check_resume_config(stored, current, [], "/w/checkpoints/40")
    text = str(err.value)
    assert "seed: 0 -> 1" in text and "batch_size: 8 -> 4" in text and "/w/checkpoints/40" in text
    assert 'allow_config_change="batch_size,model.depths,seed"' in text
    assert "optim.learning_rate" not in text  # resumable keys are not refused...
    assert any("optim.learning_rate: 0.01 -> 0.001" in r.getMessage() for r in caplog.records)
    # ...and an explicit allowance accepts the others (prefixes work).
    allowed = workdir_lib.check_resume_config(
        stored, current, workdir_lib.parse_allow("seed, batch_size,model"), "/w"
    )
    assert {c.kind for c in allowed} == {"resumable", "ignored", "allowed"}
    # Tuples and lists compare equal (ConfigDict JSON round trips).
    assert workdir_lib.resume_config_changes(_config(), _config(**{"model.depths": (1, 1)})) == []


def test_record_config_keeps_history(tmp_path):
    workdir_lib.record_config(str(tmp_path), _config(), 0)
    change = workdir_lib.ConfigChange("optim.learning_rate", 0.01, 0.001, "resumable")
    workdir_lib.record_config(
        str(tmp_path), _config(**{"optim.learning_rate": 0.001}), 40, [change], "resume"
    )
    current = json.loads((tmp_path / "config.json").read_text())
    assert current["optim"]["learning_rate"] == 0.001
    rows = [json.loads(r) for r in (tmp_path / "config_history.jsonl").read_text().splitlines()]
    assert [r["event"] for r in rows] == ["start", "resume"]
    assert rows[0]["config"]["optim"]["learning_rate"] == 0.01
    assert rows[1]["step"] == 40 and rows[1]["changes"][0]["new"] == 0.001


# ---------------------------------------------------------------------------- health
def test_health_refuses_exploding_and_non_finite_states():
    monitor = health.Health(factor=10.0)
    monitor.record({"l2_params": 76.0}, seed=True)
    # A large but finite parameter norm is no divergence on its own (scale-free parameters).
    assert monitor.record({"loss": 1.0, "l2_params": 1.3e5}) is None
    for loss in (1.1, 0.9):
        assert monitor.record({"loss": loss, "l2_params": 77.0}) is None
    assert monitor.record({"loss": 50.0, "l2_params": 80.0}) is not None  # loss 50x median
    assert "loss = 50" in monitor.last_reason and not monitor.summary()["ok"]
    # The exploded value does not become the reference: the next one is judged against ~1.
    assert monitor.record({"loss": 20.0, "l2_params": 80.0}) is not None
    assert monitor.record({"loss": 1.0, "l2_params": float("inf")}) == "l2_params = inf"
    assert monitor.record({"loss": float("nan"), "l2_params": 80.0}) == "loss = nan"
    restored = health.Health()
    restored.load_state_dict(json.loads(json.dumps(monitor.state_dict())))
    assert restored.medians() == monitor.medians()


def test_nan_advice_names_a_rate_that_was_good():
    config = ml_collections.ConfigDict({"optim": {"learning_rate": 1e6}})
    text = health.advice(40, "/w", config, good_lr=0.01)
    assert "--config.optim.learning_rate=0.01" in text
    assert "--config.overwrite=True" in health.advice(None, "/w", config)


# ---------------------------------------------------------------------------- start-up checks
def test_missing_or_empty_split_is_reported_before_training():
    sources = {"train": [1, 2], "validation": []}
    task_base.check_splits(sources, {"config.data.train_split": "train"})
    with pytest.raises(ValueError, match=r"config.data.val_split='validation'.*empty"):
        task_base.check_splits(sources, {"config.data.val_split": "validation"})
    with pytest.raises(ValueError, match=r"no split 'val'.*\['train', 'validation'\]"):
        task_base.check_splits(sources, {"config.data.val_split": "val"})


def test_evaluation_refuses_a_pretraining_checkpoint(tmp_path):
    from ssl4sar_jax.tasks.evaluate import check_segmenter_checkpoint

    _save_steps(tmp_path / "pre", (3,), meta={"task": "pretrain", "objective": "opt_simmim"})
    with pytest.raises(ValueError, match=r"task 'pretrain' \(objective 'opt_simmim'\)"):
        check_segmenter_checkpoint(str(tmp_path / "pre"), "best")
    _save_steps(tmp_path / "ft", (3,), meta={"task": "finetune", "objective": "segment"})
    check_segmenter_checkpoint(str(tmp_path / "ft"), "best")
