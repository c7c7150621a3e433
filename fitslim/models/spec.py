"""Framework-free architecture descriptions of the reference models.

The PyTorch twins (:mod:`lightning_plugins.models`) and the Keras twins
(:mod:`keras_callbacks.models`) are both built from the dataclasses here, so their channel
counts, strides and expansions cannot drift apart. This module imports only the standard library.

Weight counting rule used by :meth:`DigitsCNNSpec.num_weights` and :meth:`MobileNetV2Spec.num_weights`
(and by the tests that compare the twins): every trainable parameter plus the BatchNorm running
statistics (mean and variance, i.e. 4 numbers per BN channel in total). Torch's
``num_batches_tracked`` counter and Keras' dropout seed state are not weights.

Example:
    >>> from fitslim.models.spec import digits_cnn_spec, mobilenet_v2_spec
    >>> digits_cnn_spec(width=1.0).stem_channels
    16
    >>> mobilenet_v2_spec(width_multiplier=0.35, num_classes=10, input_size=96).stem_channels
    16
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "MOBILENET_V2_SETTING",
    "DigitsCNNSpec",
    "InvertedResidualSpec",
    "MobileNetV2Spec",
    "conv_output_size",
    "digits_cnn_spec",
    "mobilenet_v2_spec",
    "normalize_input_size",
]

#: MobileNetV2 body as in the paper (Sandler et al. 2018, table 2): (expansion t, channels c,
#: repeats n, first stride s).
MOBILENET_V2_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

_DIGITS_STEM_CHANNELS = 16
_DIGITS_OUT_CHANNELS = 32
_DIGITS_DIVISOR = 4


def _make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of ``divisor``, as in the MobileNet reference code.

    The result never drops more than 10% below ``value``.

    Args:
        value: the (scaled) channel count.
        divisor: the multiple to round to.
        min_value: the smallest allowed result; ``divisor`` when ``None``.

    Returns:
        The rounded channel count.

    Example:
        >>> _make_divisible(32 * 0.35), _make_divisible(1280 * 1.4)
        (16, 1792)
    """
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def normalize_input_size(
    input_size: int | tuple[int, int] | None, argument: str = "input_size"
) -> tuple[int, int] | None:
    """Turn an ``int`` or ``(height, width)`` input size into ``(height, width)``; keep ``None``.

    Args:
        input_size: a side length, a ``(height, width)`` pair, or ``None`` (any size).
        argument: the argument name used in error messages.

    Returns:
        ``(height, width)`` or ``None``.

    Raises:
        ValueError: a size that is not a positive integer or pair of positive integers.

    Example:
        >>> normalize_input_size(96), normalize_input_size((96, 80))
        ((96, 96), (96, 80))
    """
    if input_size is None:
        return None
    if isinstance(input_size, bool):
        raise ValueError(f"{argument}: got {input_size!r}; pass a positive int or a (height, width) pair.")
    if isinstance(input_size, int):
        size: tuple[int, ...] = (input_size, input_size)
    else:
        try:
            size = tuple(input_size)
        except TypeError:
            size = ()
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(f"{argument}: got {input_size!r}; pass a positive int or a (height, width) pair.")
    return (size[0], size[1])


def conv_output_size(size: int, kernel: int = 3, stride: int = 1, padding: int = 1) -> int:
    """Spatial output length of a convolution or pooling with symmetric padding (floor mode).

    Args:
        size: input length.
        kernel: kernel length.
        stride: stride.
        padding: zeros added on each side.

    Returns:
        The output length.

    Example:
        >>> conv_output_size(97, kernel=3, stride=2, padding=1)
        49
    """
    return (size + 2 * padding - kernel) // stride + 1


def _check_positive_float(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name}: got {value!r}; pass a positive number (e.g. 1.0).")


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: got {value!r}; pass a positive integer.")


def _conv_weights(cin: int, cout: int, kernel: int, groups: int = 1) -> int:
    return cout * (cin // groups) * kernel * kernel


def _bn_weights(channels: int) -> int:
    return 4 * channels  # gamma, beta, running mean, running variance


@dataclass(frozen=True)
class DigitsCNNSpec:
    """The small residual CNN for the bundled 8x8 digits (or 16x16 inputs).

    Layout: stem 3x3 conv + BN + ReLU; residual block (depthwise 3x3 + BN + ReLU, pointwise 1x1 +
    BN, add, ReLU); 2x2 max pool; transition 3x3 conv + BN + ReLU; global average pool; linear head.

    Args:
        width: the width multiplier the channel counts were scaled by.
        in_channels: input channels.
        stem_channels: channels of the stem and the residual block.
        out_channels: channels of the transition conv (the features the head sees).
        num_classes: classifier outputs.

    Example:
        >>> digits_cnn_spec(width=2.0).out_channels
        64
    """

    width: float
    in_channels: int
    stem_channels: int
    out_channels: int
    num_classes: int

    def num_weights(self) -> int:
        """Count parameters plus BN running statistics (see the module docstring).

        Returns:
            The number of weights of either twin.

        Example:
            >>> digits_cnn_spec().num_weights()
            5802
        """
        c1, c2 = self.stem_channels, self.out_channels
        total = _conv_weights(self.in_channels, c1, 3) + _bn_weights(c1)  # stem
        total += _conv_weights(c1, c1, 3, groups=c1) + _bn_weights(c1)  # depthwise
        total += _conv_weights(c1, c1, 1) + _bn_weights(c1)  # pointwise
        total += _conv_weights(c1, c2, 3) + _bn_weights(c2)  # transition
        total += c2 * self.num_classes + self.num_classes  # head
        return total


def digits_cnn_spec(width: float = 1.0, num_classes: int = 10, in_channels: int = 1) -> DigitsCNNSpec:
    """Describe the digits CNN at a given width.

    At ``width=1.0`` the stem has 16 channels and the transition conv 32; both scale with
    ``width`` and are rounded to a multiple of 4 (a wide teacher uses 2 or 4, a narrow student 0.5).

    Args:
        width: channel multiplier (> 0).
        num_classes: classifier outputs.
        in_channels: input channels (1 for the digits).

    Returns:
        The :class:`DigitsCNNSpec`.

    Raises:
        ValueError: a non-positive width, class count or channel count.

    Example:
        >>> s = digits_cnn_spec(width=0.5)
        >>> (s.stem_channels, s.out_channels)
        (8, 16)
    """
    _check_positive_float("width", width)
    _check_positive_int("num_classes", num_classes)
    _check_positive_int("in_channels", in_channels)
    return DigitsCNNSpec(
        width=float(width),
        in_channels=in_channels,
        stem_channels=_make_divisible(_DIGITS_STEM_CHANNELS * width, _DIGITS_DIVISOR),
        out_channels=_make_divisible(_DIGITS_OUT_CHANNELS * width, _DIGITS_DIVISOR),
        num_classes=num_classes,
    )


@dataclass(frozen=True)
class InvertedResidualSpec:
    """One MobileNetV2 inverted residual block.

    Layout: (when ``expansion != 1``) 1x1 expand conv + BN + ReLU6; 3x3 depthwise conv with
    ``stride`` and padding 1 + BN + ReLU6; 1x1 project conv + BN; plus the block input when
    :attr:`use_residual`.

    Args:
        in_channels: block input channels.
        hidden_channels: channels after the expansion (``in_channels * expansion``).
        out_channels: block output channels.
        stride: depthwise stride (1 or 2).
        expansion: expansion factor ``t``.

    Example:
        >>> InvertedResidualSpec(16, 96, 24, 2, 6).use_residual
        False
    """

    in_channels: int
    hidden_channels: int
    out_channels: int
    stride: int
    expansion: int

    @property
    def has_expand(self) -> bool:
        """Whether the block starts with a 1x1 expansion conv."""
        return self.expansion != 1

    @property
    def use_residual(self) -> bool:
        """Whether the block input is added to its output."""
        return self.stride == 1 and self.in_channels == self.out_channels

    def num_weights(self) -> int:
        """Count parameters plus BN running statistics of this block."""
        total = 0
        if self.has_expand:
            total += _conv_weights(self.in_channels, self.hidden_channels, 1)
            total += _bn_weights(self.hidden_channels)
        total += _conv_weights(self.hidden_channels, self.hidden_channels, 3, groups=self.hidden_channels)
        total += _bn_weights(self.hidden_channels)
        total += _conv_weights(self.hidden_channels, self.out_channels, 1) + _bn_weights(self.out_channels)
        return total


@dataclass(frozen=True)
class MobileNetV2Spec:
    """A MobileNetV2 (Sandler et al. 2018) at a given width multiplier.

    Layout: stem 3x3 stride-2 conv + BN + ReLU6; the inverted residual :attr:`blocks`; 1x1 conv to
    :attr:`last_channels` + BN + ReLU6; global average pool; dropout; linear classifier.

    Args:
        width_multiplier: the multiplier the channel counts were scaled by.
        in_channels: input channels.
        stem_channels: channels of the stem conv.
        blocks: the inverted residual blocks, in order.
        last_channels: channels of the last 1x1 conv.
        num_classes: classifier outputs.
        input_size: ``(height, width)`` the model is built for, or ``None`` for any size.
        dropout: dropout rate before the classifier.

    Example:
        >>> spec = mobilenet_v2_spec(width_multiplier=1.0)
        >>> len(spec.blocks), spec.last_channels
        (17, 1280)
    """

    width_multiplier: float
    in_channels: int
    stem_channels: int
    blocks: tuple[InvertedResidualSpec, ...]
    last_channels: int
    num_classes: int
    input_size: tuple[int, int] | None
    dropout: float

    def num_weights(self) -> int:
        """Count parameters plus BN running statistics (see the module docstring).

        Returns:
            The number of weights of either twin.

        Example:
            >>> mobilenet_v2_spec(num_classes=1000).num_weights()
            3538984
        """
        total = _conv_weights(self.in_channels, self.stem_channels, 3) + _bn_weights(self.stem_channels)
        total += sum(block.num_weights() for block in self.blocks)
        last_in = self.blocks[-1].out_channels
        total += _conv_weights(last_in, self.last_channels, 1) + _bn_weights(self.last_channels)
        total += self.last_channels * self.num_classes + self.num_classes
        return total

    def feature_size(self) -> tuple[int, int] | None:
        """Spatial size of the last feature map (before pooling), or ``None`` for any-size models.

        Example:
            >>> mobilenet_v2_spec(input_size=(96, 80)).feature_size()
            (3, 3)
        """
        if self.input_size is None:
            return None
        strides = [2] + [block.stride for block in self.blocks]
        height, width = self.input_size
        for stride in strides:
            height = conv_output_size(height, 3, stride, 1)
            width = conv_output_size(width, 3, stride, 1)
        return (height, width)


def mobilenet_v2_spec(
    width_multiplier: float = 1.0,
    num_classes: int = 1000,
    in_channels: int = 3,
    input_size: int | tuple[int, int] | None = 224,
    dropout: float = 0.2,
) -> MobileNetV2Spec:
    """Describe a standard MobileNetV2.

    Channel counts are ``_make_divisible(c * width_multiplier, 8)``; the last conv has
    ``_make_divisible(1280 * max(1.0, width_multiplier), 8)`` channels, as in the reference code.

    Args:
        width_multiplier: the paper's alpha (0.35, 0.5, 0.75, 1.0, 1.3, 1.4 are the usual ones).
        num_classes: classifier outputs.
        in_channels: input channels.
        input_size: ``int`` or ``(height, width)`` the model is built for; ``None`` for any size.
            Any size works (strided layers round down); 32 or more keeps every stage non-empty.
        dropout: dropout rate before the classifier, in ``[0, 1)``.

    Returns:
        The :class:`MobileNetV2Spec`.

    Raises:
        ValueError: an invalid multiplier, class count, channel count, input size or dropout.

    Example:
        >>> spec = mobilenet_v2_spec(width_multiplier=0.35, num_classes=10, input_size=96)
        >>> [b.out_channels for b in spec.blocks][:3], spec.last_channels
        ([8, 8, 8], 1280)
    """
    _check_positive_float("width_multiplier", width_multiplier)
    _check_positive_int("num_classes", num_classes)
    _check_positive_int("in_channels", in_channels)
    size = normalize_input_size(input_size)
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout: got {dropout!r}; pass a rate in [0, 1), e.g. 0.2.")
    stem = _make_divisible(32 * width_multiplier, 8)
    blocks: list[InvertedResidualSpec] = []
    cin = stem
    for expansion, channels, repeats, first_stride in MOBILENET_V2_SETTING:
        cout = _make_divisible(channels * width_multiplier, 8)
        for i in range(repeats):
            blocks.append(
                InvertedResidualSpec(
                    in_channels=cin,
                    hidden_channels=int(round(cin * expansion)),
                    out_channels=cout,
                    stride=first_stride if i == 0 else 1,
                    expansion=expansion,
                )
            )
            cin = cout
    return MobileNetV2Spec(
        width_multiplier=float(width_multiplier),
        in_channels=in_channels,
        stem_channels=stem,
        blocks=tuple(blocks),
        last_channels=_make_divisible(1280 * max(1.0, width_multiplier), 8),
        num_classes=num_classes,
        input_size=size,
        dropout=float(dropout),
    )
