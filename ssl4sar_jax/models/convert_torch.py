"""PyTorch weight import/export for the SSL4SAR models (NumPy key mapping; torch only for files).

Two checkpoint formats are read (those Nora-Go/TYRION loads: ``Tyrion.load_from_pretrained`` and
the Lightning checkpoints of ``train_Tyrion.py``):

* **Microsoft SwinV2** (``swinv2_tiny_patch4_window16_256.pth``): ``{"model": state_dict}``
  with keys such as ``layers.0.blocks.1.attn.qkv.weight``. Loaded into the encoder only;
  ``norm.*``/``head.*`` (classifier), buffers (``relative_coords_table``,
  ``relative_position_index``, ``attn_mask``) and shape-mismatched buffers are skipped and
  listed in the report. The decoder keeps its initialisation.
* **TYRION PyTorch-Lightning** (``*.ckpt``): ``{"state_dict": ...}`` with the network under
  ``swin_unet.`` (decoder ``pred_target.{k}.block.*`` / ``pred_target.{k}.up.conv.*``, head
  ``pred_target.6``) and, for pretraining runs, the heads ``decoder.*``,
  ``last_model_decoder_layer.*``, ``patch_embed_after_decoder.*`` and ``mask_token``. Loaded
  into the full model; the reference's dead weights (``temb_proj``, ``outputt``) and buffers
  are skipped and listed.

The mapping works on ``dict[str, np.ndarray]``: Linear ``(out, in)`` <-> Dense ``(in, out)``;
Conv ``(out, in, kh, kw)`` <-> ``(kh, kw, in, out)``; ``logit_scale (h, 1, 1)`` <-> ``(h,)``;
``mask_token (1, 1, D)`` <-> ``(D,)``. Missing or mis-shaped parameters raise a ValueError
listing all of them unless ``partial=True`` (then the report lists what was left out).

Command line::

    python -m ssl4sar_jax.models.convert_torch import --format microsoft \\
        --input swinv2_tiny_patch4_window16_256.pth --output imagenet_init.npz
    python -m ssl4sar_jax.models.convert_torch import --format tyrion --objective segment \\
        --input epoch=99.ckpt --output tyrion_finetuned.npz
    python -m ssl4sar_jax.models.convert_torch export --input tyrion_finetuned.npz \\
        --output tyrion_finetuned.pth

The ``.npz`` files hold the NNX parameters keyed by ``/``-joined paths; load them with
`load_params_npz`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ssl4sar_jax import io_utils
from ssl4sar_jax.models.config import ModelConfig, as_config
from ssl4sar_jax.param_utils import LoadReport, model_params, param_variables, path_to_str

FORMATS = ("microsoft", "tyrion")
TYRION_PREFIX = "swin_unet."

# Keys of the reference that have no counterpart here, with the reason they are skipped.
_SKIP_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(^|\.)relative_coords_table$"), "buffer (recomputed from the config)"),
    (re.compile(r"(^|\.)relative_position_index$"), "buffer (recomputed from the config)"),
    (re.compile(r"(^|\.)attn_mask$"), "buffer (recomputed from the config)"),
    (re.compile(r"\.temb_proj\."), "dead parameter in TYRION (temb is always None)"),
    (re.compile(r"(^|\.)outputt\."), "dead parameter in TYRION (never used)"),
    (re.compile(r"^(norm|head)\."), "ImageNet classifier (not part of the encoder)"),
    (re.compile(r"(^|\.)absolute_pos_embed$"), "absolute position embedding (ape=False)"),
)


# ----------------------------------------------------------------------------- key mapping
def _component(value: Any) -> str:
    return str(value)


def segmenter_torch_key(path: tuple[Any, ...], num_decoder_blocks: int) -> str:
    """Maps an `SSL4SARSegmenter` parameter path to its TYRION key (without ``swin_unet.``).

    Args:
        path: NNX path, e.g. ``("encoder", "layers", 0, "blocks", 1, "attn", "qkv", "kernel")``.
        num_decoder_blocks: Decoder blocks before the head (6 for the paper configuration);
            the head is ``pred_target.{num_decoder_blocks}``.

    Returns:
        The PyTorch key, e.g. ``layers.0.blocks.1.attn.qkv.weight``.
    """
    parts = [_component(p) for p in path]
    leaf = {"kernel": "weight", "scale": "weight"}.get(parts[-1], parts[-1])
    parts[-1] = leaf
    if parts[0] == "encoder":
        parts = parts[1:]
    elif parts[0] == "decoder":
        if parts[1] != "blocks":
            raise KeyError(f"unknown decoder path {path}")
        parts = ["pred_target"] + parts[2:]
    elif parts[0] == "head":
        parts = ["pred_target", str(num_decoder_blocks)] + parts[1:]
    else:
        raise KeyError(f"no PyTorch key for model path {path}")
    key = ".".join(parts)
    return key.replace("cpb_mlp_0.", "cpb_mlp.0.").replace("cpb_mlp_2.", "cpb_mlp.2.")


def model_torch_keys(model: nnx.Module) -> dict[tuple[Any, ...], str]:
    """TYRION key (with ``swin_unet.`` where the reference has it) of every model parameter.

    Works for `SSL4SARSegmenter` (keys ``swin_unet.*``) and the pretraining models (backbone
    under ``swin_unet.*``, heads under their TYRION names).
    """
    from ssl4sar_jax import objectives  # the heads' TYRION names are part of each objective

    head_keys = objectives.torch_head_keys()
    config: ModelConfig = model.config
    num_blocks = len(config.decoder_channels())
    keys = {}
    for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if path[0] == "backbone":
            keys[path] = TYRION_PREFIX + segmenter_torch_key(path[1:], num_blocks)
        elif path[0] in head_keys:
            parts = [_component(p) for p in path[1:]]
            if parts:
                parts[-1] = {"kernel": "weight", "scale": "weight"}.get(parts[-1], parts[-1])
            keys[path] = ".".join([head_keys[path[0]]] + parts)
        else:
            keys[path] = TYRION_PREFIX + segmenter_torch_key(path, num_blocks)
    return keys


def _is_encoder_path(path: tuple[Any, ...]) -> bool:
    inner = path[1:] if path[0] == "backbone" else path
    return inner[0] == "encoder"


def torch_to_flax(key: str, value: np.ndarray, target_ndim: int) -> np.ndarray:
    """Converts one PyTorch tensor to the NNX layout.

    Args:
        key: PyTorch key (decides the rule for ``logit_scale`` and ``mask_token``).
        value: The tensor as a NumPy array.
        target_ndim: Rank of the NNX parameter.

    Returns:
        The array in NNX layout (float32).
    """
    value = np.asarray(value, dtype=np.float32)
    if key.endswith("logit_scale") or key.endswith("mask_token"):
        return value.reshape(-1)
    if value.ndim == 4 and target_ndim == 4:  # conv (O, I, kh, kw) -> (kh, kw, I, O)
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2 and target_ndim == 2:  # linear (O, I) -> (I, O)
        return value.T
    return value


def flax_to_torch(key: str, value: np.ndarray) -> np.ndarray:
    """Inverse of `torch_to_flax`."""
    value = np.asarray(value, dtype=np.float32)
    if key.endswith("logit_scale"):
        return value.reshape(-1, 1, 1)
    if key.endswith("mask_token"):
        return value.reshape(1, 1, -1)
    if value.ndim == 4:
        return value.transpose(3, 2, 0, 1)
    if value.ndim == 2:
        return value.T
    return value


def _skip_reason(key: str) -> str | None:
    for pattern, reason in _SKIP_RULES:
        if pattern.search(key):
            return reason
    return None


# ----------------------------------------------------------------------------- import
def load_torch_state(
    model: nnx.Module,
    state: Mapping[str, np.ndarray],
    *,
    fmt: str = "tyrion",
    partial: bool = False,
) -> LoadReport:
    """Copies a PyTorch state dict (NumPy values) into ``model`` in place.

    Args:
        model: `SSL4SARSegmenter`, `OptSimMIMModel` or `OptTranslatorModel`.
        state: ``{torch_key: array}``; TYRION keys carry the ``swin_unet.`` prefix, Microsoft
            keys none.
        fmt: "tyrion" (whole model) or "microsoft" (encoder only; the rest is left out).
        partial: Accept missing or mis-shaped parameters (they keep their current values and
            are listed in the report) instead of raising.

    Returns:
        A `LoadReport`.

    Raises:
        ValueError: on an unknown format, or (unless ``partial``) with the full list of missing
            and mis-shaped parameters; nothing is modified in that case.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; expected one of {FORMATS}")
    report = LoadReport()
    params = nnx.state(model, nnx.Param)
    variables = dict(nnx.to_flat_state(params))
    keys = model_torch_keys(model)
    if fmt == "microsoft":
        # The Microsoft checkpoint holds the encoder only, without the swin_unet. prefix.
        wanted = {}
        for path, key in keys.items():
            if _is_encoder_path(path):
                wanted[path] = key[len(TYRION_PREFIX) :]
            else:
                report.left_out.append(path_to_str(path))
    else:
        wanted = dict(keys)
        if "mask_token" in state and ("mask_token",) not in keys:
            report.skipped.append(("mask_token", "frozen zero mask token (constant in this model)"))

    updates: dict[tuple[Any, ...], np.ndarray] = {}
    for path, key in wanted.items():
        target = variables[path]
        if key not in state:
            report.missing.append(key)
            continue
        value = torch_to_flax(key, np.asarray(state[key]), target.ndim)
        if value.shape != tuple(target.shape):
            report.mismatched.append((key, tuple(np.shape(state[key])), tuple(target.shape)))
            continue
        updates[path] = value
        report.loaded.append(key)
        report.num_loaded_values += int(value.size)

    used = set(wanted.values())
    # A frozen mask token was already reported as skipped above.
    frozen_mask_token = fmt == "tyrion" and ("mask_token",) not in keys
    for key in state:
        if key in used or (key == "mask_token" and frozen_mask_token):
            continue
        reason = _skip_reason(key[len(TYRION_PREFIX) :] if key.startswith(TYRION_PREFIX) else key)
        if reason is not None:
            report.skipped.append((key, reason))
        else:
            report.unexpected.append(key)

    if (report.missing or report.mismatched) and not partial:
        raise ValueError(
            f"checkpoint ({fmt}) does not fit the model; pass partial=True to load anyway.\n"
            + report.summary()
        )
    _require_some_loaded(report, len(wanted), f"checkpoint ({fmt})")
    for path, value in updates.items():
        variables[path].set_value(jnp.asarray(value, dtype=variables[path].dtype))
    nnx.update(model, params)
    return report


def _require_some_loaded(report: LoadReport, wanted: int, what: str) -> None:
    """A (partial) load that matched nothing is an error: the result would be a fresh init."""
    if wanted and not report.loaded:
        raise ValueError(
            f"no parameter of the {what} matches the model: 0 of {wanted} loaded "
            f"({len(report.missing)} missing, {len(report.mismatched)} mis-shaped, "
            f"{len(report.unexpected)} unexpected keys). The result would be a pure random "
            "initialisation; check the checkpoint format, the model variant and the objective.\n"
            + report.summary()
        )


def export_torch_state(model: nnx.Module, *, fmt: str = "tyrion") -> dict[str, np.ndarray]:
    """Exports the model parameters as a PyTorch-layout state dict of NumPy arrays.

    Args:
        model: `SSL4SARSegmenter`, `OptSimMIMModel` or `OptTranslatorModel`.
        fmt: "tyrion" (every parameter, TYRION keys) or "microsoft" (encoder only, keys
            without prefix).

    Returns:
        ``{torch_key: float32 array}``. Buffers and TYRION's dead weights are not included,
        so PyTorch must load it with ``strict=False``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; expected one of {FORMATS}")
    keys = model_torch_keys(model)
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        key = keys[path]
        if fmt == "microsoft":
            if not _is_encoder_path(path):
                continue
            key = key[len(TYRION_PREFIX) :]
        out[key] = flax_to_torch(key, np.asarray(var[...]))
    return out


# ----------------------------------------------------------------------------- files
def read_torch_checkpoint(path: str, *, trust_pickle: bool = False) -> dict[str, np.ndarray]:
    """Reads a ``.pth``/``.ckpt`` file into ``{key: np.ndarray}`` (needs torch).

    Accepts Microsoft files (``{"model": sd}``), Lightning checkpoints (``{"state_dict": sd}``)
    and bare state dicts.

    Args:
        path: File path.
        trust_pickle: Allow arbitrary pickled objects (``weights_only=False``); needed for some
            Lightning checkpoints that store non-tensor hyper-parameters. Only for trusted files.

    Raises:
        ValueError: if the file is missing or holds no tensor dict.
    """
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint file {path!r} does not exist")
    try:
        import torch
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError(
            "reading PyTorch checkpoints needs torch: pip install 'ssl4sar_jax[torch]'"
        ) from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as err:
        if trust_pickle:
            raise
        raise ValueError(
            f"could not read {path!r} with weights_only=True ({err}); if the file is trusted, "
            "retry with trust_pickle=True (--trust-pickle)"
        ) from err
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    elif isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path!r} holds a {type(obj).__name__}, expected a state dict")
    out = {}
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            out[str(key)] = value.detach().to(torch.float32).numpy()
    if not out:
        raise ValueError(f"{path!r} contains no tensors")
    return out


def write_torch_checkpoint(state: Mapping[str, np.ndarray], path: str, *, fmt: str) -> None:
    """Writes a state dict with torch.save (``{"state_dict": ...}`` for TYRION,
    ``{"model": ...}`` for Microsoft), atomically."""
    import torch

    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    payload = {"state_dict": tensors} if fmt == "tyrion" else {"model": tensors}
    with io_utils.atomic_path(path) as tmp:
        torch.save(payload, tmp)


def save_params_npz(
    model: nnx.Module, path: str, *, metadata: Mapping[str, Any] | None = None
) -> None:
    """Saves all parameters (and the config as JSON) to ``path`` (``.npz``), atomically."""
    arrays = model_params(model)
    meta = {"config": model.config.to_dict(), **(metadata or {})}
    arrays["__metadata__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with io_utils.atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def read_params_npz(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Reads a file written by `save_params_npz`: ``(params by path, metadata)``."""
    if not os.path.isfile(path):
        raise ValueError(f"parameter file {path!r} does not exist")
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    meta_raw = arrays.pop("__metadata__", None)
    meta = json.loads(meta_raw.tobytes().decode()) if meta_raw is not None else {}
    return arrays, meta


def load_params_npz(model: nnx.Module, path: str, *, partial: bool = False) -> LoadReport:
    """Loads a `save_params_npz` file into ``model`` in place (matching NNX paths).

    Raises:
        ValueError: with the full list of missing / mis-shaped parameters unless ``partial``.
    """
    arrays, _ = read_params_npz(path)
    return load_flat_dict(model, arrays, partial=partial)


def load_flat_dict(
    model: nnx.Module, arrays: Mapping[str, np.ndarray], *, partial: bool = False
) -> LoadReport:
    """Loads ``{"a/b/c": array}`` (NNX paths) into ``model``; see `load_params_npz`.

    A segmenter checkpoint loads into a pretraining model's ``backbone`` and vice versa
    (``backbone/`` prefixes are added or stripped as needed).
    """
    report = LoadReport()
    params, variables = param_variables(model)
    has_backbone = any(k.startswith("backbone/") for k in variables)
    src_backbone = any(k.startswith("backbone/") for k in arrays)
    renamed = {}
    for key, value in arrays.items():
        if has_backbone and not src_backbone:
            key = "backbone/" + key
        elif src_backbone and not has_backbone:
            if not key.startswith("backbone/"):
                report.unexpected.append(key)
                continue
            key = key[len("backbone/") :]
        renamed[key] = value
    updates = {}
    for key, var in variables.items():
        if key not in renamed:
            report.missing.append(key)
            continue
        value = np.asarray(renamed[key])
        if value.shape != tuple(var.shape):
            report.mismatched.append((key, value.shape, tuple(var.shape)))
            continue
        updates[key] = value
        report.loaded.append(key)
        report.num_loaded_values += int(value.size)
    report.unexpected += sorted(set(renamed) - set(variables))
    if (report.missing or report.mismatched) and not partial:
        raise ValueError("parameters do not fit the model (partial=False):\n" + report.summary())
    _require_some_loaded(report, len(variables), "parameter file")
    for key, value in updates.items():
        variables[key].set_value(jnp.asarray(value, dtype=variables[key].dtype))
    nnx.update(model, params)
    return report


# ----------------------------------------------------------------------------- CLI
def _build(variant: str, objective: str, seed: int, overrides: Iterable[str]) -> nnx.Module:
    from ssl4sar_jax.models.builder import build_model

    fields: dict[str, Any] = {}
    for item in overrides:
        name, _, raw = item.partition("=")
        try:
            fields[name] = json.loads(raw)
        except json.JSONDecodeError:
            fields[name] = raw
    config = as_config(ModelConfig.named(variant, **fields))
    return build_model(config, seed=seed, objective=objective)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    from ssl4sar_jax.objectives import objective_names

    parser = argparse.ArgumentParser(
        prog="python -m ssl4sar_jax.models.convert_torch",
        description="Convert SSL4SAR/SwinV2 PyTorch weights to ssl4sar_jax parameters and back.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("import", "export"):
        p = sub.add_parser(name)
        p.add_argument(
            "--input",
            required=True,
            help=".pth/.ckpt file (import) or .npz parameter file (export)",
        )
        p.add_argument(
            "--output", required=True, help=".npz parameter file (import) or .pth file (export)"
        )
        p.add_argument(
            "--format",
            choices=FORMATS,
            default="tyrion",
            help="microsoft: SwinV2 ImageNet .pth (encoder only); tyrion: Lightning .ckpt",
        )
        p.add_argument("--variant", default="paper", help="ModelConfig.named variant")
        p.add_argument(
            "--objective",
            default="segment",
            choices=objective_names(),
        )
        p.add_argument(
            "--set",
            nargs="*",
            default=[],
            metavar="FIELD=VALUE",
            help="ModelConfig overrides, e.g. pretrained_window_sizes=[16,16,16,8]",
        )
        p.add_argument("--seed", type=int, default=0, help="init seed of weights not in the file")
    imp = sub.choices["import"]
    imp.add_argument("--partial", action="store_true", help="allow missing/mis-shaped keys")
    imp.add_argument("--trust-pickle", action="store_true", help="torch.load weights_only=False")
    imp.add_argument("--report", help="write the load report as JSON here")
    args = parser.parse_args(argv)

    model = _build(args.variant, args.objective, args.seed, args.set)
    if args.command == "import":
        state = read_torch_checkpoint(args.input, trust_pickle=args.trust_pickle)
        try:
            report = load_torch_state(model, state, fmt=args.format, partial=args.partial)
        except ValueError as err:
            print(f"error: {args.input}: {err}", file=sys.stderr)
            return 1
        save_params_npz(
            model,
            args.output,
            metadata={"source": os.path.abspath(args.input), "format": args.format},
        )
        print(report.summary())
        if args.report:
            io_utils.write_json_atomic(args.report, report.to_dict(), indent=1)
        print(f"wrote {args.output}")
    else:
        load_params_npz(model, args.input)
        write_torch_checkpoint(
            export_torch_state(model, fmt=args.format), args.output, fmt=args.format
        )
        print(f"wrote {args.output} ({args.format} layout; load with strict=False)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
