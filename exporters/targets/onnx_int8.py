"""The ``onnx`` target at ``precision="int8"``: an ONNX that ONNX Runtime's CPU provider runs with int8 kernels.

The TensorRT Q/DQ ONNX (:mod:`exporters.core.qdq`) quantizes only the *inputs* of Conv/Gemm/MatMul, with
symmetric int8 activations: TensorRT fuses that form, but ONNX Runtime's CPU provider fuses a
``DequantizeLinear -> op -> QuantizeLinear`` group into one int8 kernel (``QLinearConv``,
``QLinearMatMul``, ``QLinearAdd``, ...) only when the op's *output* is quantized too, and it drops a ReLU
or ReLU6 in front of a ``QuantizeLinear`` only when the quantized range starts at the activation's
minimum (asymmetric uint8). Without that every Conv runs in float between dequantize and quantize, which
is slower than the fp32 model.

This module writes the form ONNX Runtime fuses (its own QDQ layout, produced by
``onnxruntime.quantization``'s QDQ writer on the shared, BatchNorm-folded ONNX):

- activations uint8, per tensor, on every input and output of the quantizable ops (Conv, Gemm, MatMul,
  Add, Mul, pooling, Concat, reshapes, ...); ReLU / ReLU6 disappear into the range of the ``QuantizeLinear``;
- weights symmetric per output channel, int8; biases int32 (scale = input scale x weight scale). On an x86
  CPU without VNNI (:func:`weight_type`) they are stored as uint8 with zero point 128 instead, the same grid
  ``[-127 s, 127 s]`` shifted, every value exact: there onnxruntime multiplies uint8 activations by int8
  weights with ``vpmaddubsw``, which saturates a pair's sum at int16 (the trained digits CNN fell to 46.8% top-1
  agreement on an AVX2-only CPU, 100% with uint8 weights: ``benchmarks.ort_weights --models digits_cnn``),
  while its uint8 x uint8 kernels widen first. They
  are slower (MobileNetV2-224 on that CPU: 0.96x of fp32 against 0.74x, ``benchmarks.ort_weights``), so VNNI
  and ARM CPUs keep int8 weights. An artifact with int8 weights saturates on x86 CPUs without VNNI: where the
  CPU that will run it is not the exporting one, ``export(..., onnx_weights="int8" | "uint8")`` chooses.

Scales come from the :class:`~exporters.core.quant.QuantTable` every int8 target shares (a learned QuantSpec,
used exactly, or fitslim's calibration): weight scales per channel as they are, the input scale ``s`` of
each quantized layer as uint8 with the same grid (zero point 128 for a signed tensor: ``[-128 s, 127 s]``;
zero point 0 after a ReLU: ``[0, 255 s]``; after a ReLU6-style clip to ``[0, m]``, calibrated scales take
``min(s, m / 255)`` so that dropping the clip stays exact, learned ones the learned grid exactly with the clip
kept in the graph, as the fake-quant model rounds; ONNX Runtime drops it where the range makes it redundant). The
scale goes on the tensor where a chain of Pad / Reshape / MaxPool / ... starts, because ONNX Runtime gives those
ops' outputs their input's parameters (:data:`SHARED_QPARAMS`). Tensors no quantized layer reads (residual sums,
pooled features, attention scores) take min/max ranges from the calibration inputs (the verification samples when
there are none); with learned scales (QAT) measured on the graph with the table's layer Q/DQ
(:func:`fake_quant_ranges`), what the fake-quant model computes.

Example:
    >>> # artifact = write_int8(job)          # job.precision == "int8"; the core verifies it
    >>> # int8_kernels("model.int8.onnx")   # {'QLinearConv': 52, ...} in ONNX Runtime's optimized graph
"""

from __future__ import annotations

import logging
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from exporters.core.inputs import Inputs, as_inputs, fixed_batch, input_count, ort_feed, take
from exporters.core.job import ExportJob
from exporters.core.qdq import to_qdq
from exporters.core.quant import CALIBRATION_BATCH, QuantTable
from exporters.core.report import TargetResult
from exporters.core.target import Artifact
from fitslim.fileio import atomic_path

__all__ = [
    "FLOAT_AFTER_QAT",
    "INT8_KERNELS",
    "LAYERNORM_INPUT_OPS",
    "cpu_flags",
    "fake_quant_ranges",
    "float_nodes",
    "float_notes",
    "int8_kernels",
    "keeps_activations",
    "optimized_op_types",
    "quantized_op_types",
    "scale_overrides",
    "to_ort_int8",
    "weight_type",
    "write_int8",
]

log = logging.getLogger(__name__)

#: ONNX Runtime CPU kernels that compute in int8 (QOperator ops and the ones its QDQ fusion produces).
INT8_KERNELS = (
    "QLinearConv",
    "QLinearMatMul",
    "MatMulInteger",
    "ConvInteger",
    "QGemm",
    "QLinearAdd",
    "QLinearMul",
    "QLinearGlobalAveragePool",
    "QLinearAveragePool",
    "QLinearConcat",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "QLinearSoftmax",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "NhwcQLinearConv",
    "QLinearWhere",
)

#: How many calibration inputs the range of the unscaled tensors is taken from at most.
MAX_CALIBRATION = 256
#: samples per run of ONNX Runtime's calibrator: its session, with every graph optimization off and a ReduceMin /
#: ReduceMax pair on each tensor, held about 3 GB per 4 samples of a 100M-parameter ViT (peak RSS of an int8
#: ``onnx`` export: 19.0 GB at 16, 6.9 GB at 4, the calibration step no longer the peak at 1); MinMax ranges do
#: not depend on it
ORT_CALIBRATION_BATCH = 1


def _producers(model: Any) -> dict[str, Any]:
    return {o: n for n in model.graph.node for o in n.output}


def _constant(model: Any, name: str) -> float | None:
    from onnx import numpy_helper

    if not name:
        return None
    for init in model.graph.initializer:
        if init.name == name:
            return float(numpy_helper.to_array(init).reshape(-1)[0])
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    return float(numpy_helper.to_array(a.t).reshape(-1)[0])
    return None


def _activation_bounds(model: Any, tensor: str) -> tuple[float | None, float | None]:
    """``(low, high)`` the tensor is clipped to by the ReLU / Clip that produces it, else ``(None, None)``."""
    from onnx import helper

    node = _producers(model).get(tensor)
    if node is None:
        return None, None
    if node.op_type == "Relu":
        return 0.0, None
    if node.op_type == "Clip":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        low = _constant(model, node.input[1]) if len(node.input) > 1 else attrs.get("min")
        high = _constant(model, node.input[2]) if len(node.input) > 2 else attrs.get("max")
        return (None if low is None else float(low)), (None if high is None else float(high))
    return None, None


#: ops whose output ONNX Runtime's QDQ quantizer gives the parameters of their input (Pad only with a zero pad value)
SHARED_QPARAMS = ("Pad", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Slice", "MaxPool", "AveragePool",
                  "Resize", "Identity")  # fmt: skip


def _shared_source(model: Any, tensor: str, producers: dict[str, Any], consts: set[str]) -> str:
    """The tensor whose quantization parameters ONNX Runtime gives ``tensor``: up through :data:`SHARED_QPARAMS`."""
    seen = {tensor}
    node = producers.get(tensor)
    while node is not None and node.op_type in SHARED_QPARAMS and node.input and node.input[0] not in consts:
        if node.op_type == "Pad" and not _zero_pad(model, node):
            break
        tensor = str(node.input[0])
        if tensor in seen:
            break
        seen.add(tensor)
        node = producers.get(tensor)
    return tensor


def _from_constant(tensor: str, producers: dict[str, Any], consts: set[str]) -> bool:
    """Whether ``tensor`` is a constant, or one through single-input reshapes / transposes / casts (a weight)."""
    seen: set[str] = set()
    while tensor not in consts and tensor not in seen:
        seen.add(tensor)
        node = producers.get(tensor)
        if node is None or not node.input or node.op_type not in (*SHARED_QPARAMS, "Cast"):
            return False
        tensor = str(node.input[0])
    return tensor in consts


def _zero_pad(model: Any, node: Any) -> bool:
    from onnx import helper

    mode = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "mode"), b"constant")
    if mode in (b"reflect", b"edge", b"wrap"):
        return True
    if len(node.input) < 3 or not node.input[2]:
        return True
    return _constant(model, node.input[2]) == 0.0  # another pad value (or a computed one): the output has its own range


def _weight_axis(model: Any, node_name: str, op: str) -> int:
    if op == "Conv":
        return 0
    if op == "Gemm":
        for n in model.graph.node:
            if n.name == node_name:
                for a in n.attribute:
                    if a.name == "transB" and a.i:
                        return 0
        return 1
    return 1  # MatMul: weight (in, out)


def weight_type(flags: str | None = None, machine: str | None = None) -> str:
    """``"uint8"`` on an x86 CPU without VNNI (onnxruntime's uint8 x int8 kernels saturate there), else ``"int8"``.

    Args:
        flags: the CPU flags (default: :func:`cpu_flags`, this machine's; unknown counts as no VNNI).
        machine: ``platform.machine()`` (default: this machine's).
    """
    import platform

    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "int8"
    flags = cpu_flags() if flags is None else flags
    return "int8" if re.search(r"\b(avx512_vnni|avx_vnni)\b", flags) else "uint8"


def cpu_flags() -> str:
    """This CPU's flags as ``/proc/cpuinfo`` lists them (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return line.split(":", 1)[-1].strip()


def _weights(weights: str | None) -> str:
    if weights is None:
        return weight_type()
    if weights not in ("int8", "uint8"):
        raise ValueError(f"weights: {weights!r} is not a weight storage; use 'int8', 'uint8' or None (this CPU's).")
    return weights


#: ops left in float in the int8 ONNX after QAT: quantized element-wise products (SiLU's x * sigmoid(x), squeeze-
#: excitation gates) took the QAT-trained HF EfficientNet from a spread error of 0.13 to 1.05 against the fake-quant
#: model (top-1 agreement 86% -> 9%), which quantizes only layer inputs; its convolutions stay int8
FLOAT_AFTER_QAT = ("Mul", "Sigmoid")

#: ops that stay float when they produce a LayerNormalization's input (and the LayerNormalization with them):
#: per-tensor uint8 on a transformer's residual stream rounds away tokens whose values are small against the other
#: tokens' range, and the LayerNorm after it scales that rounding up: trained HF DeiT's class and distillation tokens
#: took its int8 ONNX to a spread error of 0.80 and top-1 agreement 50% against the model (kept float: 0.03, 100%;
#: its TensorRT Q/DQ file, which quantizes only layer inputs, was ok). ONNX Runtime's CPU provider has no int8
#: LayerNormalization kernel, so only the residual additions lose int8 kernels.
LAYERNORM_INPUT_OPS = ("Add", "Sum", "Sub", "Concat")

#: after QAT, these ops stay float when every non-constant input comes from a float op (see :func:`float_nodes`)
AFTER_FLOAT = ("Add", "Sub", "Mul", "Div", "Relu", "Clip", "GlobalAveragePool", "AveragePool", "ReduceMean")


def quantized_op_types(table: QuantTable) -> list[str]:
    """The op types ONNX Runtime's quantizer may quantize: its defaults, less :data:`FLOAT_AFTER_QAT` for learned
    scales."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    ops = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
    return [op for op in ops if op != "LayerNormalization" and (table.origin != "qat" or op not in FLOAT_AFTER_QAT)]


def float_nodes(model: Any, table: QuantTable) -> dict[str, list[str]]:
    """The nodes the int8 ONNX keeps float beyond :func:`quantized_op_types`, by why (names of ``model``'s nodes).

    - ``"layernorm input"``: the :data:`LAYERNORM_INPUT_OPS` nodes whose output a LayerNormalization normalizes;
    - ``"activation matmul"`` (learned scales only): MatMuls of two activations (attention's ``q k^T`` and
      ``softmax v``), which the fake-quant model computes in float (it quantizes layer inputs only); int8 there took
      the QAT-trained HF MobileViT to a spread error of 0.15 against it;
    - ``"between float and a layer"`` (learned scales only): :data:`AFTER_FLOAT` ops whose every non-constant input
      comes from a float op (a BatchNorm's shift after its float scale, the ReLU after it), so the next layer's
      learned input grid is the only rounding, as in the fake-quant model.
    """
    producers = _producers(model)
    consts = {i.name for i in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output
    }
    kept: dict[str, list[str]] = {"layernorm input": [], "activation matmul": [], "between float and a layer": []}
    floating = {n.name for n in model.graph.node if table.origin == "qat" and n.op_type in FLOAT_AFTER_QAT}
    for node in model.graph.node:
        if table.origin == "qat" and node.name and node.name not in floating and node.op_type in AFTER_FLOAT:
            # after QAT, an op fed only by float ops (a BatchNorm's leftover shift after its float scale, the ReLU
            # or pooling after it) stays float: quantized, it rounds once more before the next layer's learned
            # input grid, where the fake-quant model rounds once (Keras DenseNet's pre-activation BatchNorms, the
            # squeeze-excitation pooling after SiLU)
            sources = [producers.get(i) for i in node.input if i and not _from_constant(i, producers, consts)]
            if sources and all(p is not None and p.name in floating for p in sources):
                floating.add(node.name)
                kept["between float and a layer"].append(node.name)
        if node.op_type == "LayerNormalization" and node.input:
            p = producers.get(node.input[0])
            if p is not None and p.op_type in LAYERNORM_INPUT_OPS and p.name and p.name not in kept["layernorm input"]:
                kept["layernorm input"].append(p.name)
        if (
            table.origin == "qat"
            and node.op_type == "MatMul"
            and node.name
            and not any(_from_constant(i, producers, consts) for i in node.input[:2])
        ):
            kept["activation matmul"].append(node.name)
    return {why: names for why, names in kept.items() if names}


def keeps_activations(model: Any, table: QuantTable) -> bool:
    """Whether the artifact keeps its ReLU / Clip nodes: learned scales where a quantized layer reads a clip to
    ``[0, m]`` whose learned grid reaches past ``m`` (``255 s > m``), so that dropping the clip would not be exact.

    Elsewhere ONNX Runtime's quantizer drops them into the range of the tensor before (exact for a ReLU with zero
    point 0), which saves a requantization.
    """
    if table.origin != "qat":
        return False
    producers = _producers(model)
    consts = {i.name for i in model.graph.initializer}
    for q in table.nodes:
        low, high = _activation_bounds(model, _shared_source(model, q.node.input_name, producers, consts))
        if low is not None and high is not None and low >= 0.0 and 255.0 * float(q.input_scale) > high - low:
            return True
    return False


def scale_overrides(model: Any, table: QuantTable, weights: str | None = None) -> dict[str, list[dict[str, Any]]]:
    """ONNX Runtime tensor overrides that carry the table's scales into its uint8 QDQ layout.

    Args:
        weights: ``"int8"`` or ``"uint8"`` (around 128) weight storage; default :func:`weight_type`.

    Returns:
        ``{tensor: [{"scale", "zero_point", ...}]}``: one entry per weight channel (with ``axis``) for
        weights, one entry for each quantized layer's input.
    """
    from onnxruntime.quantization import QuantType

    out: dict[str, list[dict[str, Any]]] = {}
    inputs: dict[str, float] = {}
    weight_grid: dict[str, Any] = (  # symmetric either way: uint8 is the int8 grid shifted by 128 (see the module)
        {"zero_point": np.array(128, np.uint8), "quant_type": QuantType.QUInt8}
        if _weights(weights) == "uint8"
        else {"zero_point": np.array(0, np.int8), "quant_type": QuantType.QInt8}
    )
    for q in table.nodes:
        axis = _weight_axis(model, q.node.node, q.node.op)
        out[q.node.weight_name] = [
            {
                "scale": np.array(s, np.float32),
                **weight_grid,
                "axis": axis,
            }
            for s in np.asarray(q.weight_scales, np.float32).reshape(-1)
        ]
        # a tensor read by several layers keeps the largest scale (the widest range)
        inputs[q.node.input_name] = max(inputs.get(q.node.input_name, 0.0), float(q.input_scale))
    producers = _producers(model)
    consts = {i.name for i in model.graph.initializer}
    shared: dict[str, float] = {}
    keep = keeps_activations(model, table)  # once: it walks every quantized layer's input chain
    for tensor, s in inputs.items():
        # ONNX Runtime gives the output of Pad, Reshape, MaxPool, ... its input's parameters and ignores an override
        # on it, so a layer reading such a tensor (HF MobileNetV2 pads before each depthwise conv) got the range
        # of the tensor before the chain instead of its learned scale: the scale goes where the chain starts
        source = _shared_source(model, tensor, producers, consts)
        if source != tensor:
            shared[source] = max(shared.get(source, 0.0), inputs.get(source, 0.0), s)
    for tensor, s in {**inputs, **shared}.items():
        if not s > 0:
            continue
        low, high = _activation_bounds(model, tensor)
        # learned scales (QAT), after a ReLU / ReLU6: the learned grid exactly, from 0 (zero point 0). The activation
        # stays in the graph (to_ort_int8 keeps it), so a clip to [0, 6] stays exact whatever the grid's top (255 s);
        # ONNX Runtime drops it where the quantized range makes it redundant. Its input takes the same grid when only
        # it reads that input: Conv -> Q -> DQ -> Clip -> Q then rounds once, as the fake-quant model does. (A grid of
        # 6 / 255, which let ONNX Runtime drop a ReLU6 exactly, rounded HF MobileNetV2's depthwise inputs twice as
        # finely as the learned scales: spread error 0.31 against the fake-quant model after QAT, 0.16 on the learned
        # grid.) Calibrated scales (PTQ, judged against the float model) keep the finer grid and the dropped clip.
        zero = 0 if low is not None and low >= 0.0 else 128
        if low is not None and zero == 0 and high is not None and high > low and table.origin != "qat":
            s = min(s, (high - low) / 255.0)
        entry = {
            "scale": np.array(s, np.float32),
            "zero_point": np.array(zero, np.uint8),
            "quant_type": QuantType.QUInt8,
        }
        out[tensor] = [entry]
        node = producers.get(tensor)
        if zero == 0 and keep and node is not None and node.op_type in ("Relu", "Clip"):
            before = str(node.input[0])
            if sum(before in n.input for n in model.graph.node) == 1 and before not in out:
                out[before] = [dict(entry)]
    return out


def fake_quant_ranges(
    model: Any, table: QuantTable, data: Inputs, batch: int = CALIBRATION_BATCH
) -> dict[str, tuple[float, float]]:
    """``(min, max)`` of every float tensor of ``model`` as the graph with the table's layer Q/DQ computes it.

    Args:
        model: the shared fp32 ``onnx.ModelProto``.
        table: the int8 scales of its weighted nodes.
        data: inputs in the ONNX layout (one array, or a tuple with one array per graph input).
        batch: inference batch size (a static-batch graph runs in its own).
    """
    import onnx
    import onnxruntime as ort

    fq = to_qdq(model, table, residual_inputs=[])
    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {
        v.name
        for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
        if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    }
    consts = {i.name for i in model.graph.initializer}
    names = sorted({t for n in model.graph.node for t in (*n.input, *n.output) if t in floats and t not in consts})
    present = {o.name for o in fq.graph.output}
    fq.graph.output.extend(
        onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names if n not in present
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # keep every tensor it reads out
    sess = ort.InferenceSession(fq.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    want = set(names)
    ranges: dict[str, tuple[float, float]] = {}
    batch = fixed_batch(sess) or batch
    for i in range(0, input_count(data), batch):
        for name, value in zip(outs, sess.run(outs, ort_feed(sess, take(data, i, i + batch))), strict=True):
            a = np.asarray(value)
            if name not in want or a.size == 0 or a.dtype != np.float32:
                continue
            low, high = float(a.min()), float(a.max())
            old = ranges.get(name)
            ranges[name] = (low, high) if old is None else (min(old[0], low), max(old[1], high))
    return ranges


class _Reader:
    """An ``onnxruntime.quantization.CalibrationDataReader`` over the inputs, a few samples at a time.

    ``data`` is one array or a tuple with one array per graph input (token ids and masks keep their dtype);
    ``names`` are the graph inputs in order.
    """

    def __init__(self, names: list[str], data: Inputs, batch: int = ORT_CALIBRATION_BATCH) -> None:
        self.names = names
        self.data = data
        self.batch = batch
        self._it: Iterator[dict[str, Any]] = self._batches()

    def _batches(self) -> Iterator[dict[str, Any]]:
        arrays = self.data if isinstance(self.data, tuple) else (self.data,)
        for i in range(0, input_count(self.data), self.batch):
            yield {n: np.ascontiguousarray(a[i : i + self.batch]) for n, a in zip(self.names, arrays, strict=True)}

    def get_next(self) -> dict[str, Any] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()


def to_ort_int8(
    onnx_path: str | Path,
    table: QuantTable,
    calibration: npt.ArrayLike,
    out_path: str | Path,
    weights: str | None = None,
) -> Path:
    """Write the ONNX Runtime int8 form of the shared fp32 ONNX at ``onnx_path`` to ``out_path`` (atomically).

    Args:
        onnx_path: the BatchNorm-folded fp32 ONNX the exporters share.
        table: the int8 scales (learned or calibrated) of its weighted nodes.
        calibration: inputs in the ONNX layout (NCHW images) for the ranges of the other tensors; a tuple with
            one array per graph input for a model with several (int64 token ids and masks keep their dtype).
        out_path: the destination ``.onnx``.
        weights: ``"int8"`` or ``"uint8"`` (around 128) weight storage; default :func:`weight_type`, this CPU's.

    Raises:
        ValueError: no calibration inputs, not one array per graph input, or an unknown ``weights``.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    data = as_inputs(calibration)
    if (not isinstance(data, tuple) and data.ndim == 0) or input_count(data) == 0:
        raise ValueError("calibration: no inputs for the ranges of the unscaled tensors; pass calibration batches.")
    data = take(data, 0, MAX_CALIBRATION)
    model = onnx.load(str(onnx_path))
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if len(names) != (len(data) if isinstance(data, tuple) else 1):
        raise ValueError(
            f"calibration: the ONNX model takes {len(names)} input(s) {names}; got "
            f"{len(data) if isinstance(data, tuple) else 1} array(s). Pass a tuple with one array per input."
        )
    weights = _weights(weights)
    overrides = scale_overrides(model, table, weights)
    if table.origin == "qat":
        # the artifact must reproduce the fake-quant model, whose layer inputs sit on the learned grids: the tensors
        # without a learned scale take their ranges where that model computes them (the graph with the table's
        # layer Q/DQ), not on the float graph, whose activations can be far from those (random or briefly trained
        # weights: HF MobileNetV2's residual sums)
        for tensor, (low, high) in fake_quant_ranges(model, table, data).items():
            if tensor not in overrides:
                overrides[tensor] = [{"rmin": np.array(low, np.float32), "rmax": np.array(high, np.float32)}]
    kept = float_nodes(model, table)
    target = Path(out_path)
    with atomic_path(target) as tmp:
        quantize_static(
            str(onnx_path),
            str(tmp),
            _Reader(names, data),
            op_types_to_quantize=quantized_op_types(table),
            nodes_to_exclude=[name for names in kept.values() for name in names],
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QUInt8 if weights == "uint8" else QuantType.QInt8,
            per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            calibration_providers=["CPUExecutionProvider"],
            extra_options={
                "TensorQuantOverrides": overrides,
                "QDQDisableWeightAdjustForInt32Bias": True,  # keep the table's weight scales exact
                # a ReLU6 on the learned grid: its clip is not in the range (see scale_overrides)
                "QDQKeepRemovableActivations": keeps_activations(model, table),
            },
        )
    return target


def optimized_op_types(path: str | Path, threads: int = 2) -> Counter[str]:
    """The node types of ONNX Runtime's CPU-optimized graph of ``path`` (what it really executes)."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="fitslim-ort-opt-") as tmp:
        opt_file = Path(tmp) / "optimized.onnx"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(opt_file)
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        optimized = onnx.load(str(opt_file))
    return Counter(n.op_type for n in optimized.graph.node)


def int8_kernels(path: str | Path, threads: int = 2) -> dict[str, int]:
    """How many int8 kernels (:data:`INT8_KERNELS`) ONNX Runtime's optimized graph of ``path`` runs, by type."""
    ops = optimized_op_types(path, threads)
    return {op: n for op, n in sorted(ops.items()) if op in INT8_KERNELS}


def float_notes(path: Path, table: QuantTable) -> list[str]:
    """The report's notes on what the int8 ONNX of the fp32 graph at ``path`` keeps float, and why (none: empty)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    notes = []
    if table.origin == "qat":
        counts = {op: sum(1 for n in model.graph.node if n.op_type == op) for op in FLOAT_AFTER_QAT}
        if any(counts.values()):
            notes.append(
                "after QAT, element-wise " + ", ".join(f"{op} x{n}" for op, n in counts.items() if n)
                + " (SiLU, squeeze-excitation gates) kept float: the fake-quant model quantizes only layer inputs, and "
                "int8 products there broke HF EfficientNet"
            )  # fmt: skip
    kept = float_nodes(model, table)
    if "layernorm input" in kept:
        notes.append(
            f"LayerNormalization inputs kept float ({len(kept['layernorm input'])} residual additions / concats): "
            "per-tensor int8 there rounds away small tokens (HF DeiT's class token) that the LayerNorm scales up"
        )
    if "between float and a layer" in kept:
        notes.append(
            f"after QAT, {len(kept['between float and a layer'])} op(s) fed only by float ops (BatchNorm shifts, the "
            "ReLU / pooling after them) kept float: quantized, they would round once more before the next layer's "
            "learned input grid"
        )
    if "activation matmul" in kept:
        notes.append(
            f"after QAT, MatMuls of two activations x{len(kept['activation matmul'])} (attention) kept float: the "
            "fake-quant model computes them in float"
        )
    return notes


def write_int8(job: ExportJob) -> Artifact:
    """The ``onnx`` target at int8: ONNX Runtime's QDQ form of the shared ONNX with ``job.quant``'s scales.

    An int8 file that ONNX Runtime runs without a single int8 kernel (:data:`INT8_KERNELS`) is a ``mismatch``
    whatever its agreement (the artifact's last check, after the core's comparison): it is a float model with extra
    rounding, not an int8 artifact.

    Raises:
        ValueError: int8 without scales.
    """
    import onnxruntime as ort

    if job.quant is None:
        raise ValueError("precision: int8 ONNX needs int8 scales; pass calibration batches or a quant_spec.")
    calib = job.calibration_nchw()
    data = calib if calib is not None else job.samples_nchw()
    final = job.artifact(".int8.onnx")
    here = weight_type()
    weights = job.options.onnx_weight_type or here
    to_ort_int8(job.onnx_path, job.quant, data, final, weights)
    result = TargetResult(
        "onnx",
        "int8",
        files=[final.name],
        size_bytes=final.stat().st_size,
        runtime=f"onnxruntime {ort.__version__} (CPU, QDQ uint8/{weights})",
        scales=job.quant.describe(),
    )
    if calib is None:
        result.notes.append("ranges of the tensors without learned scales taken from the verification samples")
    result.notes.extend(float_notes(job.onnx_path, job.quant))
    if job.options.onnx_weight_type is None and weights == "uint8":
        result.notes.append(
            "weights stored as uint8 around 128 (the same symmetric int8 grid): this is an x86 CPU without VNNI, where "
            "onnxruntime's uint8 x int8 kernels saturate; exported on a VNNI or ARM CPU the weights stay int8 (faster, "
            "but not for x86 CPUs without VNNI); onnx_weights='int8' or 'uint8' chooses for the CPU that will run it"
        )
    elif job.options.onnx_weight_type is not None:
        result.notes.append(
            f"weights stored as {weights} (onnx_weights={weights!r})"
            + (" around 128, the same symmetric int8 grid" if weights == "uint8" else "")
            + (
                "; this CPU (x86 without VNNI) saturates onnxruntime's uint8 x int8 products, so the verification "
                "here can fail where ARM and VNNI CPUs compute the artifact exactly"
                if weights == "int8" and here == "uint8"
                else ""
            )
        )
    ops = optimized_op_types(final, job.threads)
    kernels = {op: n for op, n in sorted(ops.items()) if op in INT8_KERNELS}
    fp_heavy = {op: n for op, n in ops.items() if op in ("Conv", "MatMul", "Gemm", "FusedConv", "FusedMatMul")}
    result.notes.append(
        "int8 kernels in ONNX Runtime: " + (", ".join(f"{op} x{n}" for op, n in kernels.items()) or "none")
        + (f"; still float: {', '.join(f'{op} x{n}' for op, n in fp_heavy.items())}" if fp_heavy else "")
    )  # fmt: skip

    def no_int8_kernels() -> None:
        # after verification: fill_agreement would turn a mismatch within bounds back into ok
        if not kernels:
            result.status = "mismatch"
            why = (
                "not an int8 artifact: ONNX Runtime runs none of its ops with int8 kernels (every "
                + (", ".join(f"{op} x{n}" for op, n in fp_heavy.items()) or "op")
                + " computes in float between QuantizeLinear and DequantizeLinear); export it at fp32, or to a target "
                "whose int8 kernels cover these layers"
            )
            result.reason = why + (f"; {result.reason}" if result.reason else "")
            log.warning("onnx int8 artifact %s has no int8 kernels in ONNX Runtime", final.name)
        log.info("ONNX Runtime int8 ONNX written: %s (%s)", final.name, result.notes[-1])

    return Artifact(result, [final], finish=no_int8_kernels)
