"""Checkpoint round trips onto sharded targets, metadata checks and parameter transfer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ssl4sar_jax import checkpointing, sharding


def _state():
    params = {"enc": {"kernel": jnp.arange(16.0).reshape(2, 8)}, "head": {"bias": jnp.ones(4)}}
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
    return {"step": jnp.asarray(3, jnp.int32), "params": params, "opt_state": tx.init(params)}


def test_save_restore_onto_a_sharded_target_with_meta(tmp_path):
    state = _state()
    ckpt = checkpointing.RunCheckpointer(str(tmp_path), keep=2, async_save=True)
    meta = {
        "data_iter": {"next_index": 5},
        "best": 1.5,
        "param_shapes": checkpointing.param_shapes(state["params"]),
    }
    for step in (1, 2, 3):
        ckpt.save(step, state, meta)
    ckpt.save(2, state, {**meta, "best": 0.5}, best=True)
    ckpt.wait()
    assert ckpt.manager.all_steps() == [2, 3]  # keep-N
    assert ckpt.best_step() == 2

    mesh = sharding.make_mesh([("data", -1)], jax.devices()[:4])
    abstract = jax.eval_shape(lambda: state)
    shardings = sharding.state_shardings(abstract, mesh, [("kernel", (None, "data"))])
    target = sharding.with_shardings(abstract, shardings)
    restored, restored_meta = ckpt.restore(target, meta["param_shapes"])
    assert restored_meta["data_iter"] == {"next_index": 5}
    kernel = restored["params"]["enc"]["kernel"]
    assert kernel.sharding == NamedSharding(mesh, P(None, "data"))
    np.testing.assert_array_equal(np.asarray(kernel), np.asarray(state["params"]["enc"]["kernel"]))
    assert int(restored["step"]) == 3
    assert float(restored["opt_state"].hyperparams["learning_rate"]) == pytest.approx(0.1)
    ckpt.close()


def test_restore_refuses_other_parameter_shapes(tmp_path):
    state = _state()
    ckpt = checkpointing.RunCheckpointer(str(tmp_path), async_save=False)
    ckpt.save(
        1, state, {"param_shapes": checkpointing.param_shapes(state["params"]), "task": "finetune"}
    )
    expected = {"enc/kernel": [2, 16], "head/bias": [4], "new/kernel": [3]}
    with pytest.raises(checkpointing.CheckpointMismatchError, match="different model") as err:
        ckpt.restore(jax.eval_shape(lambda: state), expected)
    assert "enc/kernel: checkpoint [2, 8] vs model [2, 16]" in str(err.value)
    assert "new/kernel" in str(err.value)


def test_read_params_finds_best_or_latest(tmp_path):
    state = _state()
    ckpt = checkpointing.RunCheckpointer(str(tmp_path), async_save=False)
    ckpt.save(4, state, {})
    best = jax.tree.map(lambda x: x, state)
    best["params"] = {"enc": {"kernel": jnp.zeros((2, 8))}, "head": {"bias": jnp.zeros(4)}}
    ckpt.save(2, best, {}, best=True)
    ckpt.close()
    assert float(checkpointing.read_params(str(tmp_path))["enc/kernel"].sum()) == 0.0
    assert float(checkpointing.read_params(str(tmp_path), "latest")["enc/kernel"].sum()) == 120.0
    with pytest.raises(FileNotFoundError, match="no checkpoint found"):
        (tmp_path / "empty").mkdir()
        checkpointing.read_params(str(tmp_path / "empty"))


def test_transfer_params_strips_backbone_prefix_and_reports():
    target = {"encoder": {"w": np.zeros((2, 2))}, "head": {"w": np.zeros(3)}}
    source = {"backbone/encoder/w": np.ones((2, 2)), "reembed/w": np.ones(5)}
    with pytest.raises(ValueError, match=r"lacks 1 parameters.*head/w.*allow_missing"):
        checkpointing.transfer_params(target, source)
    new, report = checkpointing.transfer_params(target, source, allow_missing=[r"^head/"])
    np.testing.assert_array_equal(new["encoder"]["w"], np.ones((2, 2)))
    np.testing.assert_array_equal(new["head"]["w"], np.zeros(3))
    assert (report.loaded, report.missing, report.unexpected) == (
        ["encoder/w"],
        ["head/w"],
        ["reembed/w"],
    )


def test_transfer_params_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="other shapes.*encoder/w"):
        checkpointing.transfer_params({"encoder": {"w": np.zeros(2)}}, {"encoder/w": np.ones(3)})
