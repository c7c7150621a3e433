"""``from_recipe``: the Lightning callbacks of a fitslim recipe (the same YAML drives the Keras side).

Example:
    >>> from lightning_plugins import from_recipe
    >>> callbacks = from_recipe({"pruning": {"sparsity": 0.5}, "export": {"targets": ["onnx"]}})
    >>> [type(c).__name__ for c in callbacks]
    ['Pruning', 'Export']
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from fitslim.recipe import Recipe

__all__ = ["from_recipe"]


def from_recipe(
    recipe: str | os.PathLike[str] | Mapping[str, Any] | Recipe,
    teacher: Any = None,
    loader: Callable[[str], Any] | None = None,
) -> list[Any]:
    """Build the callbacks a recipe describes, in the order pruning, quantization, distillation, export.

    Args:
        recipe: a YAML path, YAML text, a dict, or a :class:`fitslim.Recipe`.
        teacher: the teacher for ``distillation`` (an ``nn.Module``); else the recipe's ``teacher`` path
            is loaded with ``loader``.
        loader: ``path -> teacher`` for a recipe that names a teacher checkpoint.

    Raises:
        fitslim.RecipeError: an invalid recipe (the message starts with the key path).
        ValueError: a distillation section without a teacher.
    """
    from lightning_plugins.distillation import Distillation
    from lightning_plugins.export import Export
    from lightning_plugins.pruning import Pruning
    from lightning_plugins.quantization import QuantizationAware

    r = Recipe.load(recipe)
    callbacks: list[Any] = []
    if (kw := r.callback_kwargs("pruning")) is not None:
        callbacks.append(Pruning(**kw))
    if (kw := r.callback_kwargs("quantization")) is not None:
        callbacks.append(QuantizationAware(**kw))
    if (kw := r.callback_kwargs("distillation")) is not None:
        path: str | None = (r.distillation or {}).get("teacher")
        if teacher is None and path is None:
            raise ValueError(
                "distillation.teacher: the recipe distils but names no teacher. HINT: pass from_recipe(..., "
                "teacher=model), or set distillation.teacher to a checkpoint path and pass loader=."
            )
        if teacher is None and path is not None:
            callbacks.append(Distillation(path, loader=loader, **kw))
        else:
            callbacks.append(Distillation(teacher, **kw))
    if (kw := r.callback_kwargs("export")) is not None:
        callbacks.append(Export(**kw))
    return callbacks
