"""Small helpers for the ``configs/*.py`` files (which are loaded by path, not as a package)."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import ml_collections


def load_sibling(config_file: str, name: str) -> ModuleType:
    """Imports ``<folder of config_file>/<name>.py`` (e.g. ``configs/common.py``) by path.

    ``configs/`` is not a Python package (ml_collections loads config files by path), so a
    config reaches its shared module through this function.
    """
    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
    key = f"_ssl4sar_configs_{name}_{abs(hash(path))}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"config module {path} not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> None:
    """Sets dotted keys (``{"optim.learning_rate": 1e-3}``); each key must already exist."""
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise KeyError(f"config override {dotted!r} names no existing config field")
        node[leaf] = value


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing (``app.run(..., flags_parser=parse_flags)``) that fails clearly on a
    ``--config.<key>`` naming no config field (exit 2) or on bad flags (exit 1)."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as err:
        overrides = [a.split("=")[0][len("--config.") :] for a in argv if a.startswith("--config.")]
        bad = [key for key in overrides if key.split(".")[-1] in str(err)]
        if not bad:
            raise
        sys.stderr.write(
            f"Unknown config key(s) {bad}: the config has no such field (configs are locked). "
            "See the config file for the available keys.\n"
        )
        sys.exit(2)
    except flags.Error as err:
        sys.stderr.write(f"FATAL Flags parsing error: {err}\nPass --helpshort or --helpfull.\n")
        sys.exit(1)
