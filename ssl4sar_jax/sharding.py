"""Device mesh, shardings, multi-process start-up and global-array helpers (``jax.jit`` + ``NamedSharding``).

* The mesh comes from ``config.mesh`` — a list of ``(axis_name, size)`` with one ``-1`` — over
  ``jax.devices()`` (all processes). Axes are ``AxisType.Auto`` so GSPMD propagates shardings
  through convolutions (with ``AxisType.Explicit``, sharding parameters on the batch axis makes
  ``conv_general_dilated`` ask for an explicit ``out_sharding``). With several processes the
  ``"data"`` axis is laid out process by process, so process ``p`` holds rows
  ``[p * b, (p + 1) * b)`` of every global batch (what the data pipelines yield).
* Batches are sharded on their leading axis over ``"data"``.
* Parameters and optimiser state follow a named preset, ``config.sharding``:

  - ``"replicated"`` (default): every device holds everything (data parallelism);
  - ``"fsdp"``: every leaf of at least :data:`FSDP_MIN_SIZE` elements is split over ``"data"``
    on its largest dimension divisible by the data-axis size (ZeRO-3 / FSDP; XLA gathers a
    weight where it is used and reduce-scatters its gradient); leaves without such a dimension
    stay replicated;
  - ``"fsdp_tensor"``: for a 2-D ``data × model`` mesh: the Swin attention and MLP weights are
    split Megatron-style over ``"model"`` (``qkv``/``fc1`` by output features, ``proj``/``fc2``
    by input features) and over ``"data"`` on their other dimension; every other leaf is split
    over both axes together (all devices) where a dimension allows, else over ``"data"``.

  ``config.sharding_rules`` — ``(regex, spec)`` pairs matched against the ``/``-joined path of
  every leaf of the abstract train state — come first, e.g.
  ``(".*kernel", (None, None, None, "data"))``. A rule whose axes do not divide the leaf falls
  back to the preset (logged).
* Multi-host: :func:`initialize_distributed` starts ``jax.distributed`` from explicit arguments
  or a detected cluster (SLURM, Open MPI, TPU VM); each process holds
  ``global_batch / process_count`` examples and :func:`make_global_batch` assembles global arrays
  with ``jax.make_array_from_process_local_data``.

Design follows big_vision ``train.py`` / ``utils.infer_sharding`` (FSDP by largest divisible
dimension) and flax ``examples/lm1b``.
"""

from __future__ import annotations

import os
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
MODEL_AXIS = "model"
PRESETS = ("replicated", "fsdp", "fsdp_tensor")
# Leaves smaller than this stay replicated under FSDP (norm scales, biases: gathering them would
# cost more latency than their memory is worth).
FSDP_MIN_SIZE = 1024
# Megatron-style tensor parallelism of the Swin blocks: (path regex, spec) for "fsdp_tensor".
TENSOR_RULES = (
    (r"attn/qkv/kernel$", (DATA_AXIS, MODEL_AXIS)),
    (r"attn/(q_bias|v_bias)$", (MODEL_AXIS,)),
    (r"attn/proj/kernel$", (MODEL_AXIS, DATA_AXIS)),
    (r"mlp/fc1/kernel$", (DATA_AXIS, MODEL_AXIS)),
    (r"mlp/fc1/bias$", (MODEL_AXIS,)),
    (r"mlp/fc2/kernel$", (MODEL_AXIS, DATA_AXIS)),
)
# Environment variables that signal a managed multi-process launch (jax.distributed detects it).
CLUSTER_ENV = (
    "JAX_COORDINATOR_ADDRESS",
    "SLURM_JOB_ID",
    "OMPI_MCA_orte_hnp_uri",
    "TPU_WORKER_HOSTNAMES",
    "TPU_PROCESS_ADDRESSES",
    "MEGASCALE_COORDINATOR_ADDRESS",
)


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    enable: bool | None = None,
    initialization_timeout: int = 300,
) -> bool:
    """Start ``jax.distributed`` for a multi-process run (call before any JAX computation).

    Explicit arguments win (plain multi-host launch: the same ``coordinator_address``
    ``host:port`` on every process, ``process_id`` in ``[0, num_processes)``); otherwise a
    cluster environment (SLURM ``srun`` with more than one task, Open MPI, Cloud TPU VM) is
    detected by JAX. A single process without such an environment does nothing.

    Args:
        coordinator_address: ``host:port`` of process 0's coordinator service.
        num_processes: Number of processes.
        process_id: This process's index.
        enable: None = decide as above; True = always call ``jax.distributed.initialize`` (JAX
            detects the rest, e.g. on a TPU VM pod slice); False = never.
        initialization_timeout: Seconds to wait for all processes to connect.

    On CPU, cross-process collectives use gloo (``jax_cpu_collectives_implementation``).

    Returns:
        Whether ``jax.distributed`` was initialised.

    Raises:
        ValueError: when only some of the explicit arguments are given.
    """
    if enable is False:
        return False
    explicit = (coordinator_address, num_processes, process_id)
    if any(v not in (None, "") for v in explicit) and any(v in (None, "") for v in explicit):
        raise ValueError(
            "a plain multi-host launch needs all of --coordinator_address (host:port), "
            f"--num_processes and --process_id; got {explicit}"
        )
    if coordinator_address:
        if int(num_processes) <= 1:
            return False
        kwargs = dict(
            coordinator_address=coordinator_address,
            num_processes=int(num_processes),
            process_id=int(process_id),
        )
    else:
        if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
            return False  # a single SLURM task is an ordinary single-process run
        if not enable and not any(name in os.environ for name in CLUSTER_ENV):
            return False
        kwargs = {}
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(initialization_timeout=initialization_timeout, **kwargs)
    logging.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


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
    mesh = jax.make_mesh(tuple(sizes), names, axis_types=axis_types, devices=devices)
    if not _rows_follow_processes(mesh):
        # Topology-ordered meshes may interleave processes along "data"; order devices by
        # process instead, so each process's batch rows are one block (see process_batch_rows).
        ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
        mesh = Mesh(np.array(ordered).reshape(sizes), names, axis_types=axis_types)
        logging.info("mesh devices re-ordered by process for contiguous per-process batches")
    return mesh


def process_batch_rows(mesh: Mesh, global_batch: int, process: int | None = None) -> list[int]:
    """Rows of a ``[global_batch, ...]`` batch held by ``process`` (default: this one)."""
    process = jax.process_index() if process is None else process
    rows: set[int] = set()
    for device, index in batch_sharding(mesh).devices_indices_map((global_batch,)).items():
        if device.process_index == process:
            rows.update(range(*index[0].indices(global_batch)))
    return sorted(rows)


def _rows_follow_processes(mesh: Mesh) -> bool:
    """Whether process ``p`` holds rows ``[p * b, (p + 1) * b)`` of every batch."""
    count = jax.process_count()
    if count == 1:
        return True
    size = data_size(mesh)
    if size % count:
        return True  # a data axis inside one process's devices: nothing to order
    block = size // count
    return all(
        process_batch_rows(mesh, size, p) == list(range(p * block, (p + 1) * block))
        for p in range(count)
    )


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


def fsdp_spec(
    shape: Sequence[int],
    mesh: Mesh,
    min_size: int = FSDP_MIN_SIZE,
    axes: Sequence[str] = (DATA_AXIS,),
) -> tuple:
    """The FSDP spec of one leaf: ``axes`` on its largest divisible dimension, else ``()``.

    Ties go to the last such dimension (output features of kernels).
    """
    axes = tuple(axes)
    size = int(np.prod([mesh.shape[a] for a in axes]))
    if size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return ()
    candidates = [i for i, dim in enumerate(shape) if dim % size == 0 and dim >= size]
    if not candidates:
        return ()
    best = max(candidates, key=lambda i: (shape[i], i))
    entry = axes if len(axes) > 1 else axes[0]
    return tuple(entry if i == best else None for i in range(len(shape)))


def state_shardings(
    abstract_state: Any,
    mesh: Mesh,
    rules: Sequence[tuple[str, Sequence[Any]]] = (),
    preset: str = "replicated",
) -> Any:
    """Shardings for every leaf of an (abstract) train state.

    Args:
        abstract_state: Pytree of arrays or ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``).
        mesh: The device mesh.
        rules: ``[(regex, spec), ...]``; the first regex that ``re.search``-es the leaf path wins.
            ``spec`` is a tuple of mesh axis names / None per array dimension.
        preset: ``"replicated"``, ``"fsdp"`` or ``"fsdp_tensor"`` (module docstring), applied
            to the leaves no rule places.

    Returns:
        A pytree of ``NamedSharding`` with the structure of ``abstract_state``.

    Raises:
        ValueError: for an unknown preset, or ``"fsdp_tensor"`` on a mesh without ``"model"``.
    """
    if preset not in PRESETS:
        raise ValueError(f"config.sharding must be one of {PRESETS}, got {preset!r}")
    if preset == "fsdp_tensor" and MODEL_AXIS not in mesh.shape:
        raise ValueError(
            f"config.sharding='fsdp_tensor' needs a {MODEL_AXIS!r} mesh axis, e.g. "
            f"config.mesh=[('data', -1), ('model', 2)]; the mesh is {dict(mesh.shape)}"
        )
    compiled = [(re.compile(pattern), tuple(spec)) for pattern, spec in rules]
    if preset == "fsdp_tensor":
        compiled += [(re.compile(pattern), spec) for pattern, spec in TENSOR_RULES]

    def fits(shape, spec):
        # A rule with a data-axis entry that does not divide keeps its other axes.
        if _spec_fits(shape, spec, mesh):
            return spec
        if len(spec) <= len(shape):
            reduced = tuple(None if a == DATA_AXIS else a for a in spec)
            if any(a is not None for a in reduced) and _spec_fits(shape, reduced, mesh):
                return reduced
        return None

    def choose(path, leaf):
        name = path_to_str(path)
        shape = tuple(getattr(leaf, "shape", ()))
        for pattern, spec in compiled:
            if pattern.search(name):
                chosen = fits(shape, spec)
                if chosen is not None:
                    return NamedSharding(mesh, P(*chosen))
                logging.log_first_n(
                    logging.INFO,
                    "sharding rule %s does not fit %s %s: preset %s",
                    20,
                    pattern.pattern,
                    name,
                    shape,
                    preset,
                )
                break
        if preset == "fsdp_tensor":
            # Leaves outside the tensor rules: split over all devices where possible.
            spec = fsdp_spec(shape, mesh, axes=(DATA_AXIS, MODEL_AXIS)) or fsdp_spec(shape, mesh)
            return NamedSharding(mesh, P(*spec))
        if preset == "fsdp":
            return NamedSharding(mesh, P(*fsdp_spec(shape, mesh)))
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(choose, abstract_state)


def bytes_per_device(abstract_state: Any, shardings: Any) -> int:
    """Largest number of bytes of ``abstract_state`` any one device holds under ``shardings``."""
    per_device: dict[Any, int] = {}
    leaves = jax.tree.leaves(abstract_state)
    for leaf, sharding in zip(leaves, jax.tree.leaves(shardings), strict=True):
        shape = tuple(leaf.shape)
        nbytes = int(np.prod(sharding.shard_shape(shape), dtype=np.int64)) * leaf.dtype.itemsize
        for device in sharding.device_set:
            per_device[device] = per_device.get(device, 0) + nbytes
    return max(per_device.values()) if per_device else 0


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
