"""fitslim's shared exporters: ONNX hub to ncnn, TFLite (LiteRT) and TensorRT, each verified in its runtime.

The public ``export`` function arrives with its issue.
"""

from __future__ import annotations

__all__: list[str] = []
