"""The ONNX hub: every source model becomes one self-contained, BatchNorm-folded ONNX file.

torch goes through ``torch.onnx.export`` (the dynamo exporter; the legacy one only where dynamo fails),
Keras 3 and tf-keras through tf2onnx with the image input turned to NCHW, an ``.onnx`` path is taken as
it is. The result has a dynamic batch axis, passes ``onnx.checker`` with ``full_check``, and is what
the ncnn and TensorRT targets start from.

Example:
    >>> # path, notes = to_onnx(Source.from_model(module), "model.onnx", example_input)
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from exporters.job import ExportJob
from exporters.report import TargetResult
from exporters.runtimes import ort_feed, take
from exporters.source import Source
from exporters.verify import compare, fill_agreement, median_latency_ms
from fitslim.fileio import atomic_path

__all__ = ["OPSET", "export_onnx", "fold_batchnorm", "to_onnx"]

log = logging.getLogger(__name__)

#: Opset of the shared ONNX: inside TensorRT's Q/DQ range (13-25) and read by pnnx and onnxruntime.
OPSET = 18


def _input_names(model: Any, count: int) -> list[str]:
    """``input`` for one input; the forward's parameter names for several (``input_ids``, ``attention_mask``)."""
    if count == 1:
        return ["input"]
    import inspect

    try:
        params = [p.name for p in inspect.signature(model.forward).parameters.values() if p.kind.name != "VAR_KEYWORD"]
    except (TypeError, ValueError):
        params = []
    return params[:count] if len(params) >= count else [f"input_{i}" for i in range(count)]


def _torch_to_onnx(model: Any, path: Path, example: Any, notes: list[str]) -> None:
    import torch

    was_training = model.training
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    # batch 2: torch.export specializes a dimension of size 1, which would make the batch static
    arrays = example if isinstance(example, tuple) else (example,)
    xs = tuple(torch.from_numpy(np.concatenate([a[:1], a[:1]])).to(device) for a in arrays)
    names = _input_names(model, len(xs))
    batch = torch.export.Dim("batch")
    model.eval()
    try:
        try:
            program = torch.onnx.export(
                model,
                xs,
                dynamo=True,
                opset_version=OPSET,
                input_names=names,
                output_names=["output"],
                dynamic_shapes=tuple({0: batch} for _ in xs),
                verbose=False,
            )
            if program is None:
                raise RuntimeError("torch.onnx.export returned no program")
            program.save(str(path), external_data=False)
        except Exception as err:  # dynamo cannot trace some models; the legacy exporter often can
            log.warning("dynamo ONNX export failed (%s); falling back to the legacy exporter", err)
            notes.append(f"legacy torch.onnx exporter used: dynamo failed with {type(err).__name__}: {err}")
            torch.onnx.export(
                model,
                xs,
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=names,
                output_names=["output"],
                dynamic_axes={**{n: {0: "batch"} for n in names}, "output": {0: "batch"}},
            )
    finally:
        model.train(was_training)


def _keras_to_onnx(model: Any, path: Path, example: npt.NDArray[np.float32]) -> None:
    import os

    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend != "tensorflow":
        raise ValueError(
            f"exporting a Keras model to ONNX needs the TensorFlow backend; KERAS_BACKEND is {backend!r}. "
            "Save the model (.keras) and export it from a process with KERAS_BACKEND=tensorflow."
        )
    import tensorflow as tf
    import tf2onnx

    spec = tf.TensorSpec((None, *example.shape[1:]), tf.float32, name="input")

    @tf.function(input_signature=[spec])
    def forward(x: Any) -> Any:
        return model(x, training=False)

    as_nchw = ["input:0"] if example.ndim == 4 else None
    model_proto, _ = tf2onnx.convert.from_function(
        forward, input_signature=[spec], opset=OPSET, inputs_as_nchw=as_nchw, output_path=None
    )
    import onnx

    onnx.save(model_proto, str(path))


def fold_batchnorm(model: Any) -> int:
    """Fold every BatchNormalization that is the only consumer of a Conv into the Conv's weights (in place).

    Returns:
        The number of BatchNormalization nodes folded.
    """
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    consumers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    producer = {o: n for n in g.node for o in n.output}
    folded = 0
    for bn in list(g.node):
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        conv = producer.get(bn.input[0])
        if conv is None or conv.op_type != "Conv" or consumers.get(conv.output[0], 0) != 1:
            continue
        if not all(name in inits for name in list(bn.input[1:5]) + [conv.input[1]]):
            continue
        scale, bias, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
        eps = next((helper.get_attribute_value(a) for a in bn.attribute if a.name == "epsilon"), 1e-5)
        w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        b = (
            numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
            if len(conv.input) > 2
            else np.zeros(w.shape[0])
        )
        factor = scale / np.sqrt(var + eps)
        w_new = (w * factor.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)
        b_new = ((b - mean) * factor + bias).astype(np.float32)
        w_name, b_name = f"{conv.name or conv.output[0]}_folded_w", f"{conv.name or conv.output[0]}_folded_b"
        g.initializer.extend([numpy_helper.from_array(w_new, w_name), numpy_helper.from_array(b_new, b_name)])
        del conv.input[1:]
        conv.input.extend([w_name, b_name])
        conv.output[0] = bn.output[0]
        g.node.remove(bn)
        folded += 1
    if folded:
        used = {i for n in g.node for i in n.input}
        keep = [i for i in g.initializer if i.name in used]
        del g.initializer[:]
        g.initializer.extend(keep)
    return folded


def to_onnx(source: Source, path: str | Path, example_input: npt.ArrayLike) -> tuple[Path, list[str]]:
    """Write the shared ONNX for ``source`` to ``path`` (atomically) and return it with notes.

    Args:
        source: the model.
        path: the destination ``.onnx``.
        example_input: one or more inputs in the source's layout (fixes the non-batch dimensions).

    Raises:
        ValueError: a Keras model outside the TensorFlow backend.
        onnx.checker.ValidationError: the graph is not valid ONNX.
    """
    import onnx

    from exporters.runtimes import as_inputs

    example = as_inputs(example_input)
    if isinstance(example, tuple) and source.framework not in ("torch", "onnx"):
        raise ValueError(
            f"example_input: several inputs are supported for torch and ONNX models; this is a {source.framework} "
            "model. Pass one input array."
        )
    notes: list[str] = []
    target = Path(path)
    with atomic_path(target) as tmp:
        raw = tmp.with_suffix(".raw.onnx")
        try:
            if source.framework == "torch":
                _torch_to_onnx(source.model, raw, example, notes)
            elif source.framework in ("keras", "tf_keras"):
                _keras_to_onnx(source.model, raw, example)
            else:
                shutil.copyfile(source.model, raw)
            model = onnx.load(str(raw))
        finally:
            raw.unlink(missing_ok=True)
            Path(str(raw) + ".data").unlink(missing_ok=True)
        for node in model.graph.node:  # the torch exporter's per-node debug info (stack traces) is not needed
            del node.metadata_props[:]
        n = fold_batchnorm(model)
        if n:
            notes.append(f"folded {n} BatchNormalization node(s) into the preceding Conv")
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(tmp), save_as_external_data=False)
    return target, notes


def ort_session(path: str | Path, threads: int = 2) -> Any:
    """An onnxruntime CPU session with a fixed thread count."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def export_onnx(job: ExportJob) -> TargetResult:
    """The ``onnx`` target: copy the shared fp32 ONNX into the export directory and verify it in onnxruntime.

    The ONNX artifact is always fp32: at other precisions it is the float reference next to the
    ncnn / TFLite artifacts, and the int8 Q/DQ ONNX is the ``tensorrt`` target.
    """
    import onnxruntime as ort

    final = job.artifact(".onnx")
    with atomic_path(final) as tmp:
        shutil.copyfile(job.onnx_path, tmp)
    result = TargetResult(
        "onnx",
        "fp32",
        files=[final.name],
        size_bytes=final.stat().st_size,
        runtime=f"onnxruntime {ort.__version__}",
    )
    if job.precision != "fp32":
        result.notes.append(f"written in fp32 (requested {job.precision}); the int8 Q/DQ ONNX is the tensorrt target")
    if job.verify:
        sess = ort_session(final, job.threads)
        x = job.samples_nchw()
        out = np.asarray(sess.run(None, ort_feed(sess, x))[0])
        fill_agreement(result, compare(job.reference, out))
        one = ort_feed(sess, take(x, 0, 1))
        result.latency_ms = median_latency_ms(lambda: sess.run(None, one))
        result.threads = job.threads
    return result
