"""Pruning benchmark: fitslim ``Pruning`` against plain training and Lightning's ``ModelPruning``.

Run: ``python benchmarks/pruning.py [--quick] [--output results.md] [--threads 1]``.

1. Step-time overhead, side by side in one run, same model and data: plain training, fitslim ``Pruning``
   (unstructured, global, 50%) and Lightning ``ModelPruning`` (global L1 unstructured, 50%). Both prune to
   50% by the end of epoch 0; steps of the later epochs are timed (``on_train_batch_start`` to
   ``on_train_batch_end``: forward, backward, optimizer step and any pruning hook). The variants run in
   interleaved rounds (rotating order) and each figure is the median over all timed steps, as process CPU
   time (robust on a shared machine: time spent waiting for other processes is not counted) and wall time.
   Peak memory is measured per variant in a fresh process: the peak resident set size during ``fit``
   above the size just before it (``VmHWM`` reset through ``/proc/self/clear_refs``), so allocator
   caching across variants cannot hide anything. Training runs on ``--threads`` torch threads (default 1:
   this machine is shared, and two contended threads made step times swing several-fold).
2. Digits CNN test accuracy with equal epochs: dense vs 50% unstructured (global and per layer) vs 50%
   channels (defaults: first conv and head kept, so the transition group is halved; and with the stem group
   included), mean over seeds.
3. Resume: a run interrupted at epoch 2 and resumed with ``fit(ckpt_path=...)`` against the uninterrupted
   run, for fitslim ``Pruning`` and ``ModelPruning`` (final sparsity, identical weights).
4. MobileNetV2 (alpha 1.0, 1000 classes) at 160x160, 50% of the prunable channels removed by ``Pruning``
   during a short fit: parameter ratio and ncnn fp32 latency ratio (2 threads, via ``exporters.export``;
   the dense and pruned ncnn models are then re-timed alternately in rounds, wall time at 2 threads and
   process CPU time at 1 thread, to steady the ratio on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn

from benchmarks import emit
from lightning_plugins._compat import pl
from lightning_plugins.pruning import Pruning
from lightning_plugins.reference import DigitsClassifier, DigitsDataModule, evaluate_accuracy

VARIANTS = ("plain", "fitslim Pruning", "Lightning ModelPruning")
log = logging.getLogger("benchmarks.pruning")


# -- shared helpers ------------------------------------------------------------------------------------


def _quiet() -> None:
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_plugins"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _trainer(callbacks: list[Any], epochs: int, batches: int | None, **kw: Any) -> Any:
    kw.setdefault("enable_checkpointing", False)
    return pl.Trainer(
        max_epochs=epochs,
        limit_train_batches=batches,
        limit_val_batches=0,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        default_root_dir=tempfile.mkdtemp(prefix="fitslim-prune-"),
        **kw,
    )


def _weights(module: nn.Module) -> list[torch.Tensor]:
    out = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            # ModelPruning keeps the dense weight in weight_orig and the product in .weight
            out.append(m.weight.detach())
    return out


def _weight_sparsity(module: nn.Module) -> float:
    ws = _weights(module)
    return sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- 1. overhead and memory ----------------------------------------------------------------------------

OVERHEAD_MODELS = {
    # name: (module factory, data size, batch size)
    "digits CNN (w1.0, 8x8)": (lambda: DigitsClassifier(width=1.0), 8, 64),
    "MobileNetV2 (a0.5, 32x32)": (
        lambda: DigitsClassifier(
            model=_torch_model("mobilenet_v2", width_multiplier=0.5, num_classes=10, in_channels=1, input_size=32)
        ),
        32,
        64,
    ),
}


def _torch_model(name: str, **kw: Any) -> nn.Module:
    from lightning_plugins.models import torch_model

    return torch_model(name, **kw)


class StepTimer(pl.Callback):  # type: ignore[name-defined]
    """Wall and process CPU time of each training batch, from its start hook to its end hook (after the step).

    CPU time is the robust figure on a shared machine: with one torch thread it counts only this process's
    work, not the time it waited while other processes ran.
    """

    def __init__(self) -> None:
        self.times: list[tuple[int, float, float]] = []
        self._t0 = self._c0 = 0.0

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        wall, cpu = time.perf_counter() - self._t0, time.process_time() - self._c0
        self.times.append((trainer.current_epoch, wall, cpu))


def _pruning_callbacks(variant: str, module: nn.Module, steps_per_epoch: int) -> list[Any]:
    if variant == "plain":
        return []
    if variant == "fitslim Pruning":
        # reaches 50% at the first step of epoch 1, as ModelPruning (which prunes at the end of epoch 0)
        return [
            Pruning(
                sparsity=0.5,
                granularity="unstructured",
                scope="global",
                start_step=0,
                end_step=steps_per_epoch,
                frequency=max(1, steps_per_epoch // 5),
            )
        ]
    targets = [(m, "weight") for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    return [
        pl.callbacks.ModelPruning(
            "l1_unstructured",
            parameters_to_prune=targets,
            amount=lambda epoch: 0.5 if epoch == 0 else 0.0,
            use_global_unstructured=True,
            use_lottery_ticket_hypothesis=False,
            make_pruning_permanent=True,
            verbose=0,
        )
    ]


def _timed_fit(model: str, variant: str, epochs: int, batches: int) -> tuple[list[tuple[float, float]], float]:
    factory, size, batch = OVERHEAD_MODELS[model]
    pl.seed_everything(0, verbose=False)
    module = factory()
    timer = StepTimer()
    callbacks = [timer, *_pruning_callbacks(variant, module, batches)]
    _trainer(callbacks, epochs, batches).fit(module, DigitsDataModule(size=size, batch_size=batch))
    return [(wall, cpu) for epoch, wall, cpu in timer.times if epoch >= 1], _weight_sparsity(module)


def _status_kb(key: str) -> int:
    match = re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    return int(match.group(1)) if match else 0


def _memory_worker(model: str, variant: str, epochs: int, batches: int, threads: int) -> None:
    """Runs in a fresh process: peak RSS during fit above the RSS just before it, in MiB, as JSON."""
    torch.set_num_threads(threads)
    _quiet()
    factory, size, batch = OVERHEAD_MODELS[model]
    pl.seed_everything(0, verbose=False)
    module = factory()
    data = DigitsDataModule(size=size, batch_size=batch)
    callbacks = _pruning_callbacks(variant, module, batches)
    trainer = _trainer(callbacks, epochs, batches)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        pass
    before = _status_kb("VmRSS")
    trainer.fit(module, data)
    print(json.dumps({"peak_mib": (_status_kb("VmHWM") - before) / 1024, "sparsity": _weight_sparsity(module)}))


def _memory(model: str, variant: str, epochs: int, batches: int, threads: int) -> float | None:
    cmd = [sys.executable, __file__, "--_memory", model, variant, str(epochs), str(batches), str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    for line in reversed(out.stdout.splitlines()):
        if line.startswith("{"):
            return float(json.loads(line)["peak_mib"])
    log.warning("memory run failed for %s / %s: %s", model, variant, out.stderr[-2000:])
    return None


def overhead(quick: bool, threads: int) -> list[str]:
    rounds = 1 if quick else 4
    lines = [
        "### Step time and peak memory (50% global unstructured, timed steps after pruning)",
        "",
        f"torch threads: {threads}; {rounds} interleaved round(s) per variant; median of all timed steps.",
        "",
        "| model | variant | median step, CPU time | vs plain | median step, wall | vs plain | timed steps "
        "| weight sparsity | peak memory during fit | vs plain |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in OVERHEAD_MODELS:
        epochs, batches = (2, 10) if quick else (3, 20)
        if "MobileNet" in model and not quick:
            epochs, batches = 3, 16
        times: dict[str, list[tuple[float, float]]] = {v: [] for v in VARIANTS}
        sparsity: dict[str, float] = {}
        for r in range(rounds):
            order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]
            for variant in order:
                t, s = _timed_fit(model, variant, epochs, batches)
                times[variant] += t
                sparsity[variant] = s
        peak = {v: _memory(model, v, epochs, batches, threads) for v in VARIANTS}
        cpu0 = statistics.median(c for _, c in times["plain"])
        wall0 = statistics.median(w for w, _ in times["plain"])
        for v in VARIANTS:
            cpu = statistics.median(c for _, c in times[v])
            wall = statistics.median(w for w, _ in times[v])
            mem, mem0 = peak[v], peak["plain"]
            memory = f"{mem:.1f} MiB | {mem / mem0:.2f}x" if mem is not None and mem0 else "- | -"
            lines.append(
                f"| {model} | {v} | {cpu * 1e3:.2f} ms | {cpu / cpu0:.3f}x | {wall * 1e3:.2f} ms | {wall / wall0:.3f}x "
                f"| {len(times[v])} | {sparsity[v]:.3f} | {memory} |"
            )
        log.info("overhead done: %s", model)
    return lines


# -- 2. digits accuracy --------------------------------------------------------------------------------

ACCURACY_VARIANTS: dict[str, Callable[[], list[Any]]] = {
    "dense": lambda: [],
    "50% unstructured, global": lambda: [Pruning(sparsity=0.5, granularity="unstructured", scope="global")],
    "50% unstructured, per layer": lambda: [Pruning(sparsity=0.5, granularity="unstructured", scope="layer")],
    "50% channels (defaults: transition group)": lambda: [Pruning(sparsity=0.5, granularity="channel")],
    "50% channels, stem group too": lambda: [
        Pruning(
            sparsity=0.5,
            granularity="channel",
            scope="layer",
            include=["stem.conv", "block.*", "transition.conv"],
        )
    ],
}


def accuracy(quick: bool) -> list[str]:
    from fitslim.data import digits

    d = digits(size=8, layout="NCHW")
    epochs = 8 if quick else 15
    seeds = [0] if quick else [0, 1, 2]
    lines = [
        f"### Digits CNN (width 1.0) test accuracy, {epochs} epochs each, schedule polynomial 0 → 0.7 of the fit",
        "",
        "| variant | test accuracy (mean) | per seed | vs dense | parameters | weight sparsity |",
        "|---|---|---|---|---|---|",
    ]
    dense_acc = None
    for name, make in ACCURACY_VARIANTS.items():
        accs, params, sparsity = [], 0, 0.0
        for seed in seeds:
            pl.seed_everything(seed, verbose=False)
            module = DigitsClassifier(width=1.0)
            _trainer(make(), epochs, None).fit(module, DigitsDataModule(size=8, batch_size=64, seed=seed))
            accs.append(evaluate_accuracy(module, d.x_test, d.y_test))
            params, sparsity = _params(module), _weight_sparsity(module)
        mean = float(np.mean(accs))
        dense_acc = mean if dense_acc is None else dense_acc
        lines.append(
            f"| {name} | {mean * 100:.2f}% | {', '.join(f'{a * 100:.1f}' for a in accs)} | "
            f"{(mean - dense_acc) * 100:+.2f} pt | {params:,} | {sparsity:.3f} |"
        )
    return lines


# -- 4. resume after an interruption -------------------------------------------------------------------


class _EpochShuffle(torch.utils.data.Sampler[int]):
    """Shuffling seeded by the epoch (Lightning calls set_epoch), so a resumed run sees the same batches."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Any:
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.epoch)).tolist())

    def __len__(self) -> int:
        return self.n


class _ResumableDigits(DigitsDataModule):
    def train_dataloader(self) -> Any:
        ds = torch.utils.data.TensorDataset(torch.from_numpy(self.data.x_train), torch.from_numpy(self.data.y_train))
        return torch.utils.data.DataLoader(ds, batch_size=self.batch_size, sampler=_EpochShuffle(len(ds)))


class _Crash(pl.Callback):  # type: ignore[name-defined]
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == 2:
            raise KeyError("simulated interruption")


def resume(quick: bool) -> list[str]:
    epochs = 4

    def callbacks(kind: str, module: nn.Module) -> list[Any]:
        if kind == "fitslim Pruning":
            return [Pruning(sparsity=0.75, schedule="polynomial", start=0.0, end=0.5, frequency=5)]
        targets = [(m, "weight") for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        return [
            pl.callbacks.ModelPruning(
                "l1_unstructured",
                parameters_to_prune=targets,
                amount=lambda epoch: 0.5 if epoch < 2 else 0.0,  # 0.5 then 0.75 (compounding), as documented
                use_lottery_ticket_hypothesis=False,
                verbose=0,
            )
        ]

    lines = [
        f"### Resume: {epochs} epochs, interrupted at the start of epoch 2, resumed from the epoch-1 checkpoint",
        "",
        "| callback | final weight sparsity, uninterrupted | after resume | weights identical to uninterrupted |",
        "|---|---|---|---|",
    ]
    for kind in ("fitslim Pruning", "Lightning ModelPruning"):
        pl.seed_everything(0, verbose=False)
        full = DigitsClassifier(width=1.0)
        _trainer(callbacks(kind, full), epochs, 10).fit(full, _ResumableDigits(batch_size=32))
        ckpt_dir = Path(tempfile.mkdtemp(prefix="fitslim-prune-resume-"))

        def saver(directory: Path = ckpt_dir) -> Any:
            return pl.callbacks.ModelCheckpoint(dirpath=directory, save_last=True, save_top_k=-1, every_n_epochs=1)

        pl.seed_everything(0, verbose=False)
        crashed = DigitsClassifier(width=1.0)
        try:
            _trainer([*callbacks(kind, crashed), saver(), _Crash()], epochs, 10, enable_checkpointing=True).fit(
                crashed, _ResumableDigits(batch_size=32)
            )
        except KeyError:
            pass
        pl.seed_everything(1, verbose=False)
        resumed = DigitsClassifier(width=1.0)
        _trainer([*callbacks(kind, resumed), saver()], epochs, 10, enable_checkpointing=True).fit(
            resumed, _ResumableDigits(batch_size=32), ckpt_path=str(ckpt_dir / "last.ckpt")
        )
        a, b = full.state_dict(), resumed.state_dict()
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        lines.append(
            f"| {kind} | {_weight_sparsity(full):.3f} | {_weight_sparsity(resumed):.3f} | {'yes' if same else 'no'} |"
        )
    return lines


# -- 3. MobileNetV2-160, 50% channels ------------------------------------------------------------------


class _RandomImages(pl.LightningDataModule):  # type: ignore[name-defined]
    def __init__(self, size: int, n: int = 8) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 3, size, size, generator=g)
        self.y = torch.randint(0, 1000, (n,), generator=g)

    def train_dataloader(self) -> Any:
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(self.x, self.y), batch_size=4)


def _bn_from_data(model: Any, x: np.ndarray) -> Any:
    """BatchNorm statistics from a data batch (shared helper)."""
    from lightning_plugins.models import batchnorm_from_data

    return batchnorm_from_data(model, x)


def _retime(params: dict[str, Path], x: np.ndarray, rounds: int) -> dict[str, dict[str, float]]:
    """Alternate the models in rounds: median wall time at 2 threads and median CPU time at 1 thread (ms)."""
    from exporters.targets.ncnn import NcnnModel

    out: dict[str, dict[str, float]] = {}
    for threads, clock in ((2, time.perf_counter), (1, time.process_time)):
        models = {k: NcnnModel(p, p.with_suffix(".bin"), "fp32", threads) for k, p in params.items()}
        samples: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(rounds):
            for k, m in models.items():
                for _ in range(3):
                    m(x)
                runs = []
                for _ in range(15):
                    t0 = clock()
                    m(x)
                    runs.append((clock() - t0) * 1e3)
                samples[k].append(statistics.median(runs))
        out[f"{threads}"] = {k: statistics.median(v) for k, v in samples.items()}
    return out


def mobilenet(quick: bool) -> list[str]:
    from exporters import export

    size = 96 if quick else 160
    rng = np.random.default_rng(0)
    calib = rng.random((16, 3, size, size), dtype=np.float32)
    torch.manual_seed(0)
    dense = _torch_model("mobilenet_v2", width_multiplier=1.0, num_classes=1000, input_size=size)
    module = DigitsClassifier(
        model=_torch_model("mobilenet_v2", width_multiplier=1.0, num_classes=1000, input_size=size)
    )
    module.model.load_state_dict(dense.state_dict())
    cb = Pruning(sparsity=0.5, granularity="channel", scope="layer", start_step=0, end_step=2, frequency=1)
    t0 = time.perf_counter()
    _trainer([cb], 2, None).fit(module, _RandomImages(size))
    prune_s = time.perf_counter() - t0
    pruned = module.model
    _bn_from_data(dense, calib)
    _bn_from_data(pruned, calib)
    work = Path(tempfile.mkdtemp(prefix="fitslim-prune-mnv2-"))
    reports = {}
    for name, model in (("dense", dense), ("pruned", pruned)):
        reports[name] = export(model, ["ncnn"], example_input=calib[:1], calibration=[calib[:8]], directory=work / name)
    target = "ncnn"
    if not all(r[target].status == "ok" and r[target].latency_ms for r in reports.values()):
        log.warning("ncnn export failed (%s); measuring with onnxruntime instead", reports["pruned"][target].reason)
        target = "onnx"
        reports = {
            name: export(model, ["onnx"], example_input=calib[:1], calibration=[calib[:8]], directory=work / name)
            for name, model in (("dense", dense), ("pruned", pruned))
        }
    lat = {k: float(r[target].latency_ms or 0.0) for k, r in reports.items()}
    retimed: dict[str, dict[str, float]] = {}
    if target == "ncnn":
        params = {k: work / k / f for k, r in reports.items() for f in r[target].files if f.endswith(".param")}
        retimed = _retime(params, calib[0], 3 if quick else 9)
    p_dense, p_pruned = _params(dense), _params(pruned)
    removed = sum(len(e.get("out", [])) for e in cb.structure.values())
    lines = [
        f"### MobileNetV2 (alpha 1.0, 1000 classes) at {size}x{size}: 50% of prunable channels removed "
        "(per group; first conv group and classifier outputs kept)",
        "",
        f"| model | parameters | vs dense | {target} fp32 latency (exporter, 2 thr, wall) | vs dense "
        "| re-timed alternately (2 thr, wall) | vs dense | CPU time (1 thr) | vs dense | size | agreement |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, count in (("dense", p_dense), ("pruned", p_pruned)):
        r = reports[name][target]
        cells = [f"{count:,}", f"{count / p_dense:.3f}x", f"{lat[name]:.2f} ms", f"{lat[name] / lat['dense']:.3f}x"]
        for key in ("2", "1"):
            t = retimed.get(key, {})
            cells += [f"{t[name]:.2f} ms", f"{t[name] / t['dense']:.3f}x"] if t else ["-", "-"]
        cells += [f"{(r.size_bytes or 0) / 2**20:.2f} MiB", f"max rel err {r.max_rel_error or 0:.1e}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Pruning fit (4 steps incl. trace and removal): {prune_s:.1f} s; {len(cb.structure)} layers cut, "
              f"{removed} kept output channels recorded. Artifacts in {work}"]  # fmt: skip
    return lines


def run(quick: bool, threads: int, parts: set[str]) -> str:
    torch.set_num_threads(threads)
    _quiet()
    sections: list[str] = [f"## fitslim pruning benchmark ({time.strftime('%Y-%m-%d')}, torch {torch.__version__})", ""]
    if "overhead" in parts:
        sections += overhead(quick, threads) + [""]
    if "accuracy" in parts:
        sections += accuracy(quick) + [""]
    if "resume" in parts:
        sections += resume(quick) + [""]
    if "mobilenet" in parts:
        sections += mobilenet(quick) + [""]
    return "\n".join(sections)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_memory":
        model, variant, epochs, batches, threads = sys.argv[2:7]
        _memory_worker(model, variant, int(epochs), int(batches), int(threads))
        return
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds/epochs, MobileNetV2 at 96x96")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training (default 1)")
    parser.add_argument("--parts", default="overhead,accuracy,resume,mobilenet", help="comma-separated parts to run")
    parser.add_argument("--output", default=None, help="also write the Markdown here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    report = run(args.quick, args.threads, set(args.parts.split(",")))
    emit(report, args.output)


if __name__ == "__main__":
    main()
