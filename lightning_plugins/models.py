"""PyTorch twins of the reference models (``DigitsCNN``, ``MobileNetV2``).

Built from :mod:`fitslim.models.spec`, with the same layer sizes as the Keras twins in
:mod:`keras_callbacks.models`. Module paths map one-to-one onto Keras layer names by
replacing ``.`` with ``_`` (``blocks.3.dw_conv`` is the Keras layer ``blocks_3_dw_conv``), which is
what :func:`keras_callbacks.models.copy_torch_to_keras` relies on.

Only plain ops that ONNX, ncnn and TFLite all support are used: Conv2d (symmetric padding),
BatchNorm2d, ReLU/ReLU6, add, MaxPool2d, AdaptiveAvgPool2d(1), flatten, Dropout, Linear.

Example:
    >>> import torch
    >>> from lightning_plugins.models import DigitsCNN
    >>> _ = torch.manual_seed(0)
    >>> DigitsCNN(width=1.0).eval()(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from typing import Any, Literal, overload

import numpy as np
import torch
from torch import nn

from fitslim.models import check_model_name
from fitslim.models.spec import InvertedResidualSpec, digits_cnn_spec, mobilenet_v2_spec

__all__ = ["DigitsCNN", "MobileNetV2", "batchnorm_from_data", "randomize_batchnorm", "torch_model"]


def _init_weights(module: nn.Module) -> None:
    """Initialize like the MobileNetV2 reference code; deterministic under ``torch.manual_seed``."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


class ConvBNAct(nn.Module):
    """``conv`` (no bias, symmetric padding ``kernel // 2``) -> ``bn`` -> ``act``.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size (1 or 3).
        stride: stride.
        groups: conv groups (``in_channels`` for a depthwise conv).
        relu6: ReLU6 instead of ReLU.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        relu6: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.act: nn.Module = nn.ReLU6() if relu6 else nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply conv, BN and the activation."""
        return self.act(self.bn(self.conv(x)))


class ResidualDWBlock(nn.Module):
    """Depthwise 3x3 + BN + ReLU, pointwise 1x1 + BN, plus the input, ReLU.

    Args:
        channels: input and output channels.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dw_conv = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False)
        self.dw_bn = nn.BatchNorm2d(channels)
        self.dw_relu = nn.ReLU()
        self.pw_conv = nn.Conv2d(channels, channels, 1, bias=False)
        self.pw_bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        out = self.dw_relu(self.dw_bn(self.dw_conv(x)))
        out = self.pw_bn(self.pw_conv(out))
        return self.relu(out + x)


class ClassifierHead(nn.Module):
    """Global average pool, flatten, dropout (identity when the rate is 0), linear ``fc``.

    Args:
        in_features: channels of the incoming feature map.
        num_classes: outputs.
        dropout: dropout rate (0 disables it).
    """

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits."""
        return self.fc(self.dropout(self.flatten(self.pool(x))))


class DigitsCNN(nn.Module):
    """Small residual CNN for 8x8 (or 16x16) single-channel images such as the bundled digits.

    Submodules: ``stem`` (3x3 conv + BN + ReLU), ``block`` (residual depthwise block), ``pool``
    (2x2 max pool), ``transition`` (3x3 conv to more channels + BN + ReLU), ``head`` (global
    average pool + linear ``fc``). See :func:`fitslim.models.spec.digits_cnn_spec` for widths.

    Args:
        width: channel multiplier; 1.0 gives 16 and 32 channels, a teacher uses 2 or 4, a student 0.5.
        num_classes: outputs.
        in_channels: input channels.

    Raises:
        ValueError: an invalid width, class count or channel count.

    Example:
        >>> import torch
        >>> from lightning_plugins.models import DigitsCNN
        >>> model = DigitsCNN(width=0.5).eval()
        >>> model(torch.randn(4, 1, 8, 8)).shape
        torch.Size([4, 10])
    """

    def __init__(self, width: float = 1.0, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.spec = digits_cnn_spec(width=width, num_classes=num_classes, in_channels=in_channels)
        s = self.spec
        self.stem = ConvBNAct(s.in_channels, s.stem_channels, 3)
        self.block = ResidualDWBlock(s.stem_channels)
        self.pool = nn.MaxPool2d(2)
        self.transition = ConvBNAct(s.stem_channels, s.out_channels, 3)
        self.head = ClassifierHead(s.out_channels, s.num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, in_channels, H, W)`` images to ``(N, num_classes)`` logits."""
        x = self.block(self.stem(x))
        x = self.transition(self.pool(x))
        return self.head(x)


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual block.

    Submodules: ``expand_conv``/``expand_bn``/``expand_relu`` (absent when the expansion is 1),
    ``dw_conv``/``dw_bn``/``dw_relu`` (3x3 depthwise, padding 1), ``project_conv``/``project_bn``.

    Args:
        spec: the block description.
    """

    def __init__(self, spec: InvertedResidualSpec) -> None:
        super().__init__()
        self.use_residual = spec.use_residual
        hidden = spec.hidden_channels
        self.expand_conv: nn.Conv2d | None = None
        self.expand_bn: nn.BatchNorm2d | None = None
        self.expand_relu: nn.ReLU6 | None = None
        if spec.has_expand:
            self.expand_conv = nn.Conv2d(spec.in_channels, hidden, 1, bias=False)
            self.expand_bn = nn.BatchNorm2d(hidden)
            self.expand_relu = nn.ReLU6()
        self.dw_conv = nn.Conv2d(hidden, hidden, 3, spec.stride, 1, groups=hidden, bias=False)
        self.dw_bn = nn.BatchNorm2d(hidden)
        self.dw_relu = nn.ReLU6()
        self.project_conv = nn.Conv2d(hidden, spec.out_channels, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(spec.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        out = x
        if self.expand_conv is not None and self.expand_bn is not None and self.expand_relu is not None:
            out = self.expand_relu(self.expand_bn(self.expand_conv(out)))
        out = self.dw_relu(self.dw_bn(self.dw_conv(out)))
        out = self.project_bn(self.project_conv(out))
        if self.use_residual:
            out = out + x
        return out


class MobileNetV2(nn.Module):
    """Standard MobileNetV2 with explicit symmetric padding.

    Submodules: ``stem`` (3x3 stride-2 conv + BN + ReLU6), ``blocks`` (17 inverted residuals),
    ``last`` (1x1 conv + BN + ReLU6), ``head`` (global average pool, dropout, linear ``fc``).
    See :func:`fitslim.models.spec.mobilenet_v2_spec` for the channel counts.

    Args:
        width_multiplier: the paper's alpha.
        num_classes: outputs.
        in_channels: input channels.
        input_size: the size the model is meant for (``int`` or ``(height, width)``); recorded in
            :attr:`spec`, the torch model itself accepts any size.
        dropout: dropout rate before the classifier.

    Raises:
        ValueError: an invalid argument (see :func:`~fitslim.models.spec.mobilenet_v2_spec`).

    Example:
        >>> import torch
        >>> from lightning_plugins.models import MobileNetV2
        >>> model = MobileNetV2(width_multiplier=0.35, num_classes=10, input_size=96).eval()
        >>> model(torch.randn(1, 3, 96, 80)).shape
        torch.Size([1, 10])
    """

    def __init__(
        self,
        width_multiplier: float = 1.0,
        num_classes: int = 1000,
        in_channels: int = 3,
        input_size: int | tuple[int, int] | None = 224,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.spec = mobilenet_v2_spec(
            width_multiplier=width_multiplier,
            num_classes=num_classes,
            in_channels=in_channels,
            input_size=input_size,
            dropout=dropout,
        )
        s = self.spec
        self.stem = ConvBNAct(s.in_channels, s.stem_channels, 3, stride=2, relu6=True)
        self.blocks = nn.Sequential(*[InvertedResidual(b) for b in s.blocks])
        self.last = ConvBNAct(s.blocks[-1].out_channels, s.last_channels, 1, relu6=True)
        self.head = ClassifierHead(s.last_channels, s.num_classes, s.dropout)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(N, in_channels, H, W)`` images to ``(N, num_classes)`` logits."""
        return self.head(self.last(self.blocks(self.stem(x))))


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine weights, then put the model in eval mode.

    A freshly initialised network has identity BatchNorms, so folding them is never really exercised
    and outputs barely depend on the input; tests and benchmarks of exporters use this instead.
    """
    gen = torch.Generator().manual_seed(seed)
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            if mod.running_mean is None or mod.running_var is None:
                continue
            n = mod.num_features
            with torch.no_grad():
                mod.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
                mod.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                mod.weight.copy_(torch.rand(n, generator=gen) * 2 - 1)
                mod.bias.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
    return model.eval()


@torch.no_grad()
def batchnorm_from_data(model: nn.Module, x: np.ndarray, batch: int = 16) -> nn.Module:
    """Set BatchNorm running statistics to the exact averages over ``x`` (NCHW), then eval mode.

    Gives a random-weight network realistic activations, so its outputs depend on its input.
    """
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None  # cumulative average
    model.train()
    for i in range(0, len(x), batch):
        model(torch.from_numpy(x[i : i + batch]))
    return model.eval()


@overload
def torch_model(name: Literal["digits_cnn"], **kwargs: Any) -> DigitsCNN: ...
@overload
def torch_model(name: Literal["mobilenet_v2"], **kwargs: Any) -> MobileNetV2: ...
@overload
def torch_model(name: str, **kwargs: Any) -> nn.Module: ...
def torch_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the PyTorch twin of a reference model by name.

    Args:
        name: one of :data:`fitslim.models.MODEL_NAMES`.
        **kwargs: passed to :class:`DigitsCNN` (``width``, ``num_classes``, ``in_channels``) or
            :class:`MobileNetV2` (``width_multiplier``, ``num_classes``, ``in_channels``, ``input_size``,
            ``dropout``).

    Returns:
        The ``torch.nn.Module`` (in training mode; NCHW input).

    Raises:
        ValueError: an unknown name or an invalid argument.

    Example:
        >>> from lightning_plugins.models import torch_model
        >>> torch_model("mobilenet_v2", width_multiplier=0.35, num_classes=10).spec.last_channels
        1280
    """
    check_model_name("torch_model", name)
    builder: type[nn.Module] = DigitsCNN if name == "digits_cnn" else MobileNetV2
    return builder(**kwargs)
