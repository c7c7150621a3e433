"""Distillation benchmark: does ``Distillation`` pay, on Lightning and on Keras?

Run: ``python -m benchmarks.distillation [--frameworks lightning keras] [--seeds 5] [--epochs 30] [--quick]
[--output results.md]``.

Five parts, every accuracy on the digits test split unless said otherwise, every arm with the same seeds,
data order, epochs and optimizer (Adam 1e-2 with per-epoch cosine decay, batch 64):

1. **Diagnostics.** The wide teacher (reference digits CNN, width 4, trained once with Lightning and copied
   into the Keras twin, so both frameworks distil the same function): its accuracy, confidence and
   calibration on the validation split, and the softened distribution's entropy at each temperature; the
   size of the distillation gradient on the student's logits against the task gradient at the first step.
2. **Selection on the validation split** (Lightning; seeds disjoint from the test seeds): a grid of
   temperature / alpha with the student trained to convergence. The defaults are chosen from this table,
   never from the test split.
3. **Student with and without the teacher** (both frameworks): the narrow student (width 0.5) trained to
   convergence (``--epochs``) plainly and with ``Distillation`` at its defaults, ``--seeds`` seeds, mean ± std of
   the test accuracy and of the per-seed gain. A short-budget arm (``--short-epochs``, Lightning) shows what
   the same settings do to a student far from convergence.
4. **Recovering compression losses** (both frameworks): the dense reference CNN (width 1) is trained once;
   copies are fine-tuned with channel pruning (half the channels) + QAT, with and without ``Distillation``
   from that dense model, and exported int8; the artifact (Lightning: int8 ncnn; Keras: int8 TFLite) is scored
   on the test split in its own runtime through :mod:`exporters.core.runtimes`.

5. **Step time** (Lightning): the time of a training batch for the plain student, the student plus the same
   teacher inference done by a bare callback (the floor for any distillation), and the distilled student,
   measured round-robin in one process (median CPU time of the training thread, and wall clock).

Goals: part 3 mean gain >= +1 pt, part 4 mean gain >= +0.5 pt, part 5 <= 1.1x of student + teacher inference;
the report says plainly when one is missed.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import emit

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import torch
import torch.nn.functional as F
from torch import nn

from fitslim.data import digits
from fitslim.distill import DistillationSettings
from lightning_plugins._compat import pl
from lightning_plugins.reference import DigitsClassifier, DigitsDataModule, evaluate_accuracy

log = logging.getLogger("benchmarks.distillation")

DEFAULTS = DistillationSettings()
#: Recovery recipe: the demo's pruning and QAT schedule; distillation is added with the defaults or left out.
RECOVERY_RECIPE: dict[str, Any] = {
    "version": 1,
    "pruning": {"sparsity": 0.5, "granularity": "channel", "schedule": "polynomial", "start": 0.0, "end": 0.5},
    "quantization": {"start": 0.6, "freeze_bn": 0.8, "freeze_observers": 0.9},
    "export": {"precision": "int8"},
}
PARTS = ("select", "students", "recovery", "timing")
RECOVERY_TARGET = {"lightning": "ncnn", "keras": "tflite"}


@dataclass(frozen=True)
class Setting:
    """One (temperature, alpha) pair of the selection grid."""

    temperature: float
    alpha: float

    def __str__(self) -> str:
        return f"T={self.temperature:g}, alpha={self.alpha:g}"


GRID = [
    Setting(1.0, 0.5),
    Setting(2.0, 0.5),
    Setting(4.0, 0.5),
    Setting(4.0, 0.7),
    Setting(4.0, 0.9),
    Setting(8.0, 0.9),
]


def _mean_std(values: Sequence[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values) * 100:.2f} ± {std * 100:.2f}"


def _gain(values: Sequence[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values) * 100:+.2f} ± {std * 100:.2f}"


# ------------------------------------------------------------------------------------------------ Lightning


def _trainer(epochs: int, callbacks: list[Any], root: str | None = None) -> Any:
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
        default_root_dir=root,
        callbacks=callbacks,
    )


def train_torch(width: float, epochs: int, seed: int, callbacks: list[Any], model: nn.Module | None = None,
                lr: float = 1e-2) -> nn.Module:  # fmt: skip
    """Fit the reference digits CNN (or ``model``) with ``callbacks``; return the trained ``nn.Module`` in eval."""
    pl.seed_everything(seed, verbose=False)
    module = DigitsClassifier(width=width, lr=lr, model=model)
    _trainer(epochs, callbacks).fit(module, DigitsDataModule(seed=seed))
    return module.model.eval()


def lightning_student(seed: int, epochs: int, width: float, teacher: nn.Module | None, setting: Setting | None,
                      split: str = "test") -> float:  # fmt: skip
    """A student trained plainly (``teacher=None``) or distilled; its accuracy on ``split``."""
    from lightning_plugins import Distillation

    cbs = []
    if teacher is not None:
        s = setting or Setting(DEFAULTS.temperature, DEFAULTS.alpha)
        cbs.append(Distillation(teacher, temperature=s.temperature, alpha=s.alpha))
    model = train_torch(width, epochs, seed, cbs)
    d = digits()
    x, y = (d.x_val, d.y_val) if split == "val" else (d.x_test, d.y_test)
    return evaluate_accuracy(model, x, y)


@torch.no_grad()
def diagnostics(teacher: nn.Module, student_width: float, temperatures: Sequence[float]) -> list[str]:
    """Teacher calibration on the validation split and the first-step gradient scale of KD vs the task loss."""
    from lightning_plugins.distillation import kd_loss

    d = digits()
    x, y = torch.from_numpy(d.x_val), torch.from_numpy(d.y_val).long()
    logits = teacher(x)
    p = F.softmax(logits, 1)
    conf, pred = p.max(1)
    correct = (pred == y).float()
    edges = torch.linspace(0, 1, 11)
    ece = sum(
        float(((conf > lo) & (conf <= hi)).float().mean() * (conf[(conf > lo) & (conf <= hi)].mean()
              - correct[(conf > lo) & (conf <= hi)].mean()).abs())
        for lo, hi in zip(edges[:-1], edges[1:], strict=True) if bool(((conf > lo) & (conf <= hi)).any())
    )  # fmt: skip
    lines = [
        f"Teacher on the validation split: accuracy {float(correct.mean()) * 100:.2f}%, mean top-1 probability "
        f"{float(conf.mean()):.4f}, expected calibration error (10 bins) {ece:.4f}; it was trained on the training "
        f"split, where its accuracy is {evaluate_accuracy(teacher, d.x_train, d.y_train) * 100:.2f}%.",
        "",
        "| T | teacher entropy of softmax(t/T), nats (max 2.30) | mean top-1 prob | first-step gradient norm on the "
        "student logits, T²·KL / cross-entropy |",
        "|---|---|---|---|",
    ]
    torch.manual_seed(0)
    student = DigitsClassifier(width=student_width).model.train()
    xs, ys = torch.from_numpy(d.x_train[:64]), torch.from_numpy(d.y_train[:64]).long()
    t_logits = teacher(xs)
    for temperature in temperatures:
        q = F.softmax(logits / temperature, 1)
        entropy = float(-(q * q.clamp_min(1e-12).log()).sum(1).mean())
        with torch.enable_grad():
            s_logits = student(xs)
            g_task = torch.autograd.grad(F.cross_entropy(s_logits, ys), s_logits, retain_graph=True)[0]
            g_kd = torch.autograd.grad(kd_loss(s_logits, t_logits, temperature), s_logits)[0]
        ratio = float(g_kd.norm() / g_task.norm())
        lines.append(f"| {temperature:g} | {entropy:.3f} | {float(q.max(1).values.mean()):.3f} | {ratio:.2f} |")
    return lines


def lightning_recovery(dense: nn.Module, seed: int, epochs: int, distil: bool, folder: Path) -> tuple[float, float]:
    """Fine-tune a copy of ``dense`` with pruning + QAT (+ distillation); return (model, int8 artifact) accuracy."""
    from exporters.core.runtimes import accuracy
    from lightning_plugins import from_recipe

    d = digits()
    recipe = copy.deepcopy(RECOVERY_RECIPE)
    recipe["export"].update(targets=[RECOVERY_TARGET["lightning"]], directory=str(folder))
    if distil:
        recipe["distillation"] = {"temperature": DEFAULTS.temperature, "alpha": DEFAULTS.alpha}
    callbacks = from_recipe(recipe, teacher=dense if distil else None)
    model = train_torch(1.0, epochs, seed, callbacks, model=copy.deepcopy(dense).train(), lr=3e-3)
    report = callbacks[-1].report
    if report is None or not report.ok:
        raise RuntimeError(f"lightning recovery export failed: {report}")
    return (
        evaluate_accuracy(model, d.x_test, d.y_test),
        accuracy(report, RECOVERY_TARGET["lightning"], d.x_test, d.y_test),
    )


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
            module = DigitsClassifier(width=width)
            _trainer(epochs, [timer, *configs[name]()]).fit(module, DigitsDataModule(seed=r))
            times[name][0].extend(timer.cpu)
            times[name][1].extend(timer.wall)
    return times


# ------------------------------------------------------------------------------------------------ Keras


class _Cosine:
    """Per-epoch cosine learning rate: the curve of torch's CosineAnnealingLR on the Lightning side."""

    def __init__(self, epochs: int, lr: float) -> None:
        self.epochs, self.lr = epochs, lr

    def __call__(self, epoch: int, lr: float = 0.0) -> float:
        return float(self.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, self.epochs))))


def keras_fit(model: Any, epochs: int, seed: int, callbacks: list[Any], lr: float) -> None:
    """``model.fit`` on the training split with the same batch size and cosine decay as the Lightning arms."""
    import keras

    d = digits(layout="NHWC")
    keras.utils.set_random_seed(seed)
    model.fit(
        d.x_train, d.y_train, batch_size=64, epochs=epochs, verbose=0,
        callbacks=[*callbacks, keras.callbacks.LearningRateScheduler(_Cosine(epochs, lr))],
    )  # fmt: skip


def keras_twin(torch_module: nn.Module, width: float) -> Any:
    """The Keras twin of a trained torch digits CNN (same weights, same function)."""
    from keras_callbacks.models import copy_torch_to_keras
    from keras_callbacks.reference import build_digits_classifier

    model = build_digits_classifier(width=width)
    copy_torch_to_keras(torch_module, model)
    return model


def keras_student(seed: int, epochs: int, width: float, teacher: Any | None) -> float:
    """A Keras student trained plainly or with ``Distillation`` at its defaults; its test accuracy."""
    import keras

    from keras_callbacks import Distillation
    from keras_callbacks.reference import build_digits_classifier
    from keras_callbacks.reference import evaluate_accuracy as keras_accuracy

    keras.utils.set_random_seed(seed)
    student = build_digits_classifier(width=width)
    keras_fit(student, epochs, seed, [Distillation(teacher)] if teacher is not None else [], 1e-2)
    d = digits(layout="NHWC")
    return keras_accuracy(student, d.x_test, d.y_test)


def keras_recovery(dense: Any, seed: int, epochs: int, distil: bool, folder: Path) -> tuple[float, float]:
    """Keras twin of :func:`lightning_recovery`: (model, int8 TFLite artifact) test accuracy."""
    import keras

    from exporters.core.runtimes import accuracy
    from exporters.core.verify import nhwc_to_nchw
    from keras_callbacks import from_recipe
    from keras_callbacks.reference import build_digits_classifier
    from keras_callbacks.reference import evaluate_accuracy as keras_accuracy

    d = digits(layout="NHWC")
    recipe = copy.deepcopy(RECOVERY_RECIPE)
    recipe["export"].update(targets=[RECOVERY_TARGET["keras"]], directory=str(folder))
    if distil:
        recipe["distillation"] = {"temperature": DEFAULTS.temperature, "alpha": DEFAULTS.alpha}
    keras.utils.set_random_seed(seed)
    student = build_digits_classifier(width=1.0, lr=3e-3)
    student.set_weights(dense.get_weights())
    callbacks = from_recipe(recipe, teacher=dense if distil else None)
    keras_fit(student, epochs, seed, callbacks, 3e-3)
    report = callbacks[-1].report
    if report is None or not report.ok:
        raise RuntimeError(f"keras recovery export failed: {report}")
    return (
        keras_accuracy(student, d.x_test, d.y_test),
        accuracy(report, RECOVERY_TARGET["keras"], nhwc_to_nchw(d.x_test), d.y_test),
    )


# ------------------------------------------------------------------------------------------------ report


def _arm_table(name: str, seeds: Sequence[int], plain: Sequence[float], distilled: Sequence[float]) -> list[str]:
    gains = [a - b for a, b in zip(distilled, plain, strict=True)]
    return [
        f"| {name} | seed | plain | distilled | gain (pt) |",
        "|---|---|---|---|---|",
        *[f"| | {s} | {p * 100:.2f} | {q * 100:.2f} | {(q - p) * 100:+.2f} |"
          for s, p, q in zip(seeds, plain, distilled, strict=True)],
        f"| | mean ± std | {_mean_std(plain)} | {_mean_std(distilled)} | {_gain(gains)} |",
    ]  # fmt: skip


def _verdict(what: str, gains: Sequence[float], goal: float) -> str:
    mean = statistics.mean(gains) * 100
    won = sum(g > 0 for g in gains)
    status = "met" if mean >= goal else "MISSED"
    return f"{what}: mean gain {mean:+.2f} pt over {len(gains)} seeds ({won} improved); goal >= +{goal:g} pt: {status}."


def run(args: argparse.Namespace) -> str:
    """Run the benchmark and return the Markdown report."""
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    d = digits()
    seeds = list(range(args.seeds))
    lines = [
        f"Digits (8x8; {len(d.x_train)} train / {len(d.x_val)} val / {len(d.x_test)} test), CPU, {args.threads} torch "
        f"thread(s). Defaults under test: {DEFAULTS.to_dict()}.",
        "",
    ]

    # 1. teacher + diagnostics
    teacher = train_torch(args.teacher_width, args.teacher_epochs, 1000, [])
    lines += [
        f"## 1. Teacher and diagnostics\n\nTeacher: width {args.teacher_width:g}, "
        f"{sum(p.numel() for p in teacher.parameters()):,} params, {args.teacher_epochs} epochs, test accuracy "
        f"{evaluate_accuracy(teacher, d.x_test, d.y_test) * 100:.2f}%. Student: width {args.student_width:g}, "
        f"{sum(p.numel() for p in DigitsClassifier(width=args.student_width).model.parameters()):,} params.",
        "",
        *diagnostics(teacher, args.student_width, (1.0, 2.0, 4.0, 8.0)),
        "",
    ]
    log.info("teacher done (%.0f s)", time.perf_counter() - t_start)

    # 2. selection on the validation split
    if "select" in args.parts and args.select_seeds > 0 and "lightning" in args.frameworks:
        select_seeds = [100 + i for i in range(args.select_seeds)]
        plain_val = [lightning_student(s, args.epochs, args.student_width, None, None, "val") for s in select_seeds]
        lines += [
            f"## 2. Selection on the validation split (Lightning, {args.epochs} epochs, seeds {select_seeds})",
            "",
            f"Plain student: {_mean_std(plain_val)}% validation accuracy.",
            "",
            "| setting | validation gain (pt), mean ± std | per seed |",
            "|---|---|---|",
        ]
        for setting in GRID:
            val = [lightning_student(s, args.epochs, args.student_width, teacher, setting, "val") for s in select_seeds]
            gains = [a - b for a, b in zip(val, plain_val, strict=True)]
            lines.append(f"| {setting} | {_gain(gains)} | {', '.join(f'{g * 100:+.2f}' for g in gains)} |")
            log.info("validation %s: %s", setting, _gain(gains))
        lines.append("")

    # 3. with and without the teacher, at convergence
    verdicts = []
    if "students" in args.parts:
        lines += [f"## 3. Student with and without the teacher ({args.epochs} epochs, defaults), test accuracy (%)", ""]
    if "students" in args.parts and "lightning" in args.frameworks:
        plain = [lightning_student(s, args.epochs, args.student_width, None, None) for s in seeds]
        kd = [lightning_student(s, args.epochs, args.student_width, teacher, None) for s in seeds]
        lines += [*_arm_table("Lightning", seeds, plain, kd), ""]
        verdicts.append(
            _verdict(f"Lightning, {args.epochs} epochs", [a - b for a, b in zip(kd, plain, strict=True)], 1.0)
        )
        log.info("lightning students: %s", verdicts[-1])
        if args.short_epochs:
            plain_s = [lightning_student(s, args.short_epochs, args.student_width, None, None) for s in seeds]
            kd_s = [lightning_student(s, args.short_epochs, args.student_width, teacher, None) for s in seeds]
            lines += [
                f"Short budget, {args.short_epochs} epochs (the student far from convergence; not a goal):",
                "",
                *_arm_table(f"Lightning, {args.short_epochs} epochs", seeds, plain_s, kd_s),
                "",
            ]
    if "students" in args.parts and "keras" in args.frameworks:
        keras_teacher = keras_twin(teacher, args.teacher_width)
        plain = [keras_student(s, args.epochs, args.student_width, None) for s in seeds]
        kd = [keras_student(s, args.epochs, args.student_width, keras_teacher) for s in seeds]
        lines += [
            "Keras: the teacher is the Lightning teacher's weights copied into the Keras twin.",
            "",
            *_arm_table("Keras", seeds, plain, kd),
            "",
        ]
        verdicts.append(_verdict(f"Keras, {args.epochs} epochs", [a - b for a, b in zip(kd, plain, strict=True)], 1.0))
        log.info("keras students: %s", verdicts[-1])

    # 4. recovering compression losses
    if "recovery" in args.parts and args.recovery_epochs > 0:
        dense = train_torch(1.0, args.dense_epochs, 0, [])
        dense_acc = evaluate_accuracy(dense, d.x_test, d.y_test)
        lines += [
            f"## 4. Recovering compression losses: dense width 1 ({dense_acc * 100:.2f}% test, {args.dense_epochs} "
            f"epochs) fine-tuned {args.recovery_epochs} epochs with channel pruning 0.5 + QAT, with and without "
            "Distillation from itself (defaults); int8 artifacts scored in their runtimes",
            "",
        ]
        with tempfile.TemporaryDirectory() as tmp:
            for fw in args.frameworks:
                source = dense if fw == "lightning" else keras_twin(dense, 1.0)
                fn: Callable[..., tuple[float, float]] = lightning_recovery if fw == "lightning" else keras_recovery
                results = {
                    distil: [
                        fn(source, s, args.recovery_epochs, distil, Path(tmp) / f"{fw}-{distil}-{s}") for s in seeds
                    ]
                    for distil in (False, True)
                }
                target = RECOVERY_TARGET[fw]
                model_p, art_p = zip(*results[False], strict=True)
                model_k, art_k = zip(*results[True], strict=True)
                lines += [
                    f"{fw}: int8 {target} artifact, test accuracy (%); the fake-quant model in its framework: "
                    f"(plain {_mean_std(model_p)}, distilled {_mean_std(model_k)}).",
                    "",
                    *_arm_table(f"{fw} int8 {target}", seeds, art_p, art_k),
                    "",
                ]
                verdicts.append(_verdict(f"{fw} recovery (int8 {target})",
                                         [a - b for a, b in zip(art_k, art_p, strict=True)], 0.5))  # fmt: skip
                log.info("%s recovery: %s", fw, verdicts[-1])

    # 5. step time, side by side (Lightning)
    if "timing" in args.parts and "lightning" in args.frameworks:
        from lightning_plugins import Distillation

        configs: dict[str, Callable[[], list[Any]]] = {
            "student": lambda: [],
            "student + teacher inference": lambda: [TeacherInference(teacher)],
            "Distillation (defaults)": lambda: [Distillation(teacher)],
        }
        times = time_steps(configs, args.student_width, args.rounds, 1)
        cpu = {name: statistics.median(t[0]) * 1e3 for name, t in times.items()}
        wall = {name: statistics.median(t[1]) * 1e3 for name, t in times.items()}
        base = "student + teacher inference"
        ratio = cpu["Distillation (defaults)"] / cpu[base]
        lines += [
            "## 5. Step time (Lightning; median over interleaved rounds, first 3 steps of each fit skipped)",
            "",
            "| training step | median CPU ms/step | vs student + teacher inference | median wall ms/step |",
            "|---|---|---|---|",
            *[f"| {n} | {cpu[n]:.3f} | {cpu[n] / cpu[base]:.3f}x | {wall[n]:.3f} |" for n in times],
            "",
        ]
        verdicts.append(
            f"step time, Distillation / (student + teacher inference), CPU: {ratio:.3f}x; goal <= 1.1x: "
            f"{'met' if ratio <= 1.1 else 'MISSED'}."
        )

    lines += ["## Verdict", "", *[f"- {v}" for v in verdicts], "",
              f"Total benchmark wall time {time.perf_counter() - t_start:.0f} s."]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--frameworks", nargs="+", default=["lightning", "keras"], choices=["lightning", "keras"])
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="parts to run (default: all)")
    parser.add_argument("--seeds", type=int, default=5, help="test seeds (>= 2)")
    parser.add_argument("--select-seeds", type=int, default=3, help="validation seeds of the grid (0: no grid)")
    parser.add_argument("--epochs", type=int, default=30, help="student epochs, every arm (to convergence)")
    parser.add_argument("--short-epochs", type=int, default=4, help="the short-budget arm (0: none)")
    parser.add_argument("--teacher-epochs", type=int, default=15)
    parser.add_argument("--teacher-width", type=float, default=4.0)
    parser.add_argument("--student-width", type=float, default=0.5)
    parser.add_argument("--dense-epochs", type=int, default=12, help="dense model of the recovery part")
    parser.add_argument(
        "--recovery-epochs", type=int, default=8, help="fine-tuning epochs of the recovery part (0: none)"
    )
    parser.add_argument("--rounds", type=int, default=6, help="interleaved timing rounds (1 epoch each)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help="a smoke test: 2 seeds, few epochs; figures mean nothing")
    parser.add_argument("--output", default=None, help="also write the Markdown report here")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.select_seeds, args.epochs, args.short_epochs, args.rounds = 2, 1, 2, 0, 1
        args.teacher_epochs, args.dense_epochs, args.recovery_epochs = 2, 2, 2
    if args.seeds < 2:
        parser.error("--seeds must be >= 2 (the report gives a standard deviation)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("lightning.pytorch", "pytorch_lightning", "lightning.fabric", "lightning_plugins", "keras_callbacks",
                 "exporters", "absl", "tensorflow"):  # fmt: skip
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    report = run(args)
    emit(report, args.output)


if __name__ == "__main__":
    main()
