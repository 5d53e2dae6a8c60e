"""Mesh construction, sharding rules and global batches on simulated CPU devices."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from ssl4sar_jax import sharding


def test_make_mesh_fills_minus_one_and_uses_auto_axes():
    mesh = sharding.make_mesh([("data", -1)], jax.devices()[:4])
    assert dict(mesh.shape) == {"data": 4}
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
    mesh2 = sharding.make_mesh([("data", 2), ("model", -1)], jax.devices()[:4])
    assert dict(mesh2.shape) == {"data": 2, "model": 2}


@pytest.mark.parametrize(
    "axes, match",
    [
        ([("model", -1)], "'data' axis"),
        ([("data", 3)], "needs 3 devices"),
        ([("data", -1), ("model", -1)], "at most one -1"),
    ],
)
def test_make_mesh_rejects_bad_layouts(axes, match):
    with pytest.raises(ValueError, match=match):
        sharding.make_mesh(axes, jax.devices()[:4])


def test_state_shardings_follow_rules_and_fall_back_to_replication():
    mesh = sharding.make_mesh([("data", -1)], jax.devices()[:4])
    state = {
        "params": {
            "conv": {
                "kernel": jax.ShapeDtypeStruct((3, 3, 8, 16), np.float32),
                "bias": jax.ShapeDtypeStruct((16,), np.float32),
            },
            "odd": {"kernel": jax.ShapeDtypeStruct((3, 3, 8, 6), np.float32)},
        },
        "opt_state": {
            "trace": {"conv": {"kernel": jax.ShapeDtypeStruct((3, 3, 8, 16), np.float32)}}
        },
    }
    rules = [(r"kernel$", (None, None, None, "data"))]
    shardings = sharding.state_shardings(state, mesh, rules)
    assert shardings["params"]["conv"]["kernel"].spec == P(None, None, None, "data")
    assert shardings["opt_state"]["trace"]["conv"]["kernel"].spec == P(None, None, None, "data")
    assert shardings["params"]["conv"]["bias"].spec == P()
    assert shardings["params"]["odd"]["kernel"].spec == P()  # 6 is not divisible by 4
    assert sharding.state_shardings(state, mesh)["params"]["conv"]["kernel"].spec == P()


def test_make_global_batch_shards_the_batch_axis():
    mesh = sharding.make_mesh([("data", -1)], jax.devices()[:4])
    local = {"sar": np.arange(8 * 2, dtype=np.float32).reshape(8, 2, 1)}
    batch = sharding.make_global_batch(local, mesh)
    assert batch["sar"].shape == (8, 2, 1)
    assert batch["sar"].sharding.spec == P("data")
    assert len(batch["sar"].addressable_shards) == 4
    assert batch["sar"].addressable_shards[1].data.shape == (2, 2, 1)
    np.testing.assert_array_equal(np.asarray(batch["sar"]), local["sar"])
    assert sharding.local_batch_size(8) == 8 // jax.process_count()


def test_path_to_str_joins_keys():
    tree = {"a": {"b": [np.zeros(1), {"c": np.zeros(1)}]}}
    paths = [sharding.path_to_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    assert paths == ["a/b/0", "a/b/1/c"]
