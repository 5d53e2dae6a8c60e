"""Shapes, parameter counts, initialisation and input checks of ssl4sar_jax.models."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ssl4sar_jax.models import (
    ModelConfig,
    OptSimMIMModel,
    OptTranslatorModel,
    SSL4SARSegmenter,
    build_model,
    expand_sar_channels,
    patchify,
)
from ssl4sar_jax.models.swinv2 import (
    relative_coords_table,
    relative_position_index,
    shift_attention_mask,
)

TINY = ModelConfig.named("tiny")
# Two stages at 32x32 input: still shifted windows (stage 0) and the clamp (stage 1), but
# quicker to compile for the structural tests.
MICRO = ModelConfig(
    img_size=32,
    embed_dim=32,
    depths=(2, 2),
    num_heads=(2, 2),
    window_size=4,
    pretrained_window_sizes=(0, 0),
)


def _count(module: nnx.Module) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(module, nnx.Param))))


@pytest.fixture(scope="module")
def tiny_model() -> SSL4SARSegmenter:
    return SSL4SARSegmenter(TINY, rngs=nnx.Rngs(0))


@nnx.jit
def _forward(model, sar):
    return model(sar)


@nnx.jit
def _forward_masked(model, sar, token_mask):
    return model(sar, token_mask=token_mask)["skips"]


@nnx.jit
def _forward_dropout(model, sar, key):
    return model(sar, rngs=nnx.Rngs(dropout=key))["logits"]


def _sar(batch: int = 2, size: int = 64, seed: int = 0) -> jax.Array:
    return jnp.asarray(
        np.random.default_rng(seed).uniform(size=(batch, size, size, 1)), jnp.float32
    )


# ----------------------------------------------------------------------------- paper config
def test_paper_parameter_count_and_shapes():
    config = ModelConfig.named("paper")
    model = nnx.eval_shape(lambda: SSL4SARSegmenter(config, rngs=nnx.Rngs(0)))
    encoder, total = _count(model.encoder), _count(model)
    assert encoder == 27_576_618
    assert total - encoder == 22_456_996
    assert total == 50_033_614
    assert config.decoder_channels() == [768, 384, 192, 96, 96, 96]
    graphdef, state = nnx.split(model)

    def apply(state, sar):
        return nnx.merge(graphdef, state)(sar)

    out = jax.eval_shape(apply, state, jax.ShapeDtypeStruct((2, 512, 512, 1), jnp.float32))
    assert out["logits"].shape == (2, 512, 512, 4)
    assert out["features"].shape == (2, 512, 512, 96)
    assert [s.shape for s in out["skips"]] == [
        (2, 128, 128, 96),
        (2, 64, 64, 192),
        (2, 32, 32, 384),
        (2, 16, 16, 768),
    ]


def test_pretraining_parameter_counts():
    config = ModelConfig.named("paper")
    mim = nnx.eval_shape(lambda: OptSimMIMModel(config, rngs=nnx.Rngs(0)))
    tr = nnx.eval_shape(lambda: OptTranslatorModel(config, rngs=nnx.Rngs(0)))
    # Reference +27,011 includes the frozen 96-value mask token, a constant here.
    assert _count(mim) == 50_033_614 + 27_011 - 96
    assert _count(tr) == 50_033_614 + 1_358
    learnable = nnx.eval_shape(
        lambda: OptSimMIMModel(config.replace(learnable_mask_token=True), rngs=nnx.Rngs(0))
    )
    assert _count(learnable) == 50_033_614 + 27_011


def test_paper_attention_constants():
    table = relative_coords_table(16, 0)
    assert table.shape == (31, 31, 2)
    assert abs(float(np.abs(table).max()) - 1.0566) < 1e-4
    index = relative_position_index(16)
    assert index.shape == (256, 256) and index.min() == 0 and index.max() == 31 * 31 - 1
    assert index[0, 0] == 15 * 31 + 15  # zero offset in the table centre
    for res, n in ((128, 64), (64, 16), (32, 4)):
        mask = shift_attention_mask(res, 16, 8)
        assert mask.shape == (n, 256, 256)
        assert set(np.unique(mask)) == {0.0, -100.0}
        assert not mask[0].any()  # the top-left window holds a single region
    # Bottom-right window: 4 regions of 8x8 tokens; token 0 and token 255 differ.
    assert shift_attention_mask(32, 16, 8)[-1, 0, 255] == -100.0


# ----------------------------------------------------------------------------- tiny forward
def test_tiny_forward_shapes_and_finite(tiny_model):
    out = _forward(tiny_model, _sar())
    assert out["logits"].shape == (2, 64, 64, 4) and out["logits"].dtype == jnp.float32
    assert out["features"].shape == (2, 64, 64, 32)
    assert [s.shape for s in out["skips"]] == [
        (2, 16, 16, 32),
        (2, 8, 8, 64),
        (2, 4, 4, 128),
        (2, 2, 2, 256),
    ]
    assert bool(jnp.all(jnp.isfinite(out["logits"])))


def test_sar_replication():
    sar = _sar(1)
    three = np.asarray(expand_sar_channels(sar, TINY))
    assert three.shape == (1, 64, 64, 3)
    for c in range(3):
        np.testing.assert_array_equal(three[..., c], np.asarray(sar[..., 0]))
    # An input that already has in_chans channels passes through unchanged.
    assert expand_sar_channels(jnp.asarray(three), TINY) is not None


@pytest.mark.parametrize("shape", [(2, 64, 64, 2), (2, 32, 32, 1), (2, 64, 48, 1), (64, 64, 1)])
def test_bad_input_shape_raises(tiny_model, shape):
    with pytest.raises(ValueError, match=r"\[B, 64, 64, 1\]"):
        tiny_model(jnp.zeros(shape))


def test_bad_token_mask_raises(tiny_model):
    with pytest.raises(ValueError, match=r"token_mask must be \[B, 16, 16\]"):
        tiny_model(_sar(2), token_mask=jnp.zeros((2, 8, 8), bool))


def test_token_mask_replaces_tokens(tiny_model):
    sar = _sar(2)  # two different images
    everything = _forward_masked(tiny_model, sar, jnp.ones((2, 16, 16), bool))
    # With every token masked the encoder no longer sees the image.
    np.testing.assert_allclose(
        np.asarray(everything[0][0]), np.asarray(everything[0][1]), atol=1e-6
    )
    mask = np.zeros((2, 16, 16), bool)
    mask[:, 3:9, 2:7] = True
    partial = _forward_masked(tiny_model, sar, jnp.asarray(mask))
    unmasked = _forward(tiny_model, sar)["skips"]
    diff = np.abs(np.asarray(partial[0]) - np.asarray(unmasked[0])).max(axis=-1)
    assert diff[:, 3:9, 2:7].min() > 1e-3  # masked tokens changed
    assert float(np.abs(np.asarray(partial[0][0]) - np.asarray(partial[0][1])).max()) > 1e-2


def test_dropout_only_with_rngs(tiny_model):
    sar = _sar(2)
    a = _forward(tiny_model, sar)["logits"]
    b = _forward(tiny_model, sar)["logits"]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    c = _forward_dropout(tiny_model, sar, jax.random.key(0))
    d = _forward_dropout(tiny_model, sar, jax.random.key(1))
    assert float(jnp.max(jnp.abs(a - c))) > 1e-4
    assert float(jnp.max(jnp.abs(c - d))) > 1e-4


def test_bfloat16_compute_keeps_float32_params():
    config = MICRO.replace(dtype="bfloat16")
    model = SSL4SARSegmenter(config, rngs=nnx.Rngs(0))
    ref = SSL4SARSegmenter(MICRO, rngs=nnx.Rngs(0))
    dtypes = {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))}
    assert dtypes == {jnp.dtype(jnp.float32)}
    out = _forward(model, _sar(1, 32))
    assert out["features"].dtype == jnp.bfloat16 and out["logits"].dtype == jnp.float32
    ref_logits = _forward(ref, _sar(1, 32))["logits"]
    # Same weights (same seed), so bf16 must be close to float32, but not identical.
    err = float(jnp.max(jnp.abs(out["logits"] - ref_logits)))
    assert 0 < err < 0.1 * float(jnp.max(jnp.abs(ref_logits)))


# ----------------------------------------------------------------------------- init
def test_initialisation_follows_reference():
    model = SSL4SARSegmenter(
        ModelConfig.named("tiny", embed_dim=64, num_heads=(2, 4, 8, 8)), rngs=nnx.Rngs(1)
    )
    block = model.encoder.layers[0].blocks[0]
    np.testing.assert_allclose(np.asarray(block.attn.logit_scale[...]), math.log(10.0), rtol=1e-6)
    assert (
        not np.asarray(block.attn.q_bias[...]).any()
        and not np.asarray(block.attn.v_bias[...]).any()
    )
    np.testing.assert_array_equal(np.asarray(block.norm1.scale[...]), 1.0)
    # Linear: N(0, 0.02^2), zero bias.
    fc1 = np.asarray(model.encoder.layers[2].blocks[0].mlp.fc1.kernel[...])
    assert abs(fc1.std() - 0.02) < 0.001 and abs(fc1.mean()) < 0.001
    assert not np.asarray(model.encoder.layers[2].blocks[0].mlp.fc1.bias[...]).any()
    # Conv: PyTorch default U(+-1/sqrt(fan_in)) for kernel and bias.
    conv = model.decoder.blocks[1].block.conv1
    bound = 1.0 / math.sqrt(9 * conv.in_features)
    k = np.asarray(conv.kernel[...])
    assert np.abs(k).max() <= bound and np.abs(k).max() > 0.95 * bound
    assert abs(k.std() - bound / math.sqrt(3)) < 0.02 * bound
    b = np.asarray(conv.bias[...])
    assert np.abs(b).max() <= bound and b.std() > 0.3 * bound
    gn = model.decoder.blocks[0].block.norm1
    assert gn.num_groups == 32 and gn.epsilon == 1e-6
    assert block.norm1.epsilon == 1e-5


def test_res_post_norm_zero_init_option():
    model = SSL4SARSegmenter(TINY.replace(res_post_norm_zero_init=True), rngs=nnx.Rngs(0))
    for stage in model.encoder.layers:
        for block in stage.blocks:
            assert not np.asarray(block.norm1.scale[...]).any()
            assert not np.asarray(block.norm2.scale[...]).any()
    # Patch-embedding and merge norms are not res-post-norms.
    np.testing.assert_array_equal(np.asarray(model.encoder.patch_embed.norm.scale[...]), 1.0)


def test_init_is_deterministic_and_seed_dependent():
    a = nnx.state(SSL4SARSegmenter(TINY, rngs=nnx.Rngs(3)), nnx.Param)
    b = nnx.state(SSL4SARSegmenter(TINY, rngs=nnx.Rngs(3)), nnx.Param)
    c = nnx.state(SSL4SARSegmenter(TINY, rngs=nnx.Rngs(4)), nnx.Param)
    la, lb, lc = jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(c)
    assert all(np.array_equal(x, y) for x, y in zip(la, lb, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(la, lc, strict=True))


def test_init_under_jit_equals_eager_init():
    # jax.random draws the same bits eagerly and under jit, so a jitted (e.g. sharded)
    # initialisation gives the eager values: uniform inits exactly; normal inits to 2 ulp
    # (fused under jit, XLA may fold the 0.02 into the sqrt(2) * erfinv(u) of the normal).
    def params():
        return nnx.state(OptSimMIMModel(MICRO, rngs=nnx.Rngs(2)), nnx.Param)

    eager, jitted = jax.tree.leaves(params()), jax.tree.leaves(jax.jit(params)())
    assert len(eager) == len(jitted)
    for x, y in zip(eager, jitted, strict=True):
        np.testing.assert_array_max_ulp(np.asarray(x), np.asarray(y), maxulp=2)
    exact = [np.array_equal(x, y) for x, y in zip(eager, jitted, strict=True)]
    assert sum(exact) > len(exact) // 2  # convs, biases, norms: bit-identical


def test_config_validation_and_variants():
    assert ModelConfig.named("paper") == ModelConfig()
    assert ModelConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="unknown model variant"):
        ModelConfig.named("huge")
    with pytest.raises(ValueError, match="equal length"):
        ModelConfig(depths=(2, 2), num_heads=(3, 6, 12, 24))
    with pytest.raises(ValueError, match="divisible"):
        ModelConfig(img_size=500)
    with pytest.raises(ValueError, match="dtype"):
        ModelConfig(dtype="float8")
    with pytest.raises(ValueError, match="unknown objective"):
        build_model("tiny", objective="classify")


# ----------------------------------------------------------------------------- pretraining
def test_pretraining_models_shapes_and_shared_tree():
    mim = OptSimMIMModel(MICRO, rngs=nnx.Rngs(0))
    tr = OptTranslatorModel(MICRO, rngs=nnx.Rngs(0))
    seg = SSL4SARSegmenter(MICRO, rngs=nnx.Rngs(0))
    seg_paths = {p for p, _ in nnx.to_flat_state(nnx.state(seg, nnx.Param))}
    for model in (mim, tr):
        backbone = {p for p, _ in nnx.to_flat_state(nnx.state(model.backbone, nnx.Param))}
        assert backbone == seg_paths
    assert mim.mask_token is None  # TYRION's frozen zero token is a constant
    sar = _sar(2, 32)
    mask = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 8, 8)) < 0.3)
    pred = _mim(mim, sar, mask)
    assert pred.shape == (2, 64, 4 * 4 * 14) and pred.dtype == jnp.float32
    assert nnx.jit(lambda m, s: m(s))(tr, sar).shape == (2, 32, 32, 14)


@nnx.jit
def _mim(model, sar, mask):
    return model(sar, mask)


def test_learnable_mask_token_is_used():
    mim = OptSimMIMModel(MICRO.replace(learnable_mask_token=True), rngs=nnx.Rngs(0))
    sar = _sar(2, 32)
    mask = jnp.zeros((2, 8, 8), bool).at[:, :4, :4].set(True)
    a = _mim(mim, sar, mask)
    mim.mask_token.set_value(jnp.ones_like(mim.mask_token[...]))
    b = _mim(mim, sar, mask)
    assert float(jnp.max(jnp.abs(a - b))) > 1e-4


def test_patchify_layout():
    images = np.arange(2 * 8 * 8 * 3, dtype=np.float32).reshape(2, 8, 8, 3)
    tokens = np.asarray(patchify(jnp.asarray(images), 4))
    assert tokens.shape == (2, 4, 48)
    # Token 1 = row 0, column 1 of the 2x2 token grid; values ordered (py, px, channel).
    expected = images[1, 0:4, 4:8, :].reshape(-1)
    np.testing.assert_array_equal(tokens[1, 1], expected)
    with pytest.raises(ValueError, match="divisible"):
        patchify(jnp.zeros((1, 6, 8, 3)), 4)


def test_remat_gives_same_gradients():
    # Smallest valid network: 16x16 input, one block per stage.
    nano = MICRO.replace(img_size=16, depths=(1, 1), window_size=2, conv_impl="xla")
    sar = _sar(1, 16)
    models = [SSL4SARSegmenter(nano.replace(remat=r), rngs=nnx.Rngs(0)) for r in (False, True)]

    @nnx.jit
    def grads(model, sar):
        return nnx.grad(lambda m: jnp.mean(m(sar, rngs=nnx.Rngs(dropout=0))["logits"] ** 2))(model)

    g0, g1 = (jax.tree.leaves(grads(m, sar)) for m in models)
    for a, b in zip(g0, g1, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-4)


def test_forward_with_batch_sharded_over_explicit_mesh():
    # jax.make_mesh defaults to Explicit axes: every reshape in the model must keep the
    # batch sharding inferable. Compare 2-device data parallel against one device.
    mesh = jax.make_mesh((2,), ("data",), devices=jax.devices()[:2])
    model = OptSimMIMModel(MICRO, rngs=nnx.Rngs(0))
    sar = _sar(2, 32)
    mask = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 8, 8)) < 0.3)
    expected = _mim(model, sar, mask)
    with jax.set_mesh(mesh):
        sharded = NamedSharding(mesh, P("data"))
        got = _mim(model, jax.device_put(sar, sharded), jax.device_put(mask, sharded))
        assert got.sharding.spec[0] == "data"
        target = patchify(jax.device_put(jnp.ones((2, 32, 32, 14)), sharded), 4)
        assert target.shape == (2, 64, 224)
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=1e-5)


def test_gradients_are_finite_when_masked_tokens_are_exactly_zero():
    """OptSimMIM zeroes masked tokens; with q_bias = 0 and no k bias, q and k are then zero vectors.

    A plain ``jnp.linalg.norm`` has a NaN gradient there; the cosine attention must not.
    """
    from ssl4sar_jax.models import OptSimMIMModel

    config = ModelConfig.named("tiny")
    model = OptSimMIMModel(config, rngs=nnx.Rngs(0))
    tokens = config.img_size // config.patch_size
    sar = jnp.zeros((1, config.img_size, config.img_size, 1), jnp.float32)
    token_mask = jnp.ones((1, tokens, tokens), bool)

    def loss_fn(m):
        return jnp.mean(m(sar, token_mask) ** 2)

    grads = nnx.grad(loss_fn)(model)
    leaves = jax.tree.leaves(grads)
    assert leaves
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
