"""The command line: end-to-end fine-tuning smoke run with validation MDE, bad config keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from train_helpers import MICRO_ARGS, REPO, cache_env, main_env, run_main, smoke_args


def test_unknown_config_key_fails_clearly(tmp_path):
    result = run_main(smoke_args(tmp_path, "--config.optim.no_such_key=1"))
    assert result.returncode == 2
    assert "Unknown config key(s) ['optim.no_such_key']" in result.stderr
    assert not os.path.exists(tmp_path / "checkpoints")


def test_main_finetune_smoke_with_validation_mde(tmp_path, data_dir, compilation_cache):
    workdir = tmp_path / "ft"
    result = run_main(
        smoke_args(
            workdir,
            f"--config.data.data_dir={data_dir}",
            "--config.total_steps=2",
            "--config.val.every_steps=2",
            # Same program as the in-process fine-tuning tests (persistent compilation cache).
            *MICRO_ARGS,
        ),
        env_extra=cache_env(compilation_cache),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val/front/mde_m" in r]
    assert val and val[-1]["step"] == 2
    assert val[-1]["val/front/mde_m"] > 0  # metres, or the reference's 7777 if no front
    assert 0.0 <= val[-1]["val/zones/iou_mean"] <= 1.0
    assert "Finished (completed) at step 2" in result.stderr
    assert (workdir / "best_checkpoint").is_dir() and (workdir / "curves.png").exists()


def test_evaluate_task_scores_a_finetuned_workdir(tmp_path, data_dir, compilation_cache):
    from train_helpers import load_config, micro_config, model_dict

    from ssl4sar_jax import train_lib
    from ssl4sar_jax.tasks.evaluate import evaluate

    train_config = micro_config("finetune", "smoke", data_dir)
    train_config.total_steps = 1
    train_lib.train_and_evaluate(train_config, str(tmp_path / "ft"))
    config = load_config("evaluate", "demo")
    config.model = model_dict()
    config.checkpoints = (str(tmp_path / "ft"), str(tmp_path / "ft"))  # a 2-member ensemble
    config.which = "latest"
    config.centre_size, config.stride = 16, 8  # context tile = config.model.img_size (32)
    config.data.data_dir = data_dir
    config.max_images = 2
    config.max_overlays = 1
    config.tta = True
    metrics = evaluate(config, str(tmp_path / "eval"))
    assert metrics["front/num_images"] == 2
    assert 0.0 <= metrics["zones/iou_mean"] <= 1.0
    assert (tmp_path / "eval" / "metrics.json").exists()
    assert (tmp_path / "eval" / "evaluate_info.json").exists()
    config.checkpoints = (str(tmp_path / "nowhere"),)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate(config, str(tmp_path / "eval2"))


def test_exit_codes_locked_workdir_75_and_preempted_42(tmp_path, data_dir, compilation_cache):  # noqa: F811
    """Before: a second run on the workdir raced the first; SIGTERM exited 0 like a finished run."""
    import signal
    import time

    from ssl4sar_jax import checkpointing

    workdir = tmp_path / "ft"
    args = smoke_args(
        workdir,
        f"--config.data.data_dir={data_dir}",
        "--config.total_steps=100000",
        "--config.checkpoint.every_steps=100000",
        "--config.log_every_steps=1",
        "--config.val.every_steps=0",
        *MICRO_ARGS,
    )
    env = main_env(cache_env(compilation_cache))
    log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(
        [sys.executable, "-m", "ssl4sar_jax.main", *args], cwd=REPO, env=env, stderr=log, stdout=log
    )
    try:
        deadline = time.time() + 500
        while time.time() < deadline and first.poll() is None:
            if (workdir / "metrics.jsonl").exists() and "train/loss" in (
                workdir / "metrics.jsonl"
            ).read_text():
                break
            time.sleep(0.5)
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        second = run_main(args, env_extra={"JAX_COMPILATION_CACHE_DIR": compilation_cache})
        assert second.returncode == 75, second.stderr[-3000:]
        assert f"PID {first.pid}" in second.stderr and "in use by another run" in second.stderr
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=300) == 42, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
        log.close()
    assert "Finished (preempted)" in (tmp_path / "first.log").read_text()
    point = checkpointing.select_resume_point(str(workdir))
    assert point is not None and point.verified and point.step > 0
