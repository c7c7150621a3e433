"""``fitslim demo``: the quickstart on the bundled digits, with Lightning and with Keras.

Trains the reference digits CNN in each framework through the user's ordinary entry point
(``Trainer.fit`` and ``model.fit``) and prints the test accuracy of each.

Example:
    >>> # fitslim demo --quick
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DemoResult", "FRAMEWORKS", "format_results", "run_demo"]

log = logging.getLogger(__name__)

FRAMEWORKS = ("lightning", "keras")


@dataclass(frozen=True)
class DemoResult:
    """One framework's demo outcome."""

    framework: str
    test_accuracy: float
    parameters: int  # trainable parameters (BatchNorm running statistics not counted)
    epochs: int
    seconds: float


def _lightning(epochs: int, seed: int, size: int, out: Path) -> DemoResult:
    import torch

    from lightning_plugins._compat import pl
    from lightning_plugins.reference import DigitsClassifier, DigitsDataModule, evaluate_accuracy

    t0 = time.perf_counter()
    pl.seed_everything(seed, verbose=False)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    module, data = DigitsClassifier(width=1.0), DigitsDataModule(size=size, seed=seed)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        deterministic=True,
        default_root_dir=str(out / "lightning"),
        enable_checkpointing=False,
        logger=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=data)
    acc = evaluate_accuracy(module.model, data.data.x_test, data.data.y_test)
    params = sum(p.numel() for p in module.model.parameters())
    return DemoResult("lightning", acc, params, epochs, time.perf_counter() - t0)


def _keras(epochs: int, seed: int, size: int) -> DemoResult:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    import numpy as np

    from fitslim.data import digits
    from keras_callbacks.reference import build_digits_classifier, evaluate_accuracy

    t0 = time.perf_counter()
    keras.utils.set_random_seed(seed)
    d = digits(size=size, layout="NHWC", seed=0)
    model = build_digits_classifier(width=1.0, size=size)
    model.fit(
        d.x_train,
        d.y_train,
        batch_size=64,
        epochs=epochs,
        validation_data=(d.x_val, d.y_val),
        callbacks=[keras.callbacks.LearningRateScheduler(_Cosine(epochs, 1e-2))],
        verbose=2,
    )
    acc = evaluate_accuracy(model, d.x_test, d.y_test)
    params = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    return DemoResult("keras", acc, params, epochs, time.perf_counter() - t0)


class _Cosine:
    """Per-epoch cosine learning rate, the same curve as torch's CosineAnnealingLR on the Lightning side."""

    def __init__(self, epochs: int, lr: float) -> None:
        self.epochs, self.lr = epochs, lr

    def __call__(self, epoch: int, lr: float = 0.0) -> float:
        import math

        return float(self.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(1, self.epochs))))


def run_demo(
    output: str | os.PathLike[str] = "fitslim-demo",
    quick: bool = False,
    frameworks: tuple[str, ...] = FRAMEWORKS,
    epochs: int | None = None,
    seed: int = 0,
) -> list[DemoResult]:
    """Train the reference digits CNN in each framework and return the test accuracies.

    Args:
        output: folder for logs and (later) artifacts and reports.
        quick: fewer epochs, for a fast look.
        frameworks: any of ``"lightning"``, ``"keras"``.
        epochs: override the number of epochs.
        seed: the seed for weights and shuffling.

    Raises:
        ValueError: an unknown framework or a non-positive epoch count.
    """
    unknown = [f for f in frameworks if f not in FRAMEWORKS]
    if unknown:
        raise ValueError(f"frameworks: unknown {unknown}; choose from {list(FRAMEWORKS)}.")
    n = epochs if epochs is not None else (4 if quick else 12)
    if n < 1:
        raise ValueError(f"epochs must be >= 1; got {n}.")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    size = 8
    results: list[DemoResult] = []
    for fw in frameworks:
        log.info("training the digits CNN with %s for %d epochs", fw, n)
        results.append(_lightning(n, seed, size, out) if fw == "lightning" else _keras(n, seed, size))
    return results


def format_results(results: list[DemoResult]) -> str:
    """A plain-text table of the demo results."""
    lines = [f"{'framework':<10} {'test acc':>9} {'params':>8} {'epochs':>6} {'time':>7}"]
    for r in results:
        acc = f"{r.test_accuracy * 100:8.2f}%"
        lines.append(f"{r.framework:<10} {acc} {r.parameters:>8d} {r.epochs:>6d} {r.seconds:6.1f}s")
    return "\n".join(lines)
