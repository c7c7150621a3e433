"""``lightning_plugins.from_recipe``: the recipe's sections become the configured callbacks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lightning", reason="lightning not installed")

from fitslim import Recipe, RecipeError
from fitslim.schedules import Cubic
from lightning_plugins import Distillation, Export, Pruning, QuantizationAware, from_recipe
from lightning_plugins.models import torch_model

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "recipes" / "digits.yaml"


def test_example_recipe_builds_every_callback_in_order() -> None:
    callbacks = from_recipe(EXAMPLE, teacher=torch_model("digits_cnn", width=2.0))
    assert [type(c) for c in callbacks] == [Pruning, QuantizationAware, Distillation, Export]
    export: Any = callbacks[3]
    assert export.settings.targets == ["onnx", "ncnn", "tflite", "tensorrt"]
    assert export.settings.precision == "int8"


def test_schedule_mapping_becomes_a_schedule_object_with_its_timing() -> None:
    recipe = {"pruning": {"sparsity": 0.6, "schedule": {"type": "cubic", "start": 0.1, "end": 0.5, "frequency": 3}}}
    kw = Recipe(recipe).callback_kwargs("pruning")
    assert kw is not None and isinstance(kw["schedule"], Cubic)
    sched = kw["schedule"].resolve(100)
    assert (sched.start_step, sched.end_step, sched.frequency) == (10, 50, 3)
    assert sched(50) == pytest.approx(0.6)
    assert "start" not in kw and "end" not in kw
    (cb,) = from_recipe(recipe)
    assert isinstance(cb, Pruning)


def test_absolute_steps_replace_fraction_defaults() -> None:
    kw = Recipe({"pruning": {"start_step": 5, "end_step": 40}}).callback_kwargs("pruning")
    assert kw is not None and kw["start_step"] == 5 and "start" not in kw and "end" not in kw
    (cb,) = from_recipe({"pruning": {"start_step": 5, "end_step": 40}})
    assert isinstance(cb, Pruning)


def test_errors_name_the_key_path() -> None:
    with pytest.raises(RecipeError, match=r"^pruning.schedule.end: 1.5 is out of range"):
        from_recipe({"pruning": {"schedule": {"end": 1.5}}})
    with pytest.raises(RecipeError, match=r"^distillation.teacher: the recipe distils but names no teacher"):
        from_recipe({"distillation": {"alpha": 0.5}})
