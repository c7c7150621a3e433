"""Helpers shared by the Lightning callback tests: deterministic shuffling across resume, a simulated crash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_plugins._compat import pl
from lightning_plugins.reference import DigitsDataModule

__all__ = ["CaptureLogger", "Crash", "Digits", "EpochShuffle", "cpu_trainer"]


class EpochShuffle(torch.utils.data.Sampler[int]):
    """Shuffles with a seed derived from the epoch, so a resumed run sees the same batches."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Any:
        gen = torch.Generator().manual_seed(self.seed + 1000 * self.epoch)
        return iter(torch.randperm(self.n, generator=gen).tolist())

    def __len__(self) -> int:
        return self.n


class Digits(DigitsDataModule):
    def train_dataloader(self) -> DataLoader:
        d = self.data
        ds = TensorDataset(torch.from_numpy(d.x_train), torch.from_numpy(d.y_train))
        return DataLoader(ds, batch_size=self.batch_size, sampler=EpochShuffle(len(ds)))


class Crash(pl.Callback):  # type: ignore[name-defined]
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def cpu_trainer(root: Path, callbacks: list[Any], epochs: int = 2, batches: int | None = 8, **kw: Any) -> Any:
    """A quiet single-process CPU trainer with no validation, writing under ``root``."""
    kw.setdefault("logger", False)
    kw.setdefault("enable_checkpointing", False)
    return pl.Trainer(
        max_epochs=epochs,
        limit_train_batches=batches,
        limit_val_batches=0,
        accelerator="cpu",
        devices=kw.pop("devices", 1),
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root),
        callbacks=callbacks,
        **kw,
    )


class CaptureLogger(pl.loggers.Logger):  # type: ignore[name-defined]
    """Keeps every metrics row the trainer's loggers receive."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "capture"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.rows.append((step, dict(metrics)))
