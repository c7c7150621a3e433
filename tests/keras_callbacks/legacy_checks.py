"""Legacy tf-keras / tfmot checks, run by ``test_legacy.py`` in their own process.

tfmot flips ``TF_USE_LEGACY_KERAS=1`` for the whole process, so none of this may run inside the
pytest process. Usage: ``python tests/keras_callbacks/legacy_checks.py CHECK OUTDIR``; prints one JSON
line prefixed ``RESULT `` with what the test asserts on.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def _data(n: int = 512) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from fitslim.data import digits

    d = digits(size=8, layout="NHWC")
    return d.x_train[:n], d.y_train[:n], d.x_test, d.y_test


def _tf_keras_model() -> Any:
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    layers = tf_keras.layers
    model = tf_keras.Sequential(
        [
            layers.Conv2D(8, 3, padding="same", input_shape=(8, 8, 1), name="conv1"),
            layers.BatchNormalization(momentum=0.9, name="bn1"),
            layers.ReLU(name="relu1"),
            layers.Conv2D(16, 3, padding="same", name="conv2"),
            layers.ReLU(name="relu2"),
            layers.GlobalAveragePooling2D(name="pool"),
            layers.Dense(10, name="fc"),
        ]
    )
    return model


def _compile(model: Any) -> None:
    import tf_keras

    model.compile(
        optimizer=tf_keras.optimizers.Adam(1e-2),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def check_prune(out: Path) -> dict[str, Any]:
    """prune_low_magnitude + UpdatePruningStep, then export through exporters (pruning stripped)."""
    import tensorflow_model_optimization as tfmot

    from keras_callbacks.legacy import export_tfmot, is_tfmot_pruned

    x, y, xt, _ = _data()
    sched = tfmot.sparsity.keras.ConstantSparsity(0.5, begin_step=0, frequency=1)
    model = tfmot.sparsity.keras.prune_low_magnitude(_tf_keras_model(), pruning_schedule=sched)
    _compile(model)
    model.fit(x, y, batch_size=64, epochs=2, verbose=0, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    report = export_tfmot(model, ["onnx", "tflite"], directory=out, example_input=xt[:1], samples=xt[:64])
    import onnx
    from onnx import numpy_helper

    onnx_model = onnx.load(str(out / "model.onnx"))
    weights = [numpy_helper.to_array(i) for i in onnx_model.graph.initializer if numpy_helper.to_array(i).ndim >= 2]
    fc = [w for w in weights if w.size == 160]  # the Dense kernel (16 x 10), not touched by BN folding
    return {
        "wrapped": is_tfmot_pruned(model),
        "ok": {r.target: r.ok for r in report},
        "rel": {r.target: r.max_rel_error for r in report},
        "fc_sparsity": float((fc[0] == 0).mean()) if fc else None,
        "source": report.source,
    }


def check_qat(out: Path) -> dict[str, Any]:
    """quantize_model, fit, int8 TFLite from its QAT: every conv/FC kernel runs int8."""
    import tensorflow_model_optimization as tfmot

    from exporters.targets.tflite import kernel_summary
    from keras_callbacks.legacy import export_tfmot, is_tfmot_quantized

    x, y, xt, yt = _data(n=2000)
    model = tfmot.quantization.keras.quantize_model(_tf_keras_model())
    _compile(model)
    model.fit(x, y, batch_size=64, epochs=6, verbose=0)
    files = export_tfmot(model, ["tflite"], directory=out, precision="int8", calibration=x[:64])
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(files["tflite"]))
    interp.allocate_tensors()
    summary = kernel_summary(interp, require_int8=True)
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    preds = []
    for i in range(len(xt)):
        interp.set_tensor(inp["index"], xt[i : i + 1])
        interp.invoke()
        preds.append(int(np.argmax(interp.get_tensor(outp["index"]))))
    keras_top1 = np.asarray(model(xt, training=False)).argmax(1)
    return {
        "wrapped": is_tfmot_quantized(model),
        "summary": summary,
        "agreement": float((np.asarray(preds) == keras_top1).mean()),
        "accuracy": float((np.asarray(preds) == yt).mean()),
    }


def check_errors(out: Path) -> dict[str, Any]:
    """A Keras 3 model on the legacy path, and a tf-keras model given to a Keras 3 callback."""
    import keras

    from keras_callbacks.legacy import export_tfmot, keras_flavor
    from keras_callbacks.quantization import QuantizationAware

    k3 = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    legacy = _tf_keras_model()
    messages = {}
    try:
        export_tfmot(k3, ["tflite"], directory=out)
    except ValueError as err:
        messages["keras3_to_legacy"] = str(err)
    try:
        QuantizationAware().set_model(legacy)
    except ValueError as err:
        messages["legacy_to_keras3"] = str(err)
    return {"flavors": [keras_flavor(k3), keras_flavor(legacy)], "messages": messages}


CHECKS = {"prune": check_prune, "qat": check_qat, "errors": check_errors}

if __name__ == "__main__":
    name, out_dir = sys.argv[1], Path(sys.argv[2])
    out_dir.mkdir(parents=True, exist_ok=True)
    result = CHECKS[name](out_dir)
    print("RESULT " + json.dumps(result, default=str))
