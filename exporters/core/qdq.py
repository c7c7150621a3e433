"""TensorRT-ready explicit int8 quantization: QuantizeLinear/DequantizeLinear (Q/DQ) in the shared ONNX.

:func:`to_qdq` rewrites the BatchNorm-folded fp32 ONNX the exporters share into the form TensorRT's
explicit quantization takes (and onnxruntime runs):

- every quantized Conv/Gemm/MatMul gets ``QuantizeLinear -> DequantizeLinear`` on its data input, per
  tensor, with the :class:`~exporters.core.quant.QuantTable` input scale;
- its weight is stored as an int8 initializer, quantized per output channel (axis 0 for Conv and for
  Gemm with ``transB=1``, axis 1 for Gemm with ``transB=0`` and MatMul), followed by a per-axis
  ``DequantizeLinear``; the bias stays fp32 (TensorRT folds it in the kernel's epilogue);
- residual Adds (one input straight from a quantized Conv/Gemm/MatMul, the other a non-constant tensor)
  get Q/DQ on the skip input (``residual="skip"``, the default) or on both inputs (``"both"``);
- every Q/DQ is symmetric: zero point 0 of type int8 (activations saturate to [-128, 127] as ONNX and
  TensorRT define it; weights use the restricted range ±127 of :mod:`fitslim.int8`).

Why only the skip input by default: TensorRT fuses a Conv with the residual Add that consumes its output
(the Add becomes the convolution's epilogue) only when no Q/DQ sits between them; the precision of the
*other* (skip) input decides the precision of the fused output. NVIDIA's own ONNX quantizer (ModelOpt,
``build_non_residual_input_map`` / ``remove_partial_input_qdq``) therefore removes the Q/DQ from the
Conv-side input of residual Adds. ``residual="both"`` keeps both for runtimes that want a quantized
element-wise Add; it still lints clean.

Scale of a residual-Add input: when the tensor is also the input of a quantized layer, that layer's
input scale (the largest, if several quantized layers read it) and the same Q/DQ pair are reused, so the
learned or calibrated scales stay exact. Otherwise, with ``calibration`` data, the absmax of the tensor
over it (onnxruntime on the fp32 graph); without, the input scale of the first quantized layer
downstream of the Add output (through Relu/Clip/MaxPool/reshapes), which bounds the Add's result.

With learned scales (a QAT table) the model to reproduce is the fake-quant model, which computes residual
Adds on unclipped inputs and whose activations can differ widely from the float graph's (its layer inputs are
clipped to the learned ranges; the float weights alone may give values orders of magnitude larger). So with
``calibration`` the Add inputs are measured on the graph with the table's layer Q/DQ in place (what the
fake-quant model computes), and a tensor the learned range of its reading layer would clip gets its own,
measured scale instead of the reused one: the int8 Add then only rounds, as closely as int8 can to the
fake-quant model's float Add.

Rounding: weights are quantized with :func:`fitslim.int8.quantize` using round half to even, because
that is what ONNX ``QuantizeLinear`` specifies, what onnxruntime and TensorRT's quantize layer execute,
what onnxruntime's own quantizer writes for weights (NumPy ``round``), and what torch's fake-quant used
during QAT; int8 weights written this way equal what TensorRT would compute itself from float weights
and the same scales.

:func:`lint_qdq` checks a model statically against TensorRT's explicit-quantization rules.

Example:
    >>> # qdq = to_qdq(onnx.load("shared.onnx"), table)
    >>> # assert lint_qdq(qdq) == []
"""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from exporters.core.inputs import as_inputs, input_count
from exporters.core.quant import WEIGHTED_OPS, QuantizedNode, QuantTable, activation_values
from fitslim.int8 import absmax_scale, quantize

if TYPE_CHECKING:
    import onnx

__all__ = [
    "OPSET_MAX",
    "OPSET_MIN",
    "RESIDUAL_MODES",
    "ResidualInput",
    "lint_qdq",
    "qdq_counts",
    "residual_add_scales",
    "to_qdq",
]

log = logging.getLogger(__name__)

#: The default-domain opsets TensorRT's ONNX parser takes with per-axis DequantizeLinear.
OPSET_MIN, OPSET_MAX = 13, 25

#: Where residual Adds get Q/DQ: the skip input only (TensorRT's fusion-friendly placement) or both inputs.
RESIDUAL_MODES = ("skip", "both")

#: Ops a scale may be carried through when looking downstream of a residual Add for a consumer's scale.
_RANGE_PRESERVING = {"Relu", "Clip", "MaxPool", "Reshape", "Flatten", "Identity", "Transpose", "Squeeze", "Unsqueeze"}

#: Ops TensorRT fuses into a preceding Conv; Q/DQ between the two would break the fusion.
_CONV_FUSED = {"BatchNormalization", "Relu", "Clip", "LeakyRelu"}

_INT8 = 3  # onnx.TensorProto.INT8
_UINT8 = 2  # onnx.TensorProto.UINT8
_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class ResidualInput:
    """One quantized input of a residual Add.

    Args:
        add: the Add node (its name, or ``Add_<index>`` when unnamed).
        index: which Add input (0 or 1).
        tensor: the input tensor's name in the fp32 graph.
        role: ``"skip"`` (the identity/shortcut input) or ``"main"`` (straight from the Conv).
        scale: the per-tensor int8 scale.
        source: how the scale was chosen, for the report.
        origin: ``"reused"`` (a quantized layer reads the tensor), ``"calibration"`` (measured) or
            ``"downstream"`` (the input scale of the next quantized layer after the Add).
    """

    add: str
    index: int
    tensor: str
    role: str
    scale: float
    source: str
    origin: str


# ---------------------------------------------------------------------------------------------------
# graph helpers


def _node_id(node: Any, index: int) -> str:
    return str(node.name) if node.name else f"{node.op_type}_{index}"


def _opset(model: Any) -> int | None:
    for imp in model.opset_import:
        if imp.domain in _DEFAULT_DOMAINS:
            return int(imp.version)
    return None


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _constants(graph: Any) -> dict[str, npt.NDArray[Any]]:
    """Initializers and ``Constant`` node outputs as arrays."""
    from onnx import numpy_helper

    out = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.domain in _DEFAULT_DOMAINS:
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def _constant_types(graph: Any) -> dict[str, int]:
    out = {i.name: int(i.data_type) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = int(a.t.data_type)
    return out


def _producers(graph: Any) -> dict[str, int]:
    return {o: i for i, n in enumerate(graph.node) for o in n.output if o}


def _consumers(graph: Any) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for i, n in enumerate(graph.node):
        for t in n.input:
            if t:
                out[t].append(i)
    return out


def _unwrap(graph: Any, producer: dict[str, int], tensor: str) -> str:
    """The tensor before a ``QuantizeLinear -> DequantizeLinear`` pair (itself when there is none)."""
    p = producer.get(tensor)
    if p is not None and graph.node[p].op_type == "DequantizeLinear":
        q = producer.get(graph.node[p].input[0])
        if q is not None and graph.node[q].op_type == "QuantizeLinear":
            return str(graph.node[q].input[0])
    return tensor


def _depths(graph: Any, producer: dict[str, int]) -> list[int]:
    """Longest path (in nodes, Q/DQ not counted) from the graph inputs to each node."""
    depth = [0] * len(graph.node)
    for i, n in enumerate(graph.node):
        d = max((depth[producer[t]] for t in n.input if t in producer), default=0)
        depth[i] = d + (0 if n.op_type in ("QuantizeLinear", "DequantizeLinear") else 1)
    return depth


def _residual_adds(graph: Any, weighted: set[int]) -> list[tuple[int, int, int]]:
    """``(add index, main input, skip input)`` of every residual Add.

    A residual Add has two non-constant inputs, at least one produced straight by a node in ``weighted``
    (Q/DQ pairs are looked through). That one is the main branch; when both are, the deeper one (the
    longer path from the graph input) is, as in ResNet's downsample shortcut.
    """
    consts = set(_constants(graph))
    producer = _producers(graph)
    depth = _depths(graph, producer)
    out: list[tuple[int, int, int]] = []
    for i, n in enumerate(graph.node):
        if n.op_type != "Add" or len(n.input) != 2 or any(not t or t in consts for t in n.input):
            continue
        prod = [producer.get(_unwrap(graph, producer, t)) for t in n.input]
        if prod[0] is not None and prod[0] == prod[1]:
            continue
        is_w = [p is not None and p in weighted for p in prod]
        if not any(is_w):
            continue
        if all(is_w):
            d0, d1 = (depth[p] if p is not None else -1 for p in prod)
            main = 0 if d0 >= d1 else 1
        else:
            main = 0 if is_w[0] else 1
        out.append((i, main, 1 - main))
    return out


def _match_nodes(graph: Any, table: QuantTable) -> dict[int, QuantizedNode]:
    """Graph node index of every table entry (by op, data input and weight input; name breaks ties)."""
    out: dict[int, QuantizedNode] = {}
    for q in table.nodes:
        hits = [
            i
            for i, n in enumerate(graph.node)
            if n.op_type == q.node.op
            and len(n.input) >= 2
            and n.input[0] == q.node.input_name
            and n.input[1] == q.node.weight_name
            and i not in out
        ]
        named = [i for i in hits if _node_id(graph.node[i], i) == q.node.node]
        if not hits:
            raise ValueError(
                f"table: int8 scales for ONNX node {q.node.node!r} ({q.node.op} on {q.node.input_name!r} with "
                f"weight {q.node.weight_name!r}) but the graph has no such node; build the QuantTable from this "
                "ONNX file (exporters.core.quant.calibrate or table_from_spec)."
            )
        out[(named or hits)[0]] = q
    return out


def _weight_axis(node: Any, ndim: int) -> int:
    """The output-channel axis of a weight as stored in the graph."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if int(_attr(node, "transB", 0)) else 1
    return ndim - 1  # MatMul: (..., K, N)


def _activation_absmax(model: Any, names: Sequence[str], data: Any, batch: int = 32) -> dict[str, float]:
    """Largest ``|value|`` of each named tensor of the fp32 graph over ``data`` (onnxruntime)."""
    values = activation_values(model, list(names), data, batch, only_max=True)
    return {n: max((float(v.max()) for v in values[n] if v.size), default=0.0) for n in names}


# ---------------------------------------------------------------------------------------------------
# residual Add scales


def residual_add_scales(
    onnx_model: Any,
    table: QuantTable,
    calibration: npt.ArrayLike | None = None,
    residual: str = "skip",
) -> list[ResidualInput]:
    """Choose the int8 scale of every residual-Add input that :func:`to_qdq` quantizes.

    Args:
        onnx_model: the fp32 ``onnx.ModelProto`` the table was built on.
        table: the int8 scales of the weighted nodes.
        calibration: optional inputs (NCHW, the ONNX layout) to measure Add inputs no quantized layer reads.
        residual: ``"skip"`` or ``"both"`` (see the module docstring).

    Raises:
        ValueError: an unknown ``residual`` mode; an Add input with no scale to reuse, no calibration and
            no quantized layer downstream.
    """
    if residual not in RESIDUAL_MODES:
        raise ValueError(f"residual: unknown {residual!r}; choose one of {list(RESIDUAL_MODES)}.")
    g = onnx_model.graph
    quantized = _match_nodes(g, table)
    reads: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for i, q in quantized.items():
        reads[g.node[i].input[0]].append((_node_id(g.node[i], i), float(np.float32(q.input_scale))))
    consumers = _consumers(g)

    def downstream(tensor: str) -> tuple[str, float] | None:
        queue, seen = [tensor], {tensor}
        while queue:
            t = queue.pop(0)
            if reads.get(t):
                return max(reads[t], key=lambda r: r[1])
            for c in consumers.get(t, []):
                n = g.node[c]
                if n.op_type in _RANGE_PRESERVING and n.output and n.output[0] not in seen:
                    seen.add(n.output[0])
                    queue.append(n.output[0])
        return None

    chosen: list[ResidualInput] = []
    pending: list[tuple[str, int, str, str]] = []
    learned = table.origin == "qat"
    reuse: dict[tuple[str, int], tuple[str, float]] = {}  # QAT: the reading layer's scale, kept unless it clips
    for add_i, main, skip in _residual_adds(g, set(quantized)):
        add = g.node[add_i]
        name = _node_id(add, add_i)
        for index, role in ((skip, "skip"), (main, "main")):
            if role == "main" and residual != "both":
                continue
            tensor = str(add.input[index])
            if reads.get(tensor) and learned and calibration is not None:
                layer, scale = max(reads[tensor], key=lambda r: r[1])
                pending.append((name, index, tensor, role))
                reuse[(name, index)] = (layer, scale)
            elif reads.get(tensor):
                layer, scale = max(reads[tensor], key=lambda r: r[1])
                chosen.append(ResidualInput(name, index, tensor, role, scale, f"input scale of {layer}", "reused"))
            elif calibration is not None:
                pending.append((name, index, tensor, role))
            else:
                found = downstream(add.output[0])
                if found is None:
                    raise ValueError(
                        f"residual Add {name!r}: input {tensor!r} is read by no quantized layer and no quantized "
                        "layer follows the Add, so it has no int8 scale; pass calibration data."
                    )
                chosen.append(
                    ResidualInput(
                        name, index, tensor, role, found[1], f"input scale of {found[0]} after the Add", "downstream"
                    )
                )
    if pending:
        data = as_inputs(calibration)
        # QAT: measured where the fake-quant model computes them (layer inputs quantized, Adds float)
        graph = to_qdq(onnx_model, table, residual_inputs=[]) if learned else onnx_model
        ranges = _activation_absmax(graph, sorted({p[2] for p in pending}), data)
        for name, index, tensor, role in pending:
            scale = float(absmax_scale(np.float32(ranges[tensor])))
            if (name, index) in reuse:
                layer, kept = reuse[(name, index)]
                if scale <= kept:  # the learned range holds the tensor: the same Q/DQ pair, exact
                    chosen.append(ResidualInput(name, index, tensor, role, kept, f"input scale of {layer}", "reused"))
                    continue
            chosen.append(
                ResidualInput(
                    name,
                    index,
                    tensor,
                    role,
                    scale,
                    f"absmax over {input_count(data)} calibration inputs",
                    "calibration",
                )
            )
    chosen.sort(key=lambda r: (r.add, r.index))
    return chosen


# ---------------------------------------------------------------------------------------------------
# the rewrite


class _Names:
    """Fresh tensor/node names that collide with nothing in the graph."""

    def __init__(self, graph: Any) -> None:
        self.used = {i.name for i in graph.initializer} | {t for n in graph.node for t in (*n.input, *n.output)}
        self.used |= {n.name for n in graph.node} | {v.name for v in graph.input}

    def __call__(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            name, k = f"{base}_{k}", k + 1
        self.used.add(name)
        return name


def to_qdq(
    onnx_model: Any,
    table: QuantTable,
    calibration: npt.ArrayLike | None = None,
    residual: str = "skip",
    residual_inputs: Sequence[ResidualInput] | None = None,
) -> onnx.ModelProto:
    """Insert symmetric int8 Q/DQ for TensorRT explicit quantization (see the module docstring).

    Args:
        onnx_model: the shared fp32 ``onnx.ModelProto`` (or a path to it); not modified.
        table: the int8 scales of its weighted nodes (learned QuantSpec or calibration).
        calibration: optional NCHW inputs, used only for residual-Add inputs that need a measured scale.
        residual: ``"skip"`` (default) or ``"both"``: which residual-Add inputs get Q/DQ.
        residual_inputs: scales chosen beforehand with :func:`residual_add_scales` (then ``calibration``
            and ``residual`` are not used).

    Returns:
        A new model: same opset, int8 weight initializers, Q/DQ nodes in topological order.

    Raises:
        ValueError: an opset outside 13–25, a table entry not in the graph, or scales that do not fit a
            weight's output channels.
    """
    import onnx
    from onnx import helper, numpy_helper

    src = onnx.load(str(onnx_model)) if not isinstance(onnx_model, onnx.ModelProto) else onnx_model
    opset = _opset(src)
    if opset is None or not OPSET_MIN <= opset <= OPSET_MAX:
        raise ValueError(
            f"onnx_model: default-domain opset {opset} is outside {OPSET_MIN}..{OPSET_MAX}, the range TensorRT "
            "takes per-channel DequantizeLinear in; export the ONNX at opset 18 (exporters.core.onnx_hub.OPSET)."
        )
    if residual_inputs is None:
        residual_inputs = residual_add_scales(src, table, calibration, residual)
    model = onnx.ModelProto()
    model.CopyFrom(src)
    g = model.graph
    quantized = _match_nodes(g, table)
    inits = {i.name: i for i in g.initializer}
    fresh = _Names(g)
    new_inits: list[Any] = []
    zero_name = fresh("qdq_zero_point_int8")
    new_inits.append(numpy_helper.from_array(np.zeros((), np.int8), zero_name))

    # (tensor, float32 scale) -> the DequantizeLinear output every consumer with that scale reads
    act_pairs: dict[tuple[str, float], tuple[list[Any], str]] = {}
    # node index -> [(input slot, pair key)]
    act_uses: dict[int, list[tuple[int, tuple[str, float]]]] = defaultdict(list)

    def want(node_index: int, slot: int, tensor: str, scale: float) -> None:
        s = float(np.float32(scale))
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"activation scale of {tensor!r} must be finite and > 0; got {scale}.")
        key = (tensor, s)
        if key not in act_pairs:
            base = tensor.replace("/", "_")
            scale_name = fresh(f"{base}_scale")
            new_inits.append(numpy_helper.from_array(np.array(s, dtype=np.float32), scale_name))
            q_out, dq_out = fresh(f"{base}_quantized"), fresh(f"{base}_dequantized")
            nodes = [
                helper.make_node(
                    "QuantizeLinear", [tensor, scale_name, zero_name], [q_out], name=fresh(f"{base}_QuantizeLinear")
                ),
                helper.make_node(
                    "DequantizeLinear", [q_out, scale_name, zero_name], [dq_out], name=fresh(f"{base}_DequantizeLinear")
                ),
            ]
            act_pairs[key] = (nodes, dq_out)
        act_uses[node_index].append((slot, key))

    weight_nodes: dict[int, Any] = {}
    for i, q in quantized.items():
        node = g.node[i]
        want(i, 0, str(node.input[0]), q.input_scale)
        w_name = str(node.input[1])
        if w_name not in inits:
            raise ValueError(f"node {q.node.node!r}: weight {w_name!r} is not an initializer; cannot store it as int8.")
        w = numpy_helper.to_array(inits[w_name]).astype(np.float32)
        axis = _weight_axis(node, w.ndim)
        scales = np.asarray(q.weight_scales, dtype=np.float32).reshape(-1)
        if scales.size != w.shape[axis]:
            raise ValueError(
                f"node {q.node.node!r}: {scales.size} weight scales for {w.shape[axis]} output channels (axis {axis} "
                f"of weight {w.shape}); the table does not belong to this graph."
            )
        w_q = quantize(w, scales, axis=axis, rounding="half_even")
        base = w_name.replace("/", "_")
        q_name, s_name, z_name = fresh(f"{base}_int8"), fresh(f"{base}_scale"), fresh(f"{base}_zero_point")
        new_inits += [
            numpy_helper.from_array(w_q, q_name),
            numpy_helper.from_array(scales, s_name),
            numpy_helper.from_array(np.zeros(scales.shape, np.int8), z_name),
        ]
        dq_out = fresh(f"{base}_dequantized")
        weight_nodes[i] = helper.make_node(
            "DequantizeLinear", [q_name, s_name, z_name], [dq_out], name=fresh(f"{base}_DequantizeLinear"), axis=axis
        )

    by_id = {_node_id(n, i): i for i, n in enumerate(g.node)}
    for r in residual_inputs:
        if r.add not in by_id or g.node[by_id[r.add]].input[r.index] != r.tensor:
            raise ValueError(f"residual_inputs: Add {r.add!r} input {r.index} is not {r.tensor!r} in this graph.")
        want(by_id[r.add], r.index, r.tensor, r.scale)

    emitted: set[tuple[str, float]] = set()
    nodes_out: list[Any] = []
    for i, node in enumerate(g.node):
        for slot, key in act_uses.get(i, []):
            pair_nodes, dq_out = act_pairs[key]
            if key not in emitted:
                nodes_out.extend(pair_nodes)
                emitted.add(key)
            node.input[slot] = dq_out
        if i in weight_nodes:
            nodes_out.append(weight_nodes[i])
            node.input[1] = weight_nodes[i].output[0]
        nodes_out.append(node)
    del g.node[:]
    g.node.extend(nodes_out)
    used = {t for n in g.node for t in n.input}
    dropped = {init.name for init in g.initializer if init.name not in used}
    keep = [init for init in g.initializer if init.name in used]
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    inputs = [v for v in g.input if v.name not in dropped]  # IR < 4 lists initializers as inputs too
    del g.input[:]
    g.input.extend(inputs)

    meta = {
        "scales": table.describe(),
        "weights": "int8 per output channel, symmetric ±127, round half to even",
        "activations": "int8 per tensor, symmetric (zero point 0)",
        "residual_adds": [asdict(r) for r in residual_inputs],
    }
    entry = model.metadata_props.add()
    entry.key, entry.value = "fitslim.qdq", json.dumps(meta)
    log.info(
        "Q/DQ: %d weighted nodes quantized, %d activation Q/DQ pairs, %d residual-Add inputs",
        len(quantized),
        len(act_pairs),
        len(residual_inputs),
    )
    return model


def qdq_counts(model: Any) -> dict[str, int]:
    """``QuantizeLinear`` / ``DequantizeLinear`` counts, and DequantizeLinear split by weights vs activations."""
    g = model.graph
    consts = set(_constants(g))
    ops = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    dq_w = sum(1 for n in ops if n.op_type == "DequantizeLinear" and n.input[0] in consts)
    n_q = sum(1 for n in ops if n.op_type == "QuantizeLinear")
    n_dq = sum(1 for n in ops if n.op_type == "DequantizeLinear")
    return {"QuantizeLinear": n_q, "DequantizeLinear": n_dq, "weight_dq": dq_w, "activation_dq": n_dq - dq_w}


# ---------------------------------------------------------------------------------------------------
# the lint


def _is_forbidden(op_type: str) -> bool:
    return (
        op_type.startswith("QLinear")
        or op_type.endswith("Integer")
        or op_type in ("DynamicQuantizeLinear", "QGemm", "QAttention", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")
    )


def lint_qdq(model: Any, quantized_nodes: Iterable[str] | None = None) -> list[str]:
    """Check an ONNX model against TensorRT's explicit (Q/DQ) int8 rules; an empty list means it passes.

    Rules: default-domain opset 13..25; no QLinear*/ConvInteger/MatMulInteger/other integer ops; every
    QuantizeLinear/DequantizeLinear in the default domain with a constant int8 zero point equal to 0 and a
    constant, finite, positive scale; activations quantized per tensor, each QuantizeLinear feeding only
    DequantizeLinear nodes of the same scale; weights int8 constants within ±127 dequantized per output
    channel (axis 0 for Conv and Gemm ``transB=1``, 1 for Gemm ``transB=0`` and MatMul) with one scale
    per output channel; every quantized Conv/Gemm/MatMul has a DequantizeLinear on its data input and on
    its weight; no Q/DQ between a Conv/Gemm/MatMul and a following BatchNormalization/Relu/Clip; the skip
    input of every residual Add after a quantized layer is quantized.

    Args:
        model: an ``onnx.ModelProto``.
        quantized_nodes: names of the Conv/Gemm/MatMul nodes meant to be quantized; by default every one
            whose weight is a constant (float or dequantized), i.e. a float layer left in the graph is a
            violation.

    Returns:
        One line per violation, naming the node.
    """
    g = model.graph
    problems: list[str] = []
    opset = _opset(model)
    if opset is None or not OPSET_MIN <= opset <= OPSET_MAX:
        problems.append(f"opset {opset}: TensorRT needs a default-domain opset in {OPSET_MIN}..{OPSET_MAX} for Q/DQ")
    consts = _constants(g)
    ctypes = _constant_types(g)
    producer = _producers(g)
    consumers = _consumers(g)

    def zp_type(node: Any) -> int:
        if len(node.input) > 2 and node.input[2]:
            return ctypes.get(node.input[2], -1)
        if node.op_type == "QuantizeLinear":
            return int(_attr(node, "output_dtype", 0)) or _UINT8
        x = node.input[0]
        if x in ctypes:
            return ctypes[x]
        p = producer.get(x)
        return zp_type(g.node[p]) if p is not None and g.node[p].op_type == "QuantizeLinear" else -1

    def scale_of(node: Any) -> npt.NDArray[Any] | None:
        return consts.get(node.input[1]) if len(node.input) > 1 else None

    for i, n in enumerate(g.node):
        nid = _node_id(n, i)
        if _is_forbidden(n.op_type):
            problems.append(
                f"{nid}: {n.op_type} is not supported by TensorRT; use QuantizeLinear/DequantizeLinear around float ops"
            )
            continue
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if n.domain not in _DEFAULT_DOMAINS:
            problems.append(f"{nid}: {n.op_type} in domain {n.domain!r}; TensorRT parses only the default ONNX domain")
        scale = scale_of(n)
        if scale is None:
            problems.append(f"{nid}: scale is not a constant; TensorRT needs build-time scales")
        elif not (np.all(np.isfinite(scale)) and np.all(scale > 0)):
            problems.append(f"{nid}: scale must be finite and > 0")
        if len(n.input) > 2 and n.input[2]:
            zp = consts.get(n.input[2])
            if zp is None:
                problems.append(f"{nid}: zero point is not a constant")
            elif np.any(zp != 0):
                problems.append(
                    f"{nid}: zero point {zp.ravel()[:4].tolist()} is not 0; TensorRT quantization is symmetric"
                )
        t = zp_type(n)
        if t != _INT8:
            what = "uint8" if t == _UINT8 else f"ONNX type {t}"
            problems.append(f"{nid}: quantized type is {what}, not int8; TensorRT takes signed int8 (zero point 0)")
        x = n.input[0]
        if n.op_type == "QuantizeLinear":
            if x in consts:
                continue  # a weight quantized at build time: checked at its DequantizeLinear consumer
            if scale is not None and scale.size != 1:
                problems.append(
                    f"{nid}: activation quantized per channel ({scale.size} scales); TensorRT wants per tensor"
                )
            for c in consumers.get(n.output[0], []):
                cn = g.node[c]
                if cn.op_type != "DequantizeLinear":
                    problems.append(f"{nid}: output feeds {cn.op_type} {_node_id(cn, c)}, not a DequantizeLinear")
                elif scale is not None and (s2 := scale_of(cn)) is not None and not np.array_equal(s2, scale):
                    problems.append(f"{nid}: its DequantizeLinear {_node_id(cn, c)} uses a different scale")
            src = producer.get(x)
            if src is not None and g.node[src].op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
                for dq in consumers.get(n.output[0], []):
                    for c in consumers.get(g.node[dq].output[0], []):
                        if g.node[c].op_type in _CONV_FUSED:
                            problems.append(
                                f"{nid}: Q/DQ between {g.node[src].op_type} {_node_id(g.node[src], src)} and "
                                f"{g.node[c].op_type} {_node_id(g.node[c], c)}; TensorRT fuses those"
                            )
        else:
            p = producer.get(x)
            from_q = p is not None and g.node[p].op_type == "QuantizeLinear"
            if x in consts:
                w = consts[x]
                if w.dtype == np.int8 and w.size and int(w.min()) < -127:
                    problems.append(f"{nid}: int8 weight holds -128; symmetric weights use ±127")
            elif from_q:
                if scale is not None and scale.size != 1:
                    problems.append(f"{nid}: activation dequantized per channel; TensorRT wants per tensor")
            else:
                problems.append(f"{nid}: input {x!r} is neither an int8 constant nor a QuantizeLinear output")

    if quantized_nodes is None:
        expected = {
            i
            for i, n in enumerate(g.node)
            if n.op_type in WEIGHTED_OPS
            and len(n.input) > 1
            and (
                n.input[1] in consts
                or (n.input[1] in producer and g.node[producer[n.input[1]]].op_type == "DequantizeLinear")
            )
        }
    else:
        names = set(quantized_nodes)
        expected = {i for i, n in enumerate(g.node) if _node_id(n, i) in names}
        missing = names - {_node_id(g.node[i], i) for i in expected}
        problems.extend(f"{m}: meant to be quantized but not in the graph" for m in sorted(missing))
    for i in sorted(expected):
        n = g.node[i]
        nid = _node_id(n, i)
        if n.op_type not in WEIGHTED_OPS:
            problems.append(f"{nid}: {n.op_type} is not a Conv/Gemm/MatMul")
            continue
        d = producer.get(n.input[0])
        if d is None or g.node[d].op_type != "DequantizeLinear":
            problems.append(f"{nid}: no DequantizeLinear on its data input {n.input[0]!r}")
        wp = producer.get(n.input[1])
        if wp is None or g.node[wp].op_type != "DequantizeLinear":
            kind = "a float initializer" if n.input[1] in consts else "not dequantized"
            problems.append(f"{nid}: weight {n.input[1]!r} is {kind}; it needs int8 + per-channel DequantizeLinear")
            continue
        dq = g.node[wp]
        wq = consts.get(dq.input[0])
        if wq is None:
            problems.append(f"{nid}: weight DequantizeLinear input {dq.input[0]!r} is not a constant")
            continue
        if wq.dtype != np.int8:
            problems.append(f"{nid}: weight stored as {wq.dtype}, not int8")
        out_axis = _weight_axis(n, wq.ndim)
        channels = int(wq.shape[out_axis])
        scale = scale_of(dq)
        if scale is None:
            continue
        if scale.size == 1 and channels != 1:
            problems.append(f"{nid}: weight scale is per tensor; int8 weights must be per output channel")
            continue
        if scale.ndim == 1:
            axis = int(_attr(dq, "axis", 1))
            axis = axis + wq.ndim if axis < 0 else axis
            if axis != out_axis:
                problems.append(f"{nid}: weight DequantizeLinear axis {axis}, but output channels are axis {out_axis}")
        if scale.size != channels:
            problems.append(f"{nid}: {scale.size} weight scales for {channels} output channels")

    for add_i, _main, skip in _residual_adds(g, expected):
        add = g.node[add_i]
        p = producer.get(add.input[skip])
        if p is None or g.node[p].op_type != "DequantizeLinear":
            problems.append(
                f"{_node_id(add, add_i)}: skip input {add.input[skip]!r} of the residual Add is not quantized; "
                "TensorRT needs it int8 to fuse the Add into the Conv in int8"
            )
    return problems
