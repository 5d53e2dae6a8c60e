"""The PyTorch twin used by ``benchmarks/model_speed.py --compare-torch`` computes our model.

If the twin computed something else, the speed ratios would compare different work.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from ssl4sar_jax.models import ModelConfig, SSL4SARSegmenter
from ssl4sar_jax.models.convert_torch import export_torch_state
from ssl4sar_jax.models.testing import randomize_params
from ssl4sar_jax.models.torch_reference import TorchSegmenter, torch_segmenter_from_jax

torch.set_num_threads(2)


def _models(config: ModelConfig, seed: int):
    model = SSL4SARSegmenter(config, rngs=nnx.Rngs(seed))
    randomize_params(model, seed)
    return model, torch_segmenter_from_jax(model).eval()


def test_torch_twin_logits_match_jax_model():
    config = ModelConfig.named("tiny", conv_impl="xla")
    model, twin = _models(config, 0)
    sar = np.random.default_rng(0).uniform(size=(2, 64, 64, 1)).astype(np.float32)
    ours = np.asarray(jax.jit(lambda s: model(s)["logits"])(jnp.asarray(sar)))
    with torch.no_grad():
        theirs = twin(torch.from_numpy(sar).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert ours.shape == theirs.shape == (2, 64, 64, config.num_classes)
    assert float(np.std(theirs)) > 0.1  # not a vacuous comparison
    np.testing.assert_allclose(ours, theirs, atol=2e-4, rtol=0)


def test_torch_twin_detects_a_wrong_weight():
    config = ModelConfig.named("tiny", conv_impl="xla")
    model, _ = _models(config, 1)
    state = export_torch_state(model, fmt="tyrion")
    key = "swin_unet.pred_target.3.block.conv1.weight"
    state[key] = state[key][:, ::-1].copy()  # permuted input channels
    twin = TorchSegmenter(config).eval()
    twin.load_exported(state)
    sar = np.random.default_rng(1).uniform(size=(1, 64, 64, 1)).astype(np.float32)
    ours = np.asarray(model(jnp.asarray(sar))["logits"])
    with torch.no_grad():
        theirs = twin(torch.from_numpy(sar).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    assert np.abs(ours - theirs).max() > 1e-2


def test_torch_twin_rejects_foreign_state():
    twin = TorchSegmenter(ModelConfig.named("tiny"))
    with pytest.raises(ValueError, match="not a segmenter"):
        twin.load_exported({"decoder.weight": np.zeros((1,), np.float32)})
    with pytest.raises(ValueError, match="do not fit"):
        twin.load_exported({})
