"""``fitslim demo``: the whole pipeline on the bundled digits, with Lightning and with Keras.

For each framework, through the user's ordinary entry point (``Trainer.fit`` / ``model.fit``):

1. the dense reference digits CNN is trained in fp32 (cached in the output folder, reused by the next run
   with the same settings); it is both the "before" model and the distillation teacher;
2. the dense model is exported in fp32 to ONNX, ncnn, TFLite and TensorRT (Q/DQ-free ONNX for an fp32
   engine), each artifact verified in its runtime;
3. a copy of it is fine-tuned with the callbacks of one recipe (:data:`DEMO_RECIPE`, the same YAML for both
   frameworks): channel pruning, quantization-aware training, distillation from the dense model, and an int8
   ``Export`` to the same four targets at fit end;
4. every artifact is run on the test split in its own runtime, and the dense fp32 and compressed int8 models
   are compared: test accuracy, parameters, file size, latency, agreement with the trained model.

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
    "DEMO_RECIPE",
    "FRAMEWORKS",
    "ArtifactResult",
    "DemoResult",
    "FrameworkResult",
    "VariantResult",
    "format_results",
    "run_demo",
]

log = logging.getLogger(__name__)

FRAMEWORKS = ("lightning", "keras")
TARGETS = ("onnx", "ncnn", "tflite", "tensorrt")
SIZE = 8  # the native digits resolution

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
class VariantResult:
    """The dense fp32 model or the compressed int8 model of one framework."""

    name: str
    parameters: int
    model_accuracy: float  # the trained model itself, in its framework
    artifacts: list[ArtifactResult]

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


@dataclass
class DemoResult:
    """The demo's outcome: one :class:`FrameworkResult` per framework, and where everything was written."""

    frameworks: list[FrameworkResult]
    output: str
    recipe: dict[str, Any]
    test_samples: int
    files: list[str] = field(default_factory=list)
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
    from exporters.runtimes import accuracy

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
    return VariantResult("dense fp32", parameters, accuracy, _artifacts(report, x_test_nchw, y_test))


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


def _lightning(teacher_epochs: int, finetune_epochs: int, seed: int, out: Path) -> FrameworkResult:
    import torch

    from fitslim.models import torch_model
    from lightning_plugins import from_recipe
    from lightning_plugins._compat import pl
    from lightning_plugins.reference import DigitsClassifier, DigitsDataModule, evaluate_accuracy

    t0 = time.perf_counter()
    folder = out / "lightning"
    folder.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    data = DigitsDataModule(size=SIZE, seed=seed)
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
    meta = {"epochs": teacher_epochs, "seed": seed, "model": "digits_cnn", "width": 1.0, "size": SIZE}
    pl.seed_everything(seed, verbose=False)
    dense_model = torch_model("digits_cnn", width=1.0)
    cached = weights.is_file() and _settings_match(meta_path, meta)
    if cached:
        print(f"[lightning] dense model: reusing {weights}", flush=True)
        dense_model.load_state_dict(torch.load(weights, weights_only=True))
    else:
        print(f"[lightning] training the dense digits CNN (fp32) for {teacher_epochs} epochs", flush=True)
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
    callbacks = from_recipe(_recipe_for("lightning", out), teacher=dense_model)
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
    )
    return FrameworkResult(
        "lightning", before, compressed, teacher_epochs, finetune_epochs, cached, recorder.steps, recorder.layers,
        time.perf_counter() - t0,
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


def _keras(teacher_epochs: int, finetune_epochs: int, seed: int, out: Path) -> FrameworkResult:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    from exporters.verify import nhwc_to_nchw
    from fitslim.data import digits
    from keras_callbacks import from_recipe
    from keras_callbacks.reference import TORCH_ADAM_EPSILON, build_digits_classifier, evaluate_accuracy

    t0 = time.perf_counter()
    folder = out / "keras"
    folder.mkdir(parents=True, exist_ok=True)
    d = digits(size=SIZE, layout="NHWC", seed=0)
    x_test_nchw = nhwc_to_nchw(d.x_test)
    verbose = 1 if sys.stdout.isatty() else 2

    # 1. the dense fp32 model (and teacher), cached
    path, meta_path = folder / "teacher.keras", folder / "teacher.json"
    meta = {
        "epochs": teacher_epochs, "seed": seed, "model": "digits_cnn", "width": 1.0, "size": SIZE,
        "adam_epsilon": TORCH_ADAM_EPSILON,
    }  # fmt: skip
    cached = path.is_file() and _settings_match(meta_path, meta)
    if cached:
        print(f"[keras] dense model: reusing {path}", flush=True)
        dense_model = keras.models.load_model(path)
    else:
        print(f"[keras] training the dense digits CNN (fp32) for {teacher_epochs} epochs", flush=True)
        keras.utils.set_random_seed(seed)
        # the Lightning half's optimizer exactly (torch.optim.Adam: epsilon 1e-8, Keras' default is 1e-7), so both
        # halves train the dense model and fine-tune it alike
        dense_model = build_digits_classifier(width=1.0, size=SIZE, epsilon=TORCH_ADAM_EPSILON)
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
    student = build_digits_classifier(width=1.0, size=SIZE, lr=3e-3, epsilon=TORCH_ADAM_EPSILON)
    student.set_weights(dense_model.get_weights())
    callbacks = from_recipe(_recipe_for("keras", out), teacher=dense_model)
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
    compressed = VariantResult(
        "compressed int8",
        sum(int(np.prod(w.shape)) for w in small.trainable_weights),
        evaluate_accuracy(student, d.x_test, d.y_test),
        _artifacts(export_cb.report, x_test_nchw, d.y_test),
    )
    return FrameworkResult(
        "keras", before, compressed, teacher_epochs, finetune_epochs, cached, recorder.steps, recorder.layers,
        time.perf_counter() - t0,
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


def _framework_lines(r: FrameworkResult, markdown: bool) -> list[str]:
    title = {"lightning": "Lightning", "keras": "Keras"}[r.framework]
    head = [
        f"{title}: reference digits CNN, dense fp32 (trained {r.teacher_epochs} epochs"
        f"{', cached' if r.teacher_cached else ''}) vs compressed int8 (fine-tuned {r.finetune_epochs} epochs "
        "with channel pruning + QAT + distillation)",
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
            "agreement int8",
        ]
    ]
    for target in TARGETS:
        a, b = r.dense.artifact(target), r.compressed.artifact(target)
        if a is None or b is None:
            continue
        if b.status != "ok" or a.status != "ok":
            failed = b if b.status != "ok" else a
            rows.append([target, failed.runtime or "-", f"{failed.status}: {failed.reason[:60]}", "", "", "", "", ""])
            continue
        prec = b.precision if b.precision != "int8" else "int8"
        rows.append(
            [
                target if prec == "int8" else f"{target} ({prec})",
                b.runtime,
                f"{_pct(a.test_accuracy)} → {_pct(b.test_accuracy)}",
                f"{_kb(a.size_bytes)} → {_kb(b.size_bytes)}",
                _ratio(b.size_bytes, a.size_bytes),
                f"{_ms(a.latency_ms)} → {_ms(b.latency_ms)}",
                _ratio(b.latency_ms, a.latency_ms),
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
            f"Bundled scikit-learn digits ({SIZE}x{SIZE}), test split of {result.test_samples} images. "
            "Test accuracies of artifacts are measured by running each exported file in its own runtime "
            "(onnxruntime, ncnn, LiteRT; the TensorRT Q/DQ ONNX in onnxruntime where TensorRT is absent). "
            "Latency: median single-sample inference, 2 threads. Agreement: top-1 agreement of the int8 "
            "artifact with the trained (fake-quant) model on the export's verification samples.",
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
        lines += _framework_lines(r, markdown)
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
            ax.plot(steps, values, label=r.framework, color=colors[r.framework], lw=2 if r.framework == "keras" else 4,
                    alpha=0.8)
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
) -> DemoResult:
    """Train, compress, export and compare the reference digits CNN in each framework; write the report.

    Args:
        output: folder for the cached teachers, artifacts, ``report.md``, ``report.json`` and plots.
        quick: fewer epochs, for a fast look (under two minutes on two cores).
        frameworks: any of ``"lightning"``, ``"keras"``.
        epochs: override the number of epochs of both the dense training and the fine-tuning.
        seed: the seed for weights and shuffling.

    Raises:
        ValueError: an unknown framework or a non-positive epoch count.
    """
    unknown = [f for f in frameworks if f not in FRAMEWORKS]
    if unknown or not frameworks:
        raise ValueError(f"frameworks: unknown {unknown or list(frameworks)}; choose from {list(FRAMEWORKS)}.")
    if epochs is not None and (isinstance(epochs, bool) or epochs < 1):
        raise ValueError(f"epochs must be >= 1; got {epochs}.")
    teacher_epochs = epochs if epochs is not None else (4 if quick else 12)
    finetune_epochs = epochs if epochs is not None else (3 if quick else 8)
    t0 = time.perf_counter()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter, before any import
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "recipe.yaml", _yaml(DEMO_RECIPE))
    results: list[FrameworkResult] = []
    for fw in frameworks:
        run = _lightning if fw == "lightning" else _keras
        results.append(run(teacher_epochs, finetune_epochs, seed, out))
    from fitslim.data import digits

    result = DemoResult(results, str(out), DEMO_RECIPE, len(digits(size=SIZE).y_test))
    result.files = [str(p) for p in _plots(result, out)]
    result.files += [str(out / "report.md"), str(out / "report.json")]
    result.seconds = time.perf_counter() - t0
    atomic_write_text(out / "report.md", format_results(result, markdown=True))
    atomic_write_text(out / "report.json", json.dumps(result.to_dict(), indent=2))
    return result
