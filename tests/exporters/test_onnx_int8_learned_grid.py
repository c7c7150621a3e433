"""The ``onnx`` int8 artifact after QAT computes what the fake-quant model computes (issue 25).

HF MobileNetV2 after QAT: the ``onnx`` int8 file disagreed with the fake-quant model while the TensorRT Q/DQ file of
the same fit agreed. Two causes, each tested on a tiny Conv -> ReLU6 -> zero Pad -> depthwise Conv -> ReLU6 -> Conv
net (HF MobileNetV2's layer pattern):

- ONNX Runtime's quantizer gives a Pad's output its input's parameters and ignores an override on it, so the learned
  input scale of every padded layer was lost (the ReLU6 range took its place);
- after a ReLU6 the artifact used a grid of 6 / 255 (so that ONNX Runtime could drop the clip) instead of the learned
  one, rounding every depthwise input on another grid than the fake-quant model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="torch not installed")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed")

import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from exporters.core.onnx_hub import to_onnx
from exporters.core.qdq import to_qdq
from exporters.core.quant import QuantizedNode, QuantTable, calibrate
from exporters.core.source import Source
from exporters.targets.onnx_int8 import to_ort_int8

pytestmark = pytest.mark.slow  # the fixture's ONNX export: 46 s on a heavily loaded 2-core machine


class PaddedDepthwise(nn.Module):
    """Conv -> ReLU6 -> explicit zero Pad -> depthwise Conv -> ReLU6 -> 1x1 Conv (TF-style padding, as HF pads)."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, groups=8)
        self.project = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(F.relu6(self.expand(x)), (1, 1, 1, 1))
        return self.project(F.relu6(self.depthwise(x))).mean((2, 3))


@pytest.fixture(scope="module")
def padded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, QuantTable, np.ndarray]:
    torch.manual_seed(0)
    model = PaddedDepthwise().eval()
    with torch.no_grad():  # large activations, so both ReLU6 saturate and the learned grid is coarser than 6 / 255
        model.expand.weight.mul_(4.0)
        model.depthwise.weight.mul_(3.0)
    x = np.random.default_rng(0).standard_normal((32, 3, 9, 11)).astype(np.float32)
    shared, _ = to_onnx(Source.from_model(model), tmp_path_factory.mktemp("padded") / "shared.onnx", x[:1])
    base = calibrate(shared, x)
    # a learned table: every input range a little wider than calibration's, as QAT's observers leave it
    nodes = [QuantizedNode(q.node, q.weight_scales, q.input_scale * 1.25, q.spec_layer) for q in base.nodes]
    return shared, QuantTable(nodes, base.spec, "qat"), x


def _activation_scales(path: Path) -> dict[str, tuple[float, int]]:
    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    return {
        n.input[0]: (float(inits[n.input[1]]), int(inits[n.input[2]]))
        for n in m.graph.node
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits
    }


def _run(model: str | bytes, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {sess.get_inputs()[0].name: x})[0])


def test_padded_layers_read_their_learned_grid(padded: tuple[Path, QuantTable, np.ndarray], tmp_path: Path) -> None:
    shared, table, x = padded
    path = to_ort_int8(shared, table, x, tmp_path / "model.int8.onnx")
    acts = _activation_scales(path)
    depthwise = next(q for q in table.nodes if q.node.kind == "depthwise_conv2d")
    project = next(q for q in table.nodes if q.node.weight.shape[0] == 4)
    assert 6.0 / 255 < depthwise.input_scale and 6.0 / 255 < project.input_scale  # the case the fix is about
    for q in (depthwise, project):  # the tensor the layer reads: the learned scale, from 0 (after ReLU6)
        scale, zero = acts[q.node.input_name]
        assert zero == 0 and scale == pytest.approx(q.input_scale, rel=1e-6), (q.node.node, scale, q.input_scale)


def _layer_inputs(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    """What each Conv reads (its dequantized data input), in graph order, unoptimized (no QDQ fusion)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    names = [n.input[0] for n in m.graph.node if n.op_type == "Conv"]
    m.graph.output.extend(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in names)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return [np.asarray(v) for v in sess.run(names, {sess.get_inputs()[0].name: x})]


def test_int8_onnx_after_qat_rounds_layer_inputs_as_the_fake_quant_graph(
    padded: tuple[Path, QuantTable, np.ndarray], tmp_path: Path
) -> None:
    """The values the depthwise and 1x1 layers read, against the graph with only the table's layer Q/DQ (the
    fake-quant model's arithmetic): the same grid, so the same values up to rounding ties."""
    shared, table, x = padded
    path = to_ort_int8(shared, table, x, tmp_path / "model.int8.onnx", weights="uint8")  # exact on every CPU
    artifact = _layer_inputs(onnx.load(str(path)), x)
    reference = _layer_inputs(to_qdq(onnx.load(str(shared)), table, residual_inputs=[]), x)
    assert len(artifact) == len(reference) == 3
    for layer, (a, r) in enumerate(zip(artifact[1:], reference[1:], strict=True), start=1):
        same = float(np.mean(np.abs(a - r) <= 1e-6 * max(float(np.abs(r).max()), 1.0)))
        # measured: 0.999 for both layers; before the fix 0.51 for the depthwise layer (its input on a 6 / 255 grid)
        assert same >= 0.95, (layer, same)
        assert np.unique(r).size > 8  # a real range of values, not all clipped to one
