"""Losses against independent torch computations and analytic values."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ssl4sar_jax import losses


def _torch_smooth_ce(logits_nchw, target, eps):
    """TYRION ClassWiseSmoothCE "normal" mode, written from the reference description in torch."""
    k = logits_nchw.shape[1]
    flat = logits_nchw.permute(0, 2, 3, 1).reshape(-1, k)
    onehot = torch.nn.functional.one_hot(target.reshape(-1), k).double()
    soft = onehot * (1 - eps) + (1 - onehot) * eps / (k - 1)
    return -(soft * torch.log_softmax(flat, dim=1)).sum(1).mean()


def _torch_dice(logits_nchw, target):
    """TransUNet DiceLoss (softmax, squared denominators, batch-level sums)."""
    k = logits_nchw.shape[1]
    probs = torch.softmax(logits_nchw, dim=1)
    onehot = torch.nn.functional.one_hot(target, k).permute(0, 3, 1, 2).double()
    loss = 0.0
    for c in range(k):
        s, t = probs[:, c], onehot[:, c]
        dice = (2 * (s * t).sum() + 1e-5) / ((s * s).sum() + (t * t).sum() + 1e-5)
        loss += 1 - dice
    return loss / k


@pytest.fixture()
def sample():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 16, 16, 4)).astype(np.float32) * 2
    labels = rng.integers(0, 4, size=(3, 16, 16))
    return logits, labels


def test_smooth_ce_matches_torch(sample):
    logits, labels = sample
    expected = _torch_smooth_ce(
        torch.from_numpy(logits).double().permute(0, 3, 1, 2), torch.from_numpy(labels), 0.1
    )
    got = losses.smooth_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), 0.1)
    np.testing.assert_allclose(float(got), float(expected), rtol=1e-5)


def test_smooth_ce_pytorch_mode_matches_torch_label_smoothing(sample):
    logits, labels = sample
    expected = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits).double().permute(0, 3, 1, 2),
        torch.from_numpy(labels),
        label_smoothing=0.1,
    )
    got = losses.smooth_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), 0.1, "pytorch")
    np.testing.assert_allclose(float(got), float(expected), rtol=1e-5)
    reference = losses.smooth_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), 0.1)
    assert abs(float(reference) - float(got)) > 1e-4  # the two conventions differ


def test_class_weighted_ce_matches_torch_weighted_cross_entropy(sample):
    logits, labels = sample
    weights = (0.5, 1.0, 2.0, 4.0)
    # PyTorch convention: loss_i scaled by w[y_i], mean over the weights.
    expected = torch.nn.functional.cross_entropy(
        torch.from_numpy(logits).double().permute(0, 3, 1, 2),
        torch.from_numpy(labels),
        weight=torch.tensor(weights, dtype=torch.float64),
        label_smoothing=0.0,
    )
    got = losses.smooth_cross_entropy(
        jnp.asarray(logits), jnp.asarray(labels), 0.0, class_weights=weights
    )
    np.testing.assert_allclose(float(got), float(expected), rtol=1e-5)
    # Smoothed: per-pixel smoothed CE of the reference, weighted by its label's weight.
    t_logits = torch.from_numpy(logits).double()
    k = 4
    onehot = torch.nn.functional.one_hot(torch.from_numpy(labels), k).double()
    soft = onehot * 0.9 + (1 - onehot) * 0.1 / (k - 1)
    per_pixel = -(soft * torch.log_softmax(t_logits, dim=-1)).sum(-1)
    w = torch.tensor(weights, dtype=torch.float64)[torch.from_numpy(labels)]
    smoothed = losses.smooth_cross_entropy(
        jnp.asarray(logits), jnp.asarray(labels), 0.1, class_weights=weights
    )
    np.testing.assert_allclose(float(smoothed), float((w * per_pixel).sum() / w.sum()), rtol=1e-5)
    # All-equal weights are the unweighted (reference) loss, whatever their scale.
    plain = losses.smooth_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), 0.1)
    equal = losses.smooth_cross_entropy(
        jnp.asarray(logits), jnp.asarray(labels), 0.1, class_weights=(3.0,) * 4
    )
    np.testing.assert_allclose(float(equal), float(plain), rtol=1e-6)
    assert abs(float(smoothed) - float(plain)) > 1e-3
    with pytest.raises(ValueError, match="3 entries"):
        losses.smooth_cross_entropy(
            jnp.asarray(logits), jnp.asarray(labels), class_weights=(1, 1, 1)
        )


def test_class_balance_weights_from_label_frequencies():
    # Pixel frequencies 0.5 / 0.25 / 0.25 / 0: inverse sqrt 1.414 / 2 / 2, absent class 0.
    zones = [np.array([[0, 0], [1, 2]]), np.array([[0, 0], [1, 2]])]
    weights = losses.class_balance_weights(zones, power=0.5)
    expected = np.array([2**0.5, 2.0, 2.0])
    np.testing.assert_allclose(weights[:3], expected / expected.mean(), atol=1e-4)
    assert weights[3] == 0.0
    inverse = losses.class_balance_weights(zones, power=1.0)
    np.testing.assert_allclose(inverse[:3], np.array([2.0, 4.0, 4.0]) / (10 / 3), atol=1e-4)
    assert losses.class_balance_weights(zones, power=0.0)[:3] == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="no pixel"):
        losses.class_balance_weights([np.zeros((0, 0), int)])


def test_finetune_loss_class_weights_reach_both_ce_terms_only(sample):
    logits, labels = sample
    weights = (1.0, 1.0, 1.0, 3.0)
    _, plain = losses.finetune_loss(jnp.asarray(logits), jnp.asarray(labels), centre_size=8)
    _, weighted = losses.finetune_loss(
        jnp.asarray(logits), jnp.asarray(labels), centre_size=8, class_weights=weights
    )
    for name in ("ce_img", "ce_context"):
        assert abs(float(weighted[name]) - float(plain[name])) > 1e-4
    for name in ("dice_img", "dice_context"):
        np.testing.assert_allclose(float(weighted[name]), float(plain[name]))


def test_smooth_ce_analytic_uniform_logits():
    # Uniform logits: log p = -log K for every class, so the loss is log K whatever eps.
    logits = jnp.zeros((1, 2, 2, 4))
    labels = jnp.zeros((1, 2, 2), jnp.int32)
    np.testing.assert_allclose(float(losses.smooth_cross_entropy(logits, labels)), np.log(4.0))


def test_dice_matches_torch(sample):
    logits, labels = sample
    expected = _torch_dice(
        torch.from_numpy(logits).double().permute(0, 3, 1, 2), torch.from_numpy(labels)
    )
    got = losses.soft_dice_loss(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(float(got), float(expected), rtol=1e-5)


def test_dice_groups_average_per_group_losses(sample):
    logits, labels = sample
    logits = np.concatenate([logits, logits[:1]])  # batch 4 -> 2 groups of 2
    labels = np.concatenate([labels, labels[:1]])
    grouped = losses.soft_dice_loss(jnp.asarray(logits), jnp.asarray(labels), group_size=2)
    first = losses.soft_dice_loss(jnp.asarray(logits[:2]), jnp.asarray(labels[:2]))
    second = losses.soft_dice_loss(jnp.asarray(logits[2:]), jnp.asarray(labels[2:]))
    np.testing.assert_allclose(float(grouped), (float(first) + float(second)) / 2, rtol=1e-6)
    with pytest.raises(ValueError, match="divisible"):
        losses.soft_dice_loss(jnp.asarray(logits), jnp.asarray(labels), group_size=3)


def test_dice_perfect_prediction_is_near_zero_absent_class_costs_one():
    labels = jnp.array([[[0, 1], [2, 2]]])
    perfect = 100.0 * jnp.eye(4)[labels]
    loss = losses.soft_dice_loss(perfect, labels)
    # Classes 0..2 present and predicted -> dice 1; class 3 absent and not predicted -> (0+s)/(0+s)=1.
    np.testing.assert_allclose(float(loss), 0.0, atol=1e-5)


def test_finetune_loss_combines_centre_and_context(sample):
    logits, labels = sample
    loss, terms = losses.finetune_loss(jnp.asarray(logits), jnp.asarray(labels), centre_size=8)
    t_logits = torch.from_numpy(logits).double().permute(0, 3, 1, 2)
    t_labels = torch.from_numpy(labels)
    c_logits, c_labels = t_logits[:, :, 4:12, 4:12], t_labels[:, 4:12, 4:12]
    expected = 0.5 * (
        _torch_smooth_ce(c_logits, c_labels, 0.1)
        + _torch_smooth_ce(t_logits, t_labels, 0.1)
        + _torch_dice(c_logits, c_labels)
        + _torch_dice(t_logits, t_labels)
    )
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
    np.testing.assert_allclose(float(terms["loss"]), float(loss))
    assert set(terms) == {"loss", "ce_img", "ce_context", "dice_img", "dice_context"}


def test_finetune_loss_rejects_shape_mismatch(sample):
    logits, labels = sample
    with pytest.raises(ValueError, match="disagree"):
        losses.finetune_loss(jnp.asarray(logits), jnp.asarray(labels[:, :8]), centre_size=8)


def test_patchify_matches_lightly_einsum():
    rng = np.random.default_rng(1)
    images = rng.normal(size=(2, 8, 12, 3)).astype(np.float32)
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2)
    n, c, h, w = nchw.shape
    p = 4
    x = nchw.reshape(n, c, h // p, p, w // p, p)
    expected = torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // p) * (w // p), p * p * c)
    np.testing.assert_array_equal(np.asarray(losses.patchify(jnp.asarray(images), p)), expected)


def test_masked_l1_counts_only_masked_tokens():
    predictions = jnp.zeros((1, 3, 2))
    targets = jnp.array([[[1.0, 1.0], [2.0, 4.0], [10.0, 10.0]]])
    mask = jnp.array([[False, True, False]])
    np.testing.assert_allclose(float(losses.masked_l1_loss(predictions, targets, mask)), 3.0)
    mask2 = jnp.array([[True, True, False]])
    np.testing.assert_allclose(float(losses.masked_l1_loss(predictions, targets, mask2)), 2.0)


def test_dense_l1_matches_torch():
    rng = np.random.default_rng(2)
    a, b = rng.random((2, 4, 4, 14)), rng.random((2, 4, 4, 14))
    expected = torch.nn.functional.l1_loss(torch.from_numpy(a), torch.from_numpy(b))
    got = losses.dense_l1_loss(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    np.testing.assert_allclose(float(got), float(expected), rtol=1e-5)
