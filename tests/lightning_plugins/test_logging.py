"""Every callback's figures reach the trainer's loggers: read back from CSVLogger's file and TensorBoard's events.

One short fit with ``QuantizationAware``, ``Distillation`` and ``Export`` (ONNX),
logged by a ``CSVLogger`` and a ``TensorBoardLogger`` at once; the test then reads ``metrics.csv`` and the event
files back and checks the values against what the callbacks hold (the QAT timeline, the combined loss formula,
the export report and the files on disk).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("lightning", reason="lightning not installed")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytest.importorskip("tensorboard", reason="tensorboard not installed")

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from exporters.core.report import ExportReport, TargetResult
from fitslim.metrics import EXPORT_STATUS, QAT_PHASES
from lightning_plugins import Distillation, Export, QuantizationAware
from lightning_plugins._compat import pl
from lightning_plugins.reference import DigitsClassifier, DigitsDataModule

STEPS = 8
ALPHA = 0.7


def _csv_rows(path: Path) -> list[dict[str, float]]:
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def _series(rows: list[dict[str, float]], key: str) -> list[tuple[int, float]]:
    return sorted((int(r["step"]), r[key]) for r in rows if key in r)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("logging")
    pl.seed_everything(0)
    qat = QuantizationAware(start=0.25, calibration_steps=2, freeze_observers=0.75, freeze_bn=0.5)
    distill = Distillation(DigitsClassifier(width=1.0), temperature=2.0, alpha=ALPHA)
    export = Export(targets=["onnx"], precision="fp32", directory=root / "exports", calibration_batches=2, threads=1)
    csv_logger = pl.loggers.CSVLogger(root, name="csv")
    tb_logger = pl.loggers.TensorBoardLogger(root, name="tb")
    trainer = pl.Trainer(
        max_epochs=1,
        limit_train_batches=STEPS,
        limit_val_batches=0,
        accelerator="cpu",
        devices=1,
        log_every_n_steps=1,
        logger=[csv_logger, tb_logger],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        callbacks=[qat, distill, export],
    )
    trainer.fit(DigitsClassifier(width=0.5), DigitsDataModule(batch_size=32))
    csv_logger.save()
    tb_logger.experiment.flush()
    rows = _csv_rows(Path(csv_logger.log_dir) / "metrics.csv")
    events = EventAccumulator(tb_logger.log_dir, size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return SimpleNamespace(qat=qat, export=export, rows=rows, events=events, root=root)


def _tb_scalars(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(e.step, e.value) for e in events.Scalars(tag)]


@pytest.mark.slow
def test_qat_phase_and_ranges_in_csv_and_tensorboard(fitted: SimpleNamespace) -> None:
    phases = [v for _, v in _series(fitted.rows, "qat/phase")]
    # start 0.25 -> step 2, two calibration batches, observers frozen at 0.75 -> step 6
    expected = ["float"] * 2 + ["calibrate"] * 2 + ["quantize"] * 2 + ["frozen"] * 2
    assert phases == [float(QAT_PHASES[p]) for p in expected]
    assert [v for _, v in _series(fitted.rows, "qat/bn_frozen")] == [0.0] * 4 + [1.0] * 4
    observed = [v for _, v in _series(fitted.rows, "qat/observed_layers")]
    assert observed[:2] == [0.0, 0.0] and observed[2:] == [float(len(fitted.qat.quant_spec))] * 6
    # the last logged range summary is the one the exported scales come from (observers frozen since step 6)
    spec = fitted.qat.quant_spec
    ranges = [layer.input_scale * 127 for layer in spec]
    last_max = _series(fitted.rows, "qat/input_range/max")[-1][1]
    last_min = _series(fitted.rows, "qat/input_range/min")[-1][1]
    assert math.isclose(last_max, max(ranges), rel_tol=1e-5) and math.isclose(last_min, min(ranges), rel_tol=1e-5)
    assert [v for _, v in _tb_scalars(fitted.events, "qat/phase")] == phases


@pytest.mark.slow
def test_distillation_losses_in_csv_and_tensorboard(fitted: SimpleNamespace) -> None:
    task, kd = dict(_series(fitted.rows, "task_loss")), dict(_series(fitted.rows, "kd_loss"))
    combined = dict(_series(fitted.rows, "combined_loss"))
    assert len(combined) == STEPS and combined.keys() == task.keys() == kd.keys()
    for step, value in combined.items():
        assert math.isclose(value, (1 - ALPHA) * task[step] + ALPHA * kd[step], rel_tol=1e-5), step
    assert [v for _, v in _tb_scalars(fitted.events, "combined_loss")] == pytest.approx(list(combined.values()))
    assert {"task_loss_epoch", "kd_loss_epoch", "combined_loss_epoch"} <= {k for r in fitted.rows for k in r}


@pytest.mark.slow
def test_export_report_in_csv_and_tensorboard(fitted: SimpleNamespace) -> None:
    report = fitted.export.report
    onnx = report["onnx"]
    assert onnx.ok and onnx.precision == "fp32", report
    (row,) = [r for r in fitted.rows if "export/onnx/status" in r]
    assert row["export/onnx/status"] == EXPORT_STATUS["ok"] and row["export/targets_ok"] == 1.0
    on_disk = sum((Path(report.directory) / f).stat().st_size for f in onnx.files)
    assert row["export/onnx/size_bytes"] == on_disk == onnx.size_bytes
    assert row["export/onnx/latency_ms"] == pytest.approx(onnx.latency_ms)
    assert row["export/onnx/max_abs_error"] == pytest.approx(onnx.max_abs_error)
    assert _tb_scalars(fitted.events, "export/onnx/size_bytes")[0][1] == on_disk
    (text,) = fitted.events.Tensors("export/report.md/text_summary")
    markdown = text.tensor_proto.string_val[0].decode()
    assert markdown == (Path(report.directory) / "report.md").read_text(encoding="utf-8")


class _Experiment:
    """The parts of an MLflow client / W&B run that ``Export`` uses, recording the calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        self.calls.append((run_id, Path(local_path).name, str(artifact_path)))


class _Run:
    def __init__(self) -> None:
        self.saved: list[tuple[str, str]] = []

    def log(self, data: dict[str, Any]) -> None:
        pass

    def save(self, path: str, base_path: str | None = None, policy: str = "live") -> None:
        self.saved.append((Path(path).name, policy))


class _StubLogger:
    def __init__(self, experiment: Any, run_id: str | None = None) -> None:
        self.experiment, self.metrics = experiment, []  # type: ignore[var-annotated]
        if run_id is not None:
            self.run_id = run_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.append((step, metrics))


def test_report_files_become_mlflow_artifacts_and_wandb_files(tmp_path: Path) -> None:
    result = TargetResult("onnx", "fp32", status="failed", reason="RuntimeError: no")
    report = ExportReport([result], source="m", directory=str(tmp_path))
    report.save()
    mlflow, wandb = _StubLogger(_Experiment(), run_id="run-1"), _StubLogger(_Run())
    trainer = SimpleNamespace(is_global_zero=True, global_step=5, loggers=[mlflow, wandb])
    Export._log_report(trainer, report)
    assert mlflow.experiment.calls == [("run-1", "report.md", "export"), ("run-1", "report.json", "export")]
    assert wandb.experiment.saved == [("report.md", "now"), ("report.json", "now")]
    expected = {"export/onnx/status": EXPORT_STATUS["failed"], "export/targets_ok": 0.0}
    assert mlflow.metrics == wandb.metrics == [(5, expected)]
    trainer.is_global_zero = False
    Export._log_report(trainer, report)
    assert len(mlflow.metrics) == 1 and len(mlflow.experiment.calls) == 2


def test_qat_metrics_before_fit_and_export_metrics_keys() -> None:
    from fitslim.metrics import export_metrics, qat_metrics

    assert QuantizationAware().metrics() == {}
    assert qat_metrics("calibrate", True, [None, 0.0]) == {
        "qat/phase": 1.0,
        "qat/bn_frozen": 1.0,
        "qat/observed_layers": 0.0,
        "qat/input_range/min": 0.0,
        "qat/input_range/mean": 0.0,
        "qat/input_range/max": 0.0,
    }
    assert qat_metrics("frozen", False, [2.0, None, 4.0])["qat/input_range/mean"] == 3.0
    with pytest.raises(ValueError, match=r"qat_metrics\(phase=...\): unknown 'warm'"):
        qat_metrics("warm", False, [])
    rows = [TargetResult("onnx", "fp32", size_bytes=10), TargetResult("onnx", "int8", status="skipped")]
    got = export_metrics(ExportReport(rows))
    assert got == {
        "export/onnx_fp32/status": 1.0,
        "export/onnx_fp32/size_bytes": 10.0,
        "export/onnx_int8/status": 0.0,
        "export/targets_ok": 1.0,
    }
    assert torch.isfinite(torch.tensor(list(got.values()))).all()
