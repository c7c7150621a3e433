"""The export targets, one module each, behind :class:`exporters.core.target.Target` (write the artifact; give
back a runner). Importing this package registers them with the core; their converters and runtimes load lazily.

- :mod:`~exporters.targets.onnx` (int8 helpers: :mod:`~exporters.targets.onnx_int8`)
- :mod:`~exporters.targets.ncnn` (int8 writer: :mod:`~exporters.targets.ncnn_int8`)
- :mod:`~exporters.targets.tflite` (torch models: :mod:`~exporters.targets.tflite_torch`)
- :mod:`~exporters.targets.tensorrt`
"""

from __future__ import annotations

from exporters.targets import ncnn, onnx, tensorrt, tflite

__all__ = ["ncnn", "onnx", "tensorrt", "tflite"]
