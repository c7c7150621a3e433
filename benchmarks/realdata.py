"""Compression that pays, on real data: Fashion-MNIST, dense fp32 before, the recipe's int8 artifacts after.

Run: ``python -m benchmarks.realdata [--quick] [--frameworks lightning keras] [--models resnet mobilenet_v2]
[--epochs 5] [--student-epochs 3] [--seeds 3] [--train-subset N] [--test-subset N] [--out DIR] [--output FILE]``.

For each model, as a user would do it:

1. **Dense fp32.** A model a user would pick, built from a library config with random initialization (no
   download): torch, a ResNet-style ``transformers.ResNetConfig`` (basic blocks) and a MobileNetV2-style
   ``transformers.MobileNetV2Config``, each in a plain ``LightningModule`` trained with ``Trainer.fit`` on the
   training images (all 54,000 unless ``--train-subset``). The trained model is saved under ``--out`` and
   reloaded by later runs with the same settings (the seeds below all start from it): "a model trained before,
   saved, reloaded, then fine-tuned with the callbacks". It is exported fp32 to ONNX, ncnn and TFLite (LiteRT)
   with :func:`exporters.export`. Keras (``--frameworks keras``, :mod:`benchmarks.realdata_keras`): a functional
   ResNet-style CNN (the same layers) and ``keras.applications.MobileNetV2`` (BatchNorm momentum lowered to 0.9),
   ``model.fit``, ``model.save``, ``keras.models.load_model``; the same recipe through ``keras_callbacks``.
2. **Compressed.** A copy of the dense model is fine-tuned in one ``Trainer.fit`` with the callbacks of one
   recipe (:data:`RECIPE`): ``Pruning`` (half the channels of every layer, removed physically),
   ``QuantizationAware``, ``Distillation`` from the dense model and ``Export(precision="int8")`` to onnx,
   ncnn, tflite and tensorrt (the TensorRT Q/DQ ONNX; TensorRT itself cannot be installed here, so that file
   runs in onnxruntime, as the project verifies it).
3. **Scored in its own runtime.** Every artifact, dense and compressed, runs in its runtime through
   :mod:`exporters.core.runtimes` on the test split (the full 10,000 images unless ``--test-subset``): onnxruntime,
   ncnn's Python binding, the LiteRT interpreter. Latency: batch 1, ``--threads`` threads, medians of
   interleaved rounds (:func:`benchmarks.headline.time_interleaved`), each int8 artifact against the dense fp32
   artifact of the same runtime.
4. **Distillation gain.** The same compression without the ``distillation`` section, on the same seeds; the
   gain is the int8 ONNX artifact's test accuracy with the teacher minus without, mean ± std over the seeds.

Goals (:data:`GOALS`) are printed beside each measured figure with met / MISSED. Results go to
``--out``/``results.json`` and ``results.md``; ``--output`` also writes the Markdown elsewhere.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import emit
from benchmarks.headline import _quiet
from benchmarks.realdata_common import (
    COLUMNS,
    GOALS,
    INT8_TARGETS,
    RECIPE,
    RUNTIME,
    Goal,
    ModelResult,
    Settings,
    _artifacts,
    _cache_key,
    _time,
    recipe,
    record_dense,
    score,
)
from benchmarks.realdata_keras import keras_model as run_keras

log = logging.getLogger("benchmarks.realdata")

__all__ = ["GOALS", "RECIPE", "Goal", "main", "recipe", "run"]


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**20:.2f} MB" if n >= 2**20 else f"{n / 1024:.1f} KB"


def _status(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "MISSED")


def torch_model(name: str, size: int, quick: bool) -> Any:
    """A torch model from a ``transformers`` config (random init), returning logits from NCHW pixels.

    Args:
        name: ``"resnet"`` (ResNet-style: basic blocks, one per stage, widths 16-32-64-128) or ``"mobilenet_v2"``.
        size: input side in pixels.
        quick: a narrow, shallow variant for smoke runs.

    Raises:
        ValueError: an unknown ``name``.
    """
    import torch
    import transformers
    from torch import nn

    class Logits(nn.Module):
        """``forward(pixels) -> logits`` around a HuggingFace image classifier."""

        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.model(pixel_values=x).logits
            return out

    torch.manual_seed(0)
    hf: nn.Module
    labels: dict[str, Any] = {"num_labels": 10}
    if name == "resnet":
        hidden = [8, 16, 32, 64] if quick else [16, 32, 64, 128]
        cfg = transformers.ResNetConfig(
            num_channels=1, embedding_size=hidden[0], hidden_sizes=hidden, depths=[1, 1, 1, 1],
            layer_type="basic", **labels,
        )  # fmt: skip
        resnet = transformers.ResNetForImageClassification(cfg)
        # The ImageNet stem (7x7 stride 2, then a stride-2 max-pool) leaves 7x7 of a 28x28 image before the
        # first stage; without the pool the stages see 14x14, as CIFAR-sized ResNets do.
        resnet.resnet.embedder.pooler = nn.Identity()  # type: ignore[assignment]
        hf = resnet
    elif name == "mobilenet_v2":
        mcfg = transformers.MobileNetV2Config(
            num_channels=1, image_size=size, depth_multiplier=0.35 if quick else 0.5, classifier_dropout_prob=0.1,
            **labels,
        )  # fmt: skip
        hf = transformers.MobileNetV2ForImageClassification(mcfg)
    else:
        raise ValueError(f"models: unknown torch model {name!r}; choose 'resnet' or 'mobilenet_v2'.")
    for m in hf.modules():  # HF draws conv weights with std 0.02 whatever the fan-in; He init trains faster
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return Logits(hf)


def _lightning_module(model: Any, lr: float) -> Any:
    """A user's plain LightningModule: cross-entropy, AdamW, one-cycle learning rate over the fit."""
    import torch
    import torch.nn.functional as F

    from lightning_plugins._compat import pl

    class Classifier(pl.LightningModule):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.model(x)
            return out

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            return loss

        def configure_optimizers(self) -> Any:
            opt = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=5e-4)
            steps = int(self.trainer.estimated_stepping_batches)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return Classifier()


def _torch_fit(model: Any, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64], epochs: int, lr: float,
               batch_size: int, seed: int, callbacks: list[Any], root: Path) -> tuple[Any, float]:  # fmt: skip
    """``Trainer.fit`` of ``model`` in a plain LightningModule; returns the trained model (eval) and the seconds."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_plugins._compat import pl

    pl.seed_everything(seed, verbose=False)
    data = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    module = _lightning_module(model, lr)
    trainer = pl.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        callbacks=callbacks, default_root_dir=str(root),
    )  # fmt: skip
    t0 = time.perf_counter()
    trainer.fit(module, train_dataloaders=loader)
    return module.model.eval(), time.perf_counter() - t0


def torch_accuracy(model: Any, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> float:
    """Top-1 accuracy of a torch model (eval mode, batches of 500)."""
    import torch

    model.eval()
    with torch.no_grad():
        pred = np.concatenate(
            [model(torch.from_numpy(x[i : i + 500])).argmax(1).numpy() for i in range(0, len(x), 500)]
        )
    return float((pred == y).mean())


def count_params(model: Any) -> int:
    """Weights and biases of the Conv, Linear and BatchNorm layers (no QAT scales, no BN statistics)."""
    from benchmarks.headline import count_params as count

    return int(count(model))


def lightning_model(name: str, s: Settings, data: Any, x_test: Any, y_test: Any) -> ModelResult:
    """Dense (trained or reloaded), compressed over the seeds with and without the teacher, all scored."""
    import torch

    from lightning_plugins import from_recipe

    size = int(data.x_train.shape[-1])
    out = Path(s.out) / "lightning" / name
    out.mkdir(parents=True, exist_ok=True)
    x_train, y_train = data.x_train, data.y_train
    if s.train_subset:
        x_train, y_train = x_train[: s.train_subset], y_train[: s.train_subset]
    res = ModelResult("lightning", name, "")
    dense = torch_model(name, size, s.quick)
    res.description = (
        f"transformers {type(dense.model.config).__name__}: " + (
            f"hidden sizes {dense.model.config.hidden_sizes}, depths {dense.model.config.depths}, basic blocks, "
            "no stem max-pool" if name == "resnet" else f"depth multiplier {dense.model.config.depth_multiplier}"
        ) + f", {size}x{size}x1 input"
    )  # fmt: skip

    # 1. dense: trained once, saved, reloaded by later runs
    cache = Path(s.out) / "dense" / f"lightning-{name}-{_cache_key('lightning', name, s, size)}.pt"
    if cache.is_file():
        saved = torch.load(cache, weights_only=False)
        try:
            dense.load_state_dict(saved["state_dict"])
            res.dense_seconds, res.dense_cached = float(saved["seconds"]), True
            log.info("%s: dense model reloaded from %s", name, cache)
        except RuntimeError as err:  # saved by another version of this script: train again
            log.warning("%s: the cached dense model does not fit (%s); training it again", name, str(err)[:200])
        dense.eval()
    if not res.dense_cached:
        log.info("%s: training the dense fp32 model (%d epochs, %d images)", name, s.epochs, len(x_train))
        dense, res.dense_seconds = _torch_fit(dense, x_train, y_train, s.epochs, s.lr, s.batch_size, 0, [], out)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": dense.state_dict(), "seconds": res.dense_seconds}, cache)
    torch.set_num_threads(s.threads)
    acc = torch_accuracy(dense, x_test, y_test)
    dense_runners = record_dense(res, dense, acc, count_params(dense), x_test, x_test, y_test, out, s)

    # 2. compressed: seed by seed, with and without the teacher; the first seed with the teacher exports all
    # targets (the headline artifacts), the other fits the int8 ONNX the gain is measured on; with --gain-subset
    # the headline is one more fit, on the student images, and the seeds' fits use the first gain_subset images
    seeds = list(range(s.seeds))
    res.seeds = seeds
    n_student = s.student_subset or len(x_train)
    n_gain = s.gain_subset or n_student
    int8_runners: dict[str, Callable[[Any], Any]] = {}
    # (seed, with the teacher, headline fit exporting every target, counts toward the gain, training images)
    fits = [(seed, distil, seed == seeds[0] and distil and not s.gain_subset, True, n_gain)
            for seed in seeds for distil in (True, False)]  # fmt: skip
    if s.gain_subset:
        fits.insert(0, (seeds[0], True, True, False, n_student))
    for seed, distil, full, counts, n_fit in fits:
        x_student, y_student = x_train[:n_fit], y_train[:n_fit]
        folder = out / f"int8-seed{seed}-{'kd' if distil else 'plain'}{'-headline' if full and not counts else ''}"
        callbacks = from_recipe(recipe(INT8_TARGETS if full else ["onnx"], folder, distil),
                                teacher=copy.deepcopy(dense).eval() if distil else None)  # fmt: skip
        log.info("%s: compressing, seed %d, %s, %d images%s", name, seed,
                 "with the teacher" if distil else "no teacher", n_fit, " (headline)" if full else "")  # fmt: skip
        student, seconds = _torch_fit(copy.deepcopy(dense).train(), x_student, y_student, s.student_epochs,
                                      s.student_lr, s.batch_size, seed, callbacks, folder)  # fmt: skip
        torch.set_num_threads(s.threads)
        rep = callbacks[-1].report
        if rep is None:
            raise RuntimeError(f"{name}, seed {seed}: Export wrote no report (the fit ended before on_fit_end?)")
        arts = _artifacts(rep)
        runners = score(arts, rep, x_test, y_test, s.threads)
        onnx_acc = arts["onnx"].accuracy
        float_acc = torch_accuracy(student, x_test, y_test)
        if onnx_acc is None:
            raise RuntimeError(f"{name}, seed {seed}: the int8 ONNX artifact failed: {arts['onnx'].reason}")
        if counts:
            (res.kd if distil else res.plain).append(onnx_acc)
            (res.kd_float if distil else res.plain_float).append(float_acc)
        log.info("%s: seed %d %s: int8 ONNX %.2f%%, float %.2f%%", name, seed, "kd" if distil else "plain",
                 100 * onnx_acc, 100 * float_acc)  # fmt: skip
        if full:
            res.int8, int8_runners = arts, runners
            res.student_params, res.student_accuracy, res.student_seconds = (
                count_params(student),
                float_acc,
                seconds,
            )
            convs = [m for m in student.modules() if isinstance(m, torch.nn.Conv2d)]
            odd = sum(1 for m in convs if m.out_channels % 8)
            res.notes.append(f"{odd} of {len(convs)} convolutions of the compressed model have output channels "
                             "not a multiple of 8")  # fmt: skip
            res.notes += [f"int8 {t}: {a.status}: {a.reason}" for t, a in arts.items() if a.status != "ok"]
            res.notes += [f"dense fp32 {t}: {a.status}: {a.reason}" for t, a in res.dense.items() if a.status != "ok"]

    # 3. latency: every runner, interleaved
    pairs = [(res.dense[t], r) for t, r in dense_runners.items()] + [(res.int8[t], r) for t, r in int8_runners.items()]
    log.info("%s: timing %d artifacts", name, len(pairs))
    _time(pairs, x_test[:1], s)
    return res


# ------------------------------------------------------------------------------------------------ keras


def keras_model(name: str, s: Settings, data: Any, x_test: Any, y_test: Any) -> ModelResult:
    """Keras side: :func:`benchmarks.realdata_keras.keras_model` (it loads the images in NHWC at the model's size).

    Raises:
        ValueError: an unknown ``name``.
        RuntimeError: an ``Export`` that wrote no report, or an int8 ONNX artifact that failed.
    """
    return run_keras(name, s)


# ------------------------------------------------------------------------------------------------ report


def _mean_std(values: Sequence[float], scale: float = 100.0) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.mean(values) * scale, (statistics.stdev(values) * scale if len(values) > 1 else 0.0)


def rows(res: ModelResult) -> list[dict[str, str]]:
    """The table rows of one model: each goal beside its measured figure."""
    label = f"{res.framework} {res.model}"
    out: list[dict[str, str]] = []

    def add(quantity: str, runtime: str, dense: str, int8: str, measured: str, goal: str, ok: bool | None) -> None:
        out.append(
            dict(zip(COLUMNS, (label, quantity, runtime, dense, int8, measured, goal, _status(ok)), strict=True))
        )

    if res.error:
        add("error", "-", "-", "-", res.error[:200], "-", False)
        return out
    for target in INT8_TARGETS:
        runtime, fp32 = RUNTIME[target]
        a, d = res.int8.get(target), res.dense.get(fp32)
        drop = None if a is None or a.accuracy is None else 100 * (res.dense_accuracy - a.accuracy)
        dense_cell = f"{_pct(res.dense_accuracy)} (model); {_pct(d.accuracy if d else None)} ({fp32} file)"
        int8_cell = _pct(a.accuracy) if a and a.accuracy is not None else (a.status if a else "not exported")
        measured = "-" if drop is None else f"{drop:+.2f} pt drop"
        g, floor = GOALS["accuracy drop"], GOALS["accuracy floor"]
        add("test accuracy", runtime, dense_cell, int8_cell, measured, g.text(), g.met(drop))
        add("test accuracy (floor)", runtime, "", "", measured, floor.text(), floor.met(drop))
    ratio = res.student_params / res.dense_params if res.dense_params and res.student_params else None
    add("parameters", "-", f"{res.dense_params:,}", f"{res.student_params:,}", f"{ratio:.3f}x" if ratio else "-",
        GOALS["parameters"].text(), GOALS["parameters"].met(ratio))  # fmt: skip
    for target in INT8_TARGETS:
        runtime, fp32 = RUNTIME[target]
        a, d = res.int8.get(target), res.dense.get(fp32)
        r = a.size / d.size if a and d and a.size and d.size else None
        add("file size", runtime, _size(d.size if d else None), _size(a.size if a else None),
            f"{r:.3f}x" if r else "-", GOALS["size"].text(), GOALS["size"].met(r))  # fmt: skip
    for target in INT8_TARGETS:
        runtime, fp32 = RUNTIME[target]
        a, d = res.int8.get(target), res.dense.get(fp32)
        lb, la = (d.latency_ms if d else None), (a.latency_ms if a else None)
        r = la / lb if la and lb else None
        goal = GOALS.get(f"latency {target}")
        add("latency, batch 1", runtime, "-" if lb is None else f"{lb:.3f} ms", "-" if la is None else f"{la:.3f} ms",
            f"{r:.3f}x" if r else "-", goal.text() if goal else "(no goal)", goal.met(r) if goal else None)  # fmt: skip
    gains = [a - b for a, b in zip(res.kd, res.plain, strict=True)]
    if gains:
        m, sd = _mean_std(gains)
        km, ks = _mean_std(res.kd)
        pm, ps = _mean_std(res.plain)
        add(f"distillation gain ({len(gains)} seeds)", "onnxruntime (int8 ONNX)", f"no teacher {pm:.2f} ± {ps:.2f}%",
            f"teacher {km:.2f} ± {ks:.2f}%", f"{m:+.2f} ± {sd:.2f} pt", GOALS["distillation"].text(),
            GOALS["distillation"].met(m))  # fmt: skip
    return out


def markdown(results: list[ModelResult], s: Settings, meta: dict[str, Any]) -> str:
    """The Markdown report: configuration, one goal table, per-model notes."""
    lines = [
        "## Fashion-MNIST: dense fp32 vs the recipe's int8 artifacts (benchmarks/realdata.py)",
        "",
        f"- Machine: {meta['machine']}; {meta['cores']} cores; {s.threads} threads for training and runtimes",
        f"- Date: {meta['date']}; wall time {meta['wall_s']:.0f} s",
        f"- Configuration: {meta['configuration']}",
        f"- Recipe: `{json.dumps({k: v for k, v in RECIPE.items() if k != 'version'})}`",
        "- Test accuracy on " + (f"the first {s.test_subset} test images" if s.test_subset else
                                 "the full 10,000-image test split") + "; latency: batch 1, "
        f"{s.threads} threads, medians of {s.rounds} interleaved rounds of {s.burst} calls",
        "- TensorRT cannot be installed here: its Q/DQ ONNX runs in onnxruntime (as the project verifies it)",
    ]  # fmt: skip
    if s.quick:
        lines.append("- **Quick mode: tiny models, a few hundred images; the figures mean nothing.**")
    lines += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for res in results:
        for row in rows(res):
            lines.append("| " + " | ".join(row[c] for c in COLUMNS) + " |")
    lines.append("")
    for res in results:
        lines.append(f"**{res.framework} {res.model}**: {res.description}. " + (
            f"Dense: {res.dense_seconds:.0f} s of training ({s.epochs} epochs" +
            (", reloaded from the cache" if res.dense_cached else "") + f"), test accuracy {_pct(res.dense_accuracy)}; "
            f"compressed with the teacher (seed 0): float {_pct(res.student_accuracy)}, {res.student_seconds:.0f} s "
            f"({s.student_epochs} epochs, int8 export included)." if not res.error else "")
        )  # fmt: skip
        if res.seeds and not res.error:
            per_seed = ", ".join(
                f"seed {sd}: {100 * k:.2f} vs {100 * p:.2f} (float {100 * kf:.2f} vs {100 * pf:.2f})"
                for sd, k, p, kf, pf in zip(res.seeds, res.kd, res.plain, res.kd_float, res.plain_float, strict=False)
            )
            lines.append(f"Int8 ONNX test accuracy with vs without the teacher: {per_seed}.")
        lines += [f"- {n}" for n in res.notes]
        lines.append("")
    return "\n".join(lines)


def _machine() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(s: Settings) -> tuple[str, list[ModelResult]]:
    """Run the benchmark; returns the Markdown and the per-model results (also written under ``s.out``)."""
    import torch

    import lightning_plugins._compat  # noqa: F401  (Lightning sets its loggers' levels on import: quiet after)
    from fitslim.data import fashion_mnist

    _quiet()
    torch.set_num_threads(s.threads)
    t0 = time.perf_counter()
    Path(s.out).mkdir(parents=True, exist_ok=True)
    results: list[ModelResult] = []
    for fw in s.frameworks:
        data = fashion_mnist(layout="NCHW")
        x_test, y_test = data.x_test, data.y_test
        if s.test_subset:
            x_test, y_test = x_test[: s.test_subset], y_test[: s.test_subset]
        for name in s.models:
            try:
                fn = lightning_model if fw == "lightning" else keras_model
                results.append(fn(name, s, data, x_test, y_test))
            except Exception as err:  # one model failing is a row saying why, the others still run
                log.exception("%s %s failed", fw, name)
                results.append(ModelResult(fw, name, "", error=f"{type(err).__name__}: {err}"))
    meta = {
        "machine": _machine(),
        "cores": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_s": time.perf_counter() - t0,
        "configuration": (
            f"frameworks {s.frameworks}, models {s.models}, {s.epochs} dense epochs, {s.student_epochs} compression "
            f"epochs, {s.seeds} seed(s) x (teacher, no teacher), batch {s.batch_size}, AdamW one-cycle lr "
            f"{s.lr:g} dense / {s.student_lr:g} compression, "
            + (f"{s.train_subset:,} training images" if s.train_subset else "54,000 training images")
            + (f" (the first {s.student_subset:,} of them for the compression fits)" if s.student_subset else "")
            + (
                f"; the with / without teacher fits over the seeds on the first {s.gain_subset:,} (torch side), the "
                "headline artifacts from one more fit with the teacher"
                if s.gain_subset
                else ""
            )
        ),
    }
    text = markdown(results, s, meta)
    payload = {"settings": asdict(s), "meta": meta, "results": [asdict(r) for r in results],
               "rows": [row for r in results for row in rows(r)]}  # fmt: skip
    (Path(s.out) / "results.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    (Path(s.out) / "results.md").write_text(text + "\n", encoding="utf-8")
    return text, results


def parse(argv: Sequence[str] | None = None) -> Settings:
    """The command line as :class:`Settings` (``--quick`` fills in a smoke run's values)."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny models, a few hundred images, one seed: a smoke run")
    p.add_argument("--frameworks", nargs="+", choices=["lightning", "keras"], default=["lightning"])
    p.add_argument("--models", nargs="+", choices=["resnet", "mobilenet_v2"], default=["resnet"])
    p.add_argument("--epochs", type=int, default=None, help="dense training epochs (default 5, quick 1)")
    p.add_argument("--student-epochs", type=int, default=None, help="compression fine-tuning epochs (default 3)")
    p.add_argument("--seeds", type=int, default=None, help="seeds of the with / without teacher comparison (3)")
    p.add_argument("--train-subset", type=int, default=None, help="first N training images (default all)")
    p.add_argument(
        "--student-subset",
        type=int,
        default=None,
        help="first N training images for the compression fits (default: those of the dense fit)",
    )
    p.add_argument(
        "--gain-subset",
        type=int,
        default=None,
        help="torch side: first N training images for the with / without teacher fits over the seeds; the headline "
        "artifacts then come from one more fit on the --student-subset images (default: the seed-0 teacher fit)",
    )
    p.add_argument("--test-subset", type=int, default=None, help="first N test images (default all 10,000)")
    p.add_argument("--batch-size", type=int, default=None, help="training batch (default 128, quick 32)")
    p.add_argument("--lr", type=float, default=3e-3, help="dense peak learning rate")
    p.add_argument("--student-lr", type=float, default=1e-3, help="compression peak learning rate")
    p.add_argument("--threads", type=int, default=2, help="torch and runtime threads")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds (default 20, quick 2)")
    p.add_argument("--burst", type=int, default=None, help="timed calls per artifact per round (default 20)")
    p.add_argument("--out", default=None, help="output folder (default: fitslim-realdata in the temp folder)")
    p.add_argument("--output", default=None, help="also write the Markdown here")
    a = p.parse_args(argv)
    q = a.quick
    return Settings(
        frameworks=a.frameworks,
        models=a.models,
        epochs=a.epochs if a.epochs is not None else (1 if q else 5),
        student_epochs=a.student_epochs if a.student_epochs is not None else (1 if q else 3),
        seeds=a.seeds if a.seeds is not None else (1 if q else 3),
        train_subset=a.train_subset if a.train_subset is not None else (256 if q else None),
        student_subset=a.student_subset,
        test_subset=a.test_subset if a.test_subset is not None else (200 if q else None),
        batch_size=a.batch_size if a.batch_size is not None else (32 if q else 128),
        lr=a.lr,
        student_lr=a.student_lr,
        threads=a.threads,
        rounds=a.rounds if a.rounds is not None else (2 if q else 20),
        burst=a.burst if a.burst is not None else (3 if q else 20),
        quick=q,
        out=a.out or str(Path(tempfile.gettempdir()) / "fitslim-realdata"),
        output=a.output,
        gain_subset=a.gain_subset,
    )


def main(argv: Sequence[str] | None = None) -> str:
    """Command line entry point: run, print the Markdown (and write it with ``--output``), return it."""
    s = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    text, _ = run(s)
    return emit(text, s.output)


if __name__ == "__main__":
    main()
