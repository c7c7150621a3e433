"""``keras_callbacks.from_recipe``: the same recipe gives the Keras twins of the Lightning callbacks."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

keras = pytest.importorskip("keras", reason="keras not installed")

from fitslim import RecipeError  # noqa: E402
from keras_callbacks import Distillation, Export, Pruning, QuantizationAware, from_recipe  # noqa: E402
from keras_callbacks.models import keras_model  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "recipes" / "digits.yaml"


def test_example_recipe_builds_every_keras_callback_in_order() -> None:
    callbacks = from_recipe(EXAMPLE, teacher=keras_model("digits_cnn", width=2.0))
    assert [type(c) for c in callbacks] == [Pruning, QuantizationAware, Distillation, Export]
    export: Any = callbacks[3]
    assert export.settings.targets == ["onnx", "ncnn", "tflite", "tensorrt"] and export.settings.precision == "int8"


def test_recipe_keys_are_the_arguments_on_both_sides() -> None:
    lightning = pytest.importorskip("lightning_plugins", reason="lightning not installed")
    for name in ("Pruning", "QuantizationAware", "Distillation", "Export"):
        k = inspect.signature(getattr(__import__("keras_callbacks"), name)).parameters
        t = inspect.signature(getattr(lightning, name)).parameters
        shared = [p for p in t if p in k]
        assert [k[p].default for p in shared] == [t[p].default for p in shared], name
    with pytest.raises(RecipeError, match=r"^distillation.teacher"):
        from_recipe({"distillation": {}})
