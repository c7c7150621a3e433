"""fitslim's PyTorch Lightning callbacks (torch only; never imports TensorFlow or Keras).

Works with trainers from both ``lightning.pytorch`` and ``pytorch_lightning``. The callbacks
(``Pruning``, ``QuantizationAware``, ``Distillation``, ``Export``) arrive with their issues; today the
package provides the reference Lightning module used by the demo.
"""

from __future__ import annotations

from lightning_plugins.distillation import Distillation
from lightning_plugins.export import Export

__all__ = ["Distillation", "Export"]
