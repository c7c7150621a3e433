"""The ncnn int8 writer and the int8 ncnn target, against a NumPy/onnxruntime int8 reference."""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

ncnn = pytest.importorskip("ncnn", reason="ncnn not installed")

from exporters.core.quant import QuantizedNode, QuantTable, WeightedNode  # noqa: E402
from exporters.core.verify import compare  # noqa: E402
from exporters.targets.ncnn import NcnnModel  # noqa: E402
from exporters.targets.ncnn_int8 import (  # noqa: E402
    TAG_FP16,
    TAG_FP32,
    TAG_INT8,
    NcnnParam,
    read_model,
    write_int8,
)
from fitslim.int8 import (  # noqa: E402
    absmax_scale,
    ncnn_dequant_scale,
    ncnn_multiplier,
    quantize,
    tie_distance,
)
from fitslim.quantspec import QuantSpec  # noqa: E402
from tests.exporters.int8_agreement import (  # noqa: E402
    MIN_DECISIVE,
    MIN_TOP1,
    assert_int8_agrees,
    result_agreement_problems,
)

NO_PACKING = {"use_packing_layout": False}


# --------------------------------------------------------------------------------------------------
# int8 reference of ncnn's own arithmetic: integer sums, one float32 dequantize factor per channel
# --------------------------------------------------------------------------------------------------

#: a computed value this close to a rounding boundary (in int8 steps) may round either way in a correct int8
#: runtime: ncnn dequantizes with a fused multiply-add (``_mm*_comp_fmadd_ps`` in dequantize_x86.cpp /
#: requantize_x86.cpp) where the reference rounds twice, and float sums (the global mean) run in another order.
#: Each differs by a few float32 ulps; at |x| <= 127.5 steps one ulp is 2**-17 (7.6e-6) steps, so 1e-4 leaves a
#: margin of more than 10 ulps.
TIE_TOLERANCE = 1e-4


def integer_reference_onnx(onnx_path: Path, table: QuantTable) -> tuple[bytes, list[str]]:
    """A copy of the job's ONNX that computes ncnn's int8 arithmetic, and the names of its pre-rounding tensors.

    Each weighted node's input becomes ``clip(round_half_away(x * multiplier), ±127)`` (ncnn multiplies by the
    float32 multiplier ``1/scale`` and rounds half away from zero; ORT's QuantizeLinear divides and rounds half to
    even, so the rounding is built from Mul/Abs/Floor/Sign/Clip). The node then runs on those integers and on the
    int8 weights (``fitslim.int8.quantize`` of the folded weights, per output channel), without bias, and its
    output is ``sum * ncnn_dequant_scale + bias``: what ncnn's int8 layers compute. A float convolution of
    integer-valued operands is exact whatever the kernel's summation order or FMA use, as long as every partial
    sum stays below 2**24 (here at most 16 * 9 * 127 * 127 = 2.3e6), so the reference does not depend on the CPU
    that runs it; the old reference (fake-quantized floats) summed ``x_q * s_in * w_q * s_w`` in float, whose
    rounding does. The returned names are the graph outputs after the first that hold ``x * multiplier`` before
    rounding, for :func:`fitslim.int8.tie_distance`; the model input's own quantization is left out (one float
    multiply of the data, the same in every runtime).
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(onnx_path))
    inits = {i.name: i for i in model.graph.initializer}
    graph_inputs = {i.name for i in model.graph.input}
    entries = {q.node.node: q for q in table.nodes}
    nodes, probes = [], []
    for i, n in enumerate(model.graph.node):
        q = entries.get(n.name or f"{n.op_type}_{i}")
        if q is None:
            nodes.append(n)
            continue
        w, scales = q.node.weight, q.weight_scales
        if 1 < q.node.groups < w.shape[0]:  # the writer stores one scale per group: the largest of its channels
            scales = np.repeat(scales.reshape(q.node.groups, -1).max(1), w.shape[0] // q.node.groups)
        wq = quantize(w, scales, axis=0, rounding="half_away").astype(np.float32)
        trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
        if n.op_type == "MatMul" or (n.op_type == "Gemm" and not trans_b):
            wq = wq.T
        shape = numpy_helper.to_array(inits[n.input[1]]).shape
        inits[n.input[1]].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(wq).reshape(shape), n.input[1]))
        p = f"int{i}_"
        channel_shape = (1, -1, 1, 1) if n.op_type == "Conv" else (-1,)
        consts = {
            "m": ncnn_multiplier(np.float32(q.input_scale)),
            "h": 0.5,
            "lo": -127,
            "hi": 127,
            "deq": ncnn_dequant_scale(q.input_scale, scales).reshape(channel_shape),
        }
        bias = n.input[2] if len(n.input) > 2 and n.input[2] else ""
        if bias:
            consts["b"] = numpy_helper.to_array(inits[bias]).astype(np.float32).reshape(channel_shape)
        for k, v in consts.items():
            model.graph.initializer.append(numpy_helper.from_array(np.asarray(v, np.float32), p + k))
        nodes += [
            helper.make_node("Mul", [n.input[0], p + "m"], [p + "v"]),
            helper.make_node("Abs", [p + "v"], [p + "a"]),
            helper.make_node("Add", [p + "a", p + "h"], [p + "ah"]),
            helper.make_node("Floor", [p + "ah"], [p + "f"]),
            helper.make_node("Sign", [p + "v"], [p + "sg"]),
            helper.make_node("Mul", [p + "sg", p + "f"], [p + "r"]),
            helper.make_node("Clip", [p + "r", p + "lo", p + "hi"], [p + "q"]),
        ]
        if n.input[0] not in graph_inputs:
            probes.append(p + "v")
        integer = helper.make_node(n.op_type, [p + "q", n.input[1]], [p + "sum"], name=n.name)
        integer.attribute.extend(n.attribute)
        nodes.append(integer)
        nodes.append(helper.make_node("Mul", [p + "sum", p + "deq"], [p + "d" if bias else n.output[0]]))
        if bias:
            nodes.append(helper.make_node("Add", [p + "d", p + "b"], [n.output[0]]))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    for name in probes:
        model.graph.output.append(helper.make_empty_tensor_value_info(name))
    return bytes(model.SerializeToString()), probes


def integer_reference(onnx_path: Path, table: QuantTable, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference outputs for ``x`` and, per sample, the smallest :func:`tie_distance` of a computed value."""
    import onnxruntime as ort

    model, probes = integer_reference_onnx(onnx_path, table)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    out, *pre = sess.run(None, {sess.get_inputs()[0].name: x})
    assert len(pre) == len(probes) > 0
    nearest = np.min([tie_distance(v).reshape(len(x), -1).min(1) for v in pre], axis=0)
    return np.asarray(out), nearest


# --------------------------------------------------------------------------------------------------
# A hand-written fp32 ncnn model (no pnnx, no torch): every layout the writer handles in one graph
# --------------------------------------------------------------------------------------------------

C, H, W = 3, 7, 9


@dataclass
class Handmade:
    param: Path
    bin: Path
    table: QuantTable
    x: np.ndarray


def _tagged(values: np.ndarray, encoding: str) -> tuple[bytes, np.ndarray]:
    """Bytes of a tagged array and the float values ncnn decodes from them."""
    v = np.asarray(values, np.float32).ravel()
    if encoding == "fp32":
        return TAG_FP32.to_bytes(4, "little") + v.astype("<f4").tobytes(), v
    if encoding == "fp16":
        h = v.astype("<f2").tobytes()
        return TAG_FP16.to_bytes(4, "little") + h + b"\0" * (-len(h) % 4), v.astype(np.float16).astype(np.float32)
    # ncnn's 256-entry lookup table: any other non-zero tag, 1024 bytes of table, one index byte per value
    lut = np.linspace(v.min(), v.max(), 256).astype(np.float32)
    idx = np.abs(v[:, None] - lut[None, :]).argmin(1).astype(np.uint8)
    body = lut.astype("<f4").tobytes() + idx.tobytes() + b"\0" * (-len(idx) % 4)
    return (0x00000001).to_bytes(4, "little") + body, lut[idx]


def _raw(values: Any) -> bytes:
    return np.asarray(values, "<f4").ravel().tobytes()


def _run_ncnn(param: Path, binary: Path, precision: str, x: np.ndarray, blob: str = "out0", **opts: Any) -> np.ndarray:
    model = NcnnModel(param, binary, precision, 2, options=opts)
    model.output_name = blob
    return np.stack([model(s).ravel() for s in x])


def make_handmade(directory: Path, seed: int = 0) -> Handmade:
    """Input → Conv(+bias, ReLU; fp16 weights) → BatchNorm → Conv1x1(ReLU) → depthwise(ReLU) →
    grouped conv (3 groups) → InnerProduct (lookup-table weights), with scales calibrated on its own
    fp32 activations."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    w0 = rng.normal(size=(8, C, 3, 3)).astype(np.float32)
    b0 = rng.normal(size=8).astype(np.float32) * 0.1
    bn = np.stack(
        [
            rng.uniform(0.5, 1.5, 8),
            rng.normal(size=8) * 0.1,
            rng.uniform(0.5, 1.5, 8),
            rng.normal(size=8) * 0.1,
        ]
    )
    w1 = rng.normal(size=(12, 8, 1, 1)).astype(np.float32)
    wd = rng.normal(size=(12, 1, 3, 3)).astype(np.float32)
    bd = rng.normal(size=12).astype(np.float32) * 0.1
    wg = rng.normal(size=(12, 4, 3, 3)).astype(np.float32) * 0.3
    bg = rng.normal(size=12).astype(np.float32) * 0.1
    wf = rng.normal(size=(10, 12 * H * W)).astype(np.float32) * 0.05
    bf = rng.normal(size=10).astype(np.float32)
    t0, w0 = _tagged(w0, "fp16")
    tf, wf = _tagged(wf, "lut")
    t1, w1 = _tagged(w1, "fp32")
    td, wd = _tagged(wd, "fp32")
    tg, wg = _tagged(wg, "fp32")
    param = directory / "fp32.param"
    param.write_text(
        "7767517\n7 7\n"
        f"Input in0 0 1 in0 0={W} 1={H} 2={C}\n"
        f"Convolution conv0 1 1 in0 c0 0=8 1=3 11=3 4=1 14=1 5=1 6={w0.size} 9=1\n"
        "BatchNorm bn0 1 1 c0 b0 0=8\n"
        f"Convolution conv1 1 1 b0 c1 0=12 1=1 5=0 6={w1.size} 9=1\n"
        f"ConvolutionDepthWise dw 1 1 c1 d1 0=12 1=3 4=1 5=1 6={wd.size} 7=12 9=1\n"
        f"ConvolutionDepthWise gconv 1 1 d1 g1 0=12 1=3 4=1 5=1 6={wg.size} 7=3\n"
        f"InnerProduct fc 1 1 g1 out0 0=10 1=1 2={wf.size}\n"
    )
    binary = directory / "fp32.bin"
    binary.write_bytes(t0 + _raw(b0) + _raw(bn) + t1 + td + _raw(bd) + tg + _raw(bg) + tf + _raw(bf))
    x = rng.uniform(-1, 1, size=(24, C, H, W)).astype(np.float32)
    act = {b: np.abs(_run_ncnn(param, binary, "fp32", x, b)).max() / 127 for b in ("b0", "c1", "d1", "g1")}

    def node(name: str, w: np.ndarray, shape: tuple[int, ...], s_in: float, kind: str, groups: int) -> QuantizedNode:
        w = w.reshape(shape)
        return QuantizedNode(
            WeightedNode(name, "Conv", kind, "x", f"{name}.w", w, groups), absmax_scale(w, axis=0), s_in, name
        )

    table = QuantTable(
        [
            node("n_conv0", w0, (8, C, 3, 3), 1 / 127, "conv2d", 1),
            node("n_conv1", w1, (12, 8, 1, 1), act["b0"], "conv2d", 1),
            node("n_dw", wd, (12, 1, 3, 3), act["c1"], "depthwise_conv2d", 12),
            node("n_gconv", wg, (12, 4, 3, 3), act["d1"], "conv2d", 3),
            node("n_fc", wf, (10, 12 * H * W), act["g1"], "linear", 1),
        ],
        QuantSpec([], source="calibration"),
        "calibration",
    )
    return Handmade(param, binary, table, x)


@pytest.fixture
def handmade(tmp_path: Path) -> Handmade:
    return make_handmade(tmp_path / "hand")


def test_handmade_int8_layout_fusions_and_copied_layers(handmade: Handmade, tmp_path: Path) -> None:
    param, binary = tmp_path / "i8.param", tmp_path / "i8.bin"
    summary = write_int8(handmade.param, handmade.bin, param, binary, handmade.table, int8_grouped=True)

    assert summary.layers == {
        "conv0": "n_conv0",
        "conv1": "n_conv1",
        "dw": "n_dw",
        "gconv": "n_gconv",
        "fc": "n_fc",
    }
    assert summary.fused == [("conv1", "dw"), ("dw", "gconv"), ("gconv", "fc")]
    assert summary.kept_float == ["bn0 (BatchNorm)"]
    assert any("grouped" in n and "gconv" in n for n in summary.notes)
    assert summary.describe().startswith("5 layers int8, 3 requantize fusions")

    fp32 = {ld.layer.name: ld for ld in read_model(handmade.param, handmade.bin)}
    int8 = {ld.layer.name: ld for ld in read_model(param, binary)}
    terms = {name: ld.layer.get_int(8) for name, ld in int8.items() if ld.layer.type != "Input"}
    assert terms == {"conv0": 2, "bn0": 0, "conv1": 102, "dw": 101, "gconv": 101, "fc": 2}
    # BatchNorm is copied byte for byte
    assert [c.data for c in int8["bn0"].chunks.values()] == [c.data for c in fp32["bn0"].chunks.values()]
    entries = {q.node.node: q for q in handmade.table.nodes}
    for name, node_name in summary.layers.items():
        ld, q = int8[name], entries[node_name]
        assert ld.chunks["weight"].tag == TAG_INT8
        if name == "gconv":  # one scale per group: the largest of the group's channels
            group_scales = q.weight_scales.reshape(3, 4).max(1)
            np.testing.assert_array_equal(ld.chunks["weight_scales"].values(), ncnn_multiplier(group_scales))
            expected = quantize(q.node.weight, np.repeat(group_scales, 4), axis=0)
        else:
            np.testing.assert_array_equal(ld.chunks["weight_scales"].values(), ncnn_multiplier(q.weight_scales))
            expected = quantize(q.node.weight, q.weight_scales, axis=0, rounding="half_away")
        np.testing.assert_array_equal(ld.chunks["weight"].values(), expected.ravel())
        assert ld.chunks["input_scale"].values()[0] == ncnn_multiplier(np.float32(q.input_scale))
        if "bias" in ld.chunks:
            assert ld.chunks["bias"].data == fp32[name].chunks["bias"].data
    # a fused producer carries its consumer's input multiplier as its top scale
    assert int8["conv1"].chunks["top_scale"].values()[0] == int8["dw"].chunks["input_scale"].values()[0]
    assert int8["gconv"].chunks["top_scale"].values()[0] == int8["fc"].chunks["input_scale"].values()[0]
    assert "top_scale" not in int8["conv0"].chunks  # its consumer is a float BatchNorm


def test_tie_distance_and_ncnn_dequant_scale(handmade: Handmade, tmp_path: Path) -> None:
    d = tie_distance([0.5, -2.5, 1.0, 3.25, -126.9, 127.5, -300.0])
    np.testing.assert_allclose(d, [0, 0, 0.5, 0.25, 0.4, np.inf, np.inf], atol=1e-5)
    # the factor ncnn computes at load time from the multipliers the writer stored, bit for bit
    param, binary = tmp_path / "i8.param", tmp_path / "i8.bin"
    summary = write_int8(handmade.param, handmade.bin, param, binary, handmade.table)
    int8 = {ld.layer.name: ld for ld in read_model(param, binary)}
    entries = {q.node.node: q for q in handmade.table.nodes}
    for name in ("conv0", "conv1", "dw", "fc"):
        q, ld = entries[summary.layers[name]], int8[name]
        stored = np.float32(1) / (ld.chunks["input_scale"].values()[0] * ld.chunks["weight_scales"].values())
        np.testing.assert_array_equal(ncnn_dequant_scale(q.input_scale, q.weight_scales), stored)


@pytest.mark.parametrize("packing", [True, False])
def test_handmade_fused_equals_unfused_and_tracks_fp32(handmade: Handmade, tmp_path: Path, packing: bool) -> None:
    """Fusing requantize changes where the rounding happens, not its result; int8 stays close to fp32."""
    # gconv has 4 output channels per group, which ncnn's packed grouped path handles: int8 here
    write_int8(
        handmade.param, handmade.bin, tmp_path / "f.param", tmp_path / "f.bin", handmade.table, int8_grouped=True
    )
    plain = write_int8(
        handmade.param, handmade.bin, tmp_path / "p.param", tmp_path / "p.bin", handmade.table, fuse=False,
        int8_grouped=True,
    )  # fmt: skip
    assert plain.fused == [] and "8=1" in (tmp_path / "p.param").read_text()
    assert all(ld.layer.get_int(8) < 100 for ld in read_model(tmp_path / "p.param", tmp_path / "p.bin"))
    fused = _run_ncnn(tmp_path / "f.param", tmp_path / "f.bin", "int8", handmade.x, use_packing_layout=packing)
    unfused = _run_ncnn(tmp_path / "p.param", tmp_path / "p.bin", "int8", handmade.x, use_packing_layout=packing)
    fp32 = _run_ncnn(handmade.param, handmade.bin, "fp32", handmade.x)
    np.testing.assert_allclose(fused, unfused, rtol=0, atol=1e-5 * np.abs(unfused).max())
    assert np.abs(fused - fp32).max() / np.abs(fp32).max() < 0.05
    assert np.mean(fused.argmax(1) == fp32.argmax(1)) >= 0.9
    assert np.abs(fused[0] - fused[1]).max() > 0.05 * np.abs(fused).max()  # not a constant output


def test_keep_float_leaves_depthwise_layers_fp32_and_still_tracks_fp32(handmade: Handmade, tmp_path: Path) -> None:
    """``keep_float=("ConvolutionDepthWise",)`` (``export(..., ncnn_depthwise="float")``): mixed int8/fp32 model."""
    param, binary = tmp_path / "m.param", tmp_path / "m.bin"
    summary = write_int8(
        handmade.param, handmade.bin, param, binary, handmade.table, keep_float=("ConvolutionDepthWise",)
    )
    assert set(summary.layers) == {"conv0", "conv1", "fc"}
    assert summary.kept_float == ["bn0 (BatchNorm)", "dw (ConvolutionDepthWise)", "gconv (ConvolutionDepthWise)"]
    assert summary.fused == []  # conv1 feeds a float layer, gconv is float: nothing to fuse
    fp32 = {ld.layer.name: ld for ld in read_model(handmade.param, handmade.bin)}
    mixed = {ld.layer.name: ld for ld in read_model(param, binary)}
    for name in ("dw", "gconv"):  # byte for byte the fp32 layer, no int8 term
        assert mixed[name].layer.get_int(8) == 0
        assert [c.data for c in mixed[name].chunks.values()] == [c.data for c in fp32[name].chunks.values()]
    assert mixed["conv1"].layer.get_int(8) == 2 and mixed["conv1"].chunks["weight"].tag == TAG_INT8
    out = _run_ncnn(param, binary, "int8", handmade.x)
    ref = _run_ncnn(handmade.param, handmade.bin, "fp32", handmade.x)
    assert np.abs(out - ref).max() / np.abs(ref).max() < 0.05
    assert np.mean(out.argmax(1) == ref.argmax(1)) >= 0.9


def test_keep_float_of_an_unknown_type_is_named(handmade: Handmade, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"keep_float: \['Pooling'\] are not int8 layer types"):
        write_int8(
            handmade.param,
            handmade.bin,
            tmp_path / "x.param",
            tmp_path / "x.bin",
            handmade.table,
            keep_float=["Pooling"],
        )
    assert not (tmp_path / "x.param").exists() and not (tmp_path / "x.bin").exists()


def test_table_node_missing_from_graph_is_named(handmade: Handmade, tmp_path: Path) -> None:
    ghost_w = np.random.default_rng(5).normal(size=(4, 3, 3, 3)).astype(np.float32)
    ghost = QuantizedNode(
        WeightedNode("ghost_conv", "Conv", "conv2d", "x", "g.w", ghost_w, 1),
        absmax_scale(ghost_w, axis=0),
        0.1,
        "g",
    )
    table = QuantTable([*handmade.table.nodes, ghost], handmade.table.spec, "calibration")
    with pytest.raises(ValueError, match=r"QuantTable nodes \['ghost_conv'\] have no int8 layer"):
        write_int8(handmade.param, handmade.bin, tmp_path / "o.param", tmp_path / "o.bin", table)
    assert not list(tmp_path.glob("o.*"))


def test_graph_layer_without_table_entry_is_named(handmade: Handmade, tmp_path: Path) -> None:
    table = QuantTable([q for q in handmade.table.nodes if q.node.node != "n_dw"], handmade.table.spec, "calibration")
    with pytest.raises(ValueError, match=r"ncnn layer 'dw' \(ConvolutionDepthWise.*no entry in the QuantTable"):
        write_int8(handmade.param, handmade.bin, tmp_path / "o.param", tmp_path / "o.bin", table)
    assert not list(tmp_path.glob("o.*"))


@pytest.mark.parametrize(
    ("new_type", "extra"),
    [
        ("Deconvolution", ""),
        ("Convolution1D", ""),
        ("DeconvolutionDepthWise", ""),
        ("Embed", ""),
        ("LSTM", ""),
        ("GRU", ""),
        ("Gemm", " 4=1 7=2 9=3"),  # a constant A (not a Linear's weight) has per-row scales: not written
    ],
)
def test_unknown_weighted_layer_type_is_named(handmade: Handmade, tmp_path: Path, new_type: str, extra: str) -> None:
    text = handmade.param.read_text().replace("Convolution conv1 ", f"{new_type} conv1 ")
    text = text.replace(" 9=1\nConvolutionDepthWise dw", f" 9=1{extra}\nConvolutionDepthWise dw", 1)
    edited = tmp_path / "edited.param"
    edited.write_text(text)
    with pytest.raises(ValueError, match=rf"layer 'conv1' \({new_type}\) holds weights the ncnn int8 writer cannot"):
        write_int8(edited, handmade.bin, tmp_path / "o.param", tmp_path / "o.bin", handmade.table)
    assert not list(tmp_path.glob("o.*"))


def test_gemm_without_constants_holds_no_weights() -> None:
    net = NcnnParam.parse("7767517\n2 3\nInput in0 0 1 in0\nGemm gemm 2 1 in0 in0 out0 3=1\n")
    assert net.layers[1].type == "Gemm" and net.output_blob() == "out0" and net.input_blob() == "in0"


def test_already_int8_input_is_rejected(handmade: Handmade, tmp_path: Path) -> None:
    write_int8(handmade.param, handmade.bin, tmp_path / "a.param", tmp_path / "a.bin", handmade.table)
    with pytest.raises(ValueError, match=r"'conv0' \(Convolution\) is already int8"):
        write_int8(tmp_path / "a.param", tmp_path / "a.bin", tmp_path / "b.param", tmp_path / "b.bin", handmade.table)


def test_mismatched_bin_is_rejected(handmade: Handmade, tmp_path: Path) -> None:
    short = tmp_path / "short.bin"
    short.write_bytes(handmade.bin.read_bytes()[:-8])
    with pytest.raises(ValueError, match=r"ends at byte .* while reading layer 'fc' \(InnerProduct\)"):
        write_int8(handmade.param, short, tmp_path / "o.param", tmp_path / "o.bin", handmade.table)
    long = tmp_path / "long.bin"
    long.write_bytes(handmade.bin.read_bytes() + b"\0" * 8)
    with pytest.raises(ValueError, match="8 bytes left after the last layer"):
        write_int8(handmade.param, long, tmp_path / "o.param", tmp_path / "o.bin", handmade.table)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("7767516\n0 0\n", "first line must be 7767517"),
        ("7767517\n2 2\nInput in0 0 1 in0\n", "header says 2 layers"),
        ("7767517\n1 1\nInput in0 0 2 in0\n", "malformed layer line"),
        ("7767517\n1 1\nInput in0 0 1 in0 0:3\n", "not key=value"),
    ],
)
def test_param_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        NcnnParam.parse(text)


def test_param_round_trip_keeps_arrays_and_quoted_strings() -> None:
    text = '7767517\n2 2\nInput in0 0 1 in0 0=8\nReduction r 1 1 in0 out0 0=3 -23303=2,2,1 4=1 5="a b"\n'
    net = NcnnParam.parse(text)
    assert net.layers[1].params == {"0": "3", "-23303": "2,2,1", "4": "1", "5": '"a b"'}
    again = NcnnParam.parse(net.dumps())
    assert again == net


# --------------------------------------------------------------------------------------------------
# The int8 ncnn target on the trained digits CNN (pnnx + torch)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_int8(
    trained_torch_digits: Any, digits_nchw: Any, tmp_path_factory: pytest.TempPathFactory
) -> SimpleNamespace:
    pytest.importorskip("pnnx", reason="pnnx not installed")
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    from exporters.core.export import prepare_job
    from exporters.core.job import ExportOptions
    from exporters.targets.ncnn import export_ncnn, run_pnnx

    tmp = tmp_path_factory.mktemp("ncnn_int8")
    d = digits_nchw
    options = ExportOptions(
        precision="int8", directory=tmp / "out", example_input=d.x_test[:1], calibration=d.x_train[:256],
        samples=d.x_test,
    )  # fmt: skip
    job = prepare_job(trained_torch_digits, options, tmp / "work")
    result = export_ncnn(job)
    if job.quant is None:
        raise AssertionError("an int8 job without scales")
    fp32_param, fp32_bin = run_pnnx(job.onnx_path, job.input_shape, tmp / "pnnx", fp16=False)
    reference, tie = integer_reference(job.onnx_path, job.quant, d.x_test)
    return SimpleNamespace(
        job=job,
        result=result,
        param=tmp / "out" / "model.int8.ncnn.param",
        bin=tmp / "out" / "model.int8.ncnn.bin",
        fp32_param=fp32_param,
        fp32_bin=fp32_bin,
        reference=reference,
        tie=tie,
    )


@pytest.mark.slow
def test_int8_artifact_carries_int8_layers(digits_int8: SimpleNamespace) -> None:
    r, table = digits_int8.result, digits_int8.job.quant
    assert r.ok and r.files == ["model.int8.ncnn.param", "model.int8.ncnn.bin"]
    assert r.scales == "calibrated on 256 samples (absmax)"
    assert r.notes[0] == "5 layers int8, 1 requantize fusions"
    fp32 = read_model(digits_int8.fp32_param, digits_int8.fp32_bin)
    int8 = read_model(digits_int8.param, digits_int8.bin)
    assert [ld.layer.name for ld in fp32] == [ld.layer.name for ld in int8]
    seen = set()
    for f, q in zip(fp32, int8, strict=True):
        t, term = q.layer.type, q.layer.get_int(8)
        if t not in ("Convolution", "ConvolutionDepthWise", "InnerProduct"):
            assert term == 0 and not q.chunks
            continue
        assert term in ({1, 101} if t == "ConvolutionDepthWise" else {2, 102} if t == "Convolution" else {2})
        assert q.chunks["weight"].tag == TAG_INT8
        n = q.layer.get_int(0)
        entry = table.match_weight(np.asarray(f.chunks["weight"].values()).reshape(n, -1))
        seen.add(entry.node.node)
        np.testing.assert_array_equal(
            q.chunks["weight"].values(), quantize(entry.node.weight, entry.weight_scales, axis=0).ravel()
        )
        np.testing.assert_array_equal(q.chunks["weight_scales"].values(), ncnn_multiplier(entry.weight_scales))
        assert q.chunks["input_scale"].values()[0] == ncnn_multiplier(np.float32(entry.input_scale))
        assert ("top_scale" in q.chunks) == (term > 100)
    assert seen == {q.node.node for q in table.nodes} and len(seen) == 5
    assert sum(ld.layer.get_int(8) > 100 for ld in int8) == 1
    # size: int8 weights are a quarter of fp32 (plus per-channel scales)
    assert digits_int8.bin.stat().st_size <= 0.3 * digits_int8.fp32_bin.stat().st_size


#: ncnn kernel paths without packing, as ncnn.Option fields; each computes exact int32 sums (winograd's integer
#: transforms divide by 4, or by 576 exactly while a sum stays under 2**24 / 9; with VNNI, vpdpbusd takes the input
#: shifted by +127 and subtracts 127 * sum(w), vpdpwssd adds int16 products) and dequantizes with
#: ``ncnn_dequant_scale``: the reference's arithmetic up to the float rounding of one FMA (docs/cpus.md)
UNPACKED_PATHS: dict[str, dict[str, bool]] = {
    "winograd43-im2col": NO_PACKING,
    "winograd23-im2col": {**NO_PACKING, "use_winograd43_convolution": False},
    "direct": {**NO_PACKING, "use_winograd_convolution": False, "use_sgemm_convolution": False},
}
#: ncnn's default, packed paths: their pack-8 depthwise int8 kernel dequantizes with ``_mm_rcp_ps``
#: (ConvolutionDepthWise_x86::forward_int8_x86), an approximate reciprocal (relative error up to 1.5 * 2**-12)
#: whose exact values are implementation-defined (only the error is bounded): they may differ from CPU to CPU
PACKED_PATHS: dict[str, dict[str, bool]] = {
    "packed-default": {},
    "packed-direct": {"use_winograd_convolution": False, "use_sgemm_convolution": False},
}


@pytest.mark.slow
@pytest.mark.parametrize("path", list(UNPACKED_PATHS))
def test_int8_matches_numpy_int8_reference(digits_int8: SimpleNamespace, digits_nchw: Any, path: str) -> None:
    ref, tie = digits_int8.reference, digits_int8.tie
    out = NcnnModel(digits_int8.param, digits_int8.bin, "int8", 2, options=UNPACKED_PATHS[path]).predict(
        digits_nchw.x_test, (10,)
    )
    # a sample none of whose computed values lies within TIE_TOLERANCE of a rounding boundary is determined by
    # the arithmetic alone: it must match on any CPU (measured on an AMD EPYC: every sample matched bit for bit)
    firm = tie > TIE_TOLERANCE
    assert firm.mean() >= 0.5, f"only {firm.sum()} of {len(firm)} samples are away from rounding ties"
    np.testing.assert_allclose(out[firm], ref[firm], rtol=0, atol=1e-5 * np.abs(ref).max())
    # a near-tie may round to the neighbouring integer: a few int8 steps of one intermediate, which moves the logits
    # by well under two output steps (max|ref| / 127; the packed kernels' larger rounding flips measured 0.86)
    step = np.abs(ref).max() / 127
    assert np.abs(out[~firm] - ref[~firm]).max(initial=0) <= 2 * step
    # the reference is really int8: it differs from the fp32 source by far more than the tolerance above
    assert np.abs(ref - digits_int8.job.reference).max() > 0.01 * np.abs(ref).max()


@pytest.mark.slow
@pytest.mark.parametrize("path", list(PACKED_PATHS))
def test_int8_packed_kernels_stay_within_two_output_steps(
    digits_int8: SimpleNamespace, digits_nchw: Any, path: str
) -> None:
    """The approximate reciprocal moves a depthwise output by up to 1.5 * 2**-12 of itself, so every value within
    0.05 int8 steps of a rounding boundary may land one step away; on an AMD EPYC 59 of 269 samples differ from
    the reference, by at most 0.86 of one output step. Bound: two output steps, and the class of every decisive
    sample (see exporters.core.verify.compare)."""
    ref = digits_int8.reference
    out = NcnnModel(digits_int8.param, digits_int8.bin, "int8", 2, options=PACKED_PATHS[path]).predict(
        digits_nchw.x_test, (10,)
    )
    step = np.abs(ref).max() / 127
    assert np.abs(out - ref).max() <= 2 * step
    a = compare(ref, out)
    assert a.decisive >= MIN_DECISIVE and a.decisive_top1 == 1.0


@pytest.mark.slow
def test_int8_top1_agrees_with_fp32_on_digits_test_split(digits_int8: SimpleNamespace, digits_nchw: Any) -> None:
    r = digits_int8.result
    assert r.samples == len(digits_nchw.x_test) == 269
    assert not result_agreement_problems(r), result_agreement_problems(r)
    out = NcnnModel(digits_int8.param, digits_int8.bin, "int8", 2).predict(digits_nchw.x_test, (10,))
    assert_int8_agrees(digits_int8.job.reference, out)
    assert r.max_rel_error is not None and 0 < r.max_rel_error < 0.1
    assert r.latency_ms is not None and r.latency_ms > 0 and r.runtime.startswith("ncnn ")


@pytest.mark.slow
def test_int8_fusion_off_gives_the_same_integers(
    digits_int8: SimpleNamespace, digits_nchw: Any, tmp_path: Path
) -> None:
    plain = write_int8(
        digits_int8.fp32_param,
        digits_int8.fp32_bin,
        tmp_path / "p.param",
        tmp_path / "p.bin",
        digits_int8.job.quant,
        fuse=False,
    )
    assert plain.fused == [] and len(plain.layers) == 5
    x = digits_nchw.x_test[:64]
    a = NcnnModel(tmp_path / "p.param", tmp_path / "p.bin", "int8", 2, options=NO_PACKING).predict(x, (10,))
    b = NcnnModel(digits_int8.param, digits_int8.bin, "int8", 2, options=NO_PACKING).predict(x, (10,))
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * np.abs(b).max())


@pytest.mark.slow
def test_pruned_filters_stay_zero_in_int8(trained_torch_digits: Any, digits_nchw: Any, tmp_path: Path) -> None:
    import torch

    from exporters.core.export import prepare_job
    from exporters.core.job import ExportOptions
    from exporters.targets.ncnn import export_ncnn

    model = copy.deepcopy(trained_torch_digits)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for conv in convs:
            conv.weight[0::3] = 0  # a third of the filters
    d = digits_nchw
    options = ExportOptions(
        precision="int8", directory=tmp_path / "out", example_input=d.x_test[:1], calibration=d.x_train[:256]
    )
    job = prepare_job(model, options, tmp_path / "work")
    result = export_ncnn(job)
    # the pruned model's outputs vary less from input to input: its int8 RMS error is 0.103 of their spread on an
    # AMD EPYC (0.022 unpruned); bound 0.2, the library's bound when few samples are decisive
    problems = result_agreement_problems(result, max_spread_error=0.2)
    assert result.ok and not problems, problems
    zero_channels = 0
    for ld in read_model(tmp_path / "out" / "model.int8.ncnn.param", tmp_path / "out" / "model.int8.ncnn.bin"):
        if ld.layer.type not in ("Convolution", "ConvolutionDepthWise"):
            continue
        w = np.asarray(ld.chunks["weight"].values()).reshape(ld.layer.get_int(0), -1)
        assert not w[0::3].any(), f"{ld.layer.name}: pruned filters are not all-zero int8"
        kept = np.delete(w, np.s_[0::3], axis=0)
        assert kept.any(axis=1).all() and np.abs(kept).max() == 127
        assert np.isfinite(ld.chunks["weight_scales"].values()).all()
        zero_channels += len(w[0::3])
    assert zero_channels == sum(len(range(0, c.out_channels, 3)) for c in convs) == 6 + 6 + 6 + 11


@pytest.mark.slow
def test_calibrated_ptq_export_end_to_end(trained_torch_digits: Any, digits_nchw: Any, tmp_path: Path) -> None:
    from exporters.core.export import export

    report = export(
        trained_torch_digits,
        ["ncnn"],
        precision="int8",
        calibration=[digits_nchw.x_train[:256]],
        directory=tmp_path,
    )
    r = report["ncnn"]
    assert r.ok, r.reason
    assert r.files == ["model.int8.ncnn.param", "model.int8.ncnn.bin"]
    assert r.scales == "calibrated on 256 samples (absmax)" and "layers int8" in r.notes[0]
    assert r.samples == 256 and not result_agreement_problems(r), result_agreement_problems(r)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "model.int8.ncnn.bin",
        "model.int8.ncnn.param",
        "quant_spec.json",
        "report.json",
        "report.md",
    ]
    net = NcnnModel(tmp_path / "model.int8.ncnn.param", tmp_path / "model.int8.ncnn.bin", "int8", 1)
    logits = net.predict(digits_nchw.x_test, (10,))
    import torch

    with torch.no_grad():
        fp32 = trained_torch_digits(torch.from_numpy(digits_nchw.x_test)).numpy()
    # int8 may change the class of at most 1 - MIN_TOP1 of the samples, so its accuracy may drop by that much; a
    # fixed accuracy bound would test how well this CPU trained the model
    fp32_accuracy = np.mean(fp32.argmax(1) == digits_nchw.y_test)
    assert np.mean(logits.argmax(1) == digits_nchw.y_test) >= fp32_accuracy - (1 - MIN_TOP1)
    assert_int8_agrees(fp32, logits)


# --------------------------------------------------------------------------------------------------
# export_ncnn's int8 flow without pnnx: the hand-written fp32 pair stands in for pnnx's output
# --------------------------------------------------------------------------------------------------


def _handmade_job(handmade: Handmade, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: np.ndarray) -> Any:
    from exporters.core.job import ExportJob, ExportOptions
    from exporters.targets import ncnn as ncnn_target

    def fake_pnnx(onnx_path: Any, input_shape: Any, scratch: Path, fp16: bool) -> tuple[Path, Path]:
        scratch.mkdir(parents=True)
        return Path(shutil.copy(handmade.param, scratch)), Path(shutil.copy(handmade.bin, scratch))

    monkeypatch.setattr(ncnn_target, "run_pnnx", fake_pnnx)
    return ExportJob(
        source=SimpleNamespace(layout="NCHW"),  # type: ignore[arg-type]
        onnx_path=tmp_path / "unused.onnx",
        input_shape=(1, C, H, W),
        directory=tmp_path / "out",
        workdir=tmp_path / "work",
        options=ExportOptions(precision="int8"),
        samples=handmade.x,
        reference=reference,
        quant=handmade.table,
    )


def test_export_ncnn_int8_flow(handmade: Handmade, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from exporters.targets.ncnn import export_ncnn

    fp32 = _run_ncnn(handmade.param, handmade.bin, "fp32", handmade.x)
    result = export_ncnn(_handmade_job(handmade, tmp_path, monkeypatch, fp32))
    assert result.ok and result.files == ["model.int8.ncnn.param", "model.int8.ncnn.bin"]
    # the export's default keeps the grouped conv float (issue 25) and says why
    assert result.notes[0].startswith("4 layers int8, 1 requantize fusions, 2 weight-holding layers kept float")
    assert any("grouped convolutions kept float (gconv)" in n for n in result.notes)
    assert result.top1_agreement is not None and result.top1_agreement >= 0.9 and result.samples == len(handmade.x)
    assert result.max_rel_error is not None and 0 < result.max_rel_error < 0.05
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(result.files)
    assert list((tmp_path / "work").iterdir()) == []  # the scratch folder is removed


def test_failed_verification_installs_nothing(
    handmade: Handmade, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from exporters.targets.ncnn import export_ncnn

    wrong = np.zeros((len(handmade.x), 7), np.float32)  # the model has 10 outputs
    with pytest.raises(
        RuntimeError,
        match=r"output has shape \(10,\) per sample; the source model's is \(7,\).*kept in .*failed/ncnn-int8",
    ):
        export_ncnn(_handmade_job(handmade, tmp_path, monkeypatch, wrong))
    out = tmp_path / "out"
    # nothing is installed as an artifact; the files are kept for inspection under failed/ only
    assert sorted(p.name for p in out.iterdir()) == ["failed"]
    kept = {p.name for p in (out / "failed" / "ncnn-int8").iterdir()}
    assert {"model.int8.ncnn.param", "model.int8.ncnn.bin"} <= kept, kept
    assert list((tmp_path / "work").iterdir()) == []


@pytest.mark.slow
def test_linear_on_token_axis_becomes_int8_gemm(tmp_path: Path) -> None:
    """nn.Linear on (N, tokens, C) comes out of pnnx as Gemm: int8 B (one scale, 18=2), verified in ncnn."""
    torch = pytest.importorskip("torch")
    from exporters import export

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)).eval()
    x = np.random.default_rng(0).standard_normal((64, 6, 8)).astype(np.float32)
    report = export(model, ["ncnn"], example_input=x[:1], calibration=x, samples=x, precision="int8",
                    directory=tmp_path)  # fmt: skip
    row = report["ncnn"]
    assert row.ok, row.reason
    layers = read_model(tmp_path / "model.int8.ncnn.param", tmp_path / "model.int8.ncnn.bin")
    gemms = [ld for ld in layers if ld.layer.type == "Gemm"]
    assert len(gemms) == 2 and all(ld.layer.get_int(18) == 2 for ld in gemms)
    assert all(ld.chunks["weight"].tag == TAG_INT8 and ld.chunks["weight_scales"].values().size == 1 for ld in gemms)
    assert row.spread_error is not None and row.spread_error < 0.05


@pytest.mark.slow
def test_attention_becomes_int8_multiheadattention(tmp_path: Path) -> None:
    """q/k/v/out Linears around SDPA come out of pnnx as MultiHeadAttention: int8 (18=2), verified in ncnn.

    ncnn reads four int8 weight matrices with their biases, then per-row q/k/v multipliers and one
    output-projection multiplier; each stored row must dequantize to the torch weight within half a step.
    """
    pytest.importorskip("torch")
    import torch
    import torch.nn.functional as F

    from exporters import export

    class Attention(torch.nn.Module):
        def __init__(self, dim: int = 32, heads: int = 4) -> None:
            super().__init__()
            self.heads = heads
            self.patch = torch.nn.Conv2d(3, dim, 4, stride=4)
            self.q, self.k, self.v, self.o = (torch.nn.Linear(dim, dim) for _ in range(4))
            self.head = torch.nn.Linear(dim, 10)

        def split(self, t: Any, b: int, n: int, d: int) -> Any:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        def forward(self, x: Any) -> Any:
            x = self.patch(x).flatten(2).transpose(1, 2)
            b, n, d = x.shape
            q, k, v = (self.split(f(x), b, n, d) for f in (self.q, self.k, self.v))
            a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
            return self.head((x + self.o(a)).mean(1))

    torch.manual_seed(0)
    model = Attention().eval()
    for m in model.modules():  # unit-gain init: data-like activations, no tied logits
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
    x = np.random.default_rng(0).standard_normal((64, 3, 16, 16)).astype(np.float32)
    calib = np.random.default_rng(1).standard_normal((64, 3, 16, 16)).astype(np.float32)
    report = export(model, ["ncnn"], example_input=x[:1], calibration=calib, samples=x, precision="int8",
                    directory=tmp_path)  # fmt: skip
    row = report["ncnn"]
    assert row.ok, row.reason
    layers = read_model(tmp_path / "model.int8.ncnn.param", tmp_path / "model.int8.ncnn.bin")
    [mha] = [ld for ld in layers if ld.layer.type == "MultiHeadAttention"]
    assert mha.layer.get_int(18) == 2
    for proj, linear in zip(("q", "k", "v", "out"), (model.q, model.k, model.v, model.o), strict=True):
        assert mha.chunks[f"{proj}_weight"].tag == TAG_INT8
        stored = mha.chunks[f"{proj}_weight"].values().reshape(32, 32).astype(np.float32)
        role = f"{proj}_weight_scales" if proj != "out" else "out_weight_scale"
        multipliers = mha.chunks[role].values()
        assert multipliers.size == (32 if proj != "out" else 1)
        w = linear.weight.detach().numpy()
        step = 1 / multipliers.reshape(-1, 1)
        assert np.all(np.abs(stored * step - w) <= step / 2 + 1e-6), proj
        np.testing.assert_array_equal(mha.chunks[f"{proj}_bias"].values(), linear.bias.detach().numpy())
    assert any("MultiHeadAttention int8" in n for n in row.notes)


def test_export_ncnn_depthwise_float_writes_a_verified_mixed_model(tmp_path: Path) -> None:
    import torch
    from torch import nn

    from exporters import export

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
        nn.Conv2d(16, 8, 1), nn.Flatten(), nn.Linear(8 * 8 * 8, 10),
    ).eval()  # fmt: skip
    x = np.random.default_rng(0).uniform(-1, 1, size=(64, 3, 8, 8)).astype(np.float32)
    report = export(
        model, ["ncnn"], example_input=x[:1], calibration=x, precision="int8", directory=tmp_path / "out",
        ncnn_depthwise="float",
    )  # fmt: skip
    row = report["ncnn"]
    assert row.ok, row.reason
    assert any("kept float" in n and "ConvolutionDepthWise" in n for n in row.notes)
    layers = {
        ld.layer.type: ld.layer
        for ld in read_model(tmp_path / "out" / "model.int8.ncnn.param", tmp_path / "out" / "model.int8.ncnn.bin")
    }
    assert layers["ConvolutionDepthWise"].get_int(8) == 0
    assert layers["Convolution"].get_int(8) in (2, 102)
    with pytest.raises(ValueError, match="ncnn_depthwise: unknown 'fp16'; choose one of"):
        export(model, ["ncnn"], example_input=x[:1], calibration=x, precision="int8", ncnn_depthwise="fp16")


class _GroupedNet:  # a namespace: torch is imported lazily, as in the other export tests
    @staticmethod
    def build() -> Any:
        import torch
        from torch import nn

        class Net(nn.Module):
            """Conv → grouped Conv(32, 32, groups=4) → + (a float Add: the grouped conv's output is dequantized)."""

            def __init__(self) -> None:
                super().__init__()
                self.c1 = nn.Conv2d(3, 32, 3, padding=1)
                self.g = nn.Conv2d(32, 32, 3, padding=1, groups=4)
                self.fc = nn.Linear(32, 10)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                y = torch.relu(self.c1(x))
                y = torch.relu(self.g(y)) + y
                return self.fc(y.mean((2, 3)))

        torch.manual_seed(0)
        return Net().eval()


@pytest.mark.slow  # 27 s on a loaded 2-core machine (export, verification, latency verdict)
def test_export_grouped_conv_int8_is_right_under_ncnn_default_options(tmp_path: Path) -> None:
    """Issue 25: ncnn's packed int8 grouped path loses a group's output when its output channels are a multiple
    of 8 and it is dequantized (AVX2 AMD EPYC, this model with the grouped conv in int8: 0% top-1 on 64 decisive
    samples, spread error 59; 100% with packing off). Defaults keep the grouped conv float and say so; the
    artifact verifies with ncnn's default options (packing on), as a user's app runs it."""
    from exporters import export

    model = _GroupedNet.build()
    x = np.random.default_rng(0).normal(size=(96, 3, 17, 23)).astype(np.float32)
    report = export(
        model, ["ncnn"], example_input=x[:1], calibration=[x[i : i + 8] for i in range(0, 32, 8)],
        precision="int8", directory=tmp_path / "out", samples=x[32:],
    )  # fmt: skip
    row = report["ncnn"]
    assert row.ok, row.reason
    # random weights, no training: the per-tensor int8 error is a larger share of the outputs' small spread
    # (measured 0.104); the defect measured 59, so 0.3 still fails it by two orders of magnitude
    assert not result_agreement_problems(row, max_spread_error=0.3), result_agreement_problems(row, 0.3)
    assert any("grouped convolutions kept float" in n and "use_packing_layout" in n for n in row.notes), row.notes
    layers = read_model(tmp_path / "out" / "model.int8.ncnn.param", tmp_path / "out" / "model.int8.ncnn.bin")
    by_type = {ld.layer.type: ld for ld in layers}
    grouped = by_type["ConvolutionDepthWise"]
    assert grouped.layer.get_int(7) == 4 and grouped.layer.get_int(8) == 0 and grouped.chunks["weight"].tag != TAG_INT8
    assert by_type["Convolution"].layer.get_int(8) in (2, 102) and by_type["InnerProduct"].layer.get_int(8) == 2


def test_ncnn_depthwise_reaches_the_callbacks_and_the_cli() -> None:
    from exporters.core.settings import ExportSettings
    from fitslim_app.cli import _parser
    from lightning_plugins import Export

    assert Export(targets=["ncnn"], ncnn_depthwise="float").settings.ncnn_depthwise == "float"
    with pytest.raises(ValueError, match=r"Export\(ncnn_depthwise=...\): unknown 'half'"):
        ExportSettings(ncnn_depthwise="half")
    args = _parser().parse_args(["export", "model.onnx", "--to", "ncnn", "--ncnn-depthwise", "float"])
    assert args.ncnn_depthwise == "float"
