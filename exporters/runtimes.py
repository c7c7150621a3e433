"""Run an exported artifact in its own runtime on a whole data set, e.g. to score it on a test split.

``runner(report, target)`` loads the artifact a report row names once; ``predict(report, target, x)``
returns its outputs for every sample: ONNX and the TensorRT Q/DQ ONNX in onnxruntime (batched), ncnn one
sample at a time, TFLite in the LiteRT interpreter one sample at a time (its input layout, NCHW or NHWC, is
read from the model).

Example:
    >>> # report = export(model, ["onnx", "ncnn", "tflite"], example_input=x[:1], directory="exports")
    >>> # logits = predict(report, "ncnn", x_test)          # x_test in NCHW
    >>> # accuracy = float((logits.argmax(1) == y_test).mean())
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from exporters.report import ExportReport, TargetResult
from exporters.verify import nchw_to_nhwc

__all__ = [
    "Inputs",
    "Runner",
    "accuracy",
    "as_inputs",
    "concat_inputs",
    "fixed_batch",
    "input_count",
    "is_multi",
    "ort_feed",
    "ort_run",
    "predict",
    "runner",
    "take",
]

#: a model's inputs, batch first: one array, or a tuple of arrays with their own dtypes (token ids and
#: masks stay int64); a dict's values are taken in order
Inputs = Any

#: an artifact loaded in its runtime: batch of inputs -> ``(N, outputs)``
Runner = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]


def _array(a: Any) -> npt.NDArray[Any]:
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # torch
        a = a.detach().cpu().numpy()
    elif hasattr(a, "numpy") and not isinstance(a, np.ndarray):  # tf
        a = a.numpy()
    arr = np.asarray(a)
    # signed integers (token ids, masks) and booleans keep their dtype; everything else, uint8 images
    # included, is float32
    return np.ascontiguousarray(arr if arr.dtype.kind in "ib" else arr.astype(np.float32))


def is_multi(x: Any) -> bool:
    """True for several inputs: a tuple or dict of arrays (a list stays a list of batches or numbers)."""
    if isinstance(x, Mapping):
        return True
    return isinstance(x, tuple) and len(x) > 0 and all(hasattr(a, "shape") for a in x)


def as_inputs(x: Any) -> Inputs:
    """One float32 array, or (several inputs) a tuple of arrays, each keeping an integer or bool dtype.

    Raises:
        ValueError: several inputs with different batch sizes.
    """
    if not is_multi(x):
        return _array(x)
    arrays = tuple(_array(a) for a in (x.values() if isinstance(x, Mapping) else x))
    batches = {len(a) if a.ndim else 1 for a in arrays}
    if len(batches) > 1:
        raise ValueError(
            f"example_input: the inputs have different batch sizes {[len(a) for a in arrays]}; give every input "
            "the same number of samples (batch first)."
        )
    return arrays if len(arrays) > 1 else arrays[0]


def input_count(x: Inputs) -> int:
    """How many samples ``x`` holds."""
    return len(x[0]) if isinstance(x, tuple) else len(x)


def take(x: Inputs, start: int, stop: int) -> Inputs:
    """Samples ``start:stop`` of every input."""
    return tuple(a[start:stop] for a in x) if isinstance(x, tuple) else x[start:stop]


def concat_inputs(parts: list[Inputs]) -> Inputs:
    """Concatenate input batches along the batch axis."""
    if parts and isinstance(parts[0], tuple):
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(len(parts[0])))
    return np.concatenate(parts)


def ort_feed(session: Any, x: Inputs) -> dict[str, Any]:
    """The onnxruntime feed for ``x``: its arrays in the order of the session's inputs, cast to their types.

    Raises:
        ValueError: the number of arrays differs from the model's inputs.
    """
    inputs = session.get_inputs()
    arrays = x if isinstance(x, tuple) else (x,)
    if len(arrays) != len(inputs):
        raise ValueError(
            f"the ONNX model takes {len(inputs)} input(s) {[i.name for i in inputs]}; got {len(arrays)} array(s). "
            "Pass a tuple with one array per input."
        )
    types = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}
    return {
        i.name: np.ascontiguousarray(a, dtype=types.get(i.type, np.float32))
        for i, a in zip(inputs, arrays, strict=True)
    }


def fixed_batch(session: Any) -> int | None:
    """The batch size an onnxruntime session's first input is fixed to (``torch.onnx.export``'s default), or None."""
    dim = session.get_inputs()[0].shape[0] if session.get_inputs()[0].shape else None
    return dim if isinstance(dim, int) and dim > 0 else None


def ort_run(session: Any, x: Inputs, output_names: list[str] | None = None, batch: int = 256) -> list[Any]:
    """Run ``x`` through an onnxruntime session in chunks of ``batch``, or of the model's fixed batch size.

    Raises:
        ValueError: a fixed batch size that does not divide the number of samples.
    """
    n = input_count(x)
    step = fixed_batch(session) or batch
    if n % step and fixed_batch(session):
        raise ValueError(f"the ONNX model takes batches of exactly {step}; got {n} samples, not a multiple of it.")
    chunks = [session.run(output_names, ort_feed(session, take(x, i, i + step))) for i in range(0, n, step)]
    return [np.concatenate([np.asarray(c[k]) for c in chunks]) for k in range(len(chunks[0]))]


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


def _onnx(path: Path, threads: int, batch: int) -> Runner:
    from exporters.onnx_export import ort_session

    sess = ort_session(path, threads)

    def run(x: Inputs) -> npt.NDArray[np.float32]:
        return np.asarray(ort_run(sess, x, batch=batch)[0], np.float32)

    return run


def _ncnn(param: Path, precision: str, threads: int) -> Runner:
    from exporters.ncnn import NcnnModel

    net = NcnnModel(param, param.with_name(param.name[: -len(".param")] + ".bin"), precision, threads)
    return lambda x: np.stack([np.asarray(net(sample), np.float32).reshape(-1) for sample in x])


def _tflite(path: Path, threads: int) -> Runner:
    from exporters.tflite import _dequantize, _interpreter_class, _prepare_single, _quantize

    interpreter = _interpreter_class()(model_path=str(path), num_threads=threads)
    detail = interpreter.get_input_details()[0]
    signature = tuple(int(d) for d in detail.get("shape_signature", detail["shape"]))[1:]
    out = interpreter.get_output_details()[0]
    prepared: dict[tuple[int, ...], dict[str, Any]] = {}

    def fits(shape: tuple[int, ...]) -> bool:
        return len(shape) == len(signature) and all(s in (-1, d) for s, d in zip(signature, shape, strict=True))

    def run(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        samples = x
        if x.ndim == 4 and not fits(tuple(x.shape[1:])):
            samples = nchw_to_nhwc(x)  # a Keras-made artifact takes NHWC
            if not fits(tuple(samples.shape[1:])):
                raise ValueError(
                    f"target 'tflite': the model's input {list(signature)} fits neither NCHW {list(x.shape[1:])} "
                    f"nor NHWC {list(samples.shape[1:])}."
                )
        shape = tuple(samples.shape[1:])
        if shape not in prepared:
            prepared.clear()
            prepared[shape] = _prepare_single(interpreter, shape)
        inp = prepared[shape]
        outputs = []
        for i in range(len(samples)):
            interpreter.set_tensor(inp["index"], _quantize(samples[i : i + 1], inp))
            interpreter.invoke()
            outputs.append(_dequantize(interpreter.get_tensor(out["index"]), out).reshape(-1))
        return np.stack(outputs)

    return run


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
    if target in ("onnx", "tensorrt"):
        return _onnx(_file(report, row, ".onnx"), threads, batch)
    if target == "ncnn":
        return _ncnn(_file(report, row, ".param"), row.precision, threads)
    if target == "tflite":
        return _tflite(_file(report, row, ".tflite"), threads)
    raise ValueError(f"target {target!r}: no runtime for it; choose onnx, ncnn, tflite or tensorrt.")


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
