"""One backend's distributed cases for ``test_distributed.py``, in a fresh process.

``python -m tests.keras_callbacks._dist_case <tensorflow|jax> <folder>`` fits a tiny model (two convs and a dense
layer, no BatchNorm) on 64 fixed samples for 8 SGD steps (global batch 16, no shuffling), once on one device and
once distributed over two devices with the same global batch (TensorFlow: ``tf.distribute.MirroredStrategy`` over
two logical CPUs; JAX: ``keras.distribution.DataParallel`` over two host devices), for each scenario: no callback,
``Pruning``, ``QuantizationAware`` with each observer, ``Distillation``, ``Export``. Each run writes
``<folder>/<mode>-<scenario>.npz`` (what it learned) or ``.error.txt`` (the exception). The device layout must be
set before TensorFlow or JAX initializes, hence a process of its own.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

SAMPLES, BATCH, EPOCHS = 64, 16, 2
SCENARIOS = ("plain", "pruning", "qat-ema", "qat-minmax", "qat-percentile", "distillation", "export")


def _configure(backend: str) -> None:
    """Two devices for this process, before the framework starts."""
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if backend == "jax":
        os.environ["JAX_PLATFORMS"] = "cpu"
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=2".strip()
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(0)
    return rng.rand(SAMPLES, 8, 8, 1).astype("float32"), rng.randint(0, 10, SAMPLES).astype("int32")


def _net(name: str, width: int, seed: int) -> Any:
    """The tiny model with fixed weights (the same arrays on every run)."""
    import keras

    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(width, 3, activation="relu", name="conv1")(inputs)
    h = keras.layers.Conv2D(width, 3, activation="relu", name="conv2")(h)
    h = keras.layers.Flatten()(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="fc")(h), name=name)
    rng = np.random.RandomState(seed)
    model.set_weights([(rng.standard_normal(w.shape) * 0.3).astype("float32") for w in model.weights])
    return model


def _callbacks(scenario: str, folder: Path, mode: str, backend: str) -> list[Any]:
    import keras_callbacks as kc

    if scenario == "pruning":
        return [kc.Pruning(sparsity=0.5, start=0.0, end=0.5, frequency=1)]
    if scenario.startswith("qat-"):
        return [kc.QuantizationAware(start=0.0, freeze_observers=0.9, observer=scenario[4:])]
    if scenario == "distillation":
        return [kc.Distillation(_net("teacher", 8, 1), temperature=2.0, alpha=0.5)]
    if scenario == "export":
        # the TFLite converter needs TensorFlow graphs; a JAX model exports through ONNX
        target = "tflite" if backend == "tensorflow" else "onnx"
        return [kc.Export(targets=[target], directory=folder / f"{mode}-export", precision="fp32")]
    return []


def _run(backend: str, mode: str, scenario: str, folder: Path, strategy: Any) -> None:
    import keras

    x, y = _data()
    with strategy.scope() if strategy is not None else _Nothing():
        model = _net("student", 4, 0)
        model.compile(
            optimizer=keras.optimizers.SGD(learning_rate=0.05, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    callbacks = _callbacks(scenario, folder, mode, backend)
    began = time.perf_counter()
    model.fit(x, y, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=callbacks)
    seconds = time.perf_counter() - began
    out: dict[str, Any] = {f"weight/{w.path}": keras.ops.convert_to_numpy(w) for w in model.weights}
    out["seconds"] = np.float64(seconds)
    out["devices"] = np.int64(_devices(model, backend))
    for cb in callbacks:
        if type(cb).__name__ == "Pruning":
            out.update({f"mask/{k}": np.asarray(v) for k, v in cb.masks.items()})
        if type(cb).__name__ == "QuantizationAware":
            out["spec"] = np.asarray(json.dumps(cb.quant_spec.to_dict()))
        if type(cb).__name__ == "Export":
            files = sorted(str(p.relative_to(folder)) for p in (folder / f"{mode}-export").rglob("*") if p.is_file())
            out["files"] = np.asarray(json.dumps(files))
            out["status"] = np.asarray(json.dumps([r.status for r in cb.report.results]))
            out["report"] = np.asarray(json.dumps([str(r) for r in cb.report.results]))
    np.savez(folder / f"{mode}-{scenario}.npz", **out)


def _devices(model: Any, backend: str) -> int:
    """How many devices the fit ran on: replicas of the TF strategy, devices holding a JAX weight (replicated)."""
    if backend == "tensorflow":
        return int(model.distribute_strategy.num_replicas_in_sync)
    return len(model.weights[0].value.sharding.device_set)


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main(argv: list[str]) -> int:
    """Run every scenario in both modes; one failure does not stop the others."""
    backend, folder = argv[0], Path(argv[1])
    scenarios = argv[2:] or list(SCENARIOS)
    _configure(backend)
    import keras

    keras.utils.set_random_seed(0)
    modes = ["single", "mirrored"] if backend == "tensorflow" else ["single", "data_parallel"]
    strategy: Any = None
    for mode in modes:
        if mode == "mirrored":
            import tensorflow as tf

            # one strategy for every run: a second MirroredStrategy in the process reuses the first one's collective
            # instance keys, and its first all-gather aborts on the keys' earlier all-reduce
            strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        if mode == "data_parallel":
            import jax

            keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
        for scenario in scenarios:
            try:
                _run(backend, mode, scenario, folder, strategy)
            except Exception:
                (folder / f"{mode}-{scenario}.error.txt").write_text(traceback.format_exc())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
