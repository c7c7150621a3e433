"""Keras 3 twins of the reference models (``digits_cnn``, ``mobilenet_v2``).

Functional models with channels-last (NHWC) input, built from :mod:`fitslim.models.spec` with the
same layer sizes as the PyTorch twins in :mod:`lightning_plugins.models`. Given the same weights
(:func:`copy_torch_to_keras`) the twins compute the same function:

- stride-2 3x3 convs are ``ZeroPadding2D(1)`` + ``padding="valid"`` (TF's own ``"same"`` pads
  asymmetrically for stride 2), stride-1 3x3 convs use ``"same"`` (symmetric padding 1);
- ``BatchNormalization(epsilon=1e-5, momentum=0.9)`` matches torch's defaults (eps 1e-5, momentum 0.1);
- layer names are the torch module paths with ``.`` replaced by ``_`` (``blocks_3_dw_conv``).

Only ``keras.layers`` are used, so the models work on the TensorFlow, PyTorch and JAX backends.

Example:
    >>> import numpy as np
    >>> from keras_callbacks.models import digits_cnn
    >>> model = digits_cnn(width=1.0)
    >>> tuple(model(np.zeros((2, 8, 8, 1), "float32")).shape)
    (2, 10)
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

from fitslim.models import check_model_name
from fitslim.models.spec import (
    InvertedResidualSpec,
    digits_cnn_spec,
    mobilenet_v2_spec,
    normalize_input_size,
)
from keras_callbacks.transfer import copy_torch_to_keras, keras_layer_name

__all__ = ["copy_torch_to_keras", "digits_cnn", "keras_layer_name", "keras_model", "mobilenet_v2"]

_BN_EPSILON = 1e-5
_BN_MOMENTUM = 0.9  # keras momentum 0.9 == torch momentum 0.1
_DATA_FORMAT = "channels_last"


def _conv_init(channels_per_group: int = 1) -> Any:
    """Kaiming-normal (fan-out) like the torch twin; depthwise scaled by 1/channels as torch does."""
    return keras.initializers.VarianceScaling(
        scale=2.0 / channels_per_group, mode="fan_out", distribution="untruncated_normal"
    )


def _conv(x: Any, filters: int, kernel: int, stride: int, name: str) -> Any:
    """Bias-free conv with symmetric padding ``kernel // 2`` (explicit zero padding when strided)."""
    padding = "valid" if kernel == 1 else "same"
    if kernel > 1 and stride > 1:
        x = layers.ZeroPadding2D(kernel // 2, data_format=_DATA_FORMAT, name=f"{name}_pad")(x)
        padding = "valid"
    return layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding=padding,
        use_bias=False,
        data_format=_DATA_FORMAT,
        kernel_initializer=_conv_init(),
        name=f"{name}_conv",
    )(x)


def _depthwise(x: Any, channels: int, stride: int, name: str) -> Any:
    """Bias-free 3x3 depthwise conv with symmetric padding 1."""
    padding = "same"
    if stride > 1:
        x = layers.ZeroPadding2D(1, data_format=_DATA_FORMAT, name=f"{name}_pad")(x)
        padding = "valid"
    return layers.DepthwiseConv2D(
        3,
        strides=stride,
        padding=padding,
        depth_multiplier=1,
        use_bias=False,
        data_format=_DATA_FORMAT,
        depthwise_initializer=_conv_init(channels),
        name=f"{name}_conv",
    )(x)


def _bn(x: Any, name: str) -> Any:
    return layers.BatchNormalization(axis=-1, epsilon=_BN_EPSILON, momentum=_BN_MOMENTUM, name=name)(x)


def _conv_bn_act(x: Any, filters: int, kernel: int, stride: int, name: str, relu6: bool) -> Any:
    """The ``ConvBNAct`` of the torch twin: layers ``{name}_conv``, ``{name}_bn``, ``{name}_act``."""
    x = _conv(x, filters, kernel, stride, name)
    x = _bn(x, f"{name}_bn")
    return layers.ReLU(max_value=6.0 if relu6 else None, name=f"{name}_act")(x)


def _head(x: Any, num_classes: int, dropout: float) -> Any:
    x = layers.GlobalAveragePooling2D(data_format=_DATA_FORMAT, name="head_pool")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    return layers.Dense(
        num_classes,
        kernel_initializer=keras.initializers.RandomNormal(0.0, 0.01),
        bias_initializer="zeros",
        name="head_fc",
    )(x)


def _input(input_size: int | tuple[int, int] | None, in_channels: int) -> Any:
    size = normalize_input_size(input_size)
    height, width = size if size is not None else (None, None)
    return keras.Input(shape=(height, width, in_channels), name="input")


def digits_cnn(
    width: float = 1.0,
    num_classes: int = 10,
    in_channels: int = 1,
    input_size: int | tuple[int, int] | None = 8,
) -> keras.Model:
    """Build the Keras twin of :class:`lightning_plugins.models.DigitsCNN`.

    Args:
        width: channel multiplier; 1.0 gives 16 and 32 channels, a teacher uses 2 or 4, a student 0.5.
        num_classes: outputs (logits, no softmax).
        in_channels: input channels.
        input_size: ``int`` or ``(height, width)`` of the NHWC input (8 for the digits, 16 also
            works); ``None`` accepts any size.

    Returns:
        A functional ``keras.Model`` named ``"digits_cnn"`` mapping ``(N, H, W, C)`` to ``(N, classes)``.

    Raises:
        ValueError: an invalid width, class count, channel count or input size.

    Example:
        >>> from keras_callbacks.models import digits_cnn
        >>> digits_cnn(width=2.0, input_size=16).output_shape
        (None, 10)
    """
    s = digits_cnn_spec(width=width, num_classes=num_classes, in_channels=in_channels)
    inputs = _input(input_size, s.in_channels)
    x = _conv_bn_act(inputs, s.stem_channels, 3, 1, "stem", relu6=False)
    shortcut = x
    x = _depthwise(x, s.stem_channels, 1, "block_dw")
    x = _bn(x, "block_dw_bn")
    x = layers.ReLU(name="block_dw_relu")(x)
    x = _conv(x, s.stem_channels, 1, 1, "block_pw")
    x = _bn(x, "block_pw_bn")
    x = layers.Add(name="block_add")([x, shortcut])
    x = layers.ReLU(name="block_relu")(x)
    x = layers.MaxPooling2D(2, data_format=_DATA_FORMAT, name="pool")(x)
    x = _conv_bn_act(x, s.out_channels, 3, 1, "transition", relu6=False)
    outputs = _head(x, s.num_classes, 0.0)
    return keras.Model(inputs, outputs, name="digits_cnn")


def _inverted_residual(x: Any, spec: InvertedResidualSpec, name: str) -> Any:
    shortcut = x
    if spec.has_expand:
        x = _conv(x, spec.hidden_channels, 1, 1, f"{name}_expand")
        x = _bn(x, f"{name}_expand_bn")
        x = layers.ReLU(max_value=6.0, name=f"{name}_expand_relu")(x)
    x = _depthwise(x, spec.hidden_channels, spec.stride, f"{name}_dw")
    x = _bn(x, f"{name}_dw_bn")
    x = layers.ReLU(max_value=6.0, name=f"{name}_dw_relu")(x)
    x = _conv(x, spec.out_channels, 1, 1, f"{name}_project")
    x = _bn(x, f"{name}_project_bn")
    if spec.use_residual:
        x = layers.Add(name=f"{name}_add")([x, shortcut])
    return x


def mobilenet_v2(
    width_multiplier: float = 1.0,
    num_classes: int = 1000,
    in_channels: int = 3,
    input_size: int | tuple[int, int] | None = 224,
    dropout: float = 0.2,
) -> keras.Model:
    """Build the Keras twin of :class:`lightning_plugins.models.MobileNetV2`.

    Args:
        width_multiplier: the paper's alpha.
        num_classes: outputs (logits, no softmax).
        in_channels: input channels.
        input_size: ``int`` or ``(height, width)`` of the NHWC input; ``None`` accepts any size.
        dropout: dropout rate before the classifier (no dropout layer when 0).

    Returns:
        A functional ``keras.Model`` named ``"mobilenet_v2"`` mapping ``(N, H, W, C)`` to
        ``(N, classes)``.

    Raises:
        ValueError: an invalid argument (see :func:`~fitslim.models.spec.mobilenet_v2_spec`).

    Example:
        >>> from keras_callbacks.models import mobilenet_v2
        >>> mobilenet_v2(width_multiplier=0.35, num_classes=10, input_size=(96, 80)).output_shape
        (None, 10)
    """
    s = mobilenet_v2_spec(
        width_multiplier=width_multiplier,
        num_classes=num_classes,
        in_channels=in_channels,
        input_size=input_size,
        dropout=dropout,
    )
    inputs = _input(s.input_size, s.in_channels)
    x = _conv_bn_act(inputs, s.stem_channels, 3, 2, "stem", relu6=True)
    for i, block in enumerate(s.blocks):
        x = _inverted_residual(x, block, f"blocks_{i}")
    x = _conv_bn_act(x, s.last_channels, 1, 1, "last", relu6=True)
    outputs = _head(x, s.num_classes, s.dropout)
    return keras.Model(inputs, outputs, name="mobilenet_v2")


def keras_model(name: str, **kwargs: Any) -> Any:
    """Build the Keras 3 twin of a reference model by name.

    Args:
        name: one of :data:`fitslim.models.MODEL_NAMES`.
        **kwargs: passed to :func:`digits_cnn` (``width``, ``num_classes``, ``in_channels``, ``input_size``) or
            :func:`mobilenet_v2` (``width_multiplier``, ``num_classes``, ``in_channels``, ``input_size``,
            ``dropout``).

    Returns:
        A functional ``keras.Model`` (NHWC input) on the active Keras backend.

    Raises:
        ValueError: an unknown name or an invalid argument.

    Example:
        >>> from keras_callbacks.models import keras_model
        >>> keras_model("digits_cnn", input_size=16).input_shape
        (None, 16, 16, 1)
    """
    check_model_name("keras_model", name)
    builder = digits_cnn if name == "digits_cnn" else mobilenet_v2
    return builder(**kwargs)
