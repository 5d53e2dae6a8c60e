"""PyTorch checkpoint import/export with the real key names (Microsoft SwinV2 and TYRION)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from ssl4sar_jax.models import ModelConfig, OptSimMIMModel, OptTranslatorModel, SSL4SARSegmenter
from ssl4sar_jax.models.convert_torch import (
    export_torch_state,
    load_params_npz,
    load_torch_state,
    main,
    model_torch_keys,
    read_torch_checkpoint,
    save_params_npz,
)
from ssl4sar_jax.models.testing import randomize_params

TINY = ModelConfig.named("tiny")


def _params(model: nnx.Module) -> dict[tuple, np.ndarray]:
    return {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _random_model(cls=SSL4SARSegmenter, seed: int = 0, config: ModelConfig = TINY):
    model = cls(config, rngs=nnx.Rngs(seed))
    randomize_params(model, seed)
    return model


def _expected_microsoft_keys(config: ModelConfig) -> set[str]:
    """Encoder parameter keys of Microsoft's SwinTransformerV2, written out independently."""
    keys = {f"patch_embed.{m}.{p}" for m in ("proj", "norm") for p in ("weight", "bias")}
    for i, depth in enumerate(config.depths):
        for j in range(depth):
            b = f"layers.{i}.blocks.{j}."
            keys |= {
                b + "attn.logit_scale",
                b + "attn.q_bias",
                b + "attn.v_bias",
                b + "attn.cpb_mlp.0.weight",
                b + "attn.cpb_mlp.0.bias",
                b + "attn.cpb_mlp.2.weight",
                b + "attn.qkv.weight",
                b + "attn.proj.weight",
                b + "attn.proj.bias",
            }
            keys |= {
                b + f"{m}.{p}"
                for m in ("norm1", "norm2", "mlp.fc1", "mlp.fc2")
                for p in ("weight", "bias")
            }
        if i < config.num_stages - 1:
            keys |= {
                f"layers.{i}.downsample.reduction.weight",
                f"layers.{i}.downsample.norm.weight",
                f"layers.{i}.downsample.norm.bias",
            }
    return keys


def test_paper_key_names_match_reference():
    config = ModelConfig.named("paper")
    model = nnx.eval_shape(lambda: SSL4SARSegmenter(config, rngs=nnx.Rngs(0)))
    keys = set(model_torch_keys(model).values())
    encoder = {k[len("swin_unet.") :] for k in keys if not k.startswith("swin_unet.pred_target")}
    assert encoder == _expected_microsoft_keys(config)
    decoder = {k for k in keys if k.startswith("swin_unet.pred_target")}
    expected = set()
    for k in range(6):
        blk = f"swin_unet.pred_target.{k}.block."
        expected |= {
            blk + f"{m}.{p}"
            for m in ("norm1", "conv1", "norm2", "conv2")
            for p in ("weight", "bias")
        }
        if k in (1, 2, 3, 4):  # in != out: 1536->384, 768->192, 384->96, 192->96
            expected |= {blk + "nin_shortcut.weight", blk + "nin_shortcut.bias"}
        if k > 0:
            expected |= {
                f"swin_unet.pred_target.{k}.up.conv.weight",
                f"swin_unet.pred_target.{k}.up.conv.bias",
            }
    expected |= {"swin_unet.pred_target.6.weight", "swin_unet.pred_target.6.bias"}
    assert decoder == expected


def test_microsoft_round_trip_into_encoder():
    source = _random_model(seed=1)
    state = export_torch_state(source, fmt="microsoft")
    assert state["layers.0.blocks.0.attn.qkv.weight"].shape == (96, 32)  # (3C, C)
    assert state["layers.0.blocks.0.attn.logit_scale"].shape == (2, 1, 1)
    assert state["layers.0.blocks.0.attn.cpb_mlp.0.weight"].shape == (512, 2)
    assert state["layers.0.downsample.reduction.weight"].shape == (64, 128)  # (2C, 4C)
    assert state["patch_embed.proj.weight"].shape == (32, 3, 4, 4)
    assert not any(k.startswith("pred_target") for k in state)
    # What the real file also contains: classifier, buffers (some with other shapes).
    state = dict(state)
    state["norm.weight"] = np.ones(256, np.float32)
    state["head.weight"] = np.zeros((1000, 256), np.float32)
    state["head.bias"] = np.zeros(1000, np.float32)
    state["layers.0.blocks.1.attn_mask"] = np.zeros((4, 16, 16), np.float32)
    state["layers.3.blocks.0.attn.relative_coords_table"] = np.zeros((1, 3, 3, 2), np.float32)
    state["layers.3.blocks.0.attn.relative_position_index"] = np.zeros((4, 4), np.int64)

    target = SSL4SARSegmenter(TINY, rngs=nnx.Rngs(5))
    before = _params(target)
    report = load_torch_state(target, state, fmt="microsoft")
    after, src = _params(target), _params(source)
    for path, value in after.items():
        expected = src[path] if path[0] == "encoder" else before[path]
        np.testing.assert_array_equal(value, expected, err_msg=str(path))
    n_encoder = sum(1 for p in after if p[0] == "encoder")
    assert len(report.loaded) == n_encoder
    assert report.num_loaded_values == sum(v.size for p, v in after.items() if p[0] == "encoder")
    skipped = dict(report.skipped)
    assert {
        "norm.weight",
        "head.weight",
        "head.bias",
        "layers.0.blocks.1.attn_mask",
        "layers.3.blocks.0.attn.relative_coords_table",
    } <= set(skipped)
    assert not report.missing and not report.mismatched and not report.unexpected
    assert report.left_out and all(p.startswith(("decoder/", "head/")) for p in report.left_out)
    assert "skipped" in report.summary()


def test_tyrion_round_trip_with_dead_weights():
    source = _random_model(seed=2)
    state = dict(export_torch_state(source, fmt="tyrion"))
    assert "swin_unet.pred_target.1.block.nin_shortcut.weight" in state
    assert "swin_unet.pred_target.1.up.conv.weight" in state
    assert state["swin_unet.pred_target.6.weight"].shape == (4, 32, 1, 1)
    state["swin_unet.pred_target.0.block.temb_proj.weight"] = np.zeros((256, 512), np.float32)
    state["swin_unet.pred_target.0.block.temb_proj.bias"] = np.zeros(256, np.float32)
    state["swin_unet.outputt.weight"] = np.zeros((4, 32, 1, 1), np.float32)
    state["swin_unet.layers.0.blocks.0.attn.relative_position_index"] = np.zeros((16, 16))
    state["swin_unet.layers.0.blocks.1.attn_mask"] = np.zeros((16, 16, 16))
    target = SSL4SARSegmenter(TINY, rngs=nnx.Rngs(7))
    report = load_torch_state(target, state, fmt="tyrion")
    for (path, a), b in zip(_params(target).items(), _params(source).values(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=str(path))
    reasons = dict(report.skipped)
    assert "dead" in reasons["swin_unet.pred_target.0.block.temb_proj.weight"]
    assert "dead" in reasons["swin_unet.outputt.weight"]
    assert "buffer" in reasons["swin_unet.layers.0.blocks.1.attn_mask"]
    assert not report.unexpected and not report.missing and not report.left_out
    # Layout check against torch: the exported head and a 3x3 decoder conv act like torch convs.
    x = np.random.default_rng(0).standard_normal((1, 6, 6, 32)).astype(np.float32)
    for key, module, pad in (
        ("swin_unet.pred_target.6", source.head, 0),
        ("swin_unet.pred_target.5.block.conv1", source.decoder.blocks[5].block.conv1, 1),
    ):
        conv = torch.nn.functional.conv2d(
            torch.from_numpy(x).permute(0, 3, 1, 2),
            torch.from_numpy(state[key + ".weight"].copy()),
            torch.from_numpy(state[key + ".bias"].copy()),
            padding=pad,
        ).permute(0, 2, 3, 1)
        np.testing.assert_allclose(np.asarray(module(jnp.asarray(x))), conv.numpy(), atol=1e-5)


def test_pretraining_checkpoints_transfer_to_segmenter():
    mim = _random_model(OptSimMIMModel, seed=3)
    state = dict(export_torch_state(mim, fmt="tyrion"))
    assert state["decoder.weight"].shape == (224, 32)  # Linear 32 -> 4*4*14
    assert state["last_model_decoder_layer.weight"].shape == (3, 32, 1, 1)
    assert state["patch_embed_after_decoder.proj.weight"].shape == (32, 3, 4, 4)
    assert "patch_embed_after_decoder.norm.weight" in state
    state["mask_token"] = np.zeros((1, 1, 32), np.float32)  # TYRION's frozen zero token

    again = OptSimMIMModel(TINY, rngs=nnx.Rngs(9))
    report = load_torch_state(again, state, fmt="tyrion")
    assert ("mask_token" in dict(report.skipped)) and not report.missing
    for (path, a), b in zip(_params(again).items(), _params(mim).values(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=str(path))

    learnable = OptSimMIMModel(TINY.replace(learnable_mask_token=True), rngs=nnx.Rngs(9))
    state["mask_token"] = np.full((1, 1, 32), 0.5, np.float32)
    load_torch_state(learnable, state, fmt="tyrion")
    np.testing.assert_array_equal(np.asarray(learnable.mask_token[...]), 0.5)

    # Fine-tuning start: the whole swin_unet transfers, pretraining heads are ignored.
    seg = SSL4SARSegmenter(TINY, rngs=nnx.Rngs(11))
    report = load_torch_state(seg, state, fmt="tyrion")
    assert set(report.unexpected) == {k for k in state if not k.startswith("swin_unet.")} - {
        "mask_token"
    }
    for (path, a), b in zip(_params(seg).items(), _params(mim.backbone).values(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=str(path))

    translator = _random_model(OptTranslatorModel, seed=4)
    tstate = export_torch_state(translator, fmt="tyrion")
    assert tstate["last_model_decoder_layer.weight"].shape == (14, 32, 1, 1)
    fresh = OptTranslatorModel(TINY, rngs=nnx.Rngs(0))
    load_torch_state(fresh, tstate, fmt="tyrion")
    np.testing.assert_array_equal(
        np.asarray(fresh.translate.kernel[...]), np.asarray(translator.translate.kernel[...])
    )


def test_missing_and_misshaped_keys_fail_with_full_list():
    source = _random_model(seed=5)
    state = dict(export_torch_state(source, fmt="tyrion"))
    del state["swin_unet.layers.1.blocks.0.attn.q_bias"]
    del state["swin_unet.pred_target.2.up.conv.bias"]
    state["swin_unet.layers.0.blocks.0.mlp.fc1.weight"] = np.zeros((5, 5), np.float32)
    target = SSL4SARSegmenter(TINY, rngs=nnx.Rngs(0))
    before = _params(target)
    with pytest.raises(ValueError) as err:
        load_torch_state(target, state, fmt="tyrion")
    message = str(err.value)
    for key in (
        "swin_unet.layers.1.blocks.0.attn.q_bias",
        "swin_unet.pred_target.2.up.conv.bias",
        "swin_unet.layers.0.blocks.0.mlp.fc1.weight",
    ):
        assert key in message
    assert "(5, 5)" in message and "partial=True" in message
    for path, value in _params(target).items():  # nothing was modified
        np.testing.assert_array_equal(value, before[path])

    report = load_torch_state(target, state, fmt="tyrion", partial=True)
    assert len(report.missing) == 2 and len(report.mismatched) == 1
    after = _params(target)
    q_bias = ("encoder", "layers", 1, "blocks", 0, "attn", "q_bias")
    np.testing.assert_array_equal(after[q_bias], before[q_bias])  # kept
    proj = ("encoder", "layers", 1, "blocks", 0, "attn", "proj", "kernel")
    np.testing.assert_array_equal(after[proj], _params(source)[proj])  # loaded
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        load_torch_state(target, state, fmt="timm")


def test_files_and_command_line_round_trip(tmp_path):
    source = _random_model(seed=6)
    state = export_torch_state(source, fmt="tyrion")
    ckpt = tmp_path / "run.ckpt"
    # A Lightning-style checkpoint: state_dict plus training metadata.
    torch.save(
        {
            "state_dict": {k: torch.from_numpy(v.copy()) for k, v in state.items()},
            "epoch": 3,
            "global_step": 120,
        },
        ckpt,
    )
    read = read_torch_checkpoint(str(ckpt))
    assert set(read) == set(state)
    npz = tmp_path / "params.npz"
    assert (
        main(
            [
                "import",
                "--format",
                "tyrion",
                "--variant",
                "tiny",
                "--input",
                str(ckpt),
                "--output",
                str(npz),
                "--report",
                str(tmp_path / "report.json"),
            ]
        )
        == 0
    )
    target = SSL4SARSegmenter(TINY, rngs=nnx.Rngs(1))
    report = load_params_npz(target, str(npz))
    assert not report.missing and not report.unexpected
    for (path, a), b in zip(_params(target).items(), _params(source).values(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=str(path))
    assert (tmp_path / "report.json").exists()

    pth = tmp_path / "exported.pth"
    assert (
        main(
            [
                "export",
                "--format",
                "tyrion",
                "--variant",
                "tiny",
                "--input",
                str(npz),
                "--output",
                str(pth),
            ]
        )
        == 0
    )
    back = read_torch_checkpoint(str(pth))
    assert set(back) == set(state)
    for key, value in state.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)

    # A segmenter .npz loads into a pretraining model's backbone.
    mim = OptSimMIMModel(TINY, rngs=nnx.Rngs(0))
    report = load_params_npz(mim, str(npz), partial=True)
    assert report.missing and all(not k.startswith("backbone/") for k in report.missing)
    np.testing.assert_array_equal(
        np.asarray(mim.backbone.head.kernel[...]), np.asarray(source.head.kernel[...])
    )
    with pytest.raises(ValueError, match="does not exist"):
        read_torch_checkpoint(str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="do not fit"):
        load_params_npz(mim, str(npz))


def test_save_params_npz_is_atomic_and_complete(tmp_path):
    model = _random_model(seed=8)
    path = tmp_path / "sub" / "p.npz"
    save_params_npz(model, str(path))
    assert path.exists() and not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]
    other = SSL4SARSegmenter(TINY, rngs=nnx.Rngs(3))
    load_params_npz(other, str(path))
    leaves = zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(other)), strict=True)
    assert all(np.array_equal(a, b) for a, b in leaves)


def test_partial_import_that_matches_nothing_is_an_error(tmp_path, capsys):
    """Before: ``import --partial`` with zero matching keys exited 0 and wrote a random init."""
    state = {"model.fc.weight": np.zeros((3, 3), np.float32), "other.bias": np.zeros(3, np.float32)}
    target = SSL4SARSegmenter(TINY, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"no parameter of the checkpoint \(tyrion\).*0 of"):
        load_torch_state(target, state, fmt="tyrion", partial=True)
    ckpt = tmp_path / "unrelated.pth"
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, ckpt)
    out = tmp_path / "params.npz"
    args = ["import", "--partial", "--variant", "tiny", "--input", str(ckpt), "--output", str(out)]
    assert main(args) == 1
    assert "0 of" in capsys.readouterr().err and not out.exists()
    with pytest.raises(ValueError, match="no parameter of the parameter file"):
        from ssl4sar_jax.models.convert_torch import load_flat_dict

        load_flat_dict(target, {"x/y": np.zeros(2)}, partial=True)
