"""What both halves of :mod:`benchmarks.realdata` share: the recipe, the goals, the settings, the results, scoring.

The Lightning half (:mod:`benchmarks.realdata`, which also runs the command line and writes the table) and the Keras
half (:mod:`benchmarks.realdata_keras`) both import from here, so neither imports the other's internals.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.headline import time_interleaved

log = logging.getLogger("benchmarks.realdata")

__all__ = [
    "COLUMNS",
    "FP32_TARGETS",
    "GOALS",
    "INT8_TARGETS",
    "RECIPE",
    "RUNTIME",
    "Artifact",
    "Goal",
    "ModelResult",
    "Settings",
    "record_dense",
    "recipe",
    "score",
]

#: the compression recipe: the README's (examples/recipes/digits.yaml) with channel pruning, per layer;
#: ``distillation`` is dropped for the no-teacher arm and ``export`` gets its targets and directory per run
RECIPE: dict[str, Any] = {
    "version": 1,
    "pruning": {"sparsity": 0.5, "granularity": "channel", "scope": "layer", "schedule": "polynomial",
                "start": 0.0, "end": 0.5},
    "quantization": {"start": 0.6, "freeze_bn": 0.8, "freeze_observers": 0.9},
    "distillation": {"temperature": 1.0, "alpha": 0.5},
    "export": {"precision": "int8"},
}  # fmt: skip

INT8_TARGETS = ["onnx", "ncnn", "tflite", "tensorrt"]
FP32_TARGETS = ["onnx", "ncnn", "tflite"]
#: int8 target -> (runtime label, the dense fp32 target it is compared with)
RUNTIME = {
    "onnx": ("onnxruntime", "onnx"),
    "ncnn": ("ncnn", "ncnn"),
    "tflite": ("LiteRT", "tflite"),
    "tensorrt": ("TensorRT Q/DQ ONNX in onnxruntime", "onnx"),
}


@dataclass(frozen=True)
class Goal:
    """One goal: a measured quantity, its bound and the direction (``<=`` or ``>=``)."""

    name: str
    bound: float
    op: str = "<="
    unit: str = "x"

    def met(self, value: float | None) -> bool | None:
        """Whether ``value`` meets the goal (None when there is no value)."""
        if value is None:
            return None
        return value <= self.bound if self.op == "<=" else value >= self.bound

    def text(self) -> str:
        """The goal as a table cell."""
        unit = " pt" if self.unit == "pt" else "x"
        return f"{self.op} {self.bound:g}{unit}"


GOALS: dict[str, Goal] = {
    "accuracy drop": Goal("int8 artifact vs dense fp32 model, test accuracy drop", 0.5, "<=", "pt"),
    "accuracy floor": Goal("int8 artifact vs dense fp32 model, test accuracy drop (floor)", 1.0, "<=", "pt"),
    "parameters": Goal("parameters, compressed / dense", 0.35),
    "size": Goal("int8 file / dense fp32 file", 0.12),
    "latency onnx": Goal("latency, onnxruntime int8 / fp32", 0.5),
    "latency tflite": Goal("latency, LiteRT int8 / fp32", 0.5),
    "latency ncnn": Goal("latency, ncnn int8 / fp32", 0.6),
    "distillation": Goal("distillation gain, int8 ONNX test accuracy", 0.3, ">=", "pt"),
}

#: the table's columns (the test checks them)
COLUMNS = ("model", "quantity", "runtime", "dense fp32", "compressed int8", "measured", "goal", "status")


# ------------------------------------------------------------------------------------------------ settings


@dataclass
class Settings:
    """What one run does (recorded next to its results)."""

    frameworks: list[str]
    models: list[str]
    epochs: int
    student_epochs: int
    seeds: int
    train_subset: int | None
    student_subset: int | None
    test_subset: int | None
    batch_size: int
    lr: float
    student_lr: float
    threads: int
    rounds: int
    burst: int
    quick: bool
    out: str
    output: str | None = None
    #: when set, the with / without teacher comparison over the seeds fits the first ``gain_subset`` training
    #: images, and the headline artifacts come from one more fit (seed 0, teacher) on the student images
    gain_subset: int | None = None


def recipe(targets: Sequence[str], directory: Path, distil: bool) -> dict[str, Any]:
    """The compression recipe for one fit, with or without its ``distillation`` section.

    Args:
        targets: the export targets of this fit.
        directory: where ``Export`` writes the artifacts.
        distil: keep the ``distillation`` section (the teacher is then given to ``from_recipe``).
    """
    r = copy.deepcopy(RECIPE)
    if not distil:
        del r["distillation"]
    r["export"].update(targets=list(targets), directory=str(directory))
    return r


# ------------------------------------------------------------------------------------------------ torch


# ------------------------------------------------------------------------------------------------ results


@dataclass
class Artifact:
    """One exported artifact: file size, test accuracy in its runtime, single-sample latency."""

    target: str
    precision: str
    status: str
    size: int | None = None
    accuracy: float | None = None
    latency_ms: float | None = None
    reason: str = ""


@dataclass
class ModelResult:
    """Everything measured for one model of one framework."""

    framework: str
    model: str
    description: str
    dense_params: int = 0
    student_params: int = 0
    dense_accuracy: float = 0.0
    dense_seconds: float = 0.0
    dense_cached: bool = False
    student_accuracy: float = 0.0
    student_seconds: float = 0.0
    dense: dict[str, Artifact] = field(default_factory=dict)
    int8: dict[str, Artifact] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)
    kd: list[float] = field(default_factory=list)  # int8 ONNX test accuracy, with the teacher, per seed
    plain: list[float] = field(default_factory=list)  # the same without it
    kd_float: list[float] = field(default_factory=list)
    plain_float: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str = ""


def _artifacts(report: Any) -> dict[str, Artifact]:
    out: dict[str, Artifact] = {}
    for r in report:
        files = [Path(report.directory) / f for f in r.files]
        size = sum(f.stat().st_size for f in files if f.is_file()) if files else None
        out[r.target] = Artifact(r.target, r.precision, r.status, size, reason=r.reason[:300])
    return out


def score(results: dict[str, Artifact], report: Any, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64],
          threads: int) -> dict[str, Callable[[Any], Any]]:  # fmt: skip
    """Test accuracy of every written artifact in its own runtime; returns the loaded runners for timing."""
    from exporters.core import runtimes

    runners: dict[str, Callable[[Any], Any]] = {}
    for target, art in results.items():
        if art.status not in ("ok", "mismatch"):
            continue
        try:
            run = runtimes.runner(report, target, threads)
            out = run(x)
        except Exception as err:  # a runtime that cannot run its artifact is a failed row, not a crash
            art.status, art.reason = "failed", f"running in its runtime: {type(err).__name__}: {err}"[:300]
            continue
        art.accuracy = float((out.reshape(len(out), -1).argmax(1) == y).mean())
        runners[target] = run
    return runners


def _time(pairs: list[tuple[Artifact, Callable[[Any], Any]]], x1: npt.NDArray[np.float32], s: Settings) -> None:
    import torch

    torch.set_num_threads(s.threads)
    times = time_interleaved([r for _, r in pairs], x1, s.rounds, s.burst)
    for (art, _), t in zip(pairs, times, strict=True):
        art.latency_ms = statistics.median(t)


def record_dense(res: ModelResult, dense: Any, accuracy: float, params: int, x_model: Any, x_runtime: Any,
                 y_test: Any, out: Path, s: Settings) -> dict[str, Callable[[Any], Any]]:  # fmt: skip
    """Record the dense model's accuracy and size, export it fp32 and score each file; returns the runners.

    Args:
        res: the result to fill in.
        dense: the trained dense model (torch or Keras).
        accuracy: its test accuracy; params: its parameter count.
        x_model: test images in the model's layout (export example and verification samples).
        x_runtime: the same images in the runtimes' layout (NCHW).
        y_test: test labels.
        out: the model's output folder.
        s: the run's settings.
    """
    from exporters import export

    res.dense_accuracy, res.dense_params = accuracy, params
    log.info("%s: dense test accuracy %.2f%% (%d params)", res.model, 100 * accuracy, params)
    report = export(dense, FP32_TARGETS, example_input=x_model[:1], precision="fp32", directory=out / "dense-fp32",
                    threads=s.threads, samples=x_model[:64])  # fmt: skip
    res.dense = _artifacts(report)
    return score(res.dense, report, x_runtime, y_test, s.threads)


def _cache_key(framework: str, name: str, s: Settings, size: int) -> str:
    key = json.dumps([framework, name, size, s.epochs, s.train_subset, s.batch_size, s.lr, s.quick], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:12]
