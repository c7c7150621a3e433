"""``fitslim demo``: the whole pipeline on the bundled digits (or Fashion-MNIST), with Lightning and with Keras.

For each framework, through the user's ordinary entry point (``Trainer.fit`` / ``model.fit``):

1. the dense demo CNN (plain 3x3 convolutions of :data:`CHANNELS` channels, no depthwise or residual layers, on
   :data:`SIZE` x :data:`SIZE` images: the 8x8 digits upsampled, so that compute, not per-call overhead,
   dominates the latency) is trained in fp32
   (cached in the output folder, reused by the next run with the same settings); it is both the "before" model
   and the distillation teacher;
2. the dense model is exported in fp32 to ONNX, ncnn, TFLite and TensorRT (Q/DQ-free ONNX for an fp32
   engine), each artifact verified in its runtime;
3. a copy of it is fine-tuned with the callbacks of one recipe (:data:`DEMO_RECIPE`, the same YAML for both
   frameworks): channel pruning, quantization-aware training, distillation from the dense model, and an int8
   ``Export`` to the same four targets at fit end;
4. every artifact is run on the test split in its own runtime, and the dense fp32 and compressed int8 models
   are compared: test accuracy, parameters, file size, agreement with the trained model, and latency: the dense
   fp32 and the compressed int8 artifact of each runtime timed side by side, interleaved, in one run
   (:func:`time_interleaved`), with a plain "faster" / "slower" verdict.

The output folder receives ``report.md``, ``report.json``, ``recipe.yaml``, the plots
(``sparsity_over_steps.png``, ``layer_sparsity.png``, ``size_latency_accuracy.png``) and, per framework,
the teacher and the ``dense/`` and ``compressed/`` artifacts with their export reports.

Example:
    >>> # fitslim demo --quick
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fitslim.fileio import atomic_path, atomic_write_text

__all__ = [
    "ACCURACY_BOUND",
    "DATASETS",
    "DEMO_RECIPE",
    "EPOCHS",
    "FRAMEWORKS",
    "ArtifactResult",
    "DemoResult",
    "FrameworkResult",
    "Speed",
    "VariantResult",
    "format_results",
    "keras_demo_classifier",
    "load_data",
    "run_demo",
    "time_interleaved",
    "torch_demo_cnn",
]

log = logging.getLogger(__name__)

FRAMEWORKS = ("lightning", "keras")
TARGETS = ("onnx", "ncnn", "tflite", "tensorrt")
#: input side: the 8x8 digits upsampled (Fashion-MNIST's 28x28 resized) so the model's compute dominates a call
SIZE = 32
#: the demo CNN's conv widths: conv(1→16) pool conv(16→48) conv(48→96) pool conv(96→96), global pool, linear.
#: Plain convolutions only: every one loses half its channels to pruning (a residual block's tied channels
#: stayed whole in the digits CNN), and int8 depthwise kernels are weak in LiteRT/XNNPACK.
CHANNELS = (16, 48, 96, 96)
#: the data sets ``run_demo(data=...)`` takes
DATASETS = ("digits", "fashion-mnist")
#: Fashion-MNIST training images the demo uses (the first of the fixed training split), full run / --quick
FASHION_TRAIN = (12000, 4000)
#: the demo's claim: the compressed model's test accuracy within this much of the dense model's
ACCURACY_BOUND = 0.01
#: interleaved latency timing: rounds, timed calls per burst (500 timed calls per artifact, well under a second for
#: the demo CNN: 75 calls once let a passing disturbance read LiteRT int8 as 1.50x where re-timing gave 0.52x)
TIMING = (20, 25)
#: epochs of the dense training and of the fine-tune: full run, --quick
EPOCHS = {"full": (12, 8), "quick": (3, 3)}

#: The compression recipe both frameworks run (``export.directory`` is set per framework).
DEMO_RECIPE: dict[str, Any] = {
    "version": 1,
    "pruning": {"sparsity": 0.5, "granularity": "channel", "schedule": "polynomial", "start": 0.0, "end": 0.5},
    "quantization": {"start": 0.6, "freeze_bn": 0.8, "freeze_observers": 0.9},
    "distillation": {"temperature": 1.0, "alpha": 0.5},  # the defaults: chosen on a validation split
    "export": {"targets": list(TARGETS), "precision": "int8"},
}


@dataclass
class ArtifactResult:
    """One exported artifact, scored on the test split in its runtime."""

    target: str
    precision: str
    status: str
    files: list[str] = field(default_factory=list)
    size_bytes: int | None = None
    test_accuracy: float | None = None
    latency_ms: float | None = None
    agreement: float | None = None  # top-1 agreement with the trained model on the export's samples
    runtime: str = ""
    reason: str = ""


@dataclass
class Speed:
    """The dense fp32 and compressed int8 artifacts of one target, timed side by side in one run."""

    target: str
    dense_ms: float  # median single-sample latency
    compressed_ms: float
    ratio: float  # compressed / dense: below 1 is faster

    @property
    def verdict(self) -> str:
        """``"faster"`` or ``"slower"`` (``"same"`` within 2 %)."""
        return "faster" if self.ratio < 0.98 else "slower" if self.ratio > 1.02 else "same"


@dataclass
class VariantResult:
    """The dense fp32 model or the compressed int8 model of one framework."""

    name: str
    parameters: int
    model_accuracy: float  # the trained model itself, in its framework
    artifacts: list[ArtifactResult]
    directory: str = ""  # where its export report is

    def artifact(self, target: str) -> ArtifactResult | None:
        """The artifact of ``target``, or None."""
        return next((a for a in self.artifacts if a.target == target), None)


@dataclass
class FrameworkResult:
    """Everything the demo measured for one framework."""

    framework: str
    dense: VariantResult
    compressed: VariantResult
    teacher_epochs: int
    finetune_epochs: int
    teacher_cached: bool
    sparsity_steps: list[tuple[int, float]]  # (optimizer step, kernel sparsity) after each step
    layer_sparsity: dict[str, float]  # per pruned layer, the share of its weights removed (before removal)
    seconds: float
    speed: list[Speed] = field(default_factory=list)  # per target, dense vs compressed, interleaved

    def speed_of(self, target: str) -> Speed | None:
        """The interleaved timing of ``target``, or None."""
        return next((t for t in self.speed if t.target == target), None)


@dataclass
class DemoResult:
    """The demo's outcome: one :class:`FrameworkResult` per framework, and where everything was written."""

    frameworks: list[FrameworkResult]
    output: str
    recipe: dict[str, Any]
    test_samples: int
    files: list[str] = field(default_factory=list)
    data: str = "digits"
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


# ------------------------------------------------------------------------------------------------ shared


def _progress(framework: str, stage: str) -> Callable[[str], None]:
    def show(message: str) -> None:
        print(f"[{framework} {stage}] {message} ...", flush=True)

    return show


def _artifacts(report: Any, x_test_nchw: npt.NDArray[np.float32], y_test: npt.NDArray[Any]) -> list[ArtifactResult]:
    """Score every written artifact of an export report on the test split, in its own runtime."""
    from exporters.core.runtimes import accuracy

    rows = []
    for r in report:
        row = ArtifactResult(
            r.target,
            r.precision,
            r.status,
            list(r.files),
            r.size_bytes,
            latency_ms=r.latency_ms,
            agreement=r.top1_agreement,
            runtime=r.runtime,
            reason=r.reason,
        )
        if r.ok:
            try:
                row.test_accuracy = accuracy(report, r.target, x_test_nchw, y_test)
            except Exception as err:  # a runtime that cannot run it: say so in the table, keep the rest
                log.warning("%s: could not score %s on the test split: %s", report.directory, r.target, err)
                row.reason = f"scoring failed: {err}"
        rows.append(row)
    return rows


def load_data(data: str, layout: str, quick: bool = False) -> Any:
    """The demo's data set at :data:`SIZE` x :data:`SIZE`: the bundled digits, or Fashion-MNIST.

    Fashion-MNIST is cut to the first :data:`FASHION_TRAIN` images of its fixed training split (so the demo
    stays minutes long); its validation and test splits are whole.

    Args:
        data: ``"digits"`` or ``"fashion-mnist"``.
        layout: ``"NCHW"`` or ``"NHWC"``.
        quick: the smaller Fashion-MNIST training subset.

    Raises:
        ValueError: an unknown data set.
        FashionMNISTNotFound: Fashion-MNIST is not installed (the message says how to get it).
    """
    import dataclasses

    from fitslim.data import digits, fashion_mnist

    if data == "digits":
        return digits(size=SIZE, layout=layout, seed=0)  # type: ignore[arg-type]
    if data == "fashion-mnist":
        d = fashion_mnist(layout=layout, size=SIZE)  # type: ignore[arg-type]
        n = FASHION_TRAIN[1 if quick else 0]
        return dataclasses.replace(d, x_train=d.x_train[:n], y_train=d.y_train[:n])
    raise ValueError(f"data must be one of {list(DATASETS)}; got {data!r}.")


def torch_demo_cnn(num_classes: int = 10) -> Any:
    """The demo CNN as a torch ``nn.Sequential`` (NCHW, 1 input channel, any input side divisible by 4).

    Args:
        num_classes: outputs (logits).
    """
    from torch import nn

    def block(cin: int, cout: int) -> list[Any]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    c1, c2, c3, c4 = CHANNELS
    return nn.Sequential(
        *block(1, c1), nn.MaxPool2d(2), *block(c1, c2), *block(c2, c3), nn.MaxPool2d(2), *block(c3, c4),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c4, num_classes),
    )  # fmt: skip


def keras_demo_classifier(lr: float = 1e-2, epsilon: float = 1e-7, num_classes: int = 10) -> Any:
    """The Keras twin of :func:`torch_demo_cnn` (NHWC, :data:`SIZE` x :data:`SIZE`), compiled like the reference.

    Args:
        lr: Adam learning rate.
        epsilon: Adam's epsilon (the demo passes torch's, so both halves train alike).
        num_classes: outputs (logits).
    """
    import keras
    from keras import layers

    def block(x: Any, cout: int, name: str) -> Any:
        x = layers.Conv2D(cout, 3, padding="same", use_bias=False, name=name)(x)
        x = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=name + "_bn")(x)
        return layers.ReLU(name=name + "_relu")(x)

    c1, c2, c3, c4 = CHANNELS
    inputs = keras.Input((SIZE, SIZE, 1))
    x = layers.MaxPooling2D(2, name="pool1")(block(inputs, c1, "conv1"))
    x = layers.MaxPooling2D(2, name="pool2")(block(block(x, c2, "conv2"), c3, "conv3"))
    x = layers.GlobalAveragePooling2D(name="gap")(block(x, c4, "conv4"))
    model = keras.Model(inputs, layers.Dense(num_classes, name="fc")(x), name="demo_cnn")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=lr, epsilon=epsilon),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def time_interleaved(
    runners: list[Callable[[Any], Any]], x: Any, rounds: int = TIMING[0], burst: int = TIMING[1]
) -> list[list[float]]:
    """Single-sample latencies (ms) of every runner on ``x``, timed in ``rounds`` rounds in rotating order.

    Each round gives every runner one untimed call, then ``burst`` timed ones, so slow changes in the machine's
    load spread over all runners alike; compare medians.

    Args:
        runners: callables taking ``x``.
        x: the input (one sample).
        rounds: rounds of the rotation.
        burst: timed calls per runner and round.

    Raises:
        ValueError: no runner, or a non-positive ``rounds`` / ``burst``.
    """
    if not runners or rounds < 1 or burst < 1:
        raise ValueError(
            f"time_interleaved: need runners, rounds >= 1, burst >= 1; got {len(runners)}, {rounds}, {burst}."
        )
    from exporters.core.latency import interleaved_times  # the timer behind the export reports' latency verdicts

    def bound(run: Callable[[Any], Any]) -> Callable[[], Any]:
        return lambda: run(x)

    return interleaved_times([bound(run) for run in runners], rounds, burst)


def _speed(dense: VariantResult, compressed: VariantResult, sample: npt.NDArray[np.float32]) -> list[Speed]:
    """Time each target's dense fp32 and compressed int8 artifact side by side, interleaved."""
    from exporters.core.report import ExportReport
    from exporters.core.runtimes import runner

    reports = ExportReport.load(dense.directory), ExportReport.load(compressed.directory)
    out = []
    for target in TARGETS:
        a, b = dense.artifact(target), compressed.artifact(target)
        if a is None or b is None or a.status != "ok" or b.status != "ok":
            continue
        try:
            runs = [runner(rep, target, threads=2) for rep in reports]
            t_dense, t_small = time_interleaved(runs, sample)
        except Exception as err:  # a runtime that cannot run it: the accuracy table says so already
            log.warning("could not time %s: %s", target, err)
            continue
        d, c = float(np.median(t_dense)), float(np.median(t_small))
        out.append(Speed(target, d, c, c / d))
    return out


def _dense_variant(
    framework: str, model: Any, parameters: int, accuracy: float, data: tuple[Any, Any, Any, Any], folder: Path
) -> VariantResult:
    """Export the dense model in fp32 to every target and score each artifact on the test split.

    ``data``: one example input and the test inputs in the model's layout, the test inputs in NCHW, the labels.
    """
    from exporters import export

    example, samples, x_test_nchw, y_test = data
    report = export(
        model,
        list(TARGETS),
        example_input=example,
        precision="fp32",
        samples=samples,
        directory=folder / "dense",
        progress=_progress(framework, "dense fp32 export"),
    )
    return VariantResult(
        "dense fp32", parameters, accuracy, _artifacts(report, x_test_nchw, y_test), str(report.directory)
    )


def _timed_by_the_demo(callbacks: list[Any]) -> list[Any]:
    """The recipe's callbacks, their ``Export`` without its latency verdict (``latency=False``).

    The demo times every compressed artifact against the dense one itself (:func:`_speed`), so the export's own
    comparison with an fp32 peer (a second TFLite conversion of the student, for one) would only repeat it.
    """
    import dataclasses

    export_cb = callbacks[-1]
    export_cb.settings = dataclasses.replace(export_cb.settings, latency=False)
    return callbacks


def _settings_match(meta_path: Path, meta: dict[str, Any]) -> bool:
    try:
        return bool(json.loads(meta_path.read_text(encoding="utf-8")) == meta)
    except (OSError, ValueError):
        return False


def _recipe_for(framework: str, out: Path) -> dict[str, Any]:
    recipe = copy.deepcopy(DEMO_RECIPE)
    recipe["export"]["directory"] = str(out / framework / "compressed")
    return recipe


# --------------------------------------------------------------------------------------------- Lightning


def _lightning(
    teacher_epochs: int, finetune_epochs: int, seed: int, out: Path, data_name: str, quick: bool
) -> FrameworkResult:
    import torch

    from lightning_plugins import from_recipe
    from lightning_plugins._compat import pl
    from lightning_plugins.reference import DigitsClassifier, DigitsDataModule, evaluate_accuracy

    t0 = time.perf_counter()
    folder = out / "lightning"
    folder.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    data = DigitsDataModule(size=8, seed=seed)
    data.data = load_data(data_name, "NCHW", quick)  # the reference module's loaders, on the demo's data
    d = data.data

    def trainer(epochs: int, callbacks: list[Any], root: Path) -> Any:
        return pl.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            deterministic=True,
            default_root_dir=str(root),
            enable_checkpointing=False,
            logger=False,
            enable_model_summary=False,
            callbacks=callbacks,
        )

    # 1. the dense fp32 model (and teacher), cached
    weights, meta_path = folder / "teacher.pt", folder / "teacher.json"
    meta = {
        "epochs": teacher_epochs, "seed": seed, "model": "demo_cnn", "channels": list(CHANNELS), "size": SIZE,
        "data": data_name, "train": len(d.y_train),
    }  # fmt: skip
    pl.seed_everything(seed, verbose=False)
    dense_model = torch_demo_cnn()
    cached = weights.is_file() and _settings_match(meta_path, meta)
    if cached:
        print(f"[lightning] dense model: reusing {weights}", flush=True)
        dense_model.load_state_dict(torch.load(weights, weights_only=True))
    else:
        print(f"[lightning] training the dense CNN (fp32) on {data_name} for {teacher_epochs} epochs", flush=True)
        dense = DigitsClassifier(model=dense_model)
        trainer(teacher_epochs, [], folder).fit(dense, datamodule=data)
        with atomic_path(weights) as tmp:
            torch.save(dense_model.state_dict(), tmp)
        atomic_write_text(meta_path, json.dumps(meta))
    dense_model.eval()
    before = _dense_variant(
        "lightning",
        dense_model,
        sum(p.numel() for p in dense_model.parameters()),
        evaluate_accuracy(dense_model, d.x_test, d.y_test),
        (d.x_train[:1], d.x_test, d.x_test, d.y_test),
        folder,
    )

    # 2. the compressed model: fine-tune a copy with the recipe's callbacks
    print(f"[lightning] fine-tuning with pruning + QAT + distillation for {finetune_epochs} epochs", flush=True)
    pl.seed_everything(seed, verbose=False)
    student = DigitsClassifier(model=copy.deepcopy(dense_model).train(), lr=3e-3)
    callbacks = _timed_by_the_demo(from_recipe(_recipe_for("lightning", out), teacher=dense_model))
    recorder = _lightning_recorder()
    trainer(finetune_epochs, [*callbacks, recorder], folder).fit(student, datamodule=data)
    export_cb = callbacks[-1]
    if export_cb.report is None:
        raise RuntimeError("lightning: the Export callback wrote no report")
    student.model.eval()
    compressed = VariantResult(
        "compressed int8",
        sum(p.numel() for p in student.model.parameters()),
        evaluate_accuracy(student.model, d.x_test, d.y_test),
        _artifacts(export_cb.report, d.x_test, d.y_test),
        str(export_cb.report.directory),
    )
    print("[lightning] timing dense fp32 and compressed int8 side by side, per runtime", flush=True)
    speed = _speed(before, compressed, d.x_test[:1])
    return FrameworkResult(
        "lightning", before, compressed, teacher_epochs, finetune_epochs, cached, recorder.steps, recorder.layers,
        time.perf_counter() - t0, speed,
    )  # fmt: skip


def _record(recorder: Any, step: int, metrics: Mapping[str, Any]) -> None:
    """Append the Pruning callback's ``pruning/sparsity`` at ``step`` and keep its latest per-layer values."""
    if "pruning/sparsity" in metrics:
        recorder.steps.append((step, float(metrics["pruning/sparsity"])))
        prefix = "pruning/sparsity/"
        recorder.layers = {k[len(prefix) :]: float(v) for k, v in metrics.items() if k.startswith(prefix)}


def _lightning_recorder() -> Any:
    """A callback that reads the ``pruning/*`` metrics the Pruning callback logs, after every training step."""
    from lightning_plugins._compat import pl

    class Recorder(pl.Callback):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.steps: list[tuple[int, float]] = []
            self.layers: dict[str, float] = {}

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            _record(self, int(trainer.global_step), trainer.callback_metrics)

    return Recorder()


# ------------------------------------------------------------------------------------------------- Keras


def _keras(
    teacher_epochs: int, finetune_epochs: int, seed: int, out: Path, data_name: str, quick: bool
) -> FrameworkResult:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    from exporters.core.verify import nhwc_to_nchw
    from keras_callbacks import QuantizationAware, from_recipe
    from keras_callbacks.quantization import fake_quant_inference
    from keras_callbacks.reference import TORCH_ADAM_EPSILON, evaluate_accuracy

    t0 = time.perf_counter()
    folder = out / "keras"
    folder.mkdir(parents=True, exist_ok=True)
    d = load_data(data_name, "NHWC", quick)
    x_test_nchw = nhwc_to_nchw(d.x_test)
    verbose = 1 if sys.stdout.isatty() else 2

    # 1. the dense fp32 model (and teacher), cached
    path, meta_path = folder / "teacher.keras", folder / "teacher.json"
    meta = {
        "epochs": teacher_epochs, "seed": seed, "model": "demo_cnn", "channels": list(CHANNELS), "size": SIZE,
        "adam_epsilon": TORCH_ADAM_EPSILON, "data": data_name, "train": len(d.y_train),
    }  # fmt: skip
    cached = path.is_file() and _settings_match(meta_path, meta)
    if cached:
        print(f"[keras] dense model: reusing {path}", flush=True)
        dense_model = keras.models.load_model(path)
    else:
        print(f"[keras] training the dense CNN (fp32) on {data_name} for {teacher_epochs} epochs", flush=True)
        keras.utils.set_random_seed(seed)
        # the Lightning half's optimizer exactly (torch.optim.Adam: epsilon 1e-8, Keras' default is 1e-7), so both
        # halves train the dense model and fine-tune it alike
        dense_model = keras_demo_classifier(epsilon=TORCH_ADAM_EPSILON)
        dense_model.fit(
            d.x_train,
            d.y_train,
            batch_size=64,
            epochs=teacher_epochs,
            validation_data=(d.x_val, d.y_val),
            callbacks=[keras.callbacks.LearningRateScheduler(_Cosine(teacher_epochs, 1e-2))],
            verbose=verbose,
        )
        with atomic_path(path) as tmp:
            tmp_keras = tmp.with_name(tmp.name + ".keras")  # Keras insists on the suffix
            dense_model.save(tmp_keras)
            tmp_keras.replace(tmp)
        atomic_write_text(meta_path, json.dumps(meta))
    before = _dense_variant(
        "keras",
        dense_model,
        sum(int(np.prod(w.shape)) for w in dense_model.trainable_weights),
        evaluate_accuracy(dense_model, d.x_test, d.y_test),
        (d.x_train[:1], d.x_test, x_test_nchw, d.y_test),
        folder,
    )

    # 2. the compressed model: fine-tune a copy with the recipe's callbacks
    print(f"[keras] fine-tuning with pruning + QAT + distillation for {finetune_epochs} epochs", flush=True)
    keras.utils.set_random_seed(seed)
    student = keras_demo_classifier(lr=3e-3, epsilon=TORCH_ADAM_EPSILON)
    student.set_weights(dense_model.get_weights())
    callbacks = _timed_by_the_demo(from_recipe(_recipe_for("keras", out), teacher=dense_model))
    recorder = _keras_recorder()
    pruning, export_cb = callbacks[0], callbacks[-1]
    schedule = _Cosine(finetune_epochs, 3e-3)
    student.fit(
        d.x_train,
        d.y_train,
        batch_size=64,
        epochs=finetune_epochs,
        validation_data=(d.x_val, d.y_val),
        # the fine-tune's learning rate decays like the Lightning module's (CosineAnnealingLR), so the recipe
        # runs under the same schedule on both sides
        callbacks=[pruning, recorder, *callbacks[1:], keras.callbacks.LearningRateScheduler(schedule)],
        verbose=verbose,
    )
    if export_cb.report is None:
        raise RuntimeError("keras: the Export callback wrote no report")
    small = pruning.pruned_model if pruning.pruned_model is not None else student
    qat = next(cb for cb in callbacks if isinstance(cb, QuantizationAware))
    if qat.quant_spec is None:
        raise RuntimeError("keras: QuantizationAware learned no QuantSpec (no batch reached its observers)")
    with fake_quant_inference(student, qat.quant_spec):  # scored as the fake-quant model QAT learned
        accuracy = evaluate_accuracy(student, d.x_test, d.y_test)
    compressed = VariantResult(
        "compressed int8",
        sum(int(np.prod(w.shape)) for w in small.trainable_weights),
        accuracy,
        _artifacts(export_cb.report, x_test_nchw, d.y_test),
        str(export_cb.report.directory),
    )
    print("[keras] timing dense fp32 and compressed int8 side by side, per runtime", flush=True)
    speed = _speed(before, compressed, x_test_nchw[:1])
    return FrameworkResult(
        "keras", before, compressed, teacher_epochs, finetune_epochs, cached, recorder.steps, recorder.layers,
        time.perf_counter() - t0, speed,
    )  # fmt: skip


def _keras_recorder() -> Any:
    """A callback that reads the ``pruning/*`` entries the Pruning callback puts in the batch logs.

    Place it right after the Pruning callback: Keras hands one logs dict along the callback list.
    """
    import keras

    class Recorder(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.steps: list[tuple[int, float]] = []
            self.layers: dict[str, float] = {}
            self._step = 0

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            self._step += 1
            _record(self, self._step, logs or {})

    return Recorder()


class _Cosine:
    """Per-epoch cosine learning rate, the same curve as torch's CosineAnnealingLR on the Lightning side."""

    def __init__(self, epochs: int, lr: float) -> None:
        self.epochs, self.lr = epochs, lr

    def __call__(self, epoch: int, lr: float = 0.0) -> float:
        return float(self.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, self.epochs))))


# ------------------------------------------------------------------------------------------------ report


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def _kb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024:.1f} KB"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f} ms"


def _ratio(after: float | None, before: float | None) -> str:
    return "-" if after is None or not before else f"{after / before:.2f}x"


def _data_title(data: str) -> str:
    return {"digits": f"digits upsampled to {SIZE}x{SIZE}", "fashion-mnist": f"Fashion-MNIST at {SIZE}x{SIZE}"}[data]


def _framework_lines(r: FrameworkResult, markdown: bool, data: str = "digits") -> list[str]:
    title = {"lightning": "Lightning", "keras": "Keras"}[r.framework]
    drop = r.dense.model_accuracy - r.compressed.model_accuracy
    head = [
        f"{title}: demo CNN ({'-'.join(map(str, CHANNELS))} channels) on {_data_title(data)}, dense fp32 "
        f"(trained {r.teacher_epochs} epochs{', cached' if r.teacher_cached else ''}) vs compressed int8 "
        f"(fine-tuned {r.finetune_epochs} epochs with channel pruning + QAT + distillation)",
        "",
        f"Accuracy: dense {_pct(r.dense.model_accuracy)}, compressed {_pct(r.compressed.model_accuracy)} "
        f"({-drop * 100:+.1f} pt; "
        + ("better than dense" if drop < 0 else "within" if drop <= ACCURACY_BOUND + 1e-9 else "NOT within")
        + (f" {ACCURACY_BOUND * 100:.0f} pt of dense)." if drop >= 0 else ")."),
        "",
    ]
    models = [
        ["model", "parameters", "test accuracy (framework)"],
        ["dense fp32", f"{r.dense.parameters:,}", _pct(r.dense.model_accuracy)],
        ["compressed int8", f"{r.compressed.parameters:,}", _pct(r.compressed.model_accuracy)],
        ["after / before", _ratio(r.compressed.parameters, r.dense.parameters), ""],
    ]
    rows = [
        [
            "target",
            "runtime",
            "test acc fp32 → int8",
            "size fp32 → int8",
            "size ratio",
            "latency fp32 → int8",
            "latency ratio",
            "compressed is",
            "agreement int8",
        ]
    ]
    for target in TARGETS:
        a, b = r.dense.artifact(target), r.compressed.artifact(target)
        if a is None or b is None:
            continue
        if b.status != "ok" or a.status != "ok":
            failed = b if b.status != "ok" else a
            rows.append([target, failed.runtime or "-", f"{failed.status}: {failed.reason[:60]}", *[""] * 6])
            continue
        sp = r.speed_of(target)
        rows.append(
            [
                target if b.precision == "int8" else f"{target} ({b.precision})",
                b.runtime,
                f"{_pct(a.test_accuracy)} → {_pct(b.test_accuracy)}",
                f"{_kb(a.size_bytes)} → {_kb(b.size_bytes)}",
                _ratio(b.size_bytes, a.size_bytes),
                "-" if sp is None else f"{_ms(sp.dense_ms)} → {_ms(sp.compressed_ms)}",
                "-" if sp is None else f"{sp.ratio:.2f}x",
                "-" if sp is None else sp.verdict,
                _pct(b.agreement),
            ]
        )
    return head + _table(models, markdown) + [""] + _table(rows, markdown)


def _table(rows: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        return out + ["| " + " | ".join(c or " " for c in row) + " |" for row in rows[1:]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_results(result: DemoResult, markdown: bool = False) -> str:
    """The demo's tables, one per framework, as plain text or Markdown."""
    lines: list[str] = []
    if markdown:
        lines += [
            "# fitslim demo report",
            "",
            f"{'Bundled scikit-learn ' if result.data == 'digits' else ''}{_data_title(result.data)}, test split "
            f"of {result.test_samples} images. "
            "Test accuracies of artifacts are measured by running each exported file in its own runtime "
            "(onnxruntime, ncnn, LiteRT; the TensorRT Q/DQ ONNX in onnxruntime where TensorRT is absent). "
            "Latency: median single-sample inference, 2 threads, the dense fp32 and compressed int8 artifact of "
            "each runtime timed side by side, interleaved, in one run; a ratio below 1.00x is faster. Agreement: "
            "top-1 agreement of the int8 artifact with the trained (fake-quant) model on the export's "
            "verification samples.",
            "",
            "Recipe (both frameworks):",
            "",
            "```yaml",
            _yaml(result.recipe).rstrip(),
            "```",
            "",
        ]
    for r in result.frameworks:
        if markdown:
            lines.append("## " + {"lightning": "Lightning", "keras": "Keras"}[r.framework])
            lines.append("")
        lines += _framework_lines(r, markdown, result.data)
        lines.append("")
    if markdown and result.files:
        lines += ["## Plots", ""] + [f"![{Path(f).stem}]({Path(f).name})" for f in result.files if f.endswith(".png")]
    return "\n".join(lines).rstrip() + "\n"


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return str(yaml.safe_dump(data, sort_keys=False))


def _plots(result: DemoResult, out: Path) -> list[Path]:
    """Sparsity over steps, per-layer sparsity, and size / latency / accuracy bars, as PNG files."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plots (pip install 'fitslim[demo]')")
        return []
    written: list[Path] = []
    colors = {"lightning": "#792ee5", "keras": "#d00000"}

    def save(fig: Any, name: str) -> None:
        path = out / name
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(7, 3.6))
    for r in result.frameworks:
        if r.sparsity_steps:
            steps, values = zip(*r.sparsity_steps, strict=True)
            ax.plot(
                steps,
                values,
                label=r.framework,
                color=colors[r.framework],
                lw=2 if r.framework == "keras" else 4,
                alpha=0.8,
            )
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("kernel sparsity")
    ax.set_title("Pruning schedule: sparsity over steps (same recipe, both frameworks)")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, "sparsity_over_steps.png")

    fig, axes = plt.subplots(1, len(result.frameworks), figsize=(6 * len(result.frameworks), 3.6), squeeze=False)
    for ax, r in zip(axes[0], result.frameworks, strict=True):
        names = list(r.layer_sparsity)
        ax.bar(range(len(names)), [r.layer_sparsity[n] for n in names], color=colors[r.framework])
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of weights removed")
        ax.set_title(f"{r.framework}: per-layer sparsity at fit end")
        ax.grid(axis="y", alpha=0.3)
    save(fig, "layer_sparsity.png")

    metrics = [
        ("size (KB)", lambda a: None if a.size_bytes is None else a.size_bytes / 1024),
        ("latency (ms)", lambda a: a.latency_ms),
        ("test accuracy (%)", lambda a: None if a.test_accuracy is None else a.test_accuracy * 100),
    ]
    fig, grid = plt.subplots(len(result.frameworks), 3, figsize=(15, 3.4 * len(result.frameworks)), squeeze=False)
    width = 0.38
    for row, r in zip(grid, result.frameworks, strict=True):
        for ax, (label, get) in zip(row, metrics, strict=True):
            for k, variant in enumerate((r.dense, r.compressed)):
                bars: list[float] = []
                for t in TARGETS:
                    art = variant.artifact(t)
                    v = get(art) if art is not None and art.status == "ok" else None
                    bars.append(np.nan if v is None else v)
                ax.bar(np.arange(len(TARGETS)) + (k - 0.5) * width, bars, width, label=variant.name)
            ax.set_xticks(range(len(TARGETS)), TARGETS)
            ax.set_title(f"{r.framework}: {label}")
            ax.grid(axis="y", alpha=0.3)
            if label.startswith("test"):  # zoomed: the differences are a few points
                scores = [get(a) for v in (r.dense, r.compressed) for a in v.artifacts if a.test_accuracy is not None]
                low = min((float(x) for x in scores if x is not None), default=0.0)
                ax.set_ylim(max(0.0, 10 * math.floor(low / 10) - 10), 100)
            ax.legend(fontsize=8)
    save(fig, "size_latency_accuracy.png")
    return written


# --------------------------------------------------------------------------------------------------- run


def run_demo(
    output: str | os.PathLike[str] = "fitslim-demo",
    quick: bool = False,
    frameworks: tuple[str, ...] = FRAMEWORKS,
    epochs: int | None = None,
    seed: int = 0,
    data: str = "digits",
) -> DemoResult:
    """Train, compress, export and compare the reference CNN in each framework; write the report.

    Args:
        output: folder for the cached teachers, artifacts, ``report.md``, ``report.json`` and plots.
        quick: fewer epochs (and a smaller Fashion-MNIST training subset), for a fast look.
        frameworks: any of ``"lightning"``, ``"keras"``.
        epochs: override the number of epochs of both the dense training and the fine-tuning.
        seed: the seed for weights and shuffling.
        data: ``"digits"`` (bundled) or ``"fashion-mnist"`` (installed separately, see :mod:`fitslim.data`).

    Raises:
        ValueError: an unknown framework or data set, or a non-positive epoch count.
        FashionMNISTNotFound: ``data="fashion-mnist"`` and it is not installed (the message says how to get it).
    """
    unknown = [f for f in frameworks if f not in FRAMEWORKS]
    if unknown or not frameworks:
        raise ValueError(f"frameworks: unknown {unknown or list(frameworks)}; choose from {list(FRAMEWORKS)}.")
    if epochs is not None and (isinstance(epochs, bool) or epochs < 1):
        raise ValueError(f"epochs must be >= 1; got {epochs}.")
    if data not in DATASETS:
        raise ValueError(f"data must be one of {list(DATASETS)}; got {data!r}. Use 'digits' (bundled).")
    if data == "fashion-mnist":
        from fitslim.data import find_fashion_mnist

        find_fashion_mnist()  # before any training: the message says how to get it
    default_teacher, default_finetune = EPOCHS["quick" if quick else "full"]
    teacher_epochs = epochs if epochs is not None else default_teacher
    finetune_epochs = epochs if epochs is not None else default_finetune
    t0 = time.perf_counter()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter, before any import
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "recipe.yaml", _yaml(DEMO_RECIPE))
    results: list[FrameworkResult] = []
    for fw in frameworks:
        run = _lightning if fw == "lightning" else _keras
        results.append(run(teacher_epochs, finetune_epochs, seed, out, data, quick))
    result = DemoResult(results, str(out), DEMO_RECIPE, len(load_data(data, "NCHW", quick).y_test), data=data)
    result.files = [str(p) for p in _plots(result, out)]
    result.files += [str(out / "report.md"), str(out / "report.json")]
    result.seconds = time.perf_counter() - t0
    atomic_write_text(out / "report.md", format_results(result, markdown=True))
    atomic_write_text(out / "report.json", json.dumps(result.to_dict(), indent=2))
    return result
