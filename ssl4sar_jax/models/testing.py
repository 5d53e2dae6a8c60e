"""Helpers for model tests: random parameter perturbation and the HF Swinv2 key mapping.

Kept in the package (not in ``tests/``) so every test file and benchmark can import them.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx


def randomize_params(model: nnx.Module, seed: int = 0, *, logit_scale_high: float = 5.5) -> None:
    """Replaces every parameter by random values of a plausible scale, in place.

    Freshly initialised models have zero biases, unit norms and identical logit scales, which
    would hide mapping mistakes (e.g. swapped q/v biases). Logit scales are drawn from
    U(1, ``logit_scale_high``) so some exceed the ln(100) = 4.605 clamp.

    Args:
        model: Any NNX module.
        seed: NumPy seed.
        logit_scale_high: Upper bound of the logit-scale draw.
    """
    rng = np.random.default_rng(seed)
    params = nnx.state(model, nnx.Param)
    for path, var in nnx.to_flat_state(params):
        name = str(path[-1])
        shape = tuple(var.shape)
        if name == "logit_scale":
            value = rng.uniform(1.0, logit_scale_high, shape)
        elif name == "scale":
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name in ("bias", "q_bias", "v_bias", "mask_token"):
            value = 0.1 * rng.standard_normal(shape)
        elif name == "kernel" and len(shape) == 4:
            fan_in = shape[0] * shape[1] * shape[2]
            value = rng.standard_normal(shape) / np.sqrt(fan_in)
        elif name == "kernel":
            # cpb_mlp (2 -> 512) gets a larger scale so the position bias is not flat.
            std = 0.5 if shape[0] == 2 else 1.0 / np.sqrt(shape[0])
            value = std * rng.standard_normal(shape)
        else:
            value = 0.1 * rng.standard_normal(shape)
        var.set_value(jnp.asarray(value, jnp.float32))
    nnx.update(model, params)


def microsoft_to_hf_swinv2(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Renames a Microsoft SwinV2 state dict to Hugging Face ``Swinv2Model`` keys.

    The fused ``qkv`` weight is split into ``query``/``key``/``value``; ``q_bias``/``v_bias``
    become the query/value biases (HF's key has no bias either). Classifier keys are dropped.

    Args:
        state: Microsoft-layout ``{key: array}`` (PyTorch layouts).

    Returns:
        ``{hf_key: array}`` for ``Swinv2Model.load_state_dict``.
    """
    block_map = {
        "attn.q_bias": "attention.self.query.bias",
        "attn.v_bias": "attention.self.value.bias",
        "attn.logit_scale": "attention.self.logit_scale",
        "attn.cpb_mlp.0.weight": "attention.self.continuous_position_bias_mlp.0.weight",
        "attn.cpb_mlp.0.bias": "attention.self.continuous_position_bias_mlp.0.bias",
        "attn.cpb_mlp.2.weight": "attention.self.continuous_position_bias_mlp.2.weight",
        "attn.proj.weight": "attention.output.dense.weight",
        "attn.proj.bias": "attention.output.dense.bias",
        "norm1.weight": "layernorm_before.weight",
        "norm1.bias": "layernorm_before.bias",
        "norm2.weight": "layernorm_after.weight",
        "norm2.bias": "layernorm_after.bias",
        "mlp.fc1.weight": "intermediate.dense.weight",
        "mlp.fc1.bias": "intermediate.dense.bias",
        "mlp.fc2.weight": "output.dense.weight",
        "mlp.fc2.bias": "output.dense.bias",
    }
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if key.startswith("patch_embed.proj."):
            out["embeddings.patch_embeddings.projection." + key.split(".")[-1]] = value
        elif key.startswith("patch_embed.norm."):
            out["embeddings.norm." + key.split(".")[-1]] = value
        elif ".downsample." in key:
            out["encoder." + key] = value
        elif ".blocks." in key:
            parts = key.split(".")
            prefix = "encoder." + ".".join(parts[:4]) + "."
            rest = ".".join(parts[4:])
            if rest == "attn.qkv.weight":
                q, k, v = np.split(value, 3, axis=0)
                out[prefix + "attention.self.query.weight"] = q
                out[prefix + "attention.self.key.weight"] = k
                out[prefix + "attention.self.value.weight"] = v
            elif rest in block_map:
                out[prefix + block_map[rest]] = value
            else:
                raise KeyError(f"no HF key for {key}")
        elif key.startswith(("norm.", "head.")):
            continue
        else:
            raise KeyError(f"no HF key for {key}")
    return out
