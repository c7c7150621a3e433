"""``export()``: one call from a trained model to verified ncnn, TFLite and TensorRT artifacts.

Example:
    >>> # from exporters import export
    >>> # report = export(model, ["onnx", "ncnn", "tflite", "tensorrt"], example_input=x,
    >>> #                 calibration=batches, precision="int8", directory="exports")
    >>> # print(report)
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from exporters.core import onnx_hub
from exporters.core.checks import check_onnx_file, output_dir, probe_source
from exporters.core.inputs import as_inputs, input_count, is_multi, take
from exporters.core.job import MAX_SAMPLES, NCNN_DEPTHWISE, ONNX_WEIGHTS, OPSET, ExportJob, ExportOptions
from exporters.core.qdq import to_qdq
from exporters.core.quant import QuantTable, calibrate, table_from_spec
from exporters.core.report import ExportReport, TargetResult
from exporters.core.source import Source, as_numpy, batches_to_numpy, source_weights
from exporters.core.target import check, lookup
from exporters.core.verify import locate_int8_error
from fitslim.quantspec import QuantSpec
from fitslim.recipe import EXPORT_TARGETS, PRECISIONS

__all__ = [
    "MAX_SAMPLES",
    "NCNN_DEPTHWISE",
    "ONNX_WEIGHTS",
    "OPSET",
    "PRECISIONS",
    "TARGETS",
    "export",
    "prepare_job",
    "source_weights",
]

log = logging.getLogger(__name__)

TARGETS = EXPORT_TARGETS


def _example(source: Source, example_input: Any, calib: Any) -> Any:
    if is_multi(example_input):  # several inputs (token ids, masks): each keeps its dtype, batch first
        return as_inputs(example_input)
    if isinstance(calib, tuple):
        return take(calib, 0, 1)
    if example_input is not None:
        x = as_inputs(example_input)  # float32, or the integer dtype of token ids
        declared = source.input_shape()
        if declared is not None and x.ndim == len(declared) - 1:
            x = x[None]
        return x
    if calib is not None:
        return calib[:1]
    shape = source.input_shape()
    if shape is not None and all(d is not None for d in shape[1:]):
        return np.random.default_rng(0).random((1, *(int(d) for d in shape[1:] if d is not None)), dtype=np.float32)
    raise ValueError(
        "example_input: needed to trace this model (its input shape is not declared). Pass one input batch, "
        "e.g. example_input=x[:1], or calibration batches."
    )


def _calibration(options: ExportOptions) -> Any:
    """The calibration inputs as arrays (at most 1024), or None."""
    calibration = options.calibration
    if calibration is None:
        return None
    if is_multi(options.example_input) and is_multi(calibration):
        return take(as_inputs(calibration), 0, 1024)
    if isinstance(calibration, np.ndarray):
        return as_inputs(calibration)
    return batches_to_numpy(cast(Iterable[Any], calibration), limit=1024)


def _samples(options: ExportOptions, calib: Any, example: Any) -> Any:
    """The verification inputs: ``samples``, else the calibration inputs, else the example and random inputs."""
    if options.samples is not None:
        return as_inputs(options.samples)
    if calib is not None:
        return take(calib, 0, MAX_SAMPLES)
    if isinstance(example, tuple):  # no way to draw random token ids: the example itself
        return example
    # random inputs over the example's value range, plus the example itself
    rng = np.random.default_rng(0)
    lo, hi = float(example.min()), float(example.max())
    if hi <= lo:
        lo, hi = 0.0, 1.0
    return np.concatenate([example, rng.uniform(lo, hi, size=(7, *example.shape[1:])).astype(np.float32)])


def _int8_table(source: Source, onnx_path: Path, quant_spec: QuantSpec | None, calib: Any) -> QuantTable:
    """The int8 scales of the shared ONNX: the QuantSpec's mapped onto its nodes, else calibrated on ``calib``."""
    if quant_spec is not None:
        return table_from_spec(onnx_path, quant_spec, source_weights(source))
    nchw = (
        calib
        if source.layout == "NCHW" or isinstance(calib, tuple) or calib.ndim != 4
        else np.ascontiguousarray(calib.transpose(0, 3, 1, 2))
    )
    return calibrate(onnx_path, nchw)


def prepare_job(model: Any, options: ExportOptions, workdir: str | os.PathLike[str]) -> ExportJob:
    """Build the shared pieces every target uses: source, ONNX hub, verification samples, int8 scales.

    Args:
        model: the model being exported.
        options: the export options (:func:`export`'s arguments).
        workdir: scratch space for the shared ONNX and the targets.

    Raises:
        ValueError: int8 without ``calibration`` or ``quant_spec``; a QuantSpec that does not fit the model.
    """
    precision, quant_spec = options.precision, options.quant_spec
    source = Source.from_model(model)
    if source.framework == "onnx":
        check_onnx_file(source.model)
    calib = _calibration(options)
    if precision == "int8" and calib is None and quant_spec is None:
        raise ValueError(
            "calibration: int8 export needs calibration batches (a few hundred real inputs) or a quant_spec "
            "learned by QuantizationAware; pass one of them."
        )
    example = _example(source, options.example_input, calib)
    probe_source(source, example)
    work = Path(workdir)
    onnx_error: str | None = None
    try:
        onnx_path, notes = onnx_hub.to_onnx(source, work / "shared.onnx", example, options.opset)
    except Exception as err:  # TFLite needs no ONNX: it still runs, the ONNX-based targets report this reason
        if source.framework == "onnx":
            raise
        log.warning("the shared ONNX could not be built: %s", err)
        onnx_path, notes, onnx_error = work / "shared.onnx", [], f"{type(err).__name__}: {err}"
    declared = source.input_shape() if source.framework == "onnx" else None
    if declared and isinstance(declared[0], int) and declared[0] > 0:  # torch.onnx.export's default batch of 1
        notes.append(
            f"the ONNX file has a fixed batch of {declared[0]}: it was verified and calibrated {declared[0]} "
            "sample(s) at a time"
        )
    multi = isinstance(example, tuple)
    x = _samples(options, calib, example)
    # a QAT model is compared with its fake-quant form (what the int8 artifacts should reproduce)
    reference = as_numpy(options.reference_fn(x)) if options.reference_fn is not None else source.predict(x)
    first = example[0] if multi else example  # the input shape pnnx / trtexec see first
    shape = tuple(
        int(d)
        for d in (first.shape if source.layout == "NCHW" or first.ndim != 4 else first.transpose(0, 3, 1, 2).shape)
    )
    table = _int8_table(source, onnx_path, quant_spec, calib) if precision == "int8" and onnx_error is None else None
    if precision == "int8" and onnx_error is not None and quant_spec is not None:
        table = QuantTable([], quant_spec, "qat")  # no graph to map scales onto; TFLite calibrates itself
    return ExportJob(
        source=source,
        onnx_path=onnx_path,
        input_shape=(1, *shape[1:]),
        directory=Path(options.directory),
        workdir=work,
        options=options,
        samples=x,
        reference=reference,
        quant=table,
        calibration=calib,
        notes=notes,
        onnx_error=onnx_error,
    )


def _locate_int8_error(job: ExportJob, result: TargetResult) -> str:
    """Where a mismatched int8 artifact's error originates (see :func:`exporters.core.verify.locate_int8_error`).

    The onnx and tensorrt targets are measured on their own Q/DQ file; ncnn and TFLite on a Q/DQ ONNX with the
    same scales (their runtimes cannot save intermediate tensors), which the text says. Failures here only
    lose the explanation.
    """
    if job.onnx_error is not None or job.quant is None or not job.quant.nodes:
        return ""
    try:
        own = [f for f in result.files if f.endswith(".onnx")]
        if own:
            qdq, proxy = job.directory / own[0], ""
        else:
            import onnx

            qdq = job.workdir / "locate.qdq.onnx"
            onnx.save(to_qdq(job.onnx_path, job.quant), str(qdq))
            proxy = " (measured on a Q/DQ ONNX with the same scales)"
        where = locate_int8_error(job.onnx_path, qdq, job.samples_nchw())
        return f"{where}{proxy}" if where else ""
    except Exception as err:  # the explanation is a bonus; the mismatch itself is already reported
        log.debug("could not locate the int8 error of %s: %s", result.target, err)
        return ""


def _verified_on(job: ExportJob) -> str:
    """Which inputs verified the artifacts, for the report: e.g. ``64 validation samples``."""
    options = job.options
    calibrated = options.precision == "int8" and options.quant_spec is None
    n = input_count(job.samples)
    if options.samples is not None:
        return f"{n} {options.samples_from or 'given samples'}"
    if job.calibration is not None and calibrated:
        return f"{n} calibration samples (the int8 scales were computed on these inputs)"
    if job.calibration is not None:
        return f"{n} of the calibration inputs"
    if isinstance(job.samples, tuple):
        return f"{n} example input(s)"
    return f"{n} inputs: the example and random inputs over its value range"


def export(
    model: Any,
    targets: Sequence[str] = ("onnx",),
    example_input: Any = None,
    calibration: Iterable[Any] | npt.ArrayLike | None = None,
    precision: str = "fp32",
    quant_spec: QuantSpec | None = None,
    directory: str | os.PathLike[str] = "exports",
    verify: bool = True,
    threads: int = 2,
    progress: Callable[[str], None] | None = None,
    samples: npt.ArrayLike | None = None,
    reference_fn: Callable[[npt.NDArray[np.float32]], npt.ArrayLike] | None = None,
    tflite_int8: Callable[[Any, QuantSpec, npt.NDArray[np.float32]], bytes] | None = None,
    ncnn_depthwise: str = "int8",
    onnx_weights: str = "auto",
    samples_from: str = "",
    latency: bool = True,
    opset: int = OPSET,
) -> ExportReport:
    """Export ``model`` to each target, verify every artifact in its runtime, and return the report.

    A failing target becomes a ``failed`` row with its reason; the other targets are still produced, and
    the model is never modified. Artifacts are written under temporary names and renamed when complete.

    Args:
        model: a ``torch.nn.Module``, a Keras 3 or tf-keras model, or a path to an ``.onnx`` file.
        targets: any of ``"onnx"``, ``"ncnn"``, ``"tflite"``, ``"tensorrt"``.
        example_input: one input batch in the model's layout (NCHW torch, NHWC Keras); needed for torch.
            A tuple (or dict, values in order) of arrays for a model with several inputs; integer inputs
            (token ids, masks) keep their dtype, and ``calibration`` / ``samples`` are then tuples too.
        calibration: input batches (arrays, tensors, ``(x, y)`` tuples); required for int8 without a QuantSpec.
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        quant_spec: scales learned by QAT; int8 artifacts then use them and are not re-calibrated.
        directory: where artifacts and ``report.json`` / ``report.md`` go.
        verify: run each artifact in its runtime and compare with the model; with ``False`` each written
            artifact's status is ``unverified`` (not ``ok``).
        threads: runtime threads for verification and latency.
        progress: called with a short message as each step starts.
        samples: verification inputs (e.g. a test split); default: the calibration inputs (at most 256),
            else random inputs over the example's value range.
        reference_fn: computes the reference outputs the artifacts are compared with (default: the model
            itself); the QAT callbacks pass their fake-quant model here.
        tflite_int8: a caller-supplied int8 TFLite conversion ``(model, spec, representative) -> bytes``
            used for Keras models with a learned spec (the Keras QAT callback provides it).
        ncnn_depthwise: ``"int8"`` (default: every weighted layer of the ncnn int8 model is int8, what ARM
            devices run fastest) or ``"float"`` (depthwise and grouped convolutions stay fp32 inside the int8
            model: on x86, ncnn's int8 depthwise kernel is slower than its fp32 one). Only the ncnn int8
            artifact changes.
        onnx_weights: how the ``onnx`` int8 artifact stores its weights: ``"auto"`` (default: for the CPU that
            exports, :func:`exporters.targets.onnx_int8.weight_type`), ``"int8"`` (fastest on ARM and on x86 with VNNI;
            onnxruntime's kernels saturate on x86 CPUs without VNNI) or ``"uint8"`` (the same int8 grid around
            128, exact on every CPU, slower where int8 weights are exact). Choose for the CPU that will run it
            when that is not the exporting one. Only the ``onnx`` int8 artifact changes.
        samples_from: what ``samples`` are, for the report's "verified on" line (e.g. ``"validation samples"``).
        latency: the latency verdict below (default ``True``). ``False`` skips it and the fp32 peers it builds (a
            second TFLite conversion of the model, a pnnx run for fp16 ncnn), for a caller that times the
            artifacts itself; each verified row keeps its own ``latency_ms``, and the rows' verdict fields stay
            empty.
        opset: the ONNX opset of the shared ONNX the torch / Keras model is converted to (default 18), and so of the
            ``onnx`` and ``tensorrt`` artifacts and of the graph pnnx converts for ncnn; 13 to 21 (13 is the lowest
            with per-channel Q/DQ, what TensorRT needs). An ``.onnx`` source keeps its own opset.

    Every fp16 / int8 artifact is also timed against the fp32 artifact of its target in one interleaved run
    (:mod:`exporters.core.latency`): its row gets ``fp32_latency_ms``, ``latency_ratio`` and ``latency_verdict``, and
    one slower than fp32 on this machine gets a ``WARNING`` note naming the costliest layers and what helps.

    A Keras model after ``keras_callbacks.QuantizationAware``: pass what the fit learned explicitly,
    ``export(model, ..., precision="int8", **qat.result.export_arguments())`` (its QuantSpec, the fake-quant
    reference outputs and the TFLite conversion that keeps the learned ranges); nothing is read off the model.

    Raises:
        ValueError: unknown target, precision or model type; int8 without calibration or QuantSpec.
        TypeError: a ``latency`` that is not a bool.
    """
    options = ExportOptions(
        targets, example_input, calibration, precision, quant_spec, directory, verify, threads, progress, samples,
        reference_fn, tflite_int8, ncnn_depthwise, onnx_weights, samples_from, latency, opset,
    )  # fmt: skip
    return _export(model, options)


def _export(model: Any, options: ExportOptions) -> ExportReport:
    """:func:`export` with its options built and checked: the shared pieces once, then every target in turn."""
    precision = options.precision
    say = options.progress or (lambda msg: log.info("%s", msg))
    out_dir = output_dir(options.directory)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".fitslim-", dir=out_dir))
    try:
        say("building the shared ONNX")
        job = prepare_job(model, options, work)
        job.directory = out_dir
        report = ExportReport(
            source=job.source.description,
            directory=str(out_dir),
            verification=_verified_on(job) if options.verify else "",
        )
        for name in options.targets:
            say(f"exporting {name} ({precision})")
            target = lookup(name)
            try:
                if job.onnx_error is not None and target.needs_onnx:
                    raise RuntimeError(f"the shared ONNX this target starts from could not be built: {job.onnx_error}")
                result = check(job, target, target.write(job))
            except ImportError as err:
                hint = (
                    ""
                    if (err.name or "").startswith("exporters") or "pip install" in str(err)
                    else f". Install it with: pip install 'fitslim[{target.extra}]'"
                )
                result = TargetResult(name, precision, status="failed", reason=f"{err}{hint}")
            except Exception as err:  # one target failing must not lose the others
                log.exception("export to %s failed", name)
                result = TargetResult(name, precision, status="failed", reason=f"{type(err).__name__}: {err}")
            if result.status == "mismatch" and precision == "int8" and job.quant is not None:
                where = _locate_int8_error(job, result)
                if where:
                    result.reason = f"{result.reason}; {where}"
            if job.quant is not None and not result.scales and result.status == "ok":
                result.scales = job.quant.describe()
            if not options.verify and result.status == "ok":  # written, but nothing ran it: never reported as checked
                result.status = "unverified"
                result.reason = "written, not run in its runtime (verify=False): nothing compared it with the source"
            report.results.append(result)
        if job.notes and report.results:
            report.results[0].notes.extend(job.notes)
        if job.quant is not None:
            job.quant.spec.save(out_dir / "quant_spec.json")
        report.save(out_dir)
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a refused export leaves no empty folder
