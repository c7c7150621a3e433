"""Distillation benchmark: a narrow digits student with and without a wide teacher, accuracy and step time.

Run: ``python benchmarks/distillation.py [--seeds 5] [--epochs 4] [--quick] [--output results.md]``.

A wide teacher (reference digits CNN, width 4) is trained once with Lightning. The narrow student (width
0.5) is then trained with the same seeds, data order and epochs plainly and with
``lightning_plugins.Distillation``, and its accuracy measured on the held-out test split:

* with the default settings (``temperature=4, alpha=0.7``, logits only), chosen a priori;
* with the best of a small grid of settings (logits and logits + one feature pair), selected by accuracy
  on the validation split with seeds disjoint from the test seeds, so the test numbers stay unbiased.

Step time is measured side by side in one process, interleaving the configurations round by round: the
time of a training batch (``on_train_batch_start`` to ``on_train_batch_end``, optimizer step included)
for the plain student, the student plus the same teacher inference done by a callback (the floor for any
distillation), and the distilled student. The ratio uses the median CPU time of the training thread
(``time.thread_time`` with one torch thread), which other processes on a shared machine do not inflate;
the wall-clock medians are reported too.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn

from fitslim.data import digits
from lightning_plugins._compat import pl
from lightning_plugins.distillation import Distillation
from lightning_plugins.reference import DigitsClassifier, DigitsDataModule, evaluate_accuracy

log = logging.getLogger("benchmarks.distillation")

FEATURES = {"model.transition": "transition"}  # the last feature map (after BN + ReLU), 16 vs 128 channels


@dataclass(frozen=True)
class Setting:
    """One Distillation configuration of the benchmark."""

    temperature: float
    alpha: float
    features: dict[str, str] = field(default_factory=dict)
    feature_weight: float = 1.0

    def __str__(self) -> str:
        text = f"T={self.temperature:g}, alpha={self.alpha:g}"
        return text + (f", features {self.features} x {self.feature_weight:g}" if self.features else ", logits only")

    def callback(self, teacher: nn.Module) -> Distillation:
        """A fresh callback with these settings."""
        return Distillation(
            teacher,
            temperature=self.temperature,
            alpha=self.alpha,
            features=self.features or None,
            feature_weight=self.feature_weight,
        )


DEFAULT = Setting(4.0, 0.7)
GRID = [
    Setting(1.0, 0.5),
    Setting(2.0, 0.5),
    DEFAULT,
    Setting(1.0, 0.5, FEATURES, 0.1),
    Setting(1.0, 0.5, FEATURES, 1.0),
    Setting(1.0, 0.0, FEATURES, 0.1),
]


def _trainer(epochs: int, callbacks: list[Any]) -> Any:
    return pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        deterministic=True,
        callbacks=callbacks,
    )


def train_teacher(width: float, epochs: int, seed: int) -> tuple[nn.Module, float]:
    """Train the wide teacher once; return it in eval mode with its test accuracy."""
    d = digits()
    pl.seed_everything(seed, verbose=False)
    module = DigitsClassifier(width=width)
    _trainer(epochs, []).fit(module, DigitsDataModule(seed=seed))
    teacher = module.model.eval()
    return teacher, evaluate_accuracy(teacher, d.x_test, d.y_test)


def train_student(seed: int, epochs: int, width: float, callbacks: list[Any], split: str = "test") -> float:
    """Train one student with ``callbacks`` and return its accuracy on ``split`` ("val" or "test")."""
    d = digits()
    pl.seed_everything(seed, verbose=False)
    module = DigitsClassifier(width=width)
    _trainer(epochs, callbacks).fit(module, DigitsDataModule(seed=seed))
    x, y = (d.x_val, d.y_val) if split == "val" else (d.x_test, d.y_test)
    return evaluate_accuracy(module, x, y)


class StepTimer(pl.Callback):  # type: ignore[name-defined]
    """CPU and wall time of every training batch (put it first in the callback list)."""

    def __init__(self, skip: int = 3) -> None:
        self.skip = skip
        self.cpu: list[float] = []
        self.wall: list[float] = []
        self._t0 = (0.0, 0.0)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._t0 = (time.thread_time(), time.perf_counter())

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx >= self.skip:
            self.cpu.append(time.thread_time() - self._t0[0])
            self.wall.append(time.perf_counter() - self._t0[1])


class TeacherInference(pl.Callback):  # type: ignore[name-defined]
    """Runs the teacher on each batch (eval, no_grad), as any distillation must: the baseline's extra work."""

    def __init__(self, teacher: nn.Module) -> None:
        self.teacher = teacher

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        with torch.no_grad():
            self.teacher(batch[0])


def time_steps(
    configs: dict[str, Callable[[], list[Any]]], width: float, rounds: int, epochs: int
) -> dict[str, tuple[list[float], list[float]]]:
    """Per-step (CPU, wall) seconds of each configuration, measured round-robin in this process."""
    times: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in configs}
    for r in range(rounds):
        order = list(configs) if r % 2 == 0 else list(reversed(configs))
        for name in order:
            timer = StepTimer()
            pl.seed_everything(r, verbose=False)
            _trainer(epochs, [timer, *configs[name]()]).fit(DigitsClassifier(width=width), DigitsDataModule(seed=r))
            times[name][0].extend(timer.cpu)
            times[name][1].extend(timer.wall)
    return times


def _pct(values: list[float]) -> str:
    return f"{statistics.mean(values) * 100:.2f} ± {statistics.stdev(values) * 100:.2f}"


def run(args: argparse.Namespace) -> str:
    """Run the benchmark and return the Markdown report."""
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    d = digits()
    teacher, teacher_acc = train_teacher(args.teacher_width, args.teacher_epochs, seed=1000)
    n_teacher = sum(p.numel() for p in teacher.parameters())
    n_student = sum(p.numel() for p in DigitsClassifier(width=args.student_width).model.parameters())
    log.info("teacher: test accuracy %.4f", teacher_acc)

    # 1. selection on the validation split (seeds disjoint from the test seeds)
    select_seeds = [100 + i for i in range(args.select_seeds)]
    plain_val = statistics.mean(train_student(s, args.epochs, args.student_width, [], "val") for s in select_seeds)
    selection = []
    for candidate in GRID:
        val_accs = [
            train_student(s, args.epochs, args.student_width, [candidate.callback(teacher)], "val")
            for s in select_seeds
        ]
        selection.append((statistics.mean(val_accs) - plain_val, candidate))
        log.info("validation: %s: %+.4f vs plain", candidate, selection[-1][0])
    best = max(selection, key=lambda item: item[0])[1]

    # 2. test accuracy over the report seeds: plain, default settings, selected settings
    arms: dict[str, Setting | None] = {"plain": None, "default": DEFAULT, "selected": best}
    accs: dict[str, list[float]] = {name: [] for name in arms}
    for seed in range(args.seeds):
        for name, setting in arms.items():
            cbs = [setting.callback(teacher)] if setting is not None else []
            accs[name].append(train_student(seed, args.epochs, args.student_width, cbs))
        log.info("seed %d: %s", seed, {k: round(v[-1], 4) for k, v in accs.items()})

    # 3. step time, side by side
    configs: dict[str, Callable[[], list[Any]]] = {
        "student": lambda: [],
        "student + teacher inference": lambda: [TeacherInference(teacher)],
        f"Distillation({DEFAULT})": lambda: [DEFAULT.callback(teacher)],
    }
    if best != DEFAULT:
        configs[f"Distillation({best})"] = lambda: [best.callback(teacher)]
    times = time_steps(configs, args.student_width, args.rounds, args.timing_epochs)
    cpu = {name: statistics.median(t[0]) * 1e3 for name, t in times.items()}
    wall = {name: statistics.median(t[1]) * 1e3 for name, t in times.items()}
    base = "student + teacher inference"

    gains = {name: [a - p for a, p in zip(accs[name], accs["plain"], strict=True)] for name in ("default", "selected")}
    lines = [
        f"Digits (8x8; {len(d.x_train)} train / {len(d.x_val)} val / {len(d.x_test)} test), CPU, {args.threads} "
        f"torch thread(s). Teacher: width {args.teacher_width:g}, {n_teacher} params, {args.teacher_epochs} epochs, "
        f"test accuracy {teacher_acc * 100:.2f}%. Student: width {args.student_width:g}, {n_student} params, "
        f"{args.epochs} epochs, Adam 1e-2 + cosine, batch 64, the same seed and data order in every arm.",
        "",
        f"Selection on the validation split (seeds {select_seeds}; plain student {plain_val * 100:.2f}%):",
        "",
        "| setting | val accuracy gain (pt) |",
        "|---|---|",
        *[f"| {s} | {g * 100:+.2f} |" for g, s in selection],
        "",
        f"Test accuracy (%), seeds 0-{args.seeds - 1}; default = {DEFAULT}; selected = {best}:",
        "",
        "| seed | plain student | distilled, default | gain | distilled, selected | gain |",
        "|---|---|---|---|---|---|",
        *[
            f"| {i} | {accs['plain'][i] * 100:.2f} | {accs['default'][i] * 100:.2f} | {gains['default'][i] * 100:+.2f} "
            f"| {accs['selected'][i] * 100:.2f} | {gains['selected'][i] * 100:+.2f} |"
            for i in range(args.seeds)
        ],
        f"| mean ± std | {_pct(accs['plain'])} | {_pct(accs['default'])} | {_pct(gains['default'])} "
        f"| {_pct(accs['selected'])} | {_pct(gains['selected'])} |",
        "",
        f"Seeds improved: default {sum(g > 0 for g in gains['default'])}/{args.seeds}, "
        f"selected {sum(g > 0 for g in gains['selected'])}/{args.seeds} (goal: mean gain >= +1 pt).",
        "",
        "| training step | median CPU ms/step | vs student + teacher inference | median wall ms/step | steps |",
        "|---|---|---|---|---|",
        *[
            f"| {name} | {cpu[name]:.3f} | {cpu[name] / cpu[base]:.3f}x | {wall[name]:.3f} | {len(times[name][0])} |"
            for name in times
        ],
        "",
        "Step-time ratio, distilled / (student + teacher inference), CPU time: "
        + ", ".join(f"{name}: {cpu[name] / cpu[base]:.3f}x" for name in times if name.startswith("Distillation"))
        + " (goal <= 1.1x); wall clock: "
        + ", ".join(f"{wall[name] / wall[base]:.3f}x" for name in times if name.startswith("Distillation"))
        + f". Measured round-robin over {args.rounds} rounds of {args.timing_epochs} epoch(s), first 3 steps of "
        "each fit skipped.",
        "",
        f"Total benchmark wall time {time.perf_counter() - t_start:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="test seeds (>= 2)")
    parser.add_argument("--select-seeds", type=int, default=2, help="validation seeds for the settings grid")
    parser.add_argument("--epochs", type=int, default=4, help="student epochs (every arm)")
    parser.add_argument("--teacher-epochs", type=int, default=15)
    parser.add_argument("--teacher-width", type=float, default=4.0)
    parser.add_argument("--student-width", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=6, help="interleaved timing rounds")
    parser.add_argument("--timing-epochs", type=int, default=1, help="epochs per timing fit")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 2 epochs, a short teacher, 1 timing round")
    parser.add_argument("--output", default=None, help="also write the Markdown report here")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.select_seeds, args.epochs, args.teacher_epochs, args.rounds = 2, 1, 2, 3, 1
    if args.seeds < 2:
        parser.error("--seeds must be >= 2 (the report gives a standard deviation)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("lightning.pytorch", "pytorch_lightning", "lightning.fabric", "lightning_plugins"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    report = run(args)
    print(report)
    if args.output:
        Path(args.output).write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
