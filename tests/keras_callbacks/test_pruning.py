"""Keras ``Pruning``: argument checks, masks vs the NumPy reference, zeros after every step, resume, backends."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="keras not installed")

from fitslim.sparsity import magnitude_masks, prune_count  # noqa: E402
from keras_callbacks._hooks import handoff  # noqa: E402
from keras_callbacks.pruning import Pruning  # noqa: E402
from keras_callbacks.reference import build_digits_classifier  # noqa: E402

Callback: Any = keras.callbacks.Callback
Model: Any = keras.Model
CHECKS = Path(__file__).with_name("backend_checks.py")
ROOT = Path(__file__).resolve().parents[2]
N, BATCH = 256, 32


def _xy(digits: Any) -> tuple[np.ndarray, np.ndarray]:
    return digits.x_train[:N], digits.y_train[:N]


def _kernels(model: Any) -> dict[str, np.ndarray]:
    return {w.path: keras.ops.convert_to_numpy(w).copy() for w in model.weights}


# -- (a) constructor errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sparsity": 1.0}, ValueError, r"Pruning\(sparsity=...\).*HINT"),
        ({"sparsity": "half"}, TypeError, r"Pruning\(sparsity=...\)"),
        ({"granularity": "block"}, ValueError, r"Pruning\(granularity=...\).*HINT"),
        ({"scope": "model"}, ValueError, r"Pruning\(scope=...\)"),
        ({"importance": "l3"}, ValueError, r"Pruning\(importance=...\)"),
        ({"schedule": "linear"}, ValueError, r"Pruning\(schedule=...\)"),
        ({"schedule": 3}, TypeError, r"Pruning\(schedule=...\)"),
        ({"start": 0.5, "end": 0.5}, ValueError, r"Pruning\(end=...\)"),
        ({"granularity": "2:4", "sparsity": 0.3}, ValueError, r"Pruning\(sparsity=...\).*0\.5"),
        ({"include": [3]}, TypeError, r"Pruning\(include=...\)"),
        ({"exclude": [dict]}, TypeError, r"Pruning\(exclude=...\)"),
        ({"make_permanent": "yes"}, TypeError, r"Pruning\(make_permanent=...\)"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Pruning(**kwargs)


@pytest.mark.slow
def test_defaults_mirror_the_lightning_callback() -> None:
    import inspect

    pytest.importorskip("torch")
    from lightning_plugins.pruning import Pruning as LightningPruning

    ours, theirs = inspect.signature(Pruning.__init__), inspect.signature(LightningPruning.__init__)
    assert list(ours.parameters) == list(theirs.parameters)
    assert [p.default for p in ours.parameters.values()] == [p.default for p in theirs.parameters.values()]
    total = 37
    a, b = Pruning(end=0.6, frequency=4).schedule.resolve(total), LightningPruning(end=0.6, frequency=4).schedule
    b = b.resolve(total)
    assert [a.sparsity(s) for s in range(total)] == [b.sparsity(s) for s in range(total)]
    assert [a.should_update(s) for s in range(total)] == [b.should_update(s) for s in range(total)]


# -- errors in on_train_begin, before the first step -------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"include": ["no_such_layer"]}, ValueError, r"Pruning\(include=...\).*no_such_layer.*HINT"),
        ({"exclude": ["*"]}, ValueError, r"Pruning\(exclude=...\).*no prunable layer left"),
        ({"granularity": "2:4", "include": ["stem_conv"]}, ValueError, r"Pruning\(include=...\).*stem_conv"),
        ({"granularity": "channel", "exclude": ["transition_conv"]}, ValueError, r"no channel group.*HINT"),
    ],
)
def test_model_errors_come_before_the_first_step(
    digits_nhwc: Any, kwargs: dict[str, Any], error: type, match: str
) -> None:
    model = build_digits_classifier(width=0.5)
    before = _kernels(model)
    x, y = _xy(digits_nhwc)
    with pytest.raises(error, match=match):
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[Pruning(**kwargs)])
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 0
    assert all(np.array_equal(before[k], v) for k, v in _kernels(model).items())


def test_a_model_without_prunable_layers_is_rejected(digits_nhwc: Any) -> None:
    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(keras.layers.BatchNormalization()(inputs)))
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="no prunable layer.*HINT"):
        model.fit(digits_nhwc.x_train[:32], np.zeros((32, 1)), epochs=1, verbose=0, callbacks=[Pruning()])


# -- (b)(c) masks vs reference, exact sparsity, zeros after every step, logs ---------------------------------


def test_masks_reference_and_zeros_after_every_step() -> None:
    sys.path.insert(0, str(CHECKS.parent))
    import backend_checks

    result = backend_checks.check_pruning("unstructured")
    assert result["zeros_after_every_step"] and result["masks_equal_reference"]
    assert result["pruned"] == result["expected_pruned"] and result["final_zero_fraction"] == pytest.approx(0.6)
    assert result["last_logged_sparsity"] == pytest.approx(0.6)


def test_two_four_keeps_two_of_every_four_inputs() -> None:
    sys.path.insert(0, str(CHECKS.parent))
    import backend_checks

    result = backend_checks.check_pruning("2:4")
    assert result["zeros_after_every_step"] and result["masks_equal_reference"]
    assert result["layers"] == ["block_pw_conv", "transition_conv", "head_fc"]  # stem (1 input), depthwise skipped
    assert result["pruned"] == result["expected_pruned"]


def test_masks_equal_the_lightning_layout_masks(digits_nhwc: Any) -> None:
    """The same weights give the same masks whether laid out as Keras (..., in, out) or torch (out, in, ...)."""
    model = build_digits_classifier(width=0.5)
    x, y = _xy(digits_nhwc)
    cb = Pruning(sparsity=0.7, schedule="constant", start_step=0, frequency=100)
    model.fit(x[:BATCH], y[:BATCH], batch_size=BATCH, epochs=1, verbose=0, callbacks=[cb])
    ours = cb.masks
    torch_layout = []
    for name in ours:
        k = keras.ops.convert_to_numpy(model.get_layer(name).kernel)
        torch_layout.append(np.moveaxis(k, (-1, -2), (0, 1)) if k.ndim == 4 else k.T)
    # with masks already applied, recompute from the masked weights: zeros are the lowest scores
    ref = magnitude_masks(torch_layout, 0.7)
    for (name, mask), r in zip(ours.items(), ref, strict=True):
        back = np.moveaxis(r, (0, 1), (-1, -2)) if r.ndim == 4 else r.T
        assert np.array_equal(mask, back), name
    total = sum(m.size for m in ours.values())
    assert sum(int(m.size - m.sum()) for m in ours.values()) == prune_count(total, 0.7)


def test_sparsity_reaches_the_csv_logger_and_second_fit_behaves(tmp_path: Path, digits_nhwc: Any) -> None:
    keras.utils.set_random_seed(1)
    model = build_digits_classifier(width=0.5)
    x, y = _xy(digits_nhwc)
    log_file = tmp_path / "log.csv"
    cb = Pruning(sparsity=0.5, end=0.5)
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[cb, keras.callbacks.CSVLogger(str(log_file))])
    rows = list(csv.DictReader(log_file.open()))
    assert [float(r["pruning/sparsity"]) for r in rows][-1] == pytest.approx(0.5)
    assert "pruning/sparsity/head_fc" in rows[0] and float(rows[-1]["pruning/target"]) == pytest.approx(0.5)
    pruned = _kernels(model)
    preds = model.predict(x[:16], verbose=0)
    model.evaluate(x[:64], y[:64], verbose=0)
    assert np.allclose(preds, keras.ops.convert_to_numpy(model(x[:16], training=False)), atol=1e-5)
    assert all(np.array_equal(pruned[k], v) for k, v in _kernels(model).items())  # evaluate/predict change nothing
    history = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)  # nothing of the callback is attached
    assert "pruning/sparsity" not in history.history


# -- channel pruning: masks during fit, physical rebuild at the end ---------------------------------------------

EXPECTED_SHAPES = {
    "stem_conv": [3, 3, 1, 8],
    "stem_bn": [8],
    "block_dw_conv": [3, 3, 8, 1],
    "block_dw_bn": [8],
    "block_pw_conv": [1, 1, 8, 8],
    "block_pw_bn": [8],
    "transition_conv": [3, 3, 8, 16],
    "transition_bn": [16],
    "head_fc": [16, 10],
}


def _assert_channel_result(r: dict[str, Any]) -> None:
    assert r["shapes"] == EXPECTED_SHAPES  # residual group (stem, depthwise, pointwise) and transition halved
    assert r["max_abs_diff"] <= 1e-5  # the rebuilt model computes what the masked model computed
    assert r["params"][1] < r["params"][0] * 0.6 and r["trains"]


@pytest.mark.slow
def test_channel_pruning_rebuilds_a_functional_model() -> None:
    sys.path.insert(0, str(CHECKS.parent))
    import backend_checks

    _assert_channel_result(backend_checks.check_channel())


def test_channel_defaults_keep_first_conv_and_head(digits_nhwc: Any) -> None:
    model = build_digits_classifier(width=1.0)
    x, y = _xy(digits_nhwc)
    cb = Pruning(sparsity=0.5, granularity="channel", end=0.5)
    history = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[cb])
    assert history.history["pruning/channel_sparsity"][-1] == pytest.approx(0.5)
    new = cb.pruned_model
    # the first conv is in the residual group, so the whole group stays; the transition group is halved
    assert tuple(new.get_layer("stem_conv").kernel.shape) == (3, 3, 1, 16)
    assert tuple(new.get_layer("transition_conv").kernel.shape) == (3, 3, 16, 16)
    assert tuple(new.get_layer("head_fc").kernel.shape) == (16, 10)
    assert handoff(model).pruned_model is new  # for an Export after this callback, beside the model, not on it
    assert not [k for k in vars(model) if "fitslim" in k]
    np.testing.assert_allclose(new.predict(x[:32], verbose=0), model.predict(x[:32], verbose=0), atol=1e-5)


def test_channel_pruning_rebuilds_a_sequential_model(digits_nhwc: Any) -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, padding="same", name="c1"),
            keras.layers.ReLU(),
            keras.layers.Conv2D(12, 3, padding="same", name="c2"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10, name="fc"),
        ]
    )
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _xy(digits_nhwc)
    cb = Pruning(sparsity=0.25, granularity="channel", schedule="constant", include=["c1", "c2"])
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[cb])
    new = cb.pruned_model
    assert isinstance(new, keras.Sequential)
    assert [tuple(new.get_layer(n).kernel.shape) for n in ("c1", "c2", "fc")] == [(3, 3, 1, 6), (3, 3, 6, 9), (9, 10)]
    np.testing.assert_allclose(new.predict(x[:32], verbose=0), model.predict(x[:32], verbose=0), atol=1e-5)


def test_channel_pruning_rejects_a_subclassed_model(digits_nhwc: Any) -> None:
    class Net(Model):
        def __init__(self) -> None:
            super().__init__()
            self.conv = keras.layers.Conv2D(8, 3)
            self.pool = keras.layers.GlobalAveragePooling2D()
            self.fc = keras.layers.Dense(10)

        def call(self, inputs: Any) -> Any:
            return self.fc(self.pool(self.conv(inputs)))

    model = Net()
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model(digits_nhwc.x_train[:2])
    with pytest.raises(ValueError, match=r"Pruning\(granularity=...\).*'Net' is a subclassed model.*HINT"):
        model.fit(digits_nhwc.x_train[:32], digits_nhwc.y_train[:32], epochs=1, verbose=0,
                  callbacks=[Pruning(granularity="channel", include=["conv"])])  # fmt: skip
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 0


# -- (d) resume equality ------------------------------------------------------------------------------------


class _Interrupt(Callback):
    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


def _fresh(seed: int = 3) -> Any:
    keras.utils.set_random_seed(seed)
    return build_digits_classifier(width=0.5)


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["unstructured", "channel"])
def test_backup_and_restore_resume_equals_uninterrupted_run(tmp_path: Path, digits_nhwc: Any, granularity: str) -> None:
    x, y = _xy(digits_nhwc)
    fit = {"batch_size": BATCH, "epochs": 3, "verbose": 0, "shuffle": False}
    include = ["*_conv"] if granularity == "channel" else None

    def pruning() -> Pruning:
        return Pruning(sparsity=0.6, granularity=granularity, end=0.9, frequency=3, include=include)

    full, cb_full = _fresh(), pruning()
    full.fit(x, y, callbacks=[cb_full], **fit)

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    first = _fresh()
    with pytest.raises(RuntimeError, match="interrupted"):
        first.fit(x, y, callbacks=[pruning(), backup, _Interrupt(2)], **fit)
    resumed, cb_resumed = _fresh(seed=99), pruning()  # other init: everything must come from the backup
    resumed.fit(x, y, callbacks=[cb_resumed, keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))], **fit)

    a, b = _kernels(full), _kernels(resumed)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
    for name, mask in cb_full.masks.items():
        assert np.array_equal(mask, cb_resumed.masks[name]), name
    if granularity == "channel":
        for layer in cb_full.pruned_model.layers:
            for w_full, w_resumed in zip(
                layer.weights, cb_resumed.pruned_model.get_layer(layer.name).weights, strict=True
            ):
                assert tuple(w_full.shape) == tuple(w_resumed.shape), layer.name


@pytest.mark.slow
def test_keras_file_saved_mid_training_reloads_with_masks(tmp_path: Path, digits_nhwc: Any) -> None:
    x, y = _xy(digits_nhwc)
    fit = {"batch_size": BATCH, "epochs": 2, "verbose": 0, "shuffle": False}

    def pruning() -> Pruning:
        return Pruning(sparsity=0.5, start=0.0, end=1.0, frequency=5)  # the schedule runs on after epoch 0

    full, cb_full = _fresh(), pruning()
    full.fit(x, y, callbacks=[cb_full], **fit)

    path = tmp_path / "mid.keras"

    class SaveAndStop(Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.model.save(path)
            self.model.stop_training = True

    cb_first = pruning()
    _fresh().fit(x, y, callbacks=[cb_first, SaveAndStop()], **fit)
    reloaded = keras.saving.load_model(path)
    cb_next = pruning()

    class Peek(Callback):
        masks: dict[str, np.ndarray] = {}

        def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            if not Peek.masks:
                Peek.masks = {k: v.copy() for k, v in cb_next.masks.items()}

    reloaded.fit(x, y, initial_epoch=1, callbacks=[cb_next, Peek()], **fit)
    for name, mask in cb_first.masks.items():  # masks in effect right after the reload
        assert np.array_equal(mask, Peek.masks[name]), name
    a, b = _kernels(full), _kernels(reloaded)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)


# -- (e) distributed, and the other backends, each in its own process -----------------------------------------


def _run_checks(mode: str, backend: str) -> dict[str, Any]:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(CHECKS), mode], capture_output=True, text=True, env=env, cwd=ROOT, timeout=500
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result


@pytest.mark.slow
def test_mirrored_strategy_keeps_identical_masks_on_both_replicas() -> None:
    result = _run_checks("mirrored", "tensorflow")
    assert result["replicas"] == 2 and result["identical"] and result["zeros"]
    assert result["sparsity"] == pytest.approx(0.5)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_pruning_on_other_backends(backend: str) -> None:
    pytest.importorskip(backend)
    result = _run_checks("pruning", backend)
    for key in ("pruning", "pruning_2_4"):
        r = result[key]
        assert r["backend"] == backend
        assert r["zeros_after_every_step"] and r["masks_equal_reference"], r
        assert r["pruned"] == r["expected_pruned"]
    _assert_channel_result(result["channel"])


def test_channel_round_to_keeps_a_multiple_of_eight(digits_nhwc: Any) -> None:
    model = build_digits_classifier(width=1.0)
    x, y = _xy(digits_nhwc)
    # 60% of the transition conv's 32 channels would leave 13; round_to=8 keeps 16, the best-scoring three again
    cb = Pruning(sparsity=0.6, granularity="channel", end=0.5, round_to=8)
    history = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[cb])
    assert history.history["pruning/channel_sparsity"][-1] == pytest.approx(0.5)
    assert cb.pruned_model.get_layer("transition_conv").filters == 16
    with pytest.raises(ValueError, match=r"Pruning\(round_to=...\)"):
        Pruning(granularity="unstructured", round_to=8)


# -- attention: whole heads of MultiHeadAttention, or the MLP only ----------------------------------------


def _attention_model(nested: bool = False) -> Any:
    """A transformer block: MultiHeadAttention (4 heads) + residual + LayerNorm + MLP, optionally in a sub-model."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 16))
    x = keras.layers.Dense(16, name="embed")(inputs)
    if nested:
        inner_in = keras.Input((6, 16))
        inner = keras.Model(inner_in, keras.layers.MultiHeadAttention(4, 8, name="mha")(inner_in, inner_in), name="blk")
        a = inner(x)
    else:
        a = keras.layers.MultiHeadAttention(num_heads=4, key_dim=8, name="mha")(x, x)
    x = keras.layers.LayerNormalization(name="ln")(keras.layers.Add()([x, a]))
    h = keras.layers.Dense(32, activation="gelu", name="mlp_up")(x)
    x = keras.layers.Add()([x, keras.layers.Dense(16, name="mlp_down")(h)])
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="head")(x))
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _tokens() -> tuple[np.ndarray, np.ndarray]:
    return np.random.default_rng(0).standard_normal((16, 6, 16)).astype(np.float32), np.arange(16) % 10


def _mha_kernels(layer: Any) -> list[np.ndarray]:
    parts = (layer._query_dense, layer._key_dense, layer._value_dense, layer._output_dense)
    return [keras.ops.convert_to_numpy(p.kernel) for p in parts]


def test_attention_heads_removes_whole_heads_and_the_smaller_model_computes_the_same() -> None:
    model = _attention_model()
    x, y = _tokens()
    cb = Pruning(sparsity=0.5, granularity="channel", end=0.5, attention="heads")
    logs = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[cb]).history
    assert logs["pruning/head_sparsity"][-1] == pytest.approx(0.5)
    # in the masked model two heads are zero in q, k, v (axis 1) and o (axis 0), the same two everywhere
    q, k, v, o = _mha_kernels(model.get_layer("mha"))
    dead = [~np.any(w != 0, axis=tuple(i for i in range(3) if i != a)) for w, a in ((q, 1), (k, 1), (v, 1), (o, 0))]
    assert dead[0].sum() == 2 and all(np.array_equal(d, dead[0]) for d in dead)
    small = cb.pruned_model
    mha = small.get_layer("mha")
    assert mha.num_heads == 2 and [w.shape for w in _mha_kernels(mha)] == [(16, 2, 8)] * 3 + [(2, 8, 16)]
    assert small.get_layer("mlp_up").units < 32  # the MLP is pruned as well
    want = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(small(x, training=False)), want, rtol=1e-5, atol=1e-5)
    assert np.isfinite(small.fit(x, y, batch_size=8, epochs=1, verbose=0).history["loss"][-1])


def test_attention_mlp_leaves_attention_whole() -> None:
    model = _attention_model()
    x, y = _tokens()
    cb = Pruning(sparsity=0.5, granularity="channel", end=0.5, attention="mlp")
    logs = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[cb]).history
    assert "pruning/head_sparsity" not in logs
    assert all(np.count_nonzero(w) == w.size for w in _mha_kernels(model.get_layer("mha")))
    small = cb.pruned_model
    assert small.get_layer("mha").num_heads == 4 and small.get_layer("mlp_up").units == 16


def test_attention_heads_that_cannot_be_removed_are_refused_before_the_first_step() -> None:
    model = _attention_model(nested=True)
    x, y = _tokens()
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
    with pytest.raises(ValueError, match=r"Pruning\(attention=.*'mha'.*nested model 'blk'.*HINT: pass attention='mlp'"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[Pruning(granularity="channel")])
    for a, w in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(w))
    cb = Pruning(sparsity=0.5, granularity="channel", end=0.5, attention="mlp")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[cb])  # the way out named in the message works
    assert cb.pruned_model.get_layer("mlp_up").units == 16
