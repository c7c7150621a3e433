"""fitslim's shared exporters: ONNX hub to ncnn, TFLite (LiteRT) and TensorRT, each verified in its runtime.

Example:
    >>> from exporters import export
    >>> # report = export(model, ["onnx", "ncnn", "tflite", "tensorrt"], example_input=x,
    >>> #                 calibration=batches, precision="int8", directory="exports")
"""

from __future__ import annotations

from exporters.core.export import PRECISIONS, TARGETS, export
from exporters.core.report import ExportReport, TargetResult

__all__ = ["PRECISIONS", "TARGETS", "ExportReport", "TargetResult", "export"]
