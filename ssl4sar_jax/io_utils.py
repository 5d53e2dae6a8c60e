"""Atomic file writes: a reader never sees a half-written file.

Every output of the project (JSON summaries, metric histories, PNG pictures, ``.npz`` / ``.pth``
weights) goes through :func:`atomic_path`: the content is written to a temporary file in the
same folder (so the final rename stays on one file system) and ``os.replace``-d over the
target only once it is complete; on any error the temporary file is removed and the old
target, if any, is left untouched. The file gets ordinary permissions (``0o666`` minus the
umask, as any file the writer creates), unlike ``tempfile.mkstemp``'s ``0o600``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator, Mapping
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a fresh temporary path next to ``path``; renames it over ``path`` on success.

    The temporary path does not exist yet: the writer creates it (``open``, ``fig.savefig``,
    ``torch.save``, rasterio, pyogrio), so it gets the writer's ordinary permissions. It keeps
    the extension of ``path``, so format inference by extension still works, and its name
    starts with ``.tmp_``. Missing parent folders are created. A writer that produces no file
    makes the rename fail with ``FileNotFoundError`` naming the temporary path.

    Args:
        path: Final file path (a single file; not for formats with sidecar files).

    Yields:
        The temporary file's path.
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    stem, ext = os.path.splitext(name)
    tmp = os.path.join(folder, f".tmp_{stem}.{secrets.token_hex(6)}{ext}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike, mode: str = "w", *, durable: bool = False, **kwargs: Any
) -> Iterator[Any]:
    """``open(path, mode)`` that only replaces ``path`` once the ``with`` block succeeds.

    Args:
        path: Final file path.
        mode: A write mode (``"w"``, ``"wb"``, ...).
        durable: ``fsync`` the content before the rename (files whose loss after a power
            failure matters, e.g. checkpoint manifests).
        **kwargs: Passed to ``open`` (``encoding``, ``newline``, ...).
    """
    if not any(c in mode for c in "wx"):
        raise ValueError(f"atomic_open needs a write mode ('w' or 'wb'), got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode.replace("x", "w"), **kwargs) as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (newlines written as given)."""
    with atomic_open(path, "w", newline="") as f:
        f.write(text)


def write_lines_atomic(path: str | os.PathLike, lines: list[str]) -> None:
    """Writes ``lines`` (without newlines) to ``path`` atomically, one a line."""
    write_text_atomic(path, "".join(line + "\n" for line in lines))


def write_json_atomic(
    path: str | os.PathLike, payload: Mapping[str, Any] | list[Any], *, indent: int = 2, **kw: Any
) -> None:
    """Writes ``payload`` as JSON to ``path`` atomically.

    Args:
        path: Final file path.
        payload: JSON-serialisable object.
        indent: JSON indentation.
        **kw: Passed to ``json.dump`` (e.g. ``sort_keys=True``, ``default=str``).
    """
    with atomic_open(path, "w") as f:
        json.dump(payload, f, indent=indent, **kw)


def save_figure(fig: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> None:
    """Saves a matplotlib figure to ``path`` atomically and closes it (also on error).

    Args:
        fig: A ``matplotlib.figure.Figure``.
        path: Final file path.
        **savefig_kwargs: Passed to ``fig.savefig`` (``dpi``, ``format``, ...).
    """
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, **savefig_kwargs)
    finally:
        plt.close(fig)
