"""Symmetric int8 math reference in NumPy.

Every quantizing piece of fitslim (QAT observers on both frameworks, the ncnn int8 writer, the TFLite
and TensorRT Q/DQ paths) must agree with these functions bit for bit, so they are the one reference
the tests compare against.

Conventions:
- A *scale* is the step of the integer grid: ``x ≈ q * scale`` (the convention of torch, TFLite and
  ONNX). ncnn stores the inverse, a *multiplier* (``q = round(x * multiplier)``); see :func:`ncnn_multiplier`.
- Quantization is symmetric (zero point 0) on the restricted range ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``,
  i.e. ±127 for int8, which is what ncnn and TensorRT require.
- Rounding is either ncnn's (half away from zero) or torch's (half to even).

Example:
    >>> import numpy as np
    >>> w = np.array([[0.5, -1.0], [0.25, 0.1]], dtype=np.float32)
    >>> scale = absmax_scale(w, axis=0)
    >>> quantize(w, scale, axis=0).tolist()
    [[64, -127], [127, 51]]
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "MIN_SCALE",
    "Rounding",
    "absmax_scale",
    "dequantize",
    "fake_quant",
    "ncnn_dequant_scale",
    "ncnn_multiplier",
    "percentile_scale",
    "qmax",
    "quantize",
    "round_half_away",
    "round_half_even",
    "tie_distance",
]

Rounding = Literal["half_away", "half_even"]

#: Smallest scale ever produced (torch's observer ``eps``): an all-zero channel (a pruned filter)
#: gets this scale and quantizes to all zeros instead of dividing by zero.
MIN_SCALE = float(np.finfo(np.float32).eps)

ArrayLike = npt.ArrayLike
FloatArray = npt.NDArray[np.float32]


def qmax(bits: int = 8) -> int:
    """Largest integer of the symmetric restricted range (127 for 8 bits).

    Raises:
        ValueError: ``bits`` outside 2..8.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 2..8; got {bits!r}. Use 8 for int8.")
    return int(2 ** (bits - 1) - 1)


def _reduce_axes(ndim: int, axis: int | None) -> tuple[int, ...] | None:
    if axis is None:
        return None
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis must index one of the {ndim} dimensions of the tensor; got {axis}.")
    axis %= ndim
    return tuple(i for i in range(ndim) if i != axis)


def _expand(scale: npt.NDArray[np.float32], ndim: int, axis: int | None) -> npt.NDArray[np.float32]:
    """Shape per-channel scales so they broadcast along ``axis`` of an ``ndim``-D tensor."""
    if axis is None or scale.ndim == 0:
        return scale
    axis %= ndim
    shape = [1] * ndim
    shape[axis] = scale.shape[0]
    return scale.reshape(shape)


def _scale_from_range(rng: npt.NDArray[np.float32], bits: int) -> FloatArray:
    scale = rng.astype(np.float32) / np.float32(qmax(bits))
    return np.maximum(scale, np.float32(MIN_SCALE)).astype(np.float32)


def absmax_scale(x: ArrayLike, axis: int | None = None, bits: int = 8) -> FloatArray:
    """Symmetric scale ``max|x| / qmax`` per tensor (``axis=None``) or per channel along ``axis``.

    Args:
        x: the tensor (weights or activations).
        axis: the channel axis for per-channel scales (0 for conv/linear weights in OIHW / (out, in)),
            or None for one per-tensor scale.
        bits: integer width, 2..8.

    Returns:
        A float32 scalar array (per tensor) or a 1-D array with one scale per channel.
    """
    a = np.abs(np.asarray(x, dtype=np.float32))
    axes = _reduce_axes(a.ndim, axis)
    rng = np.max(a, axis=axes) if a.size else np.zeros((), np.float32)
    return _scale_from_range(np.asarray(rng, dtype=np.float32), bits)


def percentile_scale(
    x: ArrayLike, percentile: float = 99.99, axis: int | None = None, bits: int = 8
) -> FloatArray:
    """Symmetric scale from a percentile of ``|x|`` instead of its maximum (clips rare outliers).

    Args:
        x: the tensor.
        percentile: in (0, 100]; 100 equals :func:`absmax_scale`.
        axis: channel axis for per-channel scales, or None.
        bits: integer width, 2..8.

    Raises:
        ValueError: ``percentile`` outside (0, 100].
    """
    if not 0.0 < float(percentile) <= 100.0:
        raise ValueError(f"percentile must be in (0, 100]; got {percentile}. Use e.g. 99.99.")
    a = np.abs(np.asarray(x, dtype=np.float32))
    axes = _reduce_axes(a.ndim, axis)
    rng = np.percentile(a, float(percentile), axis=axes)
    return _scale_from_range(np.asarray(rng, dtype=np.float32), bits)


def round_half_away(x: ArrayLike) -> FloatArray:
    """Round to nearest, ties away from zero (ncnn's ``round()``): 0.5 → 1, -2.5 → -3."""
    a = np.asarray(x, dtype=np.float32)
    return (np.sign(a) * np.floor(np.abs(a) + np.float32(0.5))).astype(np.float32)


def round_half_even(x: ArrayLike) -> FloatArray:
    """Round to nearest, ties to even (torch's and NumPy's): 0.5 → 0, 1.5 → 2, -2.5 → -2."""
    return np.rint(np.asarray(x, dtype=np.float32)).astype(np.float32)


def _round(x: FloatArray, rounding: Rounding) -> FloatArray:
    if rounding == "half_away":
        return round_half_away(x)
    if rounding == "half_even":
        return round_half_even(x)
    raise ValueError(f"rounding must be 'half_away' (ncnn) or 'half_even' (torch); got {rounding!r}.")


def quantize(
    x: ArrayLike,
    scale: ArrayLike,
    axis: int | None = None,
    bits: int = 8,
    rounding: Rounding = "half_away",
) -> npt.NDArray[np.int8]:
    """Quantize to symmetric integers: ``clamp(round(x / scale), -qmax, qmax)``.

    Args:
        x: the float tensor.
        scale: a scalar, or one scale per channel along ``axis``.
        axis: the channel axis when ``scale`` is per channel.
        bits: integer width, 2..8 (values are stored in int8).
        rounding: ``"half_away"`` (ncnn) or ``"half_even"`` (torch).
    """
    a = np.asarray(x, dtype=np.float32)
    s = _expand(np.asarray(scale, dtype=np.float32), a.ndim, axis)
    q = _round(a / s, rounding)
    m = qmax(bits)
    return np.clip(q, -m, m).astype(np.int8)


def dequantize(q: ArrayLike, scale: ArrayLike, axis: int | None = None) -> FloatArray:
    """Map integers back to floats: ``q * scale``."""
    a = np.asarray(q, dtype=np.float32)
    s = _expand(np.asarray(scale, dtype=np.float32), a.ndim, axis)
    return (a * s).astype(np.float32)


def fake_quant(
    x: ArrayLike,
    scale: ArrayLike,
    axis: int | None = None,
    bits: int = 8,
    rounding: Rounding = "half_away",
) -> FloatArray:
    """Quantize then dequantize: the float values an int8 kernel effectively computes with."""
    return dequantize(quantize(x, scale, axis=axis, bits=bits, rounding=rounding), scale, axis=axis)


def ncnn_multiplier(scale: ArrayLike) -> FloatArray:
    """ncnn's scale convention: the multiplier ``1 / scale`` (``q = round(x * multiplier)``)."""
    return (np.float32(1.0) / np.asarray(scale, dtype=np.float32)).astype(np.float32)


def ncnn_dequant_scale(input_scale: ArrayLike, weight_scales: ArrayLike) -> FloatArray:
    """The float32 factor ncnn multiplies a layer's int32 sums by: ``1 / (input multiplier * weight multiplier)``.

    ncnn computes it once per output channel from the multipliers it stores (``scale_in`` in
    ``Convolution_x86::create_pipeline_int8_x86``, ``InnerProduct_x86``, ``ConvolutionDepthWise_x86``), so it can
    differ in the last bit from ``input_scale * weight_scale``. An int8 reference that dequantizes with this
    factor computes what ncnn's unpacked int8 kernels compute.

    Args:
        input_scale: the layer's per-tensor input scale (the QAT / calibration step, not the multiplier).
        weight_scales: one weight scale per output channel (or per group, as the ncnn writer stores them).

    Returns:
        One float32 factor per output channel.
    """
    m_in = ncnn_multiplier(np.float32(np.asarray(input_scale, dtype=np.float32)))
    m_w = ncnn_multiplier(weight_scales)
    return (np.float32(1.0) / (m_in * m_w)).astype(np.float32)


def tie_distance(x: ArrayLike, bits: int = 8) -> FloatArray:
    """How far each value about to be rounded (in integer steps, i.e. ``x / scale``) lies from a rounding boundary.

    A boundary is a half-integer ``k + 0.5`` inside the clamp range; 0 means an exact tie, 0.5 an integer. Values
    that clamp (``|x| >= qmax + 0.5``) cannot round differently and get ``inf``. Two implementations of the same
    int8 arithmetic that differ only by float rounding (a fused multiply-add, another summation order) can give
    different integers only where this distance is below their difference, a few float32 ulps.

    Args:
        x: values in units of the quantization step.
        bits: integer width, 2..8 (sets the clamp range).

    Raises:
        ValueError: ``bits`` outside 2..8.
    """
    a = np.abs(np.asarray(x, dtype=np.float64))
    d = np.abs(a - np.floor(a) - 0.5)
    return np.where(a < qmax(bits) + 0.5, d, np.inf).astype(np.float32)
