"""fitslim's PyTorch Lightning callbacks (torch only; never imports TensorFlow or Keras).

Works with trainers from both ``lightning.pytorch`` and ``pytorch_lightning``: ``Pruning``,
``QuantizationAware``, ``Distillation`` and ``Export``. ``lightning_plugins.reference`` holds the
reference digits module.
"""

from __future__ import annotations

from fitslim.extras import require

require("lightning_plugins", {"torch": "torch", "lightning.pytorch|pytorch_lightning": "Lightning"}, "lightning")

from lightning_plugins.distillation import Distillation  # noqa: E402
from lightning_plugins.export import Export  # noqa: E402
from lightning_plugins.pruning import Pruning  # noqa: E402
from lightning_plugins.quantization import QuantizationAware  # noqa: E402
from lightning_plugins.recipe import from_recipe  # noqa: E402

__all__ = ["Distillation", "Export", "Pruning", "QuantizationAware", "from_recipe"]
