"""A plain Lightning module and data module on the bundled digits: what a user's own code looks like.

The demo, the examples, the tests and the benchmarks train this module; fitslim's callbacks must work
on it without any change to its ``training_step``.

Example:
    >>> from lightning_plugins.reference import DigitsClassifier, DigitsDataModule
    >>> module, data = DigitsClassifier(width=1.0), DigitsDataModule(size=8)
    >>> # Trainer(max_epochs=10, callbacks=[...]).fit(module, data)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fitslim.data import digits
from lightning_plugins._compat import pl
from lightning_plugins.models import torch_model

__all__ = ["DigitsClassifier", "DigitsDataModule", "evaluate_accuracy"]


class DigitsClassifier(pl.LightningModule):  # type: ignore[name-defined]
    """The reference digits CNN as a LightningModule with an ordinary cross-entropy training step.

    Args:
        width: channel width multiplier of the reference CNN (teacher 2-4, student 0.5).
        lr: Adam learning rate.
        model: use this ``nn.Module`` instead of building the reference CNN.
    """

    def __init__(self, width: float = 1.0, lr: float = 1e-2, model: nn.Module | None = None) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        self.model = model if model is not None else torch_model("digits_cnn", width=width)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), prog_bar=True)
        self.log("val_acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("test_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=max(1, int(self.trainer.max_epochs or 1))
        )
        return {"optimizer": opt, "lr_scheduler": sched}


def _loader(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    ds = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen if shuffle else None)


class DigitsDataModule(pl.LightningDataModule):  # type: ignore[name-defined]
    """The bundled digits (NCHW, float32 in [0, 1]) with a deterministic split and shuffling.

    Args:
        size: image side (8 native, or resized).
        batch_size: training batch size.
        seed: seed of the shuffling order.
    """

    def __init__(self, size: int = 8, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.data = digits(size=size, layout="NCHW")
        self.batch_size = batch_size
        self.seed = seed

    def train_dataloader(self) -> DataLoader:
        return _loader(self.data.x_train, self.data.y_train, self.batch_size, True, self.seed)

    def val_dataloader(self) -> DataLoader:
        return _loader(self.data.x_val, self.data.y_val, 256, False, self.seed)

    def test_dataloader(self) -> DataLoader:
        return _loader(self.data.x_test, self.data.y_test, 256, False, self.seed)


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of ``model`` (put in eval mode, restored after) on NCHW arrays."""
    was_training = model.training
    model.eval()
    try:
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    finally:
        model.train(was_training)
    return float((pred == y).mean())
