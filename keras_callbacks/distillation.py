"""Keras 3 ``Distillation``: knowledge distillation added to the user's ``model.fit`` through ``compute_loss``.

The twin of :class:`lightning_plugins.distillation.Distillation`: same arguments and defaults, validated by
:class:`fitslim.distill.DistillationSettings`, and the same loss as :func:`fitslim.distill.kd_loss_reference`.
``on_train_begin`` puts a distilling ``compute_loss`` (the override point Keras documents) on the model, the adapters
and loss trackers beside it, through one :class:`keras_callbacks._hooks.Hooks` group, and rebuilds the train function;
``on_train_end`` (or an exception in the train step) undoes the group, so a later ``fit``/``evaluate``/``predict``
behaves as before. Works on TensorFlow, PyTorch and JAX.

Example:
    >>> from keras_callbacks.distillation import Distillation
    >>> # model.fit(x, y, epochs=5, callbacks=[Distillation(teacher, temperature=4.0, alpha=0.7)])
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import keras
from keras import ops

from fitslim.callback_spec import DistillationSpec
from fitslim.distill import adapter_kind, resolve_layer
from keras_callbacks._backend import loss_replicas
from keras_callbacks._hooks import Hooks, groups, rebuild_train_function, reset_compiled

__all__ = ["Distillation", "FeatureAdapter", "kd_loss"]

log = logging.getLogger(__name__)


def kd_loss(student_logits: Any, teacher_logits: Any, temperature: float = 4.0, loss: str = "kl") -> Any:
    """``T**2 * KL(softmax(t/T) || softmax(s/T))`` (summed over the class axis, averaged over the rest) or MSE.

    The Keras-ops twin of :func:`fitslim.distill.kd_loss_reference`; the class axis is the last one (Keras
    logits are ``(N, ..., C)``).
    """
    if loss == "mse":
        return ops.mean(ops.square(student_logits - teacher_logits))
    t = float(temperature)
    log_ps = ops.log_softmax(student_logits / t, axis=-1)
    log_pt = ops.log_softmax(teacher_logits / t, axis=-1)
    kl = ops.sum(ops.exp(log_pt) * (log_pt - log_ps), axis=-1)
    return (t * t) * ops.mean(kl)


def _default_output(outputs: Any) -> Any:
    if isinstance(outputs, Mapping):
        return outputs.get("logits", next(iter(outputs.values())))
    if isinstance(outputs, list | tuple):
        return outputs[0]
    return outputs


def _shape(tensor: Any) -> tuple[int | None, ...]:
    return tuple(None if d is None else int(d) for d in tensor.shape)


_ADAPTERS = "fitslim_distillation_adapters"  # the model attribute holding the adapters during fit


class FeatureAdapter(keras.layers.Layer):
    """A learnable bias-free linear map of one feature axis: a Dense on the last axis, or a 1x1 convolution.

    ``axis=-1`` maps channels-last features (``(N, ..., C)``: a Dense / 1x1 conv on NHWC); ``axis=1`` maps
    channels-first ones. The kernel ``(cin, cout)`` starts from ``U(-1/sqrt(cin), 1/sqrt(cin))`` (PyTorch's
    default for the Lightning twin's ``nn.Linear``/``nn.Conv2d``) drawn with a seed derived from ``key``
    alone: the same in every run and on every replica, and the global RNG is left untouched.

    Args:
        cin: student channels.
        cout: teacher channels.
        axis: the channel axis, ``-1`` or ``1``.
        key: the student layer name (seeds the initial kernel).

    Example:
        >>> adapter = FeatureAdapter(8, 16, axis=-1, key="transition_act")
        >>> tuple(adapter(keras.ops.zeros((2, 4, 4, 8))).shape)
        (2, 4, 4, 16)
    """

    def __init__(self, cin: int, cout: int, axis: int = -1, key: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if axis not in (-1, 1):
            raise ValueError(f"FeatureAdapter(axis={axis!r}): must be -1 (channels last) or 1. HINT: use axis=-1.")
        self.cin, self.cout, self.axis, self.key = int(cin), int(cout), axis, key
        bound = 1.0 / math.sqrt(self.cin)
        seed = zlib.crc32(key.encode()) % (2**31 - 1)
        self.kernel = self.add_weight(
            shape=(self.cin, self.cout),
            initializer=keras.initializers.RandomUniform(-bound, bound, seed=seed),
            name="kernel",
        )
        self.built = True

    def call(self, inputs: Any) -> Any:
        """Map the channel axis of ``inputs`` from ``cin`` to ``cout``."""
        if self.axis == -1:
            return ops.matmul(inputs, self.kernel)
        return ops.moveaxis(ops.matmul(ops.moveaxis(inputs, 1, -1), self.kernel), -1, 1)

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments."""
        return {**super().get_config(), "cin": self.cin, "cout": self.cout, "axis": self.axis, "key": self.key}


_KIND = "distillation"  # the Hooks group kind of this callback


class _AdapterHolder(keras.layers.Layer):
    """Carries the adapters as tracked sub-layers of the student during fit (so they are trainable variables)."""


_METRICS = "fitslim_distillation_metrics"  # the model attribute holding the loss trackers during fit


class _LossTrackers(keras.layers.Layer):
    """Batch-size weighted means of the distillation losses, tracked on the student during ``fit``.

    As a sub-layer of the student its metrics are in ``model.metrics``: the compiled train step carries their
    variables on every backend, Keras resets them each epoch and reports them in ``logs`` like ``loss``.
    """

    def __init__(self, names: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.names = list(names)
        self.trackers = [keras.metrics.Mean(name=name) for name in self.names]

    def update(self, values: dict[str, Any], batch_size: Any) -> None:
        for name, tracker in zip(self.names, self.trackers, strict=True):
            if name in values:
                tracker.update_state(values[name], sample_weight=batch_size)


def _channels(shape: tuple[int | None, ...], axis: int) -> int:
    value = shape[axis]
    if value is None:
        raise ValueError(f"feature shape {shape} has an unknown channel axis")
    return int(value)


def _same_optimizer(optimizer: Any, variables: list[Any]) -> Any:
    """A new optimizer like ``optimizer`` built for ``variables``, carrying over its state where names match."""
    new = type(optimizer).from_config(optimizer.get_config())
    new.build(variables)
    _copy_state(optimizer, new)
    return new


def _copy_state(source: Any, target: Any) -> None:
    """Copy the optimizer variables (step, learning rate, slots) of ``source`` into those of ``target`` of that name."""
    by_name: dict[str, list[Any]] = {}
    for v in source.variables:
        by_name.setdefault(v.name, []).append(v)
    for v in target.variables:
        found = by_name.get(v.name, [])
        if len(found) == 1 and tuple(found[0].shape) == tuple(v.shape):
            v.assign(found[0].value)


def _give_back_optimizer(model: Any, user: Any) -> None:
    """Give the student back the user's optimizer, with the trained step and slots (the adapters already gone)."""
    with _variable_scope(model):
        if not user.built:  # replaced before its first step: give it its slots, then the trained values
            user.build(list(model.trainable_variables))
        _copy_state(model.optimizer, user)
    model.optimizer = user


def _variable_scope(model: Any) -> Any:
    """Where new variables of ``model`` must be created: its TensorFlow distribution strategy's scope, if any."""
    strategy = getattr(model, "distribute_strategy", None)
    if keras.backend.backend() == "tensorflow" and strategy is not None:
        return strategy.scope()
    return contextlib.nullcontext()


class Distillation(keras.callbacks.Callback):
    """Distil a frozen teacher into the Keras model being fitted, without changing its ``compile``.

    During ``fit`` the training loss becomes
    ``(1 - alpha) * task_loss + alpha * kd_term + feature_weight * sum(feature_losses)``, where ``task_loss`` is
    what the user's compiled loss computes, ``kd_term`` is ``T**2 * KL(softmax(teacher/T) || softmax(student/T))``
    (``loss="kl"``), the logits' MSE (``"mse"``) or ``loss(student_logits, teacher_logits)``, and the feature
    losses are the MSE between named student and teacher layer outputs, the student's mapped by a learnable
    bias-free :class:`FeatureAdapter` when only the channel axis differs (a Dense / 1x1 conv on the last axis of
    channels-last features, chosen by :func:`fitslim.distill.adapter_kind` as on the Lightning side). During ``fit``
    the adapters are tracked as a sub-layer of the student (so the compiled train step trains them on every
    backend) and the student's optimizer is replaced by a copy built for the longer variable list; at the end the
    adapters are taken off (kept in :attr:`adapters`) and the student's own optimizer, with the trained step and
    slots copied back, is restored. Adapters are not saved in the student's checkpoints. The teacher is called
    with ``training=False`` under ``stop_gradient`` and is set ``trainable=False`` for the fit (restored at the
    end). The user's compiled metrics and the evaluation loss are unchanged; during ``fit``, ``logs["loss"]`` is the
    combined loss above (Keras' loss tracker records what ``compute_loss`` returns), and the training ``logs`` also
    get the batch-size weighted epoch means ``task_loss``, ``kd_loss``, ``combined_loss`` (and ``feature_loss``)
    as the Lightning twin logs them (validation computes only the task loss: put ``Distillation`` before
    ``CSVLogger``/``TensorBoard`` in ``callbacks`` so they do not get ``val_kd_loss`` & co. reading 0).

    Feature distillation runs the student's layers up to each named layer a second time (a view model sharing
    the student's weights), so it needs a Functional or Sequential student and teacher.

    Args:
        teacher: a ``keras.Model``, or a path to a ``.keras`` file (loaded with ``loader``, default
            ``keras.saving.load_model``).
        temperature: softmax temperature ``T`` (> 0).
        alpha: weight of the distillation term in [0, 1]; the task loss gets ``1 - alpha``.
        loss: ``"kl"``, ``"mse"``, or a callable ``(student_logits, teacher_logits) -> scalar``.
        features: ``{student_layer: teacher_layer}`` Keras layer names (nested: ``"inner.layer"``).
        feature_weight: weight (>= 0) of the summed feature losses.
        input_fn: ``x -> teacher input``; default: ``x`` as ``fit`` passes it to the model.
        output_fn: ``outputs -> logits`` for both models; default: a tensor, a dict's ``"logits"`` (or first)
            entry, or the first element of a list/tuple.
        loader: ``path -> keras.Model`` for a path teacher.

    Raises:
        TypeError: a teacher that is neither a ``keras.Model`` nor a path, a non-callable ``input_fn``,
            ``output_fn`` or ``loader``, or a bad type in the settings.
        ValueError: temperature <= 0, alpha outside [0, 1], an unknown loss, a negative feature_weight; in
            ``on_train_begin`` (before the first step): teacher and student outputs of different shapes, an
            unknown feature layer, feature shapes no adapter maps (different rank or spatial size; the message
            names both layers and shapes), the teacher being the student. A subclassed student or teacher (no
            symbolic outputs) has its output shape checked on the first batch instead, before the first update;
            feature distillation needs symbolic outputs on both.

    Example:
        >>> from keras_callbacks.reference import build_digits_classifier
        >>> teacher = build_digits_classifier(width=2.0)
        >>> cb = Distillation(teacher, temperature=4.0, alpha=0.7)
        >>> cb.settings.loss
        'kl'
        >>> # build_digits_classifier(width=0.5).fit(x, y, epochs=5, callbacks=[cb])
    """

    def __init__(
        self,
        teacher: Any,
        temperature: float = 1.0,
        alpha: float = 0.5,
        loss: str | Callable[[Any, Any], Any] = "kl",
        features: Mapping[str, str] | None = None,
        feature_weight: float = 1.0,
        input_fn: Callable[[Any], Any] | None = None,
        output_fn: Callable[[Any], Any] | None = None,
        loader: Callable[[str], Any] | None = None,
    ) -> None:
        super().__init__()
        spec = DistillationSpec(temperature, alpha, loss, features, feature_weight, input_fn, output_fn, loader)
        self.settings = spec.settings
        if not isinstance(teacher, str | os.PathLike | keras.Model):
            raise TypeError(
                f"Distillation(teacher=...): expected a keras.Model or a .keras path; got {type(teacher).__name__}. "
                "HINT: pass the trained teacher model."
            )
        self.teacher = teacher
        self.input_fn = input_fn
        self.output_fn = output_fn or _default_output
        self.loader = loader
        self._teacher: Any = None
        self._hooks: Hooks | None = None
        self._teacher_trainable = True
        self._student_view: Any = None
        self._teacher_view: Any = None
        #: the learned feature adapters, ``{student layer: FeatureAdapter}`` (kept after fit for inspection)
        self.adapters: dict[str, FeatureAdapter] = {}
        self._adapter_specs: dict[str, tuple[str, int, int, int]] = {}
        self._check_on_first_batch = False
        self._trackers: _LossTrackers | None = None

    # -- checks --------------------------------------------------------------------------------------

    def _load_teacher(self) -> Any:
        if isinstance(self.teacher, keras.Model):
            return self.teacher
        path = os.fspath(self.teacher)
        loader = self.loader or keras.saving.load_model
        teacher = loader(path)
        if not isinstance(teacher, keras.Model):
            raise TypeError(
                f"Distillation(teacher={path!r}): the loader returned {type(teacher).__name__}, not a keras.Model. "
                "HINT: pass loader=... returning the model."
            )
        return teacher

    @staticmethod
    def _output_tensor(model: Any, who: str) -> Any:
        outputs = getattr(model, "outputs", None)
        if not outputs:
            raise ValueError(
                f"Distillation(features=...): the {who} ({type(model).__name__}) has no symbolic outputs, so its "
                "intermediate layers cannot be read. HINT: use a Functional or Sequential model for feature "
                "distillation, or distil the outputs only (features=None)."
            )
        return outputs[0]

    def _check_outputs(self, student: Any, teacher: Any) -> None:
        """Raise when the student's and the teacher's outputs (after ``output_fn``) differ in shape."""
        s_shape, t_shape = _shape(student), _shape(teacher)
        if len(s_shape) != len(t_shape) or any(
            a is not None and b is not None and a != b for a, b in zip(s_shape[1:], t_shape[1:], strict=False)
        ):
            raise ValueError(
                f"Distillation(teacher=...): the teacher's output shape {t_shape} differs from the "
                f"student's {s_shape}. HINT: distil a teacher with the same output (the same classes), "
                "or pass output_fn=... selecting comparable logits."
            )

    def _layer(self, model: Any, name: str, who: str) -> Any:
        names = [layer.name for layer in model._flatten_layers(include_self=False)]
        full = resolve_layer(names, name, who=who)
        return next(layer for layer in model._flatten_layers(include_self=False) if layer.name == full)

    def _prepare(self, model: Any, teacher: Any) -> None:
        if teacher is model:
            raise ValueError(
                "Distillation(teacher=...): the teacher is the model being trained. HINT: pass a separate, "
                "trained teacher model."
            )
        symbolic = bool(getattr(model, "outputs", None)) and bool(getattr(teacher, "outputs", None))
        # a subclassed student or teacher has no symbolic output: its shape is checked on the first batch
        # (when the train step is traced or first run), before the first optimizer update
        self._check_on_first_batch = not symbolic
        if symbolic:
            if _shape(model.outputs[0])[1:] != _shape(teacher.outputs[0])[1:]:
                self._check_outputs(model.outputs[0], teacher.outputs[0])
        elif self.settings.features:
            self._output_tensor(model, "student")
            self._output_tensor(teacher, "teacher")
        self._student_view = self._teacher_view = None
        self._adapter_specs = {}
        features = self.settings.features or {}
        if features:
            student_outputs, teacher_outputs = [], []
            for s_name, t_name in features.items():
                s_out = self._layer(model, s_name, "student").output
                t_out = self._layer(teacher, t_name, "teacher").output
                s_shape, t_shape = _shape(s_out), _shape(t_out)
                kind = adapter_kind([1, *(d or 0 for d in s_shape[1:])], [1, *(d or 0 for d in t_shape[1:])])
                if kind == "incompatible":
                    raise ValueError(
                        f"Distillation(features={{{s_name!r}: {t_name!r}}}): student layer {s_name!r} gives "
                        f"{s_shape} and teacher layer {t_name!r} gives {t_shape}; a learnable adapter (a Dense / 1x1 "
                        "conv) maps only the channel axis (the last one, or axis 1 for channels-first maps). "
                        "HINT: pair layers with the same rank and spatial size."
                    )
                if kind is not None:
                    axis = -1 if kind == "linear" else 1
                    self._adapter_specs[s_name] = (kind, axis, _channels(s_shape, axis), _channels(t_shape, axis))
                student_outputs.append(s_out)
                teacher_outputs.append(t_out)
            self._student_view = keras.Model(model.inputs, student_outputs)
            self._teacher_view = keras.Model(teacher.inputs, [*teacher.outputs, *teacher_outputs])

    # -- adapters ------------------------------------------------------------------------------------

    def _attach_adapters(self, model: Any, hooks: Hooks) -> None:
        """Create the adapters (or keep those of an earlier fit), track them on the student, extend the optimizer.

        Tracked as a sub-layer of the student, their kernels are in ``model.trainable_variables``, which the
        compiled train step differentiates and updates on every backend; the optimizer is rebuilt for the longer
        variable list (a copy of the user's, with its step, learning rate and slots carried over).
        """
        if not self._adapter_specs:
            return
        with _variable_scope(model):
            for key, (kind, axis, cin, cout) in self._adapter_specs.items():
                old = self.adapters.get(key)
                if old is None or (old.cin, old.cout, old.axis) != (cin, cout, axis):
                    name = f"fitslim_adapter_{len(self.adapters)}_{key.replace('.', '_').replace('/', '_')}"
                    self.adapters[key] = FeatureAdapter(cin, cout, axis=axis, key=key, name=name)
                    log.info("fitslim Distillation: %s adapter for %r, %d → %d channels", kind, key, cin, cout)
            holder = _AdapterHolder(name=_ADAPTERS)
            holder.adapters = [self.adapters[key] for key in self._adapter_specs]
            optimizer = getattr(model, "optimizer", None)
            if optimizer is not None:  # undone after the adapters are gone (reverse order)
                hooks.on_undo(lambda: _give_back_optimizer(model, optimizer))
            hooks.track(model, _ADAPTERS, holder)
            if optimizer is not None:
                model.optimizer = _same_optimizer(optimizer, list(model.trainable_variables))

    # -- loss ----------------------------------------------------------------------------------------

    def _kd_term(self, student_logits: Any, teacher_logits: Any) -> Any:
        loss = self.settings.loss
        if callable(loss):
            return loss(student_logits, teacher_logits)
        return kd_loss(student_logits, teacher_logits, self.settings.temperature, str(loss))

    def _feature_terms(self, student_feats: Any, teacher_feats: Any) -> list[Any]:
        terms = []
        for key, s, t in zip(self.settings.features or {}, student_feats, teacher_feats, strict=True):
            adapter = self.adapters.get(key) if key in self._adapter_specs else None
            mapped = adapter(s) if adapter is not None else s
            terms.append(ops.mean(ops.square(ops.cast(mapped, "float32") - ops.cast(t, "float32"))))
        return terms

    def feature_losses(self, x: Any) -> dict[str, float]:
        """The feature MSEs of one input batch, through the adapters, ``{student layer: loss}`` (during ``fit``).

        Raises:
            RuntimeError: outside ``fit`` (no views of the student and teacher features).
        """
        if self._teacher_view is None or self._student_view is None:
            raise RuntimeError("Distillation.feature_losses: call it during fit with features=... set.")
        teacher_in = self.input_fn(x) if self.input_fn is not None else x
        outs = self._teacher_view(teacher_in, training=False)
        student_feats = self._student_view(x, training=False)
        if not isinstance(student_feats, list | tuple):
            student_feats = [student_feats]
        terms = self._feature_terms(student_feats, outs[len(self._teacher.outputs) :])
        return {k: float(ops.convert_to_numpy(v)) for k, v in zip(self.settings.features or {}, terms, strict=True)}

    def distillation_loss(self, x: Any, y_pred: Any, task_loss: Any) -> Any:
        """The combined loss for one batch, given the student's predictions and the task loss."""
        alpha, weight = self.settings.alpha, self.settings.feature_weight
        teacher_in = self.input_fn(x) if self.input_fn is not None else x
        feature_terms: list[Any] = []
        if self._teacher_view is not None:
            outs = self._teacher_view(teacher_in, training=False)
            teacher_logits = ops.stop_gradient(self.output_fn(outs[: len(self._teacher.outputs)]))
            teacher_feats = [ops.stop_gradient(t) for t in outs[len(self._teacher.outputs) :]]
            student_feats = self._student_view(x, training=True)
            if not isinstance(student_feats, list | tuple):
                student_feats = [student_feats]
            feature_terms = self._feature_terms(student_feats, teacher_feats)
        else:
            teacher_logits = ops.stop_gradient(self.output_fn(self._teacher(teacher_in, training=False)))
        student_logits = self.output_fn(y_pred)
        if self._check_on_first_batch:
            self._check_outputs(student_logits, teacher_logits)
            self._check_on_first_batch = False
        trackers = self._trackers
        total = ops.zeros((), dtype="float32")
        task = ops.cast(task_loss, "float32")
        if alpha < 1.0:
            total = total + (1.0 - alpha) * task
        kd = None
        if alpha > 0.0 or trackers is not None:
            kd = ops.cast(self._kd_term(student_logits, teacher_logits), "float32")
            if alpha > 0.0:
                total = total + alpha * kd
        feature_sum = ops.cast(sum(feature_terms[1:], feature_terms[0]), "float32") if feature_terms else None
        if feature_sum is not None and weight > 0.0:
            total = total + weight * feature_sum
        if trackers is not None:
            values = {"task_loss": task, "kd_loss": kd, "combined_loss": total}
            if feature_sum is not None:
                values["feature_loss"] = feature_sum
            values = {k: ops.stop_gradient(v) for k, v in values.items()}
            trackers.update(values, ops.cast(ops.shape(student_logits)[0], "float32"))
        return total

    # -- hooks ---------------------------------------------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        """Check the teacher against the student, freeze it, patch ``compute_loss`` and rebuild the step."""
        model = self.model
        teacher = self._load_teacher()
        for stale in reversed(groups(model, _KIND)):  # left by a fit that raised outside the train function
            stale.undo()
        self._prepare(model, teacher)
        self._teacher = teacher
        self._teacher_trainable = bool(teacher.trainable)
        teacher.trainable = False
        hooks = self._hooks = Hooks(model, _KIND)
        original = model.compute_loss
        callback = self

        def compute_loss(
            x: Any = None, y: Any = None, y_pred: Any = None, sample_weight: Any = None, training: bool = True
        ) -> Any:
            task = original(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
            if not training:
                return task
            # under tf.distribute Keras returns the replica's loss divided by the replica count (gradients are summed
            # across replicas): combine on the undivided loss, then divide the whole, the distillation terms included
            replicas = loss_replicas()
            if replicas == 1:
                return callback.distillation_loss(x, y_pred, task)
            return callback.distillation_loss(x, y_pred, task * float(replicas)) / float(replicas)

        hooks.replace(model, "compute_loss", compute_loss)
        self._attach_adapters(model, hooks)
        self._attach_trackers(model, hooks)
        rebuild_train_function(model)
        log.info(
            "fitslim Distillation: teacher %s → student %s (T=%.2f, alpha=%.2f%s)",
            teacher.name,
            model.name,
            self.settings.temperature,
            self.settings.alpha,
            f", features {dict(self.settings.features or {})}" if self.settings.features else "",
        )

    def _attach_trackers(self, model: Any, hooks: Hooks) -> None:
        names = ["task_loss", "kd_loss", "combined_loss"] + (["feature_loss"] if self.settings.features else [])
        with _variable_scope(model):
            self._trackers = _LossTrackers(names, name=_METRICS)
        hooks.track(model, _METRICS, self._trackers)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Drop ``val_kd_loss`` & co. from the epoch logs: validation computes only the task loss, they would read 0."""
        if logs is not None and self._trackers is not None:
            for name in self._trackers.names:
                logs.pop(f"val_{name}", None)

    def _restore(self) -> None:
        try:
            self._trackers = None
            if self._hooks is not None:
                hooks, self._hooks = self._hooks, None
                hooks.undo()  # trackers, adapters, the user's optimizer, compute_loss: newest first
                reset_compiled(self.model)
        finally:
            if self._teacher is not None:
                self._teacher.trainable = self._teacher_trainable
                self._teacher = None
            self._student_view = self._teacher_view = None

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        """Restore ``compute_loss``, the train function and the teacher's ``trainable`` flag."""
        self._restore()
