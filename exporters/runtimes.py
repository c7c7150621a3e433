"""Run an exported artifact in its own runtime on a whole data set, e.g. to score it on a test split.

``predict(report, target, x)`` loads the artifact a report row names and returns its outputs for every
sample: ONNX and the TensorRT Q/DQ ONNX in onnxruntime (batched), ncnn one sample at a time, TFLite in the
LiteRT interpreter one sample at a time (its input layout, NCHW or NHWC, is read from the model).

Example:
    >>> # report = export(model, ["onnx", "ncnn", "tflite"], example_input=x[:1], directory="exports")
    >>> # logits = predict(report, "ncnn", x_test)          # x_test in NCHW
    >>> # accuracy = float((logits.argmax(1) == y_test).mean())
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from exporters.report import ExportReport, TargetResult
from exporters.verify import nchw_to_nhwc

__all__ = ["accuracy", "predict"]


def _row(report: ExportReport, target: str) -> TargetResult:
    rows = [r for r in report if r.target == target]
    if not rows:
        raise ValueError(f"target {target!r}: not in this report (targets: {[r.target for r in report]}).")
    row = rows[0]
    if not row.ok:
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


def _onnx(path: Path, x: npt.NDArray[np.float32], threads: int, batch: int) -> npt.NDArray[np.float32]:
    from exporters.onnx_export import ort_session

    sess = ort_session(path, threads)
    name = sess.get_inputs()[0].name
    outs = [np.asarray(sess.run(None, {name: x[i : i + batch]})[0], np.float32) for i in range(0, len(x), batch)]
    return np.concatenate(outs)


def _ncnn(param: Path, precision: str, x: npt.NDArray[np.float32], threads: int) -> npt.NDArray[np.float32]:
    from exporters.ncnn import NcnnModel

    net = NcnnModel(param, param.with_name(param.name[: -len(".param")] + ".bin"), precision, threads)
    first = net(x[0])
    return net.predict(x, tuple(first.shape))


def _tflite(path: Path, x: npt.NDArray[np.float32], threads: int) -> npt.NDArray[np.float32]:
    from exporters.tflite import _interpreter_class, _run_samples

    interpreter = _interpreter_class()(model_path=str(path), num_threads=threads)
    detail = interpreter.get_input_details()[0]
    signature = tuple(int(d) for d in detail.get("shape_signature", detail["shape"]))[1:]

    def fits(shape: tuple[int, ...]) -> bool:
        return len(shape) == len(signature) and all(s in (-1, d) for s, d in zip(signature, shape, strict=True))

    samples = x
    if x.ndim == 4 and not fits(tuple(x.shape[1:])):
        samples = nchw_to_nhwc(x)  # a Keras-made artifact takes NHWC
        if not fits(tuple(samples.shape[1:])):
            raise ValueError(
                f"target 'tflite': the model's input {list(signature)} fits neither NCHW {list(x.shape[1:])} "
                f"nor NHWC {list(samples.shape[1:])}."
            )
    outputs, _ = _run_samples(interpreter, samples)
    return outputs


def predict(
    report: ExportReport, target: str, x: npt.ArrayLike, threads: int = 2, batch: int = 256
) -> npt.NDArray[np.float32]:
    """The outputs of ``target``'s artifact for every sample of ``x``.

    Args:
        report: the report of the export that wrote the artifact (its ``directory`` holds the files).
        target: ``onnx``, ``ncnn``, ``tflite`` or ``tensorrt`` (the Q/DQ ONNX, run in onnxruntime).
        x: inputs, batch first, images in NCHW (converted to NHWC for a TFLite model that takes NHWC).
        threads: runtime threads.
        batch: onnxruntime batch size.

    Raises:
        ValueError: the target is not in the report, was not written, or its input does not fit ``x``.
        FileNotFoundError: an artifact file listed in the report is missing.
    """
    row = _row(report, target)
    data = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if len(data) == 0:
        raise ValueError("x: no samples.")
    if target in ("onnx", "tensorrt"):
        return _onnx(_file(report, row, ".onnx"), data, threads, batch)
    if target == "ncnn":
        return _ncnn(_file(report, row, ".param"), row.precision, data, threads)
    if target == "tflite":
        return _tflite(_file(report, row, ".tflite"), data, threads)
    raise ValueError(f"target {target!r}: no runtime for it; choose onnx, ncnn, tflite or tensorrt.")


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
