"""Helpers shared by the Lightning callback tests: deterministic shuffling across resume, a simulated crash."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_plugins._compat import pl
from lightning_plugins.reference import DigitsDataModule

__all__ = ["Crash", "Digits", "EpochShuffle"]


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
