"""Warm-up + cosine learning-rate schedule of `optim.make_optimizer` (small-data recipes)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import ml_collections
import pytest

from ssl4sar_jax import optim


def _config(**optim_fields) -> ml_collections.ConfigDict:
    base = dict(name="adamw", learning_rate=1e-2, momentum=0.9, weight_decay=0.0)
    return ml_collections.ConfigDict(dict(total_steps=20, optim={**base, **optim_fields}))


def test_warmup_cosine_rises_then_decays_to_the_end_value():
    tx = optim.make_optimizer(_config(schedule="warmup_cosine", warmup_steps=5, end_lr_factor=0.1))
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    lrs = []
    for _ in range(20):
        _, state = tx.update({"w": jnp.ones(3)}, state, params)
        lrs.append(optim.get_learning_rate(state))
    assert lrs[0] == pytest.approx(0.0, abs=1e-9)  # the first update runs at step 0 of warm-up
    assert max(lrs) == pytest.approx(1e-2, rel=1e-5) and lrs.index(max(lrs)) == 5
    assert lrs[-1] == pytest.approx(1e-3 + 0.5 * 9e-3 * (1 + math.cos(math.pi * 14 / 15)), rel=1e-4)
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:], strict=False))


def test_constant_is_the_default_and_bad_schedules_fail():
    tx = optim.make_optimizer(_config())
    assert optim.get_learning_rate(tx.init({"w": jnp.ones(2)})) == pytest.approx(1e-2)
    with pytest.raises(ValueError, match="constant' or 'warmup_cosine"):
        optim.make_optimizer(_config(schedule="linear"))
    with pytest.raises(ValueError, match="total_steps"):
        optim.make_optimizer(_config(schedule="warmup_cosine", warmup_steps=30))
