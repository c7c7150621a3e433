"""The one place that branches on the Keras backend (TensorFlow, PyTorch, JAX).

On JAX, ``model.fit`` keeps the training state (variables, optimizer slots) as arrays outside the
``keras.Variable`` objects between steps; a callback that reads or assigns variables must first write that
state back (``model.jax_state_sync()``), after which the trainer reloads the state from the variables before
the next step. On TensorFlow and PyTorch the variables are the state and nothing is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from keras_callbacks._hooks import Hooks, groups, rebuild_train_function, reset_compiled

__all__ = [
    "backend",
    "loss_replicas",
    "masking_function",
    "patch_train_step",
    "replica_union",
    "sync_state",
    "to_numpy",
    "unpatch",
]


def backend() -> str:
    """The active Keras backend name (``"tensorflow"``, ``"torch"``, ``"jax"``)."""
    return str(keras.backend.backend())


def sync_state(model: Any) -> None:
    """Make ``model``'s variables current (JAX: write the trainer's state back; others: no-op)."""
    if backend() == "jax":
        sync = getattr(model, "jax_state_sync", None)
        if callable(sync) and getattr(model, "_jax_state", None) is not None:
            sync()


def replica_union(value: Any) -> Any:
    """``value`` of every replica of the running step, concatenated along axis 0.

    Under a TensorFlow ``tf.distribute`` strategy with more than one replica (replica context, e.g. a train step of
    ``MirroredStrategy``), each replica sees its own slice of the global batch: a statistic of the batch (an
    observer's absmax or percentile) must be taken on the union, an all-gather. Elsewhere ``value`` is returned as
    it is: one device holds the whole batch, and JAX's ``keras.distribution.DataParallel`` traces one global step
    (its reductions already run over the whole batch).

    Args:
        value: a tensor of this replica, with a leading axis to concatenate on.
    """
    if backend() != "tensorflow":
        return value
    import tensorflow as tf

    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return value
    return ctx.all_gather(value, axis=0)


def loss_replicas() -> int:
    """How many replicas Keras divides each replica's loss by: ``num_replicas_in_sync`` on TensorFlow, else 1.

    Keras' compiled loss returns the replica's loss divided by the number of replicas (gradients are then summed
    across replicas), so a term added to it in ``compute_loss`` must be divided the same way.
    """
    if backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return int(tf.distribute.get_strategy().num_replicas_in_sync)


def to_numpy(value: Any) -> np.ndarray:
    """A NumPy copy of a Keras variable or backend tensor."""
    return np.asarray(keras.ops.convert_to_numpy(value))


def masking_function(kernels: Sequence[Any], masks: Sequence[Any]) -> Callable[[], None]:
    """A function that multiplies every kernel by its mask variable in place (``k.assign(k * m)``).

    On TensorFlow it is one ``tf.function`` call per step (one graph instead of a few eager ops per layer,
    and it assigns through mirrored variables under ``MirroredStrategy``); elsewhere it runs eagerly.
    """

    def apply() -> None:
        for kernel, mask in zip(kernels, masks, strict=True):
            kernel.assign(keras.ops.multiply(kernel.value, mask.value))

    if backend() == "tensorflow":
        import tensorflow as tf

        compiled: Callable[[], None] = tf.function(apply, autograph=False)
        return compiled
    return apply


def patch_train_step(model: Any, after_step: Callable[[], None]) -> Callable[[], None] | None:
    """Run ``after_step`` inside the compiled train step, right after the optimizer update, where possible.

    Only on TensorFlow without a distribution strategy: there ``train_step`` is traced into the train
    function, so the masking costs no Python per step, and TF's automatic control dependencies order the
    assignment after the optimizer's. Under a ``tf.distribute`` strategy the train step runs in replica context
    (each replica would assign its copy of a mirrored kernel: that ran on Keras 3.15 / TF 2.21 with
    ``MirroredStrategy`` in a quick check, but is not relied on), on JAX the step is a function over state and on
    PyTorch it is eager: there the caller masks in ``on_train_batch_end`` instead, which gives the one-device masks
    under ``MirroredStrategy`` (tests/keras_callbacks/test_distributed.py). The replacement is a
    :class:`keras_callbacks._hooks.Hooks` group of kind ``"train-step"`` (one left by a fit that raised is undone
    first).

    Returns:
        A function undoing the patch (and dropping the compiled functions), or None when not patched.
    """
    if backend() != "tensorflow":
        return None
    if type(model.distribute_strategy).__name__ != "_DefaultDistributionStrategy":
        return None
    unpatch(model)
    original = model.train_step

    def train_step(data: Any) -> Any:
        logs = original(data)
        after_step()
        return logs

    hooks = Hooks(model, "train-step")
    hooks.replace(model, "train_step", train_step)
    rebuild_train_function(model)

    def undo() -> None:
        hooks.undo()
        reset_compiled(model)

    return undo


def unpatch(model: Any) -> None:
    """Remove a train-step patch left by :func:`patch_train_step` (also one left by an interrupted fit)."""
    stale = groups(model, "train-step")
    for group in reversed(stale):
        group.undo()
    if stale:
        reset_compiled(model)
