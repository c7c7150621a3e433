"""The ncnn target at fp32 and fp16: pnnx conversion, atomic install, verification in ncnn's bindings."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ncnn", reason="ncnn not installed")
pytest.importorskip("pnnx", reason="pnnx not installed")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
pytest.importorskip("torch", reason="torch not installed")

import torch

from exporters.core import target as target_core
from exporters.core.export import prepare_job
from exporters.core.job import ExportJob, ExportOptions
from exporters.core.target import install
from exporters.targets.ncnn import NcnnModel, export_ncnn, run_pnnx
from exporters.targets.ncnn_int8 import TAG_FP16, TAG_FP32, read_model
from tests.conftest import random_bn_stats


class TinyFCN(torch.nn.Module):
    """Conv-BN-ReLU (stride 2), depthwise-BN-ReLU, pointwise-BN + residual, ReLU, 1x1 head (fully conv)."""

    def __init__(self) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, 2, 1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(12, 12, 3, 1, 1, groups=12, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(12, 12, 1, bias=False), nn.BatchNorm2d(12))
        self.head = nn.Conv2d(12, 5, 1)

    def forward(self, x: Any) -> Any:
        y = self.stem(x)
        return self.head(torch.relu(self.pw(self.dw(y)) + y))


def _job(model: Any, precision: str, tmp_path: Path, x: np.ndarray, **kwargs: Any) -> ExportJob:
    options = ExportOptions(precision=precision, directory=tmp_path / "out", example_input=x[:1], samples=x, **kwargs)
    return prepare_job(model, options, tmp_path / "work")


def _bare_job(tmp_path: Path, onnx_path: Path, precision: str = "fp32") -> ExportJob:
    """A job whose source is never touched (the code under test fails before using it)."""
    zeros = np.zeros((1, 1, 8, 8), np.float32)
    return ExportJob(
        source=None,  # type: ignore[arg-type]
        onnx_path=onnx_path,
        input_shape=(1, 1, 8, 8),
        directory=tmp_path / "out",
        workdir=tmp_path / "work",
        options=ExportOptions(precision=precision),
        samples=zeros,
        reference=np.zeros((1, 10), np.float32),
    )


@pytest.mark.slow
def test_fp32_digits_matches_torch(trained_torch_digits: Any, digits_nchw: Any, tmp_path: Path) -> None:
    job = _job(trained_torch_digits, "fp32", tmp_path, digits_nchw.x_test)
    result = export_ncnn(job)

    assert result.ok and result.precision == "fp32"
    assert result.files == ["model.ncnn.param", "model.ncnn.bin"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.ncnn.bin", "model.ncnn.param"]
    assert result.size_bytes == sum((tmp_path / "out" / f).stat().st_size for f in result.files)
    assert result.samples == len(digits_nchw.x_test) == 269
    assert result.max_rel_error is not None and result.max_rel_error <= 1e-4
    assert result.top1_agreement == 1.0
    assert result.runtime.startswith("ncnn 1.0.")
    assert result.latency_ms is not None and result.latency_ms > 0 and result.threads == 2
    # the scratch folder (pnnx's side files) is gone; only the shared ONNX stays in the job's workdir
    assert not [p for p in (tmp_path / "work").iterdir() if p.name.startswith("ncnn-")]
    # fp32 weights are stored untagged-raw fp32 (tag 0)
    layers = read_model(tmp_path / "out" / "model.ncnn.param", tmp_path / "out" / "model.ncnn.bin")
    tags = {ld.chunks["weight"].tag for ld in layers if "weight" in ld.chunks}
    assert tags == {TAG_FP32}


@pytest.mark.slow
def test_fp32_odd_input_size_fully_convolutional(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = random_bn_stats(TinyFCN())
    x = np.random.default_rng(1).uniform(-1, 1, size=(2, 3, 17, 23)).astype(np.float32)
    job = _job(model, "fp32", tmp_path, x)
    assert job.input_shape == (1, 3, 17, 23)
    result = export_ncnn(job)

    assert result.ok and result.samples == 2
    assert result.max_rel_error is not None and result.max_rel_error <= 1e-4
    net = NcnnModel(tmp_path / "out" / "model.ncnn.param", tmp_path / "out" / "model.ncnn.bin", "fp32", 2)
    out = net.predict(x, (5, 9, 12))
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert expected.shape == (2, 5, 9, 12)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-4 * np.abs(expected).max())
    # sensitivity: the two inputs give clearly different maps (no constant output, no batch mix-up)
    assert np.abs(out[0] - out[1]).max() > 0.1 * np.abs(out).max()


@pytest.mark.slow
def test_fp16_within_1e2_and_stores_fp16(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = random_bn_stats(TinyFCN())
    x = np.random.default_rng(2).uniform(-1, 1, size=(2, 3, 17, 23)).astype(np.float32)
    job = _job(model, "fp16", tmp_path, x)
    result = export_ncnn(job)

    assert result.ok and result.files == ["model.fp16.ncnn.param", "model.fp16.ncnn.bin"]
    assert result.max_rel_error is not None and 0 < result.max_rel_error <= 1e-2
    out = tmp_path / "out"
    layers = read_model(out / "model.fp16.ncnn.param", out / "model.fp16.ncnn.bin")
    weights = [ld.chunks["weight"] for ld in layers if "weight" in ld.chunks]
    assert len(weights) == 4 and {c.tag for c in weights} == {TAG_FP16}
    # fp16 halves the weights: 2 bytes per value (+ tag and padding)
    assert sum(len(c.data) for c in weights) <= sum(2 * c.count + 8 for c in weights)


def test_pnnx_failure_raises_with_output_and_leaves_no_file(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07this is not an onnx protobuf" * 50)
    job = _bare_job(tmp_path, bad)
    with pytest.raises(RuntimeError, match=r"pnnx failed .*its last output:\n(.|\n)+kept in .*failed/ncnn-fp32"):
        export_ncnn(job)
    out = tmp_path / "out"
    # no model under its final names; the input pnnx failed on is kept for inspection, and named
    kept = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert "failed/ncnn-fp32/corrupt.onnx" in kept and all(k.startswith("failed/ncnn-fp32/") for k in kept), kept
    assert not [p for p in (tmp_path / "work").iterdir() if p.name.startswith("ncnn-")]


def test_run_pnnx_reports_missing_model(tmp_path: Path) -> None:
    with pytest.raises((RuntimeError, FileNotFoundError)):
        run_pnnx(tmp_path / "absent.onnx", (1, 1, 8, 8), tmp_path / "scratch", fp16=False)


def test_missing_ncnn_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ncnn", None)
    with pytest.raises(ImportError, match=r"pip install 'fitslim\[ncnn\]'"):
        export_ncnn(_bare_job(tmp_path, tmp_path / "m.onnx"))
    assert not (tmp_path / "out").exists()


def test_missing_pnnx_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pnnx", None)
    with pytest.raises(ImportError, match=r"pnnx.*pip install 'fitslim\[ncnn\]'"):
        run_pnnx(tmp_path / "m.onnx", (1, 1, 8, 8), tmp_path / "scratch", fp16=False)


@pytest.mark.parametrize("precision", ["bf16", "int4", ""])
def test_unknown_precision(tmp_path: Path, precision: str) -> None:
    with pytest.raises(ValueError, match="precision"):
        export_ncnn(_bare_job(tmp_path, tmp_path / "m.onnx", precision))


def test_int8_without_scales(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"int8.*job\.quant"):
        export_ncnn(_bare_job(tmp_path, tmp_path / "m.onnx", "int8"))


def test_install_is_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.param").write_text("param")
    (src / "a.bin").write_bytes(b"bin")
    dest = tmp_path / "dest"
    calls = {"n": 0}
    real_replace = target_core.os.replace

    def flaky_replace(a: Any, b: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        real_replace(a, b)

    monkeypatch.setattr(target_core.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="disk full"):
        install([(src / "a.param", dest / "m.param"), (src / "a.bin", dest / "m.bin")])
    assert list(dest.iterdir()) == []  # the first rename was undone, no .partial file left

    monkeypatch.setattr(target_core.os, "replace", real_replace)
    install([(src / "a.param", dest / "m.param"), (src / "a.bin", dest / "m.bin")])
    assert (dest / "m.param").read_text() == "param" and (dest / "m.bin").read_bytes() == b"bin"
    assert sorted(p.name for p in dest.iterdir()) == ["m.bin", "m.param"]

    # over an existing pair: a failing second rename leaves neither the new param nor the old bin
    calls["n"] = 0
    monkeypatch.setattr(target_core.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="disk full"):
        install([(src / "a.param", dest / "m.param"), (src / "a.bin", dest / "m.bin")])
    assert list(dest.iterdir()) == []
    # a failing first rename leaves the existing pair untouched
    monkeypatch.setattr(target_core.os, "replace", real_replace)
    install([(src / "a.param", dest / "m.param"), (src / "a.bin", dest / "m.bin")])
    calls["n"] = 1
    monkeypatch.setattr(target_core.os, "replace", flaky_replace)
    with pytest.raises(OSError, match="disk full"):
        install([(src / "a.bin", dest / "m.param"), (src / "a.param", dest / "m.bin")])
    assert (dest / "m.param").read_text() == "param" and (dest / "m.bin").read_bytes() == b"bin"
    assert sorted(p.name for p in dest.iterdir()) == ["m.bin", "m.param"]


class QKVUnbind(torch.nn.Module):
    """Patch embedding, one fused qkv Linear split by ``reshape(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)`` and
    unpacking (a ``torch.unbind`` whose batch sits on the second axis), SDPA, output Linear, mean, head."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.patch = torch.nn.Conv2d(3, dim, 4, stride=4)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.head = torch.nn.Linear(dim, 10)

    def forward(self, x: Any) -> Any:
        x = self.patch(x).flatten(2).transpose(1, 2)
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        return self.head((x + self.proj(a)).mean(1))


@pytest.mark.slow
def test_fused_qkv_unbind_is_lowered_to_slice(tmp_path: Path) -> None:
    """pnnx leaves Tensor.reshape + torch.unbind (ncnn has neither); they become Slice + Reshape and verify."""
    torch.manual_seed(0)
    model = QKVUnbind().eval()
    x = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    job = prepare_job(model, ExportOptions(directory=tmp_path, example_input=x[:1], samples=x), tmp_path / "work")
    r = export_ncnn(job)
    assert r.ok, r.reason
    assert r.max_rel_error is not None and r.max_rel_error <= 1e-4
    types = [ld.layer.type for ld in read_model(tmp_path / "model.ncnn.param", tmp_path / "model.ncnn.bin")]
    assert "Slice" in types and "torch.unbind" not in types and "Tensor.reshape" not in types


class StridedSlice(torch.nn.Module):
    """Swin-style patch merging: the four stride-2 phases of the map concatenated on channels."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Conv2d(32, 4, 1)

    def forward(self, x: Any) -> Any:
        x = self.conv(x)
        return self.head(torch.cat([x[:, :, i::2, j::2] for i in (0, 1) for j in (0, 1)], 1))


def test_strided_slice_is_refused_with_the_layer_and_why(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    options = ExportOptions(directory=tmp_path, example_input=x[:1], samples=x)
    job = prepare_job(StridedSlice().eval(), options, tmp_path / "work")
    with pytest.raises(RuntimeError, match=r"Tensor\.slice \(layer '[^']+'\).*ncnn's Crop has no step"):
        export_ncnn(job)
    assert not list(tmp_path.glob("model.ncnn.*"))
