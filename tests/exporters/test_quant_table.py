"""Learned QuantSpec scales mapped onto the exported graph's weighted nodes (``core.quant.table_from_spec``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from exporters.core.quant import table_from_spec  # noqa: E402
from fitslim.quantspec import LayerQuant, QuantSpec  # noqa: E402


def _conv_graph(weight: np.ndarray) -> Any:
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, weight.shape[1], 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_scales_follow_a_batchnorm_folded_on_export_that_the_source_did_not_pair() -> None:
    """A subclassed Keras model has no graph to pair a Conv with its BatchNorm, so its spec's weight scales are those
    of the bare kernel, while the export folds the BatchNorm in: the node's kernel is the spec's times a per-channel
    factor. Its int8 grid is the spec's scaled by that factor (ResNet-style user model: RMS error 5.0 of the spread
    against the fake-quant model before, ok after)."""
    rng = np.random.default_rng(0)
    kernel = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    factor = np.array([0.5, -2.0, 1.0, 3.0], np.float32)  # gamma / sqrt(var + eps), one negative
    scales = (np.abs(kernel).reshape(4, -1).max(1) / 127).tolist()
    spec = QuantSpec([LayerQuant("conv_layer", "conv2d", (4, 3, 3, 3), scales, 0.05)], source="qat")
    folded = _conv_graph((kernel * factor.reshape(4, 1, 1, 1)).astype(np.float32))
    table = table_from_spec(folded, spec, {"conv_layer": kernel})
    (node,) = table.nodes
    np.testing.assert_allclose(node.weight_scales, np.array(scales) * np.abs(factor), rtol=1e-5)
    assert node.input_scale == pytest.approx(0.05)
    # the kernel on that grid is the spec's grid times the factor: the same integers
    graph_kernel = numpy_helper.to_array(folded.graph.initializer[0]).reshape(4, -1)
    q_graph = np.round(graph_kernel / np.asarray(node.weight_scales).reshape(4, 1))
    q_spec = np.round(kernel.reshape(4, -1) / np.array(scales).reshape(4, 1)) * np.sign(factor).reshape(4, 1)
    np.testing.assert_array_equal(q_graph, q_spec)
    # a functional Keras model pairs the BatchNorm itself: its spec's scales are those of the folded kernel while
    # source_weights gives the bare one; they are kept exactly (scaling them again broke every such export)
    folded_scales = (np.array(scales) * np.abs(factor)).tolist()
    paired = QuantSpec([LayerQuant("conv_layer", "conv2d", (4, 3, 3, 3), folded_scales, 0.05)], source="qat")
    kept = table_from_spec(folded, paired, {"conv_layer": kernel})
    np.testing.assert_allclose(kept.nodes[0].weight_scales, folded_scales, rtol=1e-6)
    # learned weight scales that are neither kernel's absmax are kept as they are
    learned = [0.01, 0.02, 0.03, 0.04]
    spec_learned = QuantSpec([LayerQuant("conv_layer", "conv2d", (4, 3, 3, 3), learned, 0.05)], source="qat")
    np.testing.assert_allclose(table_from_spec(folded, spec_learned, {"conv_layer": kernel}).nodes[0].weight_scales,
                               learned, rtol=1e-6)  # fmt: skip
