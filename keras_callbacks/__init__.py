"""fitslim's Keras 3 callbacks (Keras only; never imports torch at module level).

The callbacks (``Pruning``, ``QuantizationAware``, ``Distillation``, ``Export``) arrive with their
issues; today the package provides the reference Keras training used by the demo.
"""

from __future__ import annotations

from keras_callbacks.export import Export
from keras_callbacks.quantization import QuantizationAware

__all__ = ["Export", "QuantizationAware"]
