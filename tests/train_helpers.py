"""Shared helpers of the training tests: micro configs and config loading.

The session fixtures they go with (``data_dir``, ``compilation_cache``) live in ``conftest.py``.

Every training test uses a micro model (32² input, 2 Swin stages of one block, plain XLA
convolutions) so a run compiles in seconds; compiled programs are shared between the tests
through JAX's persistent compilation cache (same program -> cache hit), and the synthetic
datasets are built once per session.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import ml_collections

from ssl4sar_jax.models import ModelConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MICRO_MODEL = dict(
    img_size=32,
    embed_dim=32,
    depths=(1, 1),
    num_heads=(1, 2),
    window_size=4,
    pretrained_window_sizes=(0, 0),
    conv_impl="xla",
)


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """``configs/<name>.py`` loaded by path (configs/ is not a package), unlocked copy."""
    path = os.path.join(REPO, "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"config_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def micro_config(
    name: str, arg: str, data_dir: str, num_devices: int = 1, **model_overrides
) -> ml_collections.ConfigDict:
    """A smoke config shrunk to the micro model, on ``num_devices`` devices, no validation."""
    config = load_config(name, arg)
    config.model = ModelConfig.named("tiny", **{**MICRO_MODEL, **model_overrides}).to_dict()
    config.data.data_dir = data_dir
    if config.task == "finetune":
        # The context side is config.model.img_size (its one home); the centre is half of it.
        config.data.sampler.centre_size = config.model.img_size // 2
        # One batch layout for every fine-tuning test, so they share compiled programs.
        config.batch_size = 8
        config.grad_accum_steps = 2
    config.num_devices = num_devices
    config.val.every_steps = 0
    config.checkpoint.every_steps = 2
    config.checkpoint.async_save = False
    return config


def model_dict(**overrides) -> dict:
    """The micro `ModelConfig` as a dict (for config.model)."""
    return ModelConfig.named("tiny", **{**MICRO_MODEL, **overrides}).to_dict()


# The micro model and fine-tuning batch layout of `micro_config` as command-line overrides of
# ``configs/finetune.py:smoke``, so command-line runs compile the in-process tests' programs
# (persistent compilation cache).
MICRO_ARGS = (
    "--config.model.img_size=32",
    "--config.model.embed_dim=32",
    "--config.model.depths=(1,1)",
    "--config.model.num_heads=(1,2)",
    "--config.model.pretrained_window_sizes=(0,0)",
    "--config.model.conv_impl=xla",
    "--config.data.sampler.centre_size=16",
    "--config.num_devices=1",
    "--config.batch_size=8",
    "--config.grad_accum_steps=2",
)


def smoke_args(workdir, *overrides: str) -> list[str]:
    """``main`` arguments of a ``configs/finetune.py:smoke`` run in ``workdir``."""
    return ["--config", "configs/finetune.py:smoke", "--workdir", str(workdir), *overrides]


def cache_env(compilation_cache: str) -> dict[str, str]:
    """Environment entries that make a subprocess share the session's compilation cache."""
    return {
        "JAX_COMPILATION_CACHE_DIR": compilation_cache,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }


def main_env(env_extra=None) -> dict[str, str]:
    """``os.environ`` with the repository first on ``PYTHONPATH``, updated by ``env_extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    return env


def run_main(args, env_extra=None, timeout=600) -> subprocess.CompletedProcess:
    """``python -m ssl4sar_jax.main *args`` in a subprocess from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "ssl4sar_jax.main", *args],
        cwd=REPO,
        env=main_env(env_extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
