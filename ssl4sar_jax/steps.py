"""The pure, jittable pieces of training and inference, shared by the loop and evaluation.

* `make_init_fn`: ``init() -> (state, rest)``, the train state ``{"step", "params",
  "opt_state"}`` and the non-parameter model variables (jitted with ``out_shardings`` by the
  loop, so the state is never materialised on one device first);
* `graphdef_of`: the static graph of a task's model, without allocating parameters;
* `make_train_step`: ``(state, rest, batch, base_key) -> (state, metrics)`` with gradient
  accumulation; the dropout key is ``fold_in(base_key, step)`` (then per micro-batch), so a
  run does not depend on the number of devices;
* `make_eval_loss_fn`, `make_predict_fn`: evaluation-mode loss metrics and logits;
* `numpy_predictor`: a jitted predict wrapped as numpy ``[N, S, S, 1] -> [N, S, S, K]`` with a
  fixed batch, what the evaluators (``ssl4sar_jax.evaluation``) take.

Nothing here knows about checkpoints, logging or the data pipeline; evaluation and prediction
import this module, never ``train_lib``. A "task" argument is any object with the methods
``build_model(seed)``, ``loss_fn(model, batch, dropout_key)`` of `ssl4sar_jax.tasks.base.Task`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils

from ssl4sar_jax import array_utils
from ssl4sar_jax import sharding as sharding_lib

if TYPE_CHECKING:
    from ssl4sar_jax.tasks.base import Task

TrainState = dict[str, Any]


# ---------------------------------------------------------------------------- state
def make_init_fn(task: Task, tx: optax.GradientTransformation, seed: int):
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


def graphdef_of(task: Task, seed: int) -> Any:
    """The static graph definition of the task's model (no parameters allocated)."""
    abstract_model = nnx.eval_shape(lambda: task.build_model(seed))
    return nnx.split(abstract_model, nnx.Param, ...)[0]


def count_params(params: Any) -> int:
    """Number of scalar parameters of a parameter tree."""
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))


# ---------------------------------------------------------------------------- steps
def make_train_step(
    task: Task,
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


def make_eval_loss_fn(task: Task, graphdef: Any):
    """``(params, rest, batch) -> metrics`` in evaluation mode (no dropout)."""

    def eval_loss(params, rest, batch):
        model = nnx.merge(graphdef, params, rest)
        _, metrics = task.loss_fn(model, batch, None)
        return metrics

    return eval_loss


def zone_logits(model: nnx.Module, sar: jax.Array) -> jax.Array:
    """Evaluation-mode zone logits ``[N, S, S, K]`` of a segmenter for SAR ``[N, S, S, 1]``."""
    return model(sar)["logits"]


def make_predict_fn(
    graphdef: Any, predict: Callable[[nnx.Module, jax.Array], jax.Array] = zone_logits
):
    """``(params, rest, sar) -> logits`` in evaluation mode.

    Args:
        graphdef: Static graph of the model (`graphdef_of`).
        predict: ``(model, sar [N, S, S, 1]) -> logits [N, S, S, K]`` (a task's ``predict``).
    """

    def predict_fn(params, rest, sar):
        return predict(nnx.merge(graphdef, params, rest), sar)

    return predict_fn


def numpy_predictor(
    predict_jit: Callable, params: Any, rest: Any, mesh: jax.sharding.Mesh, batch_size: int
) -> Callable[[np.ndarray], np.ndarray]:
    """Wrap a jitted predict into numpy ``[N, S, S, 1] -> [N, S, S, K]`` with a fixed batch.

    Inputs are padded to ``batch_size`` (one compilation). With several processes every process
    passes the same tiles; each contributes its slice and the output is gathered. In a single
    process, a call with exactly one full batch returns the jax array as dispatched (not yet
    computed), which lets the tiled inference (`ssl4sar_jax.evaluation.ensemble`) overlap its
    host work with the model; ``np.asarray`` of it waits for the result.
    """
    processes = jax.process_count()

    def predict_fn(tiles: np.ndarray) -> np.ndarray | jax.Array:
        tiles = np.asarray(tiles, np.float32)
        if processes == 1 and len(tiles) == batch_size:
            # One full batch (what the tiled inference passes): the device array, not waited
            # for, so the caller stitches the previous batch while this one runs.
            return predict_jit(
                params, rest, sharding_lib.make_global_batch({"sar": tiles}, mesh)["sar"]
            )
        outputs = []
        for start in range(0, len(tiles), batch_size):
            chunk, count = array_utils.pad_batch(tiles[start : start + batch_size], batch_size)
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
