"""The ``onnx`` int8 artifact with int8 weights against uint8 weights around 128: latency and agreement at 224x224.

onnxruntime multiplies uint8 activations by int8 weights with ``vpmaddubsw`` on x86 CPUs without VNNI, which
saturates a pair's sum at int16; uint8 weights (the same symmetric grid, shifted by 128) go through its
uint8 x uint8 kernels, exact on every CPU. fitslim picks uint8 weights where the exporting CPU is x86 without
VNNI (:func:`exporters.onnx_int8.weight_type`). This benchmark writes both forms of one model, calibrated on
the same inputs, verifies each against the model, and times them with the fp32 ONNX in interleaved rounds,
2 threads, on the machine at hand (its CPU flags are printed with the table).

Models: :func:`benchmarks.speed224.build` (random weights, BatchNorm statistics from image-like inputs).

Run:
    .venv/bin/python -m benchmarks.ort_weights [--models mobilenet_v2 resnet50] [--rounds 7] [--calls 20]
        [--threads 2] [--output f.md]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import emit


def _flags() -> str:
    from exporters.onnx_int8 import cpu_flags

    have = cpu_flags().split()
    found = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in have]
    return ", ".join(found) or "none of avx2/avx512/vnni"


def measure(name: str, args: argparse.Namespace, workdir: Path) -> list[str]:
    """One model's rows: fp32, int8 weights, uint8 weights."""
    from benchmarks.speed224 import build, images
    from exporters.onnx_export import ort_session, to_onnx
    from exporters.onnx_int8 import to_ort_int8
    from exporters.quant import calibrate
    from exporters.source import Source

    model = build(name, False, 224)
    calib, x = images(args.calibration, 0), images(args.samples, 1)
    shared, _ = to_onnx(Source.from_model(model), workdir / f"{name}.onnx", calib[:1])
    table = calibrate(shared, calib)
    sessions = {"fp32": ort_session(shared, args.threads)}
    ref = sessions["fp32"].run(None, {sessions["fp32"].get_inputs()[0].name: x})[0]
    spread = max(float(np.sqrt(((ref - ref.mean(0)) ** 2).mean())), 1e-12)
    rows = []
    for kind in ("int8", "uint8"):
        path = to_ort_int8(shared, table, calib, workdir / f"{name}.{kind}.onnx", weights=kind)
        sessions[kind] = ort_session(path, args.threads)
        out = sessions[kind].run(None, {sessions[kind].get_inputs()[0].name: x})[0]
        rows.append(
            (kind, float((out.argmax(1) == ref.argmax(1)).mean()), float(np.sqrt(((out - ref) ** 2).mean())) / spread)
        )
    times: dict[str, list[float]] = {k: [] for k in sessions}
    one = x[:1]
    for _ in range(args.rounds):
        for key, sess in sessions.items():
            feed = {sess.get_inputs()[0].name: one}
            for _ in range(3):
                sess.run(None, feed)
            calls = []
            for _ in range(args.calls):
                t0 = time.perf_counter()
                sess.run(None, feed)
                calls.append(time.perf_counter() - t0)
            times[key].append(statistics.median(calls) * 1e3)
    base = statistics.median(times["fp32"])
    lines = [f"| {name} | fp32 | {base:.2f} ms ({min(times['fp32']):.2f}-{max(times['fp32']):.2f}) | 1.00x | - | - |"]
    for kind, agree, err in rows:
        med = statistics.median(times[kind])
        lines.append(
            f"| {name} | {kind} weights | {med:.2f} ms ({min(times[kind]):.2f}-{max(times[kind]):.2f}) | "
            f"{med / base:.2f}x | {agree:.0%} | {err:.2f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark; print and return the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mobilenet_v2"], choices=["mobilenet_v2", "resnet50"])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (each times every artifact)")
    parser.add_argument("--calls", type=int, default=20, help="single-sample calls per artifact per round (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration", type=int, default=32, help="calibration inputs")
    parser.add_argument("--samples", type=int, default=16, help="agreement inputs (other than the calibration ones)")
    parser.add_argument("--output", help="also write the Markdown here")
    args = parser.parse_args(argv)
    lines = [
        f"onnxruntime int8 weight storage, 224x224, {args.threads} threads, medians of {args.rounds} interleaved "
        f"rounds of {args.calls} calls (min-max of the round medians); CPU flags: {_flags()}. Agreement: top-1 "
        "and RMS error over the fp32 ONNX's input-to-input spread, random weights.",
        "",
        "| model | artifact | latency | x fp32 | top-1 vs fp32 | RMS err / spread |",
        "|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="fitslim-ort-weights-") as tmp:
        for name in args.models:
            lines += measure(name, args, Path(tmp))
    return emit("\n".join(lines), args.output)


if __name__ == "__main__":
    main()
