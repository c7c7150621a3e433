"""What every target exporter receives: the source, the shared ONNX, the samples and the int8 scales.

A target function has the signature ``def export_<target>(job: ExportJob) -> TargetResult``; it writes
its artifacts into ``job.directory`` atomically (temporary name, then rename), verifies them in their
runtime against ``job.reference`` when ``job.verify`` is set, and raises on failure (the orchestrator
turns the exception into a failed row of the report and goes on with the other targets).

Example:
    >>> # result = export_ncnn(job)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from exporters.core.quant import QuantTable
from exporters.core.source import Source
from exporters.core.verify import nchw_to_nhwc, nhwc_to_nchw
from fitslim.quantspec import QuantSpec

__all__ = ["ExportJob"]


@dataclass
class ExportJob:
    """Everything a target needs.

    Args:
        source: the model being exported.
        onnx_path: the shared fp32 ONNX: one file, BatchNorm folded, dynamic batch, NCHW image input.
        input_shape: the ONNX input shape with batch 1 (NCHW for images).
        directory: where artifacts go.
        workdir: scratch space, removed after the export.
        precision: ``fp32``, ``fp16`` or ``int8``.
        samples: verification inputs in the source's layout.
        reference: the source model's outputs on ``samples``.
        quant: the int8 scales (``precision == "int8"`` only).
        calibration: calibration inputs in the source's layout (may be None when a QuantSpec was given).
        verify: run the artifact in its runtime and compare.
        threads: runtime threads for verification and latency.
        basename: artifact file stem.
        tflite_int8: an int8 TFLite conversion supplied by the caller (``(model, spec, representative NHWC)
            -> bytes``): the Keras QAT callback passes one that keeps its learned ranges.
        onnx_error: why the shared ONNX could not be built (``onnx_path`` then does not exist); the
            targets that start from it fail with this reason, TFLite still runs.
        ncnn_keep_float: ncnn layer types the ncnn int8 model keeps in fp32 (``("ConvolutionDepthWise",)``
            for ``export(..., ncnn_depthwise="float")``).
        onnx_weights: the ``onnx`` int8 artifact's weight storage, ``"int8"`` or ``"uint8"``; None: this CPU's
            (``export(..., onnx_weights=...)``).
        latency: time an fp16 / int8 artifact against an fp32 peer for the report's latency verdict
            (``export(..., latency=...)``).
    """

    source: Source
    onnx_path: Path
    input_shape: tuple[int, ...]
    directory: Path
    workdir: Path
    precision: str
    samples: npt.NDArray[np.float32]
    reference: npt.NDArray[np.float32]
    quant: QuantTable | None = None
    calibration: npt.NDArray[np.float32] | None = None
    verify: bool = True
    threads: int = 2
    basename: str = "model"
    notes: list[str] = field(default_factory=list)
    tflite_int8: Callable[[Any, QuantSpec, npt.NDArray[np.float32]], bytes] | None = None
    onnx_error: str | None = None
    ncnn_keep_float: tuple[str, ...] = ()
    onnx_weights: str | None = None
    latency: bool = True

    def samples_nchw(self) -> npt.NDArray[np.float32]:
        """Verification inputs in NCHW (the ONNX / ncnn layout)."""
        return self.samples if self.source.layout == "NCHW" else nhwc_to_nchw(self.samples)

    def samples_nhwc(self) -> npt.NDArray[np.float32]:
        """Verification inputs in NHWC (the TFLite layout)."""
        return self.samples if self.source.layout == "NHWC" else nchw_to_nhwc(self.samples)

    def calibration_nchw(self) -> npt.NDArray[np.float32] | None:
        """Calibration inputs in NCHW, or None."""
        if self.calibration is None:
            return None
        return self.calibration if self.source.layout == "NCHW" else nhwc_to_nchw(self.calibration)

    def calibration_nhwc(self) -> npt.NDArray[np.float32] | None:
        """Calibration inputs in NHWC, or None."""
        if self.calibration is None:
            return None
        return self.calibration if self.source.layout == "NHWC" else nchw_to_nhwc(self.calibration)

    def artifact(self, suffix: str) -> Path:
        """The final path of an artifact, e.g. ``artifact(".int8.param")``."""
        return self.directory / f"{self.basename}{suffix}"
