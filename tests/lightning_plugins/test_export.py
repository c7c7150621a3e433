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

import lightning_plugins.export as lightning_export
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
    # verified on the datamodule's validation loader (batches of 256), at most 256 samples
    assert r.samples == 256 and cb.report.verification == "256 validation samples"
    assert r.max_rel_error is not None and r.max_rel_error <= 1e-4 and r.top1_agreement == 1.0
    assert (tmp_path / "exports" / "model.onnx").is_file()
    assert json.loads((tmp_path / "exports" / "report.json").read_text())["results"][0]["status"] == "ok"
    assert module.training  # Lightning's own mode after fit is kept


@pytest.mark.slow
def test_export_failure_never_breaks_fit_or_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import exporters.core.onnx_hub as onnx_export

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
    from lightning_plugins.models import torch_model

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
    n = report["results"][0]["samples"]  # rank zero's share of one validation batch
    assert report["results"][0]["status"] == "ok" and report["verification"] == f"{n} validation samples"
    assert np.isfinite(report["results"][0]["max_rel_error"])


class _Unique(pl.LightningDataModule):  # type: ignore[name-defined]
    """Random 8x8 inputs, every one distinct, so which samples calibrated and which verified can be told apart."""

    def __init__(self) -> None:
        super().__init__()
        rng = np.random.default_rng(0)
        self.x = torch.from_numpy(rng.random((160, 1, 8, 8), dtype=np.float32))
        self.y = torch.from_numpy(rng.integers(0, 10, 160))

    def train_dataloader(self) -> Any:
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(self.x[:128], self.y[:128]), batch_size=16)


class _UniqueWithValidation(_Unique):
    def val_dataloader(self) -> Any:
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(self.x[128:], self.y[128:]), batch_size=16)


def _rows(a: Any) -> set[bytes]:
    return {np.asarray(r, np.float32).tobytes() for r in np.asarray(a)}


@pytest.mark.slow
@pytest.mark.parametrize("validation", [True, False])
def test_verification_is_held_out_from_calibration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, export_spy: dict[str, Any], validation: bool
) -> None:
    """Calibration and verification samples are disjoint: the validation loader's when there is one, else the
    training batches after the calibration ones; the report says which."""
    seen = export_spy
    logged: dict[str, float] = {}
    monkeypatch.setattr(lightning_export, "log_metrics", lambda trainer, metrics: logged.update(metrics))
    data = _UniqueWithValidation() if validation else _Unique()
    cb = Export(targets=["onnx"], precision="int8", directory=tmp_path / "exports", calibration_batches=2)
    _trainer(tmp_path, [cb], limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0).fit(
        DigitsClassifier(), data
    )
    assert cb.report is not None and cb.report.ok, cb.report
    calibration = np.concatenate([np.asarray(b) for b in seen["calibration"]])
    samples = np.asarray(seen["samples"])
    assert len(calibration) == 32 and _rows(calibration) <= _rows(data.x[:128])
    assert not _rows(calibration) & _rows(samples)
    if validation:  # the whole validation loader, 2 batches of 16
        assert _rows(samples) == _rows(data.x[128:]) and cb.report.verification == "32 validation samples"
    else:  # the training batches after the two calibration ones
        assert _rows(samples) <= _rows(data.x[:128]) and len(samples) == 32
        assert cb.report.verification == "32 training samples not used for calibration"
    assert cb.report["onnx"].samples == 32
    # the int8 artifact's latency verdict against fp32 reaches the loggers
    ratio = cb.report["onnx"].latency_ratio
    assert ratio is not None and logged["export/onnx/latency_ratio"] == ratio
    assert logged["export/onnx/slower_than_fp32"] == float(cb.report["onnx"].latency_verdict == "slower")
    assert "Verified on 32" in (tmp_path / "exports" / "report.md").read_text()


def test_verify_data_is_checked_and_passed_on() -> None:
    with pytest.raises(TypeError, match=r"Export\(verify_data=...\)"):
        Export(verify_data="val.npy")
    x = np.zeros((4, 1, 8, 8), np.float32)
    samples, what = Export(verify_data=x).settings.verification([], None)
    assert samples is not None and samples.shape == (4, 1, 8, 8) and what == "samples of verify_data"
