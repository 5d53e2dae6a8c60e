"""Sharding presets train exactly like replication (4 simulated devices, micro model)."""

from __future__ import annotations

import numpy as np
import pytest
from train_helpers import micro_config

from ssl4sar_jax import checkpointing, metrics_lib, train_lib


def _losses(workdir):
    return [r["train/loss"] for r in metrics_lib.read_history(str(workdir)) if "train/loss" in r]


@pytest.fixture(scope="module")
def run(data_dir, compilation_cache, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("presets")

    def train(name, **overrides):
        config = micro_config("finetune", "smoke", data_dir, num_devices=4)
        config.total_steps = 3
        for key, value in overrides.items():
            config[key] = value
        workdir = root / name
        if not workdir.exists():
            train_lib.train_and_evaluate(config, str(workdir))
        return workdir

    return train


@pytest.mark.parametrize(
    "preset, mesh",
    [("fsdp", [("data", -1)]), ("fsdp_tensor", [("data", 2), ("model", 2)])],
)
def test_sharded_presets_match_replicated_training(preset, mesh, run):
    reference = run("replicated")
    sharded = run(preset, sharding=preset, mesh=mesh)
    ref_losses, losses = _losses(reference), _losses(sharded)
    assert len(losses) == 3
    np.testing.assert_allclose(losses, ref_losses, atol=1e-5, rtol=0)
    a = checkpointing.read_params(str(reference), which="latest")
    b = checkpointing.read_params(str(sharded), which="latest")
    for key in a:
        np.testing.assert_allclose(a[key], b[key], atol=1e-5, rtol=0, err_msg=key)
