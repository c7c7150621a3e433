"""A latency verdict on every fp16 / int8 artifact: timed against the fp32 artifact of its target, interleaved.

A quantized artifact can run slower than the float one on the machine at hand (ncnn's int8 kernels target ARM;
a tiny model's int8 graph is dominated by quantize / dequantize steps). Each writer times its fp16 / int8
artifact and the fp32 artifact of the same target in the same runtime, alternating bursts of calls in rotating
order in one run (:func:`interleaved_times`), and :func:`compare_with_fp32` fills the report row's
``fp32_latency_ms``, ``latency_ratio`` and ``latency_verdict``. A ratio above ``1 + NOISE_BAND`` is ``slower``:
:func:`warn_slower` then adds a ``WARNING`` note naming the layers that cost most where the runtime can say
(:func:`ort_costly_nodes`, :func:`exporters.targets.ncnn.costly_layers`) and the setting that helps, and logs it.

Example:
    >>> latency_verdict(1.30), latency_verdict(0.98), latency_verdict(0.50)
    ('slower', 'same', 'faster')
    >>> from exporters.core.report import TargetResult
    >>> r = TargetResult("ncnn", "int8")
    >>> _ = compare_with_fp32(r, lambda: None, lambda: None, "fp32 ncnn", timer=iter([2.0, 1.0]).__next__)
    >>> r.latency_ratio, r.latency_verdict
    (2.0, 'slower')
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from exporters.core.report import TargetResult

__all__ = [
    "NOISE_BAND",
    "compare_with_fp32",
    "interleaved_times",
    "latency_metrics",
    "latency_verdict",
    "ort_costly_nodes",
    "slower_hint",
    "warn_slower",
]

log = logging.getLogger(__name__)

#: ratios within ``1 ± NOISE_BAND`` are ``same``: run-to-run noise of interleaved medians on a busy CPU
NOISE_BAND = 0.05
#: interleaved rounds and timed calls per burst of :func:`compare_with_fp32`
ROUNDS = 10
BURST = 3


def interleaved_times(runs: Sequence[Callable[[], Any]], rounds: int = ROUNDS, burst: int = BURST) -> list[list[float]]:
    """Wall times (ms) of every ``run()``, timed in ``rounds`` rounds in rotating order, ``burst`` calls each.

    Every run first gets three untimed calls (allocation, kernel selection); in each round each run gets one
    untimed call and then ``burst`` timed ones, so slow changes in background load spread over all runs while no
    other runtime's worker threads are still busy during a timed call.

    Args:
        runs: zero-argument callables, e.g. ``lambda: session.run(None, feed)``.
        rounds: how many rounds.
        burst: timed calls per run and round.

    Raises:
        ValueError: no runs, or a non-positive ``rounds`` / ``burst``.
    """
    if not runs:
        raise ValueError("runs: nothing to time; pass at least one callable.")
    if rounds < 1 or burst < 1:
        raise ValueError(f"rounds, burst: must be positive; got {rounds}, {burst}.")
    for run in runs:
        for _ in range(3):
            run()
    times: list[list[float]] = [[] for _ in runs]
    n = len(runs)
    for r in range(rounds):
        for k in range(n):
            i = (r + k) % n
            runs[i]()
            for _ in range(burst):
                t0 = time.perf_counter()
                runs[i]()
                times[i].append((time.perf_counter() - t0) * 1e3)
    return times


def latency_verdict(ratio: float, band: float = NOISE_BAND) -> str:
    """``slower`` above ``1 + band``, ``faster`` below ``1 - band``, else ``same``.

    Raises:
        ValueError: a ratio that is not positive and finite.
    """
    if not np.isfinite(ratio) or ratio <= 0:
        raise ValueError(f"ratio: a latency ratio must be positive and finite; got {ratio!r}.")
    if ratio > 1.0 + band:
        return "slower"
    if ratio < 1.0 - band:
        return "faster"
    return "same"


def compare_with_fp32(
    result: TargetResult,
    run: Callable[[], Any],
    fp32_run: Callable[[], Any],
    peer: str,
    threads: int | None = None,
    rounds: int = ROUNDS,
    burst: int = BURST,
    timer: Callable[[], float] | None = None,
) -> TargetResult:
    """Time ``run`` (the artifact) and ``fp32_run`` (its fp32 peer) interleaved; fill the row's latency fields.

    ``result.latency_ms`` becomes the artifact's median from this run, so the ratio is of two medians of the same
    run. ``timer`` replaces the measurement (called twice: the artifact's median, then the fp32 one), for tests.

    Args:
        result: the artifact's report row (``precision`` fp16 or int8).
        run: one single-sample inference of the artifact.
        fp32_run: one single-sample inference of the fp32 artifact of the same target, same runtime and threads.
        peer: what the fp32 side is, for the report (e.g. ``fp32 ncnn built for comparison``).
        threads: runtime threads both used.
        rounds: interleaved rounds.
        burst: timed calls per burst.
        timer: a stand-in for the medians (tests).

    Raises:
        ValueError: as :func:`interleaved_times`.
    """
    if timer is not None:
        ms, fp32_ms = timer(), timer()
    else:
        times = interleaved_times([run, fp32_run], rounds, burst)
        ms, fp32_ms = (float(statistics.median(t)) for t in times)
    result.latency_ms, result.fp32_latency_ms = ms, fp32_ms
    result.latency_ratio = ms / fp32_ms
    result.latency_verdict = latency_verdict(result.latency_ratio)
    result.latency_peer = peer
    if threads is not None:
        result.threads = threads
    log.info(
        "%s %s latency %.3f ms vs %.3f ms %s: %.2fx (%s)",
        result.target, result.precision, ms, fp32_ms, peer, result.latency_ratio, result.latency_verdict,
    )  # fmt: skip
    return result


def slower_hint(target: str, precision: str, layer_types: Sequence[str] = (), keep_float: Sequence[str] = ()) -> str:
    """The setting that helps when a ``precision`` artifact of ``target`` runs slower than fp32 on this machine.

    Args:
        target: ``onnx``, ``ncnn``, ``tflite`` or ``tensorrt``.
        precision: ``fp16`` or ``int8``.
        layer_types: the layer (op) types of the artifact, where known.
        keep_float: ncnn layer types the int8 model already keeps fp32.
    """
    if precision == "fp16":
        return (
            "this CPU has no fast fp16 arithmetic, so fp16 buys size only here; deploy fp32 on CPUs like this one "
            "and fp16 where the device computes in fp16 (ARM v8.2+, GPUs)"
        )
    if target == "ncnn":
        if "ConvolutionDepthWise" in layer_types and "ConvolutionDepthWise" not in keep_float:
            return (
                "export with ncnn_depthwise='float' (depthwise convolutions stay fp32 in the int8 model: on x86 "
                "ncnn's int8 depthwise kernel is slower than its fp32 one)"
            )
        return (
            "ncnn's int8 kernels target ARM: on x86 the speed comes from channel pruning "
            "(Pruning(granularity='channel')), and int8 buys size; time the int8 model on the ARM device itself"
        )
    if target == "onnx":
        return (
            "in a small model the quantize / dequantize steps around each int8 kernel cost more than the int8 "
            "arithmetic saves; onnxruntime int8 pays off on wide convolutions and matmuls, and on x86 CPUs with "
            "VNNI (onnx_weights='int8'); keep the fp32 ONNX for this model on this CPU"
        )
    if target == "tflite":
        return (
            "LiteRT (XNNPACK) gains from int8 on wide convolutions; for a model this small keep the fp32 .tflite "
            "on this CPU, or time the int8 one on the device"
        )
    return "keep the fp32 artifact on this CPU"


def warn_slower(result: TargetResult, costly: Sequence[str] = (), hint: str = "") -> str:
    """Add the slower-than-fp32 ``WARNING`` note to ``result`` and log it; returns the note (``""`` if not slower).

    Args:
        result: a row whose :func:`compare_with_fp32` verdict is ``slower``.
        costly: the layers that cost most, described.
        hint: the setting that helps (:func:`slower_hint`).
    """
    if result.latency_verdict != "slower" or result.latency_ratio is None:
        return ""
    note = (
        f"WARNING: the {result.precision} artifact runs {result.latency_ratio:.2f}x slower than fp32 on this "
        f"machine ({result.latency_ms:.3f} ms vs {result.fp32_latency_ms:.3f} ms, {result.latency_peer}, "
        "interleaved medians of one run)"
    )
    if costly:
        note += f"; costliest layers: {'; '.join(costly)}"
    if hint:
        note += f". HINT: {hint}"
    result.notes.append(note)
    log.warning("%s (%s): %s", result.target, result.precision, note)
    return note


def ort_costly_nodes(
    path: str | Path, feed: dict[str, Any], threads: int = 2, top: int = 3, runs: int = 20
) -> list[str]:
    """The ``top`` nodes of an ONNX model that take most time in onnxruntime's profiler, described.

    Args:
        path: the ONNX file.
        feed: one single-sample feed.
        threads: intra-op threads.
        top: how many nodes to name.
        runs: profiled single-sample runs.

    Returns:
        e.g. ``["QLinearConv /conv1/Conv 0.041 ms (38%)", ...]``; empty when the profile has no node events.
    """
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="fitslim-ort-prof-") as tmp:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text(encoding="utf-8"))
    total: dict[tuple[str, str], float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and str(e.get("name", "")).endswith("_kernel_time"):
            name = str(e["name"])[: -len("_kernel_time")]
            total[(str(e.get("args", {}).get("op_name", "?")), name)] += float(e.get("dur", 0.0))
    whole = sum(total.values())
    ranked = sorted(total.items(), key=lambda kv: -kv[1])[:top]
    return [f"{op} {name} {us / runs / 1e3:.3f} ms ({100.0 * us / whole:.0f}%)" for (op, name), us in ranked if whole]


def latency_metrics(report: Any, prefix: str = "export") -> dict[str, float]:
    """The latency verdicts of an export report as flat metrics for a logger, next to ``fitslim.metrics``'s.

    Per fp16 / int8 row with a verdict: ``<prefix>/<target>/latency_ratio``, ``fp32_latency_ms`` and
    ``slower_than_fp32`` (1.0 slower, 0.0 not); a target exported at more than one precision is keyed
    ``<target>_<precision>``. ``<prefix>/slower_than_fp32`` counts the artifacts slower than fp32.

    Example:
        >>> from exporters.core.report import ExportReport, TargetResult
        >>> row = TargetResult("onnx", "int8", latency_ms=3.0, fp32_latency_ms=2.0, latency_ratio=1.5,
        ...                    latency_verdict="slower")
        >>> latency_metrics(ExportReport([row]))["export/onnx/slower_than_fp32"]
        1.0
    """
    rows = list(getattr(report, "results", []))
    targets = [str(r.target) for r in rows]
    out: dict[str, float] = {}
    slower = 0
    for r in rows:
        if r.latency_ratio is None or not r.latency_verdict:
            continue
        key = str(r.target) if targets.count(str(r.target)) == 1 else f"{r.target}_{r.precision}"
        out[f"{prefix}/{key}/latency_ratio"] = float(r.latency_ratio)
        if r.fp32_latency_ms is not None:
            out[f"{prefix}/{key}/fp32_latency_ms"] = float(r.fp32_latency_ms)
        out[f"{prefix}/{key}/slower_than_fp32"] = float(r.latency_verdict == "slower")
        slower += r.latency_verdict == "slower"
    if out:
        out[f"{prefix}/slower_than_fp32"] = float(slower)
    return out
