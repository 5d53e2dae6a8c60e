"""Both pretraining objectives end to end, and fine-tuning initialised from a pretraining run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from train_helpers import micro_config, model_dict

from ssl4sar_jax import checkpointing, metrics_lib, train_lib


@pytest.fixture(scope="module")
def translator_workdir(tmp_path_factory, data_dir, compilation_cache):
    config = micro_config("pretrain", "smoke_opt_translator", data_dir)
    config.val.every_steps = 3
    workdir = str(tmp_path_factory.mktemp("translator"))
    summary = train_lib.train_and_evaluate(config, workdir)
    return workdir, summary


def test_opt_simmim_trains_and_validates(data_dir, compilation_cache, tmp_path):
    config = micro_config("pretrain", "smoke", data_dir)
    config.val.every_steps = 3
    workdir = str(tmp_path)
    summary = train_lib.train_and_evaluate(config, workdir)
    assert summary["final_step"] == 3
    val = summary["val_history"][-1]
    assert np.isfinite(val["val/loss"]) and 0.0 < val["val/loss"] < 2.0
    assert val["val/mask_ratio"] == pytest.approx(0.3, abs=0.05)  # pipeline mask, 30 %
    assert summary["best"] == pytest.approx(val["val/loss"])  # best checkpoint by val loss
    assert checkpointing.RunCheckpointer(workdir).best_step() == 3
    assert {k for k in checkpointing.read_params(workdir) if not k.startswith("backbone/")}


def test_opt_translator_trains_and_validates(translator_workdir):
    workdir, summary = translator_workdir
    assert summary["final_step"] == 3
    assert np.isfinite(summary["train_metrics"]["loss"])
    assert summary["train_metrics"]["lr"] == pytest.approx(5e-3)
    val = summary["val_history"][-1]
    assert 0.0 < val["val/loss"] < 2.0 and summary["best"] == pytest.approx(val["val/loss"])
    assert checkpointing.RunCheckpointer(workdir).best_step() == 3


def test_finetune_initialised_from_pretraining_workdir(translator_workdir, data_dir, tmp_path):
    pre_dir, _ = translator_workdir
    config = micro_config("finetune", "smoke", data_dir)
    config.total_steps = 1
    config.optim.learning_rate = 0.0  # the saved step-1 parameters are then the loaded ones
    config.init.mode = "workdir"
    config.init.path = pre_dir
    summary = train_lib.train_and_evaluate(config, str(tmp_path / "ft"))
    report = summary["init_report"]
    # Encoder, decoder and head all come from the pretraining backbone; its heads are unused.
    assert report["missing"] == []
    assert any(k.startswith("encoder/") for k in report["loaded"])
    assert any(k.startswith("decoder/") for k in report["loaded"])
    assert any(k.startswith("translate/") for k in report["unexpected"])
    info = json.loads((tmp_path / "ft" / "run_info.json").read_text())
    assert info["init_report"]["loaded"] == len(report["loaded"])
    source = checkpointing.read_params(pre_dir)
    finetuned = checkpointing.read_params(str(tmp_path / "ft"), which="latest")
    assert set(finetuned) == set(report["loaded"])
    for key, value in finetuned.items():
        np.testing.assert_array_equal(value, source["backbone/" + key], err_msg=key)


def test_init_checkpoint_of_another_architecture_is_refused(translator_workdir, data_dir, tmp_path):
    pre_dir, _ = translator_workdir
    config = micro_config("finetune", "smoke", data_dir)
    config.model = model_dict(
        depths=(1, 1, 1), num_heads=(1, 2, 2), pretrained_window_sizes=(0, 0, 0)
    )
    config.init.mode = "workdir"
    config.init.path = pre_dir
    with pytest.raises(ValueError, match="other shapes than the model.*same architecture"):
        train_lib.train_and_evaluate(config, str(tmp_path / "ft"))


def test_reduce_on_plateau_lowers_the_lr_and_is_checkpointed(data_dir, compilation_cache, tmp_path):
    config = micro_config("pretrain", "smoke_opt_translator", data_dir)
    config.val.every_steps = 1
    config.optim.plateau.patience = 0
    config.optim.plateau.threshold = 0.99  # "better" needs a 100x lower loss: every val is bad
    summary = train_lib.train_and_evaluate(config, str(tmp_path))
    # Validations at steps 1, 2, 3: the first sets the best, the next two halve the LR.
    lrs = {
        r["step"]: r["train/lr"] for r in metrics_lib.read_history(str(tmp_path)) if "train/lr" in r
    }
    assert lrs[1] == pytest.approx(5e-3) and lrs[2] == pytest.approx(5e-3)
    assert lrs[3] == pytest.approx(2.5e-3)
    meta = checkpointing.RunCheckpointer(str(tmp_path)).restore_meta()
    assert meta["plateau"]["lr"] == pytest.approx(1.25e-3)
    assert meta["plateau"]["num_reductions"] == 2
    assert summary["final_step"] == 3
