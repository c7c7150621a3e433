"""One small fit with fitslim callbacks, recorded per rank, for tests/lightning_plugins/test_distributed.py.

The same function runs the 1-process reference (in the test process), ``ddp_spawn`` (in the test process; Lightning
spawns the two ranks) and ``ddp``, which Lightning starts by launching the command line again for rank 1, so it
runs as a script::

    python -m tests.lightning_plugins._ddp_case <scenario> ddp <out>

Data order: 64 fixed samples, no shuffle. Under ``devices=2`` a ``DistributedSampler(shuffle=False)`` (:class:`Data`)
gives rank ``r`` samples ``r, r+2, r+4, ...`` in batches of 8, so step ``i`` of the two ranks together sees
samples ``16i .. 16i+15``, exactly the batch of 16 the 1-process run takes at step ``i``. The model has no
BatchNorm (DDP would broadcast rank 0's running statistics, which the 1-process run computes on all 16), the loss
is a mean and DDP averages gradients, so both runs take the same SGD steps up to float rounding.

Every rank writes ``<out>/rank<r>.pt`` (atomically) from :class:`Recorder`: masks at train end, the final state,
the QuantSpec, the teacher and adapters, what DDP wraps, whether the export report existed when the rank got
past ``Export.on_fit_end``, and the input ranges of observer probes (:data:`PROBES`) fed this rank's share of
fixed batches.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_plugins import Distillation, Export, Pruning, QuantizationAware
from lightning_plugins._compat import pl
from lightning_plugins._fakequant import OBSERVERS, LayerQuantizer

__all__ = ["BATCH", "PROBES", "SAMPLES", "SCENARIOS", "Data", "Net", "Recorder", "probe_batches", "run"]

SAMPLES = 64
BATCH = 8  # per rank; the 1-process run takes 2 * BATCH
EPOCHS = 2  # 4 optimizer steps per epoch, 8 in all; the checkpoint after epoch 0 sits mid-pruning and mid-QAT
SCENARIOS = ("masks", "channel")
#: (name, observer, percentile): percentiles well below 100, so the union's differs from the max of the ranks'
PROBES = [(o, o, 90.0) for o in OBSERVERS] + [("percentile25", "percentile", 25.0)]


class Net(pl.LightningModule):  # type: ignore[name-defined]
    """Three convs and a linear head, no BatchNorm; plain SGD with momentum (state that must survive resume)."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(8 * width, 10)
        self.example_input_array = torch.zeros(1, 1, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        out: torch.Tensor = self.head(self.pool(x).flatten(1))
        return out

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


def data() -> TensorDataset:
    """The fixed training set (seeded, independent of the global RNG)."""
    gen = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(SAMPLES, 1, 8, 8, generator=gen), torch.randint(0, 10, (SAMPLES,), generator=gen))


class Data(pl.LightningDataModule):  # type: ignore[name-defined]
    """:func:`data` in order: batches of 16 in one process; under DDP ``DistributedSampler(shuffle=False)``.

    Lightning's own sampler for a training loader always shuffles (``use_distributed_sampler``), so the runs
    pass ``use_distributed_sampler=False`` and this module builds the sampler once the process group is up.
    """

    def __init__(self, single: bool) -> None:
        super().__init__()
        self.single = single

    def train_dataloader(self) -> DataLoader:
        if self.single:
            return DataLoader(data(), batch_size=2 * BATCH, shuffle=False)
        sampler = DistributedSampler(data(), shuffle=False)  # rank and world size from the process group
        return DataLoader(data(), batch_size=BATCH, sampler=sampler)


def models() -> tuple[Net, Net]:
    """(student, teacher), the same weights in every process."""
    torch.manual_seed(0)
    student = Net(8)
    torch.manual_seed(1)
    teacher = Net(16)
    return student, teacher


def probe_batches() -> list[torch.Tensor]:
    """Batches of 16, 16, 16 and 3 rows for the observer probes; rank r observes rows r, r+2, ... of each.

    The last one splits unevenly (2 rows and 1 row), so at the 25th percentile (``m = 28`` of 36 values) rank 1 holds
    fewer than the ``m`` largest values the union's percentile is taken from.
    """
    gen = torch.Generator().manual_seed(2)
    return [torch.randn(rows, 12, generator=gen) * (1 + i) for i, rows in enumerate((16, 16, 16, 3))]


def _probe(rank: int, world: int) -> dict[str, float]:
    """Each observer's input range after this rank observed its share of :func:`probe_batches`."""
    out = {}
    for name, observer, percentile in PROBES:
        layer = nn.Linear(12, 4)
        q = LayerQuantizer(layer, observer=observer, momentum=0.5, percentile=percentile)
        q.install()
        q.mode = "calibrate"
        for x in probe_batches():
            layer(x[rank::world])
        out[name] = float(q._buf("fq_input_range"))
        q.remove(drop_buffers=True)
    return out


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _find(trainer: Any, kind: type) -> Any:
    return next((cb for cb in trainer.callbacks if isinstance(cb, kind)), None)


class Recorder(pl.Callback):  # type: ignore[name-defined]
    """Writes what the tests compare to ``<out>/rank<r>.pt``; placed after the fitslim callbacks."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.row: dict[str, Any] = {}

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        pruning = _find(trainer, Pruning)
        masks = pruning.masks if pruning is not None else None
        self.row["masks"] = (
            {} if masks is None else dict(zip([p.key for p in masks.params], masks.numpy(), strict=True))
        )
        wrapped = trainer.strategy.model
        self.row["wrapper"] = type(wrapped).__name__
        wrapped_ids = {id(p) for p in wrapped.parameters()}
        self.row["wrapped_params"] = len(wrapped_ids)
        self.row["student_params"] = len(list(pl_module.parameters()))
        distillation = _find(trainer, Distillation)
        if distillation is not None and distillation.teacher is not None:
            teacher = distillation.teacher
            self.row["teacher_in_wrapper"] = sum(id(p) in wrapped_ids for p in teacher.parameters())
            self.row["teacher_grads"] = sum(p.grad is not None for p in teacher.parameters())
            self.row["teacher"] = _state(teacher)
            self.row["adapters"] = {k: _state(a) for k, a in distillation.adapters.items()}

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        export = _find(trainer, Export)
        if export is not None:  # first: the probe below all-reduces, which would make it wait for rank zero
            directory = Path(export.settings.directory)
            self.row["report_on_disk"] = (directory / "report.json").is_file()
            self.row["report"] = None if export.report is None else [r.status for r in export.report.results]
        pruning = _find(trainer, Pruning)
        qat = _find(trainer, QuantizationAware)
        self.row.update(
            rank=trainer.global_rank,
            world=trainer.world_size,
            step=int(trainer.global_step),
            state=_state(pl_module),
            structure=None if pruning is None else pruning.structure,
            spec=None if qat is None or qat.quant_spec is None else qat.quant_spec.to_dict(),
            probe=_probe(trainer.global_rank, trainer.world_size),
        )
        path = Path(self.out) / f"rank{trainer.global_rank}.pt"
        torch.save(self.row, str(path) + ".tmp")
        os.replace(str(path) + ".tmp", path)


def callbacks(scenario: str, strategy: str, out: Path, teacher: nn.Module) -> list[Any]:
    """The fitslim callbacks of ``scenario`` (the same in every run of it), then the Recorder."""
    if scenario == "masks":
        return [
            Pruning(sparsity=0.5, granularity="unstructured", scope="global", start=0.0, end=0.75),
            QuantizationAware(
                start=0.25,
                freeze_observers=0.875,
                calibration_steps=1,
                observer="percentile",
                percentile=90.0,
                momentum=0.5,
                directory=str(out),
            ),
            Distillation(teacher, temperature=2.0, alpha=0.5, features={"conv2": "conv2"}),
            Export(targets=["onnx"], directory=str(out / "exports"), precision="fp32", calibration_batches=1),
            pl.callbacks.ModelCheckpoint(dirpath=str(out / "ckpt"), filename="{epoch}", save_top_k=-1),
            Recorder(str(out)),
        ]
    if scenario == "channel":
        # a spawn strategy cannot remove channels physically (Lightning copies the weights back into the parent)
        return [
            Pruning(sparsity=0.5, granularity="channel", start=0.0, end=0.5, make_permanent=strategy != "ddp_spawn"),
            QuantizationAware(start=0.25, freeze_observers=0.875, calibration_steps=1, observer="minmax"),
            Recorder(str(out)),
        ]
    raise ValueError(f"scenario: expected one of {SCENARIOS}; got {scenario!r}")


def run(scenario: str, strategy: str, out: Path, ckpt_path: str | None = None, permanent_like: str = "") -> None:
    """Fit ``scenario`` under ``strategy`` (``"single"``: 1 process, batch 16; else 2 processes, batch 8 each).

    Args:
        scenario: one of :data:`SCENARIOS`.
        strategy: ``"single"``, ``"ddp"`` or ``"ddp_spawn"``.
        out: the output folder (rank files, checkpoints, exports).
        ckpt_path: resume from this checkpoint.
        permanent_like: build the callbacks as for this strategy (a 1-process reference of a ddp_spawn run).
    """
    out.mkdir(parents=True, exist_ok=True)
    single = strategy == "single"
    student, teacher = models()
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1 if single else 2,
        strategy="auto" if single else strategy,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=scenario == "masks",
        use_distributed_sampler=False,
        default_root_dir=str(out),
        callbacks=callbacks(scenario, permanent_like or strategy, out, teacher),
    )
    trainer.fit(student, datamodule=Data(single), ckpt_path=ckpt_path)
    if trainer.global_rank == 0 and not single:  # rank 1 may still be writing its file (ddp: a separate process)
        deadline = time.monotonic() + 120
        while not (out / "rank1.pt").is_file() and time.monotonic() < deadline:
            time.sleep(0.2)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
