"""``from_recipe``: the Lightning callbacks of a fitslim recipe (the same YAML drives the Keras side).

Example:
    >>> from lightning_plugins import from_recipe
    >>> [type(c).__name__ for c in from_recipe({"pruning": {"sparsity": 0.5}, "export": {"targets": ["onnx"]}})]
    ['Pruning', 'Export']
    >>> # Trainer(max_epochs=10, callbacks=from_recipe("recipe.yaml", teacher=teacher)).fit(module, datamodule)
"""

from __future__ import annotations

from fitslim.recipe import recipe_builder
from lightning_plugins.distillation import Distillation
from lightning_plugins.export import Export
from lightning_plugins.pruning import Pruning
from lightning_plugins.quantization import QuantizationAware

__all__ = ["from_recipe"]

from_recipe = recipe_builder(Pruning, QuantizationAware, Distillation, Export)
