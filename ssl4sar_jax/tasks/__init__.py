"""The task registry: what ``config.task`` names, and how ``main`` runs it.

Built-in entries:

* ``pretrain`` — self-supervised pretraining with a registered objective (``config.objective``,
  see `ssl4sar_jax.objectives`), `tasks/pretrain.py`;
* ``finetune`` — zone segmentation fine-tuning, `tasks/finetune.py`;
* ``evaluate`` — evaluation of checkpoints (no training), `tasks/evaluate.py`.

A training task is a `Task` subclass registered with ``register_task(name, cls)``; the one loop
(``ssl4sar_jax.train_lib.train_and_evaluate``) runs it. Any other entry point is registered with
``register_task(name, run=fn)`` where ``fn(config, workdir)`` does the whole job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import ml_collections

from ssl4sar_jax.registry import Registry
from ssl4sar_jax.tasks.base import Task, ValidationContext
from ssl4sar_jax.tasks.evaluate import evaluate
from ssl4sar_jax.tasks.finetune import FinetuneTask
from ssl4sar_jax.tasks.pretrain import PretrainTask

Runner = Callable[[ml_collections.ConfigDict, str], Any]


@dataclasses.dataclass(frozen=True)
class TaskEntry:
    """One registered task: a `Task` class for the training loop, or a standalone runner."""

    name: str
    task_cls: type[Task] | None = None
    run_fn: Runner | None = None

    @property
    def trains(self) -> bool:
        """Whether the entry runs through the training loop."""
        return self.task_cls is not None

    def run(self, config: ml_collections.ConfigDict, workdir: str) -> Any:
        """Runs the entry (training: ``train_and_evaluate``'s summary dict)."""
        if self.run_fn is not None:
            return self.run_fn(config, workdir)
        # The loop imports this package, so it is looked up when a training task runs.
        from ssl4sar_jax import train_lib

        return train_lib.train_and_evaluate(config, workdir)


_REGISTRY: Registry[TaskEntry] = Registry("task")


def register_task(
    name: str,
    task_cls: type[Task] | None = None,
    *,
    run: Runner | None = None,
    replace: bool = False,
) -> TaskEntry:
    """Registers a training `Task` class or (``run=``) a standalone entry point."""
    if (task_cls is None) == (run is None):
        raise ValueError(f"register_task({name!r}): pass exactly one of task_cls and run")
    return _REGISTRY.add(name, TaskEntry(name, task_cls, run), replace=replace)


def task_names(*, training_only: bool = False) -> tuple[str, ...]:
    """Registered task names (``training_only``: those the training loop runs)."""
    return tuple(e.name for e in _REGISTRY.values() if e.trains or not training_only)


def get_entry(name: str) -> TaskEntry:
    """The registered entry ``name``; ValueError naming the known ones otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"config.task must be one of {task_names()}, got {name!r}")
    return _REGISTRY.get(name)


def get_task(config: ml_collections.ConfigDict) -> Task:
    """The training `Task` named by ``config.task``, built from ``config``."""
    entry = get_entry(config.task)
    if not entry.trains:
        raise ValueError(
            f"config.task {config.task!r} is not a training task; the training loop runs "
            f"{task_names(training_only=True)} (run {config.task!r} through ssl4sar_jax.main)"
        )
    return entry.task_cls(config)


register_task("pretrain", PretrainTask)
register_task("finetune", FinetuneTask)
register_task("evaluate", run=evaluate)

__all__ = [
    "Task",
    "TaskEntry",
    "ValidationContext",
    "get_entry",
    "get_task",
    "register_task",
    "task_names",
]
