"""The callback spec (``fitslim.callback_spec``): each callback's arguments validated once, in the kernel.

Both plugin sets build the same spec from the same arguments and refuse a bad value with the kernel's error;
their signatures and the recipe's defaults are the spec's. The plugin-set tests import their framework lazily
and skip where it is not installed.
"""

from __future__ import annotations

import inspect
import pickle
from typing import Any

import pytest

from fitslim import Recipe
from fitslim.callback_spec import (
    DistillationSpec,
    ExportSpec,
    PruningSpec,
    QuantizationAwareSpec,
    Selectors,
    call_arguments,
    defaults,
)
from fitslim.errors import ArgumentError, ArgumentTypeError, fail, fail_type
from fitslim.recipe import _FIELDS
from fitslim.schedules import PolynomialDecay

SPECS: dict[str, type[Any]] = {
    "Pruning": PruningSpec,
    "QuantizationAware": QuantizationAwareSpec,
    "Distillation": DistillationSpec,
    "Export": ExportSpec,
}
SECTION = {
    "Pruning": "pruning",
    "QuantizationAware": "quantization",
    "Distillation": "distillation",
    "Export": "export",
}

# (spec, arguments, error class, message): one bad value each, the kernel's exact text
BAD: list[tuple[str, dict[str, Any], type[Exception], str]] = [
    ("Pruning", {"sparsity": 1.0}, ValueError, "Pruning(sparsity=...): got 1.0, outside [0, 1)"),
    ("Pruning", {"sparsity": "half"}, TypeError, "Pruning(sparsity=...): got 'half'; expected a number"),
    ("Pruning", {"granularity": "block"}, ValueError, "Pruning(granularity=...): unknown 'block'"),
    ("Pruning", {"attention": "all"}, ValueError, "Pruning(attention=...): unknown 'all'"),
    ("Pruning", {"start": 0.5, "end": 0.5}, ValueError, "Pruning(end=...): end=0.5 is not after start=0.5"),
    ("Pruning", {"round_to": 8}, ValueError, "Pruning(round_to=...): rounds kept channel counts"),
    ("Pruning", {"include": [3]}, TypeError, "Pruning(include=...): got 3; expected"),
    ("Pruning", {"make_permanent": "yes"}, TypeError, "Pruning(make_permanent=...): got 'yes'"),
    ("QuantizationAware", {"start": 1.5}, ValueError, "QuantizationAware(start=...): got 1.5, outside [0, 1]"),
    ("QuantizationAware", {"weight_bits": 9}, ValueError, "QuantizationAware(weight_bits=...): got 9, outside 2..8"),
    ("QuantizationAware", {"activation_bits": 8.0}, ValueError, "QuantizationAware(activation_bits=...): got 8.0, not"),
    ("QuantizationAware", {"start": 0.8, "freeze_observers": 0.5}, ValueError, "(freeze_observers=...): is before"),
    ("QuantizationAware", {"per_channel": "yes"}, TypeError, "QuantizationAware(per_channel=...): got 'yes'"),
    ("QuantizationAware", {"observer": "histogram"}, ValueError, "(observer=...): unknown 'histogram'"),
    ("Distillation", {"input_fn": 3}, TypeError, "Distillation(input_fn=...): expected a callable or None"),
    ("Distillation", {"alpha": 2.0}, ValueError, "Distillation(alpha=...)"),
]


def _kernel_error(name: str, arguments: dict[str, Any]) -> Exception:
    with pytest.raises(Exception) as info:
        SPECS[name](**arguments)
    return info.value


# -- the kernel ----------------------------------------------------------------------------------------


def test_fail_names_the_callback_the_argument_and_the_fix_and_survives_pickling() -> None:
    err = fail("Pruning", "sparsity", "got 1.5, outside [0, 1)", "pass e.g. 0.5.")
    assert str(err) == "Pruning(sparsity=...): got 1.5, outside [0, 1). HINT: pass e.g. 0.5."
    assert str(err.showing(1.5)) == "Pruning(sparsity=1.5): got 1.5, outside [0, 1). HINT: pass e.g. 0.5."
    typed = fail_type("Export", "input_fn", "expected a callable", "pass a function").showing(3)
    assert isinstance(typed, ArgumentTypeError) and isinstance(typed, TypeError) and isinstance(typed, ValueError)
    back = pickle.loads(pickle.dumps(typed))  # errors cross process boundaries under DDP spawn
    assert type(back) is ArgumentTypeError and str(back) == str(typed) and back.argument == "input_fn"


@pytest.mark.parametrize(("name", "arguments", "error", "text"), BAD, ids=[f"{b[0]}-{next(iter(b[1]))}" for b in BAD])
def test_the_spec_refuses_each_bad_value_with_a_three_part_message(
    name: str, arguments: dict[str, Any], error: type[Exception], text: str
) -> None:
    err = _kernel_error(name, arguments)
    assert isinstance(err, error) and text in str(err), str(err)
    assert "HINT:" in str(err)


def test_the_spec_normalizes_once() -> None:
    spec = PruningSpec(sparsity=1 / 2, granularity="channel", include="*conv", end=0.5, round_to=8)
    assert spec.include == ["*conv"] and spec.exclude is None and spec.nm is None and spec.round_to == 8
    assert spec.resolved_schedule == PolynomialDecay(final_sparsity=0.5, start=0.0, end=0.5)
    assert PruningSpec(granularity="2:4").nm == (2, 4)
    q = QuantizationAwareSpec(start=0, freeze_observers=1, momentum=1)
    assert (q.start, q.freeze_observers, q.momentum) == (0.0, 1.0, 1.0)
    assert all(type(v) is float for v in (q.start, q.freeze_observers, q.momentum))
    d = DistillationSpec(temperature=4, alpha=0.7, features={"a": "b"})
    assert (d.settings.temperature, d.settings.alpha, d.settings.features) == (4.0, 0.7, {"a": "b"})


def test_selectors_take_subclasses_of_the_framework_base_only() -> None:
    class Base:
        pass

    class Layer(Base):
        pass

    kinds = Selectors(Base, "patterns or Base types", "['x', Layer]")
    assert PruningSpec(include=[Layer, "x"], selectors=kinds).include == [Layer, "x"]
    with pytest.raises(TypeError, match=r"Pruning\(exclude=...\): got <class 'int'>; expected patterns or Base"):
        PruningSpec(exclude=[int], selectors=kinds)


def test_call_arguments_drops_self_and_the_super_cell() -> None:
    class Callback:
        def __init__(self, a: int = 1, b: str = "x", extra: int = 0) -> None:
            self.arguments = call_arguments(locals(), drop=("extra",))
            super().__init__()

    assert Callback(2).arguments == {"a": 2, "b": "x"}


def test_the_recipe_defaults_are_the_spec_defaults() -> None:
    for name, spec in SPECS.items():
        recipe = _FIELDS[SECTION[name]]
        shared = [k for k in recipe if k in defaults(spec)]
        assert len(shared) >= 4, name
        for key in shared:
            want = defaults(spec)[key]
            got = recipe[key].default
            assert (list(want) if isinstance(want, tuple) else want) == got, f"{name}.{key}"


# -- both plugin sets ------------------------------------------------------------------------------------


def _plugin_sets() -> list[Any]:
    sets = []
    for package in ("lightning_plugins", "keras_callbacks"):
        try:
            sets.append(__import__(package))
        except ImportError:
            continue
    if not sets:
        pytest.skip("neither lightning_plugins nor keras_callbacks can be imported here")
    return sets


@pytest.mark.slow  # imports torch, Lightning, Keras and TensorFlow (about 13 s on 2 cores)
@pytest.mark.parametrize("name", list(SPECS))
def test_each_signature_is_the_spec(name: str) -> None:
    for package in _plugin_sets():
        params = inspect.signature(getattr(package, name)).parameters
        spec = defaults(SPECS[name])
        shared = [p for p in params if p in spec]
        assert len(shared) >= len(params) - 3, (package.__name__, name, list(params))  # teacher, batch_size, ...
        assert shared == [p for p in spec if p in params], (package.__name__, name)  # the same order
        assert {p: params[p].default for p in shared} == {p: spec[p] for p in shared}, (package.__name__, name)


# the framework's selector types are checked by the plugin sets' own tests
SHARED_BAD = [b for b in BAD if b[0] != "Distillation" and "include" not in b[1]]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "arguments", "error", "text"), SHARED_BAD)
def test_both_plugin_sets_refuse_with_the_kernel_error(
    name: str, arguments: dict[str, Any], error: type[Exception], text: str
) -> None:
    expected = _kernel_error(name, arguments)
    for package in _plugin_sets():
        with pytest.raises(error) as info:
            getattr(package, name)(**arguments)
        shows_value = package.__name__ == "keras_callbacks" and name == "QuantizationAware"
        assert isinstance(expected, ArgumentError)
        want = expected.showing(arguments[expected.argument]) if shows_value else expected
        assert str(info.value) == str(want), package.__name__


@pytest.mark.slow
def test_both_plugin_sets_hold_the_same_spec() -> None:
    sets = _plugin_sets()
    pruning = {"sparsity": 0.3, "granularity": "channel", "end": 0.5, "include": ["*conv"], "round_to": 4}
    qat = {"start": 0.5, "freeze_observers": 0.8, "freeze_bn": 0.7, "observer": "minmax", "per_channel": False}
    for package in sets:
        p = package.Pruning(**pruning)
        assert p.spec == PruningSpec(**pruning), package.__name__
        assert (p.schedule, p.sparsity, p.include, p.round_to) == (
            PruningSpec(**pruning).resolved_schedule,
            0.3,
            ["*conv"],
            4,
        )
        q = package.QuantizationAware(**qat)
        assert q.spec == QuantizationAwareSpec(**qat), package.__name__
        assert (q.start, q.freeze_observers, q.observer, q.per_channel) == (0.5, 0.8, "minmax", False)
        e = package.Export(targets=["onnx", "tflite", "onnx"], precision="fp16", calibration_batches=3)
        assert (e.settings.targets, e.settings.precision, e.settings.calibration_batches) == (
            ["onnx", "tflite"],
            "fp16",
            3,
        )


@pytest.mark.slow
def test_the_recipe_builds_the_same_specs_through_both_plugin_sets() -> None:
    recipe = Recipe(
        {
            "pruning": {"sparsity": 0.4, "granularity": "channel", "end": 0.6, "round_to": 8},
            "quantization": {"start": 0.7, "freeze_bn": 0.75, "freeze_observers": 0.95},
            "export": {"targets": ["onnx", "ncnn"], "precision": "int8", "directory": "out"},
        }
    )
    want_p = PruningSpec(**(recipe.callback_kwargs("pruning") or {}))
    want_q = QuantizationAwareSpec(**(recipe.callback_kwargs("quantization") or {}))
    for package in _plugin_sets():
        pruning, qat, export = package.from_recipe(recipe)
        assert pruning.spec == want_p and qat.spec == want_q, package.__name__
        assert (export.settings.targets, export.settings.precision, export.settings.directory) == (
            ["onnx", "ncnn"],
            "int8",
            "out",
        )


def test_export_options_are_checked_in_one_place_for_export_and_the_callbacks() -> None:
    """``check_export_options`` is what ``export()`` and ``Export`` (via ExportSettings) run: one list of choices, the
    function's errors naming the argument, the callback's naming ``Export(argument=...)`` with a HINT."""
    from fitslim.callback_spec import check_export_options

    assert check_export_options(["onnx", "ncnn", "onnx"], "int8") == ["onnx", "ncnn"]
    assert check_export_options("tflite", "auto", callback="Export") == ["tflite"]
    with pytest.raises(ValueError, match=r"^targets: unknown \['coreml'\]; choose any of \['onnx'"):
        check_export_options(["coreml"], "fp32")
    with pytest.raises(ValueError, match=r"^precision: unknown 'auto'; choose one of \['fp32', 'fp16', 'int8'\]\.$"):
        check_export_options(["onnx"], "auto")  # "auto" is the callbacks' choice (int8 after QAT), not export()'s
    with pytest.raises(ValueError, match=r"^Export\(precision=\.\.\.\): unknown 'int4'\. HINT: choose one of .*'auto'"):
        check_export_options(["onnx"], "int4", callback="Export")
    with pytest.raises(ValueError, match=r"^ncnn_depthwise: unknown 'fp16'; choose one of \['int8', 'float'\]"):
        check_export_options(["ncnn"], "int8", ncnn_depthwise="fp16")
    with pytest.raises(ValueError, match=r"^Export\(onnx_weights=\.\.\.\): unknown 'u8'\. HINT: choose one of"):
        check_export_options(["onnx"], "int8", onnx_weights="u8", callback="Export")


def test_export_and_export_settings_refuse_through_the_kernel_check() -> None:
    pytest.importorskip("onnx")
    from exporters import export
    from exporters.core.settings import ExportSettings

    with pytest.raises(ValueError, match=r"^onnx_weights: unknown 'u8'"):
        export("model.onnx", ["onnx"], onnx_weights="u8")
    with pytest.raises(ValueError, match=r"^Export\(ncnn_depthwise=\.\.\.\): unknown 'half'"):
        ExportSettings(targets=["ncnn"], ncnn_depthwise="half")
