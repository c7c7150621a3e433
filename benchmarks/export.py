"""Export benchmark: every target × precision for MobileNetV2-160 (speed, size) and the digits CNN (accuracy).

Run: ``python benchmarks/export.py [--quick] [--output results.md]``.

MobileNetV2 has random weights with BatchNorm statistics set from a random calibration batch (so outputs
depend on the input); the digits CNN is trained on the bundled digits, so top-1 agreement on the test split
is meaningful. Latency is the median single-sample inference at 2 threads, measured by the exporters
inside each runtime, all in one run so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import emit
from exporters import ExportReport, export
from fitslim.data import digits
from keras_callbacks.models import copy_torch_to_keras, keras_model
from lightning_plugins.models import torch_model

TARGETS = ["onnx", "ncnn", "tflite", "tensorrt"]


def _bn_from_data(model: Any, x: np.ndarray) -> Any:
    """BatchNorm statistics from a data batch (shared helper)."""
    from lightning_plugins.models import batchnorm_from_data

    return batchnorm_from_data(model, x)


def _train_digits_torch(epochs: int) -> Any:
    import torch

    d = digits()
    torch.manual_seed(0)
    model = torch_model("digits_cnn")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.from_numpy(d.x_train), torch.from_numpy(d.y_train)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def _rows(name: str, reports: dict[str, ExportReport], seconds: dict[str, float]) -> list[str]:
    rows = []
    fp32 = {r.target: r for r in reports["fp32"]}
    for precision, report in reports.items():
        for r in report:
            base = fp32.get(r.target)
            size_ratio = (
                f"{r.size_bytes / base.size_bytes:.2f}x"
                if r.size_bytes and base is not None and base.size_bytes
                else "-"
            )
            lat_ratio = (
                f"{r.latency_ms / base.latency_ms:.2f}x"
                if r.latency_ms and base is not None and base.latency_ms
                else "-"
            )
            size = f"{r.size_bytes / 1e6:.3f} MB" if r.size_bytes else "-"
            lat = f"{r.latency_ms:.2f} ms" if r.latency_ms else "-"
            top1 = f"{r.top1_agreement * 100:.1f}%" if r.top1_agreement is not None else "-"
            rel = f"{r.max_rel_error:.1e}" if r.max_rel_error is not None else "-"
            status = r.status if r.ok else f"{r.status}: {r.reason[:60]}"
            rows.append(
                f"| {name} | {r.target} | {precision} | {status} | {size} | {size_ratio} | {lat} | {lat_ratio} "
                f"| {rel} | {top1} |"
            )
    for precision, s in seconds.items():
        rows.append(f"| {name} | all targets | {precision} | export wall time {s:.1f} s | | | | | | |")
    return rows


def run(quick: bool) -> str:
    """Run the benchmark and return the Markdown table."""
    rng = np.random.default_rng(0)
    header = [
        "| model | target | precision | status | size | size vs fp32 | latency (2 thr) | latency vs fp32 "
        "| max rel err | top-1 agree |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines = list(header)
    work = Path(tempfile.mkdtemp(prefix="fitslim-bench-"))
    size = 96 if quick else 160

    # MobileNetV2 (torch source): speed and size
    calib = rng.random((32, 3, size, size), dtype=np.float32)
    mnv2 = _bn_from_data(torch_model("mobilenet_v2", width_multiplier=1.0, num_classes=1000, input_size=size), calib)
    reports, seconds = {}, {}
    for precision in ("fp32", "int8"):
        t0 = time.perf_counter()
        reports[precision] = export(
            mnv2,
            TARGETS,
            example_input=calib[:1],
            calibration=[calib],
            precision=precision,
            directory=work / f"mnv2-{precision}",
        )
        seconds[precision] = time.perf_counter() - t0
    lines += _rows(f"MobileNetV2-{size} (torch)", reports, seconds)

    # MobileNetV2 (Keras source): the TFLite converter path
    import keras

    keras.utils.set_random_seed(0)
    kmodel = keras_model("mobilenet_v2", width_multiplier=1.0, num_classes=1000, input_size=size)
    # the torch twin's weights, BatchNorm statistics from data included: with Keras' default statistics a
    # random 50-layer net's activations run away and int8 agreement says nothing
    copy_torch_to_keras(mnv2.eval(), kmodel)
    kcalib = calib.transpose(0, 2, 3, 1).copy()
    reports, seconds = {}, {}
    for precision in ("fp32", "int8"):
        t0 = time.perf_counter()
        reports[precision] = export(
            kmodel,
            ["tflite"],
            example_input=kcalib[:1],
            calibration=[kcalib],
            precision=precision,
            directory=work / f"kmnv2-{precision}",
        )
        seconds[precision] = time.perf_counter() - t0
    lines += _rows(f"MobileNetV2-{size} (Keras)", reports, seconds)

    # digits CNN (trained): accuracy agreement of int8 artifacts on the test split
    d = digits()
    model = _train_digits_torch(2 if quick else 8)
    reports, seconds = {}, {}
    for precision in ("fp32", "int8"):
        t0 = time.perf_counter()
        reports[precision] = export(
            model,
            TARGETS,
            example_input=d.x_test[:1],
            calibration=[d.x_train[:256]],
            precision=precision,
            directory=work / f"digits-{precision}",
            samples=d.x_test,
        )
        seconds[precision] = time.perf_counter() - t0
    lines += _rows("digits CNN (torch, trained)", reports, seconds)
    return "\n".join(lines) + f"\n\nArtifacts in {work}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="96x96 MobileNetV2 and fewer epochs")
    parser.add_argument("--output", default=None, help="also write the Markdown table here")
    args = parser.parse_args()
    table = run(args.quick)
    emit(table, args.output)


if __name__ == "__main__":
    main()
