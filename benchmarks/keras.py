"""Keras benchmark: fitslim's Keras 3 callbacks against plain Keras 3 and tfmot on tf-keras.

Run: ``python -m benchmarks.keras [--quick] [--output results.md] [--parts pruning qat accuracy] [--rounds 3]``.

1. ``pruning``: step-time overhead of pruning, each variant against its own plain baseline, same architecture
   (the digits CNN: stem conv, depthwise-separable residual block, transition conv, dense head, built by one
   function from ``keras.layers`` or ``tf_keras.layers``), same data (the bundled digits, 8x8, batch 64), same
   schedule (50% unstructured, polynomial from step 0 to the last step of the fit, a mask update every 5 steps,
   so mask updates happen in every epoch):

   - plain Keras 3 vs fitslim ``keras_callbacks.Pruning`` (TensorFlow backend);
   - plain tf-keras vs tfmot ``prune_low_magnitude`` + ``UpdatePruningStep``.

   Every variant runs in a fresh subprocess (tfmot sets ``TF_USE_LEGACY_KERAS=1`` for its whole process), on
   one TensorFlow thread (this machine is shared); the variants run in interleaved rounds (rotating order).
   Two figures per variant, both over the whole fit (every epoch, mask updates and the first step's tracing
   included): the ``model.fit`` call itself (CPU and wall seconds, median over rounds: what a user waits for,
   with every callback's ``on_train_begin`` work), and the step time, timed from the first callback's
   ``on_train_batch_begin`` to the last callback's ``on_train_batch_end`` (the train step and every callback's
   per-step work: ours, the mask computation every 5 steps and the mask assignment after each step; tfmot, its
   step counter update and the masking inside the graph), the median over every step of every epoch of all
   rounds, as process CPU time and wall time. Final kernel sparsity and test accuracy are reported too.

2. ``qat``: step time of plain Keras 3 vs fitslim ``keras_callbacks.QuantizationAware(start=0.0)`` (fake-quant
   on from step 0, so for the whole timed span) on the reference digits CNN
   (``keras_callbacks.reference.build_digits_classifier``), TensorFlow backend, one thread, fresh subprocess per
   variant, interleaved rounds, timed and reported as in ``pruning`` (median CPU / wall ms per step, ratio vs plain).

3. ``accuracy``: digits test accuracy of the EXPORTED artifacts, same model, epochs (12; 4 with ``--quick``) and
   seed for every arm: fp32 (the float model to TFLite fp32 and ncnn fp32), PTQ int8 (the same float model through
   ``exporters.export(..., precision="int8", calibration=[x_train[:256]])``) and QAT int8 (a model trained with
   ``QuantizationAware()`` (start=0.6) and exported by ``keras_callbacks.Export(precision="int8")`` in the same fit,
   so the learned QuantSpec and the learned-range TFLite converter are used). Each artifact is run in its own
   runtime (``exporters.core.runtimes``: LiteRT ``Interpreter``, ncnn ``Net``, one sample at a time) and scored by
   arg-max against the test labels. Goal: QAT int8 at most 0.5 pt below fp32.

Each section is one function returning Markdown lines, registered in ``SECTIONS``.
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

from benchmarks import emit

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
    """The digits CNN (as :func:`keras_callbacks.models.digits_cnn`) from a ``layers`` namespace.

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
    steps = int(np.ceil(len(d.x_train) / BATCH)) * epochs
    start, end, records = _timers(keras.callbacks.Callback)
    callbacks: list[Any] = [start]
    if variant == "pruning":  # the schedule spans the whole fit: mask updates in every epoch
        callbacks.append(Pruning(sparsity=SPARSITY, start_step=0, end_step=steps - 1, frequency=UPDATE_EVERY))
    epoch_sparsity: list[float] = []

    class Ramp(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            epoch_sparsity.append(_zero_fraction(model, keras.ops.convert_to_numpy))

    callbacks += [end, Ramp()]  # Ramp after the step timer: not timed
    fit = (time.process_time(), time.perf_counter())
    model.fit(d.x_train, d.y_train, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=callbacks)
    fit = (time.process_time() - fit[0], time.perf_counter() - fit[1])
    acc = float((np.asarray(model.predict(d.x_test, verbose=0)).argmax(1) == d.y_test).mean())
    return {
        "records": records,
        "fit": fit,
        "epoch_sparsity": epoch_sparsity,
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
    steps = int(np.ceil(len(d.x_train) / BATCH)) * epochs
    start, end, records = _timers(tf_keras.callbacks.Callback)
    callbacks: list[Any] = [start]
    if variant == "pruning":  # the schedule spans the whole fit: mask updates in every epoch
        schedule = tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=SPARSITY, begin_step=0, end_step=steps - 1, frequency=UPDATE_EVERY
        )
        model = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
        callbacks.append(tfmot.sparsity.keras.UpdatePruningStep())
    callbacks.append(end)
    model.compile(
        optimizer=tf_keras.optimizers.Adam(1e-2),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    fit = (time.process_time(), time.perf_counter())
    model.fit(d.x_train, d.y_train, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=callbacks)
    fit = (time.process_time() - fit[0], time.perf_counter() - fit[1])
    acc = float((np.asarray(model.predict(d.x_test, verbose=0)).argmax(1) == d.y_test).mean())
    if variant == "pruning":
        model = tfmot.sparsity.keras.strip_pruning(model)
    return {
        "records": records,
        "fit": fit,
        "sparsity": _zero_fraction(model, np.asarray),
        "accuracy": acc,
        "version": f"tf-keras {tf_keras.__version__}, tfmot {tfmot.__version__}",
    }


def _worker_qat(variant: str, epochs: int) -> dict[str, Any]:
    """Plain fit vs fit with ``QuantizationAware(start=0.0)`` of the reference digits CNN (Keras 3, TF backend)."""
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras: Any = importlib.import_module("keras")
    from keras_callbacks import QuantizationAware
    from keras_callbacks.reference import build_digits_classifier, evaluate_accuracy

    d = _data()
    keras.utils.set_random_seed(0)
    model = build_digits_classifier()
    start, end, records = _timers(keras.callbacks.Callback)
    callbacks: list[Any] = [start]
    if variant == "qat":
        # fake-quant from step 0, so every timed step (epochs 1..) runs the fake-quant train step
        callbacks.append(QuantizationAware(start=0.0))
    callbacks.append(end)
    model.fit(d.x_train, d.y_train, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=callbacks)
    return {
        "records": records,
        "accuracy": evaluate_accuracy(model, d.x_test, d.y_test),
        "version": keras.__version__,
    }


def _artifact_accuracy(report: Any, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Top-1 accuracy of each exported artifact on the test split (run in its runtime, one thread), plus the
    report's agreement / status."""
    from exporters.core.runtimes import accuracy
    from exporters.core.verify import nhwc_to_nchw

    out: dict[str, Any] = {}
    for r in report:
        entry: dict[str, Any] = {"status": r.status, "reason": r.reason, "agreement": r.top1_agreement}
        entry["scales"] = r.scales
        if r.ok:
            entry["accuracy"] = accuracy(report, r.target, nhwc_to_nchw(x), y, threads=1)
        out[r.target] = entry
    return out


def _worker_accuracy(variant: str, epochs: int) -> dict[str, Any]:
    """fp32 / PTQ int8 / QAT int8 digits accuracy of the exported TFLite and ncnn artifacts."""
    import tempfile

    os.environ["KERAS_BACKEND"] = "tensorflow"
    keras: Any = importlib.import_module("keras")
    from exporters import export
    from keras_callbacks import Export, QuantizationAware
    from keras_callbacks.quantization import fake_quant_inference
    from keras_callbacks.reference import build_digits_classifier, evaluate_accuracy

    d = _data()
    targets = ["tflite", "ncnn"]
    result: dict[str, Any] = {"epochs": epochs, "test": len(d.y_test), "version": keras.__version__}
    with tempfile.TemporaryDirectory(prefix="fitslim-bench-") as tmp:
        keras.utils.set_random_seed(0)
        model = build_digits_classifier()
        model.fit(d.x_train, d.y_train, batch_size=BATCH, epochs=epochs, verbose=0)
        keras_acc = evaluate_accuracy(model, d.x_test, d.y_test)
        fp32 = export(model, targets, example_input=d.x_train[:1], directory=Path(tmp, "fp32"), samples=d.x_test)
        result["fp32"] = {"keras": keras_acc, **_artifact_accuracy(fp32, d.x_test, d.y_test)}
        ptq = export(
            model,
            targets,
            precision="int8",
            calibration=[d.x_train[:256]],
            samples=d.x_test,
            directory=Path(tmp, "ptq"),
        )
        result["ptq"] = {"keras": keras_acc, **_artifact_accuracy(ptq, d.x_test, d.y_test)}

        keras.utils.set_random_seed(0)
        model = build_digits_classifier()
        qat = QuantizationAware(keep_fake_quant=True)  # start=0.6, the default; scored in Keras as the int8 model
        exp = Export(targets=targets, precision="int8", directory=Path(tmp, "qat"))
        model.fit(d.x_train, d.y_train, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[qat, exp])
        if exp.report is None:
            raise RuntimeError("Export wrote no report")
        result["qat"] = {
            "keras": evaluate_accuracy(model, d.x_test, d.y_test),
            **_artifact_accuracy(exp.report, d.x_test, d.y_test),
        }
        if qat.quant_spec is not None:  # the fake-quant model the int8 artifacts are meant to reproduce
            with fake_quant_inference(model, qat.quant_spec):
                logits = keras.ops.convert_to_numpy(model(d.x_test, training=False))
            result["qat"]["fake_quant"] = float((logits.argmax(1) == d.y_test).mean())
    return result


WORKERS: dict[str, Callable[[str, int], dict[str, Any]]] = {
    "keras3": _worker_keras3,
    "tfmot": _worker_tfmot,
    "qat": _worker_qat,
    "accuracy": _worker_accuracy,
}


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
    """Whole-fit time and step time of our Keras 3 ``Pruning`` and of tfmot pruning, each against its own plain fit.

    Every epoch is timed (the schedule runs to the last step, so mask updates fall in every epoch).
    """
    epochs = 2 if quick else 4
    rounds = 1 if quick else rounds
    variants = [("keras3", "plain"), ("keras3", "pruning"), ("tfmot", "plain"), ("tfmot", "pruning")]
    steps: dict[tuple[str, str], list[tuple[float, float]]] = {v: [] for v in variants}
    fits: dict[tuple[str, str], list[tuple[float, float]]] = {v: [] for v in variants}
    final: dict[tuple[str, str], dict[str, Any]] = {}
    for r in range(rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for worker, variant in order:
            log.info("round %d: %s / %s", r + 1, worker, variant)
            res = _spawn(worker, variant, epochs)
            steps[(worker, variant)] += [(c, w) for _, c, w in res["records"]]
            fits[(worker, variant)].append((float(res["fit"][0]), float(res["fit"][1])))
            final[(worker, variant)] = res
    return pruning_table(steps, fits, final, rounds, epochs)


PRUNING_NAMES = {
    ("keras3", "plain"): "plain Keras 3",
    ("keras3", "pruning"): "fitslim Pruning (Keras 3)",
    ("tfmot", "plain"): "plain tf-keras",
    ("tfmot", "pruning"): "tfmot prune_low_magnitude (tf-keras)",
}


def pruning_table(
    steps: dict[tuple[str, str], list[tuple[float, float]]],
    fits: dict[tuple[str, str], list[tuple[float, float]]],
    final: dict[tuple[str, str], dict[str, Any]],
    rounds: int,
    epochs: int,
) -> list[str]:
    """The pruning section's Markdown from the recorded (CPU s, wall s) of every step and every fit.

    Args:
        steps: per ``(worker, variant)``, every timed step of every epoch of every round.
        fits: per ``(worker, variant)``, the whole ``model.fit`` call of each round.
        final: per ``(worker, variant)``, the last round's worker result (sparsity, accuracy, version).
        rounds: rounds run.
        epochs: epochs per fit.
    """
    med_step = {
        v: (statistics.median(c for c, _ in s) * 1e3, statistics.median(w for _, w in s) * 1e3)
        for v, s in steps.items()
    }
    med_fit = {v: (statistics.median(c for c, _ in f), statistics.median(w for _, w in f)) for v, f in fits.items()}
    lines = [
        "## Pruning overhead over the whole fit (digits CNN, batch 64, 1 TF thread, 50% unstructured)",
        "",
        f"{rounds} round(s) x {epochs} epochs per variant, the schedule from step 0 to the fit's last step (a mask "
        f"update every {UPDATE_EVERY} steps, in every epoch). Fit = the `model.fit` call, median over rounds; "
        f"step = median over all {len(steps[('keras3', 'plain')])} steps of every epoch (the first, tracing, "
        "included). Ratios against the variant's own plain fit (Keras 3 or tf-keras).",
        "",
        "| variant | fit CPU s | fit wall s | fit x plain (CPU) | fit x plain (wall) | step CPU ms | step wall ms "
        "| step x plain (CPU) | step x plain (wall) | kernel sparsity | test acc |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for worker, variant in PRUNING_NAMES:
        fc, fw = med_fit[(worker, variant)]
        bfc, bfw = med_fit[(worker, "plain")]
        sc, sw = med_step[(worker, variant)]
        bsc, bsw = med_step[(worker, "plain")]
        res = final[(worker, variant)]
        lines.append(
            f"| {PRUNING_NAMES[(worker, variant)]} | {fc:.2f} | {fw:.2f} | {fc / bfc:.2f}x | {fw / bfw:.2f}x "
            f"| {sc:.2f} | {sw:.2f} | {sc / bsc:.2f}x | {sw / bsw:.2f}x | {res['sparsity']:.3f} "
            f"| {res['accuracy']:.3f} |"
        )
    ours = med_fit[("keras3", "pruning")][0] / med_fit[("keras3", "plain")][0]
    theirs = med_fit[("tfmot", "pruning")][0] / med_fit[("tfmot", "plain")][0]
    verdict = "met" if ours <= theirs else "NOT met"
    ramp = final[("keras3", "pruning")].get("epoch_sparsity") or []
    lines += [
        "",
        "fitslim kernel sparsity at the end of each epoch: " + ", ".join(f"{v:.3f}" for v in ramp) + ".",
        "",
        f"Goal (our overhead <= tfmot's, whole fit): {verdict} ({ours:.2f}x vs {theirs:.2f}x, CPU time). "
        f"Versions: Keras {final[('keras3', 'plain')]['version']}; {final[('tfmot', 'plain')]['version']}.",
        "",
    ]
    return lines


def qat_overhead(quick: bool, rounds: int) -> list[str]:
    """Step time of our Keras 3 ``QuantizationAware`` (fake-quant on from step 0) against plain Keras 3."""
    epochs = 2 if quick else 4
    rounds = 1 if quick else rounds
    variants = ["plain", "qat"]
    steps: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    final: dict[str, dict[str, Any]] = {}
    for r in range(rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for variant in order:
            log.info("round %d: qat / %s", r + 1, variant)
            res = _spawn("qat", variant, epochs)
            steps[variant] += [(c, w) for e, c, w in res["records"] if e > 0]
            final[variant] = res
    med = {
        v: (statistics.median(c for c, _ in s) * 1e3, statistics.median(w for _, w in s) * 1e3)
        for v, s in steps.items()
    }
    names = {"plain": "plain Keras 3", "qat": "fitslim QuantizationAware(start=0.0) (Keras 3)"}
    lines = [
        "## QAT step time (reference digits CNN, batch 64, 1 TF thread, int8 fake-quant from step 0)",
        "",
        f"{rounds} round(s) x {epochs} epochs per variant; medians over {len(steps['plain'])} timed steps "
        "per variant (epoch 0 skipped).",
        "",
        "| variant | CPU ms/step | wall ms/step | ratio vs plain (CPU) | ratio (wall) | test acc |",
        "|---|---|---|---|---|---|",
    ]
    base_cpu, base_wall = med["plain"]
    for variant in variants:
        cpu, wall = med[variant]
        lines.append(
            f"| {names[variant]} | {cpu:.2f} | {wall:.2f} | {cpu / base_cpu:.2f}x | {wall / base_wall:.2f}x "
            f"| {final[variant]['accuracy']:.3f} |"
        )
    lines += ["", f"Keras {final['plain']['version']}.", ""]
    return lines


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def exported_accuracy(quick: bool, rounds: int) -> list[str]:
    """Digits test accuracy of the exported TFLite and ncnn artifacts: fp32, PTQ int8, QAT int8."""
    epochs = 4 if quick else 12
    log.info("accuracy: fp32 / PTQ int8 / QAT int8 (%d epochs each)", epochs)
    res = _spawn("accuracy", "all", epochs)
    arms = [("fp32", "fp32"), ("ptq", "PTQ int8 (calibrated on 256 train images)"), ("qat", "QAT int8 (start=0.6)")]
    lines = [
        f"## Digits accuracy of the exported artifacts (reference digits CNN, {epochs} epochs, seed 0)",
        "",
        f"Top-1 accuracy (%) on the {res['test']} test images, each artifact run in its own runtime "
        "(LiteRT ``Interpreter``, ncnn ``Net`` one sample at a time, through ``exporters.core.runtimes``); Keras = "
        "the Keras model the arm exported, as ``fit`` left it (after QAT: the quantized model). "
        "Agreement = the export report's top-1 agreement with its reference (the float model; the fake-quant "
        "model for QAT).",
        "",
        "| arm | Keras | TFLite | ncnn | TFLite vs fp32 (pt) | ncnn vs fp32 (pt) | TFLite agreement | ncnn agreement |",
        "|---|---|---|---|---|---|---|---|",
    ]
    problems: list[str] = []

    def acc(arm: str, target: str) -> float | None:
        entry = res[arm].get(target, {})
        if entry.get("status") != "ok":
            problems.append(f"{arm} {target}: {entry.get('status', 'missing')} {entry.get('reason', '')}".strip())
        value = entry.get("accuracy")
        return None if value is None else float(value)

    table: dict[tuple[str, str], float | None] = {(a, t): acc(a, t) for a, _ in arms for t in ("tflite", "ncnn")}
    for arm, label in arms:
        deltas = []
        for t in ("tflite", "ncnn"):
            a, base = table[(arm, t)], table[("fp32", t)]
            deltas.append("-" if a is None or base is None else f"{100 * (a - base):+.2f}")
        agree = [_pct(res[arm].get(t, {}).get("agreement")) for t in ("tflite", "ncnn")]
        lines.append(
            f"| {label} | {_pct(res[arm]['keras'])} | {_pct(table[(arm, 'tflite')])} | {_pct(table[(arm, 'ncnn')])} "
            f"| {deltas[0]} | {deltas[1]} | {agree[0]} | {agree[1]} |"
        )
    verdicts = []
    for t, name in (("tflite", "TFLite"), ("ncnn", "ncnn")):
        q, f = table[("qat", t)], table[("fp32", t)]
        if q is None or f is None:
            verdicts.append(f"{name}: n/a")
        else:
            gap = 100 * (q - f)
            verdicts.append(f"{name}: {'met' if gap >= -0.5 else 'NOT met'} (QAT - fp32 = {gap:+.2f} pt)")
    lines += ["", "Goal (QAT int8 <= 0.5 pt below fp32): " + "; ".join(verdicts) + "."]
    lines += [
        "",
        f"QAT Keras fake-quant model (what the int8 artifacts reproduce): {_pct(res['qat'].get('fake_quant'))}% "
        "test accuracy. The QAT agreement is measured by ``Export`` on the first 8 training batches of 32 "
        "(it takes no test split); fp32 / PTQ agreement on the test split.",
    ]
    scales = {t: res["qat"].get(t, {}).get("scales", "") for t in ("tflite", "ncnn")}
    lines += ["", f"QAT int8 scales: TFLite: {scales['tflite'] or '-'}; ncnn: {scales['ncnn'] or '-'}."]
    if problems:
        lines += ["", "Problems: " + "; ".join(problems) + "."]
    lines.append("")
    return lines


SECTIONS: dict[str, Callable[[bool, int], list[str]]] = {
    "pruning": pruning_overhead,
    "qat": qat_overhead,
    "accuracy": exported_accuracy,
}


def run(quick: bool, parts: list[str], rounds: int) -> str:
    """Run the chosen sections and return the Markdown report."""
    lines = ["# Keras benchmark", ""]
    for part in parts:
        lines += SECTIONS[part](quick, rounds)
    return "\n".join(lines)


def main() -> None:
    """Command line entry point (also the worker entry point, with ``--worker``)."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 round (accuracy: 4 epochs)")
    parser.add_argument("--parts", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per variant")
    parser.add_argument("--output", type=Path, default=None, help="also write the Markdown report here")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=["plain", "pruning", "qat", "all"], help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(WORKERS[args.worker](args.variant, args.epochs)))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = run(args.quick, args.parts, args.rounds)
    emit(report, args.output)


if __name__ == "__main__":
    main()
