"""Training losses of SSL4SAR (fine-tuning and both self-supervised objectives).

Definitions follow Nora-Go/TYRION (fine-tuning: ``TyrionWrapper.calculate_loss`` and
``model/loss/ImprovedLosses.py``; pretraining: ``model/pretraining/OptSimMIM.py`` and
``OptTranslator.py``):

* Fine-tuning: ``0.5·CE(centre) + 0.5·CE(context) + 0.5·Dice(centre) + 0.5·Dice(context)`` where
  the centre is the central crop of the context logits (so centre pixels count twice, as in the
  reference). CE is TYRION's ``ClassWiseSmoothCE`` in "normal" mode (label smoothing that puts
  ``eps/(K-1)`` on every wrong class; PyTorch's ``eps/K`` convention is an option), Dice is the
  TransUNet soft Dice with squared denominators whose sums run over the whole (micro-)batch.
* OptSimMIM: L1 between predicted and optical 4×4×14 patches over the masked tokens only, with
  the optical target laid out like lightly's ``patchify`` (row-major tokens; per token
  ``(py, px, channel)``, channel fastest).
* OptTranslator: dense L1 over all pixels and bands.

All functions are pure ``jax.numpy`` code (jit/grad friendly); losses are computed in float32
whatever the compute dtype of the logits.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

# The OptSimMIM target layout is defined once, next to the head whose output it matches.
from ssl4sar_jax.array_utils import centre_crop
from ssl4sar_jax.models.pretrain_heads import patchify  # noqa: F401  (re-exported)

DICE_SMOOTH = 1e-5


def smooth_cross_entropy(
    logits: jax.Array,
    labels: jax.Array,
    eps: float = 0.1,
    off_class_mode: str = "reference",
    class_weights: tuple[float, ...] | None = None,
) -> jax.Array:
    """Label-smoothed cross-entropy averaged over every pixel (TYRION ``ClassWiseSmoothCE``).

    Args:
        logits: ``[..., K]`` unnormalised scores.
        labels: ``[...]`` integer class ids in ``0..K-1``.
        eps: Smoothing mass taken from the true class.
        off_class_mode: ``"reference"`` puts ``eps/(K-1)`` on each wrong class (TYRION, the true
            class keeps ``1-eps``); ``"pytorch"`` uses ``torch.nn.CrossEntropyLoss``'s
            ``label_smoothing`` convention (``eps/K`` everywhere plus ``1-eps`` on the true class).
        class_weights: Optional ``K`` weights, one per *true* class: each pixel's loss is scaled by
            the weight of its label and the mean is taken over those weights (the convention of
            ``torch.nn.CrossEntropyLoss(weight=...)``), so the loss keeps its scale. ``None`` (the
            reference) is the plain mean, identical to all-ones weights.

    Returns:
        Scalar float32 mean loss.
    """
    num_classes = logits.shape[-1]
    if class_weights is not None and len(class_weights) != num_classes:
        raise ValueError(
            f"class_weights has {len(class_weights)} entries, the logits have {num_classes} classes"
        )
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if off_class_mode == "reference":
        target = one_hot * (1.0 - eps) + (1.0 - one_hot) * (eps / (num_classes - 1))
    elif off_class_mode == "pytorch":
        target = one_hot * (1.0 - eps) + eps / num_classes
    else:
        raise ValueError(f"off_class_mode must be 'reference' or 'pytorch', got {off_class_mode!r}")
    per_pixel = -jnp.sum(target * log_probs, axis=-1)
    if class_weights is None:
        return jnp.mean(per_pixel)
    pixel_weights = jnp.asarray(class_weights, jnp.float32)[labels]
    return jnp.sum(pixel_weights * per_pixel) / jnp.maximum(jnp.sum(pixel_weights), 1e-12)


def class_balance_weights(
    zone_maps: Iterable[np.ndarray], num_classes: int = 4, power: float = 0.5
) -> tuple[float, ...]:
    """Per-class cross-entropy weights ``f_c ** -power`` from the classes' pixel frequencies.

    ``power=1`` is inverse-frequency balancing, ``0.5`` (the default) its square root, which
    up-weights rare classes less aggressively. The weights are scaled to mean 1 (their scale
    does not change :func:`smooth_cross_entropy`, which divides by the pixels' total weight); a
    class with no pixel gets weight 0 (no pixel carries it, so its weight is never used).

    Args:
        zone_maps: ``[H, W]`` integer class-id maps (any sizes), e.g. the training labels.
        num_classes: ``K``.
        power: Exponent of the inverse frequency.

    Returns:
        ``K`` weights, for ``config.loss.class_weights``.
    """
    counts = np.zeros(num_classes, np.float64)
    for zones in zone_maps:
        counts += np.bincount(np.asarray(zones).ravel(), minlength=num_classes)[:num_classes]
    if counts.sum() == 0:
        raise ValueError("class_balance_weights: the zone maps hold no pixel")
    freq = counts / counts.sum()
    weights = np.where(freq > 0, np.power(np.maximum(freq, 1e-12), -power), 0.0)
    weights = weights / weights[freq > 0].mean()
    return tuple(round(float(w), 4) for w in weights)


def soft_dice_loss(
    logits: jax.Array, labels: jax.Array, smooth: float = DICE_SMOOTH, group_size: int = 0
) -> jax.Array:
    """TransUNet soft Dice loss (TYRION ``OGDiceLoss``), sums over the whole batch.

    For each class ``c``: ``dice_c = (2 Σ p_c y_c + s) / (Σ p_c² + Σ y_c² + s)`` with ``p`` the
    softmax and ``y`` the one-hot target, sums over every image and pixel of the batch; the
    loss is ``mean_c (1 - dice_c)``.

    Args:
        logits: ``[B, H, W, K]``.
        labels: ``[B, H, W]`` integer class ids.
        smooth: The ``1e-5`` of the reference.
        group_size: If > 0, the batch is split into consecutive groups of this many images, Dice
            is computed per group and averaged — what data-parallel PyTorch does (Dice per GPU
            micro-batch, gradients averaged over ranks). 0 = one group (the whole batch).

    Returns:
        Scalar float32 loss.
    """
    num_classes = logits.shape[-1]
    batch = logits.shape[0]
    group = batch if group_size <= 0 else group_size
    if batch % group:
        raise ValueError(f"batch {batch} is not divisible by the Dice group size {group}")
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    one_hot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    probs = probs.reshape(batch // group, -1, num_classes)
    one_hot = one_hot.reshape(batch // group, -1, num_classes)
    intersection = jnp.sum(probs * one_hot, axis=1)
    denominator = jnp.sum(probs * probs, axis=1) + jnp.sum(one_hot * one_hot, axis=1)
    dice = (2.0 * intersection + smooth) / (denominator + smooth)
    return jnp.mean(1.0 - dice)


def finetune_loss(
    logits: jax.Array,
    zones: jax.Array,
    *,
    centre_size: int,
    ce_weights: tuple[float, float] = (0.5, 0.5),
    dice_weights: tuple[float, float] = (0.5, 0.5),
    label_smoothing: float = 0.1,
    smoothing_mode: str = "reference",
    dice_group_size: int = 0,
    class_weights: tuple[float, ...] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Context/centre fine-tuning loss of TYRION (``TyrionWrapper.calculate_loss``).

    Args:
        logits: ``[B, H, W, K]`` context logits (``H = W = 512`` in the paper).
        zones: ``[B, H, W]`` integer class ids of the context.
        centre_size: Side of the central crop (256 in the paper).
        ce_weights: ``(centre, context)`` weights of the cross-entropy terms.
        dice_weights: ``(centre, context)`` weights of the Dice terms.
        label_smoothing: Cross-entropy smoothing ``eps``.
        smoothing_mode: See :func:`smooth_cross_entropy`.
        dice_group_size: See :func:`soft_dice_loss`.
        class_weights: Per-class weights of both cross-entropy terms (see
            :func:`smooth_cross_entropy`); ``None`` = unweighted, as in the reference (the config says ``()``). Dice is
            already a per-class mean and stays unweighted.

    Returns:
        ``(loss, metrics)`` with the four terms under ``ce_img``, ``ce_context``, ``dice_img``,
        ``dice_context`` (the reference's log names) and the total under ``loss``.
    """
    if logits.shape[:3] != zones.shape:
        raise ValueError(f"logits {logits.shape} and zones {zones.shape} disagree")
    centre_logits = centre_crop(logits, centre_size)
    centre_zones = centre_crop(zones, centre_size)
    terms = {
        "ce_img": smooth_cross_entropy(
            centre_logits, centre_zones, label_smoothing, smoothing_mode, class_weights
        ),
        "ce_context": smooth_cross_entropy(
            logits, zones, label_smoothing, smoothing_mode, class_weights
        ),
        "dice_img": soft_dice_loss(centre_logits, centre_zones, group_size=dice_group_size),
        "dice_context": soft_dice_loss(logits, zones, group_size=dice_group_size),
    }
    loss = (
        ce_weights[0] * terms["ce_img"]
        + ce_weights[1] * terms["ce_context"]
        + dice_weights[0] * terms["dice_img"]
        + dice_weights[1] * terms["dice_context"]
    )
    terms["loss"] = loss
    return loss, terms


def masked_l1_loss(predictions: jax.Array, targets: jax.Array, token_mask: jax.Array) -> jax.Array:
    """OptSimMIM loss: mean absolute error over the masked tokens only.

    Equal to ``nn.L1Loss`` on the gathered masked tokens of the reference (mean over
    ``B · n_masked · D`` values).

    Args:
        predictions: ``[B, L, D]`` predicted patches for all tokens.
        targets: ``[B, L, D]`` target patches (see :func:`patchify`).
        token_mask: ``[B, L]`` (or ``[B, h, w]``) bool, True = masked token.

    Returns:
        Scalar float32 loss.
    """
    mask = token_mask.reshape(token_mask.shape[0], -1).astype(jnp.float32)
    if mask.shape != predictions.shape[:2] or predictions.shape != targets.shape:
        raise ValueError(
            f"predictions {predictions.shape}, targets {targets.shape} and mask "
            f"{token_mask.shape} disagree"
        )
    abs_err = jnp.abs(predictions.astype(jnp.float32) - targets.astype(jnp.float32))
    per_token = jnp.sum(abs_err, axis=-1)
    count = jnp.maximum(jnp.sum(mask), 1.0) * predictions.shape[-1]
    return jnp.sum(per_token * mask) / count


def dense_l1_loss(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """OptTranslator loss: mean absolute error over all pixels and bands (``nn.L1Loss``)."""
    if predictions.shape != targets.shape:
        raise ValueError(f"predictions {predictions.shape} and targets {targets.shape} disagree")
    return jnp.mean(jnp.abs(predictions.astype(jnp.float32) - targets.astype(jnp.float32)))
