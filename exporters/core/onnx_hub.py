"""The ONNX hub: every source model becomes one self-contained, BatchNorm-folded ONNX file.

torch goes through ``torch.onnx.export`` (the dynamo exporter; the legacy one only where dynamo fails),
Keras 3 and tf-keras through tf2onnx with the image input turned to NCHW, an ``.onnx`` path is taken as
it is. The result has a dynamic batch axis, passes ``onnx.checker`` with ``full_check``, and is what
the ncnn and TensorRT targets start from.

Example:
    >>> # path, notes = to_onnx(Source.from_model(module), "model.onnx", example_input)
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import io
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from exporters.core.checks import Refusal, converter_error, failing_op, legacy_trace_check
from exporters.core.inputs import Inputs, as_inputs, ort_feed, ort_run
from exporters.core.job import OPSET
from exporters.core.source import Source, keras_backend
from fitslim.fileio import atomic_path

__all__ = ["OPSET", "OrtRunner", "fix_pad_mode", "fold_batchnorm", "global_pools", "ort_session", "to_onnx"]

log = logging.getLogger(__name__)


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


def _torch_to_onnx(model: Any, path: Path, example: Any, notes: list[str], opset: int = OPSET) -> None:
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
                opset_version=opset,
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

            def legacy(inputs: tuple[Any, ...], out: Path) -> None:
                ts = tuple(torch.from_numpy(np.concatenate([a[:1], a[:1]])).to(device) for a in inputs)
                torch.onnx.export(
                    model,
                    ts,
                    str(out),
                    dynamo=False,
                    opset_version=opset,
                    input_names=names,
                    output_names=["output"],
                    dynamic_axes={**{n: {0: "batch"} for n in names}, "output": {0: "batch"}},
                )

            legacy(arrays, path)
            notes.append(legacy_trace_check(legacy, tuple(np.asarray(a[:1]) for a in arrays), path, err))
    finally:
        model.train(was_training)


def _keras_to_onnx(
    model: Any, framework: str, path: Path, example: npt.NDArray[np.float32], notes: list[str], opset: int = OPSET
) -> None:
    """Keras 3 on TensorFlow and tf-keras via tf2onnx; Keras 3 on torch via torch.onnx, on JAX via jax2onnx."""
    backend = keras_backend(framework)
    if backend == "torch":
        _keras_torch_to_onnx(model, path, example, notes, opset)
    elif backend == "jax":
        _keras_jax_to_onnx(model, path, example, notes, opset)
    elif backend == "tensorflow":
        _keras_tf_to_onnx(model, path, example, notes, opset)
    else:
        raise ValueError(
            f"exporting a Keras model to ONNX: backend {backend!r} is not supported. Save the model (.keras) and "
            "export it from a process with KERAS_BACKEND=tensorflow, torch or jax."
        )


class _ErfcHandler:
    """tf2onnx has no ``Erfc`` (TensorFlow's exact GELU uses it): ``erfc(x) = 1 - erf(x)``."""

    @staticmethod
    def convert(ctx: Any, node: Any, name: str, args: Any) -> None:
        from tf2onnx import utils

        node.type = "Erf"
        one = ctx.make_const(utils.make_name(f"{name}_one"), np.array(1.0, np.float32))
        ctx.insert_new_node_on_output(
            "Sub", node.output[0], name=utils.make_name(f"{name}_erfc"), inputs=[one.output[0], node.output[0]]
        )


@contextlib.contextmanager
def _graph_friendly_grouped_conv() -> Iterator[None]:
    """Trace Keras 3 grouped convolutions as plain ``Conv2D`` ops (TensorFlow backend, while tracing only).

    Keras runs a grouped convolution (ConvNeXt's 7x7 ``groups=C``) inside an XLA-compiled nested function,
    which tf2onnx cannot convert (a ``StatefulPartitionedCall`` node); the graph op itself converts to an
    ONNX ``Conv`` with ``group``.
    """
    try:
        from keras.src.backend.tensorflow import nn as tf_nn
    except ImportError:  # tf-keras only: nothing to patch
        yield
        return
    import tensorflow as tf

    original = tf_nn.conv

    def conv(
        inputs: Any, kernel: Any, strides: Any = 1, padding: str = "valid", data_format: Any = None,
        dilation_rate: Any = 1,
    ) -> Any:  # fmt: skip
        fmt = tf_nn.backend.standardize_data_format(data_format)
        channels = inputs.shape[-1] if fmt == "channels_last" else inputs.shape[1]
        if len(inputs.shape) != 4 or channels == kernel.shape[-2]:
            return original(inputs, kernel, strides, padding, data_format, dilation_rate)
        return tf.nn.convolution(
            inputs,
            kernel,
            strides,
            padding.upper(),
            data_format="NHWC" if fmt == "channels_last" else "NCHW",
            dilations=dilation_rate,
        )

    tf_nn.conv = conv
    try:
        yield
    finally:
        tf_nn.conv = original


@contextlib.contextmanager
def _scalar_add_after_conv() -> Iterator[None]:
    """Keep tf2onnx's transpose optimizer alive on ``Conv -> Add(scalar)`` (MobileNetV3's hard-swish ``x + 3``).

    tf2onnx 1.17 tries to merge the constant into the Conv's bias and fails on a 0-d constant
    (``max()`` of an empty shape); the whole NHWC->NCHW pass is then skipped, leaving a Transpose around
    every op and BatchNorm biases out of the convolutions. A scalar is pushed through like any other input.
    """
    from tf2onnx.optimizer.transpose_optimizer import TransposeOptimizer

    original = TransposeOptimizer._add_handler

    def add_handler(self: Any, trans: Any, node: Any) -> Any:
        const = node.inputs[1]
        if const.is_const() and np.ndim(const.get_tensor_value(as_list=False)) == 0:
            return self._handle_node_having_branches(trans, node)
        return original(self, trans, node)

    TransposeOptimizer._add_handler = add_handler
    try:
        yield
    finally:
        TransposeOptimizer._add_handler = original


@contextlib.contextmanager
def _square_keeps_shape() -> Iterator[None]:
    """Keep tf2onnx's recorded shapes right when its transpose optimizer moves a Transpose below ``x * x``.

    tf2onnx 1.17's ``Mul`` handler rewires ``Mul(t, t)`` (LayerNorm's variance, from ``SquaredDifference``)
    without transposing the shape it records for the product, as every other handler does. When a map is
    1x1 the final pass turns a Transpose into a Reshape built from that stale shape: a Reshape to
    ``[-1, 1, C, 1]`` in place of ``[-1, 1, 1, C]``, and the LayerNorm that reads it normalises over a size-1
    axis (Keras ConvNeXt's last stage at 32x32 inputs). The recorded shapes are updated here.
    """
    from tf2onnx.optimizer.transpose_optimizer import TransposeOptimizer

    original = TransposeOptimizer._mul_handler

    def mul_handler(self: Any, trans: Any, node: Any) -> Any:
        if any(name != trans.output[0] for name in node.input):
            return original(self, trans, node)
        shape = self._g.get_shape(node.output[0])
        done = original(self, trans, node)
        if done and shape:
            perm = trans.get_attr_value("perm")
            inverse = [perm.index(i) for i in range(len(perm))]
            self._g.set_shape(node.output[0], [shape[i] for i in inverse])
            self._g.set_shape(trans.output[0], shape)
        return done

    TransposeOptimizer._mul_handler = mul_handler
    try:
        yield
    finally:
        TransposeOptimizer._mul_handler = original


#: the memory tf2onnx's discarded graph copies may take before they are collected between its optimizer passes
GARBAGE_BYTES = 1 << 30


def _resident_bytes() -> int | None:
    """This process's resident memory (Linux ``/proc``), or None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


@contextlib.contextmanager
def _collect_between_passes() -> Iterator[None]:
    """Free tf2onnx's discarded graph copies while it optimizes, not only when it is done.

    ``tf2onnx.optimizer.optimize_graph`` deep-copies the whole graph, weights included, before each of its
    optimizer passes and drops the old copy, which is a reference cycle: only a full collection frees it, and a
    process that has imported TensorFlow runs one too seldom. InceptionV3 at 75 px peaked at 7.7 GB from a 1.0 GB
    start (3.8 GB with these collections). Before a pass, once resident memory has grown by
    :data:`GARBAGE_BYTES` since the last collection, one is run (about 0.3 s with TensorFlow and torch loaded;
    where resident memory cannot be read, nothing is done).
    """

    import tf2onnx.optimizer as tf2onnx_optimizer

    original = tf2onnx_optimizer._optimizers
    mark = [_resident_bytes()]

    def collecting(factory: Any) -> Any:
        def make() -> Any:
            now = _resident_bytes()
            if now is not None and mark[0] is not None and now - mark[0] > GARBAGE_BYTES:
                gc.collect()
                mark[0] = _resident_bytes()
            return factory()

        return make

    tf2onnx_optimizer._optimizers = type(original)((k, collecting(f)) for k, f in original.items())
    try:
        yield
    finally:
        tf2onnx_optimizer._optimizers = original


def _keras_tf_to_onnx(
    model: Any, path: Path, example: npt.NDArray[np.float32], notes: list[str], opset: int = OPSET
) -> None:
    import onnx
    import tensorflow as tf
    import tf2onnx

    spec = tf.TensorSpec((None, *example.shape[1:]), tf.float32, name="input")

    @tf.function(input_signature=[spec])
    def forward(x: Any) -> Any:
        return model(x, training=False)

    as_nchw = ["input:0"] if example.ndim == 4 else None
    with _graph_friendly_grouped_conv(), _scalar_add_after_conv(), _square_keeps_shape(), _collect_between_passes():
        concrete = forward.get_concrete_function()
        model_proto, _ = tf2onnx.convert.from_function(
            forward,
            input_signature=[spec],
            opset=opset,
            inputs_as_nchw=as_nchw,
            output_path=None,
            custom_op_handlers={"Erfc": (_ErfcHandler.convert, ())},
        )
    _captured_inputs_to_constants(model_proto, concrete, notes)
    onnx.save(model_proto, str(path))


def _captured_inputs_to_constants(model: Any, concrete: Any, notes: list[str]) -> None:
    """Turn graph inputs tf2onnx made of captured tensors (Keras Normalization's mean/variance) into constants.

    Inputs no node reads are dropped; a read one that is a captured constant becomes an initializer.

    Raises:
        ValueError: a second graph input that is neither, named (the ONNX file would need it fed).
    """
    from onnx import numpy_helper

    g = model.graph
    if len(g.input) <= 1:
        return
    values: dict[str, npt.NDArray[Any]] = {}
    for external, internal in getattr(concrete.graph, "captures", []):
        if hasattr(external, "numpy") and getattr(external, "dtype", None) is not None and external.dtype != "resource":
            try:
                values[internal.name] = np.asarray(external.numpy())
            except Exception:  # a resource handle or symbolic tensor: not a constant
                continue
    read = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    inits = {i.name for i in g.initializer}
    for inp in list(g.input)[1:]:
        if inp.name in inits:
            continue
        if inp.name not in read:
            g.input.remove(inp)
            notes.append(f"dropped the unused graph input {inp.name!r} (a constant the converter left behind)")
        elif inp.name in values:
            g.initializer.append(numpy_helper.from_array(values[inp.name], inp.name))
            g.input.remove(inp)
            notes.append(f"graph input {inp.name!r} (a captured constant) written as a constant")
        else:
            raise ValueError(
                f"the converted ONNX graph needs a second input {inp.name!r} that is not a constant of the model; "
                "exporting supports one image/tensor input per Keras model."
            )


def _keras_torch_to_onnx(
    model: Any, path: Path, example: npt.NDArray[np.float32], notes: list[str], opset: int = OPSET
) -> None:
    """A Keras 3 model on the torch backend is a ``torch.nn.Module``: export it with NCHW input, like torch models."""
    import torch

    class ChannelsFirst(torch.nn.Module):
        def __init__(self, inner: Any, nhwc: bool) -> None:
            super().__init__()
            self.inner = inner
            self.nhwc = nhwc

        def forward(self, x: Any) -> Any:
            out = self.inner(x.permute(0, 2, 3, 1) if self.nhwc else x, training=False)
            return out[0] if isinstance(out, (list, tuple)) else out

    nhwc = example.ndim == 4
    x = np.ascontiguousarray(example.transpose(0, 3, 1, 2)) if nhwc else example
    _torch_to_onnx(ChannelsFirst(model, nhwc), path, x, notes, opset)


def _keras_jax_to_onnx(
    model: Any, path: Path, example: npt.NDArray[np.float32], notes: list[str], opset: int = OPSET
) -> None:
    """Keras' own ``model.export(format="onnx")`` on JAX (jax2onnx), then the input turned to NCHW."""
    if importlib.util.find_spec("jax2onnx") is None:
        raise ValueError(
            "exporting a Keras model on the JAX backend to ONNX needs jax2onnx (what Keras' "
            "model.export(format='onnx') uses on JAX): pip install jax2onnx. Or save the model (.keras) and export "
            "it with KERAS_BACKEND=tensorflow or torch (the tflite target needs KERAS_BACKEND=tensorflow)."
        )
    import keras
    import onnx

    raw = path.with_suffix(".jax.onnx")
    sig = [keras.InputSpec(shape=(None, *example.shape[1:]), dtype="float32")]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model.export(str(raw), format="onnx", input_signature=sig, opset_version=opset, verbose=False)
        m = onnx.load(str(raw))
    except ImportError as err:  # jax2onnx is there, one of its own dependencies is not
        raise ValueError(
            f"exporting a Keras model on the JAX backend to ONNX: jax2onnx could not run ({err}); install it with "
            "its dependencies (pip install jax2onnx), or export with KERAS_BACKEND=tensorflow or torch."
        ) from err
    finally:
        raw.unlink(missing_ok=True)
    if example.ndim == 4:
        _input_to_nchw(m)
    onnx.save(m, str(path))
    notes.append("converted with Keras' model.export(format='onnx') on the JAX backend (jax2onnx)")


def _input_to_nchw(model: Any) -> None:
    """Feed an NHWC-input graph from a new NCHW input named ``input`` through a Transpose (in place)."""
    from onnx import helper

    g = model.graph
    inits = {i.name for i in g.initializer}
    first = next(i for i in g.input if i.name not in inits)
    old = first.name
    dims = list(first.type.tensor_type.shape.dim)
    new = helper.make_tensor_value_info("input", first.type.tensor_type.elem_type, None)
    for d in (dims[0], dims[3], dims[1], dims[2]):
        nd = new.type.tensor_type.shape.dim.add()
        if d.HasField("dim_value"):
            nd.dim_value = d.dim_value
        else:
            nd.dim_param = d.dim_param or "batch"
    nhwc = f"{old}__nhwc" if old == "input" else old
    if nhwc != old:
        for n in g.node:
            n.input[:] = [nhwc if i == old else i for i in n.input]
    g.node.insert(0, helper.make_node("Transpose", ["input"], [nhwc], name="input_to_nhwc", perm=[0, 2, 3, 1]))
    idx = list(g.input).index(first)
    g.input.remove(first)
    g.input.insert(idx, new)


def _channel_vector(value: npt.NDArray[np.float64], out_rank: int, channels: int) -> npt.NDArray[np.float64] | None:
    """``value`` as one number per output channel when it broadcasts over a Conv output only along axis 1."""
    if value.ndim > out_rank:
        return None
    shape = (1,) * (out_rank - value.ndim) + tuple(value.shape)
    if shape[0] != 1 or any(d != 1 for d in shape[2:]) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1), (channels,)).astype(np.float64)


def _constants(model: Any) -> dict[str, npt.NDArray[Any]]:
    """Initializers and ``Constant`` node outputs of the graph, by tensor name."""
    from onnx import helper, numpy_helper

    out = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and len(n.output) == 1:
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = numpy_helper.to_array(helper.get_attribute_value(a))
    return out


def fold_batchnorm(model: Any, mul_add: bool = True) -> int:
    """Fold inference BatchNorm into the preceding Conv's weights and bias (in place).

    Two forms are folded when the Conv's output has no other consumer: ONNX ``BatchNormalization``
    (torch), and the per-channel ``Mul`` and ``Add`` by constants that tf2onnx writes for a Keras
    BatchNormalization it could not merge itself. Int8 weight scales are computed on the folded weights,
    so every converter downstream sees the same kernels the scales describe.

    Args:
        model: an ``onnx.ModelProto``.
        mul_add: fold per-channel ``Mul``/``Add`` by constants too (else only ``BatchNormalization``).

    Returns:
        The number of nodes folded (BatchNormalization, Mul and Add).
    """
    from onnx import helper, numpy_helper

    g = model.graph
    graph_outputs = {o.name for o in g.output}
    folded = 0
    changed = True
    while changed:
        changed = False
        consts = _constants(model)
        consumers: dict[str, int] = {}
        for n in g.node:
            for i in n.input:
                consumers[i] = consumers.get(i, 0) + 1
        producer = {o: n for n in g.node for o in n.output}
        for node in list(g.node):
            if len(node.output) != 1 or node.op_type not in (
                ("BatchNormalization", "Mul", "Add") if mul_add else ("BatchNormalization",)
            ):
                continue
            pair = [i for i in node.input if i in producer and producer[i].op_type == "Conv"]
            if node.op_type == "BatchNormalization":
                pair = pair[:1] if node.input[0] in pair else []
            if len(pair) != 1:
                continue
            conv = producer[pair[0]]
            if consumers.get(conv.output[0], 0) != 1 or conv.output[0] in graph_outputs:
                continue
            if (
                len(conv.input) < 2
                or conv.input[1] not in consts
                or (len(conv.input) > 2 and conv.input[2] not in consts)
            ):
                continue
            w = consts[conv.input[1]].astype(np.float64)
            b = (
                consts[conv.input[2]].astype(np.float64)
                if len(conv.input) > 2 and conv.input[2]
                else np.zeros(w.shape[0])
            )
            if node.op_type == "BatchNormalization":
                if not all(name in consts for name in node.input[1:5]):
                    continue
                scale, bias, mean, var = (consts[n].astype(np.float64) for n in node.input[1:5])
                eps = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "epsilon"), 1e-5)
                factor = scale / np.sqrt(var + eps)
                w_new, b_new = w * factor.reshape(-1, *([1] * (w.ndim - 1))), (b - mean) * factor + bias
            else:
                other = node.input[1] if node.input[0] == pair[0] else node.input[0]
                if other not in consts or consts[other].dtype.kind != "f":
                    continue
                vec = _channel_vector(consts[other].astype(np.float64), w.ndim, w.shape[0])
                if vec is None:
                    continue
                if node.op_type == "Mul":
                    w_new, b_new = w * vec.reshape(-1, *([1] * (w.ndim - 1))), b * vec
                else:
                    w_new, b_new = w, b + vec
            # named after the source layer's weight (``blocks.0.conv.weight`` -> ``blocks.0.conv_folded0_w``) so
            # reports can still name the layer
            base = re.sub(r"(\.weight|_folded\d+_w)$", "", conv.input[1]) or conv.name or conv.output[0]
            w_name, b_name = f"{base}_folded{folded}_w", f"{base}_folded{folded}_b"
            g.initializer.extend(
                [
                    numpy_helper.from_array(np.asarray(w_new, np.float32), w_name),
                    numpy_helper.from_array(np.asarray(b_new, np.float32), b_name),
                ]
            )
            del conv.input[1:]
            conv.input.extend([w_name, b_name])
            conv.output[0] = node.output[0]
            g.node.remove(node)
            folded += 1
            changed = True
            break  # the maps above are stale now
    if folded:
        _drop_unused(model)
    return folded


def _drop_unused(model: Any) -> None:
    """Remove initializers and ``Constant`` nodes nothing reads any more."""
    g = model.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    for n in list(g.node):
        if n.op_type == "Constant" and n.output[0] not in used:
            g.node.remove(n)
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)


def global_pools(model: Any) -> int:
    """Turn an ``AveragePool`` whose one window covers its whole unpadded input into ``GlobalAveragePool``.

    HF EfficientNet pools with ``AvgPool2d(kernel, ceil_mode=True)`` and a kernel larger than the feature
    map: one output value, the mean of the map (torch divides by the window's part inside the input). The
    converters and int8 kernels downstream get that window wrong: pnnx gives it a wrong shape (ncnn then
    computes garbage) and ONNX Runtime's int8 ``QLinearAveragePool`` divides by the whole 320x320 kernel
    (every output 0). ``GlobalAveragePool`` is the same mean, which every runtime reads alike.
    Returns the number of nodes rewritten (in place).
    """
    from onnx import helper, shape_inference

    inferred = shape_inference.infer_shapes(model)
    dims: dict[str, list[int]] = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.input):
        dims[v.name] = [d.dim_value if d.HasField("dim_value") else 0 for d in v.type.tensor_type.shape.dim]
    changed = 0
    for node in model.graph.node:
        if node.op_type != "AveragePool":
            continue
        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        spatial = dims.get(node.input[0], [])[2:]
        kernel = list(a.get("kernel_shape", []))
        strides = list(a.get("strides", [1] * len(kernel)))
        pads = list(a.get("pads", [0] * 2 * len(kernel)))
        auto_pad = a.get("auto_pad", b"NOTSET")
        if not spatial or 0 in spatial or len(kernel) != len(spatial) or any(pads):
            continue
        if auto_pad not in (b"NOTSET", "NOTSET"):
            continue
        ceil = int(a.get("ceil_mode", 0))
        # one window: floor mode needs k == H; ceil mode gives one output for H <= k < H + s
        sizes = zip(kernel, spatial, strides, strict=True)
        one = all((k == h) if not ceil else (h <= k < h + st) for k, h, st in sizes)
        if not one:
            continue
        node.op_type = "GlobalAveragePool"
        del node.attribute[:]
        changed += 1
    return changed


def fix_pad_mode(model: Any) -> int:
    """Write ``mode="constant"`` on every ``Pad`` that leaves it implicit (in place; same semantics).

    tf2onnx omits the attribute (constant is ONNX's default); pnnx then keeps a raw ``Pad`` layer that
    ncnn cannot load, while an explicit constant mode becomes ncnn's ``Padding`` layer.

    Returns:
        The number of Pad nodes changed.
    """
    from onnx import helper

    changed = 0
    for n in model.graph.node:
        if n.op_type == "Pad" and not any(a.name == "mode" for a in n.attribute):
            n.attribute.append(helper.make_attribute("mode", "constant"))
            changed += 1
    return changed


_INSTEAD = (
    "the tflite target converts without ONNX; for onnx, ncnn and tensorrt rewrite that layer with standard ops (or "
    "register an ONNX translation for a custom op)"
)


def _untranslated(err: Exception, model: Any, source: Source) -> Exception:
    """The checker's error, or (an op the converter left untranslated) one naming that op's nodes and the way out."""
    m = re.search(r"No Op registered for (\w+)", str(err))
    nodes = [n.name or n.output[0] for n in model.graph.node if m and n.op_type == m.group(1)]
    if m is None or not nodes or source.framework == "onnx":
        return err
    more = f" and {len(nodes) - 1} more" if len(nodes) > 1 else ""
    return RuntimeError(
        f"ONNX export: {_converter_name(source)} left op {m.group(1)!r} without an ONNX translation (node "
        f"{nodes[0]!r}{more}); {_INSTEAD}"
    )


def _converter_name(source: Source) -> str:
    if source.framework == "torch":
        return "torch.onnx.export (dynamo, then the legacy exporter)"
    backend = keras_backend(source.framework)
    return {"torch": "torch.onnx.export", "jax": "jax2onnx"}.get(backend, "tf2onnx")


def to_onnx(
    source: Source, path: str | Path, example_input: npt.ArrayLike, opset: int = OPSET
) -> tuple[Path, list[str]]:
    """Write the shared ONNX for ``source`` to ``path`` (atomically) and return it with notes.

    Args:
        source: the model.
        path: the destination ``.onnx``.
        example_input: one or more inputs in the source's layout (fixes the non-batch dimensions).
        opset: the ONNX opset the converter writes (an ``.onnx`` source keeps its own).

    Raises:
        ValueError: a Keras model outside the TensorFlow backend.
        onnx.checker.ValidationError: the graph is not valid ONNX.
    """
    import onnx

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
                _torch_to_onnx(source.model, raw, example, notes, opset)
            elif source.framework in ("keras", "tf_keras"):
                _keras_to_onnx(source.model, source.framework, raw, example, notes, opset)
            else:
                shutil.copyfile(source.model, raw)
            model = onnx.load(str(raw))
        except Exception as err:
            if (
                source.framework == "onnx"
                or isinstance(err, Refusal)
                or (isinstance(err, ValueError) and not failing_op(err))
            ):
                raise  # our own refusals already say what to do
            raise converter_error(err, "ONNX export", _converter_name(source), _INSTEAD) from err
        finally:
            raw.unlink(missing_ok=True)
            Path(str(raw) + ".data").unlink(missing_ok=True)
            # the converters leave their graphs behind as reference cycles: tf2onnx deep-copies the whole graph,
            # weights included, before each optimizer pass (InceptionV3 at 75 px: 5.2 GB of cycles), and a
            # process that has imported TensorFlow runs a full collection too seldom to free them
            gc.collect()
        for node in model.graph.node:  # the torch exporter's per-node debug info (stack traces) is not needed
            del node.metadata_props[:]
        pools = global_pools(model)
        if pools:
            notes.append(f"{pools} AveragePool(s) whose one window covers the whole map written as GlobalAveragePool")
        pads = fix_pad_mode(model)
        if pads:
            log.debug("Pad: mode='constant' made explicit on %d node(s)", pads)
        # torch QAT scales are learned on BatchNorm-folded kernels only; tf2onnx writes a Keras BatchNorm it
        # could not merge as per-channel Mul/Add, which the Keras side folds too
        n = fold_batchnorm(model, mul_add=source.framework in ("keras", "tf_keras"))
        if n:
            notes.append(
                f"folded {n} BatchNorm node(s) (BatchNormalization, or per-channel Mul/Add) into the preceding Conv"
            )
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as err:
            raise _untranslated(err, model, source) from err
        onnx.save(model, str(tmp), save_as_external_data=False)
    return target, notes


def ort_session(path: str | Path, threads: int = 2, int8_kernels: bool = True) -> Any:
    """An onnxruntime CPU session with a fixed thread count.

    ``int8_kernels=False`` runs a Q/DQ graph as written: each ``DequantizeLinear -> op -> QuantizeLinear``
    computes in float from the int8 values (``session.disable_quant_qdq``), which is exact int8 arithmetic up to
    float rounding, as TensorRT's int8 layers are. onnxruntime's own fused int8 kernels (``QLinearConv``, ...)
    depend on the CPU: on x86 without VNNI they multiply uint8 by int8 pairs into a saturating int16
    (``vpmaddubsw``), so the same artifact scores differently from machine to machine.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if not int8_kernels:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OrtRunner:
    """An ONNX file in onnxruntime CPU sessions (:func:`ort_session`): the runner of the ``onnx`` and ``tensorrt``
    targets (:class:`exporters.core.target.Runner`).

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads.
        batch: how many samples one ``run`` takes at most.
        exact: outputs from the Q/DQ graph as written (each group computed in float from its int8 values, TensorRT's
            int8 arithmetic, not onnxruntime's CPU-dependent int8 kernels); the time still on onnxruntime's kernels.
    """

    def __init__(self, path: Path, threads: int, batch: int = 256, exact: bool = False) -> None:
        self.path, self.threads, self.batch = path, threads, batch
        self.outputs = ort_session(path, threads, int8_kernels=not exact)
        self.session = ort_session(path, threads) if exact else self.outputs

    def __call__(self, x: Inputs) -> npt.NDArray[np.float32]:
        """The first output for every sample of ``x``."""
        return np.asarray(ort_run(self.outputs, x, batch=self.batch)[0], dtype=np.float32)

    def timed(self, one: Inputs) -> Callable[[], object]:
        """One prepared ``session.run`` on ``one``."""
        feed = ort_feed(self.session, one)
        return lambda: self.session.run(None, feed)
