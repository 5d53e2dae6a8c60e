"""The objective and task registries: a new objective is one entry, and it trains in the loop."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from train_helpers import load_config, micro_config

from ssl4sar_jax import metrics_lib, objectives, tasks, train_lib
from ssl4sar_jax.models import SSL4SARSegmenter, build_model
from ssl4sar_jax.models.segmenter import feature_head


class _SarAutoencoder(nnx.Module):
    """A toy objective's model: the shared backbone plus a 1x1 head reconstructing the SAR."""

    def __init__(self, config, *, rngs):
        self.config = config
        self.backbone = SSL4SARSegmenter(config, rngs=rngs)
        self.reconstruct_sar = feature_head(config, 1, rngs=rngs)

    def __call__(self, sar, *, rngs=None):
        features = self.backbone(sar, rngs=rngs, return_logits=False)["features"]
        return self.reconstruct_sar(features).astype(jnp.float32)


def _toy_loss(model, batch, rngs, config):
    loss = jnp.mean(jnp.abs(model(batch["sar"], rngs=rngs) - batch["sar"]))
    return loss, {"loss": loss}


def _toy_spec(config, batch_size):
    size = config.img_size
    return {"sar": jax.ShapeDtypeStruct((batch_size, size, size, 1), jnp.float32)}


@pytest.fixture()
def toy_objective():
    entry = objectives.register_objective(
        objectives.Objective(
            name="toy_sar_autoencoder",
            build=_SarAutoencoder,
            loss=_toy_loss,
            batch_spec=_toy_spec,
            hparams={"optim.learning_rate": 0.02},
            torch_head_keys={"reconstruct_sar": "sar_head"},
        )
    )
    yield entry
    objectives.unregister_objective(entry.name)


def test_a_toy_objective_trains_through_the_real_loop(
    toy_objective,
    data_dir,
    compilation_cache,
    tmp_path,
):
    # configs/pretrain.py offers the new objective's variants and applies its hyper-parameters.
    paper = load_config("pretrain", toy_objective.name)
    assert paper.objective == toy_objective.name and paper.optim.learning_rate == 0.02
    config = micro_config("pretrain", "smoke_" + toy_objective.name, data_dir)
    config.val.every_steps = 3
    summary = train_lib.train_and_evaluate(config, str(tmp_path))
    assert summary["final_step"] == 3 and summary["stopped"] == "completed"
    assert summary["train_metrics"]["lr"] == pytest.approx(0.02)
    history = metrics_lib.read_history(str(tmp_path))
    losses = [r["train/loss"] for r in history if "train/loss" in r]
    assert len(losses) == 3 and all(np.isfinite(losses))
    val = summary["val_history"][-1]
    assert np.isfinite(val["val/loss"]) and summary["best"] == pytest.approx(val["val/loss"])
    # The model builder and the torch key mapping read the same entry.
    model = build_model(config.model.to_dict(), objective=toy_objective.name)
    assert isinstance(model, _SarAutoencoder)
    from ssl4sar_jax.models import convert_torch

    keys = convert_torch.model_torch_keys(model)
    assert keys[("reconstruct_sar", "kernel")] == "sar_head.weight"


def test_objective_registry_lists_and_refuses():
    assert objectives.objective_names(trainable_only=True) == ("opt_simmim", "opt_translator")
    assert "segment" in objectives.objective_names()
    with pytest.raises(ValueError, match="already registered"):
        objectives.register_objective(objectives.get_objective("opt_simmim"))
    with pytest.raises(ValueError, match="unknown objective 'nope'.*opt_simmim"):
        objectives.get_objective("nope")


def test_pretrain_task_refuses_a_non_trainable_objective(data_dir):
    config = micro_config("pretrain", "smoke", data_dir)
    config.objective = "segment"
    with pytest.raises(ValueError, match="config.objective must be one of"):
        tasks.get_task(config)


def test_task_registry(data_dir):
    assert tasks.task_names(training_only=True) == ("pretrain", "finetune")
    assert not tasks.get_entry("evaluate").trains
    config = micro_config("finetune", "smoke", data_dir)
    assert isinstance(tasks.get_task(config), tasks.FinetuneTask)
    config.task = "evaluate"
    with pytest.raises(ValueError, match="not a training task"):
        tasks.get_task(config)
    config.task = "nope"
    with pytest.raises(ValueError, match="config.task must be one of"):
        tasks.get_task(config)
    with pytest.raises(ValueError, match="exactly one of"):
        tasks.register_task("x")


def test_input_size_has_one_home(data_dir):
    config = micro_config("finetune", "smoke", data_dir)
    task = tasks.get_task(config)
    assert task.context == config.model.img_size == 32
    config.data.sampler.context_size = 32
    with pytest.raises(ValueError, match="sampler.context_size is not a setting.*img_size"):
        tasks.get_task(config)


def test_finetune_class_weights_from_config_reach_the_loss(data_dir):
    config = micro_config("finetune", "smoke", data_dir)
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 32, 32, 4)), jnp.float32)
    batch = {
        "sar": jnp.zeros((2, 32, 32, 1)),
        "zones": jnp.asarray(rng.integers(0, 4, (2, 32, 32))),
    }

    def fixed_model(sar, rngs=None):
        return {"logits": logits}

    assert config.loss.class_weights == ()  # the reference: unweighted
    plain_task = tasks.get_task(config)
    assert plain_task.class_weights is None
    plain_loss, plain = plain_task.loss_fn(fixed_model, batch, None)
    config.loss.class_weights = (1.0, 1.0, 1.0, 4.0)
    task = tasks.get_task(config)
    assert task.class_weights == (1.0, 1.0, 1.0, 4.0)
    weighted_loss, weighted = task.loss_fn(fixed_model, batch, None)
    assert abs(float(weighted["ce_context"]) - float(plain["ce_context"])) > 1e-4
    np.testing.assert_allclose(float(weighted["dice_context"]), float(plain["dice_context"]))
    assert float(weighted_loss) != float(plain_loss)
    for bad in [(1.0, 1.0, 1.0), (1.0, -1.0, 1.0, 1.0), (0.0, 0.0, 0.0, 0.0)]:
        config.loss.class_weights = bad
        with pytest.raises(ValueError, match="config.loss.class_weights must be 4 non-negative"):
            tasks.get_task(config)


def test_evaluation_and_steps_do_not_import_the_loop():
    import subprocess
    import sys

    code = (
        "import sys, ssl4sar_jax.tasks.evaluate, ssl4sar_jax.steps, ssl4sar_jax.tasks; "
        "print('ssl4sar_jax.train_lib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_segmenter_does_not_import_the_pretraining_heads():
    import inspect

    from ssl4sar_jax.models import segmenter

    assert "pretrain_heads" not in inspect.getsource(segmenter)


@pytest.fixture()
def pixel_accuracy_metric():
    from ssl4sar_jax.evaluation import metrics

    def per_image(image, pred_zones, pred_front):
        del pred_front
        return {"pixel_accuracy": float(np.mean(pred_zones == image.zones))}

    entry = metrics.register_metric(metrics.Metric("pixel_accuracy", per_image))
    yield entry
    metrics.unregister_metric(entry.name)


def test_a_registered_metric_reaches_rows_flat_metrics_and_breakdowns(pixel_accuracy_metric):
    from ssl4sar_jax.constants import GLACIER, OCEAN
    from ssl4sar_jax.evaluation import evaluate_zone_predictions, metrics
    from ssl4sar_jax.evaluation.postprocess import front_from_zones

    assert "pixel_accuracy" in metrics.metric_names()
    records, predictions = [], []
    for i, (glacier, wrong_cols) in enumerate([("COL", 0), ("Mapple", 10), ("Mapple", 20)]):
        zones = np.full((40, 50), GLACIER, np.uint8)
        zones[:, 25:] = OCEAN
        pred = zones.copy()
        pred[:, 25 - wrong_cols : 25] = OCEAN  # wrong_cols columns of glacier called ocean
        records.append(
            {
                "zones": zones,
                "front": front_from_zones(zones).astype(np.uint8),
                "stem": f"{glacier}_2015-01-0{i + 1}_S1_20_1_00{i}",
            }
        )
        predictions.append(pred)
    result = evaluate_zone_predictions(predictions, records, verbose=False)
    expected = [1.0, 1 - 10 / 50, 1 - 20 / 50]
    assert [r["pixel_accuracy"] for r in result.per_image] == pytest.approx(expected)
    assert result.metrics["zones/pixel_accuracy"] == pytest.approx(np.mean(expected))
    by_glacier = result.breakdowns["glacier"]
    assert by_glacier["COL"]["zones/pixel_accuracy"] == pytest.approx(1.0)
    assert by_glacier["Mapple"]["zones/pixel_accuracy"] == pytest.approx(np.mean(expected[1:]))
    with pytest.raises(ValueError, match="already registered"):
        metrics.register_metric(pixel_accuracy_metric)
