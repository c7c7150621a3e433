"""fitslim's Keras 3 callbacks (Keras only; never imports torch at module level).

``Pruning``, ``QuantizationAware``, ``Distillation`` and ``Export`` for ``model.fit(callbacks=[...])``,
with the same names, arguments and defaults as ``lightning_plugins``; ``keras_callbacks.legacy`` handles
tf-keras models wrapped by tfmot. After ``fit`` with ``QuantizationAware`` the model runs as its int8 model:
``float_model(model)`` gives a temporary float view, ``load_model(path)`` reloads a saved one with its ranges.
"""

from __future__ import annotations

from keras_callbacks.distillation import Distillation, FeatureAdapter
from keras_callbacks.export import Export
from keras_callbacks.pruning import Pruning
from keras_callbacks.quantization import QuantizationAware, float_model, load_model
from keras_callbacks.recipe import from_recipe

__all__ = [
    "Distillation",
    "Export",
    "FeatureAdapter",
    "Pruning",
    "QuantizationAware",
    "float_model",
    "from_recipe",
    "load_model",
]
