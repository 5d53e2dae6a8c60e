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


def _sds(*shape):
    return jax.ShapeDtypeStruct(shape, np.float32)


def test_fsdp_preset_splits_the_largest_divisible_dimension():
    mesh = sharding.make_mesh([("data", -1)], jax.devices()[:4])
    state = {
        "params": {
            "qkv": {"kernel": _sds(96, 288)},
            "conv": {"kernel": _sds(3, 3, 64, 30)},  # 30 % 4 != 0: the 64 is split
            "odd": {"kernel": _sds(33, 35)},  # no divisible dimension: replicated
            "norm": {"scale": _sds(96)},  # below FSDP_MIN_SIZE: replicated
        },
        "step": _sds(),
    }
    sh = sharding.state_shardings(state, mesh, preset="fsdp")
    assert sh["params"]["qkv"]["kernel"].spec == P(None, "data")
    assert sh["params"]["conv"]["kernel"].spec == P(None, None, "data", None)
    assert sh["params"]["odd"]["kernel"].spec == P()
    assert sh["params"]["norm"]["scale"].spec == P()
    assert sh["step"].spec == P()
    replicated = sharding.state_shardings(state, mesh)
    full = sharding.bytes_per_device(state, replicated)
    assert full == 4 * (96 * 288 + 9 * 64 * 30 + 33 * 35 + 96 + 1)
    assert sharding.bytes_per_device(state, sh) == full - 4 * (96 * 288 + 9 * 64 * 30) * 3 // 4
    with pytest.raises(ValueError, match="config.sharding must be one of"):
        sharding.state_shardings(state, mesh, preset="zero3")


def test_fsdp_tensor_preset_shards_attention_and_mlp_over_the_model_axis():
    mesh = sharding.make_mesh([("data", 2), ("model", 2)], jax.devices()[:4])
    block = {
        "attn": {"qkv": {"kernel": _sds(96, 288)}, "proj": {"kernel": _sds(96, 96)}},
        "mlp": {
            "fc1": {"kernel": _sds(96, 384), "bias": _sds(384)},
            "fc2": {"kernel": _sds(384, 96)},
        },
        "head": {"kernel": _sds(1, 1, 96, 4)},
    }
    sh = sharding.state_shardings({"params": block}, mesh, preset="fsdp_tensor")["params"]
    assert sh["attn"]["qkv"]["kernel"].spec == P("data", "model")
    assert sh["attn"]["proj"]["kernel"].spec == P("model", "data")
    assert sh["mlp"]["fc1"]["kernel"].spec == P("data", "model")
    assert sh["mlp"]["fc1"]["bias"].spec == P("model")
    assert sh["mlp"]["fc2"]["kernel"].spec == P("model", "data")
    assert sh["head"]["kernel"].spec == P()  # 384 elements: below FSDP_MIN_SIZE
    with pytest.raises(ValueError, match="needs a 'model' mesh axis"):
        sharding.state_shardings(block, sharding.make_mesh([("data", -1)]), preset="fsdp_tensor")


def test_process_batch_rows_of_one_process_are_the_whole_batch():
    mesh = sharding.make_mesh([("data", -1)], jax.devices()[:4])
    assert sharding.process_batch_rows(mesh, 8) == list(range(8))


def test_initialize_distributed_needs_all_explicit_arguments(monkeypatch):
    with pytest.raises(ValueError, match="needs all of --coordinator_address"):
        sharding.initialize_distributed("127.0.0.1:1234", None, 0)
    for name in sharding.CLUSTER_ENV:
        monkeypatch.delenv(name, raising=False)
    assert sharding.initialize_distributed() is False  # a plain single-process run
    assert sharding.initialize_distributed(enable=False) is False
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert sharding.initialize_distributed() is False  # one SLURM task: nothing to join
