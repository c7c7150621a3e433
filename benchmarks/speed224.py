"""Speed at 224x224 on real architectures: dense fp32 vs 50% channels vs int8 vs both, in three runtimes.

Run: ``python -m benchmarks.speed224 [--quick] [--models mobilenet_v2 resnet50 vit_tiny] [--output f.md]``
(``python -m benchmarks.headline`` runs it first in full mode).

Models, random weights with BatchNorm statistics from image-like inputs (no download):

- MobileNetV2 alpha 1.0 (``lightning_plugins.models.torch_model("mobilenet_v2")``, 1000 classes);
- ResNet-50 (HuggingFace ``ResNetConfig()``: the ResNet-50 layout, 1000 classes);
- a ViT-tiny-sized transformer (``ViTConfig``: hidden 192, 12 layers, 3 heads, patch 16, 1000 classes).

"50% channels" is the architecture channel pruning at 0.5 leaves (every prunable channel group halved, counts
multiples of 8): MobileNetV2 alpha 0.5, ResNet-50 with half the widths, the ViT with hidden 96 / MLP 384 (3
heads of 32). Speed depends on shapes, not on weight values, so the half-width model is built from its
config rather than trained and pruned. Each variant is exported with :func:`exporters.export` to ONNX
(onnxruntime), ncnn and TFLite (LiteRT, XNNPACK) at fp32, and at int8 with calibration on the same inputs.

Every artifact is loaded once in its runtime at ``--threads`` threads; latency of one 224x224 image is
timed interleaved (every round times a burst of each artifact in rotating order), and the table gives the
median with min/max and the ratio to the dense fp32 artifact of the same runtime, all from one run. Each
model runs in a child process, so its peak memory (max RSS) and export wall times are its own.

The ``verdict`` column is what each int8 export's own report says (:mod:`exporters.core.latency`): the int8 artifact
against the fp32 artifact of its target and variant, timed interleaved inside ``export()``, and ``WARNING`` where
the report warns that int8 runs slower than fp32 on this machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import emit
from exporters.core.latency import interleaved_times  # the timer behind the export reports' verdicts


def time_interleaved(runners: list[Any], x: Any, rounds: int, burst: int) -> list[list[float]]:
    """Single-sample latencies (ms) of every ``runner(x)``, interleaved (``core.latency.interleaved_times``)."""
    return interleaved_times([lambda run=run: run(x) for run in runners], rounds, burst)


log = logging.getLogger("benchmarks.speed224")

MODELS = ("mobilenet_v2", "resnet50", "vit_tiny")
TITLES = {
    "mobilenet_v2": "MobileNetV2 alpha 1.0, 224x224",
    "resnet50": "ResNet-50, 224x224",
    "vit_tiny": "ViT-tiny-sized (hidden 192, 12 layers, 3 heads, patch 16), 224x224",
}
VARIANTS = ("dense fp32", "50% channels fp32", "dense int8", "50% channels int8")
RUNTIMES = (("onnxruntime", "onnx"), ("ncnn", "ncnn"), ("LiteRT (XNNPACK)", "tflite"))
TARGETS = ["onnx", "ncnn", "tflite"]


def images(n: int, seed: int, size: int = 224) -> np.ndarray:
    """Image-like inputs: smooth random colour fields (low-resolution noise upsampled) plus fine noise, normalized."""
    rng = np.random.default_rng(seed)
    low = rng.standard_normal((n, 3, 7, 7)).astype(np.float32)
    up = np.repeat(np.repeat(low, size // 7 + 1, axis=2), size // 7 + 1, axis=3)[:, :, :size, :size]
    return np.ascontiguousarray(up + 0.3 * rng.standard_normal((n, 3, size, size)).astype(np.float32))


def build(name: str, half: bool, size: int) -> Any:
    """The model (eval mode) with BatchNorm statistics from :func:`images`."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if name == "mobilenet_v2":
        from lightning_plugins.models import torch_model

        model: nn.Module = torch_model(
            "mobilenet_v2", width_multiplier=0.5 if half else 1.0, num_classes=1000, input_size=size
        )
    else:
        import transformers

        if name == "resnet50":
            cfg = transformers.ResNetConfig(
                embedding_size=32 if half else 64,
                hidden_sizes=[128, 256, 512, 1024] if half else [256, 512, 1024, 2048],
                num_labels=1000,
            )
            hf = transformers.ResNetForImageClassification(cfg)
        elif name == "vit_100m":  # ViT-Base widths with 14 layers: about 100M parameters
            cfg = transformers.ViTConfig(
                image_size=size, patch_size=16, hidden_size=768, num_hidden_layers=14, num_attention_heads=12,
                intermediate_size=3072, num_labels=1000,
            )  # fmt: skip
            hf = transformers.ViTForImageClassification(cfg)
        else:
            cfg = transformers.ViTConfig(
                image_size=size,
                patch_size=16,
                hidden_size=96 if half else 192,
                num_hidden_layers=12,
                num_attention_heads=3,
                intermediate_size=384 if half else 768,
                num_labels=1000,
            )
            hf = transformers.ViTForImageClassification(cfg)
        for m in hf.modules():  # unit-gain init keeps activations data-like through depth (HF draws std 0.02)
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="linear")

        class Logits(nn.Module):
            def __init__(self, inner: nn.Module) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.inner(pixel_values=x).logits

        model = Logits(hf)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
        model.train()
        with torch.no_grad():
            for seed in range(2):
                model(torch.from_numpy(images(8, 100 + seed, size)))
    return model.eval()


def count_params(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def measure_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Export the four variants of one model, time every artifact interleaved; a JSON-able record."""
    import torch

    from exporters import export
    from exporters.core import runtimes

    torch.set_num_threads(args.threads)
    size = args.size
    work = Path(tempfile.mkdtemp(prefix=f"fitslim-speed-{name}-"))
    calib = images(args.calibration, 0, size)
    samples = images(32, 7, size)
    record: dict[str, Any] = {"model": name, "size": size, "variants": {}, "workdir": str(work)}
    runners: list[Any] = []
    keys: list[tuple[str, str]] = []
    for variant in VARIANTS:
        half = variant.startswith("50%")
        precision = "int8" if variant.endswith("int8") else "fp32"
        model = build(name, half, size)
        t0 = time.perf_counter()
        report = export(
            model,
            args.targets,
            example_input=calib[:1],
            calibration=calib if precision == "int8" else None,
            samples=samples,
            precision=precision,
            directory=work / variant.replace(" ", "_").replace("%", ""),
        )
        seconds = time.perf_counter() - t0
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows: dict[str, Any] = {}
        for _label, target in RUNTIMES:
            row = next((r for r in report if r.target == target), None)
            if row is None:
                continue
            rows[target] = {
                "status": row.status,
                "reason": row.reason[:300],
                "size": row.size_bytes,
                "top1": row.top1_agreement,
                "decisive_top1": getattr(row, "decisive_top1", None),
                "rel_err": row.max_rel_error,
                "notes": [n[:300] for n in row.notes],
                "latency_ratio": row.latency_ratio,
                "latency_verdict": row.latency_verdict,
                "warning": next((n[:600] for n in row.notes if n.startswith("WARNING")), ""),
            }
            if row.ok or row.status == "mismatch":
                try:
                    runners.append(runtimes.runner(report, target, args.threads))
                    keys.append((variant, target))
                except Exception as err:  # a runtime that cannot load its artifact is a failed cell
                    rows[target]["status"] = "failed"
                    rows[target]["reason"] = f"loading: {type(err).__name__}: {err}"[:300]
        record["variants"][variant] = {
            "params": count_params(model),
            "export_s": seconds,
            "export_load": os.getloadavg()[0],  # how busy the machine was: export wall times depend on it
            "max_rss_mb": rss_mb,
            "targets": rows,
        }
        log.info("%s %s: exported in %.0f s, max RSS %.0f MB", name, variant, seconds, rss_mb)
        del model
    _time(record, runners, keys, samples[:1], args)
    return record


def _time(record: dict[str, Any], runners: list[Any], keys: list[tuple[str, str]], x: Any, args: Any) -> None:
    """Time the loaded artifacts interleaved; store median/min/max per cell and the load around the run."""
    before = os.getloadavg()[0]
    times = time_interleaved(runners, x, args.rounds, args.burst)
    for (variant, target), t in zip(keys, times, strict=True):
        record["variants"][variant]["targets"][target]["ms"] = [statistics.median(t), min(t), max(t)]
    record["timing_load"] = [before, os.getloadavg()[0]]


def retime(record: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Time a cached record's artifacts again (``--reuse --retime``): export once, time on a quiet machine."""
    from exporters.core import runtimes
    from exporters.core.report import ExportReport

    work = Path(record["workdir"])
    runners: list[Any] = []
    keys: list[tuple[str, str]] = []
    for variant, v in record["variants"].items():
        path = work / variant.replace(" ", "_").replace("%", "") / "report.json"
        if not path.is_file():
            raise FileNotFoundError(f"{record['model']} {variant}: {path} is gone; run without --reuse to export again")
        report = ExportReport.load(path)
        for target, cell in v["targets"].items():
            if cell.get("ms") is not None:
                runners.append(runtimes.runner(report, target, args.threads))
                keys.append((variant, target))
    _time(record, runners, keys, images(32, 7, int(record["size"]))[:1], args)
    record["rounds"], record["burst"], record["threads"] = args.rounds, args.burst, args.threads
    return record


NCNN_OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("defaults", {}),
    ("use_packing_layout=False", {"use_packing_layout": False}),
    ("use_int8_packed=False", {"use_int8_packed": False}),
    ("use_sgemm_convolution=False", {"use_sgemm_convolution": False}),
    ("use_winograd_convolution=False", {"use_winograd_convolution": False}),
    ("openmp_blocktime=0", {"openmp_blocktime": 0}),  # no spin-waiting of idle OpenMP workers
)


def ncnn_options(record: dict[str, Any], threads: int, rounds: int, burst: int) -> list[str]:
    """ncnn fp32 / int8 / 50% channels of a measured model under several ``ncnn.Option`` settings, one run."""
    from exporters.targets.ncnn import NcnnModel

    work = Path(record["workdir"])
    size = int(record["size"])
    x = images(1, 7, size)[0]
    runners, labels = [], []
    for variant in ("dense fp32", "dense int8", "50% channels fp32", "50% channels int8"):
        directory = work / variant.replace(" ", "_").replace("%", "")
        params = sorted(directory.glob("*.param"))
        if not params:
            continue
        precision = "int8" if variant.endswith("int8") else "fp32"
        for threads_used in sorted({1, threads}):
            for label, opts in NCNN_OPTIONS:
                if precision == "fp32" and "int8" in label:
                    continue
                if threads_used != threads and label != "defaults":
                    continue
                net = NcnnModel(params[0], params[0].with_suffix(".bin"), precision, threads_used, opts)
                runners.append(lambda _x, net=net: net(x))
                labels.append((variant, threads_used, label))
    times = time_interleaved(runners, x[None], rounds, burst)
    base = {
        t: statistics.median(ts)
        for (v, t, lab), ts in zip(labels, times, strict=True)
        if v == "dense fp32" and lab == "defaults"
    }
    lines = [
        "| ncnn model | threads | option | ms median (min-max) | x dense fp32 (same threads) |",
        "|---|---|---|---|---|",
    ]
    for (variant, t, label), ts in zip(labels, times, strict=True):
        med = statistics.median(ts)
        lines.append(f"| {variant} | {t} | {label} | {med:.1f} ({min(ts):.1f}-{max(ts):.1f}) | {med / base[t]:.2f}x |")
    return lines


# -- rendering -----------------------------------------------------------------------------------------


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f} MB"


def _lat(cell: dict[str, Any]) -> str:
    ms = cell.get("ms")
    if ms is None:
        return cell.get("status", "-")
    med, lo, hi = ms
    return f"{med:.1f} ({lo:.1f}-{hi:.1f})"


def _verdicts(targets: dict[str, Any]) -> str:
    """The export reports' latency verdicts of one variant, e.g. ``onnx 0.55x faster; ncnn 1.20x slower WARNING``."""
    parts = []
    for _label, target in RUNTIMES:
        c = targets.get(target, {})
        if c.get("latency_ratio") is not None:
            flag = " WARNING" if c.get("warning") else ""
            parts.append(f"{target} {c['latency_ratio']:.2f}x {c.get('latency_verdict', '')}{flag}")
    return "; ".join(parts) or "-"


def table(rec: dict[str, Any]) -> list[str]:
    """Markdown table of one model: a row per variant, per runtime latency (min-max), ratio to dense fp32."""
    variants = rec["variants"]
    head = "| variant | params |" + "".join(f" {label} ms (min-max) | x fp32 |" for label, _ in RUNTIMES)
    head += " ORT int8 top-1 | sizes ONNX / ncnn / TFLite | verdict of the export report (int8 vs fp32) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    dense = variants.get("dense fp32", {}).get("targets", {})
    for variant in VARIANTS:
        v = variants.get(variant)
        if v is None:
            continue
        cells = [variant, f"{v['params'] / 1e6:.2f} M"]
        for _label, target in RUNTIMES:
            c = v["targets"].get(target, {})
            cells.append(_lat(c))
            base = dense.get(target, {}).get("ms")
            cells.append(f"{c['ms'][0] / base[0]:.2f}x" if c.get("ms") and base else "-")
        onnx = v["targets"].get("onnx", {})
        top1 = onnx.get("decisive_top1") if onnx.get("decisive_top1") is not None else onnx.get("top1")
        cells.append("-" if not variant.endswith("int8") or top1 is None else f"{100 * top1:.0f}%")
        cells.append(" / ".join(_mb(v["targets"].get(t, {}).get("size")) for _l, t in RUNTIMES))
        cells.append(_verdicts(v["targets"]))
        lines.append("| " + " | ".join(cells) + " |")
    problems = [
        f"- {variant}, {t}: {c['status']}: {c['reason']}"
        for variant, v in variants.items()
        for t, c in v["targets"].items()
        if c.get("status") not in ("ok",) and c.get("reason")
    ]
    exports = ", ".join(f"{k}: {v['export_s']:.0f} s" for k, v in variants.items())
    done = sorted({t for v in variants.values() for t in v["targets"]})
    rss = max(v["max_rss_mb"] for v in variants.values()) / 1024
    loads = ", ".join(f"{v['export_load']:.1f}" for v in variants.values() if "export_load" in v)
    lines += [
        "",
        f"Export wall time ({' + '.join(done)}, verification included): {exports}; peak RSS {rss:.1f} GB"
        + (f"; 1-minute load average after each export: {loads} (2 cores)." if loads else "."),
    ]
    if "timing_load" in rec:
        lo, hi = rec["timing_load"]
        lines.append(f"Load average before / after the timing rounds: {lo:.1f} / {hi:.1f}.")
    warnings = [
        f"- {variant}, {t}: {c['warning']}"
        for variant, v in variants.items()
        for t, c in v["targets"].items()
        if c.get("warning")
    ]
    return lines + ([""] + problems if problems else []) + ([""] + warnings if warnings else [])


def render(records: list[dict[str, Any]], args: argparse.Namespace) -> str:
    import platform

    lines = [
        "## Speed at 224x224: dense fp32 vs 50% channels vs int8 vs both",
        "",
        f"Latency of one 224x224 image, {args.threads} threads, median (min-max) of {args.rounds} interleaved "
        f"rounds of {args.burst}; `x fp32` = ratio to the dense fp32 artifact in the same runtime, same run. "
        f"Machine: {platform.machine()}, {os.cpu_count()} logical CPUs ({platform.processor() or 'cpu'}). "
        "Random weights, BatchNorm statistics from image-like inputs; int8 calibrated on "
        f"{args.calibration} such inputs. ORT int8 top-1 = agreement with the float model on 32 inputs "
        "(decisive ones where the verification reports them).",
        "",
    ]
    for rec in records:
        if "error" in rec:
            lines += [f"### {TITLES.get(rec['model'], rec['model'])}", "", f"Failed: {rec['error']}", ""]
            continue
        lines += [f"### {TITLES.get(rec['model'], rec['model'])}", ""] + table(rec) + [""]
    return "\n".join(lines)


def _child(args: argparse.Namespace) -> None:
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("torch", "onnxruntime", "exporters", "tensorflow", "absl"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    rec = measure_model(args.child, args)
    Path(args.json).write_text(json.dumps(rec, indent=1), encoding="utf-8")


def run(args: argparse.Namespace) -> str:
    """Each model in its own process (peak memory per model); records cached as JSON next to the output."""
    records = []
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="fitslim-speed224-"))
    cache.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        out = cache / f"{name}.json"
        if not (args.reuse and out.is_file()):
            cmd = [sys.executable, "-m", "benchmarks.speed224", "--child", name, "--json", str(out)]
            cmd += ["--threads", str(args.threads), "--rounds", str(args.rounds), "--burst", str(args.burst)]
            cmd += ["--size", str(args.size), "--calibration", str(args.calibration), "--targets", *args.targets]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent, check=False)
            log.info("%s: %.0f s, exit %d", name, time.perf_counter() - t0, proc.returncode)
            if proc.returncode != 0 or not out.is_file():
                records.append({"model": name, "error": f"exit status {proc.returncode}"})
                continue
            records.append(json.loads(out.read_text(encoding="utf-8")))
        else:
            record = json.loads(out.read_text(encoding="utf-8"))
            if args.retime:
                record = retime(record, args)
                out.write_text(json.dumps(record, indent=1), encoding="utf-8")
            records.append(record)
    text = render(records, args)
    if args.ncnn_options:
        for rec in records:
            if "error" not in rec and Path(rec["workdir"]).is_dir():
                text += f"\n### ncnn options on x86: {TITLES.get(rec['model'], rec['model'])}\n\n"
                text += "\n".join(ncnn_options(rec, args.threads, args.rounds, args.burst)) + "\n"
    return text


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--quick", action="store_true", help="MobileNetV2 at 96x96, few rounds: a smoke test")
    p.add_argument("--models", nargs="+", choices=MODELS, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 7, quick 2)")
    p.add_argument("--burst", type=int, default=3)
    p.add_argument("--size", type=int, default=None, help="image size (default 224, quick 96)")
    p.add_argument("--calibration", type=int, default=None, help="calibration inputs (default 64, quick 16)")
    p.add_argument("--cache", default=None, help="keep each model's JSON record here")
    p.add_argument("--reuse", action="store_true", help="render from cached records where present")
    p.add_argument(
        "--retime", action="store_true", help="with --reuse: time the cached artifacts again (same rounds/threads)"
    )
    p.add_argument("--targets", nargs="+", choices=TARGETS, default=TARGETS, help="runtimes to export to and time")
    p.add_argument("--ncnn-options", action="store_true", help="also time ncnn under several ncnn.Option settings")
    p.add_argument("--output", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)
    return p


def main_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the defaults that depend on ``--quick``."""
    if args.rounds is None:
        args.rounds = 2 if args.quick else 7
    if args.size is None:
        args.size = 96 if args.quick else 224
    if args.calibration is None:
        args.calibration = 16 if args.quick else 64
    if args.models is None:
        args.models = ["mobilenet_v2"] if args.quick else list(MODELS)
    return args


def main(argv: list[str] | None = None) -> str:
    args = main_defaults(parser().parse_args(argv))
    if args.child:
        _child(args)
        return ""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    text = run(args)
    return emit(text, args.output)


if __name__ == "__main__":
    main()
