"""Reference models as PyTorch/Keras twins with identical layer sizes.

This package imports neither torch nor keras: the framework-free architecture descriptions live in
:mod:`fitslim.models.spec`; :func:`torch_model` and :func:`keras_model` import the framework only
when called. Both twins of a name are built from the same spec, and
:func:`copy_torch_to_keras` copies trained torch weights into the Keras twin (same outputs).

Known names: ``"digits_cnn"`` (small residual CNN for the bundled 8x8 digits; ``width`` scales it)
and ``"mobilenet_v2"`` (standard MobileNetV2; ``width_multiplier`` is the paper's alpha).

Example:
    >>> from fitslim.models import keras_model, torch_model
    >>> teacher = torch_model("digits_cnn", width=4.0)
    >>> student = keras_model("digits_cnn", width=0.5)
    >>> student.output_shape
    (None, 10)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, Literal, overload

from fitslim.models.spec import (
    DigitsCNNSpec,
    InvertedResidualSpec,
    MobileNetV2Spec,
    digits_cnn_spec,
    mobilenet_v2_spec,
)
from fitslim.models.transfer import copy_torch_to_keras

if TYPE_CHECKING:
    import torch

    from fitslim.models.torch_models import DigitsCNN, MobileNetV2

__all__ = [
    "MODEL_NAMES",
    "DigitsCNNSpec",
    "InvertedResidualSpec",
    "MobileNetV2Spec",
    "copy_torch_to_keras",
    "digits_cnn_spec",
    "keras_model",
    "mobilenet_v2_spec",
    "torch_model",
]

#: Names accepted by :func:`torch_model` and :func:`keras_model`.
MODEL_NAMES: tuple[str, ...] = ("digits_cnn", "mobilenet_v2")

_TORCH_BUILDERS = {"digits_cnn": "DigitsCNN", "mobilenet_v2": "MobileNetV2"}
_KERAS_BUILDERS = {"digits_cnn": "digits_cnn", "mobilenet_v2": "mobilenet_v2"}


def _check_name(function: str, name: str) -> None:
    if name not in MODEL_NAMES:
        raise ValueError(
            f"{function}(name=...): got {name!r}; known names are {', '.join(MODEL_NAMES)}. "
            "HINT: pass one of those, or build your own model."
        )


def _import(module: str, extra: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        if error.name is not None and error.name.split(".")[0] == package:
            raise ImportError(f"{module} needs {package}: pip install 'fitslim[{extra}]'") from error
        raise


@overload
def torch_model(name: Literal["digits_cnn"], **kwargs: Any) -> DigitsCNN: ...
@overload
def torch_model(name: Literal["mobilenet_v2"], **kwargs: Any) -> MobileNetV2: ...
@overload
def torch_model(name: str, **kwargs: Any) -> torch.nn.Module: ...
def torch_model(name: str, **kwargs: Any) -> torch.nn.Module:
    """Build the PyTorch twin of a reference model by name.

    Args:
        name: one of :data:`MODEL_NAMES`.
        **kwargs: passed to :class:`~fitslim.models.torch_models.DigitsCNN` (``width``,
            ``num_classes``, ``in_channels``) or :class:`~fitslim.models.torch_models.MobileNetV2`
            (``width_multiplier``, ``num_classes``, ``in_channels``, ``input_size``, ``dropout``).

    Returns:
        The ``torch.nn.Module`` (in training mode; NCHW input).

    Raises:
        ValueError: an unknown name or an invalid argument.
        ImportError: torch is not installed.

    Example:
        >>> from fitslim.models import torch_model
        >>> torch_model("mobilenet_v2", width_multiplier=0.35, num_classes=10).spec.last_channels
        1280
    """
    _check_name("torch_model", name)
    module = _import("fitslim.models.torch_models", "lightning", "torch")
    model: torch.nn.Module = getattr(module, _TORCH_BUILDERS[name])(**kwargs)
    return model


def keras_model(name: str, **kwargs: Any) -> Any:
    """Build the Keras 3 twin of a reference model by name.

    Args:
        name: one of :data:`MODEL_NAMES`.
        **kwargs: passed to :func:`~fitslim.models.keras_models.digits_cnn` (``width``,
            ``num_classes``, ``in_channels``, ``input_size``) or
            :func:`~fitslim.models.keras_models.mobilenet_v2` (``width_multiplier``,
            ``num_classes``, ``in_channels``, ``input_size``, ``dropout``).

    Returns:
        A functional ``keras.Model`` (NHWC input) on the active Keras backend.

    Raises:
        ValueError: an unknown name or an invalid argument.
        ImportError: keras is not installed.

    Example:
        >>> from fitslim.models import keras_model
        >>> keras_model("digits_cnn", input_size=16).input_shape
        (None, 16, 16, 1)
    """
    _check_name("keras_model", name)
    module = _import("fitslim.models.keras_models", "keras", "keras")
    return getattr(module, _KERAS_BUILDERS[name])(**kwargs)
