"""End to end through ``python -m ssl4sar_jax.predict``: two trained tiny runs, TTA, ensemble."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import rasterio
from train_helpers import load_config, micro_config

from ssl4sar_jax.data import synthetic_geo as sg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train_tiny_run(workdir, seed: int, data_dir: str) -> None:
    """A real fine-tuning run: the micro model trained 2 steps on synthetic CaFFe (seed ``seed``)."""
    from ssl4sar_jax import train_lib

    config = micro_config("finetune", "smoke", data_dir)
    config.total_steps = 2
    config.seed = seed
    train_lib.train_and_evaluate(config, str(workdir))


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "ssl4sar_jax.predict", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir, compilation_cache):
    root = tmp_path_factory.mktemp("cli")
    for seed in (0, 1):
        _train_tiny_run(root / f"ft{seed}", seed, data_dir)
    for i in range(2):
        sg.write_scene(root / "scenes", f"Synth{i}_2021-04-0{i + 1}_S1", shape=(70, 80), seed=i)
        for suffix in ("_zones.tif", "_front.geojson"):
            os.remove(root / "scenes" / f"Synth{i}_2021-04-0{i + 1}_S1{suffix}")
    return root


def test_cli_predicts_with_tta_ensemble_and_resumes(runs):
    args = [
        "scenes",
        "--config=configs/predict.py:demo",
        f"--config.inputs={runs / 'scenes'}",
        f"--config.output_dir={runs / 'out'}",
        f"--config.checkpoints={runs / 'ft0'},{runs / 'ft1'}",
        "--config.tta=True",
        # The model (32 px tiles) comes from the checkpoints' config.json, not config.model.
        "--config.centre_size=16",
        "--config.stride=16",
        "--config.batch_size=8",
        "--config.vector_formats=geojson,gpkg",
    ]
    first = _cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "tiles/s" in first.stderr and "ETA" in first.stderr
    summary = json.loads((runs / "out" / "summary.json").read_text())
    assert summary["num_failed"] == 0 and summary["num_scenes"] == 2
    for row in summary["scenes"]:
        assert row["status"] == "ok" and row["passes"] == 8  # 2 members x 4 rotations
        assert row["model"] == "ft0+ft1"
        name = row["scene"]
        folder = runs / "out" / name
        for suffix in (
            "_zones.tif",
            "_probability.tif",
            "_uncertainty.tif",
            "_front.geojson",
            "_front.gpkg",
            "_overlay.png",
            ".json",
        ):
            assert (folder / f"{name}{suffix}").is_file(), suffix
        with rasterio.open(folder / f"{name}_uncertainty.tif") as unc:
            std = unc.read(2, masked=True)
            assert std.max() > 0  # two different members disagree somewhere
    second = _cli(*args)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "skipping 2 scene(s) whose outputs exist" in second.stderr
    summary = json.loads((runs / "out" / "summary.json").read_text())
    assert [r["status"] for r in summary["scenes"]] == ["skipped", "skipped"]


def test_cli_usage_errors(runs):
    wrong = _cli("timeseries", "--config=configs/predict.py")
    assert wrong.returncode != 0 and "is for 'scenes', not 'timeseries'" in wrong.stderr


def test_empty_checkpoints_is_a_clear_error(runs):
    from ssl4sar_jax.predict import runner

    config = load_config("predict", "demo")
    config.checkpoints = ""
    with pytest.raises(ValueError, match="config.checkpoints is empty"):
        runner.load_predictors(config)
