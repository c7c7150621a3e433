"""fitslim.distill: the shared distillation settings and the float64 loss reference."""

from __future__ import annotations

import doctest
import math
from typing import Any

import numpy as np
import pytest

import fitslim.distill as distill
from fitslim.distill import DistillationSettings, combined_loss_reference, kd_loss_reference


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"temperature": 0.0}, ValueError, r"Distillation\(temperature=...\): must be > 0; got 0.0"),
        ({"temperature": -2}, ValueError, r"Distillation\(temperature=...\): must be > 0"),
        ({"temperature": "4"}, TypeError, r"Distillation\(temperature=...\): expected a finite number"),
        ({"temperature": math.inf}, TypeError, r"Distillation\(temperature=...\)"),
        ({"temperature": True}, TypeError, r"Distillation\(temperature=...\)"),
        ({"alpha": 1.01}, ValueError, r"Distillation\(alpha=...\): must be in \[0, 1\]; got 1.01"),
        ({"alpha": -0.1}, ValueError, r"Distillation\(alpha=...\)"),
        ({"alpha": None}, TypeError, r"Distillation\(alpha=...\)"),
        ({"loss": "ce"}, ValueError, r"Distillation\(loss=...\): unknown 'ce'.*'kl', 'mse'"),
        ({"loss": 3}, TypeError, r"Distillation\(loss=...\)"),
        ({"feature_weight": -1.0}, ValueError, r"Distillation\(feature_weight=...\): must be >= 0"),
        ({"features": ["stem"]}, TypeError, r"Distillation\(features=...\): expected a mapping"),
        ({"features": {"stem": 1}}, TypeError, r"Distillation\(features=...\): layer names must be strings"),
        ({"features": {"stem": ""}}, ValueError, r"Distillation\(features=...\): empty layer name"),
    ],
)
def test_settings_errors(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        DistillationSettings(**kwargs)


def test_settings_normalise_and_round_trip() -> None:
    s = DistillationSettings(temperature=2, alpha=1, features={"a": "b"}, feature_weight=0)
    assert (s.temperature, s.alpha, s.feature_weight) == (2.0, 1.0, 0.0)
    assert all(isinstance(v, float) for v in (s.temperature, s.alpha, s.feature_weight))
    assert s.features == {"a": "b"} and DistillationSettings().features == {}
    assert s.differences(s.to_dict()) == []
    assert DistillationSettings(temperature=3.0).differences(s.to_dict()) == [
        "temperature: 2.0 → 3.0",
        "alpha: 1.0 → 0.5",
        "features: {'a': 'b'} → {}",
        "feature_weight: 0.0 → 1.0",
    ]

    def my_loss(s: Any, t: Any) -> Any:
        return s

    assert DistillationSettings(loss=my_loss).to_dict()["loss"].startswith("callable:")
    assert DistillationSettings(loss=my_loss).to_dict()["loss"].endswith("my_loss")


def test_kd_reference_against_closed_form() -> None:
    # Two classes, logits [1, 0] vs [0, 1]: KL(p_t || p_s) = (σ(1) - σ(-1)) * ln(σ(1)/σ(-1)) = tanh(1/2) * 1.
    assert float(kd_loss_reference([[1.0, 0.0]], [[0.0, 1.0]], temperature=1.0)) == pytest.approx(
        math.tanh(0.5), rel=1e-15
    )
    # T = 2 halves the logits (KL = tanh(1/4) * 1/2), and the T² factor multiplies by 4.
    assert float(kd_loss_reference([[1.0, 0.0]], [[0.0, 1.0]], temperature=2.0)) == pytest.approx(
        4 * 0.5 * math.tanh(0.25), rel=1e-15
    )
    # Averaged over the batch, summed over classes; shift invariance of softmax.
    batch = kd_loss_reference([[1.0, 0.0], [5.0, 5.0]], [[0.0, 1.0], [-3.0, -3.0]], temperature=1.0)
    assert float(batch) == pytest.approx(math.tanh(0.5) / 2, rel=1e-15)


def test_kd_reference_matches_explicit_softmax_formula() -> None:
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(5, 7, 3)) * 3, rng.normal(size=(5, 7, 3)) * 3  # dense (N, C, L) predictions
    for temperature in (0.5, 1.0, 4.0):
        ps = np.exp(s / temperature) / np.exp(s / temperature).sum(1, keepdims=True)
        pt = np.exp(t / temperature) / np.exp(t / temperature).sum(1, keepdims=True)
        expected = temperature**2 * (pt * np.log(pt / ps)).sum(1).mean()
        assert float(kd_loss_reference(s, t, temperature)) == pytest.approx(expected, rel=1e-12)
    assert float(kd_loss_reference(s, t, 7.0, loss="mse")) == pytest.approx(((s - t) ** 2).mean(), rel=1e-15)
    assert float(kd_loss_reference(s, s, 3.0)) == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        kd_loss_reference(s, t[:, :6], 1.0)
    with pytest.raises(ValueError, match="loss must be one of"):
        kd_loss_reference(s, t, 1.0, loss="ce")


# The fixed logits the framework tests share (tests/*/test_distillation.py pin their losses to these values).
FIXED_STUDENT = [[2.0, -1.0, 0.5, 0.0], [0.3, 1.2, -0.7, 2.2], [-1.5, 0.0, 1.0, 3.0]]
FIXED_TEACHER = [[3.0, -2.0, 0.0, 0.5], [0.0, 2.5, -1.0, 1.0], [-2.0, 0.5, 0.5, 4.0]]
PINNED_KD = {1.0: 0.2560372051036171, 2.0: 0.3290448529399241, 4.0: 0.34122452426176125}


def _hinton(student: list[list[float]], teacher: list[list[float]], temperature: float) -> float:
    """Hinton et al.'s soft-target loss in plain Python: T² · mean over samples of sum_c p_t log(p_t / p_s)."""

    def softmax(row: list[float]) -> list[float]:
        e = [math.exp(v / temperature) for v in row]
        return [v / sum(e) for v in e]

    total = 0.0
    for s_row, t_row in zip(student, teacher, strict=True):
        ps, pt = softmax(s_row), softmax(t_row)
        total += sum(q * math.log(q / p) for p, q in zip(ps, pt, strict=True))
    return temperature**2 * total / len(student)


@pytest.mark.parametrize("temperature", sorted(PINNED_KD))
def test_kd_reference_pinned_on_fixed_logits(temperature: float) -> None:
    assert _hinton(FIXED_STUDENT, FIXED_TEACHER, temperature) == pytest.approx(PINNED_KD[temperature], rel=1e-13)
    assert float(kd_loss_reference(FIXED_STUDENT, FIXED_TEACHER, temperature)) == pytest.approx(
        PINNED_KD[temperature], rel=1e-13
    )


def test_combined_reference_mixing() -> None:
    assert float(combined_loss_reference(2.0, 10.0, alpha=0.0)) == 2.0
    assert float(combined_loss_reference(math.nan, 10.0, alpha=1.0)) == 10.0  # the task term is left out
    assert float(combined_loss_reference(2.0, 10.0, alpha=0.25)) == 0.75 * 2.0 + 0.25 * 10.0
    assert float(combined_loss_reference(2.0, 10.0, 0.5, [1.0, 3.0], feature_weight=0.5)) == 6.0 + 2.0
    assert float(combined_loss_reference(2.0, 10.0, 0.5, [1.0, 3.0], feature_weight=0.0)) == 6.0


def test_docstring_examples() -> None:
    result = doctest.testmod(distill)
    assert result.attempted > 0 and result.failed == 0


def test_resolve_layer() -> None:
    names = ["model", "model.stem", "model.stem.conv", "model.transition", "model.transition.conv"]
    assert distill.resolve_layer(names, "model.stem") == "model.stem"
    assert distill.resolve_layer(names, "transition.conv") == "model.transition.conv"
    with pytest.raises(ValueError, match=r"teacher layer 'conv' is ambiguous \(matches \['model.stem.conv', 'model"):
        distill.resolve_layer(names, "conv", "teacher")
    with pytest.raises(ValueError, match=r"student layer 'head' does not exist. Available student layers: \[model, "):
        distill.resolve_layer(names, "head")
    with pytest.raises(ValueError, match=r"\.\.\. \(40 more\)"):
        distill.resolve_layer([f"layer{i}" for i in range(100)], "nope")


@pytest.mark.parametrize(
    ("student", "teacher", "kind"),
    [
        ((8, 10), (8, 10), None),
        ((8, 16), (8, 64), "linear"),
        ((8, 16, 5), (8, 32, 5), "conv1d"),
        ((8, 16, 4, 4), (8, 128, 4, 4), "conv2d"),
        ((8, 16, 2, 4, 4), (8, 8, 2, 4, 4), "conv3d"),
        ((8, 4, 4, 16), (8, 4, 4, 32), "linear"),  # channels-last (Keras) maps
        ((8, 7, 384), (8, 7, 768), "linear"),  # tokens
        ((8, 16, 4, 4), (8, 32, 8, 8), "incompatible"),
        ((8, 16, 4, 4), (8, 16, 16), "incompatible"),
        ((8, 16), (4, 16), "incompatible"),
        ((8,), (8,), None),
        ((8,), (9,), "incompatible"),
    ],
)
def test_adapter_kind(student: tuple[int, ...], teacher: tuple[int, ...], kind: str | None) -> None:
    assert distill.adapter_kind(student, teacher) == kind
