"""Parity of the NNX model against independent PyTorch implementations (CPU, float32).

* Encoder vs Hugging Face ``transformers.Swinv2Model`` with the same random weights
  (transferred through `export_torch_state` + the HF key mapping): every stage's pre-merge
  feature must agree to 1e-4 (max abs). HF returns the pre-merge features via
  ``output_hidden_states_before_downsampling``. Known HF differences that do not matter here:
  it adds the -100 shift mask twice (-200; both underflow to 0 after softmax) and keeps a
  final LayerNorm we do not use.
* Decoder blocks (ResnetBlock, Upsample) vs torch.nn GroupNorm/Conv2d/SiLU/interpolate.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from ssl4sar_jax.models import ModelConfig, SSL4SARSegmenter
from ssl4sar_jax.models.convert_torch import export_torch_state
from ssl4sar_jax.models.decoder import ResnetBlock, Upsample
from ssl4sar_jax.models.testing import microsoft_to_hf_swinv2, randomize_params
from ssl4sar_jax.models.torch_reference import hf_swinv2_config

torch.set_num_threads(2)
TOL = 1e-4


def _hf_model(config: ModelConfig, state: dict[str, np.ndarray]) -> transformers.Swinv2Model:
    hf_config = hf_swinv2_config(config)  # the same mapping as the PyTorch twin
    # The reference side keeps PyTorch's own LayerNorm eps and no dropout, whatever ours is.
    assert hf_config.layer_norm_eps == 1e-5 and hf_config.hidden_act == "gelu"
    assert hf_config.hidden_dropout_prob == hf_config.attention_probs_dropout_prob == 0.0
    assert hf_config.drop_path_rate == 0.0
    model = transformers.Swinv2Model(hf_config, add_pooling_layer=False).eval()
    tensors = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}
    result = model.load_state_dict(tensors, strict=False)
    # Only HF's final LayerNorm (unused here) and buffers may stay at their own values.
    assert set(result.missing_keys) <= {"layernorm.weight", "layernorm.bias"}, result.missing_keys
    assert not result.unexpected_keys, result.unexpected_keys
    return model


@nnx.jit
def _jit_encoder(model: SSL4SARSegmenter, images: jnp.ndarray) -> list:
    return model.encoder(images)


def _compare_encoder(config: ModelConfig, batch: int, seed: int) -> list[float]:
    model = SSL4SARSegmenter(config, rngs=nnx.Rngs(seed))
    randomize_params(model, seed)
    hf = _hf_model(config, microsoft_to_hf_swinv2(export_torch_state(model, fmt="microsoft")))
    images = np.random.default_rng(seed).uniform(size=(batch, config.img_size, config.img_size, 3))
    images = images.astype(np.float32)
    ours = _jit_encoder(model, jnp.asarray(images))
    with torch.no_grad():
        pixel = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        emb, dims = hf.embeddings(pixel)
        out = hf.encoder(
            emb,
            dims,
            output_hidden_states=True,
            output_hidden_states_before_downsampling=True,
        )
    theirs = out.reshaped_hidden_states[1:]  # [embeddings, stage 0 .. stage L-1], NCHW
    assert len(theirs) == config.num_stages
    diffs = []
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        b = b.permute(0, 2, 3, 1).numpy()
        assert a.shape == b.shape, (i, a.shape, b.shape)
        diffs.append(float(np.max(np.abs(np.asarray(a) - b))))
        # The features must be far from trivial for the comparison to mean something.
        assert float(np.std(b)) > 0.1
    return diffs


def test_reduced_config_exercises_shift_mask_and_clamp():
    config = ModelConfig.named("tiny")
    from ssl4sar_jax.models.swinv2 import effective_window_and_shift

    plan = [
        [
            effective_window_and_shift(config.stage_resolution(i), config.window_size, j)
            for j in range(config.depths[i])
        ]
        for i in range(config.num_stages)
    ]
    # Stages 0-1: several windows, the odd block shifted (mask used); stages 2-3: clamped.
    assert plan[0] == [(4, 0), (4, 2)] and plan[1] == [(4, 0), (4, 2)]
    assert plan[2] == [(4, 0), (4, 0)] and plan[3] == [(2, 0), (2, 0)]


def test_encoder_matches_hf_swinv2_reduced_config():
    config = ModelConfig.named("tiny")
    diffs = _compare_encoder(config, batch=2, seed=1)
    assert max(diffs) <= TOL, diffs


def test_encoder_matches_hf_swinv2_reduced_config_pretrained_window():
    # The other CPB normalisation (official SwinV2 fine-tuning recipe).
    config = ModelConfig.named("tiny", pretrained_window_sizes=(8, 8, 3, 3))
    diffs = _compare_encoder(config, batch=1, seed=2)
    assert max(diffs) <= TOL, diffs


def test_encoder_matches_hf_swinv2_paper_config_512():
    config = ModelConfig.named("paper")
    diffs = _compare_encoder(config, batch=1, seed=3)
    assert max(diffs) <= TOL, diffs


def test_parity_check_detects_wrong_merge_order():
    # Guard against a vacuous comparison: swapping two sub-grids of the merge must break parity.
    config = ModelConfig.named("tiny")
    model = SSL4SARSegmenter(config, rngs=nnx.Rngs(0))
    randomize_params(model, 0)
    state = export_torch_state(model, fmt="microsoft")
    w = state["layers.0.downsample.reduction.weight"]
    c = w.shape[1] // 4
    state["layers.0.downsample.reduction.weight"] = np.concatenate(
        [w[:, c : 2 * c], w[:, :c], w[:, 2 * c :]], axis=1
    )
    hf = _hf_model(config, microsoft_to_hf_swinv2(state))
    images = np.random.default_rng(0).uniform(size=(1, 64, 64, 3)).astype(np.float32)
    ours = _jit_encoder(model, jnp.asarray(images))
    with torch.no_grad():
        emb, dims = hf.embeddings(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous())
        out = hf.encoder(
            emb, dims, output_hidden_states=True, output_hidden_states_before_downsampling=True
        )
    stage1 = out.reshaped_hidden_states[2].permute(0, 2, 3, 1).numpy()
    assert float(np.max(np.abs(np.asarray(ours[1]) - stage1))) > 1e-2


# ----------------------------------------------------------------------------- decoder
def _torch_conv(kernel: np.ndarray, bias: np.ndarray, padding: int) -> torch.nn.Conv2d:
    kh, kw, cin, cout = kernel.shape
    conv = torch.nn.Conv2d(cin, cout, kh, padding=padding)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
        conv.bias.copy_(torch.from_numpy(np.array(bias)))
    return conv


def _torch_gn(norm: nnx.GroupNorm, channels: int) -> torch.nn.GroupNorm:
    gn = torch.nn.GroupNorm(32, channels, eps=1e-6)
    with torch.no_grad():
        gn.weight.copy_(torch.from_numpy(np.array(norm.scale[...])))
        gn.bias.copy_(torch.from_numpy(np.array(norm.bias[...])))
    return gn


@pytest.mark.parametrize("cin,cout", [(128, 64), (64, 64)])
def test_resnet_block_matches_torch(cin, cout):
    block = ResnetBlock(cin, cout, dropout=0.1, rngs=nnx.Rngs(0))
    randomize_params(block, 3)
    x = np.random.default_rng(0).standard_normal((2, 12, 12, cin)).astype(np.float32) * 2 + 0.5
    ours = np.asarray(block(jnp.asarray(x)))  # no rngs: dropout off, as torch eval()

    def p(mod):
        return np.asarray(mod.kernel[...]), np.asarray(mod.bias[...])

    gn1, gn2 = _torch_gn(block.norm1, cin), _torch_gn(block.norm2, cout)
    conv1, conv2 = _torch_conv(*p(block.conv1), 1), _torch_conv(*p(block.conv2), 1)
    with torch.no_grad():
        t = torch.from_numpy(x).permute(0, 3, 1, 2)
        h = conv1(torch.nn.functional.silu(gn1(t)))
        h = conv2(torch.nn.functional.silu(gn2(h)))
        short = _torch_conv(*p(block.nin_shortcut), 0)(t) if cin != cout else t
        ref = (short + h).permute(0, 2, 3, 1).numpy()
    assert (block.nin_shortcut is None) == (cin == cout)
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)


def test_resnet_block_dropout_only_with_rngs():
    block = ResnetBlock(64, 64, dropout=0.1, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 8, 8, 64)), jnp.float32)
    a, b = block(x), block(x)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    c = block(x, rngs=nnx.Rngs(dropout=1))
    assert float(jnp.max(jnp.abs(a - c))) > 1e-3


@pytest.mark.parametrize("subpixel", [False, True])
def test_upsample_matches_torch(subpixel):
    up = Upsample(32, subpixel=subpixel, rngs=nnx.Rngs(0))
    randomize_params(up, 1)
    x = np.random.default_rng(1).standard_normal((2, 7, 5, 32)).astype(np.float32)
    ours = np.asarray(up(jnp.asarray(x)))
    conv = _torch_conv(np.asarray(up.conv.kernel[...]), np.asarray(up.conv.bias[...]), 1)
    with torch.no_grad():
        t = torch.nn.functional.interpolate(
            torch.from_numpy(x).permute(0, 3, 1, 2), scale_factor=2, mode="nearest"
        )
        ref = conv(t).permute(0, 2, 3, 1).numpy()
    assert ours.shape == (2, 14, 10, 32)
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)
