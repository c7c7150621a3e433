"""Lightning ``Export``: fit-end export from the trainer's own data, rank zero only, failures lose nothing."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("lightning", reason="lightning not installed")

import torch

from fitslim.quantspec import QuantSpec
from lightning_plugins import Export
from lightning_plugins._compat import pl
from lightning_plugins.reference import DigitsClassifier, DigitsDataModule


def _trainer(tmp_path: Path, callbacks: list[Any], **kw: Any) -> Any:
    return pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=callbacks,
        **kw,
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"targets": ["onnx", "coreml"]}, r"Export\(targets=...\): unknown \['coreml'\]"),
        ({"targets": []}, r"Export\(targets=...\)"),
        ({"precision": "int4"}, r"Export\(precision=...\): unknown 'int4'"),
        ({"calibration_batches": 0}, r"Export\(calibration_batches=...\)"),
        ({"threads": -1}, r"Export\(threads=...\)"),
    ],
)
def test_constructor_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Export(**kwargs)
    with pytest.raises(TypeError, match=r"Export\(quant_spec=...\)"):
        Export(quant_spec={"layers": []})  # type: ignore[arg-type]


@pytest.mark.slow
def test_fit_end_export_uses_training_batches(tmp_path: Path) -> None:
    pl.seed_everything(0)
    cb = Export(targets=["onnx"], directory=tmp_path / "exports", calibration_batches=3)
    module = DigitsClassifier()
    _trainer(tmp_path, [cb], limit_train_batches=5, limit_val_batches=1).fit(module, DigitsDataModule(batch_size=16))
    assert cb.report is not None and cb.report.ok, cb.report
    r = cb.report["onnx"]
    assert r.samples == 48  # 3 training batches of 16
    assert r.max_rel_error is not None and r.max_rel_error <= 1e-4 and r.top1_agreement == 1.0
    assert (tmp_path / "exports" / "model.onnx").is_file()
    assert json.loads((tmp_path / "exports" / "report.json").read_text())["results"][0]["status"] == "ok"
    assert module.training  # Lightning's own mode after fit is kept


@pytest.mark.slow
def test_export_failure_never_breaks_fit_or_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import exporters.onnx_export as onnx_export

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(onnx_export, "to_onnx", boom)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt")
    cb = Export(targets=["onnx"], directory=tmp_path / "exports")
    module = DigitsClassifier()
    _trainer(tmp_path, [ckpt, cb], limit_train_batches=2, limit_val_batches=1).fit(module, DigitsDataModule())
    assert cb.report is not None and not cb.report.ok
    assert "exporter exploded" in cb.report["onnx"].reason
    saved = torch.load(ckpt.best_model_path, weights_only=False)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in module.state_dict().items())  # weights kept
    assert not (tmp_path / "exports" / "model.onnx").exists()


def test_non_zero_rank_does_nothing(tmp_path: Path) -> None:
    cb = Export(targets=["onnx"], directory=tmp_path)
    cb.on_fit_end(SimpleNamespace(is_global_zero=False), DigitsClassifier())
    assert cb.report is None and list(tmp_path.iterdir()) == []


def test_quant_spec_found_on_a_qat_callback() -> None:
    from lightning_plugins.export import _find_quant_spec

    spec = QuantSpec()
    trainer = SimpleNamespace(callbacks=[object(), SimpleNamespace(quant_spec=spec)])
    assert _find_quant_spec(trainer, object()) is spec
    assert _find_quant_spec(SimpleNamespace(callbacks=[]), SimpleNamespace(quant_spec=spec)) is spec
    assert _find_quant_spec(SimpleNamespace(callbacks=[]), object()) is None


@pytest.mark.slow
def test_pytorch_lightning_namespace_trainer_runs_the_callback(tmp_path: Path) -> None:
    ptl = pytest.importorskip("pytorch_lightning", reason="pytorch_lightning not installed")
    from fitslim.data import digits
    from fitslim.models import torch_model

    class Plain(ptl.LightningModule):  # a user module written against pytorch_lightning
        def __init__(self) -> None:
            super().__init__()
            self.net = torch_model("digits_cnn", width=0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, _: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    d = digits()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(d.x_train[:64]), torch.from_numpy(d.y_train[:64])),
        batch_size=32,
    )
    cb = Export(targets=["onnx"], directory=tmp_path / "exports", calibration_batches=2)
    trainer = ptl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        callbacks=[cb],
    )
    trainer.fit(Plain(), loader)
    assert cb.report is not None and cb.report["onnx"].ok and cb.report["onnx"].samples == 64


@pytest.mark.slow
def test_ddp_spawn_exports_once_on_rank_zero(tmp_path: Path) -> None:
    cb = Export(targets=["onnx"], directory=tmp_path / "exports", calibration_batches=1)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_train_batches=2,
        limit_val_batches=1,
        callbacks=[cb],
    )
    trainer.fit(DigitsClassifier(), DigitsDataModule(batch_size=8))
    files = sorted(p.name for p in (tmp_path / "exports").iterdir())
    assert files == ["model.onnx", "report.json", "report.md"]  # one set, no scratch or partial files
    report = json.loads((tmp_path / "exports" / "report.json").read_text())
    assert report["results"][0]["status"] == "ok" and report["results"][0]["samples"] == 8
    assert np.isfinite(report["results"][0]["max_rel_error"])
