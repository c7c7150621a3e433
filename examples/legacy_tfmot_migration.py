"""Moving a tfmot pruning script (tf-keras) to fitslim's Keras 3 callbacks, with the same final sparsity.

BEFORE: tf-keras + tensorflow-model-optimization. ``prune_low_magnitude`` wraps the model, the
``UpdatePruningStep`` callback advances the schedule, and ``strip_pruning`` removes the wrappers. tfmot
sets ``TF_USE_LEGACY_KERAS=1`` for the whole process, so this half runs in a child process.

AFTER: Keras 3 (any backend). The model is untouched; ``keras_callbacks.Pruning`` goes into
``model.fit(callbacks=[...])`` with the same vocabulary: ``PolynomialDecay(0 → 0.5, begin_step=0,
end_step=0.7 * total)`` becomes ``Pruning(sparsity=0.5, schedule="polynomial", start=0.0, end=0.7)``.

Run: ``python examples/legacy_tfmot_migration.py`` (both halves, prints the sparsity of each), or
``--only before`` / ``--only after``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("legacy_tfmot_migration")

EPOCHS = 6
BATCH = 64
SPARSITY = 0.5
END = 0.7
FREQUENCY = 5


def _digits() -> Any:
    from fitslim.data import digits

    return digits(size=8, layout="NHWC")


def _kernel_sparsity(kernels: list[np.ndarray]) -> float:
    zeros = sum(int((k == 0).sum()) for k in kernels)
    return zeros / max(1, sum(k.size for k in kernels))


# --------------------------------------------------------------------------------------------- BEFORE


def before_tfmot() -> dict[str, float]:
    """The tfmot script as users wrote it (tf-keras). Must run in a process where tfmot may be imported."""
    import tensorflow_model_optimization as tfmot
    import tf_keras

    d = _digits()
    tf_keras.utils.set_random_seed(0)
    layers = tf_keras.layers
    model = tf_keras.Sequential(
        [
            layers.Conv2D(16, 3, padding="same", input_shape=(8, 8, 1), name="conv1"),
            layers.BatchNormalization(momentum=0.9, name="bn1"),
            layers.ReLU(),
            layers.Conv2D(32, 3, padding="same", name="conv2"),
            layers.BatchNormalization(momentum=0.9, name="bn2"),
            layers.ReLU(),
            layers.GlobalAveragePooling2D(),
            layers.Dense(10, name="fc"),
        ]
    )
    total = EPOCHS * int(np.ceil(len(d.x_train) / BATCH))
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=SPARSITY, begin_step=0, end_step=int(END * total), frequency=FREQUENCY
    )
    model = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
    model.compile(
        optimizer=tf_keras.optimizers.Adam(1e-2),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(
        d.x_train,
        d.y_train,
        batch_size=BATCH,
        epochs=EPOCHS,
        verbose=0,
        callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
    )
    model = tfmot.sparsity.keras.strip_pruning(model)
    kernels = [layer.kernel.numpy() for layer in model.layers if hasattr(layer, "kernel")]
    acc = float((model.predict(d.x_test, verbose=0).argmax(1) == d.y_test).mean())
    return {"sparsity": _kernel_sparsity(kernels), "accuracy": acc}


# ---------------------------------------------------------------------------------------------- AFTER


def after_fitslim() -> dict[str, float]:
    """The same training in Keras 3 with fitslim's callback: the model and fit call are unchanged."""
    import keras

    from keras_callbacks.pruning import Pruning

    d = _digits()
    keras.utils.set_random_seed(0)
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            layers.Conv2D(16, 3, padding="same", name="conv1"),
            layers.BatchNormalization(momentum=0.9, name="bn1"),
            layers.ReLU(),
            layers.Conv2D(32, 3, padding="same", name="conv2"),
            layers.BatchNormalization(momentum=0.9, name="bn2"),
            layers.ReLU(),
            layers.GlobalAveragePooling2D(),
            layers.Dense(10, name="fc"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    # tfmot prunes every layer to the target: scope="layer" is the same rule
    pruning = Pruning(sparsity=SPARSITY, schedule="polynomial", start=0.0, end=END, frequency=FREQUENCY, scope="layer")
    model.fit(d.x_train, d.y_train, batch_size=BATCH, epochs=EPOCHS, verbose=0, callbacks=[pruning])
    kernels = [
        np.asarray(keras.ops.convert_to_numpy(layer.kernel)) for layer in model.layers if hasattr(layer, "kernel")
    ]
    acc = float((np.asarray(model.predict(d.x_test, verbose=0)).argmax(1) == d.y_test).mean())
    return {"sparsity": _kernel_sparsity(kernels), "accuracy": acc}


def _run_before_in_child() -> dict[str, float]:
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run(
        [sys.executable, __file__, "--child-before"], env=env, capture_output=True, text=True, check=False
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"the tfmot half failed:\n{proc.stderr[-2000:]}")
    result: dict[str, float] = json.loads(lines[-1])
    return result


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the halves asked for and log the final sparsity and accuracy of each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("before", "after"))
    parser.add_argument("--child-before", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_before:
        print(json.dumps(before_tfmot()))
        return {}
    results: dict[str, dict[str, float]] = {}
    if args.only in (None, "before"):
        results["before (tf-keras + tfmot)"] = _run_before_in_child()
    if args.only in (None, "after"):
        results["after (Keras 3 + keras_callbacks.Pruning)"] = after_fitslim()
    for name, r in results.items():
        log.info("%s: kernel sparsity %.3f, test accuracy %.3f", name, r["sparsity"], r["accuracy"])
    return results


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
