"""The TFLite (LiteRT) target: ``.tflite`` files from Keras and torch models, verified in LiteRT.

Keras 3 and tf-keras models convert with ``tf.lite.TFLiteConverter.from_keras_model`` (NHWC input);
torch models with litert-torch (:mod:`exporters.targets.tflite_torch`, NCHW input, the torch layout kept at
the model interface). Every artifact has float32 inputs and outputs; at ``int8`` every ``CONV_2D``,
``DEPTHWISE_CONV_2D`` and ``FULLY_CONNECTED`` must run on int8 inputs and weights, or the export fails
naming the op that stayed float. Files are ``model.tflite``, ``model.fp16.tflite`` and
``model.int8.tflite`` in the export directory, written to scratch and installed by the core only once
they load in LiteRT, pass the int8 check and the core's verification (:func:`runner` runs them).

Example:
    >>> # from exporters import export
    >>> # report = export(model, ["tflite"], example_input=x, calibration=batches, precision="int8")
    >>> # report["tflite"].notes  ->  ['int8 kernels: 3 CONV_2D, 2 DEPTHWISE_CONV_2D, 1 FULLY_CONNECTED']
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.metadata
import logging
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from exporters.core.checks import CALIBRATION_LIMIT, converter_error, quiet
from exporters.core.inputs import Inputs
from exporters.core.job import ExportJob
from exporters.core.latency import slower_hint
from exporters.core.report import TargetResult
from exporters.core.target import Artifact, Runner, Target, check, register
from exporters.core.verify import nchw_to_nhwc
from exporters.targets.tflite_torch import convert_torch, multi_input_feed

__all__ = [
    "CALIBRATION_LIMIT",
    "KERNEL_OPS",
    "SUFFIXES",
    "TARGET",
    "TfliteRunner",
    "export_tflite",
    "kernel_summary",
    "quiet",
    "runner",
    "tflite_runtime",
    "write",
]

log = logging.getLogger(__name__)

#: artifact suffix per precision
SUFFIXES = {"fp32": ".tflite", "fp16": ".fp16.tflite", "int8": ".int8.tflite"}

#: the ops that must run on int8 inputs and weights in an int8 artifact
KERNEL_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")

_QAT_WITHOUT_FAKE_QUANT = (
    "re-calibrated by the TFLite converter: the model has no fake-quant layers; learned scales are carried "
    "only by models trained with keras_callbacks.QuantizationAware"
)


@dataclass
class _Conversion:
    content: bytes
    scales: str = ""
    notes: list[str] = field(default_factory=list)


def tflite_runtime() -> str:
    """The runtime that verifies the artifacts, e.g. ``LiteRT 2.3.0``."""
    try:
        return f"LiteRT {importlib.metadata.version('ai-edge-litert')}"
    except importlib.metadata.PackageNotFoundError:
        return "LiteRT"


def _interpreter_class() -> Any:
    try:
        return importlib.import_module("ai_edge_litert.interpreter").Interpreter
    except ImportError as err:
        raise ImportError(
            f"target tflite: verifying needs the LiteRT interpreter ({err}): pip install 'fitslim[tflite]'",
            name=__name__,  # the orchestrator adds no install hint of its own to a message from exporters.*
        ) from err


# ----------------------------------------------------------------------------------------------- Keras


def _keras_input_spec(job: ExportJob) -> Any:
    import tensorflow as tf

    model = job.source.model
    inputs = getattr(model, "inputs", None)
    if inputs:
        shape = tuple(inputs[0].shape)
    else:
        shape = (None, *job.samples_nhwc().shape[1:])
    return tf.TensorSpec(shape, tf.float32)


def _fake_quant_ops(job: ExportJob) -> int:
    """How many ``FakeQuantWithMinMax*`` ops the model's inference graph holds (learned ranges the converter keeps)."""
    import tensorflow as tf

    model = job.source.model
    fn = tf.function(lambda x: model(x, training=False))
    graph = fn.get_concrete_function(_keras_input_spec(job)).graph
    types = [op.type for op in graph.get_operations()]
    for f in graph.as_graph_def().library.function:
        types.extend(n.op for n in f.node_def)
    return sum(t.startswith("FakeQuantWithMinMax") for t in types)


def _representative(data: npt.NDArray[np.float32]) -> Any:
    def gen() -> Iterator[list[npt.NDArray[np.float32]]]:
        for i in range(min(len(data), CALIBRATION_LIMIT)):
            yield [np.ascontiguousarray(data[i : i + 1], dtype=np.float32)]

    return gen


def _convert_keras(job: ExportJob) -> _Conversion:
    """Convert a Keras 3 (TensorFlow backend) or tf-keras model with ``tf.lite.TFLiteConverter``.

    Raises:
        ValueError: a Keras 3 model on another backend; int8 with no way to get scales.
    """
    if job.source.framework == "keras":
        import keras

        backend = keras.backend.backend()
        if backend != "tensorflow":
            raise ValueError(
                f"target tflite: this Keras 3 model runs on the {backend!r} backend, and the TFLite converter "
                "needs TensorFlow graphs; run the export with KERAS_BACKEND=tensorflow (same weights)."
            )
    try:
        import tensorflow as tf
    except ImportError as err:
        raise ImportError(
            f"target tflite: converting a Keras model needs tensorflow ({err}): pip install 'fitslim[keras]'",
            name=__name__,
        ) from err
    if (
        job.precision == "int8"
        and job.options.tflite_int8 is not None
        and job.quant is not None
        and job.quant.origin == "qat"
    ):
        data = job.calibration_nhwc()
        data = data if data is not None else job.samples_nhwc()
        with quiet():
            content = job.options.tflite_int8(job.source.model, job.quant.spec, data)
        return _Conversion(
            content,
            "learned: each quantized layer's input clipped to its QuantSpec range, kept by the TFLite converter",
        )
    converter = tf.lite.TFLiteConverter.from_keras_model(job.source.model)
    out = _Conversion(b"")
    if job.precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
        out.notes.append("fp16 weights (TFLite float16 quantization), dequantized to float32 at load; float32 math")
    elif job.precision == "int8":
        calib = job.calibration_nhwc()
        fake = _fake_quant_ops(job)
        qat = job.quant is not None and job.quant.origin == "qat"
        if fake == 0 and calib is None:
            raise ValueError(
                "target tflite: the model has no fake-quant layers, so the TFLite converter must calibrate it, "
                "and there is no calibration data: pass calibration= (a few hundred real inputs) to export(), "
                "or train with keras_callbacks.QuantizationAware so the model carries its learned scales."
            )
        # full-integer conversion needs a representative data set even when fake-quant ops carry the
        # ranges; without calibration data the verification samples fill the tensors they do not cover
        data, label = (calib, "calibration") if calib is not None else (job.samples_nhwc(), "verification")
        used = min(len(data), CALIBRATION_LIMIT)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.representative_dataset = _representative(data)
        if fake:
            out.scales = (
                f"learned: the ranges of the model's {fake} fake-quant ops, kept by the TFLite converter; "
                f"tensors without one calibrated on {used} {label} samples"
            )
        elif qat:
            out.scales = f"{_QAT_WITHOUT_FAKE_QUANT} (on {used} calibration samples)"
        else:
            out.scales = f"calibrated by the TFLite converter on {used} calibration samples (its own min/max ranges)"
    elif job.precision != "fp32":
        raise ValueError(f"target tflite: precision {job.precision!r} is not one of fp32, fp16, int8.")
    with quiet(), warnings.catch_warnings():
        # full-integer conversion with float32 I/O: TF warns that it got no input statistics, by design
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        out.content = bytes(converter.convert())
    return out


def _convert_torch(job: ExportJob) -> _Conversion:
    conv = convert_torch(job)
    return _Conversion(conv.content, conv.scales, conv.notes)


# ------------------------------------------------------------------------------------------- verifying


def kernel_summary(interpreter: Any, require_int8: bool = False) -> str:
    """Count the conv/FC kernels of a loaded model by the dtype they run on, e.g. ``int8 kernels: 4 CONV_2D``.

    Args:
        interpreter: a LiteRT ``Interpreter`` after ``allocate_tensors()``.
        require_int8: raise unless every op of :data:`KERNEL_OPS` has int8 inputs and weights.

    Raises:
        RuntimeError: ``require_int8`` and an op stayed float, named with its index and dtypes.
    """
    counts: dict[str, Counter[str]] = {}
    for op in interpreter._get_ops_details():
        name = op["op_name"]
        if name not in KERNEL_OPS:
            continue
        inputs = [int(i) for i in op["inputs"]]
        dtypes = [
            np.dtype(interpreter._get_tensor_details(i, 0)["dtype"]).name if i >= 0 else "none" for i in inputs[:2]
        ]
        kind = dtypes[0] if len(set(dtypes)) == 1 else "/".join(dtypes)
        if require_int8 and (len(dtypes) < 2 or dtypes[0] != "int8" or dtypes[1] != "int8"):
            raise RuntimeError(
                f"target tflite int8: {name} (op #{op['index']}) runs on {dtypes[0]} inputs and "
                f"{dtypes[1] if len(dtypes) > 1 else 'no'} weights; the converter left it in float."
            )
        counts.setdefault(kind, Counter())[name] += 1
    if not counts:
        return "no CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED kernels"
    parts = []
    for kind, c in sorted(counts.items()):
        body = ", ".join(f"{c[n]} {n}" for n in KERNEL_OPS if c[n])
        parts.append(f"{kind} kernels: {body}")
    return "; ".join(parts)


def _input_note(interpreter: Any, layout: str) -> str:
    """The artifact's input as users must feed it, e.g. ``input: float32 NCHW [1, 3, 17, 23]``."""
    detail = interpreter.get_input_details()[0]
    shape = [int(d) for d in detail.get("shape_signature", detail["shape"])]
    where = f" {layout}" if len(shape) == 4 else ""
    return f"input: {np.dtype(detail['dtype']).name}{where} {shape}" + (" (-1: any size)" if -1 in shape else "")


def _quantize(x: npt.NDArray[np.float32], detail: dict[str, Any]) -> npt.NDArray[Any]:
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def _dequantize(y: npt.NDArray[Any], detail: dict[str, Any]) -> npt.NDArray[np.float32]:
    if np.dtype(detail["dtype"]).kind == "f":
        return np.asarray(y, dtype=np.float32)
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def _prepare_single(interpreter: Any, sample_shape: tuple[int, ...]) -> dict[str, Any]:
    """Fix the input to one sample of ``sample_shape``, checking the layout against the model's."""
    detail = interpreter.get_input_details()[0]
    signature = tuple(int(d) for d in detail.get("shape_signature", detail["shape"]))
    want = (1, *sample_shape)
    fits = len(signature) == len(want) and all(s in (-1, w) for s, w in zip(signature, want, strict=True))
    if not fits:
        raise ValueError(
            f"target tflite: the model's input shape {list(signature)} does not fit one sample of shape "
            f"{list(want)} (a layout mismatch between the artifact and the source)."
        )
    if tuple(int(d) for d in detail["shape"]) != want:
        interpreter.resize_tensor_input(detail["index"], list(want))
    interpreter.allocate_tensors()
    return dict(interpreter.get_input_details()[0])


class TfliteRunner:
    """A ``.tflite`` file loaded once in the LiteRT interpreter; runs a batch one sample at a time.

    Images may come in NCHW or NHWC: a 4-D batch that does not fit the model's input is transposed to NHWC (what a
    Keras-made artifact takes). Several inputs (token ids, masks) come as a tuple, matched to the model's inputs by
    :func:`exporters.targets.tflite_torch.multi_input_feed`.

    Args:
        path: the ``.tflite`` file.
        threads: the interpreter's threads.
    """

    def __init__(self, path: Path, threads: int) -> None:
        self.interpreter = _interpreter_class()(model_path=str(path), num_threads=threads)
        detail = self.interpreter.get_input_details()[0]
        self.signature = tuple(int(d) for d in detail.get("shape_signature", detail["shape"]))[1:]
        self._prepared: dict[tuple[int, ...], dict[str, Any]] = {}

    def _fits(self, shape: tuple[int, ...]) -> bool:
        sig = self.signature
        return len(shape) == len(sig) and all(s in (-1, d) for s, d in zip(sig, shape, strict=True))

    def _layout(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if x.ndim != 4 or self._fits(tuple(x.shape[1:])):
            return x
        samples = nchw_to_nhwc(x)  # a Keras-made artifact takes NHWC
        if not self._fits(tuple(samples.shape[1:])):
            raise ValueError(
                f"target 'tflite': the model's input {list(self.signature)} fits neither NCHW {list(x.shape[1:])} "
                f"nor NHWC {list(samples.shape[1:])}."
            )
        return samples

    def _input(self, shape: tuple[int, ...]) -> dict[str, Any]:
        if shape not in self._prepared:
            self._prepared.clear()
            self._prepared[shape] = _prepare_single(self.interpreter, shape)
        return self._prepared[shape]

    def __call__(self, x: Inputs) -> npt.NDArray[np.float32]:
        """Each sample's first output (dequantized), flattened, one row per sample."""
        interpreter = self.interpreter
        out = interpreter.get_output_details()[0]
        if isinstance(x, tuple):
            self._prepared.clear()
            feed = multi_input_feed(interpreter, x)
            count = len(x[0])
        else:
            samples = self._layout(np.asarray(x, dtype=np.float32))
            inp = self._input(tuple(samples.shape[1:]))

            def feed(i: int) -> None:
                interpreter.set_tensor(inp["index"], _quantize(samples[i : i + 1], inp))

            count = len(samples)
        outputs = []
        for i in range(count):
            feed(i)
            interpreter.invoke()
            outputs.append(_dequantize(interpreter.get_tensor(out["index"]), out).reshape(-1))
        return np.stack(outputs)

    def timed(self, one: Inputs) -> Callable[[], object]:
        """``interpreter.invoke`` with ``one`` set as its input."""
        if isinstance(one, tuple):
            self._prepared.clear()
            multi_input_feed(self.interpreter, one)(0)
        else:
            samples = self._layout(np.asarray(one, dtype=np.float32))
            inp = self._input(tuple(samples.shape[1:]))
            self.interpreter.set_tensor(inp["index"], _quantize(samples[:1], inp))
        return self.interpreter.invoke


def runner(paths: Sequence[Path], precision: str, threads: int, batch: int = 256) -> Runner:
    """A ``.tflite`` artifact (``paths[0]``) loaded in LiteRT (its precision is in the file)."""
    return TfliteRunner(Path(paths[0]), threads)


# -------------------------------------------------------------------------------------------- the target


def export_tflite(job: ExportJob) -> TargetResult:
    """The ``tflite`` target at ``job.precision``: converted, checked, verified in LiteRT and installed.

    Raises:
        ImportError, ValueError, RuntimeError: as :func:`write`, or LiteRT cannot run the artifact.
    """
    return check(job, TARGET, write(job))


def write(job: ExportJob) -> Artifact:
    """Convert the model, write the ``.tflite`` to scratch and check its int8 kernels (the core verifies it).

    Args:
        job: the export job; its precision picks fp32, fp16 weights or full-integer int8.

    Returns:
        The artifact: the report row (file, scale origin, kernel summary, input note) and the scratch file.

    Raises:
        ImportError: tensorflow (Keras) or litert-torch (torch) is missing, naming the extra to install.
        ValueError: an ONNX source, an unknown precision, or int8 without a way to get scales.
        RuntimeError: an int8 artifact where a conv/FC kernel stayed float (no file is left behind).
    """
    framework = job.source.framework
    if job.precision not in SUFFIXES:
        raise ValueError(f"target tflite: precision {job.precision!r} is not one of {list(SUFFIXES)}.")
    if framework not in ("keras", "tf_keras", "torch"):
        raise ValueError(
            f"target tflite: a {framework} source cannot be converted here (onnx2tf needs Python 3.12); "
            "export the torch or Keras model itself."
        )
    conversion = _convert(job)
    final: Path = job.artifact(SUFFIXES[job.precision])
    job.workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="tflite-", dir=job.workdir))  # the core removes it after its checks
    path = scratch / final.name
    path.write_bytes(conversion.content)
    result = TargetResult("tflite", job.precision, files=[final.name], threads=job.threads, runtime=tflite_runtime())
    result.scales = conversion.scales
    interpreter = _interpreter_class()(model_path=str(path), num_threads=job.threads)
    interpreter.allocate_tensors()
    try:
        result.notes.append(kernel_summary(interpreter, require_int8=job.precision == "int8"))
    except RuntimeError:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    result.notes.append(_input_note(interpreter, "NCHW" if framework == "torch" else "NHWC"))
    result.notes.extend(conversion.notes)

    def fp32_peer() -> tuple[list[Path], str]:
        # converted for the comparison only, not installed
        options = copy.copy(job.options)
        options.precision = "fp32"
        peer = _convert(dataclasses.replace(job, options=options, quant=None, notes=[]))
        peer_path = scratch / f"fp32-peer{final.suffix}"
        peer_path.write_bytes(peer.content)
        return [peer_path], "fp32 .tflite converted for comparison, LiteRT, same threads"

    def finish() -> None:
        log.info(
            "tflite %s: %s (%.1f KB)%s",
            job.precision,
            final.name,
            path.stat().st_size / 1024,
            "" if result.max_rel_error is None else f", max rel error {result.max_rel_error:.2e}",
        )

    several = isinstance(job.samples, tuple)  # several inputs (token ids, masks): no verdict against fp32
    return Artifact(
        result,
        [path],
        finals=[final],
        fp32_peer=fp32_peer if job.precision != "fp32" and not several else None,
        slower=lambda run, fp32, one: ([], slower_hint("tflite", job.precision)),
        finish=finish,
        scratch=scratch,
    )


def _convert(job: ExportJob) -> _Conversion:
    """The converted model's bytes, scales and notes; a converter failure says what to try instead."""
    framework = job.source.framework
    try:
        return _convert_torch(job) if framework == "torch" else _convert_keras(job)
    except ImportError:
        raise
    except Exception as err:
        if str(err).startswith(("target tflite", "tflite:")):
            raise  # our own refusals already say what to do
        instead = (
            "try precision='fp32' or 'fp16' for tflite, or the onnx/tensorrt targets at int8"
            if job.precision == "int8"
            else "try the onnx, ncnn or tensorrt targets"
        )
        converter = "litert-torch" if framework == "torch" else "the TFLite converter"
        raise converter_error(err, f"tflite {job.precision}", converter, instead) from err


TARGET = register(Target("tflite", extra="tflite", write=write, runner=runner, suffixes=(".tflite",), layout="source",
                         needs_onnx=False))  # fmt: skip
