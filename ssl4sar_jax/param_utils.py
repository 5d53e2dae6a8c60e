"""Parameter trees as flat ``{"a/b/kernel": array}`` dicts, and the report of a weight load.

One flattening for every consumer (checkpoint metadata, parameter transfer, ``.npz`` files,
the PyTorch converter): path components are joined with ``/`` by `jax.tree_util.keystr`, so
dict keys, list indices and NNX paths all print the same way (``encoder/layers/0/...``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx


def path_to_str(path: Sequence[Any]) -> str:
    """``/``-joined readable form of a ``jax.tree_util`` key path or an NNX state path."""
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def flatten_params(tree: Any) -> dict[str, Any]:
    """``{"a/b/kernel": leaf}`` for every leaf of a nested (pure-dict) parameter tree."""
    return {path_to_str(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def model_params(model: nnx.Module) -> dict[str, np.ndarray]:
    """``{"encoder/layers/0/...": np.ndarray}`` of every `nnx.Param` of ``model``."""
    return {
        k: np.asarray(v)
        for k, v in flatten_params(nnx.to_pure_dict(nnx.state(model, nnx.Param))).items()
    }


def param_variables(model: nnx.Module) -> tuple[nnx.State, dict[str, nnx.Variable]]:
    """``(param_state, {path: variable})``: set values on the variables, then
    ``nnx.update(model, param_state)``."""
    params = nnx.state(model, nnx.Param)
    return params, {path_to_str(p): v for p, v in nnx.to_flat_state(params)}


@dataclasses.dataclass
class LoadReport:
    """What a parameter import or transfer did (`convert_torch` and `checkpointing` both return it).

    Attributes:
        loaded: Source keys copied into the model.
        missing: Model parameters (as source keys) absent from the source.
        mismatched: ``(key, checkpoint_shape, expected_shape)`` of parameters with the wrong shape.
        skipped: ``(key, reason)`` of known checkpoint entries without counterpart (buffers,
            dead weights, classifier).
        unexpected: Other checkpoint keys that were ignored.
        left_out: Model parameters deliberately not loaded (outside the requested scope,
            e.g. the decoder for an encoder-only import), as NNX paths.
    """

    loaded: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = dataclasses.field(
        default_factory=list
    )
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    unexpected: list[str] = dataclasses.field(default_factory=list)
    left_out: list[str] = dataclasses.field(default_factory=list)
    num_loaded_values: int = 0

    def summary(self) -> str:
        """Human-readable multi-line summary."""
        lines = [
            f"loaded {len(self.loaded)} tensors ({self.num_loaded_values:,} values)",
            f"skipped {len(self.skipped)} known entries (buffers / dead weights / classifier)",
        ]
        for key, reason in self.skipped:
            lines.append(f"  skipped {key}: {reason}")
        for name, items in (
            ("missing", self.missing),
            ("unexpected (ignored)", self.unexpected),
            ("left out (kept at init)", self.left_out),
        ):
            lines.append(f"{name}: {len(items)}")
            lines += [f"  {k}" for k in items]
        lines.append(f"mismatched: {len(self.mismatched)}")
        lines += [f"  {k}: checkpoint {a} vs model {b}" for k, a, b in self.mismatched]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return dataclasses.asdict(self)
