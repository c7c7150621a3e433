"""export()'s options as one object (exporters.core.job.ExportOptions): checked once, passed down whole; the opset
option end to end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from exporters.core.job import OPSET, ExportOptions


def test_options_are_checked_once_with_three_part_errors() -> None:
    options = ExportOptions(targets="ncnn", precision="int8", ncnn_depthwise="float", onnx_weights="uint8")
    assert options.targets == ["ncnn"] and options.ncnn_keep_float == ("ConvolutionDepthWise",)
    assert options.onnx_weight_type == "uint8" and ExportOptions().onnx_weight_type is None
    assert ExportOptions().opset == OPSET == 18
    with pytest.raises(ValueError, match=r"^opset: 12 is outside 13-21; choose one in that range .* opset 18\.$"):
        ExportOptions(opset=12)
    with pytest.raises(ValueError, match=r"^opset: 22 is outside 13-21"):
        ExportOptions(opset=22)
    with pytest.raises(TypeError, match=r"^opset: expected an int; got str '17'\. HINT: e\.g\. opset=17"):
        ExportOptions(opset="17")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^opset: expected an int; got bool True"):
        ExportOptions(opset=True)
    with pytest.raises(TypeError, match=r"^latency: expected True or False; got 1\."):
        ExportOptions(latency=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^precision: unknown 'int4'"):
        ExportOptions(precision="int4")


@pytest.mark.parametrize("opset", [17, None])
def test_opset_reaches_the_onnx_file(opset: int | None, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch", reason="torch not installed")
    onnx = pytest.importorskip("onnx", reason="onnx not installed")
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    from exporters import export

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(27, 4))
    x = np.random.default_rng(0).random((4, 1, 5, 5), dtype=np.float32)
    kwargs = {} if opset is None else {"opset": opset}
    report = export(model.eval(), ["onnx"], example_input=x[:1], samples=x, directory=tmp_path, **kwargs)
    assert report["onnx"].ok, report
    written = onnx.load(str(tmp_path / "model.onnx"))
    versions = {o.domain or "ai.onnx": o.version for o in written.opset_import}
    assert versions["ai.onnx"] == (opset or OPSET), versions


def test_export_rejects_a_bad_opset_before_any_work(tmp_path: Path) -> None:
    from exporters import export

    with pytest.raises(ValueError, match=r"^opset: 9 is outside 13-21"):
        export("missing.onnx", ["onnx"], opset=9, directory=tmp_path / "out")
    assert not (tmp_path / "out").exists()
