"""All four Lightning callbacks in one fit: the student is pruned and quantized while distilled, then exported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lightning", reason="lightning not installed")

import torch
from torch import nn

from lightning_plugins import Distillation, Export, Pruning, QuantizationAware
from lightning_plugins._compat import pl
from lightning_plugins.models import torch_model
from lightning_plugins.reference import DigitsClassifier, DigitsDataModule


class _Spy(pl.Callback):  # type: ignore[name-defined]
    """Records the loss each training step returned, and the zeros of the pruned weights after each step."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.losses.append(float(outputs["loss"]))


@pytest.mark.slow
def test_prune_quantize_distill_and_export_in_one_fit(tmp_path: Path) -> None:
    pl.seed_everything(0)
    teacher = torch_model("digits_cnn", width=2.0).eval()
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = DigitsClassifier(width=1.0)
    prune = Pruning(sparsity=0.5, granularity="unstructured", end=0.4, frequency=2)
    qat = QuantizationAware(start=0.5, freeze_bn=0.8, freeze_observers=0.9, calibration_steps=2)
    distil = Distillation(teacher, temperature=2.0, alpha=0.5)
    export = Export(
        targets=["onnx", "tensorrt"], precision="int8", directory=tmp_path / "exports", calibration_batches=2
    )
    spy = _Spy()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_train_batches=8,
        limit_val_batches=1,
        log_every_n_steps=1,
        default_root_dir=str(tmp_path),
        callbacks=[prune, qat, distil, export, spy],
    )
    trainer.fit(student, DigitsDataModule(batch_size=32))
    # pruned to exactly half and still zero after quantization-aware training baked the int8 grid
    weights = [m.weight for m in student.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    total = sum(w.numel() for w in weights)
    assert sum(int((w == 0).sum()) for w in weights) == round(0.5 * total)
    # distillation was active: its losses were logged and every step returned a finite combined loss
    assert "kd_loss" in trainer.callback_metrics and torch.isfinite(trainer.callback_metrics["kd_loss"])
    assert len(spy.losses) == 16 and all(torch.isfinite(torch.tensor(spy.losses)))
    # the teacher is untouched (weights and BN statistics; its mode and flags are restored after fit)
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    assert not teacher.training
    assert not any(p is q for p in student.parameters() for q in teacher.parameters())
    # QAT produced a spec that the exporter used exactly
    assert qat.quant_spec is not None and len(qat.quant_spec) == 5
    report = export.report
    assert report is not None and report.ok, report
    assert "learned QuantSpec (5 layers) used exactly" in report["tensorrt"].scales
