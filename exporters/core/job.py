"""What every target receives: the export options, and the job built from them once (source, shared ONNX, samples,
int8 scales).

:class:`ExportOptions` holds the arguments of :func:`exporters.export`, validated once when it is built; the
orchestrator passes it down whole, and :class:`ExportJob` carries it to every target (``job.options``). A target's
writer (:class:`exporters.core.target.Target`) turns the job into artifact files; the core verifies them.

Example:
    >>> options = ExportOptions(targets=["onnx", "ncnn"], precision="int8", ncnn_depthwise="float")
    >>> options.targets, options.ncnn_keep_float, options.onnx_weight_type
    (['onnx', 'ncnn'], ('ConvolutionDepthWise',), None)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from exporters.core.quant import QuantTable
from exporters.core.source import Source
from exporters.core.verify import nchw_to_nhwc, nhwc_to_nchw
from fitslim.callback_spec import ONNX_WEIGHT_TYPES, check_export_options
from fitslim.quantspec import QuantSpec

__all__ = ["MAX_SAMPLES", "NCNN_DEPTHWISE", "ONNX_WEIGHTS", "OPSET", "OPSETS", "ExportJob", "ExportOptions"]

#: ``export(..., ncnn_depthwise=...)``: the ncnn layer types each choice keeps in fp32 in an int8 model
NCNN_DEPTHWISE: dict[str, tuple[str, ...]] = {"int8": (), "float": ("ConvolutionDepthWise",)}
#: ``export(..., onnx_weights=...)``: how the ``onnx`` int8 artifact stores its weights (``auto``: this CPU's
#: choice, :func:`exporters.targets.onnx_int8.weight_type`)
ONNX_WEIGHTS = ONNX_WEIGHT_TYPES
#: how many verification samples are compared at most
MAX_SAMPLES = 256
#: ``export(..., opset=...)``: the ONNX opset of the shared ONNX (and so of the onnx / tensorrt artifacts and the
#: graph pnnx converts for ncnn) by default
OPSET = 18
#: the opsets ``export(..., opset=...)`` accepts: 13 (per-channel Q/DQ, TensorRT's lowest) to 21 (the newest
#: the ONNX converters and onnxruntime here all write and run)
OPSETS = range(13, 22)


@dataclass
class ExportOptions:
    """The arguments of :func:`exporters.export` in one object, validated once when it is built.

    Args: see :func:`exporters.export` (same names, same defaults); ``targets`` becomes a list, each target once.

    Raises:
        ValueError: an unknown target, precision, ``ncnn_depthwise`` or ``onnx_weights``
            (:func:`fitslim.callback_spec.check_export_options`), or an ``opset`` outside :data:`OPSETS`.
        TypeError: a ``latency`` that is not a bool, an ``opset`` that is not an int.
    """

    targets: Sequence[str] = ("onnx",)
    example_input: Any = None
    calibration: Iterable[Any] | npt.ArrayLike | None = None
    precision: str = "fp32"
    quant_spec: QuantSpec | None = None
    directory: str | os.PathLike[str] = "exports"
    verify: bool = True
    threads: int = 2
    progress: Callable[[str], None] | None = None
    samples: npt.ArrayLike | None = None
    reference_fn: Callable[[npt.NDArray[np.float32]], npt.ArrayLike] | None = None
    tflite_int8: Callable[[Any, QuantSpec, npt.NDArray[np.float32]], bytes] | None = None
    ncnn_depthwise: str = "int8"
    onnx_weights: str = "auto"
    samples_from: str = ""
    latency: bool = True
    opset: int = OPSET

    def __post_init__(self) -> None:
        if not isinstance(self.latency, bool):
            raise TypeError(
                f"latency: expected True or False; got {self.latency!r}. HINT: latency=False skips the latency "
                "verdict against fp32 (for callers that time the artifacts themselves); leave it unset to keep it."
            )
        self.targets = check_export_options(self.targets, self.precision, self.ncnn_depthwise, self.onnx_weights)
        if isinstance(self.opset, bool) or not isinstance(self.opset, int):
            raise TypeError(
                f"opset: expected an int; got {type(self.opset).__name__} {self.opset!r}. HINT: e.g. opset=17, or "
                f"leave it unset for opset {OPSET}."
            )
        if self.opset not in OPSETS:
            raise ValueError(
                f"opset: {self.opset} is outside {OPSETS.start}-{OPSETS.stop - 1}; choose one in that range (13 is the "
                f"lowest with per-channel Q/DQ, what TensorRT needs; 21 the newest every converter here writes), or "
                f"leave it unset for opset {OPSET}."
            )

    @property
    def ncnn_keep_float(self) -> tuple[str, ...]:
        """The ncnn layer types the ncnn int8 model keeps in fp32 (:data:`NCNN_DEPTHWISE`)."""
        return NCNN_DEPTHWISE[self.ncnn_depthwise]

    @property
    def onnx_weight_type(self) -> str | None:
        """The ``onnx`` int8 artifact's weight storage, ``"int8"`` or ``"uint8"``; None: this CPU's choice."""
        return None if self.onnx_weights == "auto" else self.onnx_weights


@dataclass
class ExportJob:
    """Everything a target needs.

    Args:
        source: the model being exported.
        onnx_path: the shared fp32 ONNX: one file, BatchNorm folded, dynamic batch, NCHW image input.
        input_shape: the ONNX input shape with batch 1 (NCHW for images).
        directory: where artifacts go.
        workdir: scratch space, removed after the export.
        options: the export options (precision, threads, verify, latency, the per-target options).
        samples: verification inputs in the source's layout.
        reference: the source model's outputs on ``samples``.
        quant: the int8 scales (``precision == "int8"`` only).
        calibration: calibration inputs in the source's layout (may be None when a QuantSpec was given).
        basename: artifact file stem.
        notes: notes about the shared pieces, for the report's first row.
        onnx_error: why the shared ONNX could not be built (``onnx_path`` then does not exist); the
            targets that start from it fail with this reason, TFLite still runs.
    """

    source: Source
    onnx_path: Path
    input_shape: tuple[int, ...]
    directory: Path
    workdir: Path
    options: ExportOptions
    samples: npt.NDArray[np.float32]
    reference: npt.NDArray[np.float32]
    quant: QuantTable | None = None
    calibration: npt.NDArray[np.float32] | None = None
    basename: str = "model"
    notes: list[str] = field(default_factory=list)
    onnx_error: str | None = None

    @property
    def precision(self) -> str:
        """``fp32``, ``fp16`` or ``int8``."""
        return self.options.precision

    @property
    def verify(self) -> bool:
        """Run every artifact in its runtime and compare it with the source."""
        return self.options.verify

    @property
    def threads(self) -> int:
        """Runtime threads for verification and latency."""
        return self.options.threads

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
