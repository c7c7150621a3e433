"""Headline benchmark: speed at 224x224, then dense fp32 MobileNetV2 before, int8 + pruned + distilled after.

Run: ``python -m benchmarks.headline [--quick] [--output results.md] [--threads 2] [--no-speed]``.

Full mode starts with the speed tables at 224x224 (:mod:`benchmarks.speed224`: MobileNetV2 alpha 1.0,
ResNet-50 and a ViT-tiny-sized transformer; dense fp32 vs 50% channels vs int8 vs both in onnxruntime,
ncnn and LiteRT). The trained digits models below are the accuracy tables.

The shape of the classic MobileNetV2 compression result (int8 weights, 30-50% of the channels removed,
distillation from the dense model to recover accuracy: parameters, size, accuracy and latency before ->
after), reproduced on the reference models and the bundled digits, every ratio measured in one run:

1. Before: the reference MobileNetV2 (``torch_model("mobilenet_v2")``, 1 input channel, 10 classes) is
   trained dense in fp32 with Lightning on the digits upsampled to ``--size`` (the reference
   ``DigitsClassifier`` / ``DigitsDataModule``). It is exported fp32 to ONNX, ncnn and TFLite (LiteRT,
   through litert-torch) with :func:`exporters.export`.
2. After: a copy of the trained dense model is fine-tuned in **one** Lightning ``fit`` with the four
   fitslim callbacks: ``Pruning(granularity="channel", sparsity=--sparsity)`` (channels removed physically
   when its schedule ends), ``QuantizationAware`` (after the pruning), ``Distillation(teacher=dense model)``
   and ``Export(precision="int8")``, which writes the int8 ncnn, TFLite and Q/DQ ONNX (the ``tensorrt``
   target, run here in onnxruntime) artifacts from the learned scales.
3. Every artifact is loaded in its real runtime (onnxruntime, ncnn's ``Net``, the LiteRT ``Interpreter``)
   at ``--threads`` threads and run on the digits **test split** for its accuracy. Latency is the median
   single-sample inference, timed interleaved: each round times a short burst of every artifact (after
   one untimed warm-up call) in rotating order, so load from other processes on a shared machine hits
   before and after alike.

The default sparsity, 0.5 per channel group, keeps MobileNetV2-0.5's channel counts at multiples of 8
(all but one group): onnxruntime's blocked NCHWc kernels and ncnn's packed layouts need that, and counts
like 29 or 58 (left by 0.4) ran slower than the dense model in both. The table notes how many
convolutions end up with unaligned channel counts.

The same pipeline runs on the reference digits CNN (8x8, cheap) as a second table. Parameters count the
weights and biases of the convolutions, linear layers and BatchNorms (BatchNorm is folded into the
convolutions in every artifact).
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import emit
from exporters.core.latency import interleaved_times  # the timer behind the export reports' latency verdicts

log = logging.getLogger("benchmarks.headline")

PRUNED_FP32 = "onnxruntime, after in fp32"

#: rows in table order: (label, target before, target after, precision after). Before is always the dense
#: model's fp32 export. After, the int8 rows read the Export callback's int8 artifacts and the last row the
#: student's own fp32 ONNX (exported separately: the ``onnx`` target at int8 is onnxruntime's int8 file).
RUNTIMES: tuple[tuple[str, str, str, str], ...] = (
    ("onnxruntime", "onnx", "tensorrt", "int8"),
    ("ncnn", "ncnn", "ncnn", "int8"),
    ("LiteRT", "tflite", "tflite", "int8"),
    (PRUNED_FP32, "onnx", "onnx", "fp32"),  # the student's float ONNX: what pruning + distillation alone give
)
TARGETS = ["onnx", "ncnn", "tflite", "tensorrt"]


@dataclass
class Config:
    """One model's settings for the benchmark."""

    name: str
    model: str
    model_kwargs: dict[str, Any]
    size: int
    epochs: int
    student_epochs: int
    lr: float = 1e-2
    student_lr: float = 5e-3
    batch_size: int = 64
    limit_batches: int | None = None


@dataclass
class Artifact:
    """One exported file (or file pair) ready to run, or the reason it is not."""

    status: str
    path: Path | None = None
    precision: str = ""
    size: int | None = None
    reason: str = ""
    runner: Callable[[np.ndarray], np.ndarray] | None = None  # one NCHW sample with batch axis -> logits
    accuracy: float | None = None
    latency_ms: float | None = None
    times: list[float] = field(default_factory=list)


@dataclass
class Side:
    """Before or after: the trained torch model, its accuracy and its artifacts per runtime."""

    label: str
    params: int
    torch_accuracy: float
    train_seconds: float
    export_seconds: float
    artifacts: dict[str, Artifact]
    notes: list[str] = field(default_factory=list)


# -- training ------------------------------------------------------------------------------------------


def _quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in (
        "lightning",
        "lightning.pytorch",
        "lightning.fabric",
        "pytorch_lightning",
        "lightning_plugins",
        "exporters",
        "absl",
        "tensorflow",
        "onnx_ir",
        "onnxscript",
        "torch",
        "torch_pruning",
        "litert_torch",
        "ai_edge_torch",
        "torchao",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)


def _trainer(epochs: int, callbacks: list[Any], limit_batches: int | None, root: Path) -> Any:
    from lightning_plugins._compat import pl

    return pl.Trainer(
        max_epochs=epochs,
        limit_train_batches=limit_batches,
        limit_val_batches=0,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        default_root_dir=str(root),
    )


def count_params(model: Any) -> int:
    """Weights and biases of the Conv, Linear and BatchNorm layers (no QAT scales, no BN statistics)."""
    from torch import nn

    kinds = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)
    return sum(p.numel() for m in model.modules() if isinstance(m, kinds) for p in m.parameters(recurse=False))


def channel_alignment(model: Any) -> str:
    """How many convolutions have output channel counts that are not a multiple of 8.

    onnxruntime's blocked (NCHWc) convolution kernels and ncnn's packed layouts work on blocks of 8 (or 4)
    channels; odd counts left by channel pruning fall back to slower kernels.
    """
    from torch import nn

    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    odd = [m.out_channels for m in convs if m.out_channels % 8]
    sample = ", ".join(str(c) for c in sorted(set(odd))[:8])
    return f"{len(odd)} of {len(convs)} convolutions have output channels not a multiple of 8" + (
        f" (e.g. {sample})" if odd else ""
    )


def build_model(cfg: Config) -> Any:
    """The reference model of ``cfg`` (seeded)."""
    import torch

    from lightning_plugins.models import torch_model

    torch.manual_seed(0)
    return torch_model(cfg.model, **cfg.model_kwargs)


def train_dense(cfg: Config, data: Any, root: Path) -> tuple[Any, float]:
    """Train the dense fp32 model (also the teacher); returns it in eval mode and the fit time."""
    from lightning_plugins._compat import pl
    from lightning_plugins.reference import DigitsClassifier

    pl.seed_everything(0, verbose=False)
    module = DigitsClassifier(model=build_model(cfg), lr=cfg.lr)
    t0 = time.perf_counter()
    _trainer(cfg.epochs, [], cfg.limit_batches, root / "dense").fit(module, data)
    return module.model.eval(), time.perf_counter() - t0


def train_compressed(
    cfg: Config, dense: Any, data: Any, sparsity: float, root: Path, threads: int
) -> tuple[Any, Any, float]:
    """Fine-tune a copy of ``dense`` with Pruning + QuantizationAware + Distillation + Export(int8) in one fit.

    Returns the student (eval mode), the ``Export`` callback's report and the fit time (export included).
    """
    from lightning_plugins import Distillation, Export, Pruning, QuantizationAware
    from lightning_plugins._compat import pl
    from lightning_plugins.reference import DigitsClassifier

    pl.seed_everything(0, verbose=False)
    student = DigitsClassifier(model=copy.deepcopy(dense).train(), lr=cfg.student_lr)
    teacher = copy.deepcopy(dense).eval()
    export = Export(targets=TARGETS, precision="int8", directory=root / "after", threads=threads)
    callbacks = [
        Pruning(sparsity=sparsity, granularity="channel", scope="layer", schedule="polynomial", start=0.0, end=0.4),
        QuantizationAware(start=0.5, freeze_bn=0.8, freeze_observers=0.9),
        Distillation(teacher, temperature=4.0, alpha=0.7),
        export,
    ]
    t0 = time.perf_counter()
    _trainer(cfg.student_epochs, callbacks, cfg.limit_batches, root / "student").fit(student, data)
    seconds = time.perf_counter() - t0
    if export.report is None:
        raise RuntimeError("Export wrote no report (fit ended before on_fit_end?)")
    return student.model.eval(), export.report, seconds


# -- artifacts and runtimes ----------------------------------------------------------------------------


def choose(reports: Sequence[Any], target: str, precision: str) -> tuple[Any, Any] | None:
    """The first ``(report, row)`` among ``reports`` whose row is ``target`` at ``precision``; None if none is.

    A report holds one precision per target, and the ``onnx`` target's file differs by precision (``model.onnx``
    at fp32, onnxruntime's ``model.int8.onnx`` at int8), so a row is found by both.
    """
    for report in reports:
        for r in report:
            if r.target == target and r.precision == precision:
                return report, r
    return None


def load_artifacts(reports: Sequence[Any], side: str, threads: int) -> dict[str, Artifact]:
    """One :class:`Artifact` per table row, each read from the export whose target and precision the row names.

    Args:
        reports: export reports of this side: before, the dense fp32 one; after, the ``Export`` callback's
            int8 one and the student's fp32 ONNX export.
        side: ``"before"`` (every row fp32; the last row is the dense fp32 ONNX again) or ``"after"``.
        threads: runtime threads.

    Raises:
        ValueError: ``side`` is neither ``"before"`` nor ``"after"``.
    """
    from exporters.core import runtimes

    if side not in ("before", "after"):
        raise ValueError(f"side: expected 'before' or 'after', got {side!r}; pass one of the two.")
    out: dict[str, Artifact] = {}
    for runtime, fp32_target, after_target, after_precision in RUNTIMES:
        if runtime == PRUNED_FP32 and side == "before":  # before, this row is the dense fp32 ONNX: the same runner
            out[runtime] = out["onnxruntime"]
            continue
        target, precision = (fp32_target, "fp32") if side == "before" else (after_target, after_precision)
        found = choose(reports, target, precision)
        if found is None:
            out[runtime] = Artifact("skipped", reason=f"no {target} target at {precision} in the exports")
            continue
        report, r = found
        if not r.ok:
            out[runtime] = Artifact(r.status, reason=r.reason)
            continue
        files = [Path(report.directory) / f for f in r.files]
        art = Artifact("ok", path=files[0], size=sum(f.stat().st_size for f in files), precision=precision)
        try:
            if runtime == "ncnn":
                art.path = next(f for f in files if f.suffix == ".param")
            art.runner = runtimes.runner(report, target, threads)
        except Exception as err:  # a runtime that cannot load its artifact is a failed row, not a crash
            art = Artifact("failed", reason=f"loading in {runtime}: {type(err).__name__}: {err}")
        out[runtime] = art
    return out


def files_read(artifacts: dict[str, Artifact]) -> str:
    """Which file (and precision) each row of one side read, e.g. ``ncnn: model.int8.ncnn.param (int8)``."""
    return "; ".join(
        f"{runtime}: {a.path.name} ({a.precision})" if a.path is not None else f"{runtime}: {a.status}"
        for runtime, a in artifacts.items()
    )


def accuracy(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a single-sample runner on NCHW arrays."""
    pred = np.array([int(np.argmax(run(x[i : i + 1]))) for i in range(len(x))])
    return float((pred == y).mean())


def time_interleaved(
    runners: list[Callable[[np.ndarray], np.ndarray]], x: np.ndarray, rounds: int, burst: int
) -> list[list[float]]:
    """Single-sample latencies (ms) of every runner, timed in ``rounds`` rounds in rotating order.

    In each round every runner gets one untimed warm-up call and then ``burst`` timed calls, so slow
    changes in background load spread over all runners while no other runtime's worker threads are still
    busy during a timed call.
    """
    return interleaved_times([lambda run=run: run(x) for run in runners], rounds, burst)


# -- one model -----------------------------------------------------------------------------------------


def measure(cfg: Config, args: argparse.Namespace, work: Path) -> tuple[Side, Side]:
    """Train, compress, export and measure one model; returns the before and after sides."""
    import torch

    from exporters import export
    from lightning_plugins.reference import DigitsDataModule, evaluate_accuracy

    data = DigitsDataModule(size=cfg.size, batch_size=cfg.batch_size)
    d = data.data
    root = work / cfg.model
    log.info("%s: training the dense fp32 model (%d epochs)", cfg.name, cfg.epochs)
    dense, dense_seconds = train_dense(cfg, data, root)
    dense_acc = evaluate_accuracy(dense, d.x_test, d.y_test)
    log.info("%s: dense test accuracy %.2f%%; exporting fp32", cfg.name, 100 * dense_acc)
    t0 = time.perf_counter()
    before_report = export(
        dense,
        TARGETS[:3],
        example_input=d.x_test[:1],
        precision="fp32",
        directory=root / "before",
        threads=args.threads,
        samples=d.x_test[:64],
    )
    before_export = time.perf_counter() - t0
    log.info("%s: compressing (%d epochs, channel sparsity %.2f)", cfg.name, cfg.student_epochs, args.sparsity)
    student, after_report, student_seconds = train_compressed(cfg, dense, data, args.sparsity, root, args.threads)
    student_acc = evaluate_accuracy(student, d.x_test, d.y_test)
    student_fp32 = export(  # the Export callback's onnx target is int8: the student's fp32 ONNX is its own export
        student,
        ["onnx"],
        example_input=d.x_test[:1],
        precision="fp32",
        directory=root / "after-fp32",
        threads=args.threads,
        samples=d.x_test[:64],
    )

    before = Side(
        "dense fp32",
        count_params(dense),
        dense_acc,
        dense_seconds,
        before_export,
        load_artifacts([before_report], "before", args.threads),
    )
    after = Side(
        "pruned + int8 + distilled",
        count_params(student),
        student_acc,
        student_seconds,
        0.0,
        load_artifacts([after_report, student_fp32], "after", args.threads),
    )
    for side, model in ((before, dense), (after, student)):
        side.notes.append(f"{side.label}: {channel_alignment(model)}")
        side.notes.append(f"{side.label}, files read: {files_read(side.artifacts)}")
    for side, report in ((before, before_report), (after, after_report), (after, student_fp32)):
        for r in report:
            if r.status != "ok":
                side.notes.append(f"{r.target} ({r.precision}) {r.status}: {r.reason[:200]}")
        if any(r.precision == "int8" for r in report):
            scales = {r.scales for r in report if r.scales}
            side.notes.extend(f"int8 scales: {s}" for s in sorted(scales))

    unique: dict[int, Artifact] = {}
    for side in (before, after):
        for art in side.artifacts.values():
            if art.runner is not None:
                unique.setdefault(id(art), art)
    arts = list(unique.values())
    for art in arts:
        if art.runner is not None:
            art.accuracy = accuracy(art.runner, d.x_test, d.y_test)
    torch.set_num_threads(args.threads)
    runners = [a.runner for a in arts if a.runner is not None]
    times = time_interleaved(runners, d.x_test[:1], args.rounds, args.burst)
    for art, t in zip(arts, times, strict=True):
        art.times = t
        art.latency_ms = statistics.median(t)
    return before, after


# -- Markdown ------------------------------------------------------------------------------------------


def _ratio(after: float | None, before: float | None) -> str:
    return f"{after / before:.2f}x" if after is not None and before else "-"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**20:.2f} MB" if n >= 2**20 else f"{n / 1024:.1f} KB"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _pt(after: float | None, before: float | None) -> str:
    return "-" if after is None or before is None else f"{100 * (after - before):+.2f} pt"


def _cell(art: Artifact, value: str) -> str:
    return value if art.status == "ok" else f"{art.status}"


LABELS = {
    "onnxruntime": "onnxruntime (fp32 ONNX -> int8 Q/DQ ONNX)",
    "ncnn": "ncnn (fp32 -> int8)",
    "LiteRT": "LiteRT (fp32 -> int8 .tflite)",
    PRUNED_FP32: "onnxruntime, after without int8 (fp32 ONNX -> pruned + distilled fp32 ONNX)",
}


def table(cfg: Config, before: Side, after: Side, args: argparse.Namespace) -> list[str]:
    """The before -> after table of one model, with notes."""
    lines = [
        f"| {cfg.name} | before: {before.label} | after: {after.label} | after / before |",
        "|---|---|---|---|",
        f"| parameters | {before.params:,} | {after.params:,} | {_ratio(after.params, before.params)} |",
    ]
    pairs = [(runtime, before.artifacts[runtime], after.artifacts[runtime]) for runtime, *_ in RUNTIMES]
    for runtime, b, a in pairs:
        lines.append(
            f"| size, {LABELS[runtime]} | {_cell(b, _size(b.size))} | {_cell(a, _size(a.size))} "
            f"| {_ratio(a.size, b.size)} |"
        )
    lines.append(
        f"| test accuracy, torch (float) | {_pct(before.torch_accuracy)} | {_pct(after.torch_accuracy)} "
        f"| {_pt(after.torch_accuracy, before.torch_accuracy)} |"
    )
    for runtime, b, a in pairs:
        lines.append(
            f"| test accuracy, {LABELS[runtime]} | {_cell(b, _pct(b.accuracy))} | {_cell(a, _pct(a.accuracy))} "
            f"| {_pt(a.accuracy, b.accuracy)} |"
        )
    for runtime, b, a in pairs:
        lat_b = "-" if b.latency_ms is None else f"{b.latency_ms:.3f} ms"
        lat_a = "-" if a.latency_ms is None else f"{a.latency_ms:.3f} ms"
        lines.append(
            f"| latency ({args.threads} thr), {LABELS[runtime]} | {_cell(b, lat_b)} | {_cell(a, lat_a)} "
            f"| {_ratio(a.latency_ms, b.latency_ms)} |"
        )
    lines.append(
        f"| training time | {before.train_seconds:.0f} s ({cfg.epochs} epochs) "
        f"| {after.train_seconds:.0f} s ({cfg.student_epochs} epochs fine-tuning, int8 export included) | |"
    )
    lines.append("")
    problems = []
    for side in (before, after):
        seen: set[int] = set()
        for runtime, art in side.artifacts.items():
            if art.status != "ok" and id(art) not in seen:
                seen.add(id(art))
                problems.append(f"{side.label}, {runtime}: {art.status}: {art.reason[:200]}")
    notes = [
        *problems,
        f"after starts from the trained dense weights, so it has {cfg.student_epochs} more epochs of training "
        "than before; its float accuracy includes that fine-tuning",
        *before.notes,
        *after.notes,
    ]
    if notes:
        lines += [f"- {n}" for n in dict.fromkeys(notes)]
        lines.append("")
    return lines


def configs(quick: bool) -> list[Config]:
    """The models of the benchmark: MobileNetV2 first (the headline), then the digits CNN."""
    if quick:
        return [
            Config(
                "MobileNetV2 alpha 0.35, 32x32",
                "mobilenet_v2",
                {"width_multiplier": 0.35, "num_classes": 10, "in_channels": 1, "input_size": 32, "dropout": 0.0},
                size=32,
                epochs=1,
                student_epochs=1,
                limit_batches=4,
            ),
            Config("digits CNN, 8x8", "digits_cnn", {"width": 1.0}, size=8, epochs=2, student_epochs=2),
        ]
    return [
        Config(
            "MobileNetV2 alpha 0.5, 32x32",
            "mobilenet_v2",
            {"width_multiplier": 0.5, "num_classes": 10, "in_channels": 1, "input_size": 32, "dropout": 0.0},
            size=32,
            epochs=8,
            student_epochs=6,
        ),
        Config("digits CNN, 8x8", "digits_cnn", {"width": 1.0}, size=8, epochs=12, student_epochs=10),
    ]


def run(args: argparse.Namespace) -> str:
    """Run the benchmark and return the Markdown section."""
    import torch

    import lightning_plugins._compat  # noqa: F401  (Lightning sets its loggers' levels on import: quiet after)

    _quiet()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="fitslim-headline-"))
    chosen = configs(args.quick)
    if args.models:
        chosen = [c for c in chosen if c.model in args.models]
    lines = [
        "## Headline: MobileNetV2 before -> after (int8 + channel pruning + distillation)",
        "",
        f"One run, one machine: a dense fp32 model trained with Lightning (also the teacher), then a copy "
        f'fine-tuned in one `fit` with `Pruning(granularity="channel", scope="layer", sparsity={args.sparsity})` + '
        '`QuantizationAware` + `Distillation(teacher)` + `Export(precision="int8")`. Each artifact runs in its '
        "own runtime on the digits test split (269 images); latency = median single-sample inference, "
        f"{args.threads} threads, {args.rounds} interleaved rounds of {args.burst}. onnxruntime runs the fp32 ONNX "
        "before and the symmetric int8 Q/DQ ONNX (the `tensorrt` target) after."
        + (" **Quick mode: too few epochs for meaningful accuracy.**" if args.quick else ""),
        "",
    ]
    if args.speed:  # the headline at real resolutions first; the digits tables below are the accuracy tables
        from benchmarks import speed224

        speed_args = speed224.parser().parse_args(
            ["--threads", str(args.threads)] + (["--quick"] if args.quick else [])
        )
        speed224.main_defaults(speed_args)
        lines = [speed224.run(speed_args), ""] + lines
    for cfg in chosen:
        before, after = measure(cfg, args, work)
        lines += [f"### {cfg.name}", ""]
        lines += table(cfg, before, after, args)
    lines.append(f"Total {time.perf_counter() - t_start:.0f} s; artifacts in `{work}`.")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    """Command line entry point; prints (and optionally writes) the Markdown and returns it."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few batches per epoch, alpha 0.35: a smoke test")
    parser.add_argument("--threads", type=int, default=2, help="runtime and torch threads")
    parser.add_argument("--sparsity", type=float, default=0.5, help="fraction of prunable channels removed")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 20, quick 3)")
    parser.add_argument("--burst", type=int, default=10, help="timed calls per artifact per round")
    parser.add_argument("--models", nargs="+", choices=["mobilenet_v2", "digits_cnn"], default=None)
    parser.add_argument("--output", default=None, help="also write the Markdown here")
    parser.add_argument(
        "--speed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the 224x224 speed tables (benchmarks.speed224) first (default: on in full mode, off in quick mode)",
    )
    args = parser.parse_args(argv)
    if args.speed is None:
        args.speed = not args.quick
    if args.rounds is None:
        args.rounds = 3 if args.quick else 20
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    text = run(args)
    return emit(text, args.output)


if __name__ == "__main__":
    main()
