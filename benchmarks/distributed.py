"""Distributed benchmark: the step-time cost of each Lightning callback under DDP (2 CPU processes, gloo).

Run: ``python -m benchmarks.distributed [--steps 40] [--rounds 3] [--output results.md]`` (``ddp`` launches the
command line again for rank 1, so run it as a module or a script, not from a notebook).

One launch, one process group, the same model and data for every variant: the reference digits CNN
(``DigitsClassifier(width=1.0)``) on the bundled digits, batch 32 per rank, ``strategy="ddp"``, ``devices=2``,
1 torch thread per process. Variants: plain DDP (no fitslim callback), ``Pruning`` unstructured and channel
(masks updated on the default schedule while timed), ``QuantizationAware`` with the ``ema`` observer (one scalar
all-reduce per quantized layer and step) and the ``percentile`` observer (an exact percentile of the union:
a sum all-reduce and an all-gather of each rank's top values per layer and step), ``Distillation`` (a 4x wider
teacher per rank, logits only). The variants run in ``--rounds`` rounds, the order rotating each round; every
fit takes ``--steps`` optimizer steps and the first ``WARMUP`` of each are not timed. A step is timed on rank 0
from ``on_train_batch_start`` to ``on_train_batch_end`` (forward, backward with DDP's gradient all-reduce,
optimizer step, the callbacks' hooks), as wall time; the table gives the median over all timed steps of all rounds
(a step without a mask update) and the mean (Pruning's mask updates, every ``PRUNE_EVERY`` steps, amortized), each
with its ratio to plain DDP's. ``Export`` has no per-step hook (it runs once at fit end on rank
zero while the other ranks wait), so it is not in the table.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks import emit
from lightning_plugins import Distillation, Pruning, QuantizationAware
from lightning_plugins._compat import pl
from lightning_plugins.reference import DigitsClassifier, DigitsDataModule

WARMUP = 5
BATCH = 32  # per rank
PRUNE_EVERY = 10  # mask updates every 10 steps (the default places ~50 over a fit; a long fit updates more rarely)
log = logging.getLogger("benchmarks.distributed")


class StepTimer(pl.Callback):  # type: ignore[name-defined]
    """Wall time of every training step (``on_train_batch_start`` to ``on_train_batch_end``)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._t0 = 0.0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.times.append(time.perf_counter() - self._t0)


def _teacher() -> torch.nn.Module:
    torch.manual_seed(1)
    return DigitsClassifier(width=4.0).model


VARIANTS: dict[str, Callable[[], list[Any]]] = {
    "plain DDP": lambda: [],
    "Pruning (unstructured)": lambda: [
        Pruning(sparsity=0.5, granularity="unstructured", start=0.0, end=1.0, frequency=PRUNE_EVERY)
    ],
    "Pruning (channel)": lambda: [
        Pruning(sparsity=0.5, granularity="channel", start=0.0, end=1.0, frequency=PRUNE_EVERY)
    ],
    # observers and BatchNorm stay live (unfrozen) for the whole timed fit
    "QuantizationAware (ema)": lambda: [
        QuantizationAware(start=0.0, calibration_steps=1, freeze_observers=1.0, freeze_bn=1.0)
    ],
    "QuantizationAware (percentile)": lambda: [
        QuantizationAware(start=0.0, calibration_steps=1, freeze_observers=1.0, freeze_bn=1.0, observer="percentile")
    ],
    "Distillation (4x teacher)": lambda: [Distillation(_teacher(), temperature=4.0, alpha=0.7)],
}


def fit(variant: str, steps: int, root: Path) -> list[float]:
    """One DDP fit of ``variant``; the timed steps' wall times on this rank."""
    timer = StepTimer()
    torch.manual_seed(0)
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
        callbacks=[*VARIANTS[variant](), timer],
    )
    trainer.fit(DigitsClassifier(width=1.0), DigitsDataModule(batch_size=BATCH))
    return timer.times[WARMUP:]


def table(times: dict[str, list[float]], steps: int, rounds: int, load: tuple[float, float]) -> str:
    """The Markdown section: per variant, the median and mean step time and their ratios to plain DDP."""
    base = statistics.median(times["plain DDP"])
    rows = [
        "## Lightning callbacks under DDP (2 CPU processes, gloo)",
        "",
        f"Wall time of a training step on rank 0 over {rounds} rounds x {steps - WARMUP} timed steps, "
        f"digits CNN, batch {BATCH} per rank, 1 torch thread per process, {os.cpu_count()} CPUs; "
        f"1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end.",
        "",
        "| variant | median step (ms) | vs plain DDP | mean step (ms) | vs plain DDP |",
        "|---|---:|---:|---:|---:|",
    ]
    mean_base = statistics.fmean(times["plain DDP"])
    for name, values in times.items():
        median, mean = statistics.median(values), statistics.fmean(values)
        rows.append(
            f"| {name} | {median * 1e3:.2f} | {median / base:.2f}x | {mean * 1e3:.2f} | {mean / mean_base:.2f}x |"
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> str:
    """Run every variant in rotating rounds; rank 0 prints (and writes) the table, and returns it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per fit")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all variants (order rotates)")
    parser.add_argument("--output", help="also write the Markdown table here")
    parser.add_argument("--quick", action="store_true", help="12 steps, 1 round")
    args = parser.parse_args(argv)
    steps, rounds = (12, 1) if args.quick else (args.steps, args.rounds)
    if steps <= WARMUP:
        parser.error(f"--steps: got {steps}; it must exceed the {WARMUP} untimed warm-up steps")
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    root = Path(os.environ.get("TMPDIR", "/tmp")) / "fitslim-bench-distributed"
    load_start = os.getloadavg()[0]
    names = list(VARIANTS)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name] += fit(name, steps, root)
    text = table(times, steps, rounds, (load_start, os.getloadavg()[0]))
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        emit(text, args.output)
    return text


if __name__ == "__main__":
    main()
