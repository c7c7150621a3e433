"""fitslim's Keras 3 callbacks (Keras only; never imports torch at module level).

``Pruning``, ``QuantizationAware``, ``Distillation`` and ``Export`` for ``model.fit(callbacks=[...])``,
with the same names, arguments and defaults as ``lightning_plugins``; ``keras_callbacks.legacy`` handles
tf-keras models wrapped by tfmot.
"""

from __future__ import annotations

from keras_callbacks.distillation import Distillation
from keras_callbacks.export import Export
from keras_callbacks.pruning import Pruning
from keras_callbacks.quantization import QuantizationAware
from keras_callbacks.recipe import from_recipe

__all__ = ["Distillation", "Export", "Pruning", "QuantizationAware", "from_recipe"]
