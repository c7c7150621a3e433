"""Checks of the Keras ``Pruning`` and ``Distillation`` (with feature adapters) callbacks, on any Keras backend.

Imported by the tests (TensorFlow, in process) and run as a script in a subprocess per backend, because
``KERAS_BACKEND`` must be set before keras is imported:

    KERAS_BACKEND=jax python tests/keras_callbacks/backend_checks.py pruning   # distillation, adapter; one JSON line
    python tests/keras_callbacks/backend_checks.py mirrored                    # 2 logical CPUs, TensorFlow

Each check returns plain numbers and booleans; the tests assert on them.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np

N_TRAIN = 256
BATCH = 32


def _data() -> tuple[np.ndarray, np.ndarray]:
    from fitslim.data import digits

    d = digits(size=8, layout="NHWC")
    return d.x_train[:N_TRAIN], d.y_train[:N_TRAIN]


class Recorder:
    """A callback recording, at every batch end, each pruned kernel's zeros against the callback's masks."""

    def __new__(cls, pruning: Any) -> Any:
        import keras

        from keras_callbacks._backend import sync_state

        class _Recorder(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.zeros_ok: list[bool] = []
                self.sparsity: list[float] = []

            def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
                sync_state(self.model)
                ok = True
                for name, mask in pruning.masks.items():
                    w = keras.ops.convert_to_numpy(self.model.get_layer(name).kernel)
                    ok = ok and bool(np.all(w[~mask] == 0))
                self.zeros_ok.append(ok)
                self.sparsity.append(float((logs or {}).get("pruning/sparsity", -1.0)))

        return _Recorder()


def check_pruning(granularity: str = "unstructured", epochs: int = 2) -> dict[str, Any]:
    """Fit the digits CNN with ``Pruning``; report zeros after every step and masks vs the NumPy reference."""
    import keras

    from fitslim.sparsity import magnitude_masks, n_of_m_mask, prune_count
    from keras_callbacks.pruning import Pruning
    from keras_callbacks.reference import build_digits_classifier

    x, y = _data()
    keras.utils.set_random_seed(0)
    model = build_digits_classifier(width=0.5)
    sparsity = 0.5 if granularity == "2:4" else 0.6
    cb = Pruning(sparsity=sparsity, granularity=granularity, end=0.5, frequency=3)
    seen: dict[str, Any] = {}

    class Before(keras.callbacks.Callback):
        """Runs before Pruning at each batch begin: keeps the kernels the masks are computed from."""

        def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            from keras_callbacks._backend import sync_state

            sync_state(self.model)
            step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            if cb._resolved is not None and cb._resolved.should_update(step):
                seen["step"] = step
                seen["kernels"] = [keras.ops.convert_to_numpy(lay.kernel) for _, lay in cb._layers]
                seen["target"] = cb._resolved.sparsity(step)

    rec = Recorder(cb)
    model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, shuffle=False, callbacks=[Before(), cb, rec])
    masks = list(cb.masks.values())
    if granularity == "2:4":
        from keras_callbacks.pruning import _input_axis

        ref = [
            n_of_m_mask(k, 2, 4, axis=_input_axis(lay) or 0)
            for k, (_, lay) in zip(seen["kernels"], cb._layers, strict=True)
        ]
    else:
        ref = magnitude_masks(seen["kernels"], seen["target"], "global", "l1")
    total = sum(m.size for m in masks)
    pruned = sum(int(m.size - m.sum()) for m in masks)
    return {
        "backend": keras.backend.backend(),
        "layers": cb.layer_names,
        "zeros_after_every_step": all(rec.zeros_ok) and len(rec.zeros_ok) == epochs * (N_TRAIN // BATCH),
        "masks_equal_reference": all(np.array_equal(a, b) for a, b in zip(masks, ref, strict=True)),
        "pruned": pruned,
        "expected_pruned": prune_count(total, seen["target"]) if granularity != "2:4" else total // 2,
        "last_logged_sparsity": rec.sparsity[-1],
        "final_zero_fraction": float(
            np.mean(np.concatenate([(keras.ops.convert_to_numpy(lay.kernel) == 0).ravel() for _, lay in cb._layers]))
        ),
    }


def check_channel() -> dict[str, Any]:
    """Channel pruning of every conv group, then the physical rebuild: shapes and identical predictions."""
    import keras

    from keras_callbacks.pruning import Pruning
    from keras_callbacks.reference import build_digits_classifier

    x, y = _data()
    keras.utils.set_random_seed(0)
    model = build_digits_classifier(width=1.0)
    cb = Pruning(sparsity=0.5, granularity="channel", scope="layer", end=0.5, frequency=3, include=["*_conv"])
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, shuffle=False, callbacks=[cb])
    new = cb.pruned_model
    shapes = {lay.name: list(lay.weights[0].shape) for lay in new.layers if lay.weights}
    before = keras.ops.convert_to_numpy(model.predict(x[:64], verbose=0))
    after = keras.ops.convert_to_numpy(new.predict(x[:64], verbose=0))
    history = new.fit(x[:64], y[:64], batch_size=BATCH, epochs=1, verbose=0)
    return {
        "backend": keras.backend.backend(),
        "shapes": shapes,
        "max_abs_diff": float(np.abs(before - after).max()),
        "params": [int(model.count_params()), int(new.count_params())],
        "trains": bool(np.isfinite(history.history["loss"][-1])),
    }


def check_distillation() -> dict[str, Any]:
    """The patched loss equals the float64 reference on a batch; swap-in/out restores everything."""
    import keras

    from fitslim.distill import combined_loss_reference, kd_loss_reference
    from keras_callbacks.distillation import Distillation
    from keras_callbacks.reference import build_digits_classifier

    x, y = _data()
    keras.utils.set_random_seed(0)
    teacher = build_digits_classifier(width=1.0)
    student = build_digits_classifier(width=0.5)
    cb = Distillation(teacher, temperature=3.0, alpha=0.6)
    cb.set_model(student)
    xb, yb = x[:BATCH], y[:BATCH]
    y_pred = student(xb, training=False)
    task = float(keras.ops.convert_to_numpy(student.compute_loss(x=xb, y=yb, y_pred=y_pred, training=True)))
    cb.on_train_begin()
    patched_in = "compute_loss" in student.__dict__ and not teacher.trainable
    total = float(keras.ops.convert_to_numpy(student.compute_loss(x=xb, y=yb, y_pred=y_pred, training=True)))
    eval_loss = float(keras.ops.convert_to_numpy(student.compute_loss(x=xb, y=yb, y_pred=y_pred, training=False)))
    cb.on_train_end()
    s_logits = keras.ops.convert_to_numpy(y_pred)
    t_logits = keras.ops.convert_to_numpy(teacher(xb, training=False))
    ref = float(combined_loss_reference(task, float(kd_loss_reference(s_logits, t_logits, 3.0)), 0.6))
    teacher_before = [keras.ops.convert_to_numpy(w).copy() for w in teacher.weights]
    history = student.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False, callbacks=[cb])
    teacher_after = [keras.ops.convert_to_numpy(w) for w in teacher.weights]
    return {
        "backend": keras.backend.backend(),
        "loss": total,
        "reference": ref,
        "eval_loss_is_task_loss": abs(eval_loss - task) <= 1e-6 * max(1.0, abs(task)),
        "patched_in": patched_in,
        "restored": "compute_loss" not in student.__dict__ and teacher.trainable,
        "teacher_frozen": all(np.array_equal(a, b) for a, b in zip(teacher_before, teacher_after, strict=True)),
        "fit_loss_finite": bool(np.isfinite(history.history["loss"][-1])),
    }


def check_feature_adapter() -> dict[str, Any]:
    """Feature distillation from a wider teacher through a learned adapter; the student is plain after fit."""
    import keras

    from keras_callbacks._backend import sync_state
    from keras_callbacks.distillation import Distillation, FeatureAdapter
    from keras_callbacks.reference import build_digits_classifier

    x, y = _data()
    keras.utils.set_random_seed(0)
    teacher = build_digits_classifier(width=1.0)
    teacher.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    student = build_digits_classifier(width=0.5)
    key = "transition_act"
    cb = Distillation(teacher, alpha=0.5, features={key: key}, feature_weight=1.0)
    n_weights, optimizer = len(student.weights), student.optimizer
    shapes = [list(student.get_layer(key).output.shape[1:]), list(teacher.get_layer(key).output.shape[1:])]
    seen: dict[str, Any] = {"losses": []}

    class Probe(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            if "initial" not in seen:
                sync_state(self.model)
                seen["initial"] = keras.ops.convert_to_numpy(cb.adapters[key].kernel).copy()
                seen["in_trainable"] = any(v is cb.adapters[key].kernel for v in self.model.trainable_variables)

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            sync_state(self.model)
            seen["losses"].append(cb.feature_losses(x[:BATCH])[key])

    student.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, shuffle=False, callbacks=[cb, Probe()])
    adapter = cb.adapters[key]
    fresh = FeatureAdapter(adapter.cin, adapter.cout, axis=-1, key=key)
    final = keras.ops.convert_to_numpy(adapter.kernel)
    slots = [keras.ops.convert_to_numpy(v) for v in optimizer.variables if v.name.endswith("_momentum")]
    path = Path(os.environ.get("FITSLIM_TMP", ".")) / f"student_{keras.backend.backend()}.keras"
    student.save(path)
    reloaded = keras.saving.load_model(path)
    xb = x[:BATCH]
    same = np.allclose(reloaded.predict(xb, verbose=0), student.predict(xb, verbose=0), atol=1e-5)
    path.unlink()
    history = student.fit(x[:64], y[:64], batch_size=BATCH, epochs=1, verbose=0)  # a plain second fit
    return {
        "backend": keras.backend.backend(),
        "shapes": shapes,
        "adapter": [adapter.cin, adapter.cout],
        "initial_is_deterministic": bool(np.array_equal(seen["initial"], keras.ops.convert_to_numpy(fresh.kernel))),
        "in_trainable_variables": bool(seen["in_trainable"]),
        "adapter_change": float(np.abs(final - seen["initial"]).max()),
        "losses": seen["losses"],
        "weights_restored": len(student.weights) == n_weights and not hasattr(student, "fitslim_distillation_adapters"),
        "optimizer_restored": student.optimizer is optimizer,
        "iterations": int(keras.ops.convert_to_numpy(optimizer.iterations)),
        # the user's Adam has a trained first moment for every student variable (and none for the adapter)
        "moments": [len(slots), len(student.trainable_variables), int(sum(bool(np.abs(m).max() > 0) for m in slots))],
        "reloaded_same": bool(same),
        "second_fit_finite": bool(np.isfinite(history.history["loss"][-1])),
    }


def check_mirrored() -> dict[str, Any]:
    """Pruning under ``tf.distribute.MirroredStrategy`` over 2 logical CPUs: identical masks on both replicas."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras

    from keras_callbacks.pruning import Pruning
    from keras_callbacks.reference import build_digits_classifier

    x, y = _data()
    keras.utils.set_random_seed(0)
    strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    with strategy.scope():
        model = build_digits_classifier(width=0.5)
    cb = Pruning(sparsity=0.5, end=0.5, frequency=2)
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, shuffle=False, callbacks=[cb])
    same, zeros_ok = True, True
    for name, mask in cb.masks.items():
        var = model.get_layer(name).kernel.value
        replicas = [np.asarray(v) for v in strategy.experimental_local_results(var)]
        same = same and all(np.array_equal(replicas[0], r) for r in replicas[1:])
        zeros_ok = zeros_ok and all(bool(np.all(r[~mask] == 0)) for r in replicas)
    return {
        "replicas": int(strategy.num_replicas_in_sync),
        "identical": same,
        "zeros": zeros_ok,
        "sparsity": float(cb._metrics.get("pruning/sparsity", -1.0)),
    }


# -- a model fit before: fit once, saved and reloaded, or compiled again, then the callbacks' fit ---------------

#: the callback fits take 512 samples in batches of 64, 8 steps per epoch, 2 epochs; the plain fit before is 2 epochs
#: on all 1,259 digits (40 optimizer steps: 8 epochs took half the file's time on the torch backend), more than a
#: whole callback fit (16 steps), so a schedule read from ``optimizer.iterations`` finds every phase over at its first
#: batch
FB_N, FB_BATCH, FB_EPOCHS, FB_BEFORE = 512, 64, 2, 2
FIT_BEFORE_PATHS = ("fit", "reloaded", "recompiled")


def _fb_data(n: int | None = FB_N) -> tuple[np.ndarray, np.ndarray]:
    from fitslim.data import digits

    d = digits(size=8, layout="NHWC")
    return d.x_train[:n], d.y_train[:n]


def _fit_once() -> Any:
    """The digits CNN after one ordinary ``model.fit``."""
    import keras

    from keras_callbacks.reference import build_digits_classifier

    x, y = _fb_data(None)
    keras.utils.set_random_seed(0)
    model = build_digits_classifier(width=0.5)
    model.fit(x, y, batch_size=FB_BATCH, epochs=FB_BEFORE, verbose=0, shuffle=False)
    return model


def _fit_before_models(file: Path) -> dict[str, Any]:
    """``fit``: a model after one plain fit; ``reloaded``: that model saved to ``file`` and loaded with
    ``keras.models.load_model``; ``recompiled``: a loaded copy compiled again with a new optimizer."""
    import keras

    fit = _fit_once()
    fit.save(file)
    recompiled = keras.models.load_model(file)
    recompiled.compile(
        optimizer=keras.optimizers.Adam(learning_rate=5e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return {"fit": fit, "reloaded": keras.models.load_model(file), "recompiled": recompiled}


def check_fit_before_recipe(model: Any, teacher: Any, export_to: Path | None) -> dict[str, Any]:
    """The README recipe on a model fit before: ``Pruning(channel)``, ``QuantizationAware``, ``Distillation`` and,
    with ``export_to``, an int8 ``Export`` (where the backend has an int8 target) in one fit; what each did."""
    import keras

    from keras_callbacks.distillation import Distillation
    from keras_callbacks.export import Export
    from keras_callbacks.pruning import Pruning
    from keras_callbacks.quantization import QuantizationAware, fake_quant_inference

    x, y = _fb_data()
    pruning = Pruning(sparsity=0.5, granularity="channel", end=0.5, frequency=2, include=["*_conv"])
    qat = QuantizationAware(start=0.5, freeze_bn=0.8, freeze_observers=0.9, keep_fake_quant=True)
    distill = Distillation(teacher, temperature=3.0, alpha=0.6)
    phases: list[float] = []

    class Phases(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            phases.append(float((logs or {}).get("qat/phase", -1.0)))

    backend = keras.backend.backend()
    # TFLite needs TensorFlow graphs; the torch backend exports ONNX (the TensorRT Q/DQ file); JAX's ONNX export
    # needs jax2onnx, which is not in the stack
    targets = {"tensorflow": ["tflite"], "torch": ["tensorrt"]}.get(backend)
    rec = Recorder(pruning)
    callbacks: list[Any] = [pruning, qat, distill, rec, Phases()]
    export = None
    if targets and export_to is not None:
        export = Export(targets=targets, precision="int8", directory=export_to, calibration_batches=2, batch_size=64)
        callbacks.append(export)
    out: dict[str, Any] = {"backend": backend, "error": None, "phases": phases}
    try:
        history = model.fit(x, y, batch_size=FB_BATCH, epochs=FB_EPOCHS, verbose=0, shuffle=False, callbacks=callbacks)
        out["history"] = {k: [float(v) for v in vs] for k, vs in history.history.items()}
    except ValueError as err:
        out["error"] = str(err)
    out["zeros_after_every_step"] = bool(rec.zeros_ok) and all(rec.zeros_ok)
    out["channel_sparsity"] = float(pruning._metrics.get("pruning/channel_sparsity", -1.0))
    out["distillation_restored"] = "compute_loss" not in model.__dict__ and teacher.trainable
    spec, smaller = qat.quant_spec, pruning.pruned_model
    if spec is not None and smaller is not None:
        xb = x[:64]
        predicted = np.asarray(smaller.predict(xb, verbose=0))
        with fake_quant_inference(smaller, spec):
            reference = np.asarray(keras.ops.convert_to_numpy(smaller(xb, training=False)))
        out["params"] = [int(model.count_params()), int(smaller.count_params())]
        out["layers"] = [lq.name for lq in spec]
        out["input_scales"] = [lq.input_scale for lq in spec]
        out["predict_rows_as_fake_quant"] = float((np.abs(predicted - reference).max(1) <= 1e-4).mean())
    if export is not None and export.report is not None:
        out["export"] = [
            {"target": r.target, "ok": bool(r.ok), "top1": r.top1_agreement, "scales": str(r.scales)}
            for r in export.report
        ]
    return out


def check_fit_before_pruning(model: Any) -> dict[str, Any]:
    """Unstructured ``Pruning`` on a model fit before: the target reached, zeros after every step."""
    import keras

    from keras_callbacks.pruning import Pruning

    x, y = _fb_data()
    cb = Pruning(sparsity=0.5, end=0.5, frequency=2)
    rec = Recorder(cb)
    model.fit(x, y, batch_size=FB_BATCH, epochs=FB_EPOCHS, verbose=0, shuffle=False, callbacks=[cb, rec])
    masks = list(cb.masks.values())
    kernels = [keras.ops.convert_to_numpy(model.get_layer(name).kernel) for name in cb.masks]
    return {
        "backend": keras.backend.backend(),
        "zeros_after_every_step": bool(rec.zeros_ok) and all(rec.zeros_ok),
        "logged_sparsity": rec.sparsity,
        "mask_sparsity": float(sum(int(m.size - m.sum()) for m in masks) / max(sum(m.size for m in masks), 1)),
        "zero_fraction": float(np.mean(np.concatenate([(k == 0).ravel() for k in kernels]))),
    }


def check_fit_before(unstructured: tuple[str, ...] = FIT_BEFORE_PATHS) -> dict[str, Any]:
    """The recipe on every path, unstructured pruning on the ``unstructured`` paths: ``{path: {"recipe": ...,
    "unstructured": ...}}``.

    The recipe distills from the model as it was fit before (a reloaded copy: self-distillation, no second
    training run), and exports on the ``fit`` path only (the export takes the spec the same way on every path).
    """
    import keras

    tmp = Path(os.environ.get("FITSLIM_TMP", "."))
    file = tmp / f"fit_before_{keras.backend.backend()}.keras"
    out: dict[str, Any] = {path: {} for path in FIT_BEFORE_PATHS}
    try:
        models = _fit_before_models(file)
        teacher = keras.models.load_model(file)
        for path, model in models.items():
            out[path]["recipe"] = check_fit_before_recipe(model, teacher, tmp / "export" if path == "fit" else None)
        if unstructured == ("fit",):
            out["fit"]["unstructured"] = check_fit_before_pruning(_fit_once())
        elif unstructured:
            models = _fit_before_models(file)
            for path in unstructured:
                out[path]["unstructured"] = check_fit_before_pruning(models[path])
    finally:
        file.unlink(missing_ok=True)
    return out


def main(mode: str) -> dict[str, Any]:
    """Run the checks of one mode and return their results."""
    if mode == "mirrored":
        return check_mirrored()
    if mode == "distillation":
        return {"distillation": check_distillation()}
    if mode == "adapter":
        return {"adapter": check_feature_adapter()}
    if mode == "fit_before":  # the subprocess backends: unstructured pruning on the fit path only (CPU time)
        return check_fit_before(unstructured=("fit",))
    return {"pruning": check_pruning("unstructured"), "pruning_2_4": check_pruning("2:4"), "channel": check_channel()}


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    result = main(sys.argv[1] if len(sys.argv) > 1 else "pruning")
    print("RESULT " + json.dumps(result))
