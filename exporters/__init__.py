"""fitslim's shared exporters: ONNX hub to ncnn, TFLite (LiteRT) and TensorRT, each verified in its runtime.

``exporters.core`` holds what every target shares (options, job, shared ONNX, int8 scales, verification, latency,
report, the orchestrator); ``exporters.targets`` one module per target behind one interface.

Example:
    >>> from exporters import export
    >>> # report = export(model, ["onnx", "ncnn", "tflite", "tensorrt"], example_input=x,
    >>> #                 calibration=batches, precision="int8", directory="exports")
"""

from __future__ import annotations

from exporters import targets as targets  # registers every target with the core
from exporters.core.export import PRECISIONS, TARGETS, export
from exporters.core.report import ExportReport, TargetResult

__all__ = ["PRECISIONS", "TARGETS", "ExportReport", "TargetResult", "export"]
