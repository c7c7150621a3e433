"""Run an exported artifact in its own runtime on a whole data set, e.g. to score it on a test split.

``runner(report, target)`` loads the artifact a report row names once; ``predict(report, target, x)``
returns its outputs for every sample, through the target's own runner (:class:`exporters.core.target.Target`, the
one the export verified it with): ONNX and the TensorRT Q/DQ ONNX in onnxruntime (batched; the Q/DQ file computed as
TensorRT does), ncnn one sample at a time, TFLite in the LiteRT interpreter one sample at a time (its input layout,
NCHW or NHWC, is read from the model).

Example:
    >>> # report = export(model, ["onnx", "ncnn", "tflite"], example_input=x[:1], directory="exports")
    >>> # logits = predict(report, "ncnn", x_test)          # x_test in NCHW
    >>> # accuracy = float((logits.argmax(1) == y_test).mean())
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from exporters.core.report import ExportReport, TargetResult
from exporters.core.target import lookup

__all__ = ["Runner", "accuracy", "predict", "runner"]

#: an artifact loaded in its runtime: batch of inputs -> ``(N, outputs)`` (a :class:`exporters.core.target.Runner`)
Runner = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]


def _row(report: ExportReport, target: str) -> TargetResult:
    rows = [r for r in report if r.target == target]
    if not rows:
        raise ValueError(f"target {target!r}: not in this report (targets: {[r.target for r in report]}).")
    row = rows[0]
    if not row.files or row.status not in ("ok", "mismatch"):
        raise ValueError(f"target {target!r}: the artifact was not written ({row.status}: {row.reason}).")
    return row


def _file(report: ExportReport, row: TargetResult, suffix: str) -> Path:
    for name in row.files:
        if name.endswith(suffix):
            path = Path(report.directory) / name
            if not path.is_file():
                raise FileNotFoundError(f"target {row.target!r}: {path} is listed in the report but missing.")
            return path
    raise ValueError(f"target {row.target!r}: no {suffix} file among {row.files}.")


def runner(report: ExportReport, target: str, threads: int = 2, batch: int = 256) -> Runner:
    """Load ``target``'s artifact once; the callable runs it on a batch of inputs and returns ``(N, outputs)``.

    Inputs are batch first, images in NCHW (converted to NHWC for a TFLite model that takes NHWC). ONNX and
    the TensorRT Q/DQ ONNX run in onnxruntime in batches of ``batch``; ncnn and TFLite one sample at a time.
    Loading once makes the callable fit for timing single-sample latency too.

    Raises:
        ValueError: the target is not in the report or was not written.
        FileNotFoundError: an artifact file listed in the report is missing.
    """
    row = _row(report, target)
    spec = lookup(target)
    return spec.runner([_file(report, row, suffix) for suffix in spec.suffixes], row.precision, threads, batch)


def predict(
    report: ExportReport, target: str, x: npt.ArrayLike, threads: int = 2, batch: int = 256
) -> npt.NDArray[np.float32]:
    """The outputs of ``target``'s artifact for every sample of ``x`` (see :func:`runner`).

    Raises:
        ValueError: the target is not in the report, was not written, or its input does not fit ``x``.
        FileNotFoundError: an artifact file listed in the report is missing.
    """
    data = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if len(data) == 0:
        raise ValueError("x: no samples.")
    return runner(report, target, threads, batch)(data)


def accuracy(report: ExportReport, target: str, x: npt.ArrayLike, labels: npt.ArrayLike, threads: int = 2) -> float:
    """Top-1 accuracy of ``target``'s artifact on ``(x, labels)`` (arg-max of its outputs along axis 1).

    Raises:
        ValueError: as :func:`predict`, or ``labels`` of another length than ``x``.
    """
    y = np.asarray(labels).reshape(-1)
    out = predict(report, target, x, threads)
    if len(out) != len(y):
        raise ValueError(f"labels: {len(y)} labels for {len(out)} samples.")
    return float(np.mean(out.reshape(len(out), -1).argmax(1) == y))
