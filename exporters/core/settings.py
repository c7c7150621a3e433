"""The validated arguments of the ``Export`` callbacks, shared by the Lightning and Keras sides.

Example:
    >>> s = ExportSettings(targets=["onnx", "ncnn"], precision="int8", calibration_batches=4)
    >>> s.targets, s.directory
    (['onnx', 'ncnn'], 'exports')
    >>> ExportSettings().resolve_precision(None)  # "auto" without a QuantSpec
    'fp32'
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from exporters.core import export as orchestrator
from exporters.core.inputs import as_inputs, concat_inputs, take
from exporters.core.job import MAX_SAMPLES
from exporters.core.report import ExportReport, TargetResult
from exporters.core.source import batches_to_numpy
from fitslim.callback_spec import ExportSpec, check_export_options
from fitslim.quantspec import QuantSpec

__all__ = ["ExportSettings", "quant_spec_arg"]

log = logging.getLogger(__name__)


def quant_spec_arg(value: Any) -> Any:
    """The ``quant_spec`` argument of the Export callbacks: a path (as a YAML config gives it) becomes its QuantSpec.

    Anything else is returned as it is (``ExportSettings`` checks its type).

    Raises:
        ValueError: a path that holds no readable QuantSpec.
    """
    if not isinstance(value, str | os.PathLike):
        return value
    path = value
    try:
        return QuantSpec.load(path)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"Export(quant_spec={os.fspath(path)!r}): cannot read a QuantSpec from it ({type(err).__name__}: {err}). "
            "HINT: give the quant_spec.json that QuantizationAware wrote, or leave quant_spec unset."
        ) from None


@dataclass
class ExportSettings(ExportSpec):
    """What to export at fit end, and how: an :class:`fitslim.callback_spec.ExportSpec` checked against the exporters.

    Args:
        targets: any of ``onnx``, ``ncnn``, ``tflite``, ``tensorrt``.
        directory: output folder.
        precision: ``auto`` (int8 when a QuantSpec is present: given as ``quant_spec`` or left by a
            ``QuantizationAware`` callback; fp32 otherwise), ``fp32``, ``fp16`` or ``int8``.
        example_input: one input batch; taken from the training data when None.
        calibration: input batches for int8; taken from the training data when None.
        calibration_batches: how many training batches to take for calibration and verification.
        quant_spec: learned int8 scales; found on a ``QuantizationAware`` callback when None.
        verify: verify every artifact in its runtime.
        latency: time every fp16 / int8 artifact against an fp32 peer of its target (the report's latency
            verdict, :mod:`exporters.core.latency`); ``False`` skips the verdict and the fp32 peers it builds, for
            callers that time the artifacts themselves (see :func:`exporters.export`).
        threads: runtime threads for verification and latency.
        input_fn: extracts the model input from a batch (default: first element, or x/input/image key).
        ncnn_depthwise: ``"int8"`` or ``"float"``: depthwise convolutions of the ncnn int8 model stay fp32
            (faster on x86; see :func:`exporters.export`).
        onnx_weights: ``"auto"``, ``"int8"`` or ``"uint8"``: the ``onnx`` int8 artifact's weight storage (``auto``:
            for the exporting CPU; see :func:`exporters.export`).
        verify_data: inputs to verify the artifacts on: an array (a tuple of arrays for several inputs) or a list /
            iterable of batches (``(x, y)`` tuples are fine); default: the fit's validation data when there is one,
            else training batches not used for calibration. The report says which (``Verified on ...``).

    Raises:
        ValueError: an unknown target or precision, or a non-positive count.
        TypeError: a quant_spec that is not a ``fitslim.QuantSpec``, or an input_fn that is not callable.
    """

    # the Export callbacks' arguments and defaults are fitslim.callback_spec.ExportSpec's fields, in its order
    quant_spec: QuantSpec | None = None
    latency: bool = True

    def __post_init__(self) -> None:
        self.targets = check_export_options(
            self.targets, self.precision, self.ncnn_depthwise, self.onnx_weights, callback="Export"
        )
        for name in ("calibration_batches", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Export({name}=...): must be a positive integer; got {value!r}.")
        if not isinstance(self.latency, bool):
            raise TypeError(
                f"Export(latency=...): expected True or False; got {self.latency!r}. "
                "HINT: latency=False skips the latency verdict against fp32; leave it unset to keep it."
            )
        if self.quant_spec is not None and not isinstance(self.quant_spec, QuantSpec):
            raise TypeError(
                f"Export(quant_spec=...): expected a fitslim.QuantSpec; got {type(self.quant_spec).__name__}. "
                "HINT: load one with fitslim.QuantSpec.load(path)."
            )
        if self.input_fn is not None and not callable(self.input_fn):
            raise TypeError(f"Export(input_fn=...): expected a callable batch -> input; got {self.input_fn!r}.")
        if isinstance(self.verify_data, str | bytes | int | float):
            raise TypeError(
                f"Export(verify_data=...): expected inputs (an array or batches); got {type(self.verify_data).__name__}"
                f" {self.verify_data!r}. HINT: pass e.g. x_val, or a validation DataLoader / tf.data.Dataset."
            )
        if not str(self.directory):
            raise ValueError("Export(directory=...): must not be empty. HINT: e.g. directory='exports'.")

    @classmethod
    def from_spec(cls, spec: ExportSpec) -> ExportSettings:
        """The settings of an ``Export`` callback, from its arguments (by keyword; a ``quant_spec`` path is loaded).

        Raises:
            ValueError: an unknown target or precision, a non-positive count, a path that holds no QuantSpec.
            TypeError: an argument of the wrong type.
        """
        arguments = {f.name: getattr(spec, f.name) for f in fields(ExportSpec)}
        return cls(**{**arguments, "quant_spec": quant_spec_arg(spec.quant_spec)})

    def resolve_precision(self, found_spec: QuantSpec | None) -> str:
        """The precision to export at: ``auto`` becomes int8 when a QuantSpec is present, else fp32."""
        if self.precision != "auto":
            return self.precision
        return "int8" if (self.quant_spec or found_spec) is not None else "fp32"

    def needs_training_data(self) -> bool:
        """True when example, calibration or verification inputs must come from the training data."""
        return self.calibration is None or self.example_input is None or (self.verify and self.verify_data is None)

    def training_batches_wanted(self) -> int:
        """How many training batches to take: the calibration batches, and as many again to verify on when the
        fit has no validation data (verification never reuses the calibration batches)."""
        return 2 * self.calibration_batches

    def verification(self, batches: Sequence[Any], held_out: Sequence[Any] | None) -> tuple[Any, str]:
        """The inputs to verify on and what they are: ``verify_data``, else the validation batches, else the
        training batches after the calibration ones; ``(None, "")`` leaves the choice to :func:`exporters.export`.

        Args:
            batches: input batches from the training data, calibration batches first.
            held_out: input batches from the fit's validation data, or None.
        """
        if not self.verify:
            return None, ""
        if self.verify_data is not None:
            data = self.verify_data
            is_batches = isinstance(data, list) or not (hasattr(data, "shape") or isinstance(data, tuple | dict))
            x = batches_to_numpy(data, limit=MAX_SAMPLES) if is_batches else as_inputs(data)
            return take(x, 0, MAX_SAMPLES), "samples of verify_data"
        if held_out:
            x = take(concat_inputs([as_inputs(b) for b in held_out]), 0, MAX_SAMPLES)
            return x, "validation samples"
        if self.calibration is None:
            rest = list(batches)[self.calibration_batches :]
            if rest:
                x = take(concat_inputs([as_inputs(b) for b in rest]), 0, MAX_SAMPLES)
                return x, "training samples not used for calibration"
            log.info("fitslim Export: no validation data and no training batch left after calibration")
            return None, ""
        if batches:  # calibration was given explicitly: the training batches are other inputs
            x = take(concat_inputs([as_inputs(b) for b in batches]), 0, MAX_SAMPLES)
            return x, "training samples (the calibration inputs were passed explicitly)"
        return None, ""

    def run(
        self,
        model: Any,
        batches: Sequence[Any],
        found_spec: QuantSpec | None,
        name: str,
        reference_fn: Callable[[Any], Any] | None = None,
        tflite_int8: Callable[[Any, QuantSpec, Any], bytes] | None = None,
        held_out: Sequence[Any] | None = None,
    ) -> ExportReport:
        """Export ``model`` with these settings; never raises: a failure becomes failed rows of the report.

        Args:
            model: the trained model.
            batches: input batches taken from the training data (used where example / calibration are None).
            found_spec: a QuantSpec left by a QAT callback (used for int8 when ``quant_spec`` is None).
            name: the model's name for a failure report.
            reference_fn: computes the outputs the artifacts are compared with (the fake-quant model after QAT).
            tflite_int8: an int8 TFLite conversion that keeps learned ranges (Keras QAT).
            held_out: input batches from the fit's validation data: the artifacts are verified on them (see
                :meth:`verification`).
        """
        precision = self.resolve_precision(found_spec)
        if self.precision == "auto":
            log.info(
                "fitslim Export(precision='auto'): exporting at %s (%s)",
                precision,
                "a QuantSpec is present" if precision == "int8" else "no QuantSpec: no QAT ran",
            )
        try:
            samples, samples_from = self.verification(batches, held_out)
            batches = list(batches)[: self.calibration_batches]  # the rest only ever verifies
            several = bool(batches) and isinstance(batches[0], tuple)  # several inputs: (ids, mask), ...
            default_calibration = (concat_inputs(list(batches)) if several else list(batches)) if batches else None
            calibration = self.calibration if self.calibration is not None else default_calibration
            example = self.example_input
            if example is None and batches:
                example = take(batches[0], 0, 1)
            spec = self.quant_spec or (found_spec if precision == "int8" else None)
            report = orchestrator.export(
                model,
                self.targets,
                example_input=example,
                calibration=calibration,
                precision=precision,
                quant_spec=spec,
                directory=self.directory,
                verify=self.verify,
                latency=self.latency,
                threads=self.threads,
                reference_fn=reference_fn if spec is not None else None,
                tflite_int8=tflite_int8 if spec is not None else None,
                ncnn_depthwise=self.ncnn_depthwise,
                onnx_weights=self.onnx_weights,
                samples=samples,
                samples_from=samples_from,
            )
        except Exception as err:  # the trained model and its checkpoints must survive any export problem
            log.exception("fitslim Export failed; the trained weights are untouched")
            reason = f"{type(err).__name__}: {err}"
            report = ExportReport(
                [TargetResult(t, precision, status="failed", reason=reason) for t in self.targets],
                source=name,
                directory=str(self.directory),
            )
        log.info("fitslim export report:\n%s", report)
        return report
