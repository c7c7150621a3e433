"""Keras ``Distillation``: argument checks, the loss vs the float64 reference, swap-in/out, backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="keras not installed")

from fitslim.distill import combined_loss_reference, kd_loss_reference  # noqa: E402
from keras_callbacks.distillation import Distillation, kd_loss  # noqa: E402
from keras_callbacks.reference import build_digits_classifier  # noqa: E402

CHECKS = Path(__file__).with_name("backend_checks.py")
ROOT = Path(__file__).resolve().parents[2]
N, BATCH = 256, 32


@pytest.fixture(scope="module")
def teacher() -> Any:
    keras.utils.set_random_seed(0)
    return build_digits_classifier(width=1.0)


def _weights(model: Any) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(w).copy() for w in model.weights]


# -- (a) constructor errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"alpha": 1.5}, ValueError, "alpha"),
        ({"loss": "huber"}, ValueError, "loss"),
        ({"feature_weight": -1.0}, ValueError, "feature_weight"),
        ({"features": {"": "x"}}, ValueError, "features|layer name"),
        ({"input_fn": 3}, TypeError, r"Distillation\(input_fn=...\)"),
        ({"output_fn": "logits"}, TypeError, r"Distillation\(output_fn=...\)"),
    ],
)
def test_constructor_rejects_bad_arguments(teacher: Any, kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Distillation(teacher, **kwargs)


def test_teacher_type_is_checked() -> None:
    with pytest.raises(TypeError, match=r"Distillation\(teacher=...\).*HINT"):
        Distillation(teacher=42)


# -- (b) the loss against the float64 reference ----------------------------------------------------------------


@pytest.mark.parametrize(("temperature", "loss"), [(1.0, "kl"), (4.0, "kl"), (2.0, "mse")])
def test_kd_loss_matches_reference(temperature: float, loss: str) -> None:
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(16, 10)).astype("float32") * 3, rng.normal(size=(16, 10)).astype("float32") * 3
    ours = float(keras.ops.convert_to_numpy(kd_loss(s, t, temperature, loss)))
    assert ours == pytest.approx(float(kd_loss_reference(s, t, temperature, loss)), rel=1e-5)


# The fixed logits of tests/core/test_distill.py, with T² KL pinned there by Hinton's formula in plain Python.
FIXED_STUDENT = [[2.0, -1.0, 0.5, 0.0], [0.3, 1.2, -0.7, 2.2], [-1.5, 0.0, 1.0, 3.0]]
FIXED_TEACHER = [[3.0, -2.0, 0.0, 0.5], [0.0, 2.5, -1.0, 1.0], [-2.0, 0.5, 0.5, 4.0]]
FIXED_LABELS = [0, 1, 3]
PINNED_KD = {1.0: 0.2560372051036171, 2.0: 0.3290448529399241, 4.0: 0.34122452426176125}


def _logits_model(rows: list[list[float]], name: str) -> Any:
    """A linear model whose output for the one-hot input e_i is ``rows[i]``: fixed logits through a real model."""
    inputs = keras.Input((len(rows),))
    dense = keras.layers.Dense(len(rows[0]), use_bias=False, name=f"{name}_logits")
    model = keras.Model(inputs, dense(inputs), name=name)
    dense.kernel.assign(np.asarray(rows, dtype="float32"))
    return model


@pytest.mark.parametrize("temperature", sorted(PINNED_KD))
def test_loss_equals_keras_distillation_on_fixed_logits(temperature: float) -> None:
    s, t = np.asarray(FIXED_STUDENT, "float32"), np.asarray(FIXED_TEACHER, "float32")
    ours = float(keras.ops.convert_to_numpy(kd_loss(s, t, temperature)))
    assert ours == pytest.approx(PINNED_KD[temperature], rel=1e-5)
    # keras.distillation's Hinton loss needs a KLDivergence instance: its default loss="kl_divergence" resolves to
    # the plain function, which skips the softmax and compares the scaled logits themselves (5.03 here at T=1).
    reference_loss = keras.distillation.LogitsDistillation(temperature=temperature, loss=keras.losses.KLDivergence())
    theirs = reference_loss.compute_loss(t, s)
    assert ours == pytest.approx(float(keras.ops.convert_to_numpy(theirs)), rel=1e-5)
    # The callback's combined loss on a real model = keras.distillation.Distiller's, student_loss_weight = 1 - alpha.
    x, y = np.eye(3, dtype="float32"), np.asarray(FIXED_LABELS)
    for alpha in (0.3, 0.7):
        student, teacher = _logits_model(FIXED_STUDENT, "student"), _logits_model(FIXED_TEACHER, "teacher")
        student.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        cb = Distillation(teacher, temperature=temperature, alpha=alpha)
        cb.set_model(student)
        cb.on_train_begin()
        try:
            total = student.compute_loss(x=x, y=y, y_pred=student(x), training=True)
        finally:
            cb.on_train_end()
        distiller = keras.distillation.Distiller(
            teacher,
            _logits_model(FIXED_STUDENT, "student_copy"),
            reference_loss,
            student_loss_weight=1.0 - alpha,
        )
        distiller.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        reference = distiller.compute_loss(x=x, y=y, y_pred=distiller(x), training=True)
        assert float(keras.ops.convert_to_numpy(total)) == pytest.approx(
            float(keras.ops.convert_to_numpy(reference)), rel=1e-5
        )


def test_patched_loss_equals_reference_and_swap_restores_everything() -> None:
    sys.path.insert(0, str(CHECKS.parent))
    import backend_checks

    r = backend_checks.check_distillation()
    assert r["loss"] == pytest.approx(r["reference"], rel=1e-5)
    assert r["patched_in"] and r["restored"] and r["eval_loss_is_task_loss"]
    assert r["teacher_frozen"] and r["fit_loss_finite"]


def test_feature_distillation_adds_the_feature_mse(teacher: Any, digits_nhwc: Any) -> None:
    keras.utils.set_random_seed(2)
    student = build_digits_classifier(width=1.0)  # same widths: features of equal shape
    x, y = digits_nhwc.x_train[:BATCH], digits_nhwc.y_train[:BATCH]
    cb = Distillation(teacher, alpha=0.5, features={"transition_act": "transition_act"}, feature_weight=2.0)
    cb.set_model(student)
    y_pred = student(x, training=False)
    task = float(keras.ops.convert_to_numpy(student.compute_loss(x=x, y=y, y_pred=y_pred)))
    cb.on_train_begin()
    try:
        # the student's own feature view runs in training mode (as in the train step): compare in that mode
        feat_s = keras.ops.convert_to_numpy(cb._student_view(x, training=True))
        total = float(keras.ops.convert_to_numpy(student.compute_loss(x=x, y=y, y_pred=y_pred, training=True)))
    finally:
        cb.on_train_end()
    t_view = keras.Model(teacher.inputs, teacher.get_layer("transition_act").output)
    feat_t = keras.ops.convert_to_numpy(t_view(x, training=False))
    kd = kd_loss_reference(keras.ops.convert_to_numpy(y_pred), keras.ops.convert_to_numpy(teacher(x)), 4.0)
    ref = combined_loss_reference(task, float(kd), 0.5, [float(np.mean((feat_s - feat_t) ** 2))], 2.0)
    assert total == pytest.approx(float(ref), rel=1e-4)


# -- (c) end to end --------------------------------------------------------------------------------------------


def test_alpha_zero_equals_plain_training(teacher: Any, digits_nhwc: Any) -> None:
    x, y = digits_nhwc.x_train[:N], digits_nhwc.y_train[:N]
    fit = {"batch_size": BATCH, "epochs": 1, "verbose": 0, "shuffle": False}
    keras.utils.set_random_seed(5)
    plain = build_digits_classifier(width=0.5)
    keras.utils.set_random_seed(5)
    distilled = build_digits_classifier(width=0.5)
    plain.fit(x, y, **fit)
    teacher_before = _weights(teacher)
    distilled.fit(x, y, callbacks=[Distillation(teacher, alpha=0.0)], **fit)
    for a, b in zip(_weights(plain), _weights(distilled), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert all(np.array_equal(a, b) for a, b in zip(teacher_before, _weights(teacher), strict=True))
    assert teacher.trainable  # restored


def test_distillation_changes_training_and_second_fit_is_plain(teacher: Any, digits_nhwc: Any) -> None:
    x, y = digits_nhwc.x_train[:N], digits_nhwc.y_train[:N]
    keras.utils.set_random_seed(6)
    student = build_digits_classifier(width=0.5)
    history = student.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[Distillation(teacher, alpha=0.9)])
    assert np.isfinite(history.history["loss"][0])
    y_pred = student(x[:BATCH], training=False)
    task = student.compute_loss(x=x[:BATCH], y=y[:BATCH], y_pred=y_pred, training=True)
    expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y[:BATCH], y_pred)
    assert float(keras.ops.convert_to_numpy(task)) == pytest.approx(float(keras.ops.convert_to_numpy(expected)), 1e-5)
    assert "compute_loss" not in student.__dict__
    student.fit(x[:64], y[:64], batch_size=BATCH, epochs=1, verbose=0)  # rebuilt train function, plain loss


# -- errors in on_train_begin, before the first step -------------------------------------------------------------


def test_teacher_with_other_output_shape_fails_before_the_first_step(digits_nhwc: Any) -> None:
    inputs = keras.Input((8, 8, 1))
    other = keras.Model(inputs, keras.layers.Dense(5)(keras.layers.Flatten()(inputs)))
    student = build_digits_classifier(width=0.5)
    before = _weights(student)
    with pytest.raises(ValueError, match=r"Distillation\(teacher=...\).*\(None, 5\).*\(None, 10\).*HINT"):
        student.fit(digits_nhwc.x_train[:64], digits_nhwc.y_train[:64], epochs=1, verbose=0,
                    callbacks=[Distillation(other)])  # fmt: skip
    assert int(keras.ops.convert_to_numpy(student.optimizer.iterations)) == 0
    assert all(np.array_equal(a, b) for a, b in zip(before, _weights(student), strict=True))
    assert "compute_loss" not in student.__dict__


@pytest.mark.parametrize(
    ("features", "match"),
    [
        ({"no_such": "transition_act"}, r"student layer 'no_such' does not exist"),
        ({"transition_act": "no_such"}, r"teacher layer 'no_such' does not exist"),
        (
            {"stem_act": "transition_act"},
            r"Distillation\(features=.*student layer 'stem_act' gives \(None, 8, 8, 16\) and teacher layer "
            r"'transition_act' gives \(None, 4, 4, 32\);.*HINT",
        ),
    ],
)
def test_feature_layer_errors(teacher: Any, digits_nhwc: Any, features: dict[str, str], match: str) -> None:
    student = build_digits_classifier(width=1.0)
    with pytest.raises(ValueError, match=match):
        student.fit(digits_nhwc.x_train[:64], digits_nhwc.y_train[:64], epochs=1, verbose=0,
                    callbacks=[Distillation(teacher, features=features)])  # fmt: skip
    assert int(keras.ops.convert_to_numpy(student.optimizer.iterations)) == 0


def test_a_patch_left_by_a_failed_fit_is_replaced(teacher: Any, digits_nhwc: Any) -> None:
    student = build_digits_classifier(width=0.5)
    x, y = digits_nhwc.x_train[:BATCH], digits_nhwc.y_train[:BATCH]
    y_pred = student(x, training=False)
    task = float(keras.ops.convert_to_numpy(student.compute_loss(x=x, y=y, y_pred=y_pred)))
    stale = Distillation(teacher, alpha=0.5)
    stale.set_model(student)
    stale.on_train_begin()  # a fit that raised would never reach on_train_end
    cb = Distillation(teacher, alpha=0.5, temperature=2.0)
    cb.set_model(student)
    cb.on_train_begin()
    total = float(keras.ops.convert_to_numpy(student.compute_loss(x=x, y=y, y_pred=y_pred, training=True)))
    cb.on_train_end()
    t_logits = keras.ops.convert_to_numpy(teacher(x, training=False))
    kd = float(kd_loss_reference(keras.ops.convert_to_numpy(y_pred), t_logits, 2.0))
    # stacked on the stale patch the task loss would weigh 0.25, not 0.5
    assert total == pytest.approx(float(combined_loss_reference(task, kd, 0.5)), rel=1e-5)
    assert "compute_loss" not in student.__dict__


def test_the_student_cannot_be_its_own_teacher(digits_nhwc: Any) -> None:
    student = build_digits_classifier(width=0.5)
    with pytest.raises(ValueError, match="teacher is the model being trained"):
        student.fit(digits_nhwc.x_train[:32], digits_nhwc.y_train[:32], epochs=1, verbose=0,
                    callbacks=[Distillation(student)])  # fmt: skip


def test_teacher_from_a_keras_file(tmp_path: Path, teacher: Any, digits_nhwc: Any) -> None:
    path = tmp_path / "teacher.keras"
    teacher.save(path)
    student = build_digits_classifier(width=0.5)
    cb = Distillation(str(path), alpha=0.5)
    student.fit(digits_nhwc.x_train[:64], digits_nhwc.y_train[:64], epochs=1, verbose=0, callbacks=[cb])
    assert "compute_loss" not in student.__dict__ and int(student.optimizer.iterations.numpy()) == 2


# -- feature adapters -------------------------------------------------------------------------------------------


def test_feature_adapter_maps_the_channel_axis_deterministically() -> None:
    from keras_callbacks.distillation import FeatureAdapter

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3, 5, 4)).astype("float32")
    last = FeatureAdapter(4, 6, axis=-1, key="a")
    k = keras.ops.convert_to_numpy(last.kernel)
    assert k.shape == (4, 6) and np.abs(k).max() <= 0.5  # U(-1/sqrt(4), 1/sqrt(4))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(last(x)), x @ k, rtol=1e-5, atol=1e-6)
    first = FeatureAdapter(3, 2, axis=1, key="a")  # channels first: a 1x1 conv over axis 1
    kf = keras.ops.convert_to_numpy(first.kernel)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(first(x)), np.einsum("nchw,cd->ndhw", x, kf), rtol=1e-5, atol=1e-6
    )
    assert np.array_equal(keras.ops.convert_to_numpy(FeatureAdapter(4, 6, axis=-1, key="a").kernel), k)
    assert not np.array_equal(keras.ops.convert_to_numpy(FeatureAdapter(4, 6, axis=-1, key="b").kernel), k)
    with pytest.raises(ValueError, match=r"FeatureAdapter\(axis=2\)"):
        FeatureAdapter(4, 6, axis=2)


def _check_adapter(r: dict[str, Any], backend: str) -> None:
    assert r["backend"] == backend
    assert r["shapes"] == [[4, 4, 16], [4, 4, 32]] and r["adapter"] == [16, 32]  # width 0.5 vs 1.0: channels differ
    assert r["initial_is_deterministic"] and r["in_trainable_variables"]
    assert r["adapter_change"] > 1e-3  # trained by the optimizer inside the compiled step
    losses = r["losses"]
    assert len(losses) == 16 and losses[-1] < 0.75 * losses[0], losses
    assert r["weights_restored"] and r["optimizer_restored"] and r["reloaded_same"] and r["second_fit_finite"]
    assert r["iterations"] == 18  # 16 distilled steps + 2 plain ones, on the user's own optimizer
    assert r["moments"] == [14, 14, 14]  # its trained slots carried back, none left for the adapter


@pytest.mark.slow
def test_feature_distillation_through_a_learned_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A narrower student feature (16 channels) distils a teacher feature (32) through a Dense adapter."""
    sys.path.insert(0, str(CHECKS.parent))
    import backend_checks

    monkeypatch.setenv("FITSLIM_TMP", str(tmp_path))
    _check_adapter(backend_checks.check_feature_adapter(), "tensorflow")


# -- backends, each in its own process -----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_distillation_on_other_backends(backend: str) -> None:
    pytest.importorskip(backend)
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(CHECKS), "distillation"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=500
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    r = json.loads(lines[-1][len("RESULT ") :])["distillation"]
    assert r["backend"] == backend
    assert r["loss"] == pytest.approx(r["reference"], rel=1e-5)
    assert r["patched_in"] and r["restored"] and r["teacher_frozen"] and r["eval_loss_is_task_loss"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_feature_adapter_on_other_backends(backend: str, tmp_path: Path) -> None:
    pytest.importorskip(backend)
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    env["FITSLIM_TMP"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, str(CHECKS), "adapter"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=500
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    _check_adapter(json.loads(lines[-1][len("RESULT ") :])["adapter"], backend)
