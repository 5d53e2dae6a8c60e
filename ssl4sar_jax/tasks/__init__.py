"""Tasks of the training loop, selected by ``config.task`` (explicit registry).

* ``pretrain`` — OptSimMIM or OptTranslator (``config.objective``), `tasks/pretrain.py`;
* ``finetune`` — CaFFe zone segmentation, `tasks/finetune.py`;
* ``evaluate`` — evaluation of checkpoints (no training), `tasks/evaluate.py`.
"""

from __future__ import annotations

import ml_collections

from ssl4sar_jax.tasks.base import Task, ValidationContext

TRAIN_TASKS = ("pretrain", "finetune")
ALL_TASKS = (*TRAIN_TASKS, "evaluate")


def get_task(config: ml_collections.ConfigDict) -> Task:
    """The training `Task` named by ``config.task``."""
    if config.task == "pretrain":
        from ssl4sar_jax.tasks.pretrain import PretrainTask

        return PretrainTask(config)
    if config.task == "finetune":
        from ssl4sar_jax.tasks.finetune import FinetuneTask

        return FinetuneTask(config)
    raise ValueError(f"config.task must be one of {TRAIN_TASKS} for training, got {config.task!r}")


__all__ = ["ALL_TASKS", "TRAIN_TASKS", "Task", "ValidationContext", "get_task"]
