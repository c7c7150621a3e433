"""The ``fitslim`` command line: demo, export, report, and its errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fitslim_app.cli import main


def test_demo_rejects_bad_epochs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--epochs", "0", "--frameworks", "lightning"]) == 2
    assert "epochs must be >= 1" in capsys.readouterr().err


def test_demo_fashion_mnist_absent_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FITSLIM_FASHION_MNIST", str(tmp_path / "empty"))  # only there: not the Debian copy
    out = tmp_path / "demo"
    assert main(["demo", "--data", "fashion-mnist", "--frameworks", "lightning", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--data fashion-mnist: Fashion-MNIST not found" in err, err
    assert "apt-get install dataset-fashion-mnist" in err and "FITSLIM_FASHION_MNIST" in err, err
    assert not (out / "lightning").exists()  # nothing trained


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
    from exporters.core.onnx_hub import to_onnx
    from exporters.core.source import Source

    model, _ = to_onnx(Source.from_model(trained_torch_digits), tmp_path / "digits.onnx", digits_nchw.x_test[:1])
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


def _report(folder: Path) -> dict[str, Any]:
    import json

    return {r["target"]: r for r in json.loads((folder / "report.json").read_text())["results"]}


@pytest.mark.slow
def test_export_lightning_checkpoint_and_exported_program(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A Trainer-written .ckpt (with --module) and a torch.export .pt2 (static batch 1) export and verify."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("lightning")
    pytest.importorskip("ncnn")
    from lightning.pytorch import Trainer

    from lightning_plugins.reference import DigitsClassifier, DigitsDataModule

    torch.manual_seed(0)
    module = DigitsClassifier(width=0.5)
    trainer = Trainer(
        max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=32))
    ckpt = tmp_path / "digits.ckpt"
    trainer.save_checkpoint(ckpt)
    pt2 = tmp_path / "digits.pt2"
    torch.export.save(torch.export.export(module.model.eval(), (torch.rand(1, 1, 8, 8),)), str(pt2))
    capsys.readouterr()

    module_path = "lightning_plugins.reference.DigitsClassifier"
    out = tmp_path / "from_ckpt"
    argv = [
        str(ckpt),
        "--module",
        module_path,
        "--input-shape",
        "1,1,8,8",
        "--to",
        "onnx",
        "ncnn",
        "--output",
        str(out),
    ]
    assert main(["export", *argv]) == 0, capsys.readouterr()
    rows = _report(out)
    assert rows["onnx"]["status"] == rows["ncnn"]["status"] == "ok" and rows["ncnn"]["top1_agreement"] == 1.0
    assert "Export of torch DigitsClassifier" in capsys.readouterr().out

    out = tmp_path / "from_pt2"  # no --input-shape: the program carries its example input
    assert main(["export", str(pt2), "--to", "onnx", "--output", str(out)]) == 0, capsys.readouterr()
    rows = _report(out)
    assert rows["onnx"]["status"] == "ok" and rows["onnx"]["max_abs_error"] < 1e-4
    assert (out / "model.onnx").stat().st_size > 1000


@pytest.mark.slow
def test_export_keras_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("keras")
    pytest.importorskip("ai_edge_litert")
    import os

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    from keras_callbacks.reference import build_digits_classifier

    path = tmp_path / "digits.keras"
    build_digits_classifier(width=0.5).save(path)
    out = tmp_path / "exports"
    assert main(["export", str(path), "--to", "tflite", "--output", str(out)]) == 0, capsys.readouterr()
    rows = _report(out)
    assert rows["tflite"]["status"] == "ok" and rows["tflite"]["top1_agreement"] == 1.0, rows
    assert (out / "model.tflite").stat().st_size > 1000


def test_failed_target_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A target that fails (or does not match) makes the exit status 1, with the report still written."""
    pytest.importorskip("onnxruntime")
    import exporters.targets.ncnn
    from tests.test_bad_inputs import _tiny_onnx

    def broken(job: Any) -> Any:
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(exporters.targets.ncnn.TARGET, "write", broken)
    model = _tiny_onnx(tmp_path / "tiny.onnx")
    out = tmp_path / "exports"
    assert main(["export", str(model), "--to", "onnx", "ncnn", "--output", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == f"fitslim export: ncnn failed (see {out / 'report.md'})"
    assert "Traceback" not in captured.err
    rows = _report(out)
    assert rows["onnx"]["status"] == "ok" and rows["ncnn"]["status"] == "failed"
    assert "converter crashed" in rows["ncnn"]["reason"]


@pytest.mark.slow
def test_export_two_integer_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An ExportedProgram taking token ids and a mask: one --input-shape and --input-dtype per input."""
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(50, 8)
            self.fc = torch.nn.Linear(8, 3)

        def forward(self, ids: Any, mask: Any) -> Any:
            h = self.emb(ids) * mask.unsqueeze(-1).float()
            return self.fc(h.sum(1) / mask.sum(1, keepdim=True).clamp(min=1).float())

    torch.manual_seed(0)
    ids, mask = torch.randint(0, 50, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    batch = torch.export.Dim("batch")
    program = torch.export.export(Pooled().eval(), (ids, mask), dynamic_shapes=({0: batch}, {0: batch}))
    torch.export.save(program, str(tmp_path / "pooled.pt2"))
    out = tmp_path / "exports"
    shapes = ["--input-shape", "1,6", "--input-shape", "1,6", "--input-dtype", "int64", "--input-dtype", "int64"]
    assert main(["export", str(tmp_path / "pooled.pt2"), "--to", "onnx", *shapes, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    rows = _report(out)
    assert rows["onnx"]["status"] == "ok" and rows["onnx"]["max_abs_error"] < 1e-4, rows
    assert "legacy" not in printed  # torch.export traced it: no fallback
    inputs = onnx.load(str(out / "model.onnx")).graph.input
    assert [(i.name, i.type.tensor_type.elem_type) for i in inputs] == [
        ("ids", onnx.TensorProto.INT64),
        ("mask", onnx.TensorProto.INT64),
    ]
