"""Persistent XLA compilation cache for the command line.

Compiling the jitted init, train step and predict function of the paper configuration takes
tens of seconds on a CPU host. JAX can store the compiled executables on disk, keyed by the
program, the JAX/jaxlib version, the device kind and the compile options, and reuse them on
the next launch of the same configuration (`jax.config` ``jax_compilation_cache_dir``). A
stale or foreign entry is never used, only recompiled, so the directory is safe to delete at
any time.

``config.compilation_cache_dir`` selects the directory:

* ``"auto"`` (default): a cache directory already configured for JAX
  (``JAX_COMPILATION_CACHE_DIR``) is kept as it is; otherwise ``$SSL4SAR_JAX_CACHE_DIR`` if
  set, else ``$XDG_CACHE_HOME/ssl4sar_jax/xla`` (``~/.cache/ssl4sar_jax/xla``),
* ``""`` or ``"none"``: no persistent cache,
* any other value: that directory (``~`` is expanded).
"""

from __future__ import annotations

import os

_ENV = "SSL4SAR_JAX_CACHE_DIR"
# Only programs that took at least this long to compile are written (JAX's default is 1 s;
# the small helper programs of a run are not worth a file each).
MIN_COMPILE_TIME_S = 0.5


def default_cache_dir() -> str:
    """The user cache directory used by ``compilation_cache_dir="auto"``."""
    if os.environ.get(_ENV):
        return os.path.expanduser(os.environ[_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ssl4sar_jax", "xla")


def resolve_cache_dir(setting: str | None) -> str | None:
    """Maps a ``compilation_cache_dir`` setting to a directory, or None (cache off).

    Args:
        setting: ``"auto"``, ``""`` / ``"none"`` / None, or a directory path.

    Returns:
        The absolute cache directory, or None when the cache is disabled.
    """
    if setting is None or str(setting).strip().lower() in ("", "none", "off"):
        return None
    if str(setting) == "auto":
        return os.path.abspath(default_cache_dir())
    return os.path.abspath(os.path.expanduser(str(setting)))


def enable_compilation_cache(setting: str | None = "auto") -> str | None:
    """Turns on JAX's persistent compilation cache (call before the first compilation).

    Args:
        setting: See `resolve_cache_dir`.

    Returns:
        The directory in use, or None if the cache is off.

    Raises:
        ValueError: If the directory cannot be created or written to (named in the message).
    """
    import jax

    if str(setting) == "auto" and jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir  # configured through JAX's own variable
    path = resolve_cache_dir(setting)
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"config.compilation_cache_dir={setting!r}: cannot create {path} ({err}); "
            "pass another directory or 'none' to disable the cache"
        ) from err
    if not os.access(path, os.W_OK):
        raise ValueError(
            f"config.compilation_cache_dir={setting!r}: {path} is not writable; "
            "pass another directory or 'none' to disable the cache"
        )
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_TIME_S)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
