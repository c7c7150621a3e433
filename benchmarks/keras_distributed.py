"""Distributed benchmark: the step-time cost of each Keras callback under ``tf.distribute.MirroredStrategy``.

Run: ``python -m benchmarks.keras_distributed [--steps 100] [--output results.md]`` (TensorFlow backend; the two
logical CPUs are configured before TensorFlow starts, so run it in a fresh process).

One process, one ``MirroredStrategy`` over two logical CPUs, the same model and data for every variant: the
reference digits CNN (``build_digits_classifier(width=1.0)``) on fixed random 8x8 inputs, global batch 64 (32 per
replica). Variants: the plain strategy fit (no fitslim callback), ``Pruning`` unstructured (masks updated on the
default schedule), ``QuantizationAware`` with the ``ema`` observer (one scalar all-gather per quantized layer and
step) and the ``percentile`` observer (an all-gather of each quantized layer's input per step), ``Distillation``
(a 4x wider teacher, logits only). Each fit takes ``--steps`` steps in one epoch; the first ``WARMUP`` are not
timed. A step is timed from ``on_train_batch_begin`` to ``on_train_batch_end`` (the replicas' forward and backward,
the gradient all-reduce, the optimizer step, the callbacks' hooks), as wall time; the table gives the median and
its ratio to the plain fit's. ``Export`` has no per-step hook, so it is not in the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from benchmarks import emit

WARMUP = 10
BATCH = 64


def _two_cpus() -> Any:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def _step_times(strategy: Any, variant: str, steps: int) -> list[float]:
    import keras

    import keras_callbacks as kc
    from keras_callbacks.reference import build_digits_classifier

    rng = np.random.RandomState(0)
    x = rng.rand(steps * BATCH, 8, 8, 1).astype("float32")
    y = rng.randint(0, 10, steps * BATCH).astype("int32")
    with strategy.scope():
        model = build_digits_classifier(width=1.0)
    times: list[float] = []

    class Timer(keras.callbacks.Callback):
        began = 0.0

        def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            self.began = time.perf_counter()

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            if batch >= WARMUP:
                times.append(time.perf_counter() - self.began)

    callbacks: list[Any] = []
    if variant == "Pruning (unstructured)":
        callbacks = [kc.Pruning(sparsity=0.5)]
    elif variant.startswith("QuantizationAware"):
        observer = variant.split("`")[1]
        callbacks = [kc.QuantizationAware(start=0.0, freeze_observers=1.0, freeze_bn=1.0, observer=observer)]
    elif variant.startswith("Distillation"):
        callbacks = [kc.Distillation(build_digits_classifier(width=4.0), temperature=4.0, alpha=0.7)]
    # the timer last: its end hook then includes the fitslim callbacks' batch-end hooks
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[*callbacks, Timer()])
    return times


def main(argv: list[str] | None = None) -> str:
    """Time every variant once and return the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    strategy = _two_cpus()
    variants = [
        "plain MirroredStrategy",
        "Pruning (unstructured)",
        "QuantizationAware (`ema`)",
        "QuantizationAware (`percentile`)",
        "Distillation (teacher 4x wider)",
    ]
    load = os.getloadavg()[0]
    medians = {v: statistics.median(_step_times(strategy, v, args.steps)) * 1e3 for v in variants}
    base = medians[variants[0]]
    rows = [f"| {v} | {m:.2f} | {m / base:.2f}x |" for v, m in medians.items()]
    text = "\n".join(
        [
            f"MirroredStrategy, 2 logical CPUs, {args.steps - WARMUP} timed steps per variant "
            f"(1-minute load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end)",
            "",
            "| variant | median step (ms) | vs plain |",
            "|---|---:|---:|",
            *rows,
        ]
    )
    return emit(text, args.output)


if __name__ == "__main__":
    main()
