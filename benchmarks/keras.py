"""Keras benchmark: fitslim's Keras 3 callbacks against plain Keras 3 and tfmot on tf-keras.

Run: ``python benchmarks/keras.py [--quick] [--output results.md] [--parts pruning] [--rounds 3]``.

1. ``pruning``: step-time overhead of pruning, each variant against its own plain baseline, same architecture
   (the digits CNN: stem conv, depthwise-separable residual block, transition conv, dense head, built by one
   function from ``keras.layers`` or ``tf_keras.layers``), same data (the bundled digits, 8x8, batch 64), same
   schedule (50% unstructured, polynomial from step 0 to the end of epoch 0, a mask update every 5 steps):

   - plain Keras 3 vs fitslim ``keras_callbacks.Pruning`` (TensorFlow backend);
   - plain tf-keras vs tfmot ``prune_low_magnitude`` + ``UpdatePruningStep``.

   Every variant runs in a fresh subprocess (tfmot sets ``TF_USE_LEGACY_KERAS=1`` for its whole process), on
   one TensorFlow thread (this machine is shared); the variants run in interleaved rounds (rotating order).
   A step is timed from the first callback's ``on_train_batch_begin`` to the last callback's
   ``on_train_batch_end``, so it includes the train step and every callback's per-step work (ours: the mask
   assignment after each step; tfmot: its step counter update and the masking inside the graph). Steps of
   epoch 0 (warm-up, tracing, mask updates) are skipped; each figure is the median over the remaining steps of
   all rounds, as process CPU time and wall time. Final kernel sparsity and test accuracy are reported too.

Each section is one function returning Markdown lines (``pruning_overhead``); a section for QAT can be added
next to it and registered in ``SECTIONS``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# run as a script, this file's folder comes first on sys.path and "import keras" would import this file
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("benchmarks.keras")

BATCH = 64
UPDATE_EVERY = 5
SPARSITY = 0.5


# -- shared helpers ------------------------------------------------------------------------------------


def digits_cnn(layers: Any, model_cls: Any, width: float = 1.0) -> Any:
    """The digits CNN (as :func:`fitslim.models.keras_models.digits_cnn`) from a ``layers`` namespace.

    Built by the same code for Keras 3 and tf-keras, so both sides train the same architecture.
    """
    stem, out = int(round(16 * width / 4)) * 4, int(round(32 * width / 4)) * 4
    inputs = layers.Input((8, 8, 1), name="input")
    x = layers.Conv2D(stem, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="stem_bn")(x)
    shortcut = x = layers.ReLU(name="stem_act")(x)
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="block_dw_conv")(x)
    x = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="block_dw_bn")(x)
    x = layers.ReLU(name="block_dw_relu")(x)
    x = layers.Conv2D(stem, 1, use_bias=False, name="block_pw_conv")(x)
    x = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="block_pw_bn")(x)
    x = layers.ReLU(name="block_relu")(layers.Add(name="block_add")([x, shortcut]))
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Conv2D(out, 3, padding="same", use_bias=False, name="transition_conv")(x)
    x = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name="transition_bn")(x)
    x = layers.ReLU(name="transition_act")(x)
    x = layers.GlobalAveragePooling2D(name="head_pool")(x)
    return model_cls(inputs, layers.Dense(10, name="head_fc")(x), name="digits_cnn")


def _timers(callback_base: Any) -> tuple[Any, Any, list[tuple[int, float, float]]]:
    """Two callbacks (first and last in the list) timing each step; records (epoch, cpu s, wall s)."""
    records: list[tuple[int, float, float]] = []
    state: dict[str, Any] = {"epoch": 0, "t": (0.0, 0.0)}

    class Start(callback_base):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            state["epoch"] = epoch

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            state["t"] = (time.process_time(), time.perf_counter())

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            pass

    class End(callback_base):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            cpu, wall = state["t"]
            records.append((state["epoch"], time.process_time() - cpu, time.perf_counter() - wall))

    return Start(), End(), records


def _zero_fraction(model: Any, to_numpy: Callable[[Any], np.ndarray]) -> float:
    kernels = [to_numpy(w) for w in model.trainable_weights if "kernel" in w.name]
    return float(sum(int((k == 0).sum()) for k in kernels) / max(sum(k.size for k in kernels), 1))


def _data() -> Any:
    from fitslim.data import digits

    return digits(size=8, layout="NHWC")


# -- workers (one fresh process each) ----------------------------------------------------------------------


def _worker_keras3(variant: str, epochs: int) -> dict[str, Any]:
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    # imported by name: to mypy (and to a script run from benchmarks/) "keras" would be this very file
    keras: Any = importlib.import_module("keras")
    from keras_callbacks.pruning import Pruning

    d = _data()
    keras.utils.set_random_seed(0)
    model = digits_cnn(keras.layers, keras.Model)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    steps = int(np.ceil(len(d.x_train) / BATCH))
    start, end, records = _timers(keras.callbacks.Callback)
    callbacks: list[Any] = [start]
    if variant == "pruning":
        callbacks.append(Pruning(sparsity=SPARSITY, start_step=0, end_step=steps, frequency=UPDATE_EVERY))
    callbacks.append(end)
    model.fit(d.x_train, d.y_train, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=callbacks)
    acc = float((np.asarray(model.predict(d.x_test, verbose=0)).argmax(1) == d.y_test).mean())
    return {
        "records": records,
        "sparsity": _zero_fraction(model, keras.ops.convert_to_numpy),
        "accuracy": acc,
        "version": keras.__version__,
    }


def _worker_tfmot(variant: str, epochs: int) -> dict[str, Any]:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import tensorflow_model_optimization as tfmot
    import tf_keras

    d = _data()
    tf_keras.utils.set_random_seed(0)
    model = digits_cnn(tf_keras.layers, tf_keras.Model)
    steps = int(np.ceil(len(d.x_train) / BATCH))
    start, end, records = _timers(tf_keras.callbacks.Callback)
    callbacks: list[Any] = [start]
    if variant == "pruning":
        schedule = tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=SPARSITY, begin_step=0, end_step=steps, frequency=UPDATE_EVERY
        )
        model = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
        callbacks.append(tfmot.sparsity.keras.UpdatePruningStep())
    callbacks.append(end)
    model.compile(
        optimizer=tf_keras.optimizers.Adam(1e-2),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(d.x_train, d.y_train, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=callbacks)
    acc = float((np.asarray(model.predict(d.x_test, verbose=0)).argmax(1) == d.y_test).mean())
    if variant == "pruning":
        model = tfmot.sparsity.keras.strip_pruning(model)
    return {
        "records": records,
        "sparsity": _zero_fraction(model, np.asarray),
        "accuracy": acc,
        "version": f"tf-keras {tf_keras.__version__}, tfmot {tfmot.__version__}",
    }


WORKERS: dict[str, Callable[[str, int], dict[str, Any]]] = {"keras3": _worker_keras3, "tfmot": _worker_tfmot}


def _spawn(worker: str, variant: str, epochs: int) -> dict[str, Any]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    env.pop("TF_USE_LEGACY_KERAS", None)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", worker, "--variant", variant]
    proc = subprocess.run([*cmd, "--epochs", str(epochs)], capture_output=True, text=True, env=env, timeout=1200)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {worker}/{variant} failed:\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result


# -- sections ----------------------------------------------------------------------------------------------


def pruning_overhead(quick: bool, rounds: int) -> list[str]:
    """Step time of our Keras 3 ``Pruning`` and of tfmot pruning, each against its own plain baseline."""
    epochs = 2 if quick else 4
    rounds = 1 if quick else rounds
    variants = [("keras3", "plain"), ("keras3", "pruning"), ("tfmot", "plain"), ("tfmot", "pruning")]
    steps: dict[tuple[str, str], list[tuple[float, float]]] = {v: [] for v in variants}
    final: dict[tuple[str, str], dict[str, Any]] = {}
    for r in range(rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for worker, variant in order:
            log.info("round %d: %s / %s", r + 1, worker, variant)
            res = _spawn(worker, variant, epochs)
            steps[(worker, variant)] += [(c, w) for e, c, w in res["records"] if e > 0]
            final[(worker, variant)] = res
    med = {
        v: (statistics.median(c for c, _ in s) * 1e3, statistics.median(w for _, w in s) * 1e3)
        for v, s in steps.items()
    }
    names = {
        ("keras3", "plain"): "plain Keras 3",
        ("keras3", "pruning"): "fitslim Pruning (Keras 3)",
        ("tfmot", "plain"): "plain tf-keras",
        ("tfmot", "pruning"): "tfmot prune_low_magnitude (tf-keras)",
    }
    lines = [
        "## Pruning step time (digits CNN, batch 64, 1 TF thread, 50% unstructured)",
        "",
        f"{rounds} round(s) x {epochs} epochs per variant; medians over {len(steps[variants[0]])} timed steps "
        "per variant (epoch 0 skipped).",
        "",
        "| variant | CPU ms/step | wall ms/step | overhead vs own plain (CPU) | overhead (wall) | kernel sparsity "
        "| test acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for worker, variant in variants:
        cpu, wall = med[(worker, variant)]
        base_cpu, base_wall = med[(worker, "plain")]
        res = final[(worker, variant)]
        lines.append(
            f"| {names[(worker, variant)]} | {cpu:.2f} | {wall:.2f} | {cpu / base_cpu:.2f}x | {wall / base_wall:.2f}x "
            f"| {res['sparsity']:.3f} | {res['accuracy']:.3f} |"
        )
    ours = med[("keras3", "pruning")][0] / med[("keras3", "plain")][0]
    theirs = med[("tfmot", "pruning")][0] / med[("tfmot", "plain")][0]
    verdict = "met" if ours <= theirs else "NOT met"
    lines += [
        "",
        f"Goal (our overhead <= tfmot's): {verdict} ({ours:.2f}x vs {theirs:.2f}x, CPU time). "
        f"Versions: Keras {final[('keras3', 'plain')]['version']}; {final[('tfmot', 'plain')]['version']}.",
        "",
    ]
    return lines


SECTIONS: dict[str, Callable[[bool, int], list[str]]] = {"pruning": pruning_overhead}


def run(quick: bool, parts: list[str], rounds: int) -> str:
    """Run the chosen sections and return the Markdown report."""
    lines = ["# Keras benchmark", ""]
    for part in parts:
        lines += SECTIONS[part](quick, rounds)
    return "\n".join(lines)


def main() -> None:
    """Command line entry point (also the worker entry point, with ``--worker``)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 round")
    parser.add_argument("--parts", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per variant")
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown report here")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=["plain", "pruning"], help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(WORKERS[args.worker](args.variant, args.epochs)))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = run(args.quick, args.parts, args.rounds)
    print(report)
    if args.output is not None:
        args.output.write_text(report + "\n")


if __name__ == "__main__":
    main()
