"""``from_recipe``: the Keras callbacks of a fitslim recipe, built by :func:`fitslim.recipe.recipe_builder`.

The same YAML drives the Lightning side (``lightning_plugins.from_recipe``).

Example:
    >>> from keras_callbacks import from_recipe
    >>> callbacks = from_recipe({"quantization": {"start": 0.6}, "export": {"targets": ["tflite"]}})
    >>> # model.fit(x, y, epochs=10, callbacks=callbacks)
"""

from __future__ import annotations

from fitslim.recipe import recipe_builder
from keras_callbacks.distillation import Distillation
from keras_callbacks.export import Export
from keras_callbacks.pruning import Pruning
from keras_callbacks.quantization import QuantizationAware

__all__ = ["from_recipe"]

from_recipe = recipe_builder(Pruning, QuantizationAware, Distillation, Export)
