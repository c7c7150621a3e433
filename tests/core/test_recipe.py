"""The recipe schema: strict validation with key paths, defaults, YAML round trip."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fitslim import Recipe, RecipeError

FULL = """
version: 1
pruning:
  sparsity: 0.5
  granularity: channel
  schedule: {type: polynomial, power: 2, frequency: 10}
  start: 0.0
  end: 0.6
  exclude: [head]
quantization: {start: 0.6, freeze_bn: 0.8, freeze_observers: 0.9, observer: minmax}
distillation: {teacher: teacher.ckpt, temperature: 4.0, alpha: 0.7, features: {block: block}}
export: {targets: [onnx, ncnn, tflite, tensorrt], precision: int8}
"""


def test_full_recipe_parses_with_defaults_filled() -> None:
    r = Recipe.from_yaml(FULL)
    assert r.pruning is not None and r.pruning["granularity"] == "channel"
    assert r.pruning["schedule"] == {"type": "polynomial", "power": 2.0, "frequency": 10}
    assert r.pruning["importance"] == "l1" and r.pruning["make_permanent"] is True
    assert r.quantization is not None and r.quantization["weight_bits"] == 8
    assert r.distillation is not None and r.distillation["loss"] == "kl"
    assert r.export is not None and r.export["targets"] == ["onnx", "ncnn", "tflite", "tensorrt"]


def test_yaml_round_trip_and_file(tmp_path: Path) -> None:
    r = Recipe.from_yaml(FULL)
    assert Recipe.from_yaml(r.to_yaml()) == r
    path = tmp_path / "recipe.yaml"
    path.write_text(r.to_yaml())
    assert Recipe.from_yaml(path) == r
    assert Recipe.from_yaml(str(path)) == r
    assert Recipe.load(r.to_dict()) == r and Recipe.load(r) is r


def test_missing_sections_are_none_and_empty_section_gets_defaults() -> None:
    r = Recipe.from_yaml("pruning:\n")
    assert r.pruning is not None and r.pruning["sparsity"] == 0.5 and r.pruning["end"] == 0.7
    assert r.quantization is None and r.distillation is None and r.export is None
    assert Recipe({}).to_dict() == {"version": 1}
    # sections are copies: mutating them does not change the recipe
    sec = r.pruning
    sec["sparsity"] = 0.9
    assert r.pruning["sparsity"] == 0.5


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"prunning": {}}, r"^prunning: unknown section. Allowed top-level keys: \['version', 'pruning'"),
        (
            {"pruning": {"sparsty": 0.5}},
            r"^pruning.sparsty: unknown key. Allowed keys in pruning: \['sparsity'",
        ),
        ({"pruning": {"sparsity": 1.0}}, r"^pruning.sparsity: 1.0 is out of range \[0, 1\)"),
        ({"pruning": {"sparsity": -0.1}}, r"^pruning.sparsity: -0.1 is out of range"),
        ({"pruning": {"sparsity": "half"}}, r"^pruning.sparsity: expected a number"),
        ({"pruning": {"sparsity": True}}, r"^pruning.sparsity: expected a number"),
        (
            {"pruning": {"granularity": "block"}},
            r"^pruning.granularity: 'block' is not one of \['unstructured', 'channel', '2:4'\]",
        ),
        ({"pruning": {"schedule": "linear"}}, r"^pruning.schedule: 'linear' is not one of"),
        ({"pruning": {"schedule": {"end": 1.5}}}, r"^pruning.schedule.end: 1.5 is out of range \[0, 1\]"),
        ({"pruning": {"schedule": {"kind": "cubic"}}}, r"^pruning.schedule.kind: unknown key"),
        (
            {"pruning": {"schedule": {"end": 0.5}, "end": 0.6}},
            r"^pruning.schedule.end: also given as pruning.end",
        ),
        (
            {"pruning": {"schedule": {"start": 0.5, "end": 0.2}}},
            r"^pruning.schedule.end: 0.2 is not after start 0.5",
        ),
        ({"pruning": {"schedule": {"power": 0}}}, r"^pruning.schedule.power: 0.0 is out of range \(0, inf\]"),
        ({"pruning": {"start": 0.8, "end": 0.2}}, r"^pruning.end: 0.2 is not after start 0.8"),
        ({"pruning": {"start": 0.5, "end": 0.5}}, r"^pruning.end: 0.5 is not after start 0.5\. Fix: end must be >"),
        (
            {"pruning": {"start": 0.1, "start_step": 10}},
            r"^pruning.start_step: given together with pruning.start",
        ),
        ({"pruning": {"start_step": 100, "end_step": 50}}, r"^pruning.end_step: 50 is not after start_step 100"),
        ({"pruning": {"start_step": 0, "end_step": -1}}, r"^pruning.end_step: -1 \(never stop\) needs the constant"),
        ({"pruning": {"frequency": 0}}, r"^pruning.frequency: 0 is out of range \[1, inf\]"),
        ({"pruning": {"round_to": 8}}, r"^pruning.round_to: rounds kept channel counts, but granularity is unstr"),
        ({"pruning": {"granularity": "channel", "round_to": 0}}, r"^pruning.round_to: 0 is out of range \[1, inf\]"),
        ({"pruning": {"attention": "qkv"}}, r"^pruning.attention: 'qkv' is not one of \['heads', 'mlp'\]"),
        ({"pruning": {"frequency": 2.5}}, r"^pruning.frequency: expected an integer"),
        ({"pruning": {"include": "conv"}}, r"^pruning.include: expected a list"),
        ({"pruning": {"make_permanent": "yes"}}, r"^pruning.make_permanent: expected true or false"),
        ({"quantization": {"weight_bits": 9}}, r"^quantization.weight_bits: 9 is out of range \[2, 8\]"),
        (
            {"quantization": {"start": 0.6, "freeze_observers": 0.5}},
            r"^quantization.freeze_observers: 0.5 is before",
        ),
        ({"quantization": {"start": 0.6, "freeze_bn": 0.1}}, r"^quantization.freeze_bn: 0.1 is before"),
        ({"quantization": {"observer": "hist"}}, r"^quantization.observer: 'hist' is not one of"),
        ({"distillation": {"temperature": 0}}, r"^distillation.temperature: 0.0 is out of range \(0, inf\]"),
        ({"distillation": {"alpha": 1.5}}, r"^distillation.alpha: 1.5 is out of range \[0, 1\]"),
        ({"distillation": {"features": ["a"]}}, r"^distillation.features: expected a mapping"),
        ({"export": {"targets": ["onnx", "coreml"]}}, r"^export.targets\[1\]: 'coreml' is not one of"),
        ({"export": {"targets": []}}, r"^export.targets: must name at least one"),
        ({"export": {"targets": ["onnx", "onnx"]}}, r"^export.targets: has duplicates"),
        (
            {"export": {"precision": "int4"}},
            r"^export.precision: 'int4' is not one of \['auto', 'fp32', 'fp16', 'int8'\]",
        ),
        ({"export": {"input_shape": [1, 1, 8, 8]}}, r"^export.input_shape: unknown key"),
        ({"export": {"directory": None}}, r"^export.directory: must not be empty"),
        ({"version": 2}, r"^version: 2 is not supported"),
        ({"pruning": [1, 2]}, r"^pruning: expected a mapping of settings"),
    ],
)
def test_every_validation_error_names_its_key_path(data: dict[str, Any], match: str) -> None:
    with pytest.raises(RecipeError, match=match):
        Recipe(data)


def test_yaml_level_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="not valid YAML"):
        Recipe.from_yaml("pruning: {sparsity: [\n")
    with pytest.raises(RecipeError, match="does not exist"):
        Recipe.from_yaml(tmp_path / "missing.yaml")
    with pytest.raises(RecipeError, match="expected a mapping with sections"):
        Recipe.from_yaml("- a\n- b\n")


def test_recipe_error_is_a_value_error() -> None:
    assert issubclass(RecipeError, ValueError)
