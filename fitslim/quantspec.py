"""QuantSpec: the int8 scales of a trained model, shared by QAT and every int8 exporter.

Quantization-aware training (either framework) or calibration produces a QuantSpec; the ncnn, TFLite
and TensorRT exporters consume it, so one trained model gives consistent int8 artifacts.

Example:
    >>> spec = QuantSpec(layers=[LayerQuant("stem.conv", "conv2d", (16, 1, 3, 3), [0.01] * 16, 0.02)])
    >>> QuantSpec.from_json(spec.to_json()) == spec
    True
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fitslim.fileio import atomic_write_text
from fitslim.int8 import ncnn_multiplier

__all__ = ["QUANTSPEC_VERSION", "LAYER_KINDS", "LayerQuant", "QuantSpec"]

QUANTSPEC_VERSION = 1

#: Weighted layer kinds a QuantSpec describes (the same words on the torch and Keras sides).
LAYER_KINDS = ("conv1d", "conv2d", "depthwise_conv2d", "linear")

_SOURCES = ("qat", "calibration")


def _positive_finite(values: Sequence[float], what: str) -> list[float]:
    out = [float(v) for v in values]
    for v in out:
        if not math.isfinite(v) or v <= 0.0:
            raise ValueError(f"{what} must be finite and > 0; got {v}. Scales come from QAT or calibration.")
    return out


@dataclass(frozen=True)
class LayerQuant:
    """The int8 scales of one weighted layer.

    Args:
        name: the layer's name in the source model (module path in torch, layer name in Keras).
        kind: one of :data:`LAYER_KINDS`.
        weight_shape: the weight shape in the source framework's layout, output channels first
            (torch: OIHW / (out, in)); identity used to map layers by content.
        weight_scales: one symmetric scale per output channel (``w ≈ q * scale``), computed on the
            deployed (BatchNorm-folded) weights.
        input_scale: one symmetric per-tensor scale for the layer's input activation.
        groups: convolution groups (1 for dense convs, channels for depthwise).

    Raises:
        ValueError: unknown kind, scales not positive, or scale count not equal to the output channels.
    """

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    weight_scales: list[float]
    input_scale: float
    groups: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"LayerQuant.name must be a non-empty string; got {self.name!r}.")
        if self.kind not in LAYER_KINDS:
            raise ValueError(
                f"LayerQuant.kind for layer {self.name!r} must be one of {LAYER_KINDS}; got {self.kind!r}."
            )
        shape = tuple(int(d) for d in self.weight_shape)
        if not shape or any(d <= 0 for d in shape):
            raise ValueError(
                f"LayerQuant.weight_shape for layer {self.name!r} must be positive dims; got {shape}."
            )
        object.__setattr__(self, "weight_shape", shape)
        scales = _positive_finite(self.weight_scales, f"weight_scales of layer {self.name!r}")
        if len(scales) != shape[0]:
            raise ValueError(
                f"weight_scales of layer {self.name!r} has {len(scales)} entries but the weight has "
                f"{shape[0]} output channels; give one scale per output channel."
            )
        object.__setattr__(self, "weight_scales", scales)
        object.__setattr__(
            self, "input_scale", _positive_finite([self.input_scale], f"input_scale of {self.name!r}")[0]
        )
        if isinstance(self.groups, bool) or int(self.groups) < 1:
            raise ValueError(f"LayerQuant.groups for layer {self.name!r} must be >= 1; got {self.groups!r}.")
        object.__setattr__(self, "groups", int(self.groups))

    @property
    def out_channels(self) -> int:
        """Number of output channels (length of ``weight_scales``)."""
        return self.weight_shape[0]

    def weight_scale_array(self) -> npt.NDArray[np.float32]:
        """The weight scales as a float32 array."""
        return np.asarray(self.weight_scales, dtype=np.float32)

    def ncnn_weight_multipliers(self) -> npt.NDArray[np.float32]:
        """ncnn's per-output-channel weight scales (multipliers ``1 / scale``)."""
        return ncnn_multiplier(self.weight_scale_array())

    def ncnn_input_multiplier(self) -> float:
        """ncnn's input scale (multiplier ``1 / input_scale``)."""
        return float(ncnn_multiplier(np.float32(self.input_scale)))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "name": self.name,
            "kind": self.kind,
            "weight_shape": list(self.weight_shape),
            "weight_scales": list(self.weight_scales),
            "input_scale": self.input_scale,
            "groups": self.groups,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LayerQuant:
        """Inverse of :meth:`to_dict`; a missing or unknown key is a ValueError naming it."""
        allowed = {"name", "kind", "weight_shape", "weight_scales", "input_scale", "groups"}
        unknown = set(d) - allowed
        if unknown:
            raise ValueError(
                f"unknown key(s) {sorted(unknown)} in a QuantSpec layer; allowed: {sorted(allowed)}."
            )
        missing = {"name", "kind", "weight_shape", "weight_scales", "input_scale"} - set(d)
        if missing:
            raise ValueError(f"QuantSpec layer {d.get('name', '?')!r} lacks key(s) {sorted(missing)}.")
        return cls(
            name=d["name"],
            kind=d["kind"],
            weight_shape=tuple(d["weight_shape"]),
            weight_scales=list(d["weight_scales"]),
            input_scale=d["input_scale"],
            groups=d.get("groups", 1),
        )


@dataclass
class QuantSpec:
    """Per weighted layer: per-output-channel weight scales and one per-tensor input scale (symmetric).

    Args:
        layers: one :class:`LayerQuant` per weighted layer, in forward order.
        weight_bits: integer width of weights (2..8).
        activation_bits: integer width of activations (2..8).
        source: ``"qat"`` (learned) or ``"calibration"`` (post-training).
        framework: where the spec came from (``"torch"``, ``"keras"``), informational.
        metadata: free-form JSON-serialisable extras.
        version: format version; loading a newer version fails with a clear message.

    Raises:
        ValueError: duplicate layer names, bits outside 2..8, unknown source or version.
    """

    layers: list[LayerQuant] = field(default_factory=list)
    weight_bits: int = 8
    activation_bits: int = 8
    source: str = "qat"
    framework: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    version: int = QUANTSPEC_VERSION

    def __post_init__(self) -> None:
        for what, bits in (("weight_bits", self.weight_bits), ("activation_bits", self.activation_bits)):
            if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
                raise ValueError(f"QuantSpec.{what} must be an integer in 2..8; got {bits!r}.")
        if self.source not in _SOURCES:
            raise ValueError(f"QuantSpec.source must be one of {_SOURCES}; got {self.source!r}.")
        if self.version != QUANTSPEC_VERSION:
            raise ValueError(
                f"QuantSpec version {self.version!r} is not supported by this fitslim (reads version "
                f"{QUANTSPEC_VERSION}); upgrade fitslim or re-export the spec."
            )
        names = [layer.name for layer in self.layers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(
                f"QuantSpec has duplicate layer names {dupes}; each weighted layer appears once."
            )

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[LayerQuant]:
        return iter(self.layers)

    def __getitem__(self, name: str) -> LayerQuant:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer {name!r} in the QuantSpec; layers: {[lq.name for lq in self.layers]}")

    def names(self) -> list[str]:
        """Layer names in order."""
        return [layer.name for layer in self.layers]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "version": self.version,
            "weight_bits": self.weight_bits,
            "activation_bits": self.activation_bits,
            "source": self.source,
            "framework": self.framework,
            "metadata": dict(self.metadata),
            "layers": [layer.to_dict() for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QuantSpec:
        """Inverse of :meth:`to_dict`."""
        if "version" not in d:
            raise ValueError(
                "a QuantSpec needs a 'version' field; this does not look like a fitslim QuantSpec."
            )
        allowed = {"version", "weight_bits", "activation_bits", "source", "framework", "metadata", "layers"}
        unknown = set(d) - allowed
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)} in a QuantSpec; allowed: {sorted(allowed)}.")
        return cls(
            layers=[LayerQuant.from_dict(x) for x in d.get("layers", [])],
            weight_bits=d.get("weight_bits", 8),
            activation_bits=d.get("activation_bits", 8),
            source=d.get("source", "qat"),
            framework=d.get("framework", ""),
            metadata=dict(d.get("metadata", {})),
            version=d["version"],
        )

    def to_json(self, indent: int | None = 2) -> str:
        """Serialise to a JSON string (floats keep full precision)."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> QuantSpec:
        """Parse :meth:`to_json` output."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"not a QuantSpec JSON document: {err}") from err
        if not isinstance(data, dict):
            raise ValueError("a QuantSpec JSON document must be an object.")
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write JSON atomically (a temporary file, then rename) and return the path."""
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> QuantSpec:
        """Read a spec written by :meth:`save`."""
        return cls.from_json(Path(path).read_text(encoding="utf-8"))
