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
import hashlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from ssl4sar_jax import io_utils
from ssl4sar_jax.param_utils import LoadReport, flatten_params, path_to_str

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best_checkpoint"
DATA_ITER_ITEM = "data_iter"


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the model/task of the current config."""


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


# ---------------------------------------------------------------------------- integrity
MANIFEST_FILE = "ssl4sar_manifest.json"
MANIFEST_FORMAT = "ssl4sar_jax checkpoint manifest v1"
QUARANTINE_DIR = "corrupt_checkpoints"
# Files orbax writes into every committed step (used to tell a legacy, manifest-less but
# complete checkpoint from an interrupted one).
_ORBAX_COMMITTED = ("_CHECKPOINT_METADATA", "state/_METADATA", "meta/metadata")


class CheckpointIntegrityError(RuntimeError):
    """A checkpoint step is incomplete or its files do not match their recorded checksums."""


class CheckpointSaveError(RuntimeError):
    """A (background) checkpoint save failed; the message names the path and the OS error."""


def _sha256(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _files_under(directory: str) -> list[str]:
    """Relative paths of every regular file below ``directory`` (sorted, manifest excluded)."""
    out = []
    for root, _, files in os.walk(directory):
        for name in files:
            rel = os.path.relpath(os.path.join(root, name), directory)
            # Leftover temporaries (".tmp" suffix, io_utils' ".tmp_" prefix) are not content.
            temporary = rel.endswith(".tmp") or os.path.basename(rel).startswith(".tmp_")
            if rel != MANIFEST_FILE and not temporary:
                out.append(rel)
    return sorted(out)


def write_manifest(step_dir: str, step: int | None = None) -> str:
    """Record the size and SHA-256 of every file of a committed checkpoint step.

    Written last (after orbax committed the step), atomically (temporary file, fsync,
    rename), so a step folder with a manifest is complete by construction.

    Returns:
        The manifest path.
    """
    files = {
        rel: {
            "bytes": os.path.getsize(os.path.join(step_dir, rel)),
            "sha256": _sha256(os.path.join(step_dir, rel)),
        }
        for rel in _files_under(step_dir)
    }
    payload = {
        "format": MANIFEST_FORMAT,
        "step": step,
        "files": files,
        # The manifest checks itself too: a damaged manifest is named as such, not as the files
        # whose (damaged) names it lists.
        "files_sha256": _files_digest(files),
        "written": time.time(),
    }
    path = os.path.join(step_dir, MANIFEST_FILE)
    with io_utils.atomic_open(path, "w", durable=True) as f:
        json.dump(payload, f, indent=1, sort_keys=True)
    return path


@dataclasses.dataclass
class StepCheck:
    """Result of :func:`verify_step_dir`.

    Attributes:
        path: The step folder.
        step: Its step number.
        status: ``"verified"`` (manifest present and every file matches), ``"unverified"``
            (complete orbax checkpoint without a manifest: written by an older ssl4sar_jax, or
            the run was killed between the orbax commit and the manifest) or ``"invalid"``.
        reason: Why it is not verified (empty when verified).
    """

    path: str
    step: int
    status: str
    reason: str = ""

    @property
    def verified(self) -> bool:
        return self.status == "verified"


def verify_step_dir(step_dir: str) -> StepCheck:
    """Check one checkpoint step folder against its manifest (sizes and SHA-256 of all files)."""
    step_dir = os.path.abspath(step_dir)
    name = os.path.basename(step_dir)
    step = int(name) if name.isdigit() else -1
    if not os.path.isdir(step_dir):
        return StepCheck(step_dir, step, "invalid", f"{step_dir} is not a folder")
    if not os.listdir(step_dir):
        return StepCheck(
            step_dir, step, "invalid", f"empty step folder {step_dir} (the save never started)"
        )
    manifest_path = os.path.join(step_dir, MANIFEST_FILE)
    if not os.path.exists(manifest_path):
        missing = [f for f in _ORBAX_COMMITTED if not os.path.exists(os.path.join(step_dir, f))]
        if missing:
            return StepCheck(
                step_dir,
                step,
                "invalid",
                f"incomplete checkpoint: {os.path.join(step_dir, missing[0])} is missing and "
                f"there is no {MANIFEST_FILE} (the save was interrupted)",
            )
        return StepCheck(
            step_dir,
            step,
            "unverified",
            f"no {MANIFEST_FILE} in {step_dir} (written by an older version, or stopped between "
            "the commit and the manifest): its files cannot be checked",
        )
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
        files = manifest["files"]
        digest = manifest.get("files_sha256")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return StepCheck(step_dir, step, "invalid", f"unreadable manifest {manifest_path}: {err}")
    if digest is not None and digest != _files_digest(files):
        return StepCheck(
            step_dir,
            step,
            "invalid",
            f"the manifest {manifest_path} is corrupt (its digest differs)",
        )
    problems = []
    for rel, entry in sorted(files.items()):
        path = os.path.join(step_dir, rel)
        if not os.path.exists(path):
            problems.append(f"{path} is missing")
            continue
        size = os.path.getsize(path)
        if size != entry["bytes"]:
            problems.append(f"{path} has {size} bytes, {entry['bytes']} were written")
        elif _sha256(path) != entry["sha256"]:
            problems.append(f"{path} is corrupt (SHA-256 differs from the one recorded at save)")
        if len(problems) >= 3:
            break
    if problems:
        return StepCheck(step_dir, step, "invalid", "; ".join(problems))
    return StepCheck(step_dir, step, "verified")


def _files_digest(files: dict[str, Any]) -> str:
    """SHA-256 of the manifest's file table (canonical JSON)."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def step_dirs(directory: str) -> list[str]:
    """Step folders (numeric names) of a ``checkpoints``/``best_checkpoint`` folder, newest first."""
    if not os.path.isdir(directory):
        return []
    steps = sorted(
        (
            int(d)
            for d in os.listdir(directory)
            if d.isdigit() and os.path.isdir(os.path.join(directory, d))
        ),
        reverse=True,
    )
    return [os.path.join(directory, str(s)) for s in steps]


def read_step_meta(step_dir: str) -> dict[str, Any]:
    """The JSON ``meta`` item of a step folder (``{}`` when absent or unreadable)."""
    path = os.path.join(step_dir, "meta", "metadata")
    try:
        with open(path) as f:
            return dict(json.load(f))
    except (OSError, ValueError, TypeError):
        return {}


@dataclasses.dataclass
class ResumePoint:
    """The checkpoint a run continues from (see :func:`select_resume_point`).

    Attributes:
        step: Step number.
        best: True when it is the best checkpoint (no usable periodic one was left).
        path: Its folder.
        verified: False for a legacy checkpoint without a manifest.
        skipped: Newer checkpoints that were not usable (with the reason).
    """

    step: int
    best: bool
    path: str
    verified: bool
    skipped: list[StepCheck] = dataclasses.field(default_factory=list)


def _quarantine(workdir: str, check: StepCheck) -> str:
    """Move a step folder out of orbax's sight, into ``{workdir}/corrupt_checkpoints``."""
    parent = os.path.basename(os.path.dirname(check.path))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = os.path.join(workdir, QUARANTINE_DIR, f"{parent}-{check.step}-{check.status}-{stamp}")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(check.path, target)
    return target


def _healthy(step_dir: str) -> tuple[bool, str]:
    health = read_step_meta(step_dir).get("health") or {}
    if health.get("ok", True):
        return True, ""
    return False, f"{step_dir} was saved while the run diverged ({health.get('reason', '')})"


def select_resume_point(workdir: str, quarantine: bool = True) -> ResumePoint | None:
    """Pick the newest checkpoint of ``workdir`` that passes its integrity check.

    Order: periodic checkpoints newest first, then the best checkpoint; a checkpoint marked as
    diverged at save is skipped. Every newer checkpoint that is skipped is logged with its path
    and the reason (missing file, checksum mismatch, empty folder...). Only when no checkpoint
    is verified, the newest complete *unverified* one (no manifest: an older version's) is used,
    with a warning. Invalid step folders are moved to ``{workdir}/corrupt_checkpoints/`` (when
    ``quarantine``), and so are the unused periodic steps newer than the resume point, so that
    orbax neither restores nor counts them.

    Multi-process runs: call it on every process; process 0 decides (and moves folders), the
    others receive its choice.

    Returns:
        The resume point, or None when the workdir holds no usable checkpoint.
    """
    workdir = os.path.abspath(workdir)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        point = _select_resume_point(workdir, quarantine and jax.process_index() == 0)
        encoded = np.asarray(
            [-1, 0, 0] if point is None else [point.step, int(point.best), int(point.verified)],
            np.int64,
        )
        encoded = np.asarray(multihost_utils.broadcast_one_to_all(encoded))
        if encoded[0] < 0:
            return None
        best = bool(encoded[1])
        path = os.path.join(workdir, BEST_DIR if best else CHECKPOINT_DIR, str(int(encoded[0])))
        return ResumePoint(int(encoded[0]), best, path, bool(encoded[2]))
    return _select_resume_point(workdir, quarantine)


def _select_resume_point(workdir: str, quarantine: bool) -> ResumePoint | None:
    skipped: list[StepCheck] = []
    unverified: list[tuple[StepCheck, bool]] = []
    chosen = None
    for best, sub in ((False, CHECKPOINT_DIR), (True, BEST_DIR)):
        for step_dir in step_dirs(os.path.join(workdir, sub)):
            check = verify_step_dir(step_dir)
            if check.verified:
                ok, reason = _healthy(step_dir)
                if not ok:
                    skipped.append(StepCheck(step_dir, check.step, "diverged", reason))
                    continue
                chosen = ResumePoint(check.step, best, step_dir, True)
                break
            if check.status == "unverified":
                unverified.append((check, best))
            skipped.append(check)
        if chosen is not None:
            break
    if chosen is None and unverified:
        check, best = unverified[0]
        logging.warning("No verified checkpoint in %s; using %s", workdir, check.reason)
        chosen = ResumePoint(check.step, best, check.path, False)
    for check in skipped:
        if chosen is not None and check.path == chosen.path:
            continue
        moved = ""
        # Invalid folders, and every periodic step newer than the resume point (it will be
        # recomputed; left in place, orbax would count it and the loop would not save it again).
        periodic = os.path.basename(os.path.dirname(check.path)) == CHECKPOINT_DIR
        newer = chosen is not None and periodic and (chosen.best or check.step > chosen.step)
        if quarantine and (check.status == "invalid" or newer):
            moved = f"; moved to {_quarantine(workdir, check)}"
        if chosen is not None:
            logging.warning(
                "Checkpoint %s is not usable: %s%s. Falling back to %s.",
                check.path,
                check.reason,
                moved,
                chosen.path,
            )
        else:
            logging.warning("Checkpoint %s is not usable: %s%s.", check.path, check.reason, moved)
    if chosen is not None:
        chosen.skipped = [c for c in skipped if c.path != chosen.path]
    return chosen


# ---------------------------------------------------------------------------- saving
class _OrbaxErrorStash:
    """Logging filter: hold back orbax's ERROR records while one of our saves is in flight.

    A failed save is reported once, by :class:`RunCheckpointer`, with the path and the OS error;
    orbax's own tracebacks of the same failure (several per array) would only bury it. Records
    of a save that then succeeds are re-emitted as warnings.
    """

    def __init__(self):
        self.active = False
        self.held: list[Any] = []

    def filter(self, record) -> bool:
        import logging as std_logging

        path = getattr(record, "pathname", "") or ""
        if self.active and record.levelno >= std_logging.ERROR and "orbax" in path:
            if len(self.held) < 5:
                self.held.append(record.getMessage()[:2000])
            return False
        return True


class _TensorStoreEchoes:
    """Drop the echoes of a failed TensorStore write; the failure itself is reported once.

    When one write of a save fails (e.g. ENOSPC), orbax's event loop ends while TensorStore
    still completes the other writes of that save; each completion then raises
    ``RuntimeError: Event loop is closed`` inside a TensorStore callback, which Python reports
    through ``sys.unraisablehook`` (as a bare traceback) -- often *before* the failure reaches
    our save thread, so the filter must already be in place when the save starts. The
    abandoned write coroutines also print "Exception ignored" at exit, and asyncio logs each
    failed write task ("Task exception was never retrieved"): hundreds of lines that would bury
    the one error that matters.

    Installed with the first save: the exact "Event loop is closed" RuntimeError (through either
    hook) and asyncio's orbax task messages are always dropped (they only ever arise from this
    race); the broader exit-time echoes (serialization coroutines, ImportError during
    interpreter shutdown) only after a save failed (``failed``). Everything else still goes to
    the previous hooks.
    """

    dropped = 0
    failed = False
    _installed = False

    @staticmethod
    def _is_closed_loop(value: BaseException | None) -> bool:
        return isinstance(value, RuntimeError) and str(value) == "Event loop is closed"

    @classmethod
    def install(cls) -> None:
        if cls._installed:
            return
        cls._installed = True
        previous_except, previous_unraisable = sys.excepthook, sys.unraisablehook

        def excepthook(kind, value, tb):
            if cls._is_closed_loop(value):
                cls.dropped += 1
                return
            previous_except(kind, value, tb)

        def unraisablehook(unraisable):
            value = unraisable.exc_value
            if cls._is_closed_loop(value) or (
                cls.failed
                and (
                    "serializ" in repr(getattr(unraisable, "object", ""))
                    or isinstance(value, (ImportError, RuntimeError))
                )
            ):
                cls.dropped += 1
                return
            previous_unraisable(unraisable)

        sys.excepthook, sys.unraisablehook = excepthook, unraisablehook

        class _FailedOrbaxTasks:
            """asyncio's "Task exception was never retrieved" for orbax's write tasks."""

            def filter(self, record) -> bool:
                message = record.getMessage()
                if "never retrieved" in message and "orbax" in message:
                    cls.dropped += 1
                    return False
                return True

        import logging as std_logging

        std_logging.getLogger("asyncio").addFilter(_FailedOrbaxTasks())


def _error_text(err: BaseException, limit: int = 800) -> str:
    """The most useful line of an exception chain: an OSError's text, else the first line."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            where = f" ({seen.filename})" if seen.filename else ""
            return f"{seen.strerror} [errno {seen.errno}]{where}"
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:limit]}"


class RunCheckpointer:
    """Periodic/final/best checkpoints of one training run in ``workdir``.

    Saves run in one background thread (when ``async_save``): the train state is copied on the
    devices first (the loop donates its buffers), orbax writes and commits the step
    synchronously in that thread, then :func:`write_manifest` records the checksums. A failure
    is kept and raised as :class:`CheckpointSaveError` by the next :meth:`check` (the loop
    calls it every step), :meth:`save` or :meth:`wait`. Only process 0 writes manifests; every
    process takes part in the orbax save.

    Args:
        workdir: Run directory.
        keep: Number of periodic checkpoints kept.
        async_save: Save in a background thread.
    """

    def __init__(self, workdir: str, keep: int = 2, async_save: bool = True):
        self.workdir = os.path.abspath(workdir)
        self.async_save = bool(async_save)
        # orbax itself saves synchronously, in our thread; temporary folders of a killed save
        # are removed when the managers are created.
        options = dict(enable_async_checkpointing=False, create=True, cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(
            os.path.join(self.workdir, CHECKPOINT_DIR),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, **options),
            item_names=("state", "meta", DATA_ITER_ITEM),
        )
        self.best_manager = ocp.CheckpointManager(
            os.path.join(self.workdir, BEST_DIR),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, **options),
            item_names=("state", "meta", DATA_ITER_ITEM),
        )
        self._thread: threading.Thread | None = None
        self._error: CheckpointSaveError | None = None
        self.last_committed: dict[bool, int | None] = {
            False: self.manager.latest_step(),
            True: self.best_manager.latest_step(),
        }
        self._stash = _OrbaxErrorStash()

    def _directory(self, best: bool) -> str:
        return os.path.join(self.workdir, BEST_DIR if best else CHECKPOINT_DIR)

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
        ``meta`` is written by process 0, ``data_iter`` by every process into its own file);
        ``best`` saves to the best slot.

        Raises:
            CheckpointSaveError: if an earlier background save failed.
        """
        self.wait(at_step=step)
        manager = self.best_manager if best else self.manager
        if step in manager.all_steps():
            return  # already saved at this step (e.g. final save right after a periodic one)
        if self.async_save:
            # Copies on the devices (asynchronous dispatch): the loop donates ``state``.
            state = jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, state)
            self._thread = threading.Thread(
                target=self._write,
                args=(manager, step, state, dict(meta), best, data_iter),
                name=f"ssl4sar-checkpoint-save-{step}",
                daemon=True,
            )
            self._thread.start()
        else:
            self._write(manager, step, state, dict(meta), best, data_iter)
            self.check(at_step=step)

    def _write(
        self,
        manager,
        step: int,
        state: Any,
        meta: dict,
        best: bool,
        data_iter: Mapping[str, Any] | None,
    ) -> None:
        step_dir = os.path.join(self._directory(best), str(step))
        import logging as std_logging

        logger = std_logging.getLogger("absl")
        _TensorStoreEchoes.install()
        self._stash.active, self._stash.held = True, []
        logger.addFilter(self._stash)
        try:
            items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
            if data_iter is not None:
                items[DATA_ITER_ITEM] = ProcessStateSave(dict(data_iter))
            manager.save(step, args=ocp.args.Composite(**items), force=True)
            manager.wait_until_finished()
            if not os.path.isdir(step_dir):
                raise CheckpointSaveError(f"orbax did not commit {step_dir}")
            if jax.process_index() == 0:
                write_manifest(step_dir, step)
            self.last_committed[best] = step
        except BaseException as err:  # noqa: BLE001 - reported by check()
            newest = self.last_committed[False]
            self._error = CheckpointSaveError(
                f"Saving checkpoint {step_dir} failed: {_error_text(err)}. The newest complete "
                f"checkpoint is {os.path.join(self._directory(False), str(newest)) if newest is not None else 'none'}. "
                "Fix the cause (e.g. free disk space), then rerun the same command to resume."
            )
            self._error.__cause__ = err
            self._stash.held = []
            _TensorStoreEchoes.failed = True
        finally:
            self._stash.active = False
            logger.removeFilter(self._stash)
            for message in self._stash.held:
                logging.warning("orbax (save of %s succeeded): %s", step_dir, message)

    def check(self, at_step: int | None = None) -> None:
        """Raise the error of a failed background save, if any (cheap; call every step).

        Args:
            at_step: The loop's current step, named in the message.

        Raises:
            CheckpointSaveError: with the step folder and the OS error.
        """
        if self._error is not None:
            error, self._error = self._error, None
            if at_step is not None:
                error.args = (f"{error.args[0]} The run stopped at step {at_step}.",)
            raise error

    def wait(self, at_step: int | None = None) -> None:
        """Block until the background save is committed (and its manifest written).

        Args:
            at_step: The loop's current step, named in the message of a failure.

        Raises:
            CheckpointSaveError: if it failed.
        """
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.check(at_step=at_step)

    def close(self) -> CheckpointSaveError | None:
        """Wait for the pending save and release the managers.

        Returns (rather than raises, so that it can run in a ``finally``) the error of a failed
        save, if any.
        """
        error = None
        try:
            self.wait()
        except CheckpointSaveError as err:
            error = err
        self.manager.close()
        self.best_manager.close()
        return error

    def retract(self, step: int, reason: str) -> str | None:
        """Withdraw periodic checkpoint ``step`` (found diverged after it was saved).

        The folder is moved to ``{workdir}/corrupt_checkpoints/`` (kept for inspection, out of
        orbax's sight) on process 0. Returns the new path, or None if there was no such step.
        """
        self.wait()
        step_dir = os.path.join(self._directory(False), str(step))
        target = None
        if jax.process_index() == 0 and os.path.isdir(step_dir):
            target = _quarantine(self.workdir, StepCheck(step_dir, step, "diverged", reason))
            logging.warning("Checkpoint %s withdrawn (%s); moved to %s", step_dir, reason, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"ssl4sar_retract_{step}")
        self.manager.reload()
        self.last_committed[False] = self.manager.latest_step()
        return target

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

        The step folder is verified against its manifest first (use
        :func:`select_resume_point` to choose a step that passes).

        Raises:
            CheckpointIntegrityError: if the step folder is incomplete or corrupt.
            CheckpointMismatchError: if the checkpoint was written for other parameter shapes.
        """
        manager = self.best_manager if best else self.manager
        step = manager.latest_step() if step is None else step
        step_dir = os.path.join(self._directory(best), str(step))
        check = verify_step_dir(step_dir)
        if check.status == "invalid":
            raise CheckpointIntegrityError(f"Cannot restore {step_dir}: {check.reason}")
        meta = self.restore_meta(step, best=best)
        saved_shapes = meta.get("param_shapes")
        if saved_shapes is not None:
            difference = describe_shape_mismatch(saved_shapes, expected_shapes)
            if difference:
                raise CheckpointMismatchError(
                    f"The checkpoint {step_dir} was written for a different model "
                    f"(task {meta.get('task')!r}): {difference}. Use a new --workdir for this "
                    "config, or point --workdir at the run this config belongs to."
                )
        items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        if os.path.isdir(os.path.join(step_dir, DATA_ITER_ITEM)):
            items[DATA_ITER_ITEM] = ProcessStateRestore()
        try:
            restored = manager.restore(step, args=ocp.args.Composite(**items))
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointMismatchError(
                f"Cannot restore {step_dir} into the current train state: {_error_text(err)}. "
                "Its files passed the integrity check and its parameter shapes match, so the "
                "train state differs otherwise (optimizer or dtype of another config); use a "
                "new --workdir for this config."
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

    Raises:
        CheckpointIntegrityError: if the (explicitly named) step folder is corrupt.
    """
    if which not in ("best", "latest"):
        raise ValueError(f"which must be 'best' or 'latest', got {which!r}")
    step_dir = resolve_step_dir(checkpoint_dir, which)
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


def resolve_step_dir(path: str, which: str = "best") -> str:
    """The step folder a path names: itself, or the newest verified step of a run/checkpoint dir.

    Corrupt or incomplete steps are skipped with a warning naming them; a step folder named
    explicitly must pass its integrity check.

    Raises:
        FileNotFoundError: when there is no checkpoint.
        CheckpointIntegrityError: when the named step folder (or every step) is corrupt.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"init checkpoint {path!r} does not exist")
    if os.path.isdir(os.path.join(path, "state")):
        check = verify_step_dir(path)
        if check.status == "invalid":
            raise CheckpointIntegrityError(f"Cannot read {path}: {check.reason}")
        if check.status == "unverified":
            logging.warning("Reading %s without integrity check: %s", path, check.reason)
        return path
    order = (BEST_DIR, CHECKPOINT_DIR, "") if which == "best" else (CHECKPOINT_DIR, BEST_DIR, "")
    problems = []
    for sub in order:
        base = os.path.join(path, sub) if sub else path
        for step_dir in step_dirs(base):
            check = verify_step_dir(step_dir)
            if check.status == "invalid":
                logging.warning("Skipping checkpoint %s: %s", step_dir, check.reason)
                problems.append(check.reason)
                continue
            if check.status == "unverified":
                logging.warning("Reading %s without integrity check: %s", step_dir, check.reason)
            return step_dir
    if problems:
        raise CheckpointIntegrityError(
            f"no usable checkpoint in {path!r}: " + "; ".join(problems[:3])
        )
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
) -> tuple[Any, LoadReport]:
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
        ``(new_target, report)``: a `LoadReport` with the ``loaded``, ``missing`` and
        ``unexpected`` path lists (the same type the PyTorch converter returns).

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
        name = path_to_str(path)
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
    report = LoadReport(
        loaded=loaded,
        missing=sorted(missing),
        unexpected=unexpected,
        num_loaded_values=sum(int(np.size(renamed[k])) for k in loaded),
    )
    logging.info(
        "Initialised %d/%d parameter arrays from %s; %d missing (fresh init), %d unused.",
        len(loaded),
        len(loaded) + len(missing),
        source_name,
        len(missing),
        len(unexpected),
    )
    return new_target, report


# ---------------------------------------------------------------------------- run set-up
def open_run(config: Any, workdir: str) -> tuple[RunCheckpointer, ResumePoint | None]:
    """The checkpointer of a run and the checkpoint it resumes from (None: fresh start).

    Chooses the newest verified checkpoint (:func:`select_resume_point`); when there is none,
    or ``config.overwrite`` is set, the workdir must be free of history
    (:func:`ssl4sar_jax.workdir.check_fresh_start`). Call it with the workdir locked.
    """
    from ssl4sar_jax import workdir as workdir_lib

    overwrite = bool(config.get("overwrite", False))
    point = None if overwrite else select_resume_point(workdir)
    if point is None:
        workdir_lib.check_fresh_start(workdir, overwrite)
    elif point.skipped or point.best:
        logging.warning("Resuming from %s (see above for the newer ones left out).", point.path)
    checkpointer = RunCheckpointer(
        workdir, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save
    )
    return checkpointer, point


def config_to_dict(config: Any) -> dict[str, Any]:
    """A ConfigDict as the plain JSON dict stored in checkpoints and ``config.json``."""
    return json.loads(config.to_json_best_effort())


@dataclasses.dataclass
class Restored:
    """What :func:`restore_run` gives back.

    Attributes:
        state: The train state, on the target shardings.
        meta: The checkpoint's JSON metadata.
        changes: ``ssl4sar_jax.workdir.ConfigChange`` list (stored -> current config).
        new_learning_rate: Set when ``config.optim.learning_rate`` differs from the stored
            config: it is already in ``state["opt_state"]``; apply it to host-side schedulers.
        restored_learning_rate: The rate in the optimizer state as saved.
    """

    state: Any
    meta: dict[str, Any]
    changes: list[Any]
    new_learning_rate: float | None
    restored_learning_rate: float | None


def restore_run(
    config: Any,
    checkpointer: RunCheckpointer,
    point: ResumePoint,
    abstract_target: Any,
    expected_shapes: Mapping[str, Sequence[int]],
) -> Restored:
    """Restore ``point`` and check the current config against the stored one.

    Every difference is logged; meaning-changing ones must be allowed
    (``config.allow_config_change``); a changed learning rate is written into the restored
    ``inject_hyperparams`` optimizer state, so that it takes effect.

    Raises:
        ssl4sar_jax.workdir.ConfigChangeError: for meaning-changing differences not allowed.
    """
    from ssl4sar_jax import optim
    from ssl4sar_jax import workdir as workdir_lib

    logging.info("Resuming from %s", point.path)
    state, meta = checkpointer.restore(
        abstract_target, expected_shapes, step=point.step, best=point.best
    )
    changes = workdir_lib.check_resume_config(
        meta.get("config"),
        config_to_dict(config),
        workdir_lib.parse_allow(config.get("allow_config_change", "")),
        point.path,
    )
    try:
        restored_lr = optim.get_learning_rate(state["opt_state"])
    except (AttributeError, KeyError, TypeError):
        restored_lr = None
    new_lr = None
    if any(c.key == "optim.learning_rate" for c in changes):
        new_lr = float(config.optim.learning_rate)
        state = {**state, "opt_state": optim.set_learning_rate(state["opt_state"], new_lr)}
        logging.warning(
            "Learning rate %s -> %g in the restored optimizer state.", restored_lr, new_lr
        )
    return Restored(state, meta, changes, new_lr, restored_lr)
