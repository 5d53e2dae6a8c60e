"""Device mesh, shardings and global-array helpers (the pjit style: ``jax.jit`` + ``NamedSharding``).

* The mesh comes from ``config.mesh`` — a list of ``(axis_name, size)`` with one ``-1`` — over
  ``jax.devices()`` (all processes). Axes are ``AxisType.Auto`` so GSPMD propagates shardings
  through convolutions (with ``AxisType.Explicit``, sharding parameters on the batch axis makes
  ``conv_general_dilated`` ask for an explicit ``out_sharding``).
* Batches are sharded on their leading axis over ``"data"``.
* Parameters and optimiser state are replicated by default; ``config.sharding_rules`` — a list of
  ``(regex, spec)`` matched against the ``/``-joined path of every leaf of the abstract train
  state — shards larger models (e.g. ``(".*kernel", (None, None, None, "data"))`` for FSDP-style
  conv kernels). A rule whose axes do not divide the leaf falls back to replication (logged).
* Multi-host: each process holds ``global_batch / process_count`` examples and
  :func:`make_global_batch` assembles global arrays with ``jax.make_array_from_process_local_data``.

Design follows big_vision ``train.py`` / ``utils.infer_sharding`` and flax ``examples/lm1b``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ssl4sar_jax.param_utils import path_to_str  # noqa: F401  (re-exported: sharding rules match these paths)

DATA_AXIS = "data"


def make_mesh(
    mesh_axes: Sequence[tuple[str, int]] = ((DATA_AXIS, -1),),
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """Build a device mesh with ``Auto`` axis types.

    Args:
        mesh_axes: ``[(name, size), ...]``; one size may be ``-1`` (= all remaining devices).
            Must contain a ``"data"`` axis.
        devices: Devices to use (default: ``jax.devices()``, all processes).

    Returns:
        A ``jax.sharding.Mesh``.
    """
    devices = list(jax.devices() if devices is None else devices)
    names = tuple(str(name) for name, _ in mesh_axes)
    sizes = [int(size) for _, size in mesh_axes]
    if DATA_AXIS not in names:
        raise ValueError(f"config.mesh must contain a {DATA_AXIS!r} axis, got {names}")
    if sizes.count(-1) > 1:
        raise ValueError(f"config.mesh may contain at most one -1 size, got {list(mesh_axes)}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices cannot be split into mesh {list(mesh_axes)}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(
            f"mesh {dict(zip(names, sizes, strict=True))} needs {int(np.prod(sizes))} devices, "
            f"{len(devices)} available"
        )
    axis_types = (jax.sharding.AxisType.Auto,) * len(names)
    return jax.make_mesh(tuple(sizes), names, axis_types=axis_types, devices=devices)


def data_size(mesh: Mesh) -> int:
    """Number of devices along the data axis."""
    return int(mesh.shape[DATA_AXIS])


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``"data"``, the rest replicated."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding."""
    return NamedSharding(mesh, P())


def _spec_fits(shape: Sequence[int], spec: Sequence[Any], mesh: Mesh) -> bool:
    if len(spec) > len(shape):
        return False
    for dim, axes in zip(shape, spec, strict=False):
        if axes is None:
            continue
        names = axes if isinstance(axes, (tuple, list)) else (axes,)
        size = int(np.prod([mesh.shape[a] for a in names]))
        if dim % size:
            return False
    return True


def state_shardings(
    abstract_state: Any,
    mesh: Mesh,
    rules: Sequence[tuple[str, Sequence[Any]]] = (),
) -> Any:
    """Shardings for every leaf of an (abstract) train state.

    Args:
        abstract_state: Pytree of arrays or ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``).
        mesh: The device mesh.
        rules: ``[(regex, spec), ...]``; the first regex that ``re.search``-es the leaf path wins.
            ``spec`` is a tuple of mesh axis names / None per array dimension.

    Returns:
        A pytree of ``NamedSharding`` with the structure of ``abstract_state``.
    """
    compiled = [(re.compile(pattern), tuple(spec)) for pattern, spec in rules]

    def choose(path, leaf):
        name = path_to_str(path)
        shape = getattr(leaf, "shape", ())
        for pattern, spec in compiled:
            if pattern.search(name):
                if _spec_fits(shape, spec, mesh):
                    return NamedSharding(mesh, P(*spec))
                logging.log_first_n(
                    logging.INFO,
                    "sharding rule %s does not fit %s %s: replicated",
                    20,
                    pattern.pattern,
                    name,
                    shape,
                )
                break
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(choose, abstract_state)


def with_shardings(abstract_state: Any, shardings: Any) -> Any:
    """Attach shardings to an abstract state (``ShapeDtypeStruct`` leaves), e.g. for orbax restore."""
    return jax.tree.map(
        lambda leaf, sh: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sh),
        abstract_state,
        shardings,
    )


def local_batch_size(global_batch_size: int) -> int:
    """Examples each process loads: ``global / process_count`` (must divide)."""
    count = jax.process_count()
    if global_batch_size % count:
        raise ValueError(f"global batch {global_batch_size} is not divisible by {count} processes")
    return global_batch_size // count


def make_global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assemble per-process numpy batches into global arrays sharded on ``"data"``.

    Args:
        local_batch: ``{name: [B_local, ...]}`` numpy arrays of this process.
        mesh: The device mesh.

    Returns:
        ``{name: jax.Array [B_global, ...]}`` with the batch axis split over ``"data"``.
    """
    sharding = batch_sharding(mesh)
    return {
        name: jax.make_array_from_process_local_data(sharding, np.asarray(value))
        for name, value in local_batch.items()
    }
