"""Orbax checkpointing of training runs, resume checks, and weight initialisation sources.

A checkpoint step holds three items:

* ``state``: the train state pytree ``{"step", "params", "opt_state"}`` (params are a pure dict
  of the NNX parameter tree, so checkpoints are readable without the model code). With several
  processes every process writes the shards it holds (orbax/tensorstore, no gathering on one
  process); a restore reads the shards its target sharding needs, on any number of processes;
* ``meta``: JSON (written by process 0) with everything else needed to continue exactly — the
  reduce-on-plateau state, the best validation value so far, the task name and the parameter
  shapes (used to refuse a workdir that holds a checkpoint of a different model);
* ``data_iter``: one JSON file per process, ``process_<i>-of-<n>.json``, with that process's
  data-iterator state. A restore on ``n`` processes reads its own file; on another process
  count it accepts the saved states only if they are all equal (the pipelines of
  ``ssl4sar_jax.data`` keep a process-count-invariant state: the number of global batches
  consumed), and refuses otherwise.

Layout: ``{workdir}/checkpoints/<step>/`` (periodic + final, keep-N) and
``{workdir}/best_checkpoint/<step>/`` (the single best by the task's selection metric).
Restores go onto sharded abstract targets (``jax.ShapeDtypeStruct`` with shardings), so a run
saved on one device resumes on any mesh.

Initialisation sources for a fresh run (``config.init.mode``): ``scratch``, ``imagenet`` (Microsoft
SwinV2 ``.pth``), ``workdir`` (encoder + decoder from a pretraining or fine-tuning workdir, with a
report of loaded/missing keys) and ``tyrion`` (PyTorch-Lightning checkpoint). The torch formats go
through ``ssl4sar_jax.models.convert_torch``.

Design follows MaxText ``checkpointing.py`` (state + data iterator, preemption save) and
big_vision ``train.py`` (resume order: workdir > init_from > scratch).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from ssl4sar_jax import sharding as sharding_lib

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best_checkpoint"
DATA_ITER_ITEM = "data_iter"


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model/task of the current config."""


def flatten_params(tree: Any) -> dict[str, Any]:
    """``{"a/b/kernel": leaf}`` for every leaf of a nested (pure-dict) parameter tree."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        flat[sharding_lib.path_to_str(path)] = leaf
    return flat


def param_shapes(params: Any) -> dict[str, list[int]]:
    """``{path: shape}`` of a parameter tree (stored in checkpoint metadata)."""
    return {k: [int(d) for d in np.shape(v)] for k, v in flatten_params(params).items()}


def describe_shape_mismatch(
    saved: Mapping[str, Sequence[int]], current: Mapping[str, Sequence[int]], limit: int = 8
) -> str:
    """Human-readable difference between two ``{path: shape}`` tables (empty if equal)."""
    lines = []
    missing = sorted(set(current) - set(saved))
    extra = sorted(set(saved) - set(current))
    changed = sorted(k for k in set(saved) & set(current) if list(saved[k]) != list(current[k]))
    if missing:
        lines.append(
            f"{len(missing)} parameters of the model are not in the checkpoint, e.g. "
            f"{missing[:limit]}"
        )
    if extra:
        lines.append(
            f"{len(extra)} checkpoint parameters are not in the model, e.g. {extra[:limit]}"
        )
    if changed:
        lines.append(
            f"{len(changed)} parameters have other shapes, e.g. "
            + ", ".join(
                f"{k}: checkpoint {list(saved[k])} vs model {list(current[k])}"
                for k in changed[:limit]
            )
        )
    return "; ".join(lines)


class ProcessStateHandler(ocp.JsonCheckpointHandler):
    """Orbax handler writing one JSON state per process (``process_<i>-of-<n>.json``).

    Every process writes only its own file into the step's (temporary) directory; orbax commits
    the step once all processes have finished, so a step holds all files or none.
    """

    def __init__(self):
        super().__init__()

    @staticmethod
    def filename(index: int, count: int) -> str:
        return f"process_{index}-of-{count}.json"

    async def _save_fn(self, x, directory):
        name = self.filename(jax.process_index(), jax.process_count())
        (directory / name).write_text(json.dumps(x, sort_keys=True))

    def restore(self, directory, item=None, args=None) -> dict[str, Any]:
        del item, args
        own = directory / self.filename(jax.process_index(), jax.process_count())
        if own.exists():
            return json.loads(own.read_text())
        files = sorted(directory.glob("process_*-of-*.json"))
        if not files:
            raise FileNotFoundError(f"no per-process data-iterator state in {directory}")
        states = [json.loads(f.read_text()) for f in files]
        if any(state != states[0] for state in states[1:]):
            raise CheckpointMismatchError(
                f"{directory} holds data-iterator states of {len(files)} processes that differ "
                f"({files[0].name}: {states[0]}); they cannot be redistributed over "
                f"{jax.process_count()} processes. Resume with the process count of the run."
            )
        logging.info(
            "Data-iterator state of %d processes restored on %d (process-count invariant).",
            len(files),
            jax.process_count(),
        )
        return states[0]


@ocp.args.register_with_handler(ProcessStateHandler, for_save=True)
@dataclasses.dataclass
class ProcessStateSave(ocp.args.CheckpointArgs):
    """Save args of :class:`ProcessStateHandler` (this process's JSON-able state)."""

    item: Mapping[str, Any]


@ocp.args.register_with_handler(ProcessStateHandler, for_restore=True)
@dataclasses.dataclass
class ProcessStateRestore(ocp.args.CheckpointArgs):
    """Restore args of :class:`ProcessStateHandler`."""

    item: Any = None


class RunCheckpointer:
    """Periodic/final/best checkpoints of one training run in ``workdir``.

    Args:
        workdir: Run directory.
        keep: Number of periodic checkpoints kept.
        async_save: Save in a background thread (orbax async checkpointing).
    """

    def __init__(self, workdir: str, keep: int = 2, async_save: bool = True):
        self.workdir = os.path.abspath(workdir)
        self._options = dict(enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(
            os.path.join(self.workdir, CHECKPOINT_DIR),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, **self._options),
            item_names=("state", "meta", DATA_ITER_ITEM),
        )
        self.best_manager = ocp.CheckpointManager(
            os.path.join(self.workdir, BEST_DIR),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, **self._options),
            item_names=("state", "meta", DATA_ITER_ITEM),
        )

    # ------------------------------------------------------------------ saving
    def save(
        self,
        step: int,
        state: Any,
        meta: Mapping[str, Any],
        best: bool = False,
        data_iter: Mapping[str, Any] | None = None,
    ) -> None:
        """Save ``state``, JSON ``meta`` and this process's ``data_iter`` state at ``step``.

        Called by every process with the same ``step`` (``state`` is the global sharded state;
        ``meta`` is written by process 0); ``best`` saves to the best slot.
        """
        manager = self.best_manager if best else self.manager
        if step in manager.all_steps():
            return  # already saved at this step (e.g. final save right after a periodic one)
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(dict(meta)))
        if data_iter is not None:
            items[DATA_ITER_ITEM] = ProcessStateSave(dict(data_iter))
        args = ocp.args.Composite(**items)
        manager.save(step, args=args, force=True)

    def wait(self) -> None:
        """Block until background saves are committed."""
        self.manager.wait_until_finished()
        self.best_manager.wait_until_finished()

    def close(self) -> None:
        """Wait for pending saves and release the managers."""
        self.wait()
        self.manager.close()
        self.best_manager.close()

    # ------------------------------------------------------------------ restoring
    def latest_step(self) -> int | None:
        """Step of the newest periodic checkpoint, or None."""
        return self.manager.latest_step()

    def best_step(self) -> int | None:
        """Step of the best checkpoint, or None."""
        return self.best_manager.latest_step()

    def restore_meta(self, step: int | None = None, best: bool = False) -> dict[str, Any]:
        """The JSON metadata of a checkpoint."""
        manager = self.best_manager if best else self.manager
        step = manager.latest_step() if step is None else step
        restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def restore(
        self,
        abstract_state: Any,
        expected_shapes: Mapping[str, Sequence[int]],
        step: int | None = None,
        best: bool = False,
    ) -> tuple[Any, dict[str, Any]]:
        """Restore ``(state, meta)`` onto ``abstract_state`` (leaves carry target shardings).

        ``meta["data_iter"]`` is this process's data-iterator state (see the module docstring).

        Raises:
            CheckpointMismatchError: if the checkpoint was written for other parameter shapes.
        """
        manager = self.best_manager if best else self.manager
        step = manager.latest_step() if step is None else step
        directory = os.path.join(self.workdir, BEST_DIR if best else CHECKPOINT_DIR)
        meta = self.restore_meta(step, best=best)
        saved_shapes = meta.get("param_shapes")
        if saved_shapes is not None:
            difference = describe_shape_mismatch(saved_shapes, expected_shapes)
            if difference:
                raise CheckpointMismatchError(
                    f"The checkpoint {directory}/{step} was written for a different model "
                    f"(task {meta.get('task')!r}): {difference}. Use a new --workdir for this "
                    "config, or point --workdir at the run this config belongs to."
                )
        items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        if os.path.isdir(os.path.join(directory, str(step), DATA_ITER_ITEM)):
            items[DATA_ITER_ITEM] = ProcessStateRestore()
        try:
            restored = manager.restore(step, args=ocp.args.Composite(**items))
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointMismatchError(
                f"Cannot restore {directory}/{step} into the current train state ({err}). The "
                "workdir probably holds a run of another config; use a new --workdir."
            ) from err
        meta = dict(restored["meta"])
        if DATA_ITER_ITEM in items:
            # This process's own iterator state (older checkpoints keep process 0's in meta).
            meta["data_iter"] = dict(restored[DATA_ITER_ITEM])
        return restored["state"], meta


def read_params(checkpoint_dir: str, which: str = "best") -> dict[str, np.ndarray]:
    """Read the parameters of a saved run checkpoint without knowing its model.

    Args:
        checkpoint_dir: A run workdir, a ``checkpoints``/``best_checkpoint`` directory, or one
            step directory.
        which: For a run workdir: ``"best"`` (its best checkpoint if any, else the latest
            periodic one) or ``"latest"`` (the newest periodic checkpoint).

    Returns:
        Flat ``{path: numpy array}`` of the ``params`` subtree.
    """
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    step_dir = _resolve_step_dir(checkpoint_dir, which)
    state_dir = os.path.join(step_dir, "state")
    with ocp.StandardCheckpointer() as checkpointer:
        metadata = checkpointer.metadata(state_dir)
        tree = metadata.item_metadata if hasattr(metadata, "item_metadata") else metadata
        # Restore on the host, whatever mesh the run was saved from.
        full_abstract = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=_host_sharding()), tree
        )
        restored = checkpointer.restore(state_dir, full_abstract)
    return {k: np.asarray(v) for k, v in flatten_params(restored["params"]).items()}


def _host_sharding() -> jax.sharding.Sharding:
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])


def _resolve_step_dir(path: str, which: str = "best") -> str:
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"init checkpoint {path!r} does not exist")
    if os.path.isdir(os.path.join(path, "state")):
        return path
    order = (BEST_DIR, CHECKPOINT_DIR, "") if which == "best" else (CHECKPOINT_DIR, BEST_DIR, "")
    for sub in order:
        base = os.path.join(path, sub) if sub else path
        if not os.path.isdir(base):
            continue
        steps = sorted(
            int(d)
            for d in os.listdir(base)
            if d.isdigit() and os.path.isdir(os.path.join(base, d, "state"))
        )
        if steps:
            return os.path.join(base, str(steps[-1]))
    raise FileNotFoundError(
        f"no checkpoint found in {path!r}: expected a run workdir (with {CHECKPOINT_DIR}/ or "
        f"{BEST_DIR}/), a checkpoint directory, or a step directory holding 'state/'"
    )


def transfer_params(
    target: Any,
    source: Mapping[str, np.ndarray],
    *,
    strip_prefixes: Sequence[str] = ("backbone/",),
    allow_missing: Sequence[str] = (),
    source_name: str = "checkpoint",
) -> tuple[Any, dict[str, list[str]]]:
    """Copy matching parameters from a flat ``source`` into the ``target`` tree by path.

    Args:
        target: Pure-dict parameter tree of the model being initialised (numpy or jax leaves).
        source: Flat ``{path: array}`` (e.g. from :func:`read_params`). Paths starting with one of
            ``strip_prefixes`` are also tried without it (pretraining models hold the segmenter
            under ``backbone``).
        allow_missing: Regexes of target paths that may be absent from the source (they keep
            their fresh initialisation); any other missing path is an error.
        source_name: Used in messages.

    Returns:
        ``(new_target, report)`` with ``report = {"loaded", "missing", "unexpected"}`` path lists.

    Raises:
        ValueError: on shape mismatches, or on missing keys not covered by ``allow_missing``.
    """
    renamed: dict[str, np.ndarray] = {}
    for key, value in source.items():
        new_key = key
        for prefix in strip_prefixes:
            if key.startswith(prefix):
                new_key = key[len(prefix) :]
                break
        renamed[new_key] = value
    loaded, missing, mismatched = [], [], []

    def pick(path, leaf):
        name = sharding_lib.path_to_str(path)
        if name not in renamed:
            missing.append(name)
            return leaf
        value = renamed[name]
        if tuple(np.shape(value)) != tuple(np.shape(leaf)):
            mismatched.append(f"{name}: {source_name} {np.shape(value)} vs model {np.shape(leaf)}")
            return leaf
        loaded.append(name)
        return np.asarray(value, dtype=np.asarray(leaf).dtype if hasattr(leaf, "dtype") else None)

    new_target = jax.tree_util.tree_map_with_path(pick, target)
    unexpected = sorted(set(renamed) - set(loaded) - set(missing))
    if mismatched:
        raise ValueError(
            f"{len(mismatched)} parameters of {source_name} have other shapes than the model: "
            + "; ".join(mismatched[:10])
            + ". Use a checkpoint of the same architecture (same config.model)."
        )
    patterns = [re.compile(p) for p in allow_missing]
    not_allowed = [m for m in missing if not any(p.search(m) for p in patterns)]
    if not_allowed:
        raise ValueError(
            f"{source_name} lacks {len(not_allowed)} parameters of the model: {not_allowed[:20]}"
            f"{' ...' if len(not_allowed) > 20 else ''}. Use a checkpoint of the same "
            "architecture (same config.model), or list the paths that may stay freshly "
            "initialised in config.init.allow_missing (regexes)."
        )
    report = {"loaded": loaded, "missing": sorted(missing), "unexpected": unexpected}
    logging.info(
        "Initialised %d/%d parameter arrays from %s; %d missing (fresh init), %d unused.",
        len(loaded),
        len(loaded) + len(missing),
        source_name,
        len(missing),
        len(unexpected),
    )
    return new_target, report
