"""``exporters.core.runtimes``: scoring exported artifacts on a whole data set in their own runtimes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from exporters.core.report import ExportReport, TargetResult
from exporters.core.runtimes import accuracy, predict

pytest.importorskip("onnxruntime")


def _model_accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    import torch

    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(x)).numpy()
    return float((logits.argmax(1) == y).mean()), logits


@pytest.mark.slow
def test_each_runtime_scores_like_the_torch_model(tmp_path: Path, trained_torch_digits: Any, digits_nchw: Any) -> None:
    pytest.importorskip("ncnn")
    pytest.importorskip("ai_edge_litert")
    from exporters import export

    d = digits_nchw
    report = export(
        trained_torch_digits,
        ["onnx", "ncnn", "tflite", "tensorrt"],
        example_input=d.x_train[:1],
        calibration=[d.x_train[:128]],
        precision="int8",
        samples=d.x_test[:32],
        directory=tmp_path,
    )
    assert report.ok, report
    want, logits = _model_accuracy(trained_torch_digits, d.x_test, d.y_test)
    onnx_out = predict(report, "onnx", d.x_test)
    assert onnx_out.shape == logits.shape
    assert report["onnx"].precision == "int8"  # ONNX Runtime's int8 form
    for target in ("onnx", "ncnn", "tflite", "tensorrt"):  # int8: within two points of the float model
        acc = accuracy(report, target, d.x_test, d.y_test)
        assert abs(acc - want) <= 0.02, (target, acc, want)
    # the report saved on disk is enough: scoring an earlier export later
    again = ExportReport.load(tmp_path)
    x, y = d.x_test[:50], d.y_test[:50]
    assert accuracy(again, "ncnn", x, y) == accuracy(report, "ncnn", x, y)


def test_keras_made_tflite_takes_nchw_input_transposed(
    tmp_path: Path, trained_keras_digits: Any, digits_nhwc: Any
) -> None:
    pytest.importorskip("ai_edge_litert")
    from exporters import export
    from exporters.core.verify import nhwc_to_nchw

    d = digits_nhwc
    report = export(trained_keras_digits, ["tflite"], example_input=d.x_train[:1], directory=tmp_path)
    assert report.ok, report
    out = predict(report, "tflite", nhwc_to_nchw(d.x_test[:40]))
    want = np.asarray(trained_keras_digits.predict(d.x_test[:40], verbose=0))
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)


def test_errors_name_the_target_and_the_problem(tmp_path: Path) -> None:
    report = ExportReport(
        [
            TargetResult("onnx", "fp32", files=["model.onnx"]),
            TargetResult("ncnn", "int8", status="failed", reason="pnnx exited 1"),
        ],
        directory=str(tmp_path),
    )
    x = np.zeros((2, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match=r"target 'tflite': not in this report \(targets: \['onnx', 'ncnn'\]\)"):
        predict(report, "tflite", x)
    with pytest.raises(ValueError, match="target 'ncnn': the artifact was not written .failed: pnnx exited 1"):
        predict(report, "ncnn", x)
    with pytest.raises(FileNotFoundError, match="model.onnx is listed in the report but missing"):
        predict(report, "onnx", x)
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match="x: no samples"):
        predict(report, "onnx", x[:0])
