"""fitslim's int8 artifacts side by side with the runtimes' own quantizers, same model, same calibration, one run.

Run: ``python -m benchmarks.peers [--quick] [--size 224] [--output f.md]``.

- ONNX Runtime: ``onnxruntime.quantization.quantize_static`` (its documented CPU flow: ``quant_pre_process``,
  then QDQ with its defaults) vs fitslim's ``onnx`` int8 artifact, both from the same fp32 ONNX of the torch
  MobileNetV2 and the same calibration inputs;
- TFLite: the TFLite converter's full-integer post-training quantization (``representative_dataset``,
  ``TFLITE_BUILTINS_INT8``) of a Keras MobileNetV2 vs fitslim's TFLite int8 of the same Keras model, and
  fitslim's TFLite int8 of the torch MobileNetV2 (litert-torch PT2E path);
- ncnn: fitslim's ncnn int8 vs ncnn fp32, and the int8 model with depthwise convolutions kept fp32
  (``ncnn_depthwise="float"``, for x86 CPUs).

Agreement = top-1 agreement and max relative error against the float source model on held-out inputs.
Latency = one image, ``--threads`` threads, median (min-max) of interleaved rounds, every artifact in one run.
Models: random weights, BatchNorm statistics from image-like inputs (no download).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import emit
from benchmarks.headline import time_interleaved
from benchmarks.speed224 import build, images

log = logging.getLogger("benchmarks.peers")


def _agree(ref: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    ref, out = ref.reshape(len(ref), -1), out.reshape(len(out), -1)
    top1 = float(np.mean(ref.argmax(1) == out.argmax(1)))
    rel = float(np.max(np.abs(ref - out)) / max(float(np.max(np.abs(ref))), 1e-30))
    return top1, rel


def _ort_runner(path: Path, threads: int) -> Any:
    from exporters.core.onnx_hub import ort_session

    sess = ort_session(path, threads)
    name = sess.get_inputs()[0].name
    return lambda x: np.asarray(sess.run(None, {name: x})[0])


def _tflite_runner(path: Path, threads: int) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=threads)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]

    def run(x: np.ndarray) -> np.ndarray:
        outs = []
        for i in range(len(x)):
            xi = x[i : i + 1]
            if xi.ndim == 4 and xi.shape[1:] != tuple(inp["shape"][1:]):
                xi = np.ascontiguousarray(xi.transpose(0, 2, 3, 1))  # NCHW inputs, an NHWC (Keras) model
            if inp["dtype"] != np.float32:
                s, z = inp["quantization"]
                xi = np.clip(np.round(xi / s + z), -128, 127).astype(inp["dtype"])
            it.set_tensor(inp["index"], xi)
            it.invoke()
            o = it.get_tensor(out["index"])
            if out["dtype"] != np.float32:
                s, z = out["quantization"]
                o = (o.astype(np.float32) - z) * s
            outs.append(o.reshape(-1))
        return np.stack(outs)

    return run


def keras_mobilenet(size: int) -> Any:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(
        weights=None, input_shape=(size, size, 3), classes=1000, classifier_activation=None
    )
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.momentum = 0.0
    model(images(16, 100, size).transpose(0, 2, 3, 1), training=True)
    for layer in bns:
        layer.momentum = 0.99
    return model


def tflite_converter_ptq(model: Any, calib_nhwc: np.ndarray, path: Path) -> Path:
    """The TFLite converter's full-integer PTQ (float input/output, int8 kernels), as its guide writes it."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)  # the guide's entry point, as for Keras 3 models
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([calib_nhwc[i : i + 1]] for i in range(len(calib_nhwc)))
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    path.write_bytes(conv.convert())
    return path


def ort_quantize_static(fp32: Path, calib: np.ndarray, work: Path) -> Path:
    """ONNX Runtime's documented CPU flow: ``quant_pre_process`` then ``quantize_static`` with its defaults."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = work / "ort_pre.onnx"
    quant_pre_process(str(fp32), str(pre))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib[i : i + 1] for i in range(len(calib)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.it, None)
            return None if x is None else {"input": x}

    out = work / "ort_quantize_static.onnx"
    quantize_static(str(pre), str(out), Reader())
    return out


def run(args: argparse.Namespace) -> str:
    import torch

    from exporters import export

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    size = args.size
    work = Path(tempfile.mkdtemp(prefix="fitslim-peers-"))
    calib = images(args.calibration, 0, size)
    held = images(args.samples, 7, size)
    rows: list[tuple[str, str, Path | None, Any, str]] = []  # (group, label, file, runner, ref key)

    # torch MobileNetV2: fp32 ONNX + ncnn, fitslim int8 ONNX / ncnn / TFLite, ORT quantize_static
    model = build("mobilenet_v2", False, size)
    with torch.no_grad():
        ref_torch = model(torch.from_numpy(held)).numpy()
    fp32 = export(model, ["onnx", "ncnn"], example_input=calib[:1], directory=work / "fp32")
    int8 = export(
        model, ["onnx", "ncnn", "tflite"], example_input=calib[:1], calibration=calib, precision="int8",
        directory=work / "int8",
    )  # fmt: skip
    int8_dw = export(
        model, ["ncnn"], example_input=calib[:1], calibration=calib, precision="int8", directory=work / "int8_dw",
        ncnn_depthwise="float",
    )  # fmt: skip
    from exporters.core import runtimes

    fp32_onnx = work / "fp32" / "model.onnx"
    peer = ort_quantize_static(fp32_onnx, calib, work)
    rows.append(("ONNX Runtime", "fp32 ONNX", fp32_onnx, _ort_runner(fp32_onnx, args.threads), "torch"))
    rows.append(("ONNX Runtime", "ORT quantize_static (defaults)", peer, _ort_runner(peer, args.threads), "torch"))
    for group, label, report, target in (
        ("ONNX Runtime", "fitslim onnx int8", int8, "onnx"),
        ("ncnn", "ncnn fp32", fp32, "ncnn"),
        ("ncnn", "fitslim ncnn int8", int8, "ncnn"),
        ("ncnn", "fitslim ncnn int8, depthwise fp32 (ncnn_depthwise='float')", int8_dw, "ncnn"),
        ("LiteRT", "fitslim TFLite int8 from torch", int8, "tflite"),
    ):
        row = report[target]
        if not row.ok and row.status != "mismatch":
            rows.append((group, f"{label}: {row.status}: {row.reason[:200]}", None, None, "torch"))
            continue
        path = Path(report.directory) / row.files[0]
        rows.append((group, label, path, runtimes.runner(report, target, args.threads), "torch"))

    # Keras MobileNetV2: TFLite converter full-int8 PTQ vs fitslim TFLite int8 (and the fp32 TFLite)
    refs = {"torch": ref_torch}
    if not args.skip_keras:
        kmodel = keras_mobilenet(size)
        calib_nhwc = np.ascontiguousarray(calib.transpose(0, 2, 3, 1))
        refs["keras"] = np.asarray(kmodel(held.transpose(0, 2, 3, 1), training=False))
        kfp32 = export(kmodel, ["tflite"], example_input=calib_nhwc[:1], directory=work / "keras_fp32")
        kint8 = export(
            kmodel, ["tflite"], example_input=calib_nhwc[:1], calibration=calib_nhwc, precision="int8",
            directory=work / "keras_int8",
        )  # fmt: skip
        ptq = tflite_converter_ptq(kmodel, calib_nhwc, work / "tflite_converter_ptq.tflite")
        for label, report in (("Keras fp32 TFLite", kfp32), ("fitslim TFLite int8 from Keras", kint8)):
            row = report["tflite"]
            if not row.ok and row.status != "mismatch":
                rows.append(("LiteRT", f"{label}: {row.status}: {row.reason[:200]}", None, None, "keras"))
                continue
            path = Path(report.directory) / row.files[0]
            rows.append(("LiteRT", label, path, runtimes.runner(report, "tflite", args.threads), "keras"))
        rows.append(
            ("LiteRT", "TFLite converter full-int8 PTQ (Keras)", ptq, _tflite_runner(ptq, args.threads), "keras")
        )

    live = [r for r in rows if r[3] is not None]
    agreement = {}
    for _group, label, _path, runner, key in live:
        agreement[label] = _agree(refs[key], np.asarray(runner(held)))
    times = time_interleaved([r[3] for r in live], held[:1], args.rounds, args.burst)
    ms = {r[1]: t for r, t in zip(live, times, strict=True)}
    base = {"ONNX Runtime": "fp32 ONNX", "ncnn": "ncnn fp32", "LiteRT": "Keras fp32 TFLite"}
    lines = [
        f"## Side by side with the runtimes' own quantizers (MobileNetV2 alpha 1.0, {size}x{size})",
        "",
        f"One run: same model, same {args.calibration} calibration inputs; agreement with the float source model "
        f"on {args.samples} other inputs; latency of one image, {args.threads} threads, median (min-max) of "
        f"{args.rounds} interleaved rounds of {args.burst}. Random weights, BatchNorm statistics from image-like "
        "inputs (top-1 agreement of random models has small margins: compare the rows, not with 100%).",
        "",
        "| runtime | artifact | size | top-1 vs float | max rel err | latency ms (min-max) | x fp32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for group, label, path, _runner, _key in rows:
        if label not in ms:
            lines.append(f"| {group} | {label} | - | - | - | - | - |")
            continue
        t = ms[label]
        med = statistics.median(t)
        b = ms.get(base[group])
        ratio = f"{med / statistics.median(b):.2f}x" if b else "-"
        top1, rel = agreement[label]
        size_mb = sum(p.stat().st_size for p in [path] if p) / 1e6 if path else 0.0
        if path and path.suffix == ".param":
            size_mb += path.with_suffix(".bin").stat().st_size / 1e6
        lines.append(
            f"| {group} | {label} | {size_mb:.1f} MB | {100 * top1:.0f}% | {rel:.3f} | "
            f"{med:.1f} ({min(t):.1f}-{max(t):.1f}) | {ratio} |"
        )
    peer_ms, ours_ms = ms.get("ORT quantize_static (defaults)"), ms.get("fitslim onnx int8")
    if peer_ms and ours_ms:
        lines += [
            "",
            f"fitslim ORT int8 / ORT quantize_static: {statistics.median(ours_ms) / statistics.median(peer_ms):.2f}x",
        ]
    k_peer, k_ours = ms.get("TFLite converter full-int8 PTQ (Keras)"), ms.get("fitslim TFLite int8 from Keras")
    if k_peer and k_ours:
        lines += [
            "",
            "fitslim TFLite int8 (Keras) / TFLite converter PTQ: "
            f"{statistics.median(k_ours) / statistics.median(k_peer):.2f}x",
        ]
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="96x96, few samples and rounds")
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calibration", type=int, default=None)
    p.add_argument("--samples", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--burst", type=int, default=3)
    p.add_argument("--skip-keras", action="store_true")
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    args.size = args.size or (96 if args.quick else 224)
    args.calibration = args.calibration or (16 if args.quick else 64)
    args.samples = args.samples or (16 if args.quick else 64)
    args.rounds = args.rounds or (2 if args.quick else 7)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("torch", "onnxruntime", "exporters", "tensorflow", "absl"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    text = run(args)
    return emit(text, args.output)


if __name__ == "__main__":
    main()
