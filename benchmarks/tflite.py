"""TFLite (LiteRT) fp32 / fp16 / int8 on MobileNetV2 from Keras and from torch: file size and latency.

Builds ``torch_model("mobilenet_v2", width_multiplier=1.0, num_classes=1000, input_size=160)`` with random
weights and random BatchNorm statistics (so folding is exercised and activations keep a useful range),
copies the same weights into the Keras twin (TensorFlow backend), exports both with
:func:`exporters.core.export.export` at fp32, fp16 and int8 (int8 calibrated on random uniform inputs), then
times single-sample invokes of all six files in LiteRT (``Interpreter`` with ``num_threads``, XNNPACK
default delegate) in ``--passes`` passes over the files, each a short warm-up then consecutive invokes
of one file, so background load spreads over all files while no other interpreter's worker threads
are busy; the figure is the median of ``--repeats`` invokes per file. Prints one table with the
fp16/fp32 and int8/fp32 ratios side by side, plus each artifact's agreement with its source.

Run:
    .venv/bin/python benchmarks/tflite.py [--threads 2] [--repeats 200] [--passes 10] [--width 1.0] [--size 160]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

log = logging.getLogger("benchmarks.tflite")

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class Row:
    """One artifact's figures."""

    source: str
    precision: str
    status: str
    size: int = 0
    latency_ms: float = 0.0
    rel_error: float | None = None
    top1: float | None = None
    reason: str = ""


def random_bn_stats(model: Any, seed: int = 0) -> Any:
    """Non-trivial BatchNorm statistics (shared with the tests)."""
    from lightning_plugins.models import randomize_batchnorm

    return randomize_batchnorm(model, seed)


def time_tflite(
    paths: list[Path], threads: int, repeats: int, samples: list[np.ndarray], passes: int = 5
) -> list[float]:
    """Median single-sample invoke latency of each .tflite file in LiteRT (ms).

    The files are timed in ``passes`` rounds of consecutive invokes per file (after a short warm-up
    each time), so slow drift in background load spreads over all of them, while no other
    interpreter's XNNPACK worker threads are still spinning during a timed invoke.
    """
    from ai_edge_litert.interpreter import Interpreter

    runners = []
    for path, sample in zip(paths, samples, strict=True):
        it = Interpreter(model_path=str(path), num_threads=threads)
        inp = it.get_input_details()[0]
        if list(inp["shape"]) != list(sample.shape):
            it.resize_tensor_input(inp["index"], list(sample.shape))
        it.allocate_tensors()
        it.set_tensor(it.get_input_details()[0]["index"], sample)
        runners.append(it)
    per_pass = max(1, -(-repeats // passes))
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(passes):
        for i, it in enumerate(runners):
            for _ in range(5):
                it.invoke()
            for _ in range(per_pass):
                t0 = time.perf_counter()
                it.invoke()
                times[i].append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]


def export_all(
    source: str, model: Any, calib: np.ndarray, args: argparse.Namespace, work: Path
) -> list[tuple[Row, Path]]:
    """Export ``model`` at every precision; the rows still lack their latency."""
    from exporters.core.export import export

    rows = []
    for precision in PRECISIONS:
        directory = work / f"{source}-{precision}"
        report = export(
            model,
            ["tflite"],
            example_input=calib[:1],
            calibration=calib if precision == "int8" else None,
            precision=precision,
            directory=directory,
            threads=args.threads,
        )
        r = report["tflite"]
        if not r.ok:
            rows.append((Row(source, precision, r.status, reason=r.reason), directory))
            continue
        path = directory / r.files[0]
        row = Row(source, precision, "ok", size=path.stat().st_size, rel_error=r.max_rel_error, top1=r.top1_agreement)
        rows.append((row, path))
        log.info("%s %s: %s; %s", source, precision, r.scales or "-", "; ".join(r.notes))
    return rows


def table(rows: list[Row]) -> str:
    """The rows as a text table with size and latency ratios against the same source's fp32."""
    head = ["source", "precision", "size", "size/fp32", "latency", "lat/fp32", "max rel err", "top-1 vs src"]
    out = [head]
    for r in rows:
        if r.status != "ok":
            out.append([r.source, r.precision, r.status, r.reason[:60], "", "", "", ""])
            continue
        base = next((b for b in rows if b.source == r.source and b.precision == "fp32" and b.status == "ok"), None)
        out.append(
            [
                r.source,
                r.precision,
                f"{r.size / 2**20:.2f} MB",
                f"{r.size / base.size:.2f}x" if base else "-",
                f"{r.latency_ms:.2f} ms",
                f"{r.latency_ms / base.latency_ms:.2f}x" if base else "-",
                "-" if r.rel_error is None else f"{r.rel_error:.1e}",
                "-" if r.top1 is None else f"{r.top1 * 100:.0f}%",
            ]
        )
    widths = [max(len(row[i]) for row in out) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in out]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark and return (and log) the table.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None).
    """
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--passes", type=int, default=10)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--calibration", type=int, default=32, help="random calibration inputs")
    parser.add_argument("--sources", nargs="+", default=["keras", "torch"], choices=["keras", "torch"])
    args = parser.parse_args(argv)

    import torch

    from keras_callbacks.models import copy_torch_to_keras, keras_model
    from lightning_plugins.models import torch_model

    torch.manual_seed(0)
    tmodel = random_bn_stats(
        torch_model("mobilenet_v2", width_multiplier=args.width, num_classes=1000, in_channels=3, input_size=args.size)
    )
    rng = np.random.default_rng(0)
    nhwc = rng.uniform(0.0, 1.0, size=(args.calibration, args.size, args.size, 3)).astype(np.float32)
    nchw = np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))
    work = Path(tempfile.mkdtemp(prefix="fitslim-tflite-bench-"))
    exported: list[tuple[Row, Path]] = []
    try:
        if "keras" in args.sources:
            kmodel = keras_model(
                "mobilenet_v2", width_multiplier=args.width, num_classes=1000, in_channels=3, input_size=args.size
            )
            copy_torch_to_keras(tmodel, kmodel)  # the same network on both sides
            exported += export_all("keras", kmodel, nhwc, args, work)
        if "torch" in args.sources:
            exported += export_all("torch", tmodel, nchw, args, work)
        timed = [(row, path) for row, path in exported if row.status == "ok"]
        samples = [nhwc[:1] if row.source == "keras" else nchw[:1] for row, _ in timed]
        latencies = time_tflite([p for _, p in timed], args.threads, args.repeats, samples, args.passes)
        for (row, _), latency in zip(timed, latencies, strict=True):
            row.latency_ms = latency
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows = [row for row, _ in exported]
    text = (
        f"MobileNetV2 alpha {args.width} at {args.size}x{args.size}, LiteRT, {args.threads} threads, "
        f"median of {args.repeats} single invokes in {args.passes} passes\n" + table(rows)
    )
    log.info("\n%s", text)
    return text


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("absl", "tensorflow", "tf2onnx", "onnx_ir", "exporters", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    main()
