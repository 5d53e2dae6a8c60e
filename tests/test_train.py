"""The training loop: device-count invariance, exact resume, SIGTERM, NaN guard, bad input."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
from train_helpers import micro_config, model_dict

from ssl4sar_jax import checkpointing, metrics_lib, train_lib


def _train_losses(workdir):
    return {
        r["step"]: r["train/loss"] for r in metrics_lib.read_history(workdir) if "train/loss" in r
    }


def _final_params(workdir):
    return checkpointing.read_params(workdir, which="latest")


def _assert_params_close(a, b, atol):
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=atol, rtol=0, err_msg=key)


@pytest.fixture()
def finetune_config(data_dir, compilation_cache):
    def make(num_devices=1, **overrides):
        config = micro_config("finetune", "smoke", data_dir, num_devices)
        config.batch_size = 8
        config.grad_accum_steps = 2
        config.total_steps = 3
        for key, value in overrides.items():
            config[key] = value
        return config

    return make


def test_one_and_four_devices_give_the_same_run(finetune_config, tmp_path):
    one = train_lib.train_and_evaluate(finetune_config(1), str(tmp_path / "one"))
    four = train_lib.train_and_evaluate(finetune_config(4), str(tmp_path / "four"))
    assert one["final_step"] == four["final_step"] == 3
    losses_one, losses_four = _train_losses(tmp_path / "one"), _train_losses(tmp_path / "four")
    assert sorted(losses_one) == [1, 2, 3]
    np.testing.assert_allclose(
        [losses_one[s] for s in (1, 2, 3)], [losses_four[s] for s in (1, 2, 3)], atol=1e-5
    )
    _assert_params_close(_final_params(tmp_path / "one"), _final_params(tmp_path / "four"), 1e-5)
    # The run wrote its config, parameter count, events and curves.
    info = json.loads((tmp_path / "one" / "run_info.json").read_text())
    assert info["param_count"] == one["param_count"] > 0
    assert (tmp_path / "one" / "config.json").exists()
    assert any(f.startswith("events") for f in os.listdir(tmp_path / "one" / "tensorboard"))
    assert (tmp_path / "one" / "curves.png").exists()


def test_interrupted_run_resumes_exactly(finetune_config, tmp_path):
    full = train_lib.train_and_evaluate(finetune_config(total_steps=4), str(tmp_path / "full"))
    part = str(tmp_path / "part")
    first = train_lib.train_and_evaluate(finetune_config(total_steps=4, stop_after_steps=2), part)
    assert first["stopped"] == "stop_after_steps" and first["final_step"] == 2
    second = train_lib.train_and_evaluate(finetune_config(total_steps=4), part)
    assert second["first_step"] == 2 and second["final_step"] == 4
    # Same losses at every step (same data order and dropout), same final parameters.
    assert _train_losses(part) == pytest.approx(_train_losses(tmp_path / "full"), abs=1e-6)
    _assert_params_close(_final_params(part), _final_params(tmp_path / "full"), 1e-6)
    assert full["final_step"] == 4


def test_sigterm_saves_then_stops_and_resumes(finetune_config, tmp_path, monkeypatch):
    from ssl4sar_jax.tasks.finetune import FinetuneTask

    original = FinetuneTask.train_iterator

    def iterator_that_gets_killed(self, sources, seed):
        iterator = original(self, sources, seed)

        class Killing:
            calls = 0

            def __next__(self):
                Killing.calls += 1
                if Killing.calls == 2:
                    os.kill(os.getpid(), signal.SIGTERM)  # arrives during step 2
                return next(iterator)

            def get_state(self):
                return iterator.get_state()

            def set_state(self, state):
                iterator.set_state(state)

        return Killing()

    workdir = str(tmp_path / "run")
    config = finetune_config(total_steps=4)
    config.checkpoint.every_steps = 100
    monkeypatch.setattr(FinetuneTask, "train_iterator", iterator_that_gets_killed)
    summary = train_lib.train_and_evaluate(config, workdir)
    assert summary["stopped"] == "preempted" and summary["final_step"] == 2
    assert checkpointing.RunCheckpointer(workdir).latest_step() == 2
    monkeypatch.setattr(FinetuneTask, "train_iterator", original)
    resumed = train_lib.train_and_evaluate(config, workdir)
    assert resumed["first_step"] == 2 and resumed["final_step"] == 4


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(
    finetune_config, tmp_path, monkeypatch
):
    from ssl4sar_jax.tasks.finetune import FinetuneTask

    original = FinetuneTask.train_iterator

    def poisoned(self, sources, seed):
        iterator = original(self, sources, seed)

        class Poison:
            calls = 0

            def __next__(self):
                Poison.calls += 1
                batch = dict(next(iterator))
                if Poison.calls == 3:
                    batch["sar"] = batch["sar"] * np.nan
                return batch

            def get_state(self):
                return iterator.get_state()

            def set_state(self, state):
                iterator.set_state(state)

        return Poison()

    monkeypatch.setattr(FinetuneTask, "train_iterator", poisoned)
    workdir = str(tmp_path / "run")
    with pytest.raises(
        metrics_lib.NonFiniteLossError, match="step 3.*last good checkpoint is step 2"
    ):
        train_lib.train_and_evaluate(finetune_config(total_steps=4), workdir)
    ckpt = checkpointing.RunCheckpointer(workdir)
    assert ckpt.latest_step() == 2
    params = checkpointing.read_params(workdir, which="latest")
    assert all(np.isfinite(v).all() for v in params.values())


def test_workdir_of_another_model_is_refused(finetune_config, tmp_path):
    workdir = str(tmp_path / "run")
    config = finetune_config(total_steps=2)
    train_lib.train_and_evaluate(config, workdir)
    other = finetune_config(total_steps=3)
    other.model = model_dict(embed_dim=64, num_heads=(2, 4))
    with pytest.raises(
        checkpointing.CheckpointMismatchError, match="different model.*new --workdir"
    ):
        train_lib.train_and_evaluate(other, workdir)


def test_bad_batch_configuration_is_reported(finetune_config, tmp_path):
    with pytest.raises(ValueError, match="divisible by config.grad_accum_steps"):
        train_lib.train_and_evaluate(finetune_config(batch_size=7), str(tmp_path / "a"))
    with pytest.raises(ValueError, match="data-parallel devices"):
        train_lib.train_and_evaluate(
            finetune_config(4, batch_size=6, grad_accum_steps=1), str(tmp_path / "b")
        )


def test_missing_dataset_is_reported_before_work(finetune_config, tmp_path):
    config = finetune_config()
    config.data.config = "full"  # real CaFFe: needs the downloaded archive
    config.data.data_dir = str(tmp_path / "empty")
    config.data.manual_dir = str(tmp_path / "no_archive_here")
    with pytest.raises(FileNotFoundError, match="manual_dir"):
        train_lib.train_and_evaluate(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints")
