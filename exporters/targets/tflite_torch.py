"""torch → TFLite (LiteRT) with litert-torch: fp32, fp16 weights, and int8 kernels through its PT2E path.

int8 follows litert-torch's PT2E recipe: ``torch.export`` → ``prepare_pt2e`` with litert-torch's
``PT2EQuantizer`` → observe → ``convert_pt2e`` → ``litert_torch.convert(..., quant_config=QuantConfig(
pt2e_quantizer=q))``. With a learned QuantSpec (QAT) the observers are *pinnable*: the input activation
scale and the per-channel weight scales of every convolution and linear layer are set from the spec,
so the learned scales reach the int8 ``CONV_2D`` / ``DEPTHWISE_CONV_2D`` / ``FULLY_CONNECTED`` kernels
exactly; tensors the spec does not describe (residual sums, the logits) are observed min/max on the
calibration inputs (or, without any, the verification samples). Without a QuantSpec, litert-torch's own
observers (histogram activations, per-channel min/max weights) calibrate every tensor.

Before ``prepare_pt2e`` the exported graph is rewritten where litert-torch would fail or leave float
kernels (each numerically identical): zero-width ``pad`` nodes (HuggingFace's TF-style "same" padding)
are removed and the remaining constant pads keep their input's scale, ``padding="same"`` convolutions
become explicit padding, and shape arithmetic on a symbolic batch size gets no observer.

litert-torch's static int8 conversion gives the model int8 inputs and outputs; fitslim adds a
``QUANTIZE`` at the input and a ``DEQUANTIZE`` at the output so users feed and read float32, like the
Keras path.

Example:
    >>> # content, scales, notes = convert_torch(job)     # bytes of a .tflite file
"""

from __future__ import annotations

import copy
import importlib
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from exporters.core.checks import CALIBRATION_LIMIT, quiet
from exporters.core.job import ExportJob
from exporters.core.quant import QuantizedNode, QuantTable

__all__ = ["TorchConversion", "convert_torch", "multi_input_feed", "pt2e_quantize"]

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'fitslim[tflite-torch]'"

#: ops through which a tensor keeps its int8 scale (TFLite requires equal input and output scales)
_SCALE_PRESERVING = (
    "max_pool2d",
    "max_pool1d",
    "flatten",
    "view",
    "reshape",
    "squeeze",
    "unsqueeze",
    "permute",
)
_WEIGHTED = ("conv1d", "conv2d", "linear")
_CALIB_BATCH = 32
_AVERAGING = ("adaptive_avg_pool2d", "_adaptive_avg_pool2d", "avg_pool2d", "mean")


@dataclass
class TorchConversion:
    """What :func:`convert_torch` produced.

    Args:
        content: the ``.tflite`` flatbuffer.
        scales: for int8, where the scales came from (for the report).
        notes: anything else worth reporting.
    """

    content: bytes
    scales: str = ""
    notes: list[str] = field(default_factory=list)


_FAKE_QUANT = (
    "target tflite: the torch model still runs fake-quant ops ({}), which torch.export / litert-torch cannot "
    "lower; export the float model (fake-quant off) and pass the learned scales as quant_spec=."
)


def _litert() -> Any:
    """Import litert-torch quietly (no progress bars), or fail naming the extra to install."""
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    try:
        return importlib.import_module("litert_torch")
    except ImportError as err:
        # name: the orchestrator adds no install hint of its own to a message from exporters.*
        raise ImportError(
            f"target tflite: converting a torch model needs litert-torch ({err}): {INSTALL_HINT}", name=__name__
        ) from err


def _pinnable_observers() -> tuple[Any, Any]:
    """Observer classes that observe min/max like torchao's, or return scales set on them exactly.

    A histogram observer would shift injected ranges slightly; these return ``(scale, 0)`` verbatim
    once ``pin`` was called, which is what keeps learned QAT scales exact in the artifact.
    """
    import torch
    from torchao.quantization.pt2e.observer import MinMaxObserver, PerChannelMinMaxObserver

    class PinnableMinMaxObserver(MinMaxObserver):
        """Per-tensor min/max observer whose qparams can be pinned to a symmetric scale."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.register_buffer("pinned_scale", torch.empty(0, dtype=torch.float32))

        def pin(self, scale: float) -> None:
            """Return ``(scale, 0)`` from now on, whatever was observed."""
            self.pinned_scale = torch.tensor([scale], dtype=torch.float32)

        def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
            if self.pinned_scale.numel():
                return self.pinned_scale.clone(), torch.zeros(1, dtype=torch.int32)
            return super().calculate_qparams()

    class PinnablePerChannelObserver(PerChannelMinMaxObserver):
        """Per-channel symmetric weight observer whose scales can be pinned."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.register_buffer("pinned_scale", torch.empty(0, dtype=torch.float32))

        def pin(self, scales: npt.NDArray[np.float32]) -> None:
            """Return ``(scales, 0)`` from now on."""
            self.pinned_scale = torch.from_numpy(np.asarray(scales, dtype=np.float32).copy())

        def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
            if self.pinned_scale.numel():
                n = self.pinned_scale.numel()
                return self.pinned_scale.clone(), torch.zeros(n, dtype=torch.int64)
            return super().calculate_qparams()

    return PinnableMinMaxObserver, PinnablePerChannelObserver


def _quantizer(pinnable: bool) -> Any:
    """litert-torch's PT2EQuantizer with per-channel symmetric weights.

    Args:
        pinnable: use :func:`_pinnable_observers` (exact scales can be set) instead of litert-torch's
            own observers (histogram for activations), which calibrate better on their own.
    """
    import dataclasses

    from litert_torch.quantize import pt2e_quantizer as pq

    base = pq.get_symmetric_quantization_config(is_per_channel=True)
    act = base.input_activation
    config = base
    if pinnable:
        act_obs, weight_obs = _pinnable_observers()
        act = dataclasses.replace(act, observer_or_fake_quant_ctr=act_obs.with_args(eps=2**-12))
        weight = dataclasses.replace(base.weight, observer_or_fake_quant_ctr=weight_obs.with_args(eps=2**-12))
        config = dataclasses.replace(base, input_activation=act, output_activation=act, weight=weight)

    class Quantizer(pq.PT2EQuantizer):
        """litert-torch's quantizer, but an average pool's output gets its own observer.

        litert-torch makes a global average pool share its input's scale; the pooled values span a
        much smaller range, and when the classifier's learned input scale is pinned on the shared
        observer the feature map before the pool is clipped to it. TFLite's int8 MEAN rescales, so
        the output can have its own scale.
        """

        def annotate(self, model: Any) -> Any:
            from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

            model = super().annotate(model)
            _drop_non_tensor_annotations(model)
            for node in model.graph.nodes:
                if _is_constant_pad(node) and "quantization_annotation" not in node.meta and node.args:
                    # a zero pad keeps its input's scale (TFLite's int8 PAD needs equal scales), as a max pool does
                    src = node.args[0]
                    node.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map={src: act}, output_qspec=SharedQuantizationSpec((src, node)), _annotated=True
                    )
                    continue
                ann = node.meta.get("quantization_annotation")
                if (
                    node.op == "call_function"
                    and _op_name(node) in _AVERAGING
                    and ann is not None
                    and isinstance(ann.output_qspec, SharedQuantizationSpec)
                ):
                    ann.output_qspec = act
            return model

    return Quantizer().set_global(config)


def _export_for_calibration(model: Any, example: Any) -> tuple[Any, int]:
    """``torch.export`` with a dynamic batch (calibrate in batches), or batch 1 when the model forbids it."""
    import torch

    try:
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        two = torch.cat([example, example])
        return torch.export.export(model, (two,), dynamic_shapes=({0: batch},)).module(), _CALIB_BATCH
    except Exception as err:  # a model whose code fixes the batch size: calibrate one sample at a time
        log.debug("dynamic-batch export failed (%s); calibrating one sample at a time", err)
        return torch.export.export(model, (example,)).module(), 1


def _is_tensor(node: Any) -> bool:
    import torch

    return isinstance(getattr(node, "meta", {}).get("val"), torch.Tensor)


def _drop_non_tensor_annotations(model: Any) -> None:
    """Remove int8 annotations on symbolic sizes (``sym_size`` of a dynamic batch, Swin's window arithmetic).

    litert-torch's ``mul``/``add`` annotators match shape arithmetic too; an observer on a Python int fails
    (``'int' object has no attribute 'numel'``). Such values are not tensors and stay as they are.
    """
    for node in model.graph.nodes:
        ann = node.meta.get("quantization_annotation")
        if ann is None:
            continue
        for src in [s for s in ann.input_qspec_map if not _is_tensor(s)]:
            del ann.input_qspec_map[src]
        if not _is_tensor(node):
            ann.output_qspec = None
        if not ann.input_qspec_map and ann.output_qspec is None:
            del node.meta["quantization_annotation"]


def _is_constant_pad(node: Any) -> bool:
    import torch

    aten = torch.ops.aten
    if getattr(node, "op", None) != "call_function":
        return False
    if node.target is aten.constant_pad_nd.default:
        return len(node.args) < 3 or not node.args[2]
    if node.target is aten.pad.default:
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
        return mode == "constant" and not value
    return False


def _ints(value: Any, n: int) -> list[int]:
    return [int(v) for v in value] if isinstance(value, list | tuple) else [int(value)] * n


def _rewrite_for_quantization(gm: Any) -> list[str]:
    """Rewrite graph patterns litert-torch cannot quantize or lay out into equivalent ones it can.

    - ``aten.pad`` with all-zero pads (HuggingFace's TF-style "same" padding before 1x1 convs): removed.
    - ``aten.conv2d.padding`` (string padding, ``padding="same"``): litert-torch's quantizer annotates only
      ``aten.conv2d.default``, so such convs stayed float; rewritten to ``conv2d.default`` with the
      equivalent integer padding, preceded by a constant ``pad`` where "same" is asymmetric.

    Returns one line per kind of rewrite, for the report.
    """
    import torch

    aten = torch.ops.aten
    graph = gm.graph
    removed = same = 0
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target in (aten.pad.default, aten.constant_pad_nd.default) and len(node.args) >= 2:
            mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
            if (node.target is aten.constant_pad_nd.default or mode == "constant") and not any(node.args[1]):
                node.replace_all_uses_with(node.args[0])
                graph.erase_node(node)
                removed += 1
        elif node.target is aten.conv2d.padding:
            names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
            args = list(node.args) + [node.kwargs.get(k) for k in names[len(node.args) :]]
            x, w, b, stride, padding, dilation, groups = args
            stride = _ints(stride if stride is not None else 1, 2)
            dilation = _ints(dilation if dilation is not None else 1, 2)
            groups = int(groups) if groups is not None else 1
            padding = padding if padding is not None else "valid"
            weight = w.meta.get("val") if w.op != "get_attr" else _attr(gm, w.target)
            if weight is None or len(weight.shape) != 4:
                continue  # not a 2-D conv with a known weight: left as it is (its check names it if it stays float)
            kernel = list(weight.shape[2:])
            pads = [0, 0, 0, 0]  # left, right, top, bottom (F.pad order, last dim first)
            if padding == "same":
                for axis, (k, d) in enumerate(zip(kernel, dilation, strict=True)):
                    total = d * (int(k) - 1)
                    pads[2 * (1 - axis)] = total // 2
                    pads[2 * (1 - axis) + 1] = total - total // 2
            symmetric = pads[0] == pads[1] and pads[2] == pads[3]
            with graph.inserting_before(node):
                src = x
                conv_pad = [pads[2], pads[0]] if symmetric else [0, 0]
                if not symmetric:
                    src = graph.call_function(aten.pad.default, (x, pads, "constant", 0.0))
                    src.meta = dict(x.meta)
                    src.meta["val"] = torch.nn.functional.pad(x.meta["val"], pads)
                conv = graph.call_function(aten.conv2d.default, (src, w, b, stride, conv_pad, dilation, groups))
            conv.meta = dict(node.meta)
            node.replace_all_uses_with(conv)
            graph.erase_node(node)
            same += 1
    notes = []
    if removed:
        notes.append(f"{removed} zero-width pad(s) removed before quantization")
    if same:
        notes.append(f"{same} conv(s) with string padding rewritten to explicit padding for int8 kernels")
    if notes:
        graph.lint()
        gm.recompile()
    return notes


def _op_name(node: Any) -> str:
    target = getattr(node, "target", None)
    name = getattr(target, "__name__", str(target))
    return str(name).split(".")[0]


def _module_path(node: Any) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = str(list(stack.values())[-1][0])
    return path.removeprefix("L['self'].").removeprefix("L__self__.")


def _attr(module: Any, target: str) -> Any:
    obj = module
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _observer(module: Any, node: Any) -> Any:
    if getattr(node, "op", None) == "call_module":
        obs = _attr(module, node.target)
        if hasattr(obs, "pin"):
            return obs
    return None


def _match(table: QuantTable, path: str, weight: npt.NDArray[np.float32]) -> QuantizedNode | None:
    for q in table.nodes:
        if q.spec_layer == path and q.node.weight.size == weight.size:
            return q
    try:
        return table.match_weight(weight)
    except KeyError:
        return None


def _pin_scales(prepared: Any, table: QuantTable) -> tuple[int, list[str]]:
    """Pin the table's scales on the observers of every conv/linear; returns (layers pinned, notes)."""
    pinned: dict[int, float] = {}
    notes: list[str] = []
    count = 0
    for node in prepared.graph.nodes:
        if node.op != "call_function" or _op_name(node) not in _WEIGHTED or len(node.args) < 2:
            continue
        act_obs, weight_obs = _observer(prepared, node.args[0]), _observer(prepared, node.args[1])
        path = _module_path(node)
        if act_obs is None or weight_obs is None or node.args[1].args[0].op != "get_attr":
            notes.append(f"layer {path or node.name}: not annotated for int8 by litert-torch")
            continue
        weight = _attr(prepared, node.args[1].args[0].target).detach().cpu().numpy().astype(np.float32)
        q = _match(table, path, weight)
        if q is None:
            notes.append(f"layer {path or node.name}: no int8 scales in the table; observed on calibration data")
            continue
        weight_obs.pin(q.weight_scales)
        scale = float(q.input_scale)
        previous = pinned.get(id(act_obs))
        if previous is not None and previous != scale:
            scale = max(previous, scale)
            notes.append(
                f"layer {path}: input shared with another layer of a different scale; used the larger, {scale:.6g}"
            )
        _pin_through(prepared, node.args[0], act_obs, scale, pinned)
        count += 1
    return count, notes


def _pin_through(prepared: Any, obs_node: Any, obs: Any, scale: float, pinned: dict[int, float]) -> None:
    """Pin ``obs`` and, back through scale-preserving ops (max pool, flatten), the observers feeding it."""
    obs.pin(scale)
    pinned[id(obs)] = scale
    producer = obs_node.args[0] if obs_node.args else None
    while producer is not None and getattr(producer, "op", None) == "call_function":
        if _op_name(producer) not in _SCALE_PRESERVING or not producer.args:
            return
        upstream = _observer(prepared, producer.args[0])
        if upstream is not None:
            if id(upstream) not in pinned:
                upstream.pin(scale)
                pinned[id(upstream)] = scale
            return
        producer = producer.args[0]


def pt2e_quantize(
    model: Any,
    example: Any,
    data: npt.NDArray[np.float32],
    table: QuantTable | None,
    data_label: str = "calibration",
) -> tuple[Any, Any, str, list[str]]:
    """Quantize ``model`` with litert-torch's PT2E quantizer; returns (converted module, quantizer, scales, notes).

    Args:
        model: an eval-mode copy of the user's module (it is exported, not modified).
        example: one NCHW input tensor of batch 1.
        data: NCHW inputs observed for the activations the table does not pin (all of them without a table).
        table: int8 scales to pin on every conv/linear (None: observe everything).
        data_label: what ``data`` is, for the report.
    """
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    pin = table is not None and table.origin == "qat"
    exported, batch = _export_for_calibration(model, example)
    rewrites = _rewrite_for_quantization(exported)
    fake = sorted(
        {str(n.target) for n in exported.graph.nodes if n.op == "call_function" and "fake_quant" in str(n.target)}
    )
    if fake:
        raise ValueError(_FAKE_QUANT.format(", ".join(fake)))
    quantizer = _quantizer(pinnable=pin)
    prepared = prepare_pt2e(exported, quantizer)
    notes: list[str] = list(rewrites)
    pinned = 0
    if pin and table is not None:
        pinned, pin_notes = _pin_scales(prepared, table)
        notes.extend(pin_notes)
    with torch.no_grad():
        for i in range(0, len(data), batch):
            prepared(torch.from_numpy(np.ascontiguousarray(data[i : i + batch])))
    converted = convert_pt2e(prepared, fold_quantize=False)
    for mod in converted.modules():
        # exported in eval mode (BatchNorm folded, dropout gone); only the flag litert-torch warns about is stale
        mod.training = False
    if not pin:
        scales = f"calibrated by litert-torch's PT2E observers (histogram) on {len(data)} {data_label} samples"
        if table is not None:
            scales += "; the other int8 targets use fitslim's absmax table"
    else:
        scales = (
            f"learned QuantSpec ({pinned} layers) used exactly for the inputs and weights of the int8 "
            f"conv/FC kernels; other activations (residual sums, outputs) observed min/max on {len(data)} "
            f"{data_label} samples"
        )
    return converted, quantizer, scales, notes


def _float_io(content: bytes) -> bytes:
    """Give an int8-I/O model float32 I/O: QUANTIZE after each int8 input, DEQUANTIZE before each int8 output."""
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    model = fbu.read_model_from_bytearray(bytearray(content))
    quantized = (fb.TensorType.INT8, fb.TensorType.UINT8)

    def opcode(code: int, version: int) -> int:
        for i, oc in enumerate(model.operatorCodes):
            if max(oc.builtinCode, oc.deprecatedBuiltinCode) == code:
                return i
        oc = fb.OperatorCodeT()
        oc.builtinCode = code
        oc.deprecatedBuiltinCode = min(code, fb.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
        oc.version = version
        model.operatorCodes.append(oc)
        return len(model.operatorCodes) - 1

    def float_twin(sub: Any, index: int) -> int:
        old = sub.tensors[index]
        new = fb.TensorT()
        new.shape = copy.copy(old.shape)
        new.shapeSignature = copy.copy(old.shapeSignature)
        new.type = fb.TensorType.FLOAT32
        new.name = old.name
        name = old.name if old.name is not None else b""
        old.name = name + b"_int8" if isinstance(name, bytes) else f"{name}_int8"
        model.buffers.append(fb.BufferT())
        new.buffer = len(model.buffers) - 1
        sub.tensors.append(new)
        return len(sub.tensors) - 1

    def op(code: int, version: int, options_type: int, options: Any, src: int, dst: int) -> Any:
        o = fb.OperatorT()
        o.opcodeIndex = opcode(code, version)
        o.inputs = np.array([src], dtype=np.int32)
        o.outputs = np.array([dst], dtype=np.int32)
        o.builtinOptionsType = options_type
        o.builtinOptions = options
        return o

    remap: dict[tuple[int, int], int] = {}
    for s, sub in enumerate(model.subgraphs):
        inputs, outputs = list(sub.inputs), list(sub.outputs)
        for k, t in enumerate(inputs):
            if sub.tensors[t].type in quantized:
                f = float_twin(sub, t)
                q = op(fb.BuiltinOperator.QUANTIZE, 1, fb.BuiltinOptions.QuantizeOptions, fb.QuantizeOptionsT(), f, t)
                sub.operators.insert(0, q)
                inputs[k] = remap[(s, t)] = f
        for k, t in enumerate(outputs):
            if sub.tensors[t].type in quantized:
                f = float_twin(sub, t)
                dq = op(
                    fb.BuiltinOperator.DEQUANTIZE, 2, fb.BuiltinOptions.DequantizeOptions, fb.DequantizeOptionsT(), t, f
                )
                sub.operators.append(dq)
                outputs[k] = remap[(s, t)] = f
        sub.inputs = np.array(inputs, dtype=np.int32)
        sub.outputs = np.array(outputs, dtype=np.int32)
    for sig in model.signatureDefs or []:
        for tmap in list(sig.inputs or []) + list(sig.outputs or []):
            tmap.tensorIndex = remap.get((sig.subgraphIndex, tmap.tensorIndex), tmap.tensorIndex)
    return bytes(fbu.convert_object_to_bytearray(model))


def convert_torch(job: ExportJob) -> TorchConversion:
    """Convert the job's torch model to a ``.tflite`` flatbuffer at ``job.precision``.

    The user's module is neither switched to eval mode nor modified: a CPU copy is converted.

    Raises:
        ImportError: litert-torch is missing (names the extra to install).
        ValueError: int8 without a scale table or calibration inputs; a model that still runs fake-quant ops.
    """
    if isinstance(job.samples, tuple) and job.precision == "int8":
        dtypes = ", ".join(str(a.dtype) for a in job.samples)
        raise ValueError(
            f"tflite: this torch model takes {len(job.samples)} inputs ({dtypes}); int8 TFLite (PT2E calibration) "
            "takes one input tensor here. Export it at fp32/fp16 for TFLite, or int8 to 'tensorrt'."
        )
    litert_torch = _litert()
    try:
        return _convert(job, litert_torch)
    except Exception as err:
        text = str(err)
        if "fake_quantize" in text and not isinstance(err, ValueError):
            op = next((w for w in text.replace(":", " ").split() if "fake_quantize" in w), "fake_quantize")
            raise ValueError(_FAKE_QUANT.format(op.strip(".,'\"`"))) from err
        raise


def _convert(job: ExportJob, litert_torch: Any) -> TorchConversion:
    import torch

    model = copy.deepcopy(job.source.model).cpu().eval()
    samples = job.samples_nchw()
    arrays = samples if isinstance(samples, tuple) else (samples,)
    args = tuple(torch.from_numpy(np.ascontiguousarray(a[:1])) for a in arrays)  # several inputs keep their dtypes
    example = args[0]
    notes: list[str] = []
    with quiet():
        if job.precision == "fp32":
            edge = litert_torch.convert(model, args)
            return TorchConversion(bytes(edge.model_content()))
        if job.precision == "fp16":
            from litert_torch.generative.quantize import quant_recipes

            edge = litert_torch.convert(model, args, quant_config=quant_recipes.full_fp16_recipe())
            notes.append("fp16 weights (ai-edge-quantizer FLOAT_CAST), dequantized to float32 at load; float32 math")
            return TorchConversion(bytes(edge.model_content()), notes=notes)
        if job.precision != "int8":
            raise ValueError(f"target tflite: precision {job.precision!r} is not one of fp32, fp16, int8.")
        from litert_torch.quantize.quant_config import QuantConfig

        calib = job.calibration_nchw()
        if job.quant is None and calib is None:
            raise ValueError(
                "target tflite: int8 from torch needs calibration inputs or a QuantSpec; pass calibration= "
                "or quant_spec= to export()."
            )
        # without calibration data the activations a QuantSpec does not cover are observed on the
        # verification samples, the only inputs the job has
        data, label = (calib, "calibration") if calib is not None else (samples, "verification")
        data = data[:CALIBRATION_LIMIT]
        converted, quantizer, scales, pin_notes = pt2e_quantize(model, example, data, job.quant, label)
        notes.extend(pin_notes)
        edge = litert_torch.convert(converted, (example,), quant_config=QuantConfig(pt2e_quantizer=quantizer))
        content = _float_io(bytes(edge.model_content()))
    return TorchConversion(content, scales, notes)


def multi_input_feed(interpreter: Any, samples: tuple[Any, ...]) -> Callable[[int], None]:
    """Fit a LiteRT model with several inputs (token ids, masks) to one sample each; returns ``feed(i)``, which sets
    sample ``i`` of every input array.

    The model's inputs are matched to ``samples`` by litert-torch's ``args_<i>`` names (their order in the
    torch ``forward``), else taken in the interpreter's order.

    Raises:
        ValueError: the model has another number of inputs.
    """
    details = list(interpreter.get_input_details())
    if len(details) != len(samples):
        raise ValueError(f"tflite: the model takes {len(details)} inputs; got {len(samples)} arrays.")

    def position(d: dict[str, Any]) -> int:
        found = re.search(r"args_(\d+)", str(d.get("name", "")))
        return int(found.group(1)) if found else details.index(d)

    details.sort(key=position)
    for d, a in zip(details, samples, strict=True):
        interpreter.resize_tensor_input(d["index"], [1, *a.shape[1:]])
    interpreter.allocate_tensors()

    def feed(i: int) -> None:
        for d, a in zip(details, samples, strict=True):
            interpreter.set_tensor(d["index"], np.ascontiguousarray(a[i : i + 1], dtype=np.dtype(d["dtype"])))

    return feed
