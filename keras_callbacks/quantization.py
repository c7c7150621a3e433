"""Keras 3 ``QuantizationAware``: symmetric int8 fake-quant inside the user's own ``model.fit``.

Keras 3 has no int8 QAT of its own. This callback patches the ``call`` of every Dense, Conv1D,
Conv2D, DepthwiseConv2D and SeparableConv2D layer in ``on_train_begin`` (then rebuilds the train
function), so the compiled train step runs

- per-output-channel symmetric fake-quant of the kernel (``±qmax``, scale ``max|w_c| / qmax``), and
- per-tensor symmetric fake-quant of the layer input with a range learned by an observer,

both through ``keras.quantizers.fake_quant_with_min_max_vars`` (straight-through gradient; on the
TensorFlow backend it lowers to ``FakeQuantWithMinMaxVars`` ops). ncnn int8 and the TensorRT Q/DQ ONNX
take the learned scales exactly from the QuantSpec; :func:`tflite_int8` converts to TFLite with every
layer input clipped to its learned range, so the converter's int8 ranges are the learned ones.

BatchNorm folding: per-channel symmetric absmax quantization is equivariant to a per-channel rescale,
so fake-quantizing the unfolded kernel uses exactly the integer grid of the BN-folded kernel once
BatchNorm runs on its moving statistics (frozen at ``freeze_bn``). The QuantSpec weight scales are
those of the folded kernel (``max|w_c * gamma_c / sqrt(var_c + eps)| / qmax``), as on the Lightning side.

Every change to the model (the ``call`` methods, the range variables and the ``save_own_variables`` /
``load_own_variables`` that carry them) is made through :mod:`keras_callbacks._hooks` and taken back there. During
``fit`` the observed ranges are non-trainable variables of the layers, so ``BackupAndRestore``, ``save_weights`` and
``model.save`` carry them (reload a ``.keras`` file with :func:`load_model`). At ``on_train_end`` the spec is built
(:attr:`QuantizationAware.quant_spec`, and :attr:`QuantizationAware.result`, which an ``Export`` callback after this
one takes) and the model is given back as it was: float, no range variable, no replaced method (also when the train
step raised). The int8 artifacts and :func:`fake_quant_inference` / :func:`tflite_int8` reproduce the fake-quant
model from the spec. ``keep_fake_quant=True`` keeps the fake-quant in inference form (ranges frozen, no observing):
after ``fit`` the model then IS the int8 model, so ``evaluate``/``predict`` agree with the int8 artifacts. This
matters when scoring the model in Keras: the network learns to rely on the clipping of its inputs (the digits CNN:
91.4% as the fake-quant model, 91.8% as TFLite int8, but 64.3% as the bare float model).
:meth:`QuantizationAware.remove` then gives back the plain float model, and :func:`float_model` a temporary float
view; :func:`fake_quant_inference` and :func:`tflite_int8` set the model's own fake-quant aside, so nothing is
applied twice. A later ``fit`` trains the kept quantized model (ranges frozen); one with a new
``QuantizationAware`` replaces the fake-quant instead of stacking it and continues from the kept ranges.

``start``, ``freeze_observers`` and ``freeze_bn`` are fractions of this fit's steps (``epoch * steps_per_epoch +
batch``, ``initial_epoch`` included; :mod:`keras_callbacks._steps`), not of the optimizer's iterations: a model fit
before, reloaded from a ``.keras`` file or compiled again fine-tunes through the whole schedule. At the end of the
first epoch with the observers on, the callback checks that they observed, so a fit whose train step did not run the
fake-quant fails then, not after the whole fit.

Example:
    >>> from keras_callbacks.quantization import QuantizationAware, float_model
    >>> qat = QuantizationAware(start=0.6)
    >>> # model.fit(x, y, epochs=10, callbacks=[qat]); spec = qat.quant_spec
    >>> # exporters.export(model, ["tensorrt"], precision="int8", **qat.result.export_arguments())
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import keras
import numpy as np
import numpy.typing as npt
from keras import ops
from typing_extensions import override

from exporters.core.source import keras_layers
from fitslim.callback_spec import QAT_OBSERVERS, QuantizationAwareSpec, call_arguments
from fitslim.errors import ArgumentError, fail, fail_type
from fitslim.int8 import MIN_SCALE, absmax_scale, qmax
from fitslim.metrics import QAT_PHASES, bn_freeze_warning, qat_metrics
from fitslim.quantspec import LayerQuant, QuantSpec
from keras_callbacks._backend import replica_union, sync_state
from keras_callbacks._hooks import (
    Hooks,
    groups,
    handoff,
    installed,
    rebuild_train_function,
    reset_compiled,
    swapped,
)
from keras_callbacks._hooks import remove as remove_hooks
from keras_callbacks._steps import fit_step

__all__ = [
    "OBSERVERS",
    "QATResult",
    "QuantizationAware",
    "fake_quant",
    "fake_quant_inference",
    "float_model",
    "folded_weights",
    "load_model",
    "tflite_int8",
]

log = logging.getLogger(__name__)

#: activation observers: exponential moving average of the batch absmax, running absmax, EMA of a percentile
OBSERVERS = QAT_OBSERVERS

#: EMA decay of the ``ema`` and ``percentile`` observers
EMA_DECAY = 0.99
#: percentile of ``|x|`` used by the ``percentile`` observer
PERCENTILE = 99.99

_RANGE = "fitslim_input_range"
_MID_RANGE = "fitslim_mid_range"  # SeparableConv2D: the input of the pointwise conv
_QUANTIZED = ("Dense", "Conv1D", "Conv2D", "DepthwiseConv2D", "SeparableConv2D")


#: every layer of a model, those of nested models (a ConvNeXt's stem and downsampling blocks) included
_walk = keras_layers


def _patterns(name: str, value: Any) -> list[re.Pattern[str]] | None:
    """fnmatch patterns on layer names (as ``Pruning`` and the Lightning callbacks take them), compiled."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(v, str) for v in value):
        raise fail(
            "QuantizationAware", name, "must be a list of layer names or fnmatch patterns.", f"e.g. {name}=['head_*']."
        ).showing(value)
    return [re.compile(fnmatch.translate(v)) for v in value]


# ------------------------------------------------------------------------------------------ core math


def fake_quant(x: Any, amax: Any, bits: int = 8, axis: int | None = None) -> Any:
    """Symmetric fake-quant of ``x`` on ``[-amax, amax]`` with ``2 * qmax(bits) + 1`` levels.

    ``scale = amax / qmax`` (``x ≈ q * scale``, zero point 0, clamp ±qmax), as :mod:`fitslim.int8`.
    The gradient is straight-through for ``x``; ``amax`` gets none.

    Args:
        x: the tensor.
        amax: a scalar range, or one range per channel along ``axis``.
        bits: integer width, 2..8.
        axis: the channel axis for per-channel ranges, None for per tensor.
    """
    tiny = float(MIN_SCALE) * qmax(bits)
    r = ops.maximum(ops.stop_gradient(ops.cast(amax, "float32")), tiny)
    return keras.quantizers.fake_quant_with_min_max_vars(x, -r, r, num_bits=bits, narrow_range=True, axis=axis)


def _channel_absmax(kernel: Any, depthwise: bool) -> tuple[Any, Any]:
    """The kernel with output channels on the last axis, and the per-channel ``max|w|``."""
    k = kernel
    if depthwise:  # (kh, kw, C, m) → (kh, kw, C*m): output channel c*m + j, as exporters.source_weights
        shape = ops.shape(k)
        k = ops.reshape(k, (shape[0], shape[1], shape[2] * shape[3]))
    amax = ops.max(ops.abs(k), axis=tuple(range(len(k.shape) - 1)))
    return k, amax


def _quant_kernel(kernel: Any, bits: int, per_channel: bool, depthwise: bool) -> Any:
    k, amax = _channel_absmax(kernel, depthwise)
    if per_channel:
        q = fake_quant(k, amax, bits, axis=len(k.shape) - 1)
    else:
        q = fake_quant(k, ops.max(amax), bits)
    return ops.reshape(q, ops.shape(kernel)) if depthwise else q


def folded_weights(model: Any) -> dict[str, npt.NDArray[np.float32]]:
    """Each quantizable layer's deployed kernel, output channel first, BatchNorm folded in where one follows.

    Keys are layer names (a SeparableConv2D gives ``name`` for its depthwise and ``name/pointwise``).
    """
    bn_after = _bn_after(model)
    out: dict[str, npt.NDArray[np.float32]] = {}
    for layer in _walk(model):
        kind = type(layer).__name__
        if kind not in _QUANTIZED:
            continue
        factor = _bn_factor(bn_after.get(layer.name))
        if kind == "SeparableConv2D":
            dk = np.asarray(ops.convert_to_numpy(layer.depthwise_kernel), np.float32)
            out[layer.name] = dk.transpose(2, 3, 0, 1).reshape(-1, 1, dk.shape[0], dk.shape[1])
            pk = np.asarray(ops.convert_to_numpy(layer.pointwise_kernel), np.float32)
            w = pk.transpose(3, 2, 0, 1)
            out[f"{layer.name}/pointwise"] = w * (factor.reshape(-1, 1, 1, 1) if factor is not None else 1.0)
            continue
        if kind == "DepthwiseConv2D":
            k = np.asarray(ops.convert_to_numpy(layer.kernel), np.float32)
            w = k.transpose(2, 3, 0, 1).reshape(-1, 1, k.shape[0], k.shape[1])
        else:
            k = np.asarray(ops.convert_to_numpy(layer.kernel), np.float32)
            w = k.transpose(k.ndim - 1, k.ndim - 2, *range(k.ndim - 2))
        if factor is not None:
            w = w * factor.reshape(-1, *([1] * (w.ndim - 1)))
        out[layer.name] = np.ascontiguousarray(w, dtype=np.float32)
    return out


def _bn_after(model: Any) -> dict[str, Any]:
    """``{layer name: BatchNormalization}`` for layers whose only consumer is a BatchNorm (foldable)."""
    out: dict[str, Any] = {}
    consumers: dict[int, list[Any]] = {}
    try:
        for layer in _walk(model):
            for node in getattr(layer, "_inbound_nodes", []):
                for t in node.input_tensors:
                    consumers.setdefault(id(t), []).append(layer)
        for layer in _walk(model):
            if type(layer).__name__ not in _QUANTIZED or len(getattr(layer, "_inbound_nodes", [])) != 1:
                continue
            users = consumers.get(id(layer.output), [])
            if len(users) == 1 and isinstance(users[0], keras.layers.BatchNormalization):
                out[layer.name] = users[0]
    except (AttributeError, ValueError):  # a subclassed model: no graph, nothing folded
        return {}
    return out


def _bn_factor(bn: Any) -> npt.NDArray[np.float32] | None:
    if bn is None:
        return None
    var = np.asarray(ops.convert_to_numpy(bn.moving_variance), np.float32)
    gamma = np.asarray(ops.convert_to_numpy(bn.gamma), np.float32) if bn.scale else np.ones_like(var)
    return (gamma / np.sqrt(var + np.float32(bn.epsilon))).astype(np.float32)


# --------------------------------------------------------------------------------------- layer patching


class _State:
    """What the patched calls read: Python flags set by the callback between steps."""

    def __init__(self, bits_w: int, bits_a: int, per_channel: bool, observer: str) -> None:
        self.bits_w, self.bits_a, self.per_channel, self.observer = bits_w, bits_a, per_channel, observer
        self.enabled = False
        self.observing = False
        self.weights: bool | str = True
        self.clip_only = False


def _training_flag() -> bool:
    """The ``training`` value of the current Keras call context (Conv layers take no ``training`` arg)."""
    from keras.src.backend.common import global_state

    ctx = global_state.get_global_attribute("current_call_ctx")
    return bool(ctx.get_value("training", False)) if ctx is not None else False


def _observe(var: Any, x: Any, state: _State) -> Any:
    """Update the range variable from this batch (training only) and return the range to use."""
    a = ops.abs(ops.stop_gradient(ops.cast(x, "float32")))
    # under tf.distribute each replica holds a slice of the batch: the statistic is the union's (as on one device)
    if state.observer == "percentile":
        batch = ops.quantile(replica_union(ops.reshape(a, (-1,))), PERCENTILE / 100.0)
    else:
        batch = ops.max(replica_union(ops.reshape(ops.max(a), (1,))))
    old = ops.convert_to_tensor(var)
    if state.observer == "minmax":
        new = ops.maximum(old, batch)
    else:
        new = ops.where(old > 0, EMA_DECAY * old + (1.0 - EMA_DECAY) * batch, batch)
    var.assign(new)
    return new


_KIND = "quantization"  # the Hooks group kind of this module


def _is_patched(layer: Any) -> bool:
    """``layer`` runs a fake-quant ``call`` a :class:`Hooks` group installed (not a user's own instance ``call``)."""
    return installed(layer.__dict__.get("call"))


def _set_aside(model: Any, hooks: Hooks) -> bool:
    """Take the model's own fake-quant ``call`` methods off in ``hooks`` (back at its undo); whether there were any."""
    found = False
    for layer in _walk(model):
        if _is_patched(layer):
            hooks.replace(layer, "call")
            found = True
    return found


def _patched_call(
    layer: Any, original: Callable[..., Any], state: _State, ranges: tuple[Any, Any] | None = None
) -> Callable[..., Any]:
    """The fake-quant ``call`` of a quantizable layer.

    ``ranges``: constant ``(input range, mid range)``; None reads (and, while observing, updates) the layer's
    range variables.
    """
    kind = type(layer).__name__
    attr = "kernel" if kind == "DepthwiseConv2D" else "_kernel"

    def call(inputs: Any, *args: Any, **kwargs: Any) -> Any:
        if not state.enabled:
            return original(inputs, *args, **kwargs)
        if ranges is not None:
            amax = ops.convert_to_tensor(ranges[0])
        elif state.observing and _training_flag():
            amax = _observe(getattr(layer, _RANGE), inputs, state)
        else:
            amax = ops.convert_to_tensor(getattr(layer, _RANGE))
        if state.clip_only:  # the learned range as a clip, for converters that calibrate the rest
            return original(ops.clip(inputs, -amax, amax), *args, **kwargs)
        x = fake_quant(inputs, amax, state.bits_a)
        if kind == "SeparableConv2D":
            return _separable(layer, x, state, None if ranges is None else ranges[1])
        if not state.weights or (kind == "Dense" and state.weights == "conv"):
            return original(x, *args, **kwargs)
        qk = _quant_kernel(layer.__dict__[attr], state.bits_w, state.per_channel, kind == "DepthwiseConv2D")
        with swapped(layer, attr, qk):
            return original(x, *args, **kwargs)

    return call


def _separable(layer: Any, x: Any, state: _State, mid_range: Any = None) -> Any:
    """SeparableConv2D with both kernels and the intermediate tensor fake-quantized (as deployed: two convs)."""
    dk = _quant_kernel(layer.depthwise_kernel, state.bits_w, state.per_channel, True)
    y = ops.depthwise_conv(
        x,
        dk,
        strides=layer.strides,
        padding=layer.padding,
        data_format=layer.data_format,
        dilation_rate=layer.dilation_rate,
    )
    if mid_range is not None:
        amax = ops.convert_to_tensor(mid_range)
    elif state.observing and _training_flag():
        amax = _observe(getattr(layer, _MID_RANGE), y, state)
    else:
        amax = ops.convert_to_tensor(getattr(layer, _MID_RANGE))
    y = fake_quant(y, amax, state.bits_a)
    pk = _quant_kernel(layer.pointwise_kernel, state.bits_w, state.per_channel, False)
    y = ops.conv(y, pk, strides=1, padding="valid", data_format=layer.data_format)
    if layer.use_bias:
        shape = (1,) * (len(y.shape) - 1) + (-1,) if layer.data_format == "channels_last" else (1, -1, 1, 1)
        y = y + ops.reshape(layer.bias, shape)
    return layer.activation(y) if layer.activation is not None else y


def _add_range(layer: Any, name: str, hooks: Hooks) -> Any:
    """A non-trainable scalar range variable on ``layer`` (in ``hooks``), saved and loaded with the layer's own ones.

    Dense/Conv ``save_own_variables`` write only kernel and bias, while loading checks every variable:
    the instance methods are replaced (in ``hooks`` too) so the ranges travel in ``save_weights`` /
    ``BackupAndRestore`` files.
    """
    existing = layer.__dict__.get(name)
    if existing is not None:
        return existing
    var = hooks.variable(layer, name, shape=(), initializer="zeros", trainable=False, aggregation="mean")
    if "save_own_variables" not in layer.__dict__:
        # the class methods are looked up at each call (load_model swaps them for the duration of a load)

        def ours() -> list[tuple[int, Any]]:
            everything = list(layer._trainable_variables) + list(layer._non_trainable_variables)
            extra = [layer.__dict__[n] for n in (_RANGE, _MID_RANGE) if n in layer.__dict__]
            return [(i, v) for i, v in enumerate(everything) if any(v is e for e in extra)]

        def save_own_variables(store: Any) -> None:
            type(layer).save_own_variables(layer, store)
            for i, v in ours():
                if str(i) not in store:  # the base Layer method already saves every variable
                    store[str(i)] = v

        def load_own_variables(store: Any) -> None:
            type(layer).load_own_variables(layer, store)
            for i, v in ours():
                v.assign(store[str(i)])

        hooks.replace(layer, "save_own_variables", save_own_variables)
        hooks.replace(layer, "load_own_variables", load_own_variables)
    return var


def _ranges_of(model: Any) -> dict[tuple[str, str], npt.NDArray[np.float32]]:
    """The observed ranges a model carries now (an earlier fit kept them, or a load), ``{(layer, name): value}``."""
    out = {}
    for layer in _walk(model):
        for name in (_RANGE, _MID_RANGE):
            var = layer.__dict__.get(name)
            if var is not None:
                out[(layer.name, name)] = np.asarray(ops.convert_to_numpy(var), np.float32)
    return out


@contextlib.contextmanager
def fake_quant_inference(model: Any, spec: QuantSpec, fold_bn: bool = False, clip_only: bool = False) -> Iterator[Any]:
    """Within the block, ``model`` runs with fake-quant at the spec's learned ranges (inference only).

    Args:
        model: the Keras model the spec was learned on.
        spec: its QuantSpec.
        fold_bn: compute each conv in its deployed form, BatchNorm folded in (kernel ``w * gamma / sqrt(var + eps)``
            fake-quantized per output channel, the BatchNorm layer an identity; Dense kernels left float).
            False: the exact fake-quant reference of training.
        clip_only: no rounding, only each layer input clipped to its learned range ``±input_scale * qmax``:
            a float graph that behaves like the QAT model, for converters that calibrate it
            (the TFLite converter keeps the clips, so the calibrated ranges are the learned ones).

    Raises:
        ValueError: a spec layer that is not a quantizable layer of ``model``.
    """
    everything = _walk(model)
    layers = {layer.name: layer for layer in everything}
    bn_after = _bn_after(model) if fold_bn else {}
    names = [x.name for x in spec.layers]
    with Hooks(model, "fake-quant view") as hooks:
        # a model kept quantized (keep_fake_quant, load_model) runs its own fake-quant: set it aside (exactly
        # restored after the block) so the spec's ranges apply once, and clip_only gives a graph without fake-quant
        _set_aside(model, hooks)
        for lq in spec:
            if "/" in lq.name:
                continue
            layer = layers.get(lq.name)
            if layer is None or type(layer).__name__ not in _QUANTIZED:
                raise ValueError(
                    f"fake_quant_inference: QuantSpec layer {lq.name!r} is not a quantizable layer of this model. "
                    "HINT: pass the model the spec was learned on."
                )
            kind = type(layer).__name__
            amax = lq.input_scale * qmax(spec.activation_bits)
            if fold_bn and not clip_only and kind in ("Conv1D", "Conv2D", "DepthwiseConv2D"):
                bn = bn_after.get(layer.name)
                hooks.replace(layer, "call", _folded_call(layer, bn, amax, spec))
                if bn is not None:
                    hooks.replace(bn, "call", lambda inputs, *a, **k: inputs)
                continue
            state = _State(spec.weight_bits, spec.activation_bits, True, "ema")
            state.enabled, state.weights = True, "conv" if fold_bn else True
            state.clip_only = clip_only
            mid = spec.layers[names.index(lq.name) + 1] if kind == "SeparableConv2D" else None
            ranges = (
                np.float32(amax),
                None if mid is None else np.float32(mid.input_scale * qmax(spec.activation_bits)),
            )
            hooks.replace(layer, "call", _patched_call(layer, layer.call, state, ranges))
        yield model


@contextlib.contextmanager
def float_model(model: Any) -> Iterator[Any]:
    """Within the block, a model quantized by :class:`QuantizationAware` runs as its plain float model.

    Its fake-quant is set aside and put back, unchanged, after the block (compiled functions are rebuilt on
    both sides). Use it to hand the float model and its QuantSpec to exporters that take the two separately:

    Example:
        >>> # with float_model(model): report = exporters.export(model, ["tensorrt"], quant_spec=qat.quant_spec)
    """
    with Hooks(model, "float view") as hooks:
        patched = _set_aside(model, hooks)
        if patched:
            reset_compiled(model)
        try:
            yield model
        finally:
            if patched:
                reset_compiled(model)


def _quantize_for_inference(
    layers: Sequence[Any], weight_bits: int, activation_bits: int, per_channel: bool, hooks: Hooks
) -> None:
    """Fake-quant on ``layers`` in inference form (in ``hooks``): ranges read from their variables, never updated."""
    state = _State(weight_bits, activation_bits, per_channel, "ema")
    state.enabled = True
    for layer in layers:
        hooks.replace(layer, "call", _patched_call(layer, layer.call, state))


def load_model(
    filepath: str | os.PathLike[str],
    custom_objects: dict[str, Any] | None = None,
    compile: bool = True,
    safe_mode: bool = True,
    weight_bits: int = 8,
    activation_bits: int = 8,
    per_channel: bool = True,
) -> Any:
    """``keras.saving.load_model`` for a ``.keras`` file saved during or after a fit with :class:`QuantizationAware`.

    Such a file holds each quantized layer's learned input range next to its kernel and bias, which a plain
    ``keras.saving.load_model`` rejects ("Layer 'conv' expected 2 variables, but received 3"). Here the range
    variables are re-created before the weights load, and every layer whose range was observed runs its
    fake-quant in inference form, as the saved model did. A file saved mid-training (e.g. by
    ``keras.callbacks.ModelCheckpoint``) resumes with a new ``QuantizationAware`` in ``fit`` (pass
    ``initial_epoch``): it continues from the saved ranges at the step ``initial_epoch`` gives. Files without ranges
    load as with ``keras.saving.load_model``. Not thread-safe: the Dense/Conv classes' ``load_own_variables`` are
    swapped for the duration of the call.

    Args:
        filepath: the ``.keras`` file.
        custom_objects: as for ``keras.saving.load_model``.
        compile: as for ``keras.saving.load_model``.
        safe_mode: as for ``keras.saving.load_model``.
        weight_bits: the ``weight_bits`` of the ``QuantizationAware`` that trained the model.
        activation_bits: its ``activation_bits``.
        per_channel: its ``per_channel``.

    Example:
        >>> # model = load_model("checkpoint.keras"); model.fit(x, y, initial_epoch=3, callbacks=[QuantizationAware()])
    """
    bits = QuantizationAwareSpec(weight_bits=weight_bits, activation_bits=activation_bits)
    weight_bits, activation_bits = bits.weight_bits, bits.activation_bits
    loaded: list[Any] = []
    classes = [getattr(keras.layers, name) for name in _QUANTIZED]
    hooks = Hooks(None, _KIND, kept=True)  # registered under the model once it exists

    def tolerant(original: Callable[..., Any]) -> Callable[..., Any]:
        def load_own_variables(self: Any, store: Any) -> None:
            extra = len(store.keys()) - len(self._trainable_variables) - len(self._non_trainable_variables)
            if extra > 0 and self.built and _RANGE not in self.__dict__:
                _add_range(self, _RANGE, hooks)
                if extra > 1 and type(self).__name__ == "SeparableConv2D":
                    _add_range(self, _MID_RANGE, hooks)
                loaded.append(self)
                self.load_own_variables(store)  # the instance method _add_range installed
                return
            original(self, store)

        return load_own_variables

    with contextlib.ExitStack() as stack:
        for cls in classes:
            stack.enter_context(swapped(cls, "load_own_variables", tolerant(cls.load_own_variables)))
        model = keras.saving.load_model(filepath, custom_objects=custom_objects, compile=compile, safe_mode=safe_mode)
    hooks.attach(model)  # QuantizationAware.remove(model) takes the ranges and the fake-quant off
    observed = [layer for layer in loaded if float(ops.convert_to_numpy(getattr(layer, _RANGE))) > 0.0]
    _quantize_for_inference(observed, weight_bits, activation_bits, per_channel, hooks)
    if loaded:
        log.info(
            "QuantizationAware.load_model: input ranges of %d layers restored, %d run fake-quant",
            len(loaded),
            len(observed),
        )
    return model


def _folded_call(layer: Any, bn: Any, amax: float, spec: QuantSpec) -> Callable[..., Any]:
    """A conv call computing ``BN(conv(fq(x), w) + b)`` as ``conv(fq(x), fq(w * f)) + b'`` (deployed form)."""
    depthwise = type(layer).__name__ == "DepthwiseConv2D"
    attr = "kernel" if depthwise else "_kernel"
    original = layer.call
    kernel = np.asarray(ops.convert_to_numpy(layer.__dict__[attr]), np.float32)
    factor = _bn_factor(bn)
    if factor is None:
        folded, extra = kernel, None
    else:
        folded = kernel * (factor.reshape(kernel.shape[2], kernel.shape[3]) if depthwise else factor)
        mean = np.asarray(ops.convert_to_numpy(bn.moving_mean), np.float32)
        beta = np.asarray(ops.convert_to_numpy(bn.beta), np.float32) if bn.center else np.zeros_like(mean)
        bias = np.asarray(ops.convert_to_numpy(layer.bias), np.float32) if layer.use_bias else np.zeros_like(mean)
        extra = ((factor - 1.0) * bias - factor * mean + beta).astype(np.float32)

    def call(inputs: Any, *args: Any, **kwargs: Any) -> Any:
        x = fake_quant(inputs, amax, spec.activation_bits)
        qk = _quant_kernel(ops.convert_to_tensor(folded), spec.weight_bits, True, depthwise)
        with swapped(layer, attr, qk):
            y = original(x, *args, **kwargs)
        return y if extra is None else y + ops.convert_to_tensor(extra)

    return call


def tflite_int8(model: Any, spec: QuantSpec, representative: npt.ArrayLike, limit: int = 512) -> bytes:
    """A full-integer ``.tflite`` of a QAT-trained Keras 3 model (TensorFlow backend) that keeps its learned ranges.

    Converts inside ``fake_quant_inference(model, spec, clip_only=True)``: every quantized layer's input
    is clipped to its learned range, so the converter's calibration on ``representative`` finds exactly
    those ranges (a post-ReLU input in ``[0, r]`` becomes int8 scale ``r / 255``, zero point -128) and the
    artifact behaves like the fake-quant model. (Fake-quant ops in the graph convert too, but the
    converter's QAT mode lost accuracy on the digits CNN: 49% against 89%.)

    Args:
        model: the Keras model after ``fit`` with :class:`QuantizationAware`.
        spec: its QuantSpec.
        representative: NHWC inputs (a few hundred real samples).
        limit: at most this many representative samples.
    """
    import tensorflow as tf

    data = np.asarray(representative, dtype=np.float32)

    def gen() -> Iterator[list[npt.NDArray[np.float32]]]:
        for i in range(min(len(data), limit)):
            yield [np.ascontiguousarray(data[i : i + 1])]

    with fake_quant_inference(model, spec, clip_only=True):
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.representative_dataset = gen
        return bytes(converter.convert())


# ------------------------------------------------------------------------------------------ the callback


class QATResult:
    """What a fit with :class:`QuantizationAware` hands to the exporters: the model, its learned spec, and the two
    functions int8 export needs that only Keras can give (``exporters`` imports no callback package).

    ``QuantizationAware.result`` after ``fit``; the Keras ``Export`` callback takes it from the callback itself.
    By hand: ``exporters.export(model, targets, precision="int8", **qat.result.export_arguments())`` (inside
    ``with float_model(model):`` when the fit kept the fake-quant, ``keep_fake_quant=True``).

    Attributes:
        model: the model the spec describes (``Pruning``'s smaller rebuild after channel removal).
        spec: the learned QuantSpec.
    """

    def __init__(self, model: Any, spec: QuantSpec) -> None:
        self.model, self.spec = model, spec

    def float_view(self) -> contextlib.AbstractContextManager[Any]:
        """A ``with`` block in which the model runs as its float model (:func:`float_model`)."""
        return float_model(self.model)

    def reference(self, x: Any) -> Any:
        """The fake-quant model's outputs for ``x``: what the int8 artifacts must reproduce."""
        with fake_quant_inference(self.model, self.spec):
            return ops.convert_to_numpy(self.model(x, training=False))

    def tflite_int8(self, model: Any, spec: QuantSpec, representative: Any) -> bytes:
        """:func:`tflite_int8`: the TFLite conversion that keeps the learned ranges."""
        return tflite_int8(model, spec, representative)

    def export_arguments(self) -> dict[str, Any]:
        """``quant_spec``, ``reference_fn`` and ``tflite_int8`` for ``exporters.export(model, ..., **these)``."""
        return {"quant_spec": self.spec, "reference_fn": self.reference, "tflite_int8": self.tflite_int8}


class QuantizationAware(keras.callbacks.Callback):
    """Symmetric int8 quantization-aware training for Keras 3 models, producing a ``fitslim.QuantSpec``.

    After ``fit`` the model is the float model it was (no range variable, no replaced ``call``; also after an
    exception in the train step), and :attr:`result` carries the learned spec to the exporters. With
    ``keep_fake_quant=True`` it runs as its fake-quant int8 model instead (``evaluate``/``predict`` agree with the
    int8 exports); :meth:`remove` turns it back into the float model, :func:`float_model` gives a temporary float
    view, and :func:`load_model` reloads a ``.keras`` file saved during or after the fit with its ranges.
    (Until issue 22 the fake-quant was always kept.)

    The batch ``logs`` get ``qat/phase`` (0 float, 2 fake-quant with observers updating, 3 observers frozen) and
    ``qat/bn_frozen``; the epoch ``logs`` also the observed input ranges' ``qat/input_range/min|mean|max`` and
    ``qat/observed_layers`` (:mod:`fitslim.metrics`): put the callback before ``CSVLogger``/``TensorBoard``.

    Args:
        start: fraction of the fit (epochs × steps) after which fake-quant is on.
        freeze_observers: fraction after which the activation ranges stop updating.
        freeze_bn: fraction after which BatchNorm layers run on their moving statistics (folded form). Under a
            learning rate still near its start this can diverge (a warning says so at the freeze): decay the
            rate over the fit, or pass 1.0 to keep BatchNorm in training mode to the end.
        weight_bits: kernel integer width, 2..8.
        activation_bits: input integer width, 2..8.
        per_channel: per-output-channel kernel scales (per tensor when False).
        include: layer names / fnmatch patterns to quantize, e.g. ``["conv*", "head_fc"]`` (default: every
            Dense/Conv layer).
        exclude: layer names / fnmatch patterns to leave in float.
        observer: ``"ema"`` (EMA of the batch absmax), ``"minmax"`` (running absmax) or ``"percentile"``
            (EMA of the batch 99.99th percentile of ``|x|``).
        keep_fake_quant: keep the fake-quant on the model after ``fit`` (in inference form, ranges frozen), so
            Keras scores it as the int8 model; False (default) gives the float model back.

    Raises:
        ValueError: an argument out of range (constructor); in ``on_train_begin``: no quantizable layer,
            an ``include`` name that matches nothing, or a fit of unknown length.
        RuntimeError: at the end of the first epoch with the observers on, when no layer's input range was
            observed (the train step that ran did not run the fake-quant layers).

    Example:
        >>> qat = QuantizationAware(start=0.6, observer="ema")
        >>> # model.fit(x, y, epochs=10, callbacks=[qat]); qat.quant_spec.layers[0].input_scale
    """

    def __init__(
        self,
        start: float = 0.6,
        freeze_observers: float = 0.9,
        freeze_bn: float = 0.8,
        weight_bits: int = 8,
        activation_bits: int = 8,
        per_channel: bool = True,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
        observer: str = "ema",
        keep_fake_quant: bool = False,
    ) -> None:
        arguments = call_arguments(locals(), drop=("keep_fake_quant",))
        super().__init__()
        try:
            spec = QuantizationAwareSpec(**arguments)
        except ArgumentError as err:  # the Keras twin has always shown the value in the call
            raise err.showing(arguments[err.argument]) from None
        spec.assign(self, [name for name in arguments if name not in ("include", "exclude")])  # kept as patterns
        self._include = _patterns("include", include)
        self._include_given = None if include is None else list(include)
        self._exclude = _patterns("exclude", exclude)
        if not isinstance(keep_fake_quant, bool):
            raise fail_type(
                "QuantizationAware", "keep_fake_quant", "must be True or False.", "e.g. keep_fake_quant=True."
            ).showing(keep_fake_quant)
        self.keep_fake_quant = keep_fake_quant
        self.quant_spec: QuantSpec | None = None
        #: the learned spec and what int8 export needs, after ``fit`` (``result.export_arguments()``)
        self.result: QATResult | None = None
        self._ranges: Hooks | None = None  # this fit's range variables (set_model)
        self._calls: Hooks | None = None  # this fit's fake-quant calls (on_train_begin)
        self._state = _State(self.weight_bits, self.activation_bits, per_channel, observer)
        self._layers: list[Any] = []
        #: every weighted layer of the model: ``"quantized"`` or why it is not (after ``on_train_begin``)
        self.coverage: dict[str, str] = {}
        self._bns: list[Any] = []
        self._steps: tuple[int, int, int] = (0, 0, 0)
        self._total = 0
        self._step = 0
        self._epoch = 0
        self._observed_steps = 0  # steps of this fit that ran with the observers on
        self._epoch_observed = False
        self._checked = False
        self._bn_frozen = False

    # -------------------------------------------------------------------------------- layer selection

    def _selected(self, model: Any) -> list[Any]:
        """The quantized layers (nested models' included); sets :attr:`coverage` for every weighted layer."""

        def hit(patterns: list[re.Pattern[str]], name: str) -> bool:
            return any(p.fullmatch(name) for p in patterns)

        leaves = [layer for layer in _walk(model) if not getattr(layer, "layers", None)]
        chosen = []
        coverage: dict[str, str] = {}
        for layer in leaves:
            kind = type(layer).__name__
            if kind not in _QUANTIZED:
                if _weighted(layer):
                    coverage[layer.name] = f"{kind}: no int8 quantizer (quantized kinds: {', '.join(_QUANTIZED)})"
                continue
            if self._include is not None and not hit(self._include, layer.name):
                coverage[layer.name] = "not named by include"
                continue
            if self._exclude is not None and hit(self._exclude, layer.name):
                coverage[layer.name] = "named by exclude"
                continue
            chosen.append(layer)
            coverage[layer.name] = "quantized"
        self.coverage = coverage
        if self._include is not None:
            names = [layer.name for layer in leaves]
            for text, p in zip(self._include_given or [], self._include, strict=True):
                if not any(p.fullmatch(n) for n in names):
                    raise fail(
                        "QuantizationAware", "include", "matches no layer of the model.", f"layer names: {names[:20]}."
                    ).showing(text)
            for layer in leaves:
                if hit(self._include, layer.name) and layer not in chosen and type(layer).__name__ not in _QUANTIZED:
                    raise fail(
                        "QuantizationAware",
                        "include",
                        f"names a {type(layer).__name__} layer, which has no int8 quantizer.",
                        f"quantizable layer types: {list(_QUANTIZED)}.",
                    ).showing(layer.name)
        return chosen

    # ----------------------------------------------------------------------------------------- hooks

    @override
    def set_model(self, model: Any) -> None:
        from keras_callbacks.legacy import require_keras3

        require_keras3(model, "QuantizationAware")
        super().set_model(model)
        # ranges exist before any on_train_begin, so BackupAndRestore (anywhere in the list) restores them
        if getattr(model, "built", False) and not self._has_ranges(model):
            self._layers = self._selected(model)
            # a model quantized by an earlier fit (kept, loaded, or left by one that raised): replace its fake-quant,
            # never stack on it, and continue from its ranges
            kept = _ranges_of(model)
            for stale in reversed(groups(model, _KIND)):
                stale.undo()
            self._ranges = Hooks(model, _KIND)
            scope = getattr(model, "distribute_strategy", None)
            with (
                scope.scope()
                if scope is not None and keras.backend.backend() == "tensorflow"
                else (contextlib.nullcontext())
            ):
                for layer in self._layers:
                    for name in (_RANGE, _MID_RANGE) if type(layer).__name__ == "SeparableConv2D" else (_RANGE,):
                        var = _add_range(layer, name, self._ranges)
                        if (layer.name, name) in kept:
                            var.assign(kept[(layer.name, name)])

    def _has_ranges(self, model: Any) -> bool:
        """This callback's range variables are on ``model`` (not taken off by a later fit after this one raised)."""
        return bool(self._layers) and self._ranges is not None and self._ranges in groups(model, _KIND)

    @override
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        model = self.model
        if not self._has_ranges(model):
            self.set_model(model)
        if not self._layers:
            raise fail(
                "QuantizationAware",
                "include",
                f"selects no quantizable layer in model {model.name!r}.",
                f"QuantizationAware quantizes {list(_QUANTIZED)} layers.",
            ).showing(self._include_given)
        epochs, steps = self.params.get("epochs"), self.params.get("steps")
        if not epochs or not steps:
            raise fail(
                "QuantizationAware",
                "start",
                f"cannot be resolved: fit has epochs={epochs}, steps={steps}.",
                "pass steps_per_epoch= to fit when the data has no known length.",
            ).showing(self.start)
        total = int(epochs) * int(steps)
        self._total = total
        self._steps = tuple(
            int(math.floor(f * total + 0.5)) for f in (self.start, self.freeze_observers, self.freeze_bn)
        )  # type: ignore[assignment]
        # the step of this fit (keras_callbacks._steps), set at each batch: never the optimizer's iterations, which
        # count the steps of every earlier fit of the model too
        self._step = -1
        self._epoch = 0
        self._observed_steps = 0
        self._epoch_observed = False
        self._checked = False
        self._bns = [layer for layer in _walk(model) if isinstance(layer, keras.layers.BatchNormalization)]
        handoff(model).quantized = None  # an earlier fit's result is not this fit's
        if self._calls is not None:
            self._calls.undo()
        self._calls = Hooks(model, _KIND)
        for layer in self._layers:
            self._calls.replace(layer, "call", _patched_call(layer, layer.call, self._state))
        self._bn_frozen = False
        self._lr_peak: float | None = None
        self._ran_unfrozen = False
        self._state.enabled = self._state.observing = False
        reset_compiled(model)
        rebuild_train_function(model)
        log.info(
            "QuantizationAware: %d layers, fake-quant from step %d, observers frozen at %d, BN frozen at %d (of %d)",
            len(self._layers),
            *self._steps,
            total,
        )
        left = {name: why for name, why in self.coverage.items() if why != "quantized"}
        if left:
            log.info("QuantizationAware: %d weighted layers not quantized: %s", len(left), left)

    def _update_flags(self, rebuild: bool) -> None:
        start, freeze_obs, freeze_bn = self._steps
        enabled = self._step >= start
        observing = enabled and self._step < freeze_obs
        bn = self._step >= freeze_bn
        changed = (enabled, observing) != (self._state.enabled, self._state.observing) or bn != self._bn_frozen
        self._state.enabled, self._state.observing = enabled, observing
        if bn and not self._bn_frozen:
            for layer in self._bns:
                if self._calls is not None:
                    self._calls.replace(layer, "call", _inference_call(layer.call))
            self._bn_frozen = True
            if self._ran_unfrozen:  # the freeze happens in this fit, now (not a resume past it)
                self._warn_if_rate_is_high()
        self._ran_unfrozen = not bn
        if changed and rebuild:
            rebuild_train_function(self.model)
            self.model.test_function = None  # validation inside fit sees the same fake-quant as training

    def _learning_rate(self) -> float | None:
        try:
            return float(ops.convert_to_numpy(self.model.optimizer.learning_rate))
        except (AttributeError, TypeError, ValueError):  # no optimizer, or a rate that is not a number
            return None

    def _warn_if_rate_is_high(self) -> None:
        """Training on frozen BatchNorm (moving statistics) at an undecayed rate can diverge: say so, once."""
        text = bn_freeze_warning(
            self._step, self.freeze_bn, self._learning_rate(), self._lr_peak, "keras.optimizers.schedules.CosineDecay"
        )
        if self._bns and text:
            log.warning(text)

    @override
    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epoch = epoch  # initial_epoch (or the epoch BackupAndRestore resumes at) included
        self._epoch_observed = False

    @override
    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._step = fit_step(self.params, self._epoch, batch)
        if self._bns and not self._bn_frozen:
            rate = self._learning_rate()  # the highest rate of this fit so far (a warm-up starts low)
            if rate is not None:
                self._lr_peak = max(self._lr_peak or rate, rate)
        self._update_flags(rebuild=True)

    @override
    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._step += 1
        if self._state.observing:
            self._observed_steps += 1
            self._epoch_observed = True
        if logs is not None and self._layers:
            # phase only: the ranges (a device read per layer) go into the epoch logs
            logs.update({"qat/phase": float(QAT_PHASES[self._phase()]), "qat/bn_frozen": float(self._bn_frozen)})

    @override
    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Put ``qat/phase``, ``qat/bn_frozen`` and the input range summary in the epoch ``logs``.

        After the first epoch in which the observers were on, check that they observed: a layer whose range is
        still zero fails the fit now (every layer) or is named in a warning (some), not after the whole fit.

        Raises:
            RuntimeError: no quantized layer's input range was observed although the observers were on.
        """
        if self._epoch_observed and not self._checked and self._layers:
            self._checked = True
            self._check_observed()
        if logs is not None and self._layers:
            logs.update(self.metrics())

    def _unobserved(self) -> list[str]:
        """The quantized layers whose input range (or SeparableConv2D mid range) is still zero."""
        sync_state(self.model)
        names = []
        for layer in self._layers:
            for attr in (_RANGE, _MID_RANGE):
                var = layer.__dict__.get(attr)
                if var is not None and float(ops.convert_to_numpy(var)) <= 0.0:
                    names.append(layer.name)
                    break
        return names

    def _check_observed(self) -> None:
        left = self._unobserved()
        if not left:
            return
        what = (
            f"the observers were on for {self._observed_steps} training steps of this fit (steps {self._steps[0]} to "
            f"{self._steps[1]} of {self._total}), but left the input range of"
        )
        if len(left) < len(self._layers):
            log.warning(
                "QuantizationAware: %s %d of %d layers at zero: %s. Their inputs were all zero in those steps; unless "
                "later steps observe them, the QuantSpec cannot be built at the end of fit.",
                what,
                len(left),
                len(self._layers),
                left,
            )
            return
        self._restore()
        raise RuntimeError(
            f"QuantizationAware(start={self.start}): {what} every quantized layer at zero, so the train step that "
            "ran did not run the fake-quant layers. HINT: something replaced the train function this callback "
            "rebuilt in on_train_begin (e.g. a callback assigning model.train_function, or steps_per_execution "
            "with a compiled loop); let QuantizationAware rebuild it, and report it if nothing did."
        )

    def _phase(self) -> str:
        if not self._state.enabled:
            return "float"
        return "quantize" if self._state.observing else "frozen"

    def metrics(self) -> dict[str, float]:
        """What the callback logs now (:func:`fitslim.metrics.qat_metrics`): phase, BN freeze, input range summary."""
        if not self._layers:
            return {}
        ranges = [float(ops.convert_to_numpy(getattr(layer, _RANGE))) for layer in self._layers]
        return qat_metrics(self._phase(), self._bn_frozen, ranges)

    @override
    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        """Build the QuantSpec, hand it on (:attr:`result`), and give the model back as it was before ``fit``.

        Every range variable and fake-quant ``call`` comes off, unless ``keep_fake_quant=True``: then the layers keep
        running fake-quant in inference form (the learned ranges frozen, no observing; BatchNorm on its moving
        statistics), so ``evaluate``/``predict``/``save`` give what the int8 exports give, until :meth:`remove`.
        """
        ok = False
        try:
            self.quant_spec = self.build_spec()
            target = self._deployed()
            self.result = QATResult(target, self.quant_spec)
            handoff(self.model).quantized = self.result  # for an Export callback after this one
            if self.keep_fake_quant:
                self._keep(target)
            ok = True
            log.info("QuantizationAware: QuantSpec with %d layers", len(self.quant_spec))
        finally:
            self._restore(keep_ranges=ok and self.keep_fake_quant)

    def _keep(self, target: Any) -> None:
        """Inference-form fake-quant on the model (and on Pruning's smaller rebuild), in kept groups."""
        if self._ranges is None:
            return
        if self._calls is not None:
            self._calls.undo()
            self._calls = None
        _quantize_for_inference(self._layers, self.weight_bits, self.activation_bits, self.per_channel, self._ranges)
        self._ranges.kept = True
        self._ranges = None  # the model owns it now: QuantizationAware.remove(model) or the next QuantizationAware
        if target is not self.model:
            self._quantize_twin(target)
        log.info("QuantizationAware: the model runs as its fake-quant int8 model (QuantizationAware.remove undoes)")

    def _restore(self, keep_ranges: bool = False) -> None:
        """Undo this fit's hooks (training ``call`` methods; the ranges too unless kept), drop compiled functions."""
        for hooks in (self._calls, None if keep_ranges else self._ranges):
            if hooks is not None:
                hooks.undo()
        self._calls = self._ranges = None
        self._layers, self._bns = [], []
        self._state.enabled = self._state.observing = False
        self._bn_frozen = False
        if self.model is not None:
            reset_compiled(self.model)

    @staticmethod
    def remove(model: Any) -> Any:
        """Take every fitslim change off ``model``: the kept fake-quant and its range variables, and any hook a fit
        that raised outside its train step left (distillation's ``compute_loss``, the pruning train step).

        ``model.weights`` is as before QAT. The QuantSpec stays in ``QuantizationAware.result`` /
        ``quant_spec`` (the float model and its spec are what exporters take). For a temporary float view use
        :func:`float_model` instead.

        Args:
            model: the Keras model after ``fit`` (or :func:`load_model`).

        Returns:
            ``model`` itself.

        Example:
            >>> # model.fit(x, y, callbacks=[QuantizationAware(keep_fake_quant=True)]); QuantizationAware.remove(model)
        """
        return remove_hooks(model)

    def _deployed(self) -> Any:
        """The model the QuantSpec describes: ``keras_callbacks.Pruning``'s rebuild with fewer channels, if any."""
        pruned = handoff(self.model).pruned_model
        return pruned if pruned is not None else self.model

    def _quantize_twin(self, target: Any) -> None:
        """Give Pruning's smaller rebuild the learned ranges and the same inference fake-quant as the model.

        Channel removal keeps each layer's name, its input (a per-tensor range) and the absmax of every kept
        output channel, so the ranges carry over as they are.
        """
        hooks = Hooks(target, _KIND, kept=True)
        twins = []
        for layer in self._layers:
            twin = _by_name(target, layer.name)
            for name in (_RANGE, _MID_RANGE):
                if name in layer.__dict__:
                    _add_range(twin, name, hooks).assign(ops.convert_to_numpy(getattr(layer, name)))
            twins.append(twin)
        _quantize_for_inference(twins, self.weight_bits, self.activation_bits, self.per_channel, hooks)
        reset_compiled(target)

    # -------------------------------------------------------------------------------------------- spec

    def _unobserved_error(self, name: str) -> ValueError:
        """Why ``name`` has no observed input range: the observers never ran, or ran and saw only zeros."""
        start, freeze, _ = self._steps
        reached = max(self._step, 0)
        if self._observed_steps == 0 and reached <= start:
            return fail(
                "QuantizationAware",
                "start",
                f"left layer {name!r} without an observed input range: the fit ended after {reached} of its "
                f"{self._total} steps, before QAT's start at step {start}, so the observers never ran.",
                "let the fit run past start (an EarlyStopping or a stop_training may have ended it), or lower start.",
            ).showing(self.start)
        if self._observed_steps == 0:
            return fail(
                "QuantizationAware",
                "freeze_observers",
                f"left layer {name!r} without an observed input range: the observers were on for no step of the fit "
                f"(start at step {start}, frozen at step {freeze} of {self._total}).",
                "give freeze_observers a later fraction than start, e.g. freeze_observers=0.9.",
            ).showing(self.freeze_observers)
        return fail(
            "QuantizationAware",
            "start",
            f"left layer {name!r} without an observed input range although the observers were on for "
            f"{self._observed_steps} steps of the fit (steps {start} to {freeze} of {self._total}): its input was "
            "zero in every one of them, or the train step that ran did not run the fake-quant layer.",
            f"check what feeds {name!r} (a dead ReLU?), or leave it in float with exclude=[{name!r}].",
        ).showing(self.start)

    def build_spec(self) -> QuantSpec:
        """The QuantSpec of the current weights and ranges (weight scales on BN-folded kernels).

        After channel pruning by ``keras_callbacks.Pruning`` (placed before this callback) the spec describes
        the physically smaller model, the one exported.

        Raises:
            ValueError: a layer whose input range was never observed (the message says why: the fit ended before
                ``start``, an empty observer window, or observers that saw only zeros).
        """
        target = self._deployed()
        weights = folded_weights(target)
        layers: list[LayerQuant] = []
        for layer in self._layers:
            kind = type(layer).__name__
            twin = _by_name(target, layer.name)  # the same layer, or its rebuild with fewer channels
            amax = float(ops.convert_to_numpy(getattr(layer, _RANGE)))
            if amax <= 0.0:
                raise self._unobserved_error(layer.name)
            s_in = max(amax / qmax(self.activation_bits), float(MIN_SCALE))
            names = [layer.name] + ([f"{layer.name}/pointwise"] if kind == "SeparableConv2D" else [])
            for i, name in enumerate(names):
                w = weights[name]
                axis = 0 if self.per_channel else None
                s_w = absmax_scale(w, axis=axis, bits=self.weight_bits)
                if not self.per_channel:
                    s_w = np.full((w.shape[0],), float(s_w), np.float32)
                if i == 1:
                    s_in = max(
                        float(ops.convert_to_numpy(getattr(layer, _MID_RANGE))) / qmax(self.activation_bits),
                        float(MIN_SCALE),
                    )
                lk = {"Dense": "linear", "Conv1D": "conv1d", "Conv2D": "conv2d", "DepthwiseConv2D": "depthwise_conv2d"}
                lkind = "depthwise_conv2d" if kind == "SeparableConv2D" and i == 0 else lk.get(kind, "conv2d")
                groups = 1
                if lkind == "depthwise_conv2d":
                    # ONNX groups = input channels; a depth multiplier > 1 makes it a grouped conv2d there
                    dk = twin.kernel if kind == "DepthwiseConv2D" else twin.depthwise_kernel
                    groups = int(dk.shape[2])
                    lkind = "depthwise_conv2d" if int(dk.shape[3]) == 1 else "conv2d"
                elif int(getattr(twin, "groups", 1) or 1) > 1:  # a grouped Conv2D (ConvNeXt's depthwise 7x7)
                    groups = int(twin.groups)
                    if lkind == "conv2d" and groups == w.shape[0] and w.shape[1] == 1:
                        lkind = "depthwise_conv2d"  # as exporters.core.quant.weighted_nodes names it
                layers.append(LayerQuant(name, lkind, w.shape, s_w.tolist(), s_in, groups=groups))
        return QuantSpec(
            layers,
            self.weight_bits,
            self.activation_bits,
            source="qat",
            framework="keras",
            metadata={"observer": self.observer, "backend": keras.backend.backend()},
        )


def _weighted(layer: Any) -> bool:
    """A layer with a matrix or convolution kernel (what an int8 target would quantize)."""
    for attr in ("kernel", "depthwise_kernel", "pointwise_kernel"):
        k = getattr(layer, attr, None)
        if k is not None and len(getattr(k, "shape", ())) >= 2:
            return True
    return False


def _by_name(model: Any, name: str) -> Any:
    """The layer called ``name`` in ``model`` or in one of its nested models."""
    for layer in _walk(model):
        if layer.name == name:
            return layer
    raise ValueError(f"QuantizationAware: no layer {name!r} in model {model.name!r}.")


def _inference_call(original: Callable[..., Any]) -> Callable[..., Any]:
    def call(inputs: Any, training: Any = None, **kwargs: Any) -> Any:
        return original(inputs, training=False, **kwargs)

    return call
