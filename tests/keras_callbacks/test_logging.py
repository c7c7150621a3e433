"""Every Keras callback's figures reach ``logs``: read back from ``CSVLogger``'s file and TensorBoard's events.

One short ``model.fit`` with ``QuantizationAware``, ``Distillation`` and ``Export`` (ONNX), a ``CSVLogger`` and a
``TensorBoard`` callback, and validation data; the test reads the CSV rows and the event files back and checks
the values against what the callbacks hold (the QAT timeline and learned ranges, the combined loss formula and
Keras' own ``loss``, the export report and the files on disk).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="keras not installed")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
pytest.importorskip("tensorboard", reason="tensorboard not installed")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.util.tensor_util import make_ndarray  # noqa: E402

from fitslim.metrics import EXPORT_STATUS, QAT_PHASES  # noqa: E402
from keras_callbacks import Distillation, Export, QuantizationAware  # noqa: E402
from keras_callbacks.reference import build_digits_classifier  # noqa: E402

ALPHA = 0.7
STEPS_PER_EPOCH = 8


def _events(path: Path) -> EventAccumulator:
    acc = EventAccumulator(str(path), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


def _values(acc: EventAccumulator, tag: str) -> list[float]:
    return [float(make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    from fitslim.data import digits

    root = tmp_path_factory.mktemp("keras_logging")
    data = digits(size=8, layout="NHWC")
    keras.utils.set_random_seed(0)
    student, teacher = build_digits_classifier(width=0.5), build_digits_classifier(width=1.0)
    qat = QuantizationAware(start=0.25, freeze_observers=0.75, freeze_bn=0.5)
    distill = Distillation(teacher, temperature=2.0, alpha=ALPHA)
    export = Export(targets=["onnx"], precision="fp32", directory=root / "exports", calibration_batches=2, threads=1)
    end_logs: dict[str, Any] = {}
    history = student.fit(
        data.x_train[: 64 * STEPS_PER_EPOCH],
        data.y_train[: 64 * STEPS_PER_EPOCH],
        batch_size=64,
        epochs=2,
        validation_data=(data.x_val[:128], data.y_val[:128]),
        verbose=0,
        callbacks=[
            qat,
            distill,
            export,
            keras.callbacks.LambdaCallback(on_train_end=lambda logs: end_logs.update(logs or {})),
            keras.callbacks.CSVLogger(str(root / "log.csv")),
            keras.callbacks.TensorBoard(str(root / "tb"), update_freq="batch"),
        ],
    )
    with (root / "log.csv").open(newline="") as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return SimpleNamespace(
        qat=qat, export=export, rows=rows, end_logs=end_logs, history=history.history, tb=root / "tb"
    )


@pytest.mark.slow
def test_qat_phase_and_ranges_in_csv_and_tensorboard(fitted: SimpleNamespace) -> None:
    # 16 steps: fake-quant from step 4, BN frozen from 8, observers frozen from 12; epoch logs see steps 7 and 15
    assert [r["qat/phase"] for r in fitted.rows] == [float(QAT_PHASES["quantize"]), float(QAT_PHASES["frozen"])]
    assert [r["qat/bn_frozen"] for r in fitted.rows] == [0.0, 1.0]
    ranges = [layer.input_scale * 127 for layer in fitted.qat.quant_spec]
    last = fitted.rows[-1]
    assert last["qat/observed_layers"] == len(ranges)
    assert math.isclose(last["qat/input_range/max"], max(ranges), rel_tol=1e-5)
    assert math.isclose(last["qat/input_range/min"], min(ranges), rel_tol=1e-5)
    train = _events(fitted.tb / "train")
    batch_phase = _values(train, "batch_qat/phase")
    assert batch_phase == [0.0] * 4 + [2.0] * 8 + [3.0] * 4
    assert _values(train, "epoch_qat/input_range/max") == pytest.approx([r["qat/input_range/max"] for r in fitted.rows])


@pytest.mark.slow
def test_distillation_losses_in_csv_and_tensorboard(fitted: SimpleNamespace) -> None:
    for row in fitted.rows:
        assert math.isclose(row["combined_loss"], (1 - ALPHA) * row["task_loss"] + ALPHA * row["kd_loss"], rel_tol=1e-5)
        assert math.isclose(row["combined_loss"], row["loss"], rel_tol=1e-5)  # Keras' loss tracker saw the same
        assert row["kd_loss"] > 0.0
    assert "val_loss" in fitted.rows[0] and not {"val_kd_loss", "val_task_loss"} & fitted.rows[0].keys()
    train = _events(fitted.tb / "train")
    assert _values(train, "epoch_kd_loss") == pytest.approx([r["kd_loss"] for r in fitted.rows])
    assert fitted.history["combined_loss"] == pytest.approx([r["combined_loss"] for r in fitted.rows])


@pytest.mark.slow
def test_export_report_in_logs_and_tensorboard(fitted: SimpleNamespace) -> None:
    report = fitted.export.report
    onnx = report["onnx"]
    assert onnx.ok, report
    on_disk = sum((Path(report.directory) / f).stat().st_size for f in onnx.files)
    assert fitted.end_logs["export/onnx/status"] == EXPORT_STATUS["ok"]
    assert fitted.end_logs["export/onnx/size_bytes"] == on_disk == onnx.size_bytes
    assert fitted.end_logs["export/onnx/max_abs_error"] == pytest.approx(onnx.max_abs_error)
    events = _events(fitted.tb / "export")
    assert _values(events, "export/onnx/size_bytes") == [on_disk]
    assert _values(events, "export/onnx/latency_ms") == pytest.approx([onnx.latency_ms])
    (text,) = events.Tensors("export/report.md")
    markdown = np.asarray(make_ndarray(text.tensor_proto)).item().decode()
    assert markdown == (Path(report.directory) / "report.md").read_text(encoding="utf-8")
