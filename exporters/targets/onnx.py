"""The ``onnx`` target: the shared fp32 ONNX as it is, its fp16 conversion, or the int8 file in ONNX Runtime's QDQ form.

fp32 is the shared ONNX (BatchNorm folded, dynamic batch); fp16 is :func:`to_fp16` of it; int8 is
:func:`exporters.targets.onnx_int8.write_int8`. Every one runs in onnxruntime (:func:`runner`), and the core
verifies and times it (:mod:`exporters.core.target`); an fp16 / int8 file is timed against the shared fp32 ONNX.

Example:
    >>> # report = export(model, ["onnx"], example_input=x, precision="fp16")   # writes model.fp16.onnx
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from exporters.core.inputs import Inputs, ort_feed
from exporters.core.job import ExportJob
from exporters.core.latency import ort_costly_nodes, slower_hint
from exporters.core.onnx_hub import OrtRunner
from exporters.core.report import TargetResult
from exporters.core.target import Artifact, Runner, Target, register
from exporters.targets import onnx_int8
from fitslim.fileio import atomic_path

__all__ = ["TARGET", "runner", "to_fp16", "write"]


def runner(paths: Sequence[Path], precision: str, threads: int, batch: int = 256) -> Runner:
    """An ``onnx`` artifact (``paths[0]``) loaded in onnxruntime; every precision runs with its own kernels."""
    return OrtRunner(Path(paths[0]), threads, batch)


def _slower(run: Runner, one: Inputs, precision: str) -> tuple[list[str], str]:
    """The costliest nodes of a slower fp16 / int8 file, and what helps."""
    if not isinstance(run, OrtRunner):
        return [], slower_hint("onnx", precision)
    costly = ort_costly_nodes(run.path, ort_feed(run.session, one), run.threads)
    return [f"{c} of the time" for c in costly], slower_hint("onnx", precision)


def _peer(job: ExportJob) -> Callable[[], tuple[list[Path], str]]:
    return lambda: ([job.onnx_path], "the fp32 ONNX (the onnx target at fp32) in onnxruntime, same threads")


def _sort_nodes(graph: Any) -> None:
    """Reorder ``graph``'s nodes topologically (stable: a node keeps its place unless an input comes later)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):  # inputs nobody produces: leave them for the checker to name
            ordered += rest
            break
        pending = rest
    copies = [type(n)() for n in ordered]
    for copy, node in zip(copies, ordered, strict=True):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


def to_fp16(source: str | Path, target: str | Path) -> None:
    """Write an fp32 ONNX as fp16 with onnxruntime's own converter (``onnxruntime.transformers.float16``).

    Weights and intermediate tensors become float16, inputs and outputs stay float32 (a Cast after each float
    input, before each output); weights beyond fp16's range are clamped to its largest finite value.

    Args:
        source: the fp32 ONNX file.
        target: the fp16 file to write (atomically).

    Raises:
        onnx.checker.ValidationError: the converted graph is not valid ONNX.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    _sort_nodes(model.graph)  # the converter appends the input Casts after the nodes that read them
    onnx.checker.check_model(model, full_check=True)
    with atomic_path(target) as tmp:
        onnx.save(model, str(tmp), save_as_external_data=False)


def write(job: ExportJob) -> Artifact:
    """Write the ``onnx`` artifact for ``job.precision``: the shared fp32 ONNX, its fp16 conversion, or the int8 file.

    fp16 is ``model.fp16.onnx`` (:func:`to_fp16`), verified against the fp16 bounds. onnxruntime's CPU provider
    runs the ops it has no fp16 kernel for in fp32 (it casts around them), so on a CPU the check covers the fp16
    weights and the file's validity, and a runtime with fp16 kernels (GPU, ARM) computes it in fp16; the report
    says so. int8 is :func:`exporters.targets.onnx_int8.write_int8`.

    Raises:
        ValueError: int8 without scales.
    """
    if job.precision == "int8":
        artifact = onnx_int8.write_int8(job)
    else:
        artifact = _write_float(job)
    if job.precision != "fp32":
        artifact.fp32_peer = _peer(job)
        artifact.slower = lambda run, fp32, one: _slower(run, one, job.precision)
    return artifact


def _write_float(job: ExportJob) -> Artifact:
    import onnxruntime as ort

    fp16 = job.precision == "fp16"
    final = job.artifact(".fp16.onnx" if fp16 else ".onnx")
    if fp16:
        to_fp16(job.onnx_path, final)
    else:
        with atomic_path(final) as tmp:
            shutil.copyfile(job.onnx_path, tmp)
    result = TargetResult(
        "onnx",
        "fp16" if fp16 else "fp32",
        files=[final.name],
        size_bytes=final.stat().st_size,
        runtime=f"onnxruntime {ort.__version__}",
    )
    if fp16:
        result.notes.append(
            "fp16 weights and tensors, float32 inputs and outputs; onnxruntime's CPU provider computes the ops it has "
            "no fp16 kernel for in fp32, so this check covers the fp16 weights, not fp16 arithmetic"
        )
    return Artifact(result, [final])


TARGET = register(Target("onnx", extra="onnx", write=write, runner=runner, suffixes=(".onnx",)))
