"""Accuracy of the Lightning callbacks on zoo architectures: dense vs pruned vs QAT at equal epochs.

Run: ``python benchmarks/zoo_lightning.py [--quick] [--output results.md] [--families hf_resnet,user_se]``.

For each torch zoo family (architectures from ``tests/zoo/torch_zoo.py``, random initialization, no download)
a short training on the bundled digits, upsampled to ``--size`` pixels and repeated over the three input
channels, with the same ``Trainer.fit`` and the same number of epochs for every variant:

- dense: no callback;
- unstructured 50%: ``Pruning(sparsity=0.5, start=0.0, end=0.5)`` (one global threshold);
- channel 50%: ``Pruning(sparsity=0.5, granularity="channel", start=0.0, end=0.5)`` (channels removed at
  half the fit, the second half fine-tunes the smaller model);
- QAT: ``QuantizationAware(start=0.5)``, scored as the fake-quant model of its learned spec (what the int8
  artifacts reproduce).

Test accuracy on the digits' held-out test split, mean over ``--seeds`` seeds, and each variant's difference
from dense in points; the channel row also gives the parameter ratio. A variant is "within 2 pt" when its mean
is at most 2 points below dense. At 16x16 input ConvNeXt down-samples too far (it fails) and MobileNetV1
stays at chance; the default is 32x32.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks import emit
from fitslim.data import digits
from lightning_plugins import Pruning, QuantizationAware
from lightning_plugins._compat import pl
from lightning_plugins.quantization import simulate

__all__ = ["VARIANTS", "Result", "run_variant"]

VARIANTS = ("dense", "unstructured 50%", "channel 50%", "qat int8")
DEFAULT_FAMILIES = ("hf_convnext", "hf_vit", "hf_resnet", "hf_regnet")


class Classifier(pl.LightningModule):  # type: ignore[name-defined]
    """A user's module around a zoo model: cross-entropy, AdamW with cosine decay over the fit."""

    def __init__(self, model: nn.Module, lr: float) -> None:
        super().__init__()
        self.model, self.lr = model, lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=1e-4)
        steps = int(self.trainer.estimated_stepping_batches)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=self.lr, total_steps=steps), "interval": "step"}}  # fmt: skip


@dataclass
class Result:
    family: str
    variant: str
    seed: int
    accuracy: float
    params: int
    seconds: float


def _data(size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    d = digits(size=size)

    def rgb(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((x - 0.3) / 0.33).astype(np.float32)).repeat(1, 3, 1, 1)

    return rgb(d.x_train), torch.from_numpy(d.y_train).long(), rgb(d.x_test), torch.from_numpy(d.y_test).long()


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 256]).argmax(-1) for i in range(0, len(x), 256)])
    return float((pred == y).float().mean())


def run_variant(
    family: str, variant: str, *, epochs: int, size: int = 32, seed: int = 0, lr: float = 3e-3, batch_size: int = 32
) -> Result:
    """Train one zoo family as one variant on the upsampled digits and return its test accuracy."""
    from tests.zoo.torch_zoo import CASES

    case = next(c for c in CASES.values() if c.family == family or c.name == family)
    x_train, y_train, x_test, y_test = _data(size)
    pl.seed_everything(seed, workers=True)
    module = Classifier(case.build().train(), lr)
    callbacks: list[Any] = []
    qat: QuantizationAware | None = None
    if variant == "unstructured 50%":
        callbacks.append(Pruning(sparsity=0.5, start=0.0, end=0.5))
    elif variant == "channel 50%":
        callbacks.append(Pruning(sparsity=0.5, granularity="channel", start=0.0, end=0.5, example_input=x_train[:1]))
    elif variant == "qat int8":
        qat = QuantizationAware(start=0.5)
        callbacks.append(qat)
    elif variant != "dense":
        raise ValueError(f"variant: unknown {variant!r}; choose one of {list(VARIANTS)}.")
    loader = DataLoader(
        TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(
            max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, default_root_dir=root, callbacks=callbacks,
        )  # fmt: skip
        t0 = time.perf_counter()
        trainer.fit(module, loader)
        seconds = time.perf_counter() - t0
    if qat is not None:
        if qat.quant_spec is None:
            raise RuntimeError(f"{family}: QuantizationAware left no QuantSpec")
        with simulate(module, qat.quant_spec):
            accuracy = _accuracy(module, x_test, y_test)
    else:
        accuracy = _accuracy(module, x_test, y_test)
    return Result(family, variant, seed, accuracy, sum(p.numel() for p in module.parameters()), seconds)


def _table(results: list[Result], args: argparse.Namespace) -> str:
    lines = [
        "# Callbacks on zoo architectures: accuracy at equal epochs (Lightning)",
        "",
        f"Digits upsampled to {args.size}x{args.size} (3 channels), {args.epochs} epochs, batch 32, AdamW one-cycle "
        f"lr {args.lr}, seeds {args.seeds}; test accuracy (269 images), mean over seeds; Δ in points from dense.",
        "",
        "| family | dense | unstructured 50% (Δ) | channel 50% (Δ) | params after channel 50% | QAT int8 (Δ) "
        "| all within 2 pt | train time dense / channel |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for family in dict.fromkeys(r.family for r in results):
        rows = {v: [r for r in results if r.family == family and r.variant == v] for v in VARIANTS}
        mean = {v: statistics.mean(r.accuracy for r in rs) for v, rs in rows.items() if rs}
        if "dense" not in mean:
            continue
        delta = {v: 100 * (mean[v] - mean["dense"]) for v in mean}
        dense_p, chan_p = rows["dense"][0].params, (rows["channel 50%"] or rows["dense"])[0].params
        ok = all(delta[v] >= -2.0 for v in VARIANTS[1:] if v in delta)
        cell = {v: f"{100 * mean[v]:.1f}% ({delta[v]:+.1f})" if v in mean else "—" for v in VARIANTS}

        t_dense = statistics.mean(r.seconds for r in rows["dense"])
        t_chan = statistics.mean(r.seconds for r in rows["channel 50%"]) if rows["channel 50%"] else float("nan")
        lines.append(
            f"| {family} | {100 * mean['dense']:.1f}% | {cell['unstructured 50%']} | {cell['channel 50%']} | "
            f"{dense_p:,} → {chan_p:,} ({chan_p / dense_p:.2f}x) | {cell['qat int8']} | {'yes' if ok else 'no'} | "
            f"{t_dense:.0f} s / {t_chan:.0f} s |"
        )
    lines += ["", "Per seed:", "", "| family | variant | seed | accuracy | params |", "|---|---|---|---|---|"]
    lines += [f"| {r.family} | {r.variant} | {r.seed} | {100 * r.accuracy:.1f}% | {r.params:,} |" for r in results]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one family, one seed, fewer epochs")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--families", default=",".join(DEFAULT_FAMILIES))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.quick:
        args.families, args.epochs, args.seeds = DEFAULT_FAMILIES[0], 4, 1
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    results = []
    for family in args.families.split(","):
        for seed in range(args.seeds):
            for variant in VARIANTS:
                r = run_variant(family, variant, epochs=args.epochs, size=args.size, seed=seed, lr=args.lr)
                print(f"{family:14s} {variant:17s} seed {seed}: {100 * r.accuracy:5.1f}%  {r.params:>8,d} params  "
                      f"{r.seconds:.0f} s", flush=True)  # fmt: skip
                results.append(r)
    text = _table(results, args)
    return emit(text, args.output)


if __name__ == "__main__":
    main()
