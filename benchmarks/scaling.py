"""What an export costs as models grow: wall time and peak memory vs parameters, all targets.

Run: ``python -m benchmarks.scaling [--models mobilenet_v2 resnet50 vit_100m] [--size 224] [--output f.md]``.

Each model (MobileNetV2 alpha 1.0, ResNet-50, a ViT of about 100M parameters: ViT-Base widths, 14 layers;
random weights, see :mod:`benchmarks.speed224`) is exported in its own process, first fp32 to ``onnx``, ``ncnn``,
``tflite``, then int8 (calibrated on 32 inputs) to ``onnx``, ``ncnn``, ``tflite`` and ``tensorrt`` (the Q/DQ
ONNX; no engine without TensorRT). Each target is a separate :func:`exporters.export` call, so its wall time
includes building the shared ONNX and verifying the artifact; peak memory is the process's max RSS after it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import emit

log = logging.getLogger("benchmarks.scaling")

MODELS = ("mobilenet_v2", "resnet50", "vit_100m")
STEPS = (
    ("fp32", "onnx"),
    ("fp32", "ncnn"),
    ("fp32", "tflite"),
    ("int8", "onnx"),
    ("int8", "ncnn"),
    ("int8", "tflite"),
    ("int8", "tensorrt"),
)


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (pnnx runs as one).

    Unlike wall time, CPU time hardly grows when other processes share the cores, so it is reported beside it.
    """
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _child(name: str, size: int, out: Path, targets: list[str]) -> None:
    import torch

    from benchmarks.speed224 import build, count_params, images
    from exporters import export

    warnings.filterwarnings("ignore")
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    model = build(name, False, size)
    rec: dict[str, Any] = {"model": name, "params": count_params(model), "build_s": time.perf_counter() - t0}
    calib = images(32, 0, size)
    work = Path(tempfile.mkdtemp(prefix=f"fitslim-scaling-{name}-"))
    rec["steps"] = []
    for precision, target in STEPS:
        if target not in targets:
            continue
        cpu0 = _cpu_seconds()
        t0 = time.perf_counter()
        report = export(
            model, [target], example_input=calib[:1], calibration=calib if precision == "int8" else None,
            samples=calib[:8], precision=precision, directory=work / f"{precision}_{target}",
        )  # fmt: skip
        row = report[target]
        rec["steps"].append(
            {
                "precision": precision,
                "target": target,
                "seconds": time.perf_counter() - t0,
                "cpu_seconds": _cpu_seconds() - cpu0,
                "load": os.getloadavg()[0],
                "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "status": row.status,
                "reason": row.reason[:200],
                "size": row.size_bytes,
            }
        )
        out.write_text(json.dumps(rec, indent=1), encoding="utf-8")  # partial records survive a timeout


def render(records: list[dict[str, Any]], size: int) -> str:
    lines = [
        f"## Export cost vs model size ({size}x{size}, 2 threads)",
        "",
        "Wall seconds / CPU seconds per target (one `export()` call each: shared ONNX + conversion + "
        "verification), and the process's peak RSS after it. Wall time grows with whatever else runs on the "
        "machine (the 1-minute load average after each model is given); CPU time hardly does.",
        "",
        "| model | params | " + " | ".join(f"{p} {t}" for p, t in STEPS) + " | total | peak RSS | load average |",
        "|---|---|" + "---|" * (len(STEPS) + 3),
    ]
    for rec in records:
        if "params" not in rec:
            lines.append(f"| {rec['model']} | failed: {rec.get('error', '?')} |")
            continue
        by = {(s["precision"], s["target"]): s for s in rec.get("steps", [])}
        cells = []
        for key in STEPS:
            s = by.get(key)
            cpu = f" / {s['cpu_seconds']:.0f}" if s is not None and "cpu_seconds" in s else ""
            cells.append(
                "-"
                if s is None
                else f"{s['seconds']:.0f}{cpu} s" + ("" if s["status"] == "ok" else f" ({s['status']})")
            )
        total = sum(s["seconds"] for s in rec.get("steps", []))
        total_cpu = sum(s.get("cpu_seconds", 0.0) for s in rec.get("steps", []))
        loads = [s["load"] for s in rec.get("steps", []) if "load" in s]
        peak = max((s["max_rss_mb"] for s in rec.get("steps", [])), default=0.0)
        lines.append(
            f"| {rec['model']} | {rec['params'] / 1e6:.1f} M | "
            + " | ".join(cells)
            + f" | {total:.0f} / {total_cpu:.0f} s | {peak / 1024:.1f} GB | "
            + (f"{min(loads):.1f}-{max(loads):.1f} |" if loads else "- |")
        )
    problems = [
        f"- {rec['model']} {s['precision']} {s['target']}: {s['status']}: {s['reason']}"
        for rec in records
        for s in rec.get("steps", [])
        if s["status"] != "ok" and s["reason"]
    ]
    return "\n".join(lines + ([""] + problems if problems else []) + [""])


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    p.add_argument("--targets", nargs="+", default=["onnx", "ncnn", "tflite", "tensorrt"])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--timeout", type=int, default=3600, help="seconds per model")
    p.add_argument("--cache", default=None)
    p.add_argument("--output", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child, args.size, Path(args.json), args.targets)
        return ""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cache = Path(args.cache) if args.cache else Path(tempfile.mkdtemp(prefix="fitslim-scaling-"))
    cache.mkdir(parents=True, exist_ok=True)
    records = []
    for name in args.models:
        out = cache / f"{name}.json"
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.scaling",
            "--child",
            name,
            "--json",
            str(out),
            "--size",
            str(args.size),
        ]
        cmd += ["--targets", *args.targets]
        try:
            proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parent.parent, timeout=args.timeout, check=False)
            error = None if proc.returncode == 0 else f"exit status {proc.returncode}"
        except subprocess.TimeoutExpired:
            error = f"timed out after {args.timeout} s"
        rec = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {"model": name}
        if error:
            rec["error"] = error
        records.append(rec)
    text = render(records, args.size)
    return emit(text, args.output)


if __name__ == "__main__":
    main()
