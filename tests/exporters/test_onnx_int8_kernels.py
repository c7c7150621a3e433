"""The ``onnx`` int8 target is ``ok`` only when ONNX Runtime really runs int8 kernels (issue 21)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch", reason="torch not installed")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed")

import torch

import exporters.targets.onnx_int8 as onnx_int8
from exporters import export


def _model() -> Any:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 7 * 9, 5)
    ).eval()


@pytest.mark.slow
def test_an_int8_onnx_without_int8_kernels_is_not_ok(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    x = np.random.default_rng(0).standard_normal((32, 3, 9, 11)).astype(np.float32)
    args: dict[str, Any] = {"example_input": x[:1], "calibration": x, "samples": x, "precision": "int8"}
    real = export(model, ["onnx"], directory=tmp_path / "real", **args)["onnx"]
    assert real.ok, real.reason  # the same model with ONNX Runtime's int8 kernels
    assert any(n.startswith("int8 kernels in ONNX Runtime:") and "QLinearConv x1" in n for n in real.notes)
    # the optimized graph as ONNX Runtime would leave it where no Q/DQ group fuses: float Conv and Gemm
    float_only = Counter({"QuantizeLinear": 3, "DequantizeLinear": 5, "Conv": 1, "Gemm": 1, "Relu": 1})
    monkeypatch.setattr(onnx_int8, "optimized_op_types", lambda path, threads=2: float_only)
    report = export(model, ["onnx"], directory=tmp_path / "none", **args)
    row = report["onnx"]
    assert row.status == "mismatch" and not report.ok
    assert row.reason.startswith("not an int8 artifact: ONNX Runtime runs none of its ops with int8 kernels")
    assert "Conv x1, Gemm x1" in row.reason
    assert row.top1_agreement is not None and row.max_abs_error is not None  # verified, and still not ok
    assert row.files == ["model.int8.onnx"] and (tmp_path / "none" / "model.int8.onnx").is_file()  # kept
