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
* `LossGuard`: every step's loss and parameter norm are checked (on the host, before any
  action that logs or saves), so a NaN/Inf stops the run with its step number and the last
  good checkpoint, and `HealthySave` only saves states that are finite and not exploding;
* the workdir guarantees (docs/training.md): one writer (`ssl4sar_jax.workdir` lock), verified
  checkpoints with fallback (`checkpointing.open_run`), config changes on resume checked and
  recorded (`checkpointing.restore_run`, ``config_history.jsonl``), start-up split checks, and
  background save failures raised at the next step.

The only state that changes while training is one `LoopState`; the task says what is trained
(model, loss, data, validation) and the loop never asks which objective it runs.
"""

from __future__ import annotations

import dataclasses
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
from jax.experimental import multihost_utils

from ssl4sar_jax import checkpointing, health, io_utils, metrics_lib, optim, param_utils, steps
from ssl4sar_jax import sharding as sharding_lib
from ssl4sar_jax import workdir as workdir_lib
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
        ``wall_time_s``, ``param_count``, ``init_report`` (`LoadReport.to_dict()`, when initialised),
        ``curves_png``.

    Raises:
        metrics_lib.NonFiniteLossError: when the loss becomes NaN/Inf.
        health.DivergenceError: when the run diverges without NaN (saves refused in a row).
        checkpointing.CheckpointMismatchError: when the workdir holds another model's run.
        checkpointing.CheckpointSaveError: when a (background) checkpoint save failed.
        workdir_lib.WorkdirLockedError: when another live run holds the workdir.
        workdir_lib.WorkdirHistoryError: history but nothing to resume (and no overwrite).
        workdir_lib.ConfigChangeError: a meaning-changing config change on resume.
    """
    workdir = os.path.abspath(os.path.expanduser(workdir))
    os.makedirs(workdir, exist_ok=True)
    # One writer per workdir: a second run stops here, naming the holder.
    with workdir_lib.acquire(workdir):
        return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """`train_and_evaluate` with the workdir locked."""
    t_start = time.perf_counter()
    metrics_lib.quiet_orbax_logs()

    # ----------------------------------------------------------------- set-up
    task = get_task(config)
    mesh = make_mesh_for(config)
    validate_config(config, sharding_lib.data_size(mesh))
    # Data first: a missing dataset must fail before any compilation or checkpoint work.
    sources = task.prepare_data()
    task_base.check_splits(sources, task.required_splits())  # every split used, non-empty
    iterator = task.train_iterator(sources, int(config.seed))
    # The newest verified checkpoint (corrupt/incomplete ones are reported and moved aside);
    # none: the workdir must be free of history unless config.overwrite.
    checkpointer, resume_point = checkpointing.open_run(config, workdir)
    plateau = make_plateau(config, task)

    # ----------------------------------------------------------------- state
    setup = setup_state(config, task, mesh, checkpointer, iterator, plateau, resume_point)
    write_run_files(config, task, mesh, workdir, setup)
    monitor = health.Health(factor=float(config.checkpoint.get("health_factor", 10.0)))
    if setup.resume_meta is not None:
        monitor.load_state_dict(setup.resume_meta.get("health_window"))
    monitor.record({"l2_params": float(jax.jit(optax.tree.norm)(setup.state["params"]))}, True)
    loop = LoopState(
        state=setup.state,
        step=setup.first_step,
        first_step=setup.first_step,
        best=setup.best,
        last_saved=setup.resumed_from,
        last_good_lr=setup.restored_lr,
    )
    if setup.resumed_from is not None:
        loop.good_saves.append((setup.resumed_from, setup.restored_lr))

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
    meta = CheckpointMeta(config, task, setup, iterator, plateau, monitor)
    save = HealthySave(config, checkpointer, meta, monitor, plateau, workdir)
    guard = LossGuard(monitor, save)
    preemption = Preemption()
    validator = Validator(config, task, sources, compiled, setup.rest, mesh, workdir)
    validator.connect(writer, progress, save)
    actions: list[PeriodicAction] = [
        TrainLogger(config, writer, progress),
        validator,
        PlateauScheduler(config, task, plateau),
        StopCheck(config, preemption),
        Saver(config, save),
    ]

    # ----------------------------------------------------------------- train
    total_steps = int(config.total_steps)
    if setup.first_step == 0 and config.val.at_start and config.val.every_steps > 0:
        validator.run(loop, {})
    try:
        with preemption:
            progress.reset_timer(loop.step)
            while loop.step < total_steps and loop.stopped == "completed":
                # A failed background save stops the run here, before the next step: the message
                # names the path, the OS error and the last step trained and logged.
                checkpointer.check(at_step=loop.step)
                local_batch = next(iterator)
                local_batch = {k: local_batch[k] for k in task.batch_spec(1)}
                batch = sharding_lib.make_global_batch(local_batch, mesh)
                loop.state, metrics = compiled.train(loop.state, setup.rest, batch, base_key)
                loop.step += 1
                guard.add(loop.step, metrics)
                if loop.step == setup.first_step + 1:
                    progress.reset_timer(loop.step)  # exclude compilation from steps/s
                for action in actions:
                    if action.due(loop):
                        guard.flush(loop)  # no log or save after a NaN/Inf
                        action.run(loop, metrics)
    except BaseException:
        # Pending async saves are committed even when the run stops on an error.
        checkpointer.close()
        writer.close()
        raise
    # A failed final (or preemption) save is an error, never a clean exit.
    save_error = checkpointer.close()
    writer.flush()
    writer.close()
    if save_error is not None:
        raise save_error

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
        "init_report": setup.init_report and setup.init_report.to_dict(),
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


def write_run_files(config, task, mesh, workdir: str, setup: StateSetup) -> None:
    """``config.json`` and ``run_info.json`` (parameter count, mesh, init report) in the workdir."""
    logging.info("Model has %s parameters", f"{setup.param_count:,}")
    if jax.process_index() != 0:
        return
    # config.json = the current config; config_history.jsonl = one row per start/resume.
    workdir_lib.record_config(
        workdir,
        checkpointing.config_to_dict(config),
        setup.first_step,
        setup.config_changes,
        event="resume" if setup.resumed_from is not None else "start",
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
        info["init_report"] = {
            k: len(v) for k, v in report.to_dict().items() if isinstance(v, list)
        }
        info["init_missing"] = report.missing + report.left_out
        info["init_unexpected"] = report.unexpected + [k for k, _ in report.skipped]
    io_utils.write_json_atomic(
        os.path.join(workdir, "run_info.json"), info, sort_keys=True, default=str
    )


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
    init_report: param_utils.LoadReport | None = None
    resumed_from: int | None = None
    resume_meta: dict[str, Any] | None = None  # the metadata of the restored checkpoint
    config_changes: list[Any] = dataclasses.field(default_factory=list)
    restored_lr: float | None = None  # the rate in the restored optimizer state, as saved


def setup_state(
    config: ml_collections.ConfigDict,
    task: task_base.Task,
    mesh: jax.sharding.Mesh,
    checkpointer: checkpointing.RunCheckpointer,
    iterator: Any,
    plateau: optim.ReduceLROnPlateau | None,
    resume_point: checkpointing.ResumePoint | None = None,
) -> StateSetup:
    """Creates the sharded state; resumes (``resume_point``) > ``config.init`` > scratch.

    On resume the data iterator and the plateau scheduler are restored in place, the config is
    checked against the stored one (`checkpointing.restore_run`) and a changed learning rate
    takes effect (optimizer state and plateau).
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
    if resume_point is not None:
        # Resume: the workdir's own checkpoint wins over config.init.
        abstract_target = sharding_lib.with_shardings(abstract_state, state_sh)
        del state  # free the fresh state before restoring
        try:
            restored = checkpointing.restore_run(
                config, checkpointer, resume_point, abstract_target, setup.expected_shapes
            )
        except BaseException:  # refused config change, other model...: nothing was written
            checkpointer.close()
            raise
        state, meta = restored.state, restored.meta
        if meta.get("data_iter") is not None:
            iterator.set_state(meta["data_iter"])
        if plateau is not None and meta.get("plateau"):
            plateau.load_state_dict(meta["plateau"])
        if plateau is not None and restored.new_learning_rate is not None:
            plateau.lr = restored.new_learning_rate
        setup.best = meta.get("best")
        setup.resumed_from = resume_point.step
        setup.resume_meta = meta
        setup.config_changes = restored.changes
        setup.restored_lr = restored.restored_learning_rate
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
    loaded = param_utils.model_params(model)
    # The model was built with the run's seed, so parameters outside the import scope equal
    # the fresh initialisation of the train state.
    new_params, _ = checkpointing.transfer_params(
        host_params, loaded, strip_prefixes=(), source_name=path
    )
    return new_params, report


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
    first_step: int = 0
    best: float | None = None
    last_saved: int | None = None  # the newest healthy checkpoint ("last good")
    last_good_lr: float | None = None  # the learning rate it was trained with
    refused_saves: int = 0  # unhealthy states not saved, in a row
    good_saves: list[tuple[int, float | None]] = dataclasses.field(default_factory=list)
    train_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    val_history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    stopped: str = "completed"  # or "preempted" / "stop_after_steps"

    def resumed_step_is(self, step: int) -> bool:
        """Whether ``step`` is the checkpoint this run was restored from."""
        return bool(self.good_saves) and self.good_saves[0][0] == step and step == self.first_step

    @property
    def stopping(self) -> bool:
        return self.stopped != "completed"


class LossGuard:
    """Every step's loss is checked on the host before anything is logged or saved.

    Losses and parameter norms stay on the device until `flush`, so the check does not
    synchronise every step; the NaN/Inf error names the exact step, the last good checkpoint
    and advice that works (`health.advice`). Every step's values also feed the `health.Health`
    judgement used by `HealthySave`.
    """

    def __init__(self, monitor: health.Health, save: HealthySave):
        self.monitor, self.save = monitor, save
        self._pending: list[tuple[int, dict[str, jax.Array]]] = []
        # Did the parameters of the previous step jump (non-finite, or l2 norm over `factor` x
        # its recent median)? Only such a checkpoint is withdrawn after a bad next loss: a NaN
        # from one bad input batch must not cost the run its (healthy) last checkpoint.
        self._previous_jumped = False

    def _jumped(self, value: Mapping[str, float]) -> bool:
        norm, median = value.get("l2_params"), self.monitor.medians().get("l2_params")
        if norm is None:
            return True  # no norm to judge by: be conservative
        if not math.isfinite(norm):
            return True
        return (
            self.monitor.factor > 0 and median is not None and norm > self.monitor.factor * median
        )

    def add(self, step: int, metrics: Mapping[str, jax.Array]) -> None:
        self._pending.append((step, {k: metrics[k] for k in health.Health.KEYS if k in metrics}))

    def flush(self, loop: LoopState) -> None:
        values = jax.device_get([v for _, v in self._pending])
        for (step, _), value in zip(self._pending, values, strict=True):
            value = {k: float(x) for k, x in value.items()}
            jumped = self._jumped(value)
            reason = self.monitor.record(value)
            if reason is not None and loop.last_saved == step - 1 and self._previous_jumped:
                # The loss of this step was computed with the parameters saved one step ago,
                # and those parameters had jumped: that checkpoint is not a good one.
                self.save.retract(loop, step - 1, f"the next step's {reason}")
            self._previous_jumped = jumped
            metrics_lib.check_finite(value, step, loop.last_saved, self.save.advice(loop))
        self._pending.clear()


class CheckpointMeta:
    """The metadata saved with every checkpoint.

    Task, shapes, data iterator, plateau, best value, the run's config (checked on resume) and
    the health judgement of the saved state with its reference window.
    """

    def __init__(self, config, task, setup: StateSetup, iterator, plateau, monitor):
        self.config, self.task, self.setup = config, task, setup
        self.iterator, self.plateau, self.monitor = iterator, plateau, monitor
        self.config_dict = checkpointing.config_to_dict(config)

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
            "config": self.config_dict,
            "health": self.monitor.summary(),
            "health_window": self.monitor.state_dict(),
        }

    def data_iter(self) -> dict[str, Any]:
        """This process's data-iterator state (saved per process, see checkpointing)."""
        return self.iterator.get_state()


class HealthySave:
    """Saves a checkpoint only when the state is healthy (finite, not exploding).

    A refused periodic save is logged with the reason; after
    ``config.checkpoint.max_refused_saves`` in a row the run stops with
    `health.DivergenceError`, so "the last good checkpoint" is always a good one.
    """

    def __init__(self, config, checkpointer, meta: CheckpointMeta, monitor, plateau, workdir):
        self.config, self.checkpointer, self.meta = config, checkpointer, meta
        self.monitor, self.plateau, self.workdir = monitor, plateau, workdir
        self.max_refused = int(config.checkpoint.get("max_refused_saves", 3))

    def advice(self, loop: LoopState) -> str:
        return health.advice(loop.last_saved, self.workdir, self.config, loop.last_good_lr)

    def __call__(self, loop: LoopState, best: bool = False) -> None:
        reason = self.monitor.last_reason
        if reason is not None:
            logging.warning(
                "Not saving %s checkpoint at step %d: %s. The last good checkpoint stays step %s.",
                "the best" if best else "a",
                loop.step,
                reason,
                loop.last_saved,
            )
            if not best:
                loop.refused_saves += 1
                if loop.refused_saves >= self.max_refused:
                    raise health.DivergenceError(
                        f"The run is diverging: {reason} at step {loop.step}, and "
                        f"{loop.refused_saves} checkpoints in a row were refused. The last good "
                        f"checkpoint is step {loop.last_saved}. " + self.advice(loop)
                    )
            return
        self.checkpointer.save(
            loop.step, loop.state, self.meta(loop), best=best, data_iter=self.meta.data_iter()
        )
        if not best:
            loop.last_saved, loop.refused_saves = loop.step, 0
            lr = self.plateau.lr if self.plateau is not None else self.config.optim.learning_rate
            loop.last_good_lr = float(lr)
            loop.good_saves.append((loop.step, loop.last_good_lr))

    def retract(self, loop: LoopState, step: int, reason: str) -> None:
        """The checkpoint of ``step`` turned out diverged: withdraw it, step back "last good"."""
        if loop.resumed_step_is(step):
            return  # the restored checkpoint itself was judged when it was saved
        self.checkpointer.retract(step, reason)
        loop.good_saves = [g for g in loop.good_saves if g[0] != step]
        loop.last_saved, loop.last_good_lr = (
            loop.good_saves[-1] if loop.good_saves else (None, None)
        )


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

    def connect(self, writer, progress, save: HealthySave) -> None:
        """Where results go: scalars, the progress timer and the best checkpoint."""
        self.writer, self.progress, self.save = writer, progress, save

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
            self.save(loop, best=True)
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

    def __init__(self, config, save: HealthySave):
        self.every, self.total = int(config.checkpoint.every_steps), int(config.total_steps)
        self.save = save

    def due(self, loop):
        periodic = self.every > 0 and loop.step % self.every == 0
        return periodic or loop.step == self.total or loop.stopping

    def run(self, loop, metrics):
        self.save(loop)
