"""Keras 3 ``Distillation``: knowledge distillation added to the user's ``model.fit`` through ``compute_loss``.

The twin of :class:`lightning_plugins.distillation.Distillation`: same arguments and defaults, validated by
:class:`fitslim.distill.DistillationSettings`, and the same loss as :func:`fitslim.distill.kd_loss_reference`.
``on_train_begin`` patches ``model.compute_loss`` and rebuilds the train function; ``on_train_end`` restores
both, so a later ``fit``/``evaluate``/``predict`` behaves as before. Works on TensorFlow, PyTorch and JAX.

Example:
    >>> from keras_callbacks.distillation import Distillation
    >>> # model.fit(x, y, epochs=5, callbacks=[Distillation(teacher, temperature=4.0, alpha=0.7)])
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import keras
from keras import ops

from fitslim.distill import DistillationSettings, adapter_kind, resolve_layer

__all__ = ["Distillation", "kd_loss"]

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


class Distillation(keras.callbacks.Callback):
    """Distil a frozen teacher into the Keras model being fitted, without changing its ``compile``.

    During ``fit`` the training loss becomes
    ``(1 - alpha) * task_loss + alpha * kd_term + feature_weight * sum(feature_losses)``, where ``task_loss`` is
    what the user's compiled loss computes, ``kd_term`` is ``T**2 * KL(softmax(teacher/T) || softmax(student/T))``
    (``loss="kl"``), the logits' MSE (``"mse"``) or ``loss(student_logits, teacher_logits)``, and the feature
    losses are the MSE between named student and teacher layer outputs of equal shapes. The teacher is called
    with ``training=False`` under ``stop_gradient`` and is set ``trainable=False`` for the fit (restored at the
    end). The user's compiled metrics and the evaluation loss are unchanged; during ``fit``, ``logs["loss"]`` is the
    combined loss above (Keras' loss tracker records what ``compute_loss`` returns).

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
            unknown feature layer, feature shapes that differ, the teacher being the student.

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
        temperature: float = 4.0,
        alpha: float = 0.7,
        loss: str | Callable[[Any, Any], Any] = "kl",
        features: Mapping[str, str] | None = None,
        feature_weight: float = 1.0,
        input_fn: Callable[[Any], Any] | None = None,
        output_fn: Callable[[Any], Any] | None = None,
        loader: Callable[[str], Any] | None = None,
    ) -> None:
        super().__init__()
        self.settings = DistillationSettings(temperature, alpha, loss, features, feature_weight)
        for name, fn in (("input_fn", input_fn), ("output_fn", output_fn), ("loader", loader)):
            if fn is not None and not callable(fn):
                raise TypeError(
                    f"Distillation({name}=...): got {type(fn).__name__}; expected a callable. HINT: pass a function."
                )
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
        self._original: Any = None
        self._patched = False
        self._teacher_trainable = True
        self._student_view: Any = None
        self._teacher_view: Any = None

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
                f"Distillation(teacher=...): the {who} ({type(model).__name__}) has no symbolic outputs, so its "
                "output shape cannot be checked before training. HINT: use a Functional or Sequential model, "
                "or build it with an Input."
            )
        return outputs[0]

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
        student_out = self._output_tensor(model, "student")
        teacher_out = self._output_tensor(teacher, "teacher")
        if _shape(student_out)[1:] != _shape(teacher_out)[1:]:
            raise ValueError(
                f"Distillation(teacher=...): the teacher's output shape {_shape(teacher_out)} differs from the "
                f"student's {_shape(student_out)}. HINT: distil a teacher with the same output (the same classes), "
                "or pass output_fn=... selecting comparable logits."
            )
        self._student_view = self._teacher_view = None
        features = self.settings.features or {}
        if features:
            student_outputs, teacher_outputs = [], []
            for s_name, t_name in features.items():
                s_out = self._layer(model, s_name, "student").output
                t_out = self._layer(teacher, t_name, "teacher").output
                kind = adapter_kind(
                    [1, *(d or 0 for d in _shape(s_out)[1:])], [1, *(d or 0 for d in _shape(t_out)[1:])]
                )
                if kind is not None:
                    raise ValueError(
                        f"Distillation(features={{{s_name!r}: {t_name!r}}}): student feature {_shape(s_out)} and "
                        f"teacher feature {_shape(t_out)} differ ({kind}); Keras feature adapters are not "
                        "supported yet. HINT: pick layers of the same shape."
                    )
                student_outputs.append(s_out)
                teacher_outputs.append(t_out)
            self._student_view = keras.Model(model.inputs, student_outputs)
            self._teacher_view = keras.Model(teacher.inputs, [*teacher.outputs, *teacher_outputs])

    # -- loss ----------------------------------------------------------------------------------------

    def _kd_term(self, student_logits: Any, teacher_logits: Any) -> Any:
        loss = self.settings.loss
        if callable(loss):
            return loss(student_logits, teacher_logits)
        return kd_loss(student_logits, teacher_logits, self.settings.temperature, str(loss))

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
            feature_terms = [ops.mean(ops.square(s - t)) for s, t in zip(student_feats, teacher_feats, strict=True)]
        else:
            teacher_logits = ops.stop_gradient(self.output_fn(self._teacher(teacher_in, training=False)))
        student_logits = self.output_fn(y_pred)
        total = ops.zeros((), dtype="float32")
        if alpha < 1.0:
            total = total + (1.0 - alpha) * ops.cast(task_loss, "float32")
        if alpha > 0.0:
            total = total + alpha * ops.cast(self._kd_term(student_logits, teacher_logits), "float32")
        if feature_terms and weight > 0.0:
            total = total + weight * ops.cast(sum(feature_terms[1:], feature_terms[0]), "float32")
        return total

    # -- hooks ---------------------------------------------------------------------------------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        """Check the teacher against the student, freeze it, patch ``compute_loss`` and rebuild the step."""
        model = self.model
        teacher = self._load_teacher()
        self._prepare(model, teacher)
        self._teacher = teacher
        self._teacher_trainable = bool(teacher.trainable)
        teacher.trainable = False
        stale = model.__dict__.get("compute_loss")
        if stale is not None and hasattr(stale, "_fitslim_previous"):  # left by a fit that raised
            if stale._fitslim_previous is None:
                del model.__dict__["compute_loss"]
            else:
                model.compute_loss = stale._fitslim_previous
        original = model.compute_loss
        callback = self

        def compute_loss(
            x: Any = None, y: Any = None, y_pred: Any = None, sample_weight: Any = None, training: bool = True
        ) -> Any:
            task = original(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
            if not training:
                return task
            return callback.distillation_loss(x, y_pred, task)

        self._original = model.__dict__.get("compute_loss")
        compute_loss._fitslim_previous = self._original  # type: ignore[attr-defined]
        model.compute_loss = compute_loss
        self._patched = True
        model.make_train_function(force=True)
        log.info(
            "fitslim Distillation: teacher %s → student %s (T=%.2f, alpha=%.2f%s)",
            teacher.name,
            model.name,
            self.settings.temperature,
            self.settings.alpha,
            f", features {dict(self.settings.features or {})}" if self.settings.features else "",
        )

    def _restore(self) -> None:
        model = self.model
        try:
            if self._patched:
                if self._original is not None:
                    model.compute_loss = self._original
                else:
                    model.__dict__.pop("compute_loss", None)
                self._patched = False
                model.make_train_function(force=True)
        finally:
            if self._teacher is not None:
                self._teacher.trainable = self._teacher_trainable
                self._teacher = None
            self._student_view = self._teacher_view = None

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        """Restore ``compute_loss``, the train function and the teacher's ``trainable`` flag."""
        self._restore()
