"""The target interface (exporters.core.target): the core verifies, judges and times every target's artifact itself,
and re-runs a report's artifacts through the targets' own runners."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch", reason="torch not installed")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed")

import torch

from exporters import export
from exporters.core import runtimes
from exporters.core.job import ExportJob
from exporters.core.report import ExportReport, TargetResult
from exporters.core.target import Artifact, Runner, lookup, registered


class _Fake:
    """A runner that computes the source model's outputs, shifted by ``offset``, and counts its timed calls."""

    def __init__(self, model: torch.nn.Module, offset: float) -> None:
        self.model, self.offset, self.timed_calls = model, offset, 0

    def __call__(self, x: Any) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.from_numpy(np.asarray(x))).numpy() + self.offset

    def timed(self, one: Any) -> Callable[[], object]:
        def run() -> object:
            self.timed_calls += 1
            return self(one)

        return run


def _tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(144, 5))


def _fake_target(monkeypatch: pytest.MonkeyPatch, runner: Runner) -> list[Path]:
    """Replace the ncnn target by a writer with no verification code of its own and ``runner``."""
    loaded: list[Path] = []

    def write(job: ExportJob) -> Artifact:
        path = job.workdir / "fake.bin"
        path.write_bytes(b"fake")
        return Artifact(TargetResult("ncnn", job.precision, runtime="fake"), [path], finals=[job.artifact(".fake")])

    def load(paths: Sequence[Path], precision: str, threads: int, batch: int = 256) -> Runner:
        loaded.extend(paths)
        return runner

    target = lookup("ncnn")
    monkeypatch.setattr(target, "write", write)
    monkeypatch.setattr(target, "runner", load)
    monkeypatch.setattr(target, "suffixes", (".fake",))
    return loaded


@pytest.mark.parametrize("offset, status", [(0.0, "ok"), (1.0, "mismatch")])
def test_the_core_verifies_and_times_a_target_that_does_not(
    offset: float, status: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _tiny().eval()
    fake = _Fake(model, offset)
    loaded = _fake_target(monkeypatch, fake)
    x = np.random.default_rng(0).random((6, 1, 8, 8), dtype=np.float32)
    row = export(model, ["ncnn"], example_input=x[:1], samples=x, directory=tmp_path)["ncnn"]
    assert row.status == status, row
    assert row.max_abs_error == pytest.approx(offset, abs=1e-5)
    assert row.latency_ms is not None and row.latency_ms > 0 and fake.timed_calls > 0  # timed by the core
    assert [p.name for p in loaded] == ["fake.bin"]  # checked in scratch, then installed under its final name
    assert row.files == ["model.fake"] and (tmp_path / "model.fake").read_bytes() == b"fake"
    # the report's artifact runs again through the same target runner
    assert np.array_equal(runtimes.predict(ExportReport.load(tmp_path), "ncnn", x), fake(x))


def test_every_target_is_registered_with_a_runner() -> None:
    assert sorted(registered()) == ["ncnn", "onnx", "tensorrt", "tflite"]
    assert lookup("ncnn").suffixes == (".param", ".bin") and lookup("tflite").layout == "source"
    with pytest.raises(ValueError, match=r"target 'coreml': no runtime for it; choose ncnn, onnx, tensorrt, tflite"):
        lookup("coreml")
