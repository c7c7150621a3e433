"""``from_recipe``: the Keras callbacks of a fitslim recipe (the same YAML drives the Lightning side).

Example:
    >>> from keras_callbacks import from_recipe
    >>> callbacks = from_recipe({"pruning": {"sparsity": 0.5}, "export": {"targets": ["onnx"]}})
    >>> [type(c).__name__ for c in callbacks]
    ['Pruning', 'Export']
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from fitslim.recipe import Recipe, build_callbacks

__all__ = ["from_recipe"]


def from_recipe(
    recipe: str | os.PathLike[str] | Mapping[str, Any] | Recipe,
    teacher: Any = None,
    loader: Callable[[str], Any] | None = None,
) -> list[Any]:
    """Build the callbacks a recipe describes, in the order pruning, quantization, distillation, export.

    Args:
        recipe: a YAML path, YAML text, a dict, or a :class:`fitslim.Recipe`.
        teacher: the teacher for ``distillation``; else the recipe's ``teacher`` path is loaded with ``loader``.
        loader: ``path -> teacher`` for a recipe that names a teacher checkpoint.

    Raises:
        fitslim.RecipeError: an invalid recipe (the message starts with the key path), or a distillation
            section without a teacher.
    """
    from keras_callbacks.distillation import Distillation
    from keras_callbacks.export import Export
    from keras_callbacks.pruning import Pruning
    from keras_callbacks.quantization import QuantizationAware

    factories = {"pruning": Pruning, "quantization": QuantizationAware, "distillation": Distillation, "export": Export}
    return build_callbacks(recipe, factories, teacher, loader)
