"""Reference model architectures, framework-free: the specs that both frameworks' twins are built from.

The twins themselves live with their framework: :func:`lightning_plugins.models.torch_model` builds the
PyTorch twin, :func:`keras_callbacks.models.keras_model` the Keras 3 twin (same layer sizes, same names), and
:func:`keras_callbacks.models.copy_torch_to_keras` copies trained torch weights into the Keras twin.

Known names: ``"digits_cnn"`` (small residual CNN for the bundled 8x8 digits; ``width`` scales it)
and ``"mobilenet_v2"`` (standard MobileNetV2; ``width_multiplier`` is the paper's alpha).

Example:
    >>> from fitslim.models import mobilenet_v2_spec
    >>> mobilenet_v2_spec(width_multiplier=0.35).last_channels
    1280
"""

from __future__ import annotations

from fitslim.models.spec import (
    DigitsCNNSpec,
    InvertedResidualSpec,
    MobileNetV2Spec,
    digits_cnn_spec,
    mobilenet_v2_spec,
)

__all__ = [
    "MODEL_NAMES",
    "DigitsCNNSpec",
    "InvertedResidualSpec",
    "MobileNetV2Spec",
    "check_model_name",
    "digits_cnn_spec",
    "mobilenet_v2_spec",
]

#: Names accepted by ``lightning_plugins.models.torch_model`` and ``keras_callbacks.models.keras_model``.
MODEL_NAMES: tuple[str, ...] = ("digits_cnn", "mobilenet_v2")

# where the framework twins went when they left the framework-free core
_MOVED = {
    "torch_model": "lightning_plugins.models",
    "DigitsCNN": "lightning_plugins.models",
    "MobileNetV2": "lightning_plugins.models",
    "keras_model": "keras_callbacks.models",
    "copy_torch_to_keras": "keras_callbacks.models",
}


def check_model_name(function: str, name: str) -> None:
    """Raise for a reference-model name that is not in :data:`MODEL_NAMES`.

    Args:
        function: the builder's name, for the message (``"torch_model"``).
        name: the name asked for.

    Raises:
        ValueError: ``name`` is not a known reference model.
    """
    if name not in MODEL_NAMES:
        raise ValueError(
            f"{function}(name=...): got {name!r}; known names are {', '.join(MODEL_NAMES)}. "
            "HINT: pass one of those, or build your own model."
        )


def __getattr__(name: str) -> object:
    """Name the new home of a framework twin that used to be importable from here."""
    if name in _MOVED:
        raise ImportError(
            f"fitslim.models.{name} moved to {_MOVED[name]}.{name} (the framework-free core builds no framework "
            f"model). HINT: from {_MOVED[name]} import {name}"
        )
    raise AttributeError(f"module 'fitslim.models' has no attribute {name!r}")
