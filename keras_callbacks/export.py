"""Keras ``Export``: at the end of ``model.fit``, write verified deployment artifacts.

Example:
    >>> from keras_callbacks import Export
    >>> cb = Export(targets=["onnx", "tflite"], directory="exports")
    >>> # model.fit(x, y, epochs=5, callbacks=[cb]); print(cb.report)
"""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Callable, Sequence
from itertools import islice
from typing import Any

import keras
import numpy as np
from typing_extensions import override

from exporters.core.latency import latency_metrics
from exporters.core.report import ExportReport
from exporters.core.settings import ExportSettings
from exporters.core.source import as_numpy, batch_input
from fitslim.callback_spec import ExportSpec, call_arguments
from fitslim.metrics import export_metrics
from fitslim.quantspec import QuantSpec
from keras_callbacks._hooks import handoff
from keras_callbacks.quantization import fake_quant_inference, float_model, tflite_int8

__all__ = ["Export"]

log = logging.getLogger(__name__)


def _fit_inputs(model: Any, name: str = "x") -> Any:
    """The ``x`` (or another local, e.g. ``callbacks``) of the running ``model.fit``, found on the call stack, or None.

    Keras gives callbacks no handle on the training data or on the other callbacks; the frame of ``fit`` holds them.
    """
    frame = inspect.currentframe()
    try:
        while frame is not None:
            if frame.f_code.co_name == "fit" and frame.f_locals.get("self") is model:
                return frame.f_locals.get(name)
            frame = frame.f_back
    finally:
        del frame
    return None


def _tensorboard_dirs(model: Any) -> list[str]:
    """The ``log_dir`` of every ``keras.callbacks.TensorBoard`` in the running ``fit``'s callbacks."""
    found = _fit_inputs(model, "callbacks")
    callbacks = getattr(found, "callbacks", found) or []
    return [str(cb.log_dir) for cb in callbacks if isinstance(cb, keras.callbacks.TensorBoard)]


def _write_tensorboard(log_dir: str, metrics: dict[str, float], markdown: str, step: int) -> None:
    """The report's metrics as scalars and its Markdown table as text, in ``<log_dir>/export``."""
    import tensorflow as tf  # a keras.callbacks.TensorBoard in the fit means TensorFlow is installed

    writer = tf.summary.create_file_writer(os.path.join(log_dir, "export"))
    try:
        with writer.as_default(step=step):
            for key, value in metrics.items():
                tf.summary.scalar(key, value)
            tf.summary.text("export/report.md", markdown)
        writer.flush()
    finally:
        writer.close()


def _batches_from(x: Any, batch_size: int, count: int, get: Callable[[Any], Any]) -> list[np.ndarray]:
    if x is None:
        return []
    if isinstance(x, np.ndarray) or hasattr(x, "__array__") and not hasattr(x, "element_spec"):
        arr = as_numpy(x)
        return [arr[i : i + batch_size] for i in range(0, min(len(arr), batch_size * count), batch_size)]
    if hasattr(x, "element_spec") or hasattr(x, "__iter__") or hasattr(x, "__getitem__"):
        it = iter(x) if hasattr(x, "__iter__") else (x[i] for i in range(len(x)))
        return [as_numpy(get(b)) for b in islice(it, count)]
    return []


def _fake_quant_reference(model: Any, spec: QuantSpec) -> Callable[[Any], Any]:
    """Outputs of ``model`` run as the fake-quant model of ``spec``: what int8 artifacts must reproduce."""

    def run(x: Any) -> Any:
        with fake_quant_inference(model, spec):
            return keras.ops.convert_to_numpy(model(x, training=False))

    return run


class Export(keras.callbacks.Callback):
    """Export the trained Keras model to ONNX, ncnn, TFLite and TensorRT when ``fit`` ends.

    Runs on ``on_train_end``. An export failure is logged and recorded in :attr:`report`; it never
    raises out of ``fit`` and never touches the trained weights. The report's figures go into the ``logs`` of
    ``on_train_end`` (``export/<target>/status``, ``size_bytes``, ``max_abs_error``, ``max_rel_error``,
    ``top1_agreement``, ``latency_ms``; :func:`fitslim.metrics.export_metrics`) and, when the fit has a
    ``keras.callbacks.TensorBoard``, into ``<its log_dir>/export`` as scalars with the Markdown report as text.
    Every fp16 / int8 artifact is timed against fp32 of its target (:mod:`exporters.core.latency`):
    ``export/<target>/latency_ratio``, ``fp32_latency_ms`` and ``slower_than_fp32`` (1.0 when it runs slower than
    fp32 on this machine, which the report and the log also give as a WARNING).

    The artifacts are verified on held-out inputs: ``verify_data`` when given, else the ``validation_data`` (or
    ``validation_split``) given to ``fit``, else training batches after the calibration ones; the report's
    ``Verified on ...`` line says which.

    Args:
        targets: any of ``"onnx"``, ``"ncnn"``, ``"tflite"``, ``"tensorrt"``.
        directory: output folder for artifacts and ``report.json`` / ``report.md``.
        precision: ``"auto"`` (int8 when a QuantSpec is present, i.e. ``QuantizationAware`` ran or
            ``quant_spec`` is given; fp32 otherwise), ``"fp32"``, ``"fp16"`` or ``"int8"``.
        example_input: one input batch (NHWC); the first batch of the data given to ``fit`` when None.
        calibration: input batches for int8 and verification; the first ``calibration_batches`` batches
            of the data given to ``fit`` when None.
        calibration_batches: how many batches to take from the training data to calibrate on (and how many
            validation batches, or further training batches, to verify on).
        quant_spec: learned int8 scales, or the path of a ``quant_spec.json``; taken from a
            ``QuantizationAware`` callback when None.
        verify: run each artifact in its runtime and compare with the model.
        threads: runtime threads for verification and latency.
        input_fn: ``batch -> input`` for datasets whose elements are not ``(x, y)`` tuples.
        ncnn_depthwise: ``"int8"`` (default) or ``"float"``: depthwise convolutions stay fp32 in the ncnn int8
            model, which is faster on x86 (ncnn's int8 depthwise kernel is slower than its fp32 one there).
        onnx_weights: ``"auto"`` (default: for the exporting CPU), ``"int8"`` (ARM, x86 with VNNI) or ``"uint8"``
            (x86 without VNNI): how the ``onnx`` int8 artifact stores its weights.
        batch_size: batch size used to slice array inputs given to ``fit``.
        verify_data: inputs to verify on (an array, or a dataset / batches); see above for the default.

    Raises:
        ValueError: unknown target or precision, or a ``quant_spec`` path that holds no QuantSpec.
        TypeError: a ``verify_data`` that is not inputs.
    """

    def __init__(
        self,
        targets: Sequence[str] = ("onnx",),
        directory: str | os.PathLike[str] = "exports",
        precision: str = "auto",
        example_input: Any = None,
        calibration: Any = None,
        calibration_batches: int = 8,
        quant_spec: QuantSpec | str | os.PathLike[str] | None = None,
        verify: bool = True,
        threads: int = 2,
        input_fn: Callable[[Any], Any] | None = None,
        batch_size: int = 32,
        ncnn_depthwise: str = "int8",
        onnx_weights: str = "auto",
        verify_data: Any = None,
    ) -> None:
        arguments = call_arguments(locals(), drop=("batch_size",))
        super().__init__()
        self.settings = ExportSettings.from_spec(ExportSpec(**arguments))
        self.batch_size = batch_size
        self.report: ExportReport | None = None
        self._fit_x: Any = None
        self._fit_val_x: Any = None
        self._tensorboard_dirs: list[str] = []

    @override
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self.settings.needs_training_data():
            self._fit_x = _fit_inputs(self.model)
        if self.settings.verify and self.settings.verify_data is None:
            # fit has already split off validation_split into its local validation_data by now
            val = _fit_inputs(self.model, "validation_data")
            self._fit_val_x = val[0] if isinstance(val, tuple) and val else val
        self._tensorboard_dirs = _tensorboard_dirs(self.model)

    @override
    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        s = self.settings
        get = s.input_fn or batch_input
        try:
            held_out = _batches_from(self._fit_val_x, self.batch_size, s.calibration_batches, get)
        except Exception as err:  # unreadable validation data: verify on training batches instead
            log.warning("fitslim Export could not take batches from the validation data given to fit: %s", err)
            held_out = []
        finally:
            self._fit_val_x = None
        count = s.calibration_batches if held_out else s.training_batches_wanted()
        try:
            batches = _batches_from(self._fit_x, self.batch_size, count, get)
        except Exception as err:  # unreadable fit data: export with what was given explicitly
            log.warning("fitslim Export could not take batches from the data given to fit: %s", err)
            batches = []
        finally:
            self._fit_x = None
        # what QuantizationAware and Pruning placed before this callback handed on, beside the model (not on it)
        passed = handoff(self.model)
        found = passed.quantized
        spec = self.settings.quant_spec or (found.spec if found is not None else None)
        # the physically smaller model after channel removal
        model = passed.pruned_model if passed.pruned_model is not None else self.model
        reference: Callable[[Any], Any] | None = None
        converter: Callable[[Any, QuantSpec, Any], bytes] | None = None
        if found is not None and spec is found.spec:
            reference, converter = found.reference, found.tflite_int8
        elif spec is not None and spec.source == "qat":
            reference, converter = _fake_quant_reference(model, spec), tflite_int8

        name = getattr(model, "name", "keras model")
        # a model kept quantized (QuantizationAware(keep_fake_quant=True)) runs its fake-quant: the exporters take the
        # float model and the spec (the reference above runs the spec's fake-quant itself), quantized again afterwards
        with float_model(model):
            self.report = self.settings.run(model, batches, spec, name, reference, converter, held_out=held_out)
        self._log_report(self.report, logs)

    def _log_report(self, report: ExportReport, logs: dict[str, Any] | None) -> None:
        """The report's figures into ``logs`` and, with a TensorBoard callback in the fit, into its log_dir."""
        metrics = {**export_metrics(report), **latency_metrics(report)}
        if logs is not None:
            logs.update(metrics)
        dirs, self._tensorboard_dirs = self._tensorboard_dirs, []
        if not dirs:
            return
        try:
            optimizer = getattr(self.model, "optimizer", None)
            step = int(keras.ops.convert_to_numpy(optimizer.iterations)) if optimizer is not None else 0
            for log_dir in dirs:
                _write_tensorboard(log_dir, metrics, report.to_markdown(), step)
        except Exception as err:  # a logging problem must not turn a finished fit into a failure
            log.warning("fitslim Export: the report did not reach TensorBoard: %s", err)
