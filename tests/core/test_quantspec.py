"""QuantSpec: JSON round trip, validation, ncnn multipliers, atomic save."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fitslim import LayerQuant, QuantSpec
from fitslim.quantspec import QUANTSPEC_VERSION


def _spec() -> QuantSpec:
    return QuantSpec(
        layers=[
            LayerQuant("stem.0", "conv2d", (4, 1, 3, 3), [0.1, 0.2, 0.3, 1e-7], 0.0078125),
            LayerQuant("block.dw", "depthwise_conv2d", (4, 1, 3, 3), [0.5] * 4, 0.25, groups=4),
            LayerQuant("head", "linear", (10, 4), [0.01 * (i + 1) for i in range(10)], 0.125),
        ],
        source="qat",
        framework="torch",
        metadata={"epochs": 3},
    )


def test_json_round_trip_is_exact(tmp_path: Path) -> None:
    spec = _spec()
    again = QuantSpec.from_json(spec.to_json())
    assert again == spec
    path = spec.save(tmp_path / "sub" / "quant_spec.json")
    assert QuantSpec.load(path) == spec
    assert json.loads(path.read_text())["version"] == QUANTSPEC_VERSION
    assert [p.name for p in path.parent.iterdir()] == ["quant_spec.json"]  # no temporary left behind


def test_lookup_and_ncnn_multipliers() -> None:
    spec = _spec()
    assert spec.names() == ["stem.0", "block.dw", "head"]
    assert spec["head"].out_channels == 10
    np.testing.assert_allclose(spec["block.dw"].ncnn_weight_multipliers(), [2.0] * 4)
    assert spec["stem.0"].ncnn_input_multiplier() == 128.0
    with pytest.raises(KeyError, match="nope"):
        spec["nope"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "lstm"}, "kind"),
        ({"weight_scales": [0.1, 0.1]}, "one scale per output channel"),
        ({"weight_scales": [0.1, 0.0, 0.1, 0.1]}, "weight_scales"),
        ({"input_scale": float("nan")}, "input_scale"),
        ({"weight_shape": (0, 3)}, "weight_shape"),
        ({"name": ""}, "name"),
        ({"groups": 0}, "groups"),
    ],
)
def test_layer_validation(kwargs: dict, match: str) -> None:
    base = {
        "name": "c",
        "kind": "conv2d",
        "weight_shape": (4, 1, 3, 3),
        "weight_scales": [0.1] * 4,
        "input_scale": 0.1,
    }
    with pytest.raises(ValueError, match=match):
        LayerQuant(**{**base, **kwargs})


def test_spec_validation() -> None:
    layer = LayerQuant("a", "linear", (2, 2), [0.1, 0.1], 0.1)
    with pytest.raises(ValueError, match="duplicate layer names"):
        QuantSpec(layers=[layer, layer])
    with pytest.raises(ValueError, match="weight_bits"):
        QuantSpec(weight_bits=9)
    with pytest.raises(ValueError, match="source"):
        QuantSpec(source="guess")
    d = _spec().to_dict()
    with pytest.raises(ValueError, match="version 99"):
        QuantSpec.from_dict({**d, "version": 99})
    with pytest.raises(ValueError, match="needs a 'version'"):
        QuantSpec.from_dict({k: v for k, v in d.items() if k != "version"})
    with pytest.raises(ValueError, match="unknown key"):
        QuantSpec.from_dict({**d, "scales": []})
    with pytest.raises(ValueError, match="not a QuantSpec JSON"):
        QuantSpec.from_json("{nope")
