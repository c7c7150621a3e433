"""The ``onnx`` target at int8: ONNX Runtime's QDQ form, run with int8 kernels, with the shared scales."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch", reason="torch not installed")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed")

import onnx
import torch
from onnx import numpy_helper

from exporters import export
from exporters.core.onnx_hub import to_onnx
from exporters.core.quant import QuantizedNode, QuantTable, calibrate
from exporters.core.source import Source
from exporters.targets.onnx_int8 import (
    INT8_KERNELS,
    int8_kernels,
    optimized_op_types,
    scale_overrides,
    to_ort_int8,
    weight_type,
)
from lightning_plugins.models import torch_model
from tests.conftest import random_bn_stats
from tests.exporters.int8_agreement import assert_int8_agrees, result_agreement_problems


def _qdq_params(path: Path) -> tuple[dict[str, Any], dict[str, tuple[float, int]]]:
    """Weight DequantizeLinear scales by consumer node, activation QuantizeLinear (scale, zero point) by input."""
    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    weights: dict[str, Any] = {}
    acts: dict[str, tuple[float, int]] = {}
    for n in m.graph.node:
        if n.op_type in ("Conv", "Gemm", "MatMul"):
            dq = producer[n.input[1]]
            assert dq.op_type == "DequantizeLinear"
            if weight_type() == "uint8":  # the symmetric int8 grid as uint8 around 128 (x86 without VNNI)
                assert inits[dq.input[0]].dtype == np.uint8
                assert (inits[dq.input[2]] == 128).all() and inits[dq.input[0]].min() >= 1
            else:
                assert inits[dq.input[0]].dtype == np.int8 and (inits[dq.input[2]] == 0).all()
            weights[n.name] = inits[dq.input[1]]
        if n.op_type == "QuantizeLinear":
            acts[n.input[0]] = (float(inits[n.input[1]]), int(inits[n.input[2]]))
    return weights, acts


@pytest.fixture(scope="module")
def mobilenet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, np.ndarray, Path, Any]:
    """A small MobileNetV2 (ReLU6, depthwise, residual Adds) with data BatchNorm statistics, its shared ONNX, and
    the report of its int8 ONNX export."""
    torch.manual_seed(0)
    model = random_bn_stats(torch_model("mobilenet_v2", width_multiplier=0.35, num_classes=10, input_size=32), 1)
    x = np.random.default_rng(0).uniform(0, 1, (64, 3, 32, 32)).astype(np.float32)
    out = tmp_path_factory.mktemp("mnv2")
    shared, _ = to_onnx(Source.from_model(model), out / "shared.onnx", x[:1])
    report = export(str(shared), ["onnx"], calibration=x, precision="int8", directory=out / "exports")
    return model, x, shared, report


def test_int8_onnx_runs_every_conv_and_add_as_int8_kernels(mobilenet: tuple[Any, np.ndarray, Path, Any]) -> None:
    model, _x, _shared, report = mobilenet
    r = report["onnx"]
    assert r.ok, r.reason
    assert r.precision == "int8" and r.files == ["model.int8.onnx"]
    path = Path(report.directory) / "model.int8.onnx"
    ops = optimized_op_types(path)
    kernels = int8_kernels(path)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    adds = sum(1 for b in model.blocks if b.use_residual)
    # every convolution became an int8 QLinearConv; none is left in float
    assert kernels.get("QLinearConv") == convs and ops.get("Conv", 0) == 0 and ops.get("FusedConv", 0) == 0
    assert adds > 0 and kernels.get("QLinearAdd", 0) == adds  # the residual Adds run in int8 too
    assert set(kernels) <= set(INT8_KERNELS)
    assert "QLinearConv x" in " ".join(r.notes)


def test_int8_onnx_agrees_with_the_float_model_and_is_smaller(mobilenet: tuple[Any, np.ndarray, Path, Any]) -> None:
    _model, _x, shared, report = mobilenet
    r = report["onnx"]
    # random inputs through a random network: no sample's top-2 margin is decisive (measured 0 of 64 on an AMD
    # EPYC), so top-1 agreement would count near-ties that depend on the CPU's int8 kernels (int8 weights with
    # VNNI, uint8 without); the RMS error relative to the outputs' spread does not (measured 0.021: 4.8x margin)
    assert r.spread_error is not None and r.spread_error < 0.1
    assert r.max_rel_error is not None and r.max_rel_error < 0.1
    assert r.size_bytes is not None
    assert r.size_bytes < 0.45 * shared.stat().st_size  # int8 weights: about a quarter, plus Q/DQ parameters


def test_int8_onnx_on_digits_keeps_top1(trained_torch_digits: Any, digits_nchw: Any, tmp_path: Path) -> None:
    report = export(
        trained_torch_digits,
        ["onnx"],
        example_input=digits_nchw.x_test[:1],
        calibration=digits_nchw.x_train[:256],
        samples=digits_nchw.x_test,
        precision="int8",
        directory=tmp_path,
    )
    r = report["onnx"]
    assert r.ok, r.reason
    # judged on the decisive samples: an all-sample bound counts near-ties of the model this CPU trained
    assert r.samples == 269 and not result_agreement_problems(r), result_agreement_problems(r)
    # both onnxruntime paths: its int8 kernels (graph optimizations fuse Q/DQ into QLinear*) and Q/DQ computed as
    # written (optimizations off); either must agree with the fp32 model
    import onnxruntime as ort

    with torch.no_grad():
        ref = trained_torch_digits(torch.from_numpy(digits_nchw.x_test)).numpy()
    for level in (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL):
        opts = ort.SessionOptions()
        opts.graph_optimization_level = level
        opts.intra_op_num_threads = 2
        sess = ort.InferenceSession(str(tmp_path / "model.int8.onnx"), opts, providers=["CPUExecutionProvider"])
        assert_int8_agrees(ref, sess.run(None, {sess.get_inputs()[0].name: digits_nchw.x_test})[0])
    # sensitivity: different inputs give different outputs
    from exporters.core.runtimes import predict

    out = predict(report, "onnx", digits_nchw.x_test[:16])
    assert np.ptp(out, axis=0).max() > 0.1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_table_scales_are_used_exactly(mobilenet: tuple[Any, np.ndarray, Path, Any], tmp_path: Path) -> None:
    _model, x, shared, _report = mobilenet
    base = calibrate(shared, x)
    # scales unlike any calibration's: the artifact must carry these, not ranges of its own
    rng = np.random.default_rng(3)
    nodes = [
        QuantizedNode(q.node, q.weight_scales * rng.uniform(1.1, 1.6, q.weight_scales.shape).astype(np.float32),
                      q.input_scale * 1.37, q.spec_layer)
        for q in base.nodes
    ]  # fmt: skip
    table = QuantTable(nodes, base.spec, "qat")
    path = to_ort_int8(shared, table, x, tmp_path / "model.int8.onnx")
    weights, acts = _qdq_params(path)
    overrides = scale_overrides(onnx.load(str(shared)), table)
    for q in nodes:
        np.testing.assert_allclose(weights[q.node.node], q.weight_scales, rtol=1e-6)
        scale, zero = acts[q.node.input_name]
        expected = overrides[q.node.input_name][0]
        assert zero == int(expected["zero_point"]) and scale == pytest.approx(float(expected["scale"]), rel=1e-6)
        if zero == 128:  # signed tensor: the learned grid exactly
            assert scale == pytest.approx(q.input_scale, rel=1e-6)
        else:  # after ReLU6: the same grid, or a finer one that keeps [0, 6] exact
            assert scale == pytest.approx(min(q.input_scale, 6.0 / 255), rel=1e-6)
    assert acts[nodes[0].node.input_name][1] == 128  # the image input is signed



def test_calibration_ranges_do_not_depend_on_the_inference_batch(
    mobilenet: tuple[Any, np.ndarray, Path, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calibration runs a few samples at a time so that memory holds one small batch's tensors (a 100M-parameter
    ViT's int8 ``onnx`` export peaked at 19.0 GB with ONNX Runtime's calibrator on 16 samples at a time): the
    scales must be those of the whole calibration set, whatever the batch."""
    import exporters.targets.onnx_int8 as onnx_int8

    _model, x, shared, _report = mobilenet
    small, whole = calibrate(shared, x, batch=1), calibrate(shared, x, batch=len(x))
    assert [q.node.node for q in small.nodes] == [q.node.node for q in whole.nodes]
    # activations computed one sample or 64 at a time may differ in the last bits (a CPU's GEMM kernels block by
    # batch size), so input scales agree to float precision; weight scales come from the weights alone
    for a, b in zip(small.nodes, whole.nodes, strict=True):
        assert a.input_scale == pytest.approx(b.input_scale, rel=1e-5)
        np.testing.assert_array_equal(a.weight_scales, b.weight_scales)
    assert onnx_int8._Reader([], x).batch == onnx_int8.ORT_CALIBRATION_BATCH == 1
    one = _qdq_params(to_ort_int8(shared, whole, x[:24], tmp_path / "one.onnx"))
    monkeypatch.setattr(onnx_int8._Reader.__init__, "__defaults__", (16,))
    sixteen = _qdq_params(to_ort_int8(shared, whole, x[:24], tmp_path / "sixteen.onnx"))
    assert one[1].keys() == sixteen[1].keys() and one[1]  # every activation's (scale, zero point)
    for tensor, (scale, zero) in one[1].items():
        assert zero == sixteen[1][tensor][1] and scale == pytest.approx(sixteen[1][tensor][0], rel=1e-5), tensor
    assert one[0].keys() == sixteen[0].keys()
    for node, scales in one[0].items():
        np.testing.assert_array_equal(scales, sixteen[0][node])


def test_int8_onnx_refuses_without_calibration(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch_model("digits_cnn")
    x = np.zeros((1, 1, 8, 8), np.float32)
    shared, _ = to_onnx(Source.from_model(model.eval()), tmp_path / "shared.onnx", x)
    table = calibrate(shared, np.ones((4, 1, 8, 8), np.float32))
    with pytest.raises(ValueError, match="calibration"):
        to_ort_int8(shared, table, np.zeros((0, 1, 8, 8), np.float32), tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


class _TokenNet(torch.nn.Module):
    """Token ids and a padding mask in, class logits out: an embedding, a masked mean, two Linear layers."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 16)
        self.hidden = torch.nn.Linear(16, 32)
        self.head = torch.nn.Linear(32, 5)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        m = attention_mask.unsqueeze(-1).to(torch.float32)
        pooled = (self.embed(input_ids) * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.head(torch.relu(self.hidden(pooled)))


def _tokens(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 50, (n, 12), dtype=np.int64)
    mask = np.ones((n, 12), np.int64)
    for i in range(n):
        keep = int(rng.integers(4, 13))
        ids[i, keep:], mask[i, keep:] = 0, 0
    return ids, mask


def test_int8_onnx_calibrates_and_verifies_every_input_of_a_token_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _TokenNet().eval()
    samples, calibration = _tokens(64, 2), _tokens(64, 1)
    report = export(
        model, ["onnx"], example_input=tuple(a[:1] for a in samples), calibration=calibration, samples=samples,
        precision="int8", directory=tmp_path,
    )  # fmt: skip
    r = report["onnx"]
    assert r.ok, r.reason
    # decisive samples keep their class (measured on an AMD EPYC: 38 of 64 decisive, all agree; 63 of 64 overall)
    assert r.samples == 64 and r.decisive_samples >= 10 and r.decisive_top1 == 1.0
    assert r.spread_error is not None and r.spread_error < 0.2  # measured 0.053
    path = tmp_path / "model.int8.onnx"
    graph_inputs = {i.name: i.type.tensor_type.elem_type for i in onnx.load(str(path)).graph.input}
    assert graph_inputs == {"input_ids": onnx.TensorProto.INT64, "attention_mask": onnx.TensorProto.INT64}
    assert int8_kernels(path)  # the Linear layers run as int8 kernels


def test_to_ort_int8_names_the_inputs_a_single_array_cannot_feed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _TokenNet().eval()
    ids, mask = _tokens(8, 0)
    shared, _ = to_onnx(Source.from_model(model), tmp_path / "shared.onnx", (ids[:1], mask[:1]))
    table = calibrate(shared, (ids, mask))
    with pytest.raises(
        ValueError, match=r"calibration: the ONNX model takes 2 input\(s\) \['input_ids', 'attention_mask'\]"
    ):
        to_ort_int8(shared, table, ids, tmp_path / "int8.onnx")


class _CeilPoolNet(torch.nn.Module):
    """HF EfficientNet's head: ``AvgPool2d`` with a kernel larger than the map and ``ceil_mode=True``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, stride=4)
        self.pool = torch.nn.AvgPool2d(32, ceil_mode=True)
        self.head = torch.nn.Linear(16, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


def test_a_pool_window_over_the_whole_map_becomes_global_and_int8_agrees(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _CeilPoolNet().eval()
    x = np.random.default_rng(0).standard_normal((64, 3, 13, 11)).astype(np.float32)
    shared, notes = to_onnx(Source.from_model(model), tmp_path / "shared.onnx", x[:1])
    ops = [n.op_type for n in onnx.load(str(shared)).graph.node]
    assert "GlobalAveragePool" in ops and "AveragePool" not in ops
    assert any("GlobalAveragePool" in n for n in notes)
    report = export(model, ["onnx"], example_input=x[:1], calibration=x, precision="int8", directory=tmp_path / "e")
    r = report["onnx"]
    # ONNX Runtime's int8 QLinearAveragePool divides a ceil-mode window by the whole kernel: every output 0
    assert r.ok, r.reason
    assert r.spread_error is not None and r.spread_error < 0.2


def test_weights_are_uint8_only_on_x86_without_vnni() -> None:
    """onnxruntime's uint8 x int8 kernels saturate on x86 without VNNI (vpmaddubsw): uint8 weights there only."""
    assert weight_type("fpu avx2 fma", "x86_64") == "uint8"
    assert weight_type("fpu avx2 avx512f", "AMD64") == "uint8"  # AVX-512 without VNNI saturates too
    assert weight_type("fpu avx2 avx512f avx512_vnni", "x86_64") == "int8"
    assert weight_type("fpu avx2 avx_vnni", "x86_64") == "int8"
    assert weight_type("", "aarch64") == "int8"
    assert weight_type("", "x86_64") == "uint8"  # unknown flags: the form that is exact everywhere


@pytest.mark.parametrize("kind", ["uint8", "int8"])
def test_both_weight_forms_carry_the_same_grid(
    kind: str, mobilenet: tuple[Any, np.ndarray, Path, Any], tmp_path: Path
) -> None:
    _model, x, shared, _report = mobilenet
    table = calibrate(shared, x)
    path = to_ort_int8(shared, table, x, tmp_path / "model.int8.onnx", weights=kind)
    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    for q in table.nodes:
        conv = next(n for n in m.graph.node if n.name == q.node.node)
        dq = producer[conv.input[1]]
        values, scales, zeros = (inits[dq.input[i]] for i in range(3))
        assert values.dtype == np.dtype(kind) and (zeros == (128 if kind == "uint8" else 0)).all()
        np.testing.assert_allclose(scales, q.weight_scales, rtol=1e-6)
        grid = values.astype(np.int32) - zeros.reshape(-1, *([1] * (values.ndim - 1))).astype(np.int32)
        assert np.abs(grid).max() <= 127  # symmetric: the same int8 levels in either storage
    with pytest.raises(ValueError, match="weights: 'int4' is not a weight storage; use 'int8', 'uint8'"):
        to_ort_int8(shared, table, x, tmp_path / "bad.onnx", weights="int4")
    assert not (tmp_path / "bad.onnx").exists()


def _weight_dtypes(path: Path) -> set[Any]:
    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    return {inits[producer[n.input[1]].input[0]].dtype for n in m.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}


def test_onnx_weights_chooses_the_storage_for_the_cpu_that_will_run_it(
    mobilenet: tuple[Any, np.ndarray, Path, Any], tmp_path: Path
) -> None:
    """An artifact exported on a VNNI build machine for an x86 CPU without VNNI needs uint8 weights, and one
    exported on such a CPU for an ARM phone int8 weights: the exporting CPU's choice can be overridden."""
    _model, x, shared, _report = mobilenet
    here = weight_type()
    rows = {}
    for kind in ("uint8", "int8"):
        report = export(
            str(shared), ["onnx"], calibration=x, precision="int8", directory=tmp_path / kind, onnx_weights=kind
        )
        row = rows[kind] = report["onnx"]
        assert _weight_dtypes(tmp_path / kind / "model.int8.onnx") == {np.dtype(kind)}
        assert row.runtime.endswith(f"QDQ uint8/{kind})"), row.runtime
        assert any(f"onnx_weights='{kind}'" in n for n in row.notes), row.notes
    assert rows["uint8"].ok, rows["uint8"].reason  # exact on every CPU
    saturates = [n for n in rows["int8"].notes if "saturates" in n]
    assert bool(saturates) == (here == "uint8")  # said only where this CPU saturates int8 weights
    if here == "int8":
        assert rows["int8"].ok, rows["int8"].reason
    with pytest.raises(ValueError, match=r"onnx_weights: unknown 'int4'; choose one of \['auto', 'int8', 'uint8'\]"):
        export(str(shared), ["onnx"], calibration=x, precision="int8", directory=tmp_path / "bad", onnx_weights="int4")
    assert not (tmp_path / "bad").exists()


def test_onnx_weights_reaches_the_callbacks_and_the_cli() -> None:
    from exporters.core.settings import ExportSettings
    from fitslim_app.cli import _parser
    from lightning_plugins import Export

    assert Export(targets=["onnx"], onnx_weights="uint8").settings.onnx_weights == "uint8"
    assert ExportSettings().onnx_weights == "auto"
    with pytest.raises(ValueError, match=r"Export\(onnx_weights=...\): unknown 'int4'. HINT: choose one of"):
        ExportSettings(onnx_weights="int4")
    args = _parser().parse_args(["export", "model.onnx", "--to", "onnx", "--onnx-weights", "int8"])
    assert args.onnx_weights == "int8"
    assert _parser().parse_args(["export", "model.onnx", "--to", "onnx"]).onnx_weights == "auto"
