"""Optimiser parity with torch.optim.SGD and ReduceLROnPlateau."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import torch

from ssl4sar_jax import optim


def _config(lr=0.01, wd=1e-4):
    config = ml_collections.ConfigDict()
    config.optim = dict(name="sgd", learning_rate=lr, momentum=0.9, weight_decay=wd)
    return config


def test_sgd_coupled_weight_decay_matches_torch():
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5, 3))
    grads = [rng.normal(size=(5, 3)) for _ in range(4)]

    weight = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    torch_opt = torch.optim.SGD([weight], lr=0.01, momentum=0.9, weight_decay=1e-4)
    for g in grads:
        torch_opt.zero_grad()
        weight.grad = torch.from_numpy(g.copy())
        torch_opt.step()

    tx = optim.make_optimizer(_config())
    params = {"w": jnp.asarray(w0, jnp.float32)}
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(np.asarray(params["w"]), weight.detach().numpy(), rtol=1e-5)


def test_learning_rate_can_be_changed_between_steps():
    tx = optim.make_optimizer(_config(lr=0.1, wd=0.0))
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    assert optim.get_learning_rate(state) == np.float32(0.1)
    state = optim.set_learning_rate(state, 0.05)
    updates, state = tx.update({"w": jnp.ones(2)}, state, params)
    np.testing.assert_allclose(np.asarray(updates["w"]), -0.05)
    assert optim.get_learning_rate(state) == np.float32(0.05)


def test_reduce_on_plateau_matches_torch():
    values = [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.95, 0.95, 0.94, 0.9, 0.9] + [0.9] * 14
    param = torch.nn.Parameter(torch.zeros(1))
    torch_opt = torch.optim.SGD([param], lr=1e-3)
    torch_sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        torch_opt, mode="min", factor=0.5, patience=5
    )
    ours = optim.ReduceLROnPlateau(1e-3, factor=0.5, patience=5)
    ours_lrs, torch_lrs = [], []
    for v in values:
        torch_sched.step(v)
        torch_lrs.append(torch_opt.param_groups[0]["lr"])
        ours_lrs.append(ours.step(v))
    np.testing.assert_allclose(ours_lrs, torch_lrs)
    assert ours.num_reductions >= 2


def test_reduce_on_plateau_state_round_trip():
    sched = optim.ReduceLROnPlateau(1.0, patience=1)
    for v in [3.0, 3.0, 3.0]:
        sched.step(v)
    clone = optim.ReduceLROnPlateau(1.0, patience=1)
    clone.load_state_dict(sched.state_dict())
    for v in [3.0, 2.0, 2.5, 2.5]:
        assert clone.step(v) == sched.step(v)
