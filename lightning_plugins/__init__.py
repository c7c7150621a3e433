"""fitslim's PyTorch Lightning callbacks (torch only; never imports TensorFlow or Keras).

Works with trainers from both ``lightning.pytorch`` and ``pytorch_lightning``: ``Pruning``,
``QuantizationAware``, ``Distillation`` and ``Export``. ``lightning_plugins.reference`` holds the
reference digits module.
"""

from __future__ import annotations

from lightning_plugins.distillation import Distillation
from lightning_plugins.export import Export
from lightning_plugins.pruning import Pruning
from lightning_plugins.quantization import QuantizationAware
from lightning_plugins.recipe import from_recipe

__all__ = ["Distillation", "Export", "Pruning", "QuantizationAware", "from_recipe"]
