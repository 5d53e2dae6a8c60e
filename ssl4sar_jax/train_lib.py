"""THE training loop of ssl4sar_jax: pretraining (OptSimMIM, OptTranslator) and fine-tuning.

One loop, many tasks (``ssl4sar_jax.tasks``). The loop owns everything that is not the
objective:

* a device mesh and explicit shardings (batch on ``"data"``, state replicated or by rules);
* the train state ``{"step", "params", "opt_state"}`` created by a jitted init with
  ``out_shardings`` (never materialised on one device first);
* a pure jitted ``train_step(state, batch, rng) -> (state, metrics)`` with donation; the dropout
  key is ``fold_in(base_key, step)`` (then per micro-batch), so results do not depend on the
  number of devices; gradient accumulation over ``config.grad_accum_steps`` micro-batches
  (``lax.scan``) keeps the global batch fixed whatever the device count;
* resume order: the workdir's latest checkpoint > ``config.init`` > scratch; checkpoints hold the
  state, the data-iterator state and the reduce-on-plateau state; SIGTERM saves, then exits;
* validation through the task (fine-tuning: stitched val images → fronts → MDE/IoU; pretraining:
  val loss driving reduce-on-plateau), best checkpoint by the task's selection metric;
* TensorBoard events, a JSONL history, console progress (steps/s, ETA), ``config.json`` and
  ``run_info.json`` (parameter count) in the workdir, a curves PNG at the end;
* a NaN/Inf guard that stops with the step number and keeps the last good checkpoint.

Design anchors: big_vision ``train.py`` (jit + shardings, NaN guard, resume order), flax
``examples/gemma/train.py`` and ``examples/lm1b`` (NNX + mesh + abstract init), MaxText
``checkpointing.py`` (data iterator in the checkpoint, preemption save).
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from ssl4sar_jax import checkpointing, metrics_lib, optim
from ssl4sar_jax import sharding as sharding_lib
from ssl4sar_jax.tasks import base as task_base
from ssl4sar_jax.tasks import get_task

TrainState = dict[str, Any]


# ---------------------------------------------------------------------------- state
def make_init_fn(task: task_base.Task, tx: optax.GradientTransformation, seed: int):
    """``init() -> (state, rest)``: fresh train state and non-parameter model variables."""

    def init():
        model = task.build_model(seed)
        _, params, rest = nnx.split(model, nnx.Param, ...)
        params = nnx.to_pure_dict(params)
        state = {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "opt_state": tx.init(params),
        }
        return state, nnx.to_pure_dict(rest)

    return init


def graphdef_of(task: task_base.Task, seed: int) -> Any:
    """The static graph definition of the task's model (no parameters allocated)."""
    abstract_model = nnx.eval_shape(lambda: task.build_model(seed))
    return nnx.split(abstract_model, nnx.Param, ...)[0]


def count_params(params: Any) -> int:
    """Number of scalar parameters of a parameter tree."""
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))


# ---------------------------------------------------------------------------- steps
def make_train_step(
    task: task_base.Task,
    graphdef: Any,
    tx: optax.GradientTransformation,
    grad_accum_steps: int,
    mesh: jax.sharding.Mesh,
) -> Callable[[TrainState, Any, Mapping[str, jax.Array], jax.Array], tuple[TrainState, dict]]:
    """The pure train step ``(state, rest, batch, base_key) -> (state, metrics)``.

    Micro-batch ``a`` of ``A = grad_accum_steps`` is ``batch[a::A]`` (strided, so every device
    holds an equal share of every micro-batch); gradients and metrics are averaged over the
    micro-batches, as Lightning's ``accumulate_grad_batches`` does (loss / A per micro-batch).
    """
    accum = int(grad_accum_steps)

    def loss_on(params, rest, micro_batch, key):
        model = nnx.merge(graphdef, params, rest)
        return task.loss_fn(model, micro_batch, key)

    grad_fn = jax.value_and_grad(loss_on, has_aux=True)

    def train_step(state, rest, batch, base_key):
        params = state["params"]
        key = jax.random.fold_in(base_key, state["step"])
        if accum == 1:
            (_, metrics), grads = grad_fn(params, rest, batch, jax.random.fold_in(key, 0))
        else:

            def split(x):
                micro = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
                spec = jax.sharding.PartitionSpec(None, sharding_lib.DATA_AXIS)
                return jax.lax.with_sharding_constraint(
                    micro, jax.sharding.NamedSharding(mesh, spec)
                )

            micro_batches = jax.tree.map(split, dict(batch))

            def body(carry, xs):
                grad_sum, metric_sum = carry
                micro_batch, index = xs
                (_, m), g = grad_fn(params, rest, micro_batch, jax.random.fold_in(key, index))
                return (
                    jax.tree.map(jnp.add, grad_sum, g),
                    jax.tree.map(jnp.add, metric_sum, m),
                ), None

            first = jax.tree.map(lambda x: x[0], micro_batches)
            metric_shapes = jax.eval_shape(lambda: grad_fn(params, rest, first, key)[0][1])
            zeros = (
                jax.tree.map(jnp.zeros_like, params),
                jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes),
            )
            (grad_sum, metric_sum), _ = jax.lax.scan(
                body, zeros, (micro_batches, jnp.arange(accum))
            )
            grads = jax.tree.map(lambda g: g / accum, grad_sum)
            metrics = jax.tree.map(lambda m: m / accum, metric_sum)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        metrics = dict(metrics)
        metrics["l2_grads"] = optax.tree.norm(grads)
        metrics["l2_params"] = optax.tree.norm(new_params)
        metrics["lr"] = jnp.asarray(opt_state.hyperparams["learning_rate"], jnp.float32)
        new_state = {"step": state["step"] + 1, "params": new_params, "opt_state": opt_state}
        return new_state, metrics

    return train_step


def make_eval_loss_fn(task: task_base.Task, graphdef: Any):
    """``(params, rest, batch) -> metrics`` in evaluation mode (no dropout)."""

    def eval_loss(params, rest, batch):
        model = nnx.merge(graphdef, params, rest)
        _, metrics = task.loss_fn(model, batch, None)
        return metrics

    return eval_loss


def make_predict_fn(task: task_base.Task, graphdef: Any):
    """``(params, rest, sar) -> logits`` in evaluation mode."""

    def predict(params, rest, sar):
        return task.predict(nnx.merge(graphdef, params, rest), sar)

    return predict


def numpy_predictor(
    predict_jit: Callable, params: Any, rest: Any, mesh: jax.sharding.Mesh, batch_size: int
) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a jitted predict into numpy ``[N, S, S, 1] -> [N, S, S, K]`` with a fixed batch.

    Inputs are padded to ``batch_size`` (one compilation). With several processes every process
    passes the same tiles; each contributes its slice and the output is gathered.
    """
    processes = jax.process_count()

    def predict_fn(tiles: np.ndarray) -> np.ndarray:
        tiles = np.asarray(tiles, np.float32)
        outputs = []
        for start in range(0, len(tiles), batch_size):
            chunk = tiles[start : start + batch_size]
            count = len(chunk)
            if count < batch_size:
                pad = np.zeros((batch_size - count, *chunk.shape[1:]), chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            per_process = batch_size // processes
            local = chunk[
                jax.process_index() * per_process : (jax.process_index() + 1) * per_process
            ]
            global_sar = sharding_lib.make_global_batch({"sar": local}, mesh)["sar"]
            logits = predict_jit(params, rest, global_sar)
            if processes > 1:
                logits = multihost_utils.process_allgather(logits, tiled=True)
            outputs.append(np.asarray(logits)[:count])
        return np.concatenate(outputs)

    return predict_fn


# ---------------------------------------------------------------------------- helpers
class _Preemption:
    """SIGTERM -> save-and-exit at a step boundary that every process agrees on.

    One process: a Python SIGTERM handler sets a flag, checked after every step. Several
    processes: JAX's preemption service (started by ``jax.distributed.initialize``) catches
    SIGTERM on any process, tells the others through the coordination service and picks the
    first step every process can still reach; :meth:`should_stop` returns True at that step on
    all processes (``multihost_utils.reached_preemption_sync_point``), so they save the same step.
    """

    def __init__(self):
        self.requested = threading.Event()
        self._previous = None
        # jax.distributed.initialize starts the service unless the flag turns it off.
        self._service = (
            jax.process_count() > 1
            and jax.distributed.is_initialized()
            and bool(jax.config.jax_enable_preemption_service)
        )

    def __enter__(self):
        if not self._service and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint, then exiting.")
        self.requested.set()

    def should_stop(self, step: int) -> bool:
        """Whether to save and exit after ``step`` (the same answer on every process)."""
        if self._service:
            stop = multihost_utils.reached_preemption_sync_point(step)
            if stop:
                logging.warning("Preemption: all processes save step %d, then exit.", step)
            return stop
        requested = self.requested.is_set()
        if jax.process_count() > 1:  # no preemption service: agree by a collective
            requested = bool(multihost_utils.process_allgather(np.asarray(requested)).any())
        return requested

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _is_better(value: float, best: float | None, mode: str) -> bool:
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best if mode == "min" else value > best


def _write_json(path: str, payload: Mapping[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def _devices(config: ml_collections.ConfigDict) -> list[jax.Device]:
    devices = jax.devices()
    count = int(config.get("num_devices", 0) or 0)
    if count:
        if count > len(devices):
            raise ValueError(f"config.num_devices={count} but only {len(devices)} devices exist")
        devices = devices[:count]
    return devices


def validate_config(config: ml_collections.ConfigDict, data_devices: int) -> None:
    """Checks batch / accumulation / device consistency with a clear message."""
    batch, accum = int(config.batch_size), int(config.grad_accum_steps)
    if batch % accum:
        raise ValueError(
            f"config.batch_size ({batch}) must be divisible by config.grad_accum_steps ({accum})"
        )
    micro = batch // accum
    if micro % data_devices:
        raise ValueError(
            f"micro-batch {micro} (batch_size {batch} / grad_accum_steps {accum}) must be "
            f"divisible by the {data_devices} data-parallel devices"
        )
    if config.total_steps <= 0:
        raise ValueError(f"config.total_steps must be positive, got {config.total_steps}")


# ---------------------------------------------------------------------------- the loop
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train ``config.task`` in ``workdir`` (resuming if it holds a checkpoint).

    Args:
        config: A config from ``configs/pretrain.py`` or ``configs/finetune.py``.
        workdir: Run directory (checkpoints, TensorBoard events, history, pictures).

    Returns:
        Summary dict: ``final_step``, ``first_step``, ``train_metrics`` (last logged),
        ``val_history`` (list of validation dicts), ``best`` (value), ``stopped`` (reason),
        ``wall_time_s``, ``param_count``, ``init_report`` (when initialised from a checkpoint).

    Raises:
        metrics_lib.NonFiniteLossError: when the loss becomes NaN/Inf.
        checkpointing.CheckpointMismatchError: when the workdir holds another model's run.
    """
    t_start = time.perf_counter()
    metrics_lib.quiet_orbax_logs()
    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)
    task = get_task(config)
    devices = _devices(config)
    mesh = sharding_lib.make_mesh([tuple(a) for a in config.mesh], devices)
    data_devices = sharding_lib.data_size(mesh)
    validate_config(config, data_devices)
    logging.info("Task %s on %d device(s), mesh %s", config.task, len(devices), dict(mesh.shape))

    # Data first: a missing dataset must fail before any compilation or checkpoint work.
    sources = task.prepare_data()

    tx = optim.make_optimizer(config)
    seed = int(config.seed)
    init_fn = make_init_fn(task, tx, seed)
    abstract_state, abstract_rest = jax.eval_shape(init_fn)
    state_sh = sharding_lib.state_shardings(
        abstract_state,
        mesh,
        [tuple(r) for r in config.get("sharding_rules", ())],
        preset=config.get("sharding", "replicated"),
    )
    rest_sh = sharding_lib.state_shardings(abstract_rest, mesh)
    graphdef = graphdef_of(task, seed)
    expected_shapes = checkpointing.param_shapes(abstract_state["params"])
    param_count = count_params(abstract_state["params"])

    checkpointer = checkpointing.RunCheckpointer(
        workdir, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save
    )
    plateau = None
    if task.plateau_metric and config.optim.get("plateau", None) and config.optim.plateau.enabled:
        p = config.optim.plateau
        plateau = optim.ReduceLROnPlateau(
            config.optim.learning_rate,
            factor=p.factor,
            patience=p.patience,
            threshold=p.threshold,
            cooldown=p.cooldown,
            min_lr=p.min_lr,
        )
    best_value = None
    init_report = None
    iterator = task.train_iterator(sources, seed)

    # One jitted init creates the sharded state directly (never materialised on one device).
    state, rest = jax.jit(init_fn, out_shardings=(state_sh, rest_sh))()
    latest = checkpointer.latest_step()
    if latest is not None:
        # Resume: the workdir's own checkpoint wins over config.init.
        logging.info("Resuming from %s/checkpoints/%d", workdir, latest)
        abstract_target = sharding_lib.with_shardings(abstract_state, state_sh)
        del state  # free the fresh state before restoring
        state, meta = checkpointer.restore(abstract_target, expected_shapes)
        if meta.get("data_iter") is not None:
            iterator.set_state(meta["data_iter"])
        if plateau is not None and meta.get("plateau"):
            plateau.load_state_dict(meta["plateau"])
        best_value = meta.get("best")
    else:
        state, init_report = _initialise_from(config, task, state, state_sh, tx)
    first_step = int(jax.device_get(state["step"]))

    if jax.process_index() == 0:
        _write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))
        info = {
            "task": config.task,
            "objective": task.objective,
            "param_count": param_count,
            "num_devices": len(devices),
            "mesh": dict(mesh.shape),
            "process_count": jax.process_count(),
            "model": task.model_config.to_dict(),
        }
        if init_report is not None:
            info["init_report"] = {k: len(v) for k, v in init_report.items()}
            info["init_missing"] = init_report["missing"]
            info["init_unexpected"] = init_report["unexpected"]
        _write_json(os.path.join(workdir, "run_info.json"), info)
    logging.info("Model has %s parameters", f"{param_count:,}")

    writer = metrics_lib.MetricWriter(workdir, resume_step=first_step)
    if first_step == 0:
        writer.write_text("config", config.to_json_best_effort(indent=2))

    batch_sh = sharding_lib.batch_sharding(mesh)
    repl = sharding_lib.replicated(mesh)
    train_step = jax.jit(
        make_train_step(task, graphdef, tx, config.grad_accum_steps, mesh),
        in_shardings=(state_sh, rest_sh, batch_sh, repl),
        out_shardings=(state_sh, repl),
        donate_argnums=(0,),
    )
    eval_loss_jit = jax.jit(
        make_eval_loss_fn(task, graphdef),
        in_shardings=(state_sh["params"], rest_sh, batch_sh),
        out_shardings=repl,
    )
    predict_jit = None
    if task.objective == "segment":
        predict_jit = jax.jit(
            make_predict_fn(task, graphdef),
            in_shardings=(state_sh["params"], rest_sh, batch_sh),
            out_shardings=batch_sh,
        )
    base_key = jax.random.key(seed + 1)

    def to_global(local):
        return sharding_lib.make_global_batch(local, mesh)

    def meta_for(step: int) -> dict[str, Any]:
        return {
            "task": config.task,
            "objective": task.objective,
            "step": step,
            "param_shapes": expected_shapes,
            "data_iter": iterator.get_state(),
            "plateau": plateau.state_dict() if plateau is not None else None,
            "best": best_value,
            "selection_metric": task.selection_metric,
        }

    val_history: list[dict[str, float]] = []

    def run_validation(step: int) -> dict[str, float]:
        nonlocal best_value
        t0 = time.perf_counter()
        val_every = config.val.every_steps
        out_dir = None
        if config.val.get("write_pictures_every", 0) and jax.process_index() == 0:
            cadence = config.val.write_pictures_every * max(1, val_every)
            if step % cadence == 0 or step == config.total_steps:
                out_dir = os.path.join(workdir, "val", f"step_{step:06d}")
        ctx = task_base.ValidationContext(
            predict_fn=(
                numpy_predictor(predict_jit, state["params"], rest, mesh, config.val.batch_size)
                if predict_jit is not None
                else None
            ),
            eval_loss_fn=lambda batch: jax.device_get(eval_loss_jit(state["params"], rest, batch)),
            make_global_batch=to_global,
            step=step,
            out_dir=out_dir,
        )
        metrics = task.validate(sources, ctx)
        metrics["val/seconds"] = time.perf_counter() - t0
        writer.write_scalars(step, metrics)
        shown = {k: round(v, 4) for k, v in metrics.items() if k.count("/") <= 2}
        logging.info("validation at step %d: %s", step, shown)
        val_history.append({"step": step, **metrics})
        value = metrics.get(task.selection_metric)
        if _is_better(value, best_value, task.selection_mode):
            best_value = float(value)
            checkpointer.save(
                step, state, meta_for(step), best=True, data_iter=iterator.get_state()
            )
            logging.info("new best %s = %.4f at step %d", task.selection_metric, value, step)
        return metrics

    total_steps = int(config.total_steps)
    progress = metrics_lib.ProgressReporter(
        total_steps, first_step, config.batch_size, config.log_every_steps
    )
    pending_losses: list[tuple[int, jax.Array]] = []
    last_saved = checkpointer.latest_step()
    train_metrics: dict[str, float] = {}
    stopped = "completed"

    def flush_losses():
        """Check every step's loss since the last check (exact step of a NaN/Inf)."""
        values = jax.device_get([v for _, v in pending_losses])
        for (s, _), v in zip(pending_losses, values, strict=True):
            metrics_lib.check_finite({"loss": float(v)}, s, last_saved)
        pending_losses.clear()

    if first_step == 0 and config.val.at_start and config.val.every_steps > 0:
        run_validation(0)
    step = first_step
    try:
        with _Preemption() as preemption:
            progress.reset_timer(step)
            while step < total_steps:
                local_batch = next(iterator)
                local_batch = {k: local_batch[k] for k in task.batch_spec(1)}
                batch = to_global(local_batch)
                state, metrics = train_step(state, rest, batch, base_key)
                step += 1
                pending_losses.append((step, metrics["loss"]))
                if step == first_step + 1:
                    progress.reset_timer(step)  # exclude compilation from steps/s
                if step % config.log_every_steps == 0 or step == total_steps:
                    flush_losses()
                    train_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    scalars = {f"train/{k}": v for k, v in train_metrics.items()}
                    scalars.update(progress.update(step, train_metrics))
                    writer.write_scalars(step, scalars)
                val_every = config.val.every_steps
                if val_every > 0 and (step % val_every == 0 or step == total_steps):
                    flush_losses()
                    metrics_val = run_validation(step)
                    if plateau is not None:
                        reductions = plateau.num_reductions
                        new_lr = plateau.step(metrics_val[task.plateau_metric])
                        if plateau.num_reductions > reductions:
                            logging.info("reduce-on-plateau: learning rate -> %g", new_lr)
                            state = {
                                **state,
                                "opt_state": optim.set_learning_rate(state["opt_state"], new_lr),
                            }
                    progress.reset_timer(step)
                preempted = preemption.should_stop(step)
                periodic = (
                    config.checkpoint.every_steps > 0 and step % config.checkpoint.every_steps == 0
                )
                if periodic or step == total_steps or preempted:
                    flush_losses()
                    checkpointer.save(step, state, meta_for(step), data_iter=iterator.get_state())
                    last_saved = step
                if preempted:
                    stopped = "preempted"
                    break
                max_steps = int(config.get("stop_after_steps", 0) or 0)
                if max_steps and step >= max_steps:
                    # Simulated interruption (tests, time-boxed jobs): state is saved, exit cleanly.
                    flush_losses()
                    checkpointer.save(step, state, meta_for(step), data_iter=iterator.get_state())
                    last_saved = step
                    stopped = "stop_after_steps"
                    break
    finally:
        # Pending async saves are committed even when the run stops on an error.
        checkpointer.close()
        writer.flush()
        writer.close()
    curves = None
    if jax.process_index() == 0:
        curves = metrics_lib.plot_curves(
            workdir, title=f"{config.task} {task.objective} ({config.get('name', '')})"
        )
    wall = time.perf_counter() - t_start
    logging.info("Run %s at step %d in %.1f s; curves: %s", stopped, step, wall, curves)
    return {
        "first_step": first_step,
        "final_step": step,
        "train_metrics": train_metrics,
        "val_history": val_history,
        "best": best_value,
        "stopped": stopped,
        "wall_time_s": wall,
        "param_count": param_count,
        "init_report": init_report,
        "curves_png": curves,
    }


def _initialise_from(config, task, state, state_sh, tx):
    """Apply ``config.init`` to a fresh state (fresh optimiser state for the loaded params)."""
    mode = config.init.mode
    if mode in ("", "scratch", None):
        return state, None
    host_params = jax.device_get(state["params"])
    if mode == "workdir":
        source = checkpointing.read_params(config.init.path)
        new_params, report = checkpointing.transfer_params(
            host_params,
            source,
            allow_missing=task.init_allow_missing(),
            source_name=f"init checkpoint {config.init.path}",
        )
    elif mode in ("imagenet", "tyrion"):
        new_params, report = _init_from_torch(config, task, host_params, mode)
    else:
        raise ValueError(f"config.init.mode must be scratch|imagenet|workdir|tyrion, got {mode!r}")
    params = jax.device_put(new_params, state_sh["params"])
    opt_state = jax.jit(tx.init, out_shardings=state_sh["opt_state"])(params)
    return {"step": state["step"], "params": params, "opt_state": opt_state}, report


def _init_from_torch(config, task, host_params, mode):
    """ImageNet SwinV2 ``.pth`` (encoder) or TYRION ``.ckpt`` (whole network) via convert_torch."""
    from ssl4sar_jax.models import convert_torch

    path = os.path.expanduser(config.init.path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config.init.path {path!r} does not exist (mode {mode!r})")
    model = task.build_model(int(config.seed))
    torch_state = convert_torch.read_torch_checkpoint(
        path, trust_pickle=bool(config.init.get("trust_pickle", False))
    )
    fmt = "microsoft" if mode == "imagenet" else "tyrion"
    try:
        report = convert_torch.load_torch_state(
            model, torch_state, fmt=fmt, partial=bool(config.init.get("partial", False))
        )
    except ValueError as err:
        raise ValueError(
            f"init checkpoint {path} does not fit config.model: {err}\nSet "
            "--config.init.partial=True to load the matching part only."
        ) from err
    logging.info("Weights from %s (%s):\n%s", path, fmt, report.summary())
    loaded = checkpointing.flatten_params(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    # The model was built with the run's seed, so parameters outside the import scope equal
    # the fresh initialisation of the train state.
    new_params, _ = checkpointing.transfer_params(
        host_params, loaded, strip_prefixes=(), source_name=path
    )
    return new_params, {
        "loaded": list(report.loaded),
        "missing": list(report.missing) + list(report.left_out),
        "unexpected": list(report.unexpected) + [k for k, _ in report.skipped],
    }
