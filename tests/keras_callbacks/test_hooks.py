"""Every in-place change keras_callbacks makes to the user's model goes through one module (``_hooks``) and is taken
back: after ``fit``, after an exception inside ``fit``, and on ``QuantizationAware.remove``; with
``keep_fake_quant=True`` the fake-quant stays. The QuantSpec reaches ``Export`` as an object, not a model attribute."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="keras not installed")

from keras_callbacks import Distillation, Export, Pruning, QuantizationAware  # noqa: E402
from keras_callbacks._hooks import Hooks, groups, handoff, swapped  # noqa: E402
from keras_callbacks.quantization import float_model  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[2] / "keras_callbacks"
METHODS = ("call", "compute_loss", "train_step", "save_own_variables", "load_own_variables")


def _leftovers(model: Any) -> list[str]:
    """Every fitslim attribute, instance-level method replacement and fitslim variable on ``model`` and its layers."""
    found = []
    for obj in [model, *model._flatten_layers(include_self=False, recursive=True)]:
        found += [f"{obj.name}.{k}" for k in vars(obj) if "fitslim" in k]
        found += [f"{obj.name}.{k}()" for k in METHODS if k in vars(obj)]
    found += [f"weight {w.path}" for w in model.weights if "fitslim" in w.path]
    return found


def _mobilenet() -> Any:
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(alpha=0.35, input_shape=(32, 32, 3), weights=None, classes=10)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    return model


def _small() -> Any:
    """A few layers of the same kinds (conv, BatchNorm, depthwise, dense), for the checks that need no real model."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(8, 3, strides=2, use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.DepthwiseConv2D(3),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    return model


def _teacher() -> Any:
    teacher = keras.Sequential(
        [keras.Input((32, 32, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10, activation="softmax")]
    )
    return teacher


def _data(n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((n, 32, 32, 3), dtype=np.float32), rng.integers(0, 10, n)


def _callbacks(tmp_path: Path | None = None, keep: bool = False) -> list[Any]:
    cbs = [
        Pruning(sparsity=0.5, start=0.0, end=0.5),
        QuantizationAware(start=0.0, freeze_observers=1.0, freeze_bn=1.0, keep_fake_quant=keep),
        Distillation(_teacher(), temperature=2.0, alpha=0.5),
    ]
    if tmp_path is not None:
        cbs.append(Export(targets=["tensorrt"], directory=tmp_path, calibration_batches=1, batch_size=8, threads=1))
    return cbs


# ----------------------------------------------------------------------------------------- the mechanism


class _Thing:
    def call(self) -> str:
        return "class"


def test_hooks_undo_in_reverse_order_once_and_in_a_with_block() -> None:
    model, thing = _Thing(), _Thing()
    with Hooks(model, "test") as hooks:
        hooks.replace(thing, "call", lambda: "first")
        hooks.replace(thing, "call", lambda: "second")
        order: list[str] = []
        hooks.on_undo(lambda: order.append("action"))
        assert thing.call() == "second" and groups(model) == [hooks]
    assert thing.call() == "class" and "call" not in vars(thing) and order == ["action"]
    assert groups(model) == []
    hooks.undo()  # idempotent
    assert order == ["action"]
    with pytest.raises(RuntimeError, match="inside"), Hooks(model, "test") as hooks:
        hooks.replace(thing, "call", lambda: "patched")
        raise RuntimeError("inside")
    assert "call" not in vars(thing)
    with swapped(thing, "call", lambda: "swapped"):
        assert thing.call() == "swapped"
    assert "call" not in vars(thing)


def test_no_other_module_changes_the_model_in_place() -> None:
    """All patching lives in _hooks.py: no other module assigns instance attributes behind Keras's back or
    replaces a model / layer method."""
    forbidden = re.compile(
        r"object\.__setattr__|__dict__\[[^]]+\]\s*=|__dict__\.pop|del [\w.]+\.__dict__|\bsetattr\(|\bdelattr\("
        r"|\.(call|compute_loss|train_step|train_function|save_own_variables|load_own_variables)\s*=[^=]"
        r"|_fitslim"
    )
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "_hooks.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if forbidden.search(line.split("#")[0]):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert offenders == []


# ----------------------------------------------------------------------------------------- a real model


@pytest.mark.slow
def test_a_keras_applications_model_is_clean_after_fit_and_export_gets_the_spec(tmp_path: Path) -> None:
    model, (x, y) = _mobilenet(), _data()
    optimizer = model.optimizer
    cbs = _callbacks(tmp_path)
    qat, export = cbs[1], cbs[3]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=cbs)
    assert _leftovers(model) == []
    assert model.optimizer is optimizer and groups(model) == []
    # the spec reached Export as an object: precision "auto" became int8 with the learned input scales
    assert qat.result is not None and handoff(model).quantized is qat.result and qat.result.spec is qat.quant_spec
    assert export.report is not None
    rows = [(r.target, r.precision, r.status, r.scales.startswith("learned QuantSpec")) for r in export.report.results]
    assert rows == [("tensorrt", "int8", "ok", True)], export.report.to_markdown()
    spec = qat.quant_spec
    assert spec is not None and spec.source == "qat" and len(spec) == len(qat.coverage)
    # the model is the float model: its outputs are those of the float view and not of the fake-quant reference
    plain = keras.ops.convert_to_numpy(model(x[:4], training=False))
    assert not np.allclose(plain, qat.result.reference(x[:4]), atol=1e-4)
    assert _leftovers(model) == []


@pytest.mark.slow
def test_an_exception_in_the_train_step_leaves_the_model_clean() -> None:
    model, (x, y) = _mobilenet(), _data()
    optimizer = model.optimizer

    class Broken(keras.utils.PyDataset):  # type: ignore[name-defined]
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
            if i == 2:
                raise RuntimeError("broken batch")
            return x[i * 4 : i * 4 + 4], y[i * 4 : i * 4 + 4]

    cbs = _callbacks()
    with pytest.raises(Exception, match="broken batch"):
        model.fit(Broken(), epochs=1, verbose=0, callbacks=cbs)
    assert cbs[1]._step >= 1  # it raised inside the fit, after the hooks ran
    assert _leftovers(model) == []
    assert model.optimizer is optimizer and groups(model) == []


@pytest.mark.slow
def test_an_exception_in_another_callback_is_cleaned_by_remove_and_by_the_next_fit() -> None:
    """Keras calls no callback when a callback raises: the hooks stay until ``remove`` or the next fit."""
    model, (x, y) = _small(), _data()

    def fail(batch: int, logs: Any) -> None:
        raise RuntimeError("callback failed")

    cbs = [*_callbacks(), keras.callbacks.LambdaCallback(on_train_batch_end=fail)]
    with pytest.raises(RuntimeError, match="callback failed"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=cbs)
    assert _leftovers(model) != []  # what Keras gives a callback no chance to undo
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=_callbacks())  # replaces the stale hooks
    assert _leftovers(model) == [] and groups(model) == []
    with pytest.raises(RuntimeError, match="callback failed"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=cbs)
    assert QuantizationAware.remove(model) is model
    assert _leftovers(model) == [] and groups(model) == []


@pytest.mark.slow
def test_keep_fake_quant_keeps_the_int8_model_until_remove() -> None:
    model, (x, y) = _small(), _data()
    cbs = _callbacks(keep=True)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=cbs)
    qat = cbs[1]
    kept = keras.ops.convert_to_numpy(model(x[:4], training=False))
    np.testing.assert_allclose(kept, qat.result.reference(x[:4]), atol=1e-5)  # the fake-quant model runs
    with float_model(model):
        plain = keras.ops.convert_to_numpy(model(x[:4], training=False))
    assert not np.allclose(kept, plain, atol=1e-4)
    left = _leftovers(model)
    assert left and all(k.endswith((".fitslim_input_range", ".fitslim_mid_range", "()")) or "weight" in k for k in left)
    assert not any("compute_loss" in k or "train_step" in k for k in left)  # only the fake-quant is kept
    QuantizationAware.remove(model)
    assert _leftovers(model) == []
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model(x[:4], training=False)), plain, atol=1e-6)


@pytest.mark.slow
def test_the_tables_beside_the_model_do_not_keep_it_alive() -> None:
    import gc
    import weakref

    from keras_callbacks import _hooks

    x, y = _data(8)
    model = _small()
    qat = QuantizationAware(start=0.0, keep_fake_quant=True)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[qat, Distillation(_teacher())])
    assert handoff(model).quantized is qat.result and groups(model, kept=True)
    key, ref = id(model), weakref.ref(model)
    del model, qat
    gc.collect()
    assert ref() is None
    assert key not in _hooks._GROUPS and key not in _hooks._HANDOFF
