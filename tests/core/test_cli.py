"""The ``fitslim`` command line: demo, export, report, and its errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fitslim.app.cli import main


def test_demo_rejects_bad_epochs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--epochs", "0", "--frameworks", "lightning"]) == 2
    assert "epochs must be >= 1" in capsys.readouterr().err


def test_report_of_missing_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "no export report" in capsys.readouterr().err


def test_export_argument_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path / "nope.onnx"), "--to", "onnx"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", "model.pt", "--to", "onnx"]) == 2
    assert "not a supported file; give an .onnx, .keras, .pt2 or a Lightning .ckpt" in capsys.readouterr().err
    assert main(["export", "model.onnx", "--to", "ncnn", "tflite"]) == 2
    assert "--to tflite: the TFLite converters take the Keras or torch model" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import tomllib

    import fitslim

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    declared = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out.strip() == f"fitslim {declared}" == f"fitslim {fitslim.__version__}"


@pytest.mark.slow
def test_export_and_report_round_trip(
    tmp_path: Path, trained_torch_digits: Any, digits_nchw: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("onnxruntime")
    from exporters.onnx_export import to_onnx
    from exporters.source import Source

    model, _ = to_onnx(
        Source.from_model(trained_torch_digits), tmp_path / "digits.onnx", digits_nchw.x_test[:1]
    )
    calib = tmp_path / "calib.npy"
    np.save(calib, digits_nchw.x_train[:64])
    out = tmp_path / "exports"
    code = main(["export", str(model), "--to", "onnx", "--calibration", str(calib), "--output", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "[1/2] building the shared ONNX" in printed and "[2/2] exporting onnx (fp32)" in printed
    assert "model.onnx" in printed
    assert main(["report", str(out)]) == 0
    assert "onnx    fp32       ok" in capsys.readouterr().out
    assert main(["export", str(model), "--to", "onnx", "--input-shape", "1,x,8"]) == 2
    assert "--input-shape" in capsys.readouterr().err
