"""fp16 that is fp16: the ``onnx`` target writes an fp16 ONNX, the ``tensorrt`` target says its file is fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch", reason="torch not installed")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed")

import onnx
import torch
from onnx import TensorProto

from exporters import export
from exporters.targets.tensorrt import tensorrt_available
from tests.conftest import random_bn_stats


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return random_bn_stats(
        torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, groups=8),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5),
        )
    ).eval()  # fmt: skip


@pytest.mark.slow
def test_fp16_onnx_is_an_fp16_file_and_tensorrt_fp16_is_not_claimed(tmp_path: Path) -> None:
    x = np.random.default_rng(0).standard_normal((16, 3, 9, 11)).astype(np.float32)
    report = export(_model(), ["onnx", "tensorrt"], example_input=x[:1], samples=x, precision="fp16",
                    directory=tmp_path)  # fmt: skip
    onnx_row, trt_row = report["onnx"], report["tensorrt"]
    assert onnx_row.ok and onnx_row.precision == "fp16" and onnx_row.files == ["model.fp16.onnx"], onnx_row
    model = onnx.load(str(tmp_path / "model.fp16.onnx"))
    weights = [i for i in model.graph.initializer if len(i.dims) > 1]
    assert weights and all(i.data_type == TensorProto.FLOAT16 for i in weights)  # the kernels are stored in fp16
    io = [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)]
    assert io == [TensorProto.FLOAT, TensorProto.FLOAT]  # called like the fp32 file
    # its outputs differ from the fp32 model by fp16 rounding (the fp32 graph is ~1e-7 off), within fp16's bound
    assert onnx_row.max_rel_error is not None and 1e-5 < onnx_row.max_rel_error <= 1e-2
    assert onnx_row.samples == 16 and onnx_row.top1_agreement is not None
    if tensorrt_available()[0]:
        pytest.skip("TensorRT is here: its fp16 engine is built and verified, the row may be ok")
    assert trt_row.status == "unverified" and trt_row.precision == "fp16" and not report.ok
    assert trt_row.files == ["model.trt.onnx"] and "is the fp32 ONNX" in trt_row.reason
    assert "no fp16 engine was built and run here" in trt_row.reason
