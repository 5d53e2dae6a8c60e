"""THE training loop of ssl4sar_jax: pretraining and fine-tuning through pluggable tasks.

`train_and_evaluate` reads top-down in sections (big_vision ``train.py`` style): set-up, state
(init / resume / transfer), compiled steps, periodic actions, the loop, the summary. Each
section calls a named helper of this module:

* `make_mesh_for` and `validate_config`: devices, mesh and batch checks;
* `setup_state`: the train state ``{"step", "params", "opt_state"}`` created by one jitted init
  with ``out_shardings`` (never materialised on one device first), then either restored from
  the workdir's latest checkpoint (with the data-iterator and reduce-on-plateau state) or
  initialised from ``config.init`` (another run, ImageNet SwinV2 or a TYRION checkpoint);
* `compile_steps`: the pure steps of `ssl4sar_jax.steps` jitted with explicit shardings;
* periodic actions, small objects with ``due(loop)`` and ``run(loop, metrics)`` called after
  every step in list order: `TrainLogger` (TensorBoard, JSONL history, steps/s and ETA),
  `Validator` (the task's validation, best checkpoint, reduce-on-plateau), `StopCheck`
  (SIGTERM preemption, ``config.stop_after_steps``), `Saver` (periodic / final / stop saves);
* `LossGuard`: every step's loss is checked (on the host, before any action that logs or
  saves), so a NaN/Inf stops the run with its step number and the last good checkpoint.

The only state that changes while training is one `LoopState`; the task says what is trained
(model, loss, data, validation) and the loop never asks which objective it runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from ssl4sar_jax import checkpointing, metrics_lib, optim, steps
from ssl4sar_jax import sharding as sharding_lib
from ssl4sar_jax.tasks import base as task_base
from ssl4sar_jax.tasks import get_task

TrainState = steps.TrainState


# ---------------------------------------------------------------------------- the loop
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train ``config.task`` in ``workdir`` (resuming if it holds a checkpoint).

    Args:
        config: A config from ``configs/pretrain.py`` or ``configs/finetune.py``.
        workdir: Run directory (checkpoints, TensorBoard events, history, pictures).

    Returns:
        Summary dict: ``final_step``, ``first_step``, ``train_metrics`` (last logged),
        ``val_history`` (list of validation dicts), ``best`` (value), ``stopped`` (reason),
        ``wall_time_s``, ``param_count``, ``init_report`` (when initialised from a checkpoint),
        ``curves_png``.

    Raises:
        metrics_lib.NonFiniteLossError: when the loss becomes NaN/Inf.
        checkpointing.CheckpointMismatchError: when the workdir holds another model's run.
    """
    t_start = time.perf_counter()
    metrics_lib.quiet_orbax_logs()
    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)

    # ----------------------------------------------------------------- set-up
    task = get_task(config)
    mesh = make_mesh_for(config)
    validate_config(config, sharding_lib.data_size(mesh))
    # Data first: a missing dataset must fail before any compilation or checkpoint work.
    sources = task.prepare_data()
    iterator = task.train_iterator(sources, int(config.seed))
    checkpointer = checkpointing.RunCheckpointer(
        workdir, keep=config.checkpoint.keep, async_save=config.checkpoint.async_save
    )
    plateau = make_plateau(config, task)

    # ----------------------------------------------------------------- state
    setup = setup_state(config, task, mesh, checkpointer, iterator, plateau)
    write_run_files(config, task, mesh, workdir, setup)
    loop = LoopState(
        state=setup.state,
        step=setup.first_step,
        best=setup.best,
        last_saved=checkpointer.latest_step(),
    )

    # ----------------------------------------------------------------- compiled steps
    compiled = compile_steps(config, task, mesh, setup)
    base_key = jax.random.key(int(config.seed) + 1)

    # ----------------------------------------------------------------- periodic actions
    writer = metrics_lib.MetricWriter(workdir, resume_step=setup.first_step)
    if setup.first_step == 0:
        writer.write_text("config", config.to_json_best_effort(indent=2))
    progress = metrics_lib.ProgressReporter(
        int(config.total_steps), setup.first_step, config.batch_size, config.log_every_steps
    )
    meta = CheckpointMeta(config, task, setup, iterator, plateau)
    guard = LossGuard()
    preemption = Preemption()
    validator = Validator(config, task, sources, compiled, setup.rest, mesh, workdir)
    validator.connect(writer, progress, checkpointer, meta)
    actions: list[PeriodicAction] = [
        TrainLogger(config, writer, progress),
        validator,
        PlateauScheduler(config, task, plateau),
        StopCheck(config, preemption),
        Saver(config, checkpointer, meta),
    ]

    # ----------------------------------------------------------------- train
    total_steps = int(config.total_steps)
    if setup.first_step == 0 and config.val.at_start and config.val.every_steps > 0:
        validator.run(loop, {})
    try:
        with preemption:
            progress.reset_timer(loop.step)
            while loop.step < total_steps and loop.stopped == "completed":
                local_batch = next(iterator)
                local_batch = {k: local_batch[k] for k in task.batch_spec(1)}
                batch = sharding_lib.make_global_batch(local_batch, mesh)
                loop.state, metrics = compiled.train(loop.state, setup.rest, batch, base_key)
                loop.step += 1
                guard.add(loop.step, metrics["loss"])
                if loop.step == setup.first_step + 1:
                    progress.reset_timer(loop.step)  # exclude compilation from steps/s
                for action in actions:
                    if action.due(loop):
                        guard.flush(loop.last_saved)  # no log or save after a NaN/Inf
                        action.run(loop, metrics)
    finally:
        # Pending async saves are committed even when the run stops on an error.
        checkpointer.close()
        writer.flush()
        writer.close()

    # ----------------------------------------------------------------- summary
    curves = None
    if jax.process_index() == 0:
        curves = metrics_lib.plot_curves(
            workdir, title=f"{config.task} {task.objective} ({config.get('name', '')})"
        )
    wall = time.perf_counter() - t_start
    logging.info("Run %s at step %d in %.1f s; curves: %s", loop.stopped, loop.step, wall, curves)
    return {
        "first_step": setup.first_step,
        "final_step": loop.step,
        "train_metrics": loop.train_metrics,
        "val_history": loop.val_history,
        "best": loop.best,
        "stopped": loop.stopped,
        "wall_time_s": wall,
        "param_count": setup.param_count,
        "init_report": setup.init_report,
        "curves_png": curves,
    }


# ---------------------------------------------------------------------------- set-up
def make_mesh_for(config: ml_collections.ConfigDict) -> jax.sharding.Mesh:
    """The device mesh of ``config.mesh`` over the first ``config.num_devices`` devices."""
    devices = jax.devices()
    count = int(config.get("num_devices", 0) or 0)
    if count:
        if count > len(devices):
            raise ValueError(f"config.num_devices={count} but only {len(devices)} devices exist")
        devices = devices[:count]
    mesh = sharding_lib.make_mesh([tuple(a) for a in config.mesh], devices)
    logging.info("Task %s on %d device(s), mesh %s", config.task, len(devices), dict(mesh.shape))
    return mesh


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


def make_plateau(
    config: ml_collections.ConfigDict, task: task_base.Task
) -> optim.ReduceLROnPlateau | None:
    """Reduce-on-plateau on the task's ``plateau_metric`` when ``config.optim.plateau`` is on."""
    p = config.optim.get("plateau", None)
    if not task.plateau_metric or not p or not p.enabled:
        return None
    return optim.ReduceLROnPlateau(
        config.optim.learning_rate,
        factor=p.factor,
        patience=p.patience,
        threshold=p.threshold,
        cooldown=p.cooldown,
        min_lr=p.min_lr,
    )


def write_json_atomic(path: str, payload: Mapping[str, Any]) -> None:
    """Writes ``payload`` as JSON to a temporary file, then renames it over ``path``."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def write_run_files(config, task, mesh, workdir: str, setup: StateSetup) -> None:
    """``config.json`` and ``run_info.json`` (parameter count, mesh, init report) in the workdir."""
    logging.info("Model has %s parameters", f"{setup.param_count:,}")
    if jax.process_index() != 0:
        return
    write_json_atomic(
        os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort())
    )
    info = {
        "task": config.task,
        "objective": task.objective,
        "param_count": setup.param_count,
        "num_devices": mesh.devices.size,
        "mesh": dict(mesh.shape),
        "process_count": jax.process_count(),
        "model": task.model_config.to_dict(),
    }
    report = setup.init_report
    if report is not None:
        info["init_report"] = {k: len(v) for k, v in report.items()}
        info["init_missing"] = report["missing"]
        info["init_unexpected"] = report["unexpected"]
    write_json_atomic(os.path.join(workdir, "run_info.json"), info)


# ---------------------------------------------------------------------------- state
@dataclasses.dataclass
class StateSetup:
    """The train state at the first step, its shardings and how it was obtained."""

    state: TrainState
    rest: Any  # non-parameter model variables (fixed during training)
    state_sh: Any
    rest_sh: Any
    graphdef: Any
    tx: optax.GradientTransformation
    expected_shapes: dict[str, list[int]]
    param_count: int
    first_step: int
    best: float | None = None
    init_report: dict[str, list[str]] | None = None
    resumed_from: int | None = None


def setup_state(
    config: ml_collections.ConfigDict,
    task: task_base.Task,
    mesh: jax.sharding.Mesh,
    checkpointer: checkpointing.RunCheckpointer,
    iterator: Any,
    plateau: optim.ReduceLROnPlateau | None,
) -> StateSetup:
    """Creates the sharded state; resumes (workdir) > ``config.init`` > scratch.

    On resume the data iterator and the plateau scheduler are restored in place.
    """
    tx = optim.make_optimizer(config)
    seed = int(config.seed)
    init_fn = steps.make_init_fn(task, tx, seed)
    abstract_state, abstract_rest = jax.eval_shape(init_fn)
    state_sh = sharding_lib.state_shardings(
        abstract_state,
        mesh,
        [tuple(r) for r in config.get("sharding_rules", ())],
        preset=config.get("sharding", "replicated"),
    )
    rest_sh = sharding_lib.state_shardings(abstract_rest, mesh)
    setup = StateSetup(
        state=None,
        rest=None,
        state_sh=state_sh,
        rest_sh=rest_sh,
        graphdef=steps.graphdef_of(task, seed),
        tx=tx,
        expected_shapes=checkpointing.param_shapes(abstract_state["params"]),
        param_count=steps.count_params(abstract_state["params"]),
        first_step=0,
    )
    # One jitted init creates the sharded state directly (never materialised on one device).
    state, setup.rest = jax.jit(init_fn, out_shardings=(state_sh, rest_sh))()
    latest = checkpointer.latest_step()
    if latest is not None:
        # Resume: the workdir's own checkpoint wins over config.init.
        logging.info("Resuming from %s/checkpoints/%d", checkpointer.workdir, latest)
        abstract_target = sharding_lib.with_shardings(abstract_state, state_sh)
        del state  # free the fresh state before restoring
        state, meta = checkpointer.restore(abstract_target, setup.expected_shapes)
        if meta.get("data_iter") is not None:
            iterator.set_state(meta["data_iter"])
        if plateau is not None and meta.get("plateau"):
            plateau.load_state_dict(meta["plateau"])
        setup.best = meta.get("best")
        setup.resumed_from = latest
    else:
        state, setup.init_report = initialise_from(config, task, state, state_sh, tx)
    setup.state = state
    setup.first_step = int(jax.device_get(state["step"]))
    return setup


def initialise_from(config, task, state, state_sh, tx):
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


# ---------------------------------------------------------------------------- compiled steps
@dataclasses.dataclass(frozen=True)
class CompiledSteps:
    """The jitted steps: ``train`` always, ``eval_loss`` always, ``predict`` for zone tasks."""

    train: Any
    eval_loss: Any
    predict: Any | None


def compile_steps(config, task: task_base.Task, mesh, setup: StateSetup) -> CompiledSteps:
    """Jit the pure steps of `ssl4sar_jax.steps` with the run's shardings (state donated)."""
    batch_sh = sharding_lib.batch_sharding(mesh)
    repl = sharding_lib.replicated(mesh)
    params_sh = setup.state_sh["params"]
    train = jax.jit(
        steps.make_train_step(task, setup.graphdef, setup.tx, config.grad_accum_steps, mesh),
        in_shardings=(setup.state_sh, setup.rest_sh, batch_sh, repl),
        out_shardings=(setup.state_sh, repl),
        donate_argnums=(0,),
    )
    eval_loss = jax.jit(
        steps.make_eval_loss_fn(task, setup.graphdef),
        in_shardings=(params_sh, setup.rest_sh, batch_sh),
        out_shardings=repl,
    )
    predict = None
    if task.predicts_zones:
        predict = jax.jit(
            steps.make_predict_fn(setup.graphdef, task.predict),
            in_shardings=(params_sh, setup.rest_sh, batch_sh),
            out_shardings=batch_sh,
        )
    return CompiledSteps(train, eval_loss, predict)


# ---------------------------------------------------------------------------- loop state
@dataclasses.dataclass
class LoopState:
    """Everything that changes while training (the periodic actions read and update it)."""

    state: TrainState
    step: int
    best: float | None = None
    last_saved: int | None = None
    train_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    val_history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    stopped: str = "completed"  # or "preempted" / "stop_after_steps"

    @property
    def stopping(self) -> bool:
        return self.stopped != "completed"


class LossGuard:
    """Every step's loss is checked on the host before anything is logged or saved.

    Losses stay on the device until `flush`, so the check does not synchronise every step; the
    NaN/Inf error names the exact step and the last good checkpoint.
    """

    def __init__(self):
        self._pending: list[tuple[int, jax.Array]] = []

    def add(self, step: int, loss: jax.Array) -> None:
        self._pending.append((step, loss))

    def flush(self, last_saved: int | None) -> None:
        values = jax.device_get([v for _, v in self._pending])
        for (step, _), value in zip(self._pending, values, strict=True):
            metrics_lib.check_finite({"loss": float(value)}, step, last_saved)
        self._pending.clear()


class CheckpointMeta:
    """The metadata saved with every checkpoint (task, shapes, data iterator, plateau, best)."""

    def __init__(self, config, task, setup: StateSetup, iterator, plateau):
        self.config, self.task, self.setup = config, task, setup
        self.iterator, self.plateau = iterator, plateau

    def __call__(self, loop: LoopState) -> dict[str, Any]:
        return {
            "task": self.config.task,
            "objective": self.task.objective,
            "step": loop.step,
            "param_shapes": self.setup.expected_shapes,
            "data_iter": self.iterator.get_state(),
            "plateau": self.plateau.state_dict() if self.plateau is not None else None,
            "best": loop.best,
            "selection_metric": self.task.selection_metric,
        }

    def data_iter(self) -> dict[str, Any]:
        """This process's data-iterator state (saved per process, see checkpointing)."""
        return self.iterator.get_state()


# ---------------------------------------------------------------------------- periodic actions
class PeriodicAction:
    """Runs after a train step when `due`; called in list order by the loop."""

    def due(self, loop: LoopState) -> bool:
        raise NotImplementedError

    def run(self, loop: LoopState, metrics: Mapping[str, jax.Array]) -> None:
        raise NotImplementedError


def _every(step: int, every: int, total: int) -> bool:
    """True at multiples of ``every`` (> 0) and at the last step."""
    return every > 0 and (step % every == 0 or step == total)


class TrainLogger(PeriodicAction):
    """Train metrics to TensorBoard / JSONL and steps/s + ETA to the console."""

    def __init__(self, config, writer: metrics_lib.MetricWriter, progress):
        self.every, self.total = int(config.log_every_steps), int(config.total_steps)
        self.writer, self.progress = writer, progress

    def due(self, loop):
        return _every(loop.step, self.every, self.total)

    def run(self, loop, metrics):
        loop.train_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
        scalars = {f"train/{k}": v for k, v in loop.train_metrics.items()}
        scalars.update(self.progress.update(loop.step, loop.train_metrics))
        self.writer.write_scalars(loop.step, scalars)


class Validator(PeriodicAction):
    """The task's validation with the current parameters; saves the best checkpoint."""

    def __init__(self, config, task, sources, compiled: CompiledSteps, rest, mesh, workdir):
        self.config, self.task, self.sources = config, task, sources
        self.compiled, self.rest, self.mesh, self.workdir = compiled, rest, mesh, workdir
        self.every, self.total = int(config.val.every_steps), int(config.total_steps)

    def connect(self, writer, progress, checkpointer, meta: CheckpointMeta) -> None:
        """Where results go: scalars, the progress timer and the best checkpoint."""
        self.writer, self.progress = writer, progress
        self.checkpointer, self.meta = checkpointer, meta

    def due(self, loop):
        return _every(loop.step, self.every, self.total)

    def _pictures_dir(self, step: int) -> str | None:
        every = self.config.val.get("write_pictures_every", 0)
        if not every or jax.process_index() != 0:
            return None
        if step % (every * max(1, self.every)) == 0 or step == self.total:
            return os.path.join(self.workdir, "val", f"step_{step:06d}")
        return None

    def _context(self, loop: LoopState) -> task_base.ValidationContext:
        params, rest = loop.state["params"], self.rest
        predict_fn = None
        if self.compiled.predict is not None:
            predict_fn = steps.numpy_predictor(
                self.compiled.predict, params, rest, self.mesh, self.config.val.batch_size
            )
        return task_base.ValidationContext(
            predict_fn=predict_fn,
            eval_loss_fn=lambda b: jax.device_get(self.compiled.eval_loss(params, rest, b)),
            make_global_batch=lambda local: sharding_lib.make_global_batch(local, self.mesh),
            step=loop.step,
            out_dir=self._pictures_dir(loop.step),
        )

    def run(self, loop, metrics):
        t0 = time.perf_counter()
        result = self.task.validate(self.sources, self._context(loop))
        result["val/seconds"] = time.perf_counter() - t0
        self.writer.write_scalars(loop.step, result)
        shown = {k: round(v, 4) for k, v in result.items() if k.count("/") <= 2}
        logging.info("validation at step %d: %s", loop.step, shown)
        loop.val_history.append({"step": loop.step, **result})
        metric = self.task.selection_metric
        value = result.get(metric)
        if _is_better(value, loop.best, self.task.selection_mode):
            loop.best = float(value)
            self.checkpointer.save(
                loop.step, loop.state, self.meta(loop), best=True, data_iter=self.meta.data_iter()
            )
            logging.info("new best %s = %.4f at step %d", metric, value, loop.step)
        self.progress.reset_timer(loop.step)  # validation time is not training time


class PlateauScheduler(PeriodicAction):
    """Reduce-on-plateau on the validation that just ran (not on the one at step 0)."""

    def __init__(self, config, task, plateau: optim.ReduceLROnPlateau | None):
        self.task, self.plateau = task, plateau
        self.every, self.total = int(config.val.every_steps), int(config.total_steps)

    def due(self, loop):
        return self.plateau is not None and _every(loop.step, self.every, self.total)

    def run(self, loop, metrics):
        reductions = self.plateau.num_reductions
        new_lr = self.plateau.step(loop.val_history[-1][self.task.plateau_metric])
        if self.plateau.num_reductions > reductions:
            logging.info("reduce-on-plateau: learning rate -> %g", new_lr)
            opt_state = optim.set_learning_rate(loop.state["opt_state"], new_lr)
            loop.state = {**loop.state, "opt_state": opt_state}


def _is_better(value: float | None, best: float | None, mode: str) -> bool:
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best if mode == "min" else value > best


class Preemption:
    """SIGTERM -> save-and-exit at a step boundary that every process agrees on.

    One process: a Python SIGTERM handler sets a flag, checked after every step. Several
    processes: JAX's preemption service (started by ``jax.distributed.initialize``) catches
    SIGTERM on any process, tells the others through the coordination service and picks a step
    every process can still reach; `agreed` returns True at that step on all processes
    (``multihost_utils.reached_preemption_sync_point``), so they all save the same step.
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

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def agreed(self, step: int) -> bool:
        """Whether to save and stop after ``step`` (the same answer on every process)."""
        if self._service:
            stop = multihost_utils.reached_preemption_sync_point(step)
            if stop:
                logging.warning("Preemption: every process saves step %d, then exits.", step)
            return stop
        requested = self.requested.is_set()
        if jax.process_count() > 1:  # no preemption service: every process joins a collective
            requested = bool(multihost_utils.process_allgather(np.asarray(requested)).any())
        return requested


class StopCheck(PeriodicAction):
    """Stops after SIGTERM (``preempted``) or at ``config.stop_after_steps`` (time-boxed jobs)."""

    def __init__(self, config, preemption: Preemption):
        self.preemption = preemption
        self.stop_after = int(config.get("stop_after_steps", 0) or 0)
        self._reason = None

    def due(self, loop):
        if self.preemption.agreed(loop.step):
            self._reason = "preempted"
        elif self.stop_after and loop.step >= self.stop_after:
            self._reason = "stop_after_steps"
        return self._reason is not None

    def run(self, loop, metrics):
        loop.stopped = self._reason  # `Saver` (next in the list) saves before the loop ends


class Saver(PeriodicAction):
    """Saves every ``config.checkpoint.every_steps``, at the last step and before a stop."""

    def __init__(self, config, checkpointer, meta: CheckpointMeta):
        self.every, self.total = int(config.checkpoint.every_steps), int(config.total_steps)
        self.checkpointer, self.meta = checkpointer, meta

    def due(self, loop):
        periodic = self.every > 0 and loop.step % self.every == 0
        return periodic or loop.step == self.total or loop.stopping

    def run(self, loop, metrics):
        self.checkpointer.save(
            loop.step, loop.state, self.meta(loop), data_iter=self.meta.data_iter()
        )
        loop.last_saved = loop.step
