"""ncnn int8 against ncnn fp32 on MobileNetV2: file size and latency, with and without requantize fusion.

Builds ``torch_model("mobilenet_v2", width_multiplier=1.0, num_classes=1000, input_size=160)`` with random
BatchNorm statistics (so folding is exercised), calibrates int8 scales on random uniform inputs, converts
with pnnx, writes three int8 models with :func:`exporters.targets.ncnn_int8.write_int8` (requantize fused and not,
and fused with depthwise convolutions kept fp32: ``ncnn_depthwise="float"``),
and times single 1x3x160x160 extractions in ncnn (warm-up, then rounds that time every variant once;
medians). Prints one table.

``--model pointwise|conv3x3|depthwise`` times a stack of four layers of one kind instead (56x56 maps,
conv-BN-ReLU), which shows which kernel kind gains or loses from int8 on the machine at hand.

Run:
    .venv/bin/python benchmarks/ncnn_int8.py [--threads 2] [--repeats 50] [--width 1.0] [--size 160]
        [--model mobilenet_v2|pointwise|conv3x3|depthwise]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("benchmarks.ncnn_int8")


def random_bn_stats(model: Any, seed: int = 0) -> Any:
    """Non-trivial BatchNorm statistics (shared with the tests)."""
    from lightning_plugins.models import randomize_batchnorm

    return randomize_batchnorm(model, seed)


#: one-kind stacks: (input channels, conv kwargs) of four conv-BN-ReLU layers on 56x56 maps
KINDS: dict[str, tuple[int, dict[str, int]]] = {
    "pointwise": (256, {"kernel_size": 1}),
    "conv3x3": (128, {"kernel_size": 3, "padding": 1}),
    "depthwise": (384, {"kernel_size": 3, "padding": 1, "groups": 384}),
}


def layer_stack(kind: str) -> Any:
    """Four conv-BN-ReLU layers of one kind (see :data:`KINDS`), random BatchNorm statistics."""
    from torch import nn

    channels, conv = KINDS[kind]
    layers: list[nn.Module] = []
    for _ in range(4):
        layers += [nn.Conv2d(channels, channels, **conv), nn.BatchNorm2d(channels), nn.ReLU()]
    return random_bn_stats(nn.Sequential(*layers).eval())


def main(argv: list[str] | None = None) -> str:
    """Run the benchmark and return (and log) the table.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when None).
    """
    import torch

    from exporters.core.export import prepare_job
    from exporters.core.job import ExportOptions
    from exporters.targets.ncnn import NcnnModel, run_pnnx
    from exporters.targets.ncnn_int8 import write_int8
    from lightning_plugins.models import torch_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--calibration", type=int, default=32, help="random calibration inputs")
    parser.add_argument("--model", choices=["mobilenet_v2", *KINDS], default="mobilenet_v2")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    if args.model == "mobilenet_v2":
        model = random_bn_stats(
            torch_model(
                "mobilenet_v2", width_multiplier=args.width, num_classes=1000, in_channels=3, input_size=args.size
            )
        )
        shape = (3, args.size, args.size)
    else:
        model = layer_stack(args.model)
        shape = (KINDS[args.model][0], 56, 56)
    rng = np.random.default_rng(0)
    calib = rng.uniform(0.0, 1.0, size=(args.calibration, *shape)).astype(np.float32)
    work = Path(tempfile.mkdtemp(prefix="fitslim-ncnn-bench-"))
    try:
        options = ExportOptions(
            precision="int8", directory=work / "out", example_input=calib[:1], calibration=calib, samples=calib[:4]
        )
        job = prepare_job(model, options, work / "job")
        if job.quant is None:
            raise RuntimeError("prepare_job returned no int8 scales")
        fp32_param, fp32_bin = run_pnnx(job.onnx_path, job.input_shape, work / "pnnx", fp16=False)
        variants: dict[str, tuple[Path, Path, str]] = {"fp32": (fp32_param, fp32_bin, "fp32")}
        fusions = {}
        for label, fuse, keep in (
            ("int8 (no fusion)", False, ()),
            ("int8 + requantize fusion", True, ()),
            ("int8, depthwise fp32", True, ("ConvolutionDepthWise",)),  # export(..., ncnn_depthwise="float")
        ):
            stem = work / label.replace(" ", "_").replace(",", "").replace("+", "").replace("(", "").replace(")", "")
            summary = write_int8(
                fp32_param,
                fp32_bin,
                stem.with_suffix(".param"),
                stem.with_suffix(".bin"),
                job.quant,
                fuse=fuse,
                keep_float=keep,
            )
            variants[label] = (stem.with_suffix(".param"), stem.with_suffix(".bin"), "int8")
            fusions[label] = summary.describe()
        x = calib[0]
        nets = {label: NcnnModel(p, b, prec, args.threads) for label, (p, b, prec) in variants.items()}
        outs = {label: net(x) for label, net in nets.items()}
        for _ in range(10):  # warm-up
            for net in nets.values():
                net(x)
        # interleaved: every round times each variant once, so load changes on a shared machine hit all alike
        times: dict[str, list[float]] = {label: [] for label in nets}
        for _ in range(args.repeats):
            for label, net in nets.items():
                t0 = time.perf_counter()
                net(x)
                times[label].append((time.perf_counter() - t0) * 1e3)
        base = "fp32"
        base_size = sum(f.stat().st_size for f in variants[base][:2])
        base_ms = statistics.median(times[base])
        base_min = min(times[base])
        rows = []
        for label, (param, binary, _) in variants.items():
            size = float(param.stat().st_size + binary.stat().st_size)
            ms = statistics.median(times[label])
            rel = float(np.max(np.abs(outs[label] - outs[base])) / np.max(np.abs(outs[base])))
            rows.append((label, size, size / base_size, ms, ms / base_ms, min(times[label]) / base_min, rel))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    what = (
        f"MobileNetV2 alpha={args.width} {args.size}x{args.size}, 1000 classes"
        if args.model == "mobilenet_v2"
        else f"four {args.model} conv-BN-ReLU layers, {shape[0]} channels, 56x56"
    )
    head = (
        f"ncnn {what}, random BN stats, {args.threads} threads, median of {args.repeats} interleaved single extractions"
    )
    lines = [
        head,
        f"{'variant':<26} {'size':>10} {'size/fp32':>10} {'median':>11} {'lat/fp32':>9} {'min/fp32':>9} {'rel err':>8}",
    ]
    for label, size, sr, ms, lr, mr, rel in rows:
        lines.append(f"{label:<26} {size / 2**20:>7.2f} MB {sr:>10.3f} {ms:>8.2f} ms {lr:>9.2f} {mr:>9.2f} {rel:>8.3f}")
    lines.extend(f"{k}: {v}" for k, v in fusions.items())
    table = "\n".join(lines)
    log.info("\n%s", table)
    return table


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
