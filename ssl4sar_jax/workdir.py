"""What a run may assume about its workdir: one writer, an honest history, explicit resets.

* :class:`WorkdirLock` — an exclusive OS-level lock (``fcntl.flock``) on
  ``{workdir}/workdir.lock``, which also records the holder (host, PID, start time). A second
  run on the same workdir stops at once, naming the holder. The kernel drops the lock when its
  process dies (``kill -9`` included), so a lock file left behind is *stale* and is taken over
  with a message. In a multi-process run (``jax.distributed``) only process 0 takes the lock
  and its outcome is broadcast, so every process stops together.
* :func:`check_fresh_start` — a workdir with history (``metrics.jsonl``, ``best_checkpoint/``,
  ``config.json``...) but no restorable checkpoint is refused unless ``config.overwrite``; with
  it, the old files are moved to ``{workdir}/overwritten/<UTC time>/`` (nothing is deleted).
* :func:`resume_config_changes` — the config stored in the checkpoint against the current one:
  every difference is printed; differences that change what the run means (model, data,
  batch size, seed, loss, optimiser type...) are refused unless named in
  ``config.allow_config_change``; the resumable ones (:data:`RESUMABLE`) take effect.
* :func:`record_config` — ``config.json`` is the current config; ``config_history.jsonl`` gets
  one row per start or resume with the step and the changes, so the workdir still says how
  steps 1..N were trained.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from absl import logging

from ssl4sar_jax import io_utils

LOCK_FILE = "workdir.lock"
CONFIG_FILE = "config.json"
CONFIG_HISTORY_FILE = "config_history.jsonl"
OVERWRITTEN_DIR = "overwritten"
# Files and folders that make a workdir "a run with history".
HISTORY_ENTRIES = (
    "checkpoints",
    "best_checkpoint",
    "metrics.jsonl",
    "config.json",
    CONFIG_HISTORY_FILE,
    "run_info.json",
    "tensorboard",
    "curves.png",
    "val",
)

# Process exit codes of ``python -m ssl4sar_jax.main`` (also in the README).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PREEMPTED = 42  # SIGTERM: the state was saved; rerun the same command to resume
EXIT_LOCKED = 75  # EX_TEMPFAIL: another live run holds the workdir

# Config keys (dotted; a prefix covers its sub-keys) that may change on resume and take effect.
RESUMABLE = (
    "name",
    "optim.learning_rate",
    "optim.plateau",
    "total_steps",
    "stop_after_steps",
    "log_every_steps",
    "val.every_steps",
    "val.at_start",
    "val.batch_size",
    "val.num_overlays",
    "val.write_pictures_every",
    "checkpoint",
    "num_devices",
    "num_cpu_devices",
    "mesh",
    "sharding_rules",
    "sharding",
    "data.data_dir",
    "data.manual_dir",
    "data.prepare",
)
# Keys that only matter for a fresh start or that steer this very check.
IGNORED_ON_RESUME = ("init", "overwrite", "allow_config_change")


class WorkdirLockedError(RuntimeError):
    """Another live process holds the workdir."""


class WorkdirHistoryError(RuntimeError):
    """The workdir holds a run's history but nothing to resume from."""


class ConfigChangeError(ValueError):
    """Resuming with a config that changes the meaning of the run."""


# ---------------------------------------------------------------------------- lock
def _holder_text(payload: str) -> str:
    try:
        info = json.loads(payload)
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info.get("started", 0)))
        return f"host {info.get('host')!r}, PID {info.get('pid')} (since {started})"
    except (ValueError, TypeError, AttributeError):
        return repr(payload[:200]) if payload else "an unknown process"


class WorkdirLock:
    """Exclusive lock of a workdir for the lifetime of a run (context manager).

    Args:
        workdir: The run directory (created if needed).
        enabled: False on processes that do not take the lock themselves (multi-process runs:
            :func:`acquire` passes ``jax.process_index() == 0``).
    """

    def __init__(self, workdir: str, enabled: bool = True):
        self.workdir = os.path.abspath(workdir)
        self.path = os.path.join(self.workdir, LOCK_FILE)
        self.enabled = enabled
        self._fd: int | None = None

    def acquire(self) -> WorkdirLock:
        """Take the lock or raise :class:`WorkdirLockedError` naming the holder (no waiting)."""
        if not self.enabled or self._fd is not None:
            return self
        os.makedirs(self.workdir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            previous = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise WorkdirLockedError(
                    f"The workdir {self.workdir} is in use by another run: "
                    f"{_holder_text(previous)} holds {self.path}. Two writers would corrupt "
                    "its checkpoints and history; wait for that run to end, stop it, or use "
                    "another --workdir."
                ) from None
            raise
        previous = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if previous:
            logging.warning(
                "Taking over the stale lock %s of %s (that process ended without releasing "
                "it). If that run is in fact alive on another host of a filesystem without "
                "cross-host locks, stop this one now.",
                self.path,
                _holder_text(previous),
            )
        info = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Clear the holder record and drop the lock."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkdirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def acquire(workdir: str) -> WorkdirLock:
    """Lock ``workdir`` for this run; in multi-process runs process 0 locks for all.

    Every process calls it; when process 0 cannot take the lock, every process raises
    :class:`WorkdirLockedError` (none of them goes on to write).
    """
    import jax

    lock = WorkdirLock(workdir, enabled=jax.process_index() == 0)
    error = None
    try:
        lock.acquire()
    except WorkdirLockedError as err:
        error = err
    if jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils

        failed = bool(multihost_utils.broadcast_one_to_all(np.asarray(error is not None)))
        if failed and error is None:
            lock.release()
            raise WorkdirLockedError(
                f"Process 0 could not lock the workdir {lock.workdir} (another run holds it)."
            )
    if error is not None:
        raise error
    return lock


# ---------------------------------------------------------------------------- fresh starts
def history_entries(workdir: str) -> list[str]:
    """The entries of :data:`HISTORY_ENTRIES` present (and non-empty) in ``workdir``."""
    found = []
    for name in HISTORY_ENTRIES:
        path = os.path.join(workdir, name)
        if os.path.isdir(path) and os.listdir(path):
            found.append(name)
        elif os.path.isfile(path) and os.path.getsize(path) > 0:
            found.append(name)
    return found


def check_fresh_start(workdir: str, overwrite: bool) -> None:
    """Allow a start from step 0 only in a workdir without history (or with ``overwrite``).

    Call it when no checkpoint can be restored (or ``overwrite`` is set). With ``overwrite``,
    the history is moved to ``{workdir}/overwritten/<UTC time>/`` on process 0.

    Raises:
        WorkdirHistoryError: naming what is there and the two ways on.
    """
    import jax

    found = history_entries(workdir)
    if jax.process_count() > 1:
        # Process 0 decides: a slower process could otherwise see the files process 0 has
        # started writing and stop alone, leaving the others waiting in a collective.
        import numpy as np
        from jax.experimental import multihost_utils

        seen = bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(found))))
        found = (found or ["files seen by process 0"]) if seen else []
    if not found:
        return
    if not overwrite:
        raise WorkdirHistoryError(
            f"The workdir {workdir} holds the history of a run ({', '.join(found)}) but no "
            "checkpoint that can be restored (see the messages above). Starting from step 0 "
            "would overwrite that history. Use another --workdir, or pass "
            "--config.overwrite=True to start anew (the old files are moved to "
            f"{os.path.join(workdir, OVERWRITTEN_DIR)}/<time>/)."
        )
    if jax.process_index() != 0:
        return
    target = os.path.join(workdir, OVERWRITTEN_DIR, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    os.makedirs(target, exist_ok=True)
    for name in found:
        os.replace(os.path.join(workdir, name), os.path.join(target, name))
    logging.warning("config.overwrite: moved %s of %s to %s", found, workdir, target)


# ---------------------------------------------------------------------------- honest resume
def flatten_config(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim.learning_rate": 0.01, ...}`` of a nested (JSON-like) config dict."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_config(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def _covered(key: str, prefixes: Iterable[str]) -> bool:
    return any(p == "*" or key == p or key.startswith(p + ".") for p in prefixes)


@dataclasses.dataclass
class ConfigChange:
    """One difference between the stored and the current config.

    Attributes:
        key: Dotted config key.
        old: Value stored in the checkpoint (``"<absent>"`` when the key is new).
        new: Current value.
        kind: ``"resumable"`` (takes effect), ``"allowed"`` (meaning-changing, accepted by
            ``config.allow_config_change``), ``"refused"`` or ``"ignored"`` (``init.*``...).
    """

    key: str
    old: Any
    new: Any
    kind: str

    def describe(self) -> str:
        effect = {
            "resumable": "takes effect",
            "allowed": "changes the run; allowed by config.allow_config_change",
            "refused": "changes the run",
            "ignored": "ignored on resume",
        }[self.kind]
        return f"{self.key}: {self.old!r} -> {self.new!r} ({effect})"


def _normalise(value: Any) -> Any:
    """JSON round trip so that tuples/lists and ints/floats compare as they are stored."""
    return json.loads(json.dumps(value, default=str))


def resume_config_changes(
    stored: Mapping[str, Any], current: Mapping[str, Any], allow: Sequence[str] = ()
) -> list[ConfigChange]:
    """Classify every difference between ``stored`` and ``current`` (nested config dicts)."""
    old, new = flatten_config(_normalise(stored)), flatten_config(_normalise(current))
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if a == b:
            continue
        if _covered(key, IGNORED_ON_RESUME):
            kind = "ignored"
        elif _covered(key, RESUMABLE):
            kind = "resumable"
        elif _covered(key, allow):
            kind = "allowed"
        else:
            kind = "refused"
        changes.append(ConfigChange(key, a, b, kind))
    return changes


def parse_allow(value: Any) -> list[str]:
    """``config.allow_config_change`` (``"seed,batch_size"``, ``"*"`` or a sequence) as a list."""
    if not value:
        return []
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    return [str(p) for p in value]


def check_resume_config(
    stored: Mapping[str, Any] | None,
    current: Mapping[str, Any],
    allow: Sequence[str],
    where: str,
) -> list[ConfigChange]:
    """Log every config difference on resume; refuse meaning-changing ones not allowed.

    Args:
        stored: Config saved with the checkpoint (None for checkpoints of older versions; then
            nothing can be compared and a warning says so).
        current: The config of this invocation.
        allow: Keys/prefixes from ``config.allow_config_change``.
        where: The checkpoint folder (for messages).

    Raises:
        ConfigChangeError: listing the refused differences and how to proceed.
    """
    if stored is None:
        logging.warning(
            "%s holds no config (older version): config changes cannot be checked.", where
        )
        return []
    changes = resume_config_changes(stored, current, allow)
    for change in changes:
        logging.warning("Config change on resume from %s: %s", where, change.describe())
    refused = [c for c in changes if c.kind == "refused"]
    if refused:
        keys = ",".join(c.key for c in refused)
        raise ConfigChangeError(
            f"Resuming from {where} with a config that changes the meaning of the run: "
            + "; ".join(c.describe() for c in refused)
            + ". The steps already trained used the stored values. Use a new --workdir (or "
            "--config.init.mode=workdir to start from these weights), or accept the change "
            f'with --config.allow_config_change="{keys}" (it is recorded in '
            f"{CONFIG_HISTORY_FILE})."
        )
    return changes


def record_config(
    workdir: str,
    config: Mapping[str, Any],
    step: int,
    changes: Sequence[ConfigChange] = (),
    event: str = "start",
) -> None:
    """Write ``config.json`` (current config) and append a row to ``config_history.jsonl``."""
    import jax

    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, CONFIG_FILE)
    io_utils.write_json_atomic(path, config, sort_keys=True, default=str)
    row = {
        "event": event,
        "step": int(step),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "changes": [dataclasses.asdict(c) for c in changes],
    }
    if event == "start":
        row["config"] = config
    with open(os.path.join(workdir, CONFIG_HISTORY_FILE), "a") as f:
        f.write(json.dumps(row, default=str) + "\n")
