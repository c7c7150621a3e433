"""The ``ncnn`` target: pnnx converts the shared ONNX, ncnn's Python bindings verify the artifact.

fp32 and fp16 come straight from the ``pnnx`` binary (``fp16=0`` / ``fp16=1``, which stores the weights
as fp16 in the ``.bin``); int8 is written by :mod:`exporters.targets.ncnn_int8` from pnnx's fp32 pair and the
job's :class:`~exporters.core.quant.QuantTable`. Artifacts are ``model.ncnn.param``/``.bin``,
``model.fp16.ncnn.param``/``.bin`` and ``model.int8.ncnn.param``/``.bin``. Each pair is built and
verified in a scratch folder under ``job.workdir``, then installed together (temporary names beside the
destination, then renames; a failed second rename removes the first), so the export directory never
holds half a model or one ncnn could not run.

The writer (:func:`write`) leaves the pair in scratch; the core verifies it there through :func:`runner` and installs
it (:func:`exporters.core.target.check`); :func:`export_ncnn` does both.

Example:
    >>> # result = export_ncnn(job)      # job from exporters.core.export.prepare_job(...)
    >>> # result.files  ->  ['model.int8.ncnn.param', 'model.int8.ncnn.bin']
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from exporters.core.inputs import Inputs
from exporters.core.job import ExportJob
from exporters.core.latency import slower_hint
from exporters.core.onnx_hub import global_pools
from exporters.core.report import TargetResult
from exporters.core.target import Artifact, Runner, Target, check, register
from exporters.core.verify import compare, judge
from exporters.targets.ncnn_int8 import NcnnLayer, NcnnParam, write_int8

__all__ = [
    "PRECISION_SUFFIX",
    "TARGET",
    "NcnnModel",
    "NcnnRunner",
    "costly_layers",
    "export_ncnn",
    "fix_reduction_axes",
    "global_pools",
    "keep_for_inspection",
    "run_pnnx",
    "runner",
    "strip_nan_guards",
    "unknown_layers",
    "write",
]

log = logging.getLogger(__name__)

#: precision → artifact suffix (before ``.param`` / ``.bin``)
PRECISION_SUFFIX = {"fp32": ".ncnn", "fp16": ".fp16.ncnn", "int8": ".int8.ncnn"}

_INSTALL_HINT = "pip install 'fitslim[ncnn]'"

#: seconds pnnx may take on one model
PNNX_TIMEOUT_S = 900


def _ncnn() -> Any:
    try:
        import ncnn
    except ImportError as err:
        raise ImportError(
            f"the ncnn target needs the ncnn Python bindings (ncnn==1.0.20261020): {_INSTALL_HINT}"
        ) from err
    return ncnn


def _pnnx_exec() -> str:
    try:
        import pnnx
    except ImportError as err:
        raise ImportError(f"the ncnn target needs the pnnx converter (pnnx==20261020): {_INSTALL_HINT}") from err
    path = str(getattr(pnnx, "EXEC_PATH", ""))
    if not path or not os.path.isfile(path):
        raise ImportError(
            f"the pnnx package has no converter binary (EXEC_PATH={path!r}); reinstall it: {_INSTALL_HINT}"
        )
    return path


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def run_pnnx(
    onnx_path: str | os.PathLike[str],
    input_shape: tuple[int, ...],
    scratch: str | os.PathLike[str],
    fp16: bool,
) -> tuple[Path, Path]:
    """Convert an ONNX file with the ``pnnx`` binary; every side file stays in ``scratch``.

    Args:
        onnx_path: the ONNX model (copied into ``scratch`` first, so pnnx's ``*.pnnxsim.onnx`` lands there).
        input_shape: the input shape with batch 1, e.g. ``(1, 3, 160, 160)``.
        scratch: an empty-or-new working folder.
        fp16: store weights as fp16 (``fp16=1``).

    Returns:
        The ``.param`` and ``.bin`` paths inside ``scratch``.

    Raises:
        ImportError: pnnx is not installed.
        RuntimeError: pnnx exited with an error or wrote no model (with the last lines of its output).
    """
    exe = _pnnx_exec()
    work = Path(scratch)
    work.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, work / "model.onnx")
    param, binary = work / "model.ncnn.param", work / "model.ncnn.bin"
    cmd = [
        exe,
        "model.onnx",
        f"inputshape=[{','.join(str(int(d)) for d in input_shape)}]",
        f"fp16={int(fp16)}",
        f"ncnnparam={param.name}",
        f"ncnnbin={binary.name}",
        "ncnnpy=model_ncnn.py",
        "pnnxparam=model.pnnx.param",
        "pnnxbin=model.pnnx.bin",
        "pnnxpy=model_pnnx.py",
        "pnnxonnx=model.pnnx.onnx",
    ]
    log.info("running pnnx on %s (input %s, fp16=%d)", onnx_path, list(input_shape), int(fp16))
    try:
        proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, errors="replace", timeout=PNNX_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"pnnx did not finish within {PNNX_TIMEOUT_S} s on {onnx_path}") from err
    output = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode != 0:
        how = f"exit code {proc.returncode}"
        if proc.returncode < 0:
            try:
                how = f"signal {signal.Signals(-proc.returncode).name}"
            except ValueError:
                how = f"signal {-proc.returncode}"
        raise RuntimeError(f"pnnx failed ({how}) on {onnx_path}; its last output:\n{_tail(output)}")
    if not param.is_file() or not binary.is_file() or param.stat().st_size == 0:
        raise RuntimeError(f"pnnx exited 0 but wrote no ncnn model for {onnx_path}; its last output:\n{_tail(output)}")
    fix_reduction_axes(param)
    lower_unbind(param, work / "model.pnnx.param")
    return param, binary


_ONE_AXIS = re.compile(r"(?<= )-23303=(-?\d+)(?= |$)")


def fix_reduction_axes(param: str | os.PathLike[str]) -> int:
    """Repair one-axis ``Reduction`` layers in a pnnx-written ``.param`` (in place); returns how many.

    pnnx writes ``torch.mean(dim=1)`` (a LayerNorm over channels as tf2onnx writes it, e.g. ConvNeXt) as
    ``-23303=0``: the axis without the array's count, which ncnn reads as *no* axes, so the mean is wrong. An
    array is ``-23303=count,axis,...``; a bare value with ``1=0`` (not reduce-all) is the lone axis.
    """
    path = Path(param)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    fixed = 0
    for i, line in enumerate(lines):
        if line.startswith("Reduction ") and " 1=0 " in f"{line.rstrip()} " and _ONE_AXIS.search(line):
            lines[i] = _ONE_AXIS.sub(lambda m: f"-23303=1,{m.group(1)}", line)
            fixed += 1
    if fixed:
        path.write_text("".join(lines), encoding="utf-8")
        log.debug("pnnx param: %d one-axis Reduction layer(s) given their axes count", fixed)
    return fixed


_SHAPE = re.compile(r"#(\S+?)=\(([\d,]*)\)")


def _pnnx_shapes(line: str) -> dict[str, list[int]]:
    """Blob name → static shape from a pnnx.param line's ``#blob=(d0,d1,...)f32`` annotations."""
    return {m.group(1): [int(d) for d in m.group(2).split(",") if d] for m in _SHAPE.finditer(line)}


def lower_unbind(param: str | os.PathLike[str], pnnx_param: str | os.PathLike[str]) -> int:
    """Lower ``torch.unbind`` over a leading axis ahead of the batch into ncnn ``Slice`` + ``Reshape`` (in place).

    ``qkv.reshape(b, n, 3, heads, d).permute(2, 0, 3, 1, 4)`` then ``q, k, v = ...`` (or ``.unbind(0)``) moves
    the batch to the second axis; pnnx then leaves a ``Tensor.reshape`` (``*_ncnnbatch2dim_*``) and a
    ``torch.unbind`` that ncnn does not have. With batch 1 the ncnn blob is the tensor without that axis, so
    the unbind is a ``Slice`` along ncnn's first axis, each piece reshaped to its static shape (read from
    pnnx.param). Returns the number of unbinds lowered; anything else is left as it was.
    """
    path, pnnx_path = Path(param), Path(pnnx_param)
    if not pnnx_path.is_file():
        return 0
    text = path.read_text(encoding="utf-8")
    if "torch.unbind" not in text:
        return 0
    info: dict[str, tuple[int, list[int], list[list[int]]]] = {}
    for line in pnnx_path.read_text(encoding="utf-8").splitlines():
        tok = line.split()
        if len(tok) < 4 or tok[0] != "torch.unbind":
            continue
        nb, nt = int(tok[2]), int(tok[3])
        bottoms, tops = tok[4 : 4 + nb], tok[4 + nb : 4 + nb + nt]
        shapes = _pnnx_shapes(line)
        dim = next((int(t.split("=", 1)[1]) for t in tok if t.startswith("dim=")), None)
        if dim is None or len(bottoms) != 1 or bottoms[0] not in shapes or any(t not in shapes for t in tops):
            continue
        info[tok[1]] = (dim, shapes[bottoms[0]], [shapes[t] for t in tops])
    net = NcnnParam.parse(text, str(path))
    producer = {top: i for i, layer in enumerate(net.layers) for top in layer.tops}
    consumers = net.consumers()
    layers = list(net.layers)
    lowered = 0
    for layer in net.layers:
        found = info.get(layer.name)
        if layer.type != "torch.unbind" or found is None or len(layer.bottoms) != 1:
            continue
        dim, shape, outs = found
        # the one case handled: unbind over axis 0 of (K, 1, ...) with every piece (1, ...): batch 1 at axis 1
        if dim != 0 or len(shape) < 2 or shape[1] != 1 or len(shape) > 5 or any(o != shape[1:] for o in outs):
            continue
        if len(outs) != shape[0] or len(layer.tops) != shape[0]:
            continue
        src = layer.bottoms[0]
        fix = layers[producer[src]] if src in producer else None
        if fix is not None and fix.type == "Tensor.reshape" and "ncnnbatch2dim" in fix.name:
            if len(consumers.get(src, [])) != 1 or len(fix.bottoms) != 1:
                continue
            layers.remove(fix)  # identity on the ncnn blob: the batch axis it would move is not there
            src = fix.bottoms[0]
        pieces = [f"{layer.name}_piece{i}" for i in range(len(layer.tops))]
        sl = NcnnLayer(
            "Slice",
            layer.name,
            [src],
            pieces,
            {"-23300": ",".join([str(len(pieces))] + ["-233"] * len(pieces)), "1": "0"},
        )
        at = layers.index(layer)
        reshapes = []
        ncnn_shape = outs[0][1:]  # the piece without its batch axis, outermost first
        keys = {1: ["0"], 2: ["1", "0"], 3: ["2", "1", "0"], 4: ["2", "11", "1", "0"]}[len(ncnn_shape)]
        for piece, top in zip(pieces, layer.tops, strict=True):
            params = {k: str(d) for k, d in zip(keys, ncnn_shape, strict=True)}
            reshapes.append(NcnnLayer("Reshape", f"{piece}_reshape", [piece], [top], params))
        layers[at : at + 1] = [sl, *reshapes]
        lowered += 1
    if lowered:
        net.layers = layers
        blobs = {b for layer in layers for b in (*layer.bottoms, *layer.tops)}
        net.blob_count = len(blobs)
        path.write_text(net.dumps(), encoding="utf-8")
        log.debug("pnnx param: %d torch.unbind layer(s) lowered to Slice + Reshape", lowered)
    return lowered


class NcnnModel:
    """An ncnn ``Net`` loaded for verification: one single-sample extraction per input.

    Args:
        param: the ``.param`` path.
        bin_path: the ``.bin`` path.
        precision: ``fp32`` (fp16 storage/arithmetic off, so fp32 is exact), ``fp16`` or ``int8``.
        threads: ``opt.num_threads``.
        options: further ``ncnn.Option`` fields to set, e.g. ``{"use_packing_layout": False}``.

    Raises:
        ImportError: ncnn is not installed.
        ValueError: an unknown option.
        RuntimeError: ncnn cannot load the files.
    """

    def __init__(
        self,
        param: str | os.PathLike[str],
        bin_path: str | os.PathLike[str],
        precision: str,
        threads: int,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        ncnn = _ncnn()
        self._ncnn = ncnn
        graph = NcnnParam.parse(Path(param).read_text(encoding="utf-8"), str(param))
        self.input_name = graph.input_blob()
        self.output_name = graph.output_blob()
        net = ncnn.Net()
        fp16 = precision == "fp16"
        # options before loading: pipelines (e.g. gemm tiling by thread count) are built at load time
        net.opt.num_threads = int(threads)
        net.opt.use_vulkan_compute = False
        net.opt.use_fp16_storage = fp16
        net.opt.use_fp16_packed = fp16
        net.opt.use_fp16_arithmetic = fp16
        net.opt.use_bf16_storage = False
        net.opt.use_int8_inference = precision == "int8"
        for key, value in (options or {}).items():
            if not hasattr(net.opt, key):
                raise ValueError(f"options: ncnn.Option has no field {key!r}")
            setattr(net.opt, key, value)
        if net.load_param(str(param)) != 0:
            raise RuntimeError(f"ncnn could not load {param}")
        if net.load_model(str(bin_path)) != 0:
            raise RuntimeError(f"ncnn could not load the weights {bin_path} for {param}")
        self.net = net

    def __call__(self, sample: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Run one sample without its batch axis (CHW for images); returns ncnn's output as an array.

        Raises:
            RuntimeError: ncnn reports an error.
        """
        x = np.ascontiguousarray(sample, dtype=np.float32)
        ex = self.net.create_extractor()
        # an owned copy: a layer running in place on the input (a scalar BinaryOp such as Keras' Rescaling)
        # crashes ncnn (SIGSEGV) when the input Mat only wraps the NumPy buffer
        if ex.input(self.input_name, self._ncnn.Mat(x).clone()) != 0:
            raise RuntimeError(f"ncnn rejected input blob {self.input_name!r} of shape {x.shape}")
        ret, mat = ex.extract(self.output_name)
        if ret != 0:
            raise RuntimeError(f"ncnn failed to extract {self.output_name!r} (code {ret})")
        return np.array(mat, dtype=np.float32, copy=True)

    def predict(self, x: npt.NDArray[np.float32], sample_shape: tuple[int, ...]) -> npt.NDArray[np.float32]:
        """Run every sample of ``x`` (batch first) and stack the outputs as ``(N, *sample_shape)``.

        Raises:
            ValueError: an output's element count differs from ``sample_shape``.
        """
        outs = []
        for i, sample in enumerate(x):
            out = self(sample)
            if out.shape != sample_shape:
                # ncnn drops the batch axis and unit axes (a (1, 10) output comes back as (10,));
                # the element order is the same C-major order, so only the shape is restored
                if out.size != int(np.prod(sample_shape)):
                    raise ValueError(f"ncnn output {i} has shape {out.shape}; the source model's is {sample_shape}")
                out = out.reshape(sample_shape)
            outs.append(out)
        return np.stack(outs)


def export_ncnn(job: ExportJob) -> TargetResult:
    """The ``ncnn`` target at ``job.precision`` (fp32, fp16 or int8): written, verified in ncnn and installed.

    Raises:
        ImportError, ValueError, RuntimeError: as :func:`write`, or ncnn cannot load or run the artifact.
    """
    return check(job, TARGET, write(job))


def write(job: ExportJob) -> Artifact:
    """Convert the shared ONNX with pnnx (and write int8 from its fp32 pair) into a scratch folder of the job.

    Args:
        job: the shared export job (``job.quant`` is required for int8).

    Raises:
        ImportError: pnnx or ncnn is missing (with the pip extra to install).
        ValueError: an unknown precision, int8 without scales, or a model the int8 writer cannot quantize.
        RuntimeError: pnnx fails (with its output) or ncnn cannot load or run the artifact.
    """
    if job.precision not in PRECISION_SUFFIX:
        raise ValueError(f"precision: ncnn writes {list(PRECISION_SUFFIX)}; got {job.precision!r}.")
    if job.precision == "int8" and job.quant is None:
        raise ValueError("precision 'int8' needs int8 scales (job.quant); pass calibration batches or a quant_spec.")
    if isinstance(job.samples, tuple):
        dtypes = ", ".join(str(a.dtype) for a in job.samples)
        raise ValueError(
            f"ncnn: this model takes {len(job.samples)} inputs ({dtypes}); fitslim's ncnn target feeds one float32 "
            "tensor and ncnn has no int64 token-id input. Export it to 'onnx', 'tensorrt' or 'tflite' instead."
        )
    _ncnn()  # fail before converting when the runtime is missing
    job.workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="ncnn-", dir=job.workdir))
    try:
        return _write(job, scratch)  # the core removes the scratch folder once it has checked the pair
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


#: what to do about a layer type ncnn does not have, by type
_LAYER_HINTS = {
    "IsNaN": "it comes from a NaN guard (torch.isnan / nan_to_num) that is not the softmax guard fitslim removes; "
    "drop it from the model for export",
    "Tensor.reshape": "a reshape ncnn cannot hold: more than 4 dimensions besides the batch (e.g. Swin's window "
    "partition to 6-D) or a batch axis moved away from the front; keep reshapes within 4 dimensions per sample",
    "Tensor.slice": "a strided slice (x[:, 0::2], e.g. Swin's patch merging): ncnn's Crop has no step; use a "
    "reshape and a plain slice, or a stride-2 conv",
    "torch.unbind": "an unbind (or q, k, v = t unpacking) that fitslim could not lower to Slice (it lowers only "
    "axis 0 with the batch of 1 right after it); index with a plain slice instead",
}


def unknown_layers(param: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """``(type, name)`` of every layer of an ncnn ``.param`` that ncnn does not have (it would refuse to load)."""
    ncnn = _ncnn()
    graph = NcnnParam.parse(Path(param).read_text(encoding="utf-8"), str(param))
    return [(layer.type, layer.name) for layer in graph.layers if ncnn.layer_to_index(layer.type) < 0]


def keep_for_inspection(job: ExportJob, files: list[Path], what: str) -> Path:
    """Copy ``files`` into ``<directory>/failed/<what>/`` (replacing an earlier copy) and return that folder."""
    folder = job.directory / "failed" / what
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        if f.is_file():
            shutil.copyfile(f, folder / f.name)
    return folder


def strip_nan_guards(model: Any) -> int:
    """Remove ``Where(IsNaN(softmax), c, softmax)`` guards in place (ncnn has no IsNaN layer); returns the count.

    torch's ONNX lowering of ``scaled_dot_product_attention`` guards the softmax against fully masked rows
    (all scores ``-inf`` give NaN). Only such rows differ without the guard, and an ncnn model has no mask input.
    """
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in g.output}
    removed = 0
    for where in list(g.node):
        if where.op_type != "Where" or len(where.input) != 3:
            continue
        isnan = producer.get(where.input[0])
        if isnan is None or isnan.op_type != "IsNaN" or isnan.input[0] != where.input[2]:
            continue
        kept, out = where.input[2], where.output[0]
        if out in graph_outputs:
            continue
        for c in consumers.get(out, []):
            for k, name in enumerate(c.input):
                if name == out:
                    c.input[k] = kept
        g.node.remove(where)
        if all(c is where for c in consumers.get(isnan.output[0], [])):
            g.node.remove(isnan)
        removed += 1
    return removed


def _ncnn_onnx(job: ExportJob, scratch: Path, notes: list[str]) -> Path:
    """The shared ONNX with the rewrites pnnx/ncnn need (a copy in ``scratch``; the shared file is untouched)."""
    import onnx

    try:
        model = onnx.load(str(job.onnx_path))
    except Exception:  # an unreadable file: pnnx reports it with its own words
        return job.onnx_path
    guards = strip_nan_guards(model)
    pools = global_pools(model)
    if not guards and not pools:
        return job.onnx_path
    if guards:
        notes.append(f"removed {guards} IsNaN/Where guard(s) after Softmax (they change only fully masked rows)")
    if pools:
        notes.append(f"{pools} AveragePool(s) whose one window covers the whole map written as GlobalAveragePool")
    path = scratch / "ncnn_input.onnx"
    onnx.save(model, str(path))
    return path


def _write(job: ExportJob, scratch: Path) -> Artifact:
    import ncnn

    what = f"ncnn-{job.precision}"
    notes: list[str] = []
    onnx_path = _ncnn_onnx(job, scratch, notes)
    try:
        param, binary = run_pnnx(onnx_path, job.input_shape, scratch / "pnnx", fp16=job.precision == "fp16")
    except RuntimeError as err:
        kept = keep_for_inspection(job, [onnx_path, *sorted((scratch / "pnnx").glob("*"))], what)
        raise RuntimeError(f"{err}\nthe ONNX given to pnnx and pnnx's outputs are kept in {kept}") from err
    unknown = unknown_layers(param)
    if unknown:
        kept = keep_for_inspection(job, [param, binary, onnx_path], what)
        layers = ", ".join(f"{t} (layer {n!r})" for t, n in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        hints = "; ".join(f"{t}: {_LAYER_HINTS[t]}" for t in dict.fromkeys(t for t, _ in unknown) if t in _LAYER_HINTS)
        raise RuntimeError(
            f"ncnn cannot load what pnnx wrote: {len(unknown)} layer(s) of a type ncnn does not have: {layers}. "
            f"HINT: {hints or 'rewrite that op in the model'}, or export to 'onnx', 'tflite' or 'tensorrt'. "
            f"The .param/.bin and the ONNX are kept in {kept}"
        )
    result = TargetResult("ncnn", job.precision, runtime=f"ncnn {ncnn.__version__}", notes=notes)
    fp32_pair: tuple[Path, Path] | None = (param, binary) if job.precision == "int8" else None
    if job.precision == "int8" and job.quant is not None:
        fp32_size = param.stat().st_size + binary.stat().st_size
        src_param, src_bin = param, binary
        param, binary = scratch / "model.int8.ncnn.param", scratch / "model.int8.ncnn.bin"
        summary = write_int8(src_param, src_bin, param, binary, job.quant, keep_float=job.options.ncnn_keep_float)
        result.scales = job.quant.describe()
        result.notes.append(summary.describe())
        result.notes.extend(summary.notes)
        int8_size = param.stat().st_size + binary.stat().st_size
        ratio = int8_size / fp32_size
        result.notes.append(f"size {fp32_size / 1024:.1f} KB fp32 → {int8_size / 1024:.1f} KB int8 ({ratio:.2f}x)")
    suffix = PRECISION_SUFFIX[job.precision]
    final_param, final_bin = job.artifact(f"{suffix}.param"), job.artifact(f"{suffix}.bin")

    def fp32_peer() -> tuple[list[Path], str]:
        # the int8 model's fp32 peer is pnnx's fp32 pair it was written from; for fp16, pnnx converts the same ONNX
        # once more at fp32; neither is installed as an artifact
        if fp32_pair is not None:
            return list(fp32_pair), "fp32 ncnn model the int8 one was written from"
        return list(run_pnnx(onnx_path, job.input_shape, scratch / "pnnx-fp32", fp16=False)), (
            "fp32 ncnn built for comparison"
        )

    def slower(run: Runner, fp32: Runner, one: Inputs) -> tuple[list[str], str]:
        types = [layer.type for layer in NcnnParam.parse(param.read_text(encoding="utf-8"), str(param)).layers]
        hint = slower_hint("ncnn", job.precision, types, job.options.ncnn_keep_float)
        if not (isinstance(run, NcnnRunner) and isinstance(fp32, NcnnRunner)):
            return [], hint
        costly = costly_layers(run.model, fp32.model, param, np.asarray(one)[0])
        return [f"{c} (estimated per layer)" for c in costly], hint

    def finish() -> None:
        if job.verify and result.status == "mismatch" and job.precision == "int8":
            _packing_diagnosis(job, result, param, binary)
        log.info("ncnn %s written: %s, %s", job.precision, final_param.name, final_bin.name)

    def keep(err: Exception) -> Exception:
        # verified before it is installed: a model ncnn cannot load or run never reaches the directory
        kept = keep_for_inspection(job, [param, binary, onnx_path], what)
        return RuntimeError(f"{err}; the .param/.bin and the ONNX are kept in {kept}")

    return Artifact(
        result,
        [param, binary],
        finals=[final_param, final_bin],
        fp32_peer=fp32_peer if job.precision != "fp32" else None,
        slower=slower,
        finish=finish,
        keep=keep,
        scratch=scratch,
    )


def _packing_diagnosis(job: ExportJob, result: TargetResult, param: Path, binary: Path) -> None:
    """Say whether an int8 pair ncnn's packed kernels got wrong agrees with the unpacked kernels.

    ncnn's x86 packed int8 kernels are wrong for some graphs (grouped int8 convs feeding squeeze-excitation); the
    unpacked kernels are a setting at deployment.
    """
    unpacked = NcnnRunner(NcnnModel(param, binary, job.precision, job.threads, {"use_packing_layout": False}))
    reference = np.asarray(job.reference)
    again = compare(reference, unpacked(job.samples_nchw()).reshape(reference.shape))
    if not judge(again, job.precision):
        top1 = "" if again.decisive_top1 is None else f", top-1 {again.decisive_top1 * 100:.0f}%"
        result.reason += (
            f"; with net.opt.use_packing_layout = False the same files agree (spread error "
            f"{again.spread_error:.2f}{top1}): set it where the model is deployed, or export with "
            "ncnn_depthwise='float' (grouped and depthwise convolutions stay fp32)"
        )


class NcnnRunner:
    """An ncnn pair loaded once: runs a batch one sample at a time (:class:`NcnnModel`)."""

    def __init__(self, model: NcnnModel) -> None:
        self.model = model

    def __call__(self, x: Inputs) -> npt.NDArray[np.float32]:
        """Each sample's output, flattened, one row per sample."""
        return np.stack([np.asarray(self.model(sample), np.float32).reshape(-1) for sample in x])

    def timed(self, one: Inputs) -> Callable[[], object]:
        """One extraction of the first sample of ``one``."""
        sample = np.asarray(one)[0]
        return lambda: self.model(sample)


def runner(paths: Sequence[Path], precision: str, threads: int, batch: int = 256) -> Runner:
    """An ncnn pair (``.param``, ``.bin``) loaded at ``precision`` (ncnn's options for it) with ``threads``."""
    param, binary = (Path(p) for p in paths)
    return NcnnRunner(NcnnModel(param, binary, precision, threads))


def costly_layers(
    model: NcnnModel,
    fp32_model: NcnnModel,
    param: str | os.PathLike[str],
    sample: npt.NDArray[np.float32],
    top: int = 3,
    repeats: int = 5,
) -> list[str]:
    """The ncnn layers whose cost grows most from the fp32 model to ``model``, estimated layer by layer.

    ncnn's per-layer benchmark is a compile-time option absent from the Python wheel, so each layer's cost is
    estimated as the time to extract its output minus the costs of the layers it depends on, in both models (the
    int8 model keeps the fp32 model's layer names).

    Args:
        model: the :class:`NcnnModel` of the fp16 / int8 artifact.
        fp32_model: the :class:`NcnnModel` of the fp32 peer.
        param: the artifact's ``.param`` (layer types, names and blobs).
        sample: one input without its batch axis.
        top: how many layers to name.
        repeats: timed extractions per layer.

    Returns:
        e.g. ``["ConvolutionDepthWise convdw_12 0.210 ms vs 0.080 ms fp32"]``, largest growth first.
    """
    graph = NcnnParam.parse(Path(param).read_text(encoding="utf-8"), str(param))
    types = {layer.name: layer.type for layer in graph.layers}
    mine = _prefix_costs(model, graph, sample, repeats)
    theirs = _prefix_costs(fp32_model, graph, sample, repeats)
    growth = sorted(((mine[n] - theirs.get(n, 0.0), n) for n in mine), reverse=True)[:top]
    return [f"{types[n]} {n} {mine[n]:.3f} ms vs {theirs.get(n, 0.0):.3f} ms fp32" for d, n in growth if d > 0]


#: ncnn layers that only route blobs: never named as costly (their estimate is the timing noise of their input)
_ROUTING_LAYERS = ("Input", "Split", "MemoryData", "Noop")


def _prefix_costs(
    model: NcnnModel, graph: NcnnParam, sample: npt.NDArray[np.float32], repeats: int
) -> dict[str, float]:
    """Estimated ms per ncnn layer: the time to extract its output minus the costs of all the layers it depends on.

    Extracting a blob computes exactly the layers it depends on, so in graph order each layer's cost is its
    extraction time less the (already estimated) costs of its ancestors, joins of branches included.
    """
    ncnn = model._ncnn
    x = np.ascontiguousarray(sample, dtype=np.float32)
    mat = ncnn.Mat(x).clone()
    ancestors: dict[str, frozenset[str]] = {}
    costs: dict[str, float] = {}
    for layer in graph.layers:
        before = frozenset().union(*(ancestors.get(b, frozenset()) for b in layer.bottoms))
        if layer.type in _ROUTING_LAYERS or not layer.tops:  # computes nothing: its outputs need what it needs
            for blob in layer.tops:
                ancestors[blob] = before
            continue
        samples = []
        for _ in range(repeats + 1):
            ex = model.net.create_extractor()
            ex.input(model.input_name, mat)
            t0 = time.perf_counter()
            ex.extract(layer.tops[0])
            samples.append((time.perf_counter() - t0) * 1e3)
        t = float(statistics.median(samples[1:]))
        costs[layer.name] = max(t - sum(costs[a] for a in before), 0.0)
        for blob in layer.tops:
            ancestors[blob] = before | {layer.name}
    return costs


TARGET = register(Target("ncnn", extra="ncnn", write=write, runner=runner, suffixes=(".param", ".bin")))
