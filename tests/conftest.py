"""Test set-up: simulated CPU devices before JAX initialises its backend.

Four host devices let sharding tests compare 1-device and 4-device runs in the
same process. Model tests that do not shard simply use device 0.
"""

import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "4")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Keep TensorFlow (only used by the tfds.load test) quiet and off any GPU.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402  (after the device environment above)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """Session TFDS dir; the synthetic datasets are built on first use by the tasks."""
    return str(tmp_path_factory.getbasetemp() / "tfds")


@pytest.fixture(scope="session", autouse=False)
def compilation_cache(tmp_path_factory):
    """Persistent compilation cache for the session (identical programs compile once)."""
    import jax
    from jax.experimental.compilation_cache import compilation_cache as cc

    cache_dir = str(tmp_path_factory.getbasetemp() / "jax_cache")
    previous = (
        jax.config.jax_compilation_cache_dir,
        jax.config.jax_persistent_cache_min_compile_time_secs,
        jax.config.jax_persistent_cache_min_entry_size_bytes,
    )
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    cc.reset_cache()
    yield cache_dir
    jax.config.update("jax_compilation_cache_dir", previous[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", previous[1])
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", previous[2])
    cc.reset_cache()
