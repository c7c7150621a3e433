"""The ``tensorrt`` target: a TensorRT-ready ONNX (explicit Q/DQ for int8), verified, and the engine where possible.

- ``int8``: ``model.int8.qdq.onnx``, the shared ONNX with symmetric int8 Q/DQ (:func:`exporters.core.qdq.to_qdq`),
  checked with ``onnx.checker`` (full check) and :func:`exporters.core.qdq.lint_qdq` (TensorRT's rules).
- ``fp32`` / ``fp16``: ``model.trt.onnx``, the shared fp32 ONNX; fp16 is TensorRT's builder flag (or ModelOpt
  AutoCast on 11.x) at engine build, so an fp16 row whose engine was not built and run here is ``unverified``: the
  file written is fp32 (verified as such), the fp16 engine is nobody's check yet.

Each file is verified in onnxruntime against the source model. The engine itself needs TensorRT and a
CUDA GPU: where both exist the engine is built with TensorRT's Python API (strongly typed for Q/DQ and
fp32, so the Q/DQ nodes alone set the int8 layers), written as ``model.<precision>.engine`` and run on the
same samples; elsewhere the report carries the ``trtexec`` command that builds it on the target.

The writer (:func:`write`) writes the ONNX file; the core verifies it through :func:`runner` (int8: each Q/DQ group
computed in float from its int8 values, as TensorRT does; timed with onnxruntime's int8 kernels); the engine is built
and, where it runs, verified with the core's :func:`exporters.core.target.measure` as the artifact's last check.

Example:
    >>> # result = export_tensorrt(job)      # job from exporters.core.export.prepare_job(..., precision="int8")
    >>> # result.files                       # ['model.int8.qdq.onnx']
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from exporters.core.job import ExportJob
from exporters.core.onnx_hub import OrtRunner
from exporters.core.qdq import lint_qdq, qdq_counts, residual_add_scales, to_qdq
from exporters.core.quant import QuantTable
from exporters.core.report import TargetResult
from exporters.core.target import Artifact, Runner, Target, check, measure, register
from fitslim.fileio import atomic_path
from fitslim.recipe import PRECISIONS

__all__ = [
    "ENGINE_MAX_BATCH",
    "TARGET",
    "EngineRunner",
    "build_engine",
    "export_tensorrt",
    "runner",
    "tensorrt_available",
    "trtexec_command",
    "write",
]

log = logging.getLogger(__name__)

#: Largest batch of the engine's optimization profile (the ONNX batch axis is dynamic).
ENGINE_MAX_BATCH = 64


def tensorrt_available() -> tuple[bool, str]:
    """Whether a TensorRT engine can be built here, and why not.

    CUDA is asked of torch when torch is installed (without importing tensorrt's CUDA context), else of
    TensorRT itself (creating a builder fails without a GPU).
    """
    if importlib.util.find_spec("tensorrt") is None:
        return False, "tensorrt is not installed"
    if importlib.util.find_spec("torch") is not None:
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA GPU (torch.cuda.is_available() is False)"
        return True, ""
    try:
        import tensorrt as trt

        trt.Builder(trt.Logger(trt.Logger.ERROR))
    except Exception as err:  # no driver / no device: TensorRT raises its own error types
        return False, f"TensorRT cannot create a builder ({type(err).__name__}: {err})"
    return True, ""


def _inputs_spec(onnx_path: Path) -> list[tuple[str, list[int | None]]]:
    """Every ONNX graph input's name and dims (None for a symbolic dimension)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    return [
        (i.name, [d.dim_value if d.HasField("dim_value") else None for d in i.type.tensor_type.shape.dim])
        for i in model.graph.input
        if i.name not in inits
    ]


def _shape_flags(
    name: str,
    dims: list[int | None],
    input_shape: tuple[int, ...],
    max_batch: int,
    more_inputs: Sequence[tuple[str, list[int | None]]] = (),
) -> str:
    if not dims or dims[0] is not None:
        return ""
    rests = [(name, "x".join(str(int(d)) for d in input_shape[1:]))]
    rests += [(n, "x".join(str(int(d or 1)) for d in ds[1:])) for n, ds in more_inputs]

    def shapes(batch: int) -> str:
        return ",".join(f"{n}:{batch}x{r}" if r else f"{n}:{batch}" for n, r in rests)

    return f" --minShapes={shapes(1)} --optShapes={shapes(1)} --maxShapes={shapes(max_batch)}"


def trtexec_command(
    precision: str,
    onnx_name: str,
    input_name: str,
    dims: list[int | None],
    input_shape: tuple[int, ...],
    engine_name: str,
    max_batch: int = ENGINE_MAX_BATCH,
    more_inputs: Sequence[tuple[str, list[int | None]]] = (),
) -> str:
    """The ``trtexec`` command(s) that build the engine of ``onnx_name`` on the target.

    int8 (explicit Q/DQ) and fp32 build strongly typed: ``--stronglyTyped`` is required on TensorRT 10.x
    and the (accepted, no-op) default on 11.x; ``--int8``/``--fp16`` must not be given with Q/DQ
    (TensorRT 11 removed them; the Q/DQ nodes set the precision). fp32 adds ``--noTF32`` so the engine
    really computes in fp32. fp16 needs ``--fp16`` on 10.x; 11.x builds only strongly typed networks,
    so the graph is converted to fp16 first with ModelOpt AutoCast.
    """
    shapes = _shape_flags(input_name, dims, input_shape, max_batch, more_inputs)
    if precision == "int8":
        return f"trtexec --onnx={onnx_name} --stronglyTyped{shapes} --saveEngine={engine_name}"
    if precision == "fp32":
        return f"trtexec --onnx={onnx_name} --stronglyTyped --noTF32{shapes} --saveEngine={engine_name}"
    if precision == "fp16":
        fp16_onnx = onnx_name.replace(".trt.onnx", ".fp16.onnx")
        return (
            f"trtexec --onnx={onnx_name} --fp16{shapes} --saveEngine={engine_name} (TensorRT 10.x); on TensorRT 11.x: "
            f"python -m modelopt.onnx.autocast --onnx_path {onnx_name} --output_path {fp16_onnx} && "
            f"trtexec --onnx={fp16_onnx}{shapes} --saveEngine={engine_name}"
        )
    raise ValueError(f"precision: unknown {precision!r}; choose one of {list(PRECISIONS)}.")


def build_engine(
    onnx_path: Path, precision: str, input_shape: tuple[int, ...], max_batch: int = ENGINE_MAX_BATCH
) -> bytes:
    """Build a serialized TensorRT engine from an ONNX file with TensorRT's Python API (10.x and 11.x).

    Q/DQ (int8) and fp32 networks are created strongly typed; fp16 sets ``BuilderFlag.FP16`` where it
    still exists (10.x). A dynamic batch axis gets one optimization profile, batch 1 to ``max_batch``.

    Raises:
        RuntimeError: the ONNX parser rejects the file (its errors are listed), fp16 on a TensorRT without
            the FP16 flag (11.x: convert with ModelOpt AutoCast first), or the build fails.
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if precision != "fp16" and strongly is not None:
        flags |= 1 << int(strongly)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    if precision == "fp16":
        fp16 = getattr(trt.BuilderFlag, "FP16", None)
        if fp16 is None:
            raise RuntimeError(
                f"TensorRT {trt.__version__} builds only strongly typed networks (no FP16 flag); convert the ONNX "
                "to fp16 with ModelOpt AutoCast (python -m modelopt.onnx.autocast) and build that."
            )
        config.set_flag(fp16)
    elif precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32, not TF32 tensor cores
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    if any(int(d) < 0 for inp in inputs for d in inp.shape):
        profile = builder.create_optimization_profile()
        for i, inp in enumerate(inputs):  # the batch axis is dynamic, the others are fixed by the export
            rest = tuple(int(d) for d in input_shape[1:]) if i == 0 else tuple(max(int(d), 1) for d in inp.shape[1:])
            profile.set_shape(inp.name, (1, *rest), (1, *rest), (max_batch, *rest))
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(
            f"TensorRT could not build an engine from {onnx_path.name} ({precision}); see its log above."
        )
    return bytes(serialized)


class EngineRunner:
    """Runs a serialized single-input, single-output engine on NumPy batches (CUDA buffers through torch).

    Args:
        engine_bytes: a serialized engine from :func:`build_engine`.
        max_batch: the largest batch of its optimization profile; larger inputs run in chunks.

    Raises:
        RuntimeError: the engine does not deserialize.
    """

    def __init__(self, engine_bytes: bytes, max_batch: int = ENGINE_MAX_BATCH) -> None:
        import tensorrt as trt
        import torch

        self._trt, self._torch, self.max_batch = trt, torch, max_batch
        self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine.")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.input = self.inputs[0]
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)

    def __call__(self, x: Any) -> npt.NDArray[np.float32]:
        """The engine's output for ``x`` (NCHW float32, or a tuple with one array per engine input).

        Raises:
            RuntimeError: an execution fails.
        """
        torch, trt = self._torch, self._trt
        stream = torch.cuda.current_stream()
        out_type = trt.nptype(self.engine.get_tensor_dtype(self.output))
        arrays = x if isinstance(x, tuple) else (x,)
        chunks = []
        for start in range(0, len(arrays[0]), self.max_batch):
            buffers = []  # the input buffers stay alive until the run is done
            for name, a in zip(self.inputs, arrays, strict=True):
                dtype = trt.nptype(self.engine.get_tensor_dtype(name))
                xb = torch.from_numpy(np.ascontiguousarray(a[start : start + self.max_batch], dtype=dtype)).cuda()
                self.context.set_input_shape(name, tuple(xb.shape))
                self.context.set_tensor_address(name, xb.data_ptr())
                buffers.append(xb)
            shape = tuple(self.context.get_tensor_shape(self.output))
            yb = torch.from_numpy(np.empty(shape, dtype=out_type)).cuda()
            self.context.set_tensor_address(self.output, yb.data_ptr())
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT engine execution failed.")
            stream.synchronize()
            chunks.append(yb.cpu().numpy().astype(np.float32))
        return np.concatenate(chunks)

    def timed(self, one: Any) -> Callable[[], object]:
        """One run of ``one``, host-to-device and device-to-host copies included."""
        return lambda: self(one)


def runner(paths: Sequence[Path], precision: str, threads: int, batch: int = 256) -> Runner:
    """The TensorRT-ready ONNX (``paths[0]``) in onnxruntime; int8 outputs as TensorRT computes them (``exact``), timed
    on onnxruntime's int8 kernels."""
    return OrtRunner(Path(paths[0]), threads, batch, exact=precision == "int8")


def _write_qdq(job: ExportJob, table: QuantTable, final: Path) -> list[str]:
    """Write the Q/DQ model (checked and linted) atomically; return the report notes."""
    import onnx

    model = onnx.load(str(job.onnx_path))
    residual = residual_add_scales(model, table, job.calibration_nchw())
    qdq = to_qdq(model, table, residual_inputs=residual)
    onnx.checker.check_model(qdq, full_check=True)
    problems = lint_qdq(qdq, [q.node.node for q in table.nodes])
    if problems:
        raise ValueError("the Q/DQ model breaks TensorRT's explicit-quantization rules: " + "; ".join(problems))
    with atomic_path(final) as tmp:
        onnx.save(qdq, str(tmp), save_as_external_data=False)
    c = qdq_counts(qdq)
    notes = [
        f"Q/DQ: {c['QuantizeLinear']} QuantizeLinear, {c['DequantizeLinear']} DequantizeLinear "
        f"({c['weight_dq']} int8 weights per output channel, {c['activation_dq']} per-tensor activations); "
        "symmetric int8, zero point 0, round half to even; bias fp32"
    ]
    if residual:
        words = {"reused": "reused from the layer reading the tensor", "calibration": "measured on calibration data"}
        words["downstream"] = "the next quantized layer's input scale"
        origins = {o: sum(r.origin == o for r in residual) for o in words}
        how = ", ".join(f"{n} {words[o]}" for o, n in origins.items() if n)
        roles = {role: sum(r.role == role for r in residual) for role in ("skip", "main")}
        what = " and ".join(f"{n} {role}" for role, n in roles.items() if n)
        notes.append(f"residual Adds: {what} input(s) quantized, scales {how}")
    return notes


def export_tensorrt(job: ExportJob) -> TargetResult:
    """The ``tensorrt`` target at ``job.precision``: written, verified in onnxruntime, the engine where possible.

    Raises:
        ValueError, onnx.checker.ValidationError, RuntimeError: as :func:`write`, or TensorRT rejects the model.
    """
    return check(job, TARGET, write(job))


def write(job: ExportJob) -> Artifact:
    """Write the TensorRT-ready ONNX for ``job.precision``; the engine is built in the artifact's last check.

    Raises:
        ValueError: int8 without scales, or a Q/DQ model that fails the lint.
        onnx.checker.ValidationError: the Q/DQ model is not valid ONNX.
        RuntimeError: TensorRT is present but rejects the model or fails to build it.
    """
    import onnxruntime as ort

    notes: list[str] = []
    scales = ""
    if job.precision == "int8":
        if job.quant is None:
            raise ValueError(
                "precision 'int8' needs int8 scales (job.quant); build the job with calibration or a quant_spec."
            )
        final = job.artifact(".int8.qdq.onnx")
        notes += _write_qdq(job, job.quant, final)
        scales = job.quant.describe()
    else:
        final = job.artifact(".trt.onnx")
        with atomic_path(final) as tmp:
            shutil.copyfile(job.onnx_path, tmp)
    result = TargetResult(
        "tensorrt",
        job.precision,
        files=[final.name],
        size_bytes=final.stat().st_size,
        runtime=f"onnxruntime {ort.__version__} (TensorRT engine: not built here)",
        scales=scales,
        notes=notes,
    )

    def finish() -> None:
        engine_ran = _engine(job, final, result, job.samples_nchw())
        if job.precision == "fp16" and not engine_ran and result.status == "ok":
            checked = (
                f"onnxruntime verified it, max relative error {result.max_rel_error:.1e}"
                if result.max_rel_error is not None
                else "not run"
            )
            result.status = "unverified"
            result.reason = (
                f"{final.name} is the fp32 ONNX ({checked}); fp16 is TensorRT's builder flag, and no fp16 engine was "
                "built and run here: build and check it on the target (see the notes)"
            )
        if job.verify and job.precision == "int8" and not engine_ran:
            result.notes.append(
                "verified with onnxruntime computing each Q/DQ group in float from its int8 values (TensorRT's int8 "
                "arithmetic); latency is onnxruntime's int8 CPU kernels on the Q/DQ graph, not a TensorRT int8 engine's"
            )
        if job.verify and job.options.latency and job.precision != "fp32" and result.latency_ms is not None:
            result.notes.append(
                "no latency verdict against fp32: onnxruntime's CPU time of this file says nothing about a TensorRT "
                "engine; compare engines with trtexec on the GPU"
            )

    return Artifact(result, [final], finish=finish)


def _engine(job: ExportJob, onnx_file: Path, result: TargetResult, x: npt.NDArray[np.float32]) -> bool:
    """Build (and where torch has CUDA, run) the engine, or note the command that builds it on the target.

    Returns:
        True when the engine ran and the result's errors and latency are the engine's.
    """
    engine_file = job.artifact(f".{job.precision}.engine")
    (input_name, dims), *more = _inputs_spec(onnx_file)
    cmd = trtexec_command(
        job.precision, onnx_file.name, input_name, dims, job.input_shape, engine_file.name, more_inputs=more
    )
    ok, why = tensorrt_available()
    if not ok:
        result.notes.append(
            f"TensorRT engine not built: tensorrt/CUDA not available here ({why}); build it on the target with: {cmd}"
        )
        log.info("TensorRT engine not built (%s)", why)
        return False
    import tensorrt as trt

    if job.precision == "fp16" and getattr(trt.BuilderFlag, "FP16", None) is None:
        result.notes.append(f"TensorRT {trt.__version__} has no FP16 builder flag; build the fp16 engine with: {cmd}")
        return False
    data = build_engine(onnx_file, job.precision, job.input_shape)
    with atomic_path(engine_file) as tmp:
        tmp.write_bytes(data)
    result.files.append(engine_file.name)
    result.size_bytes = (result.size_bytes or 0) + engine_file.stat().st_size
    result.runtime = f"TensorRT {trt.__version__}"
    log.info("TensorRT engine written: %s (%d bytes)", engine_file.name, len(data))
    if not job.verify:
        return False
    if importlib.util.find_spec("torch") is None:
        result.notes.append("engine built but not run here: running it needs torch with CUDA for the buffers")
        return False
    onnx_err, onnx_top1 = result.max_abs_error, result.top1_agreement
    measure(job, result, EngineRunner(data), x)
    result.notes.append(f"onnxruntime on {onnx_file.name}: max abs error {onnx_err}, top-1 agreement {onnx_top1}")
    result.notes.append("engine latency includes the host-to-device and device-to-host copies")
    return True


TARGET = register(Target("tensorrt", extra="tensorrt", write=write, runner=runner, suffixes=(".onnx",)))
