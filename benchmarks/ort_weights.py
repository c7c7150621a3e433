"""The ``onnx`` int8 artifact with int8 weights against uint8 weights around 128: latency and agreement at 224x224.

onnxruntime multiplies uint8 activations by int8 weights with ``vpmaddubsw`` on x86 CPUs without VNNI, which
saturates a pair's sum at int16; uint8 weights (the same symmetric grid, shifted by 128) go through its
uint8 x uint8 kernels, exact on every CPU. fitslim picks uint8 weights where the exporting CPU is x86 without
VNNI (:func:`exporters.targets.onnx_int8.weight_type`). This benchmark writes both forms of one model, calibrated on
the same inputs, verifies each against the model, and times them with the fp32 ONNX in interleaved rounds,
2 threads, on the machine at hand (its CPU flags are printed with the table).

Models: :func:`benchmarks.speed224.build` (random weights, BatchNorm statistics from image-like inputs) at
224x224, and ``digits_cnn``: the reference digits CNN **trained** (8 epochs of Adam on the bundled digits, seed 0,
8x8), calibrated on 256 training images and compared on the 269 test images, where the saturation shows as lost
top-1 agreement with int8 weights on x86 without VNNI (random-weight models miss fp32's top-1 in either form).

Run:
    .venv/bin/python -m benchmarks.ort_weights [--models mobilenet_v2 resnet50 digits_cnn] [--rounds 7]
        [--calls 20] [--threads 2] [--output f.md]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import emit
from benchmarks.headline import time_interleaved


def _flags() -> str:
    from exporters.targets.onnx_int8 import cpu_flags

    have = cpu_flags().split()
    found = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in have]
    return ", ".join(found) or "none of avx2/avx512/vnni"


def trained_digits_cnn(epochs: int = 8) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """The reference digits CNN trained with a plain torch loop (Adam 1e-2, batch 64, seed 0), in eval mode.

    Returns the model, 256 calibration images (training split), the test images and their labels (NCHW).
    """
    import torch

    from fitslim.data import digits
    from lightning_plugins.models import torch_model

    d = digits(size=8, layout="NCHW")
    torch.manual_seed(0)
    model = torch_model("digits_cnn", width=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.from_numpy(d.x_train), torch.from_numpy(d.y_train)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval(), d.x_train[:256], d.x_test, d.y_test


def measure(name: str, args: argparse.Namespace, workdir: Path) -> list[str]:
    """One model's rows: fp32, int8 weights, uint8 weights."""
    from benchmarks.speed224 import build, images
    from exporters.core.onnx_hub import ort_session, to_onnx
    from exporters.core.quant import calibrate
    from exporters.core.source import Source
    from exporters.core.verify import compare
    from exporters.targets.onnx_int8 import to_ort_int8

    labels: np.ndarray | None = None
    if name == "digits_cnn":
        model, calib, x, labels = trained_digits_cnn()
    else:
        model = build(name, False, 224)
        calib, x = images(args.calibration, 0), images(args.samples, 1)
    shared, _ = to_onnx(Source.from_model(model), workdir / f"{name}.onnx", calib[:1])
    table = calibrate(shared, calib)
    runners = {"fp32": _runner(ort_session(shared, args.threads))}
    ref = runners["fp32"](x)
    rows = []
    for kind in ("int8", "uint8"):
        path = to_ort_int8(shared, table, calib, workdir / f"{name}.{kind}.onnx", weights=kind)
        runners[kind] = _runner(ort_session(path, args.threads))
        rows.append((kind, compare(ref, runners[kind](x))))
    times = dict(zip(runners, time_interleaved(list(runners.values()), x[:1], args.rounds, args.calls), strict=True))
    base = statistics.median(times["fp32"])

    def acc(kind: str) -> str:
        return "-" if labels is None else f"{float((runners[kind](x).argmax(1) == labels).mean()):.1%}"

    label = f"{name} (trained, {len(x)} test images)" if labels is not None else name
    lines = [
        f"| {label} | fp32 | {base:.2f} ms ({min(times['fp32']):.2f}-{max(times['fp32']):.2f}) | 1.00x | - | - "
        f"| {acc('fp32')} |"
    ]
    for kind, agreement in rows:
        med = statistics.median(times[kind])
        lines.append(
            f"| {label} | {kind} weights | {med:.2f} ms ({min(times[kind]):.2f}-{max(times[kind]):.2f}) | "
            f"{med / base:.2f}x | {agreement.top1_agreement:.1%} | {agreement.spread_error:.2f} | {acc(kind)} |"
        )
    return lines


def _runner(sess: Any) -> Callable[[np.ndarray], np.ndarray]:
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark; print and return the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["mobilenet_v2"], choices=["mobilenet_v2", "resnet50", "digits_cnn"]
    )
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (each times every artifact)")
    parser.add_argument("--calls", type=int, default=20, help="timed single-sample calls per artifact per round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration", type=int, default=32, help="calibration inputs")
    parser.add_argument("--samples", type=int, default=16, help="agreement inputs (other than the calibration ones)")
    parser.add_argument("--output", help="also write the Markdown here")
    args = parser.parse_args(argv)
    lines = [
        f"onnxruntime int8 weight storage, 224x224 (digits CNN: 8x8), {args.threads} threads, single-sample latency: "
        "median (min-max) "
        f"of {args.rounds} interleaved rounds of {args.calls} calls (`benchmarks.headline.time_interleaved`); CPU "
        f"flags: {_flags()}. Agreement with the fp32 ONNX (`exporters.core.verify.compare`): top-1 and RMS error over "
        "its input-to-input spread; test accuracy for the trained digits CNN (random weights otherwise).",
        "",
        "| model | artifact | latency | x fp32 | top-1 vs fp32 | RMS err / spread | test accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="fitslim-ort-weights-") as tmp:
        for name in args.models:
            lines += measure(name, args, Path(tmp))
    return emit("\n".join(lines), args.output)


if __name__ == "__main__":
    main()
