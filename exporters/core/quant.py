"""int8 scales on the deployed ONNX graph: calibration (PTQ) and mapping a learned QuantSpec by content.

Every int8 target (ncnn, TensorRT Q/DQ, the torch TFLite path) reads its scales from one
:class:`QuantTable`, keyed by the weighted nodes (Conv, Gemm, MatMul) of the BatchNorm-folded ONNX
graph the exporters share. A table comes either from a learned :class:`fitslim.QuantSpec` (QAT), whose
layers are matched to ONNX nodes by name and by weight content, or from calibration on real inputs.

Example:
    >>> # table = table_from_spec("model.onnx", spec, source_weights)   # learned scales, used exactly
    >>> # table = calibrate("model.onnx", calibration_batches_nchw)      # post-training
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from exporters.core.inputs import as_inputs, fixed_batch, input_count, ort_feed, take
from fitslim.int8 import absmax_scale, percentile_scale
from fitslim.quantspec import LayerQuant, QuantSpec

__all__ = [
    "QuantTable",
    "QuantizedNode",
    "WeightedNode",
    "activation_values",
    "calibrate",
    "table_from_spec",
    "weighted_nodes",
]

log = logging.getLogger(__name__)

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")

#: samples per inference while calibrating: memory holds this many samples' intermediate tensors at once (a
#: ViT-Base-sized model at 224x224: about 0.3 GB a sample), and the ranges do not depend on it
CALIBRATION_BATCH = 4


@dataclass(frozen=True)
class WeightedNode:
    """A Conv/Gemm/MatMul node of an ONNX graph whose weight is an initializer.

    ``weight`` is always output-channel first: OIHW for Conv, (out, in) for Gemm/MatMul.
    """

    node: str
    op: str
    kind: str
    input_name: str
    weight_name: str
    weight: npt.NDArray[np.float32]
    groups: int


@dataclass(frozen=True)
class QuantizedNode:
    """A weighted ONNX node with its int8 scales (``x ≈ q * scale``, symmetric)."""

    node: WeightedNode
    weight_scales: npt.NDArray[np.float32]
    input_scale: float
    spec_layer: str


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def weighted_nodes(model: Any) -> list[WeightedNode]:
    """The weighted nodes of an ``onnx.ModelProto`` in graph order (weights out-channel first)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    out: list[WeightedNode] = []
    for i, n in enumerate(model.graph.node):
        if n.op_type not in WEIGHTED_OPS or len(n.input) < 2 or n.input[1] not in inits:
            continue
        w = numpy_helper.to_array(inits[n.input[1]]).astype(np.float32)
        name = n.name or f"{n.op_type}_{i}"
        if n.op_type == "Conv":
            groups = int(_attr(n, "group", 1))
            if w.ndim == 3:
                kind = "conv1d"
            elif groups > 1 and w.shape[1] == 1 and groups == w.shape[0]:
                kind = "depthwise_conv2d"
            else:
                kind = "conv2d"
            out.append(WeightedNode(name, "Conv", kind, n.input[0], n.input[1], w, groups))
        else:
            if w.ndim != 2:
                continue
            trans_b = int(_attr(n, "transB", 0)) if n.op_type == "Gemm" else 0
            w_out_first = w if trans_b else w.T
            out.append(
                WeightedNode(name, n.op_type, "linear", n.input[0], n.input[1], np.ascontiguousarray(w_out_first), 1)
            )
    return out


def _load(onnx_model: str | Path | Any) -> Any:
    import onnx

    return onnx.load(str(onnx_model)) if isinstance(onnx_model, (str, Path)) else onnx_model


@dataclass
class QuantTable:
    """int8 scales for every weighted node of one ONNX graph.

    Args:
        nodes: one :class:`QuantizedNode` per weighted node, in graph order.
        spec: the QuantSpec the scales came from.
        origin: ``"qat"`` (learned, used exactly) or ``"calibration"``.
    """

    nodes: list[QuantizedNode]
    spec: QuantSpec
    origin: str

    def __len__(self) -> int:
        return len(self.nodes)

    def match_weight(self, weight: npt.ArrayLike, atol: float = 1e-5) -> QuantizedNode:
        """The entry whose (out-channel-first) weight equals ``weight`` element-wise.

        Converters such as pnnx rename layers but keep the BatchNorm-folded weights, so a layer of the
        converted model is found by its weights.

        Raises:
            KeyError: no weight matches (shape and values are both reported).
        """
        w = np.asarray(weight, dtype=np.float32)
        for q in self.nodes:
            ref = q.node.weight
            if ref.size == w.size and np.allclose(
                ref.reshape(w.shape) if ref.shape != w.shape else ref, w, atol=atol, rtol=1e-4
            ):
                return q
        raise KeyError(f"no weighted ONNX node has a weight equal to the given one of shape {w.shape}")

    def describe(self) -> str:
        """One line for the report: where the scales came from."""
        if self.origin == "qat":
            return f"learned QuantSpec ({len(self.nodes)} layers) used exactly"
        meta = self.spec.metadata
        return f"calibrated on {meta.get('samples', '?')} samples ({meta.get('method', 'absmax')})"


def _channel_cosines(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    a2 = a.reshape(a.shape[0], -1).astype(np.float64)
    b2 = b.reshape(b.shape[0], -1).astype(np.float64)
    na, nb = np.linalg.norm(a2, axis=1), np.linalg.norm(b2, axis=1)
    both_zero = (na == 0) & (nb == 0)
    cos = np.abs((a2 * b2).sum(1)) / np.maximum(na * nb, 1e-30)
    cos[both_zero] = 1.0
    return cos


def table_from_spec(
    onnx_model: str | Path | Any,
    spec: QuantSpec,
    source_weights: Mapping[str, npt.ArrayLike] | None = None,
) -> QuantTable:
    """Map a learned QuantSpec onto the weighted nodes of the (BatchNorm-folded) ONNX graph.

    A spec layer matches a node when the node's weight initializer is named ``<layer>.weight`` (torch
    export), or by content: same shape and, channel by channel, the same direction as the source layer's
    weight in ``source_weights`` (folding BatchNorm only rescales each output channel).

    Args:
        onnx_model: the ONNX path or ``ModelProto``.
        spec: the learned spec.
        source_weights: ``{spec layer name: weight}`` from the source model, out-channel first.

    Raises:
        ValueError: a spec layer matches no node, or a weighted node has no spec layer (it would be
            left in float), each named.
    """
    model = _load(onnx_model)
    nodes = weighted_nodes(model)
    weights = {k: np.asarray(v, dtype=np.float32) for k, v in (source_weights or {}).items()}
    taken: dict[str, LayerQuant] = {}
    rescale: dict[str, npt.NDArray[np.float64]] = {}
    for layer in spec:
        match = [n for n in nodes if n.weight_name in (f"{layer.name}.weight", layer.name) and n.node not in taken]
        by_content = not match and layer.name in weights
        if by_content:
            w = weights[layer.name]
            match = [
                n
                for n in nodes
                if n.node not in taken
                and n.weight.shape[0] == w.shape[0]
                and n.weight.size == w.size
                and bool(np.all(_channel_cosines(n.weight, w.reshape(n.weight.shape)) > 0.999))
            ]
        if not match:
            shape_match = [n for n in nodes if n.node not in taken and n.weight.shape == layer.weight_shape]
            if len(shape_match) == 1:
                match = shape_match
        if not match:
            raise ValueError(
                f"QuantSpec layer {layer.name!r} ({layer.kind}, weight {layer.weight_shape}) matches no weighted node "
                f"of the exported graph; nodes: {[(n.node, n.weight.shape) for n in nodes if n.node not in taken]}."
            )
        taken[match[0].node] = layer
        if by_content and match[0].weight.size == weights[layer.name].size:
            ratio = _unfolded_scales(match[0].weight, weights[layer.name], layer, spec.weight_bits)
            if ratio is not None:
                rescale[match[0].node] = ratio
    missing = [n for n in nodes if n.node not in taken]
    if missing:
        names = [(n.node, n.op, n.weight.shape) for n in missing]
        raise ValueError(
            f"the exported graph has weighted nodes without learned scales: {names}; "
            "they would stay float. Quantize those layers in QAT, or export with calibration instead of quant_spec."
        )
    out = []
    for n in nodes:
        scales = taken[n.node].weight_scale_array()
        if n.node in rescale and np.size(scales) == len(rescale[n.node]):
            # the graph's kernel is the spec's times a per-channel factor (a BatchNorm the source could not pair with
            # its layer, as in a subclassed Keras model, folded on export): symmetric per-channel int8 is the same grid
            # scaled by that factor, so the scales follow it
            scales = (np.asarray(scales, np.float64).reshape(-1) * rescale[n.node]).astype(np.float32)
        out.append(QuantizedNode(n, scales, float(taken[n.node].input_scale), taken[n.node].name))
    return QuantTable(out, spec, "qat")


def _unfolded_scales(
    graph: npt.NDArray[np.float32], source: npt.NDArray[np.float32], layer: LayerQuant, bits: int
) -> npt.NDArray[np.float64] | None:
    """The per-channel factor to put on a spec layer's weight scales, or None to keep them.

    The spec's per-channel scales were computed (``max|w_c| / qmax``) either on the kernel the graph holds (BatchNorm
    folded into it by the source, as a functional Keras model or torch does) or on the bare ``source`` kernel (a
    BatchNorm the source could not pair with its layer, as in a subclassed Keras model), which the export then
    folded: ``graph_c = f_c * source_c``. Only in the second case do the scales follow ``|f_c|``; learned scales that
    are neither are kept as they are.
    """
    qmax = float(2 ** (bits - 1) - 1)
    g = graph.reshape(graph.shape[0], -1).astype(np.float64)
    w = source.reshape(graph.shape[0], -1).astype(np.float64)
    scales = np.asarray(layer.weight_scales, np.float64).reshape(-1)
    if len(scales) != len(g):
        return None
    on_graph, on_source = np.abs(g).max(1) / qmax, np.abs(w).max(1) / qmax
    if np.allclose(scales, on_graph, rtol=1e-4) or not np.allclose(scales, on_source, rtol=1e-4):
        return None
    norm = (w * w).sum(1)
    return np.asarray(np.where(norm > 0, np.abs((g * w).sum(1)) / np.maximum(norm, 1e-300), 1.0), np.float64)


def activation_values(
    model: Any, names: list[str], data: Any, batch: int = CALIBRATION_BATCH, only_max: bool = False
) -> dict[str, list[Any]]:
    """``|value|`` of each named tensor of an ONNX graph over ``data`` (onnxruntime), flattened per batch.

    ``data`` is one array, or a tuple with one array per graph input (token ids, masks). With ``only_max``
    each list holds one array with the running largest ``|value|`` instead, so memory does not grow with
    the data (what absmax scales need; a 100M-parameter model's activations over a few hundred inputs do
    not fit in memory).
    """
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    present = {o.name for o in m.graph.output}
    for name in names:
        if name not in present:
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    # not ORT_ENABLE_ALL: its NCHWc layout pass fuses a Conv into the Add that reads it and then cannot find
    # the Conv's output when that output is also a graph output (NASNet's separable-conv + Add cells:
    # "Failed to find node output or a constant initializer producing output: Conv__2241:0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    out_names = [o.name for o in sess.get_outputs()]
    seen: dict[str, list[Any]] = {n: [] for n in names}
    batch = fixed_batch(sess) or batch  # a static-batch ONNX file runs in its own batch size (often 1)
    for i in range(0, input_count(data), batch):
        outs = sess.run(out_names, ort_feed(sess, take(data, i, i + batch)))
        for name, value in zip(out_names, outs, strict=True):
            if name not in seen:
                continue
            a = np.abs(np.asarray(value, dtype=np.float32)).ravel()
            if only_max:
                top = np.float32(a.max()) if a.size else np.float32(0.0)
                seen[name] = [np.maximum(seen[name][0], top) if seen[name] else np.asarray([top], np.float32)]
            else:
                seen[name].append(a)
    return seen


def calibrate(
    onnx_model: str | Path | Any,
    data: npt.ArrayLike,
    method: str = "absmax",
    percentile: float = 99.99,
    batch: int = CALIBRATION_BATCH,
) -> QuantTable:
    """Post-training calibration: weight scales from the folded weights, input scales from real data.

    Args:
        onnx_model: the ONNX path or ``ModelProto`` (BatchNorm folded).
        data: calibration inputs in the ONNX model's input layout.
        method: ``"absmax"`` or ``"percentile"`` for activation ranges (weights always use absmax).
        percentile: the percentile for ``method="percentile"``.
        batch: inference batch size.

    Raises:
        ValueError: an unknown method, no data, or a graph with no weighted node.
    """
    if method not in ("absmax", "percentile"):
        raise ValueError(f"method must be 'absmax' or 'percentile'; got {method!r}.")
    x = as_inputs(data)
    if (not isinstance(x, tuple) and x.ndim == 0) or input_count(x) == 0:
        raise ValueError("calibration data is empty; pass a few hundred real inputs.")
    model = _load(onnx_model)
    nodes = weighted_nodes(model)
    if not nodes:
        raise ValueError("the ONNX graph has no Conv/Gemm/MatMul with constant weights: nothing to quantize.")
    ranges = activation_values(model, sorted({n.input_name for n in nodes}), x, batch, only_max=method == "absmax")
    layers: list[LayerQuant] = []
    out: list[QuantizedNode] = []
    for n in nodes:
        acts = np.concatenate(ranges[n.input_name])
        s_in = absmax_scale(acts) if method == "absmax" else percentile_scale(acts, percentile)
        s_w = absmax_scale(n.weight, axis=0)
        layers.append(LayerQuant(n.node, n.kind, n.weight.shape, s_w.tolist(), float(s_in), groups=n.groups))
        out.append(QuantizedNode(n, s_w, float(s_in), n.node))
    spec = QuantSpec(
        layers, source="calibration", framework="onnx", metadata={"samples": input_count(x), "method": method}
    )
    log.info("calibrated %d layers on %d samples (%s)", len(out), input_count(x), method)
    return QuantTable(out, spec, "calibration")
