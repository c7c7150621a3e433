"""Tests for fitslim.schedules: properties, fraction resolution, tfmot equality, configs, errors."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys
import textwrap
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fitslim.schedules import (
    ConstantSparsity,
    Cubic,
    PolynomialDecay,
    SparsitySchedule,
    make_schedule,
    schedule_from_config,
)

F32 = np.float32
# Absolute tolerance of "float32 exactness" for values in [0, 1): tfmot computes initial as
# float32(initial - final) + float32(final), which is within 1.5 * 2**-24 of initial.
F32_ABS = 2.0**-23


def f32(value: float) -> float:
    """The float32 rounding of ``value``, as a Python float."""
    return float(F32(value))


def ulps(a: float, b: float) -> int:
    """Distance between two float32 values in units in the last place (same-sign values)."""
    return abs(int(F32(a).view(np.int32)) - int(F32(b).view(np.int32)))


# --------------------------------------------------------------------------------------------------
# Independent references
# --------------------------------------------------------------------------------------------------


def tfmot_polynomial(initial: float, final: float, begin: int, end: int, power: float, step: int) -> float:
    """Transcription of tfmot PolynomialDecay.__call__'s second value (eager, float32 scalar ops).

    Scalar float32 ``**`` is used on purpose: it is libm ``powf``, like TF's scalar Pow kernel, while
    numpy's vectorised array power differs in the last bit for some inputs.
    """
    ratio = np.divide(F32(step - begin), F32(end - begin), dtype=np.float32)
    p = F32(np.minimum(F32(1.0), np.maximum(F32(0.0), ratio)))
    diff = F32(initial - final)  # Python float64 subtraction, then converted to a float32 tensor
    return float(F32(F32(diff * F32(F32(1.0) - p) ** F32(power)) + F32(final)))


def tfmot_should_prune(step: int, begin: int, end: int, frequency: int) -> bool:
    """Transcription of tfmot PruningSchedule._should_prune_in_step."""
    in_range = step >= begin and (step <= end or end < 0)
    return in_range and (step - begin) % frequency == 0


def simulated_mask_target(schedule: SparsitySchedule, step: int) -> float:
    """Brute force: walk every step from 0, updating the held target at each update step."""
    held = 0.0
    for t in range(step + 1):
        if schedule.should_update(t):
            held = schedule.sparsity(t)
    return held


# --------------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------------

sparsities = st.floats(min_value=0.0, max_value=0.999, allow_nan=False)
frequencies = st.none() | st.integers(min_value=1, max_value=120)


@st.composite
def decaying(draw: st.DrawFn, *, increasing: bool = False) -> PolynomialDecay:
    """A resolved PolynomialDecay or Cubic with small steps (so brute-force checks stay fast)."""
    initial, final = draw(sparsities), draw(sparsities)
    if increasing and initial > final:
        initial, final = final, initial
    start_step = draw(st.integers(min_value=0, max_value=300))
    end_step = start_step + draw(st.integers(min_value=1, max_value=300))
    frequency = draw(frequencies)
    timing: dict[str, Any] = {"start_step": start_step, "end_step": end_step, "frequency": frequency}
    if draw(st.booleans()):
        return Cubic(initial_sparsity=initial, final_sparsity=final, **timing)
    power = draw(st.floats(min_value=0.1, max_value=8.0))
    return PolynomialDecay(initial_sparsity=initial, final_sparsity=final, power=power, **timing)


@st.composite
def constants(draw: st.DrawFn) -> ConstantSparsity:
    """A resolved ConstantSparsity, finite or endless."""
    start_step = draw(st.integers(min_value=0, max_value=300))
    end_step = draw(st.just(-1) | st.integers(min_value=start_step, max_value=start_step + 300))
    return ConstantSparsity(
        draw(sparsities), start_step=start_step, end_step=end_step, frequency=draw(frequencies)
    )


schedules = decaying() | constants()
steps = st.integers(min_value=-5, max_value=800)


# --------------------------------------------------------------------------------------------------
# Properties of __call__
# --------------------------------------------------------------------------------------------------


@given(schedules, steps)
def test_call_is_bounded(schedule: SparsitySchedule, step: int) -> None:
    assert 0.0 <= schedule(step) <= 1.0
    assert 0.0 <= schedule.sparsity(max(step, 0)) <= 1.0


@given(decaying(increasing=True) | constants(), steps, st.integers(min_value=0, max_value=400))
def test_call_is_monotone_when_sparsity_grows(schedule: SparsitySchedule, step: int, delta: int) -> None:
    assert schedule(step) <= schedule(step + delta)


@given(decaying())
def test_call_is_initial_at_start_and_final_at_end(schedule: PolynomialDecay) -> None:
    assert schedule.start_step is not None and schedule.end_step is not None
    assert schedule(schedule.start_step) == pytest.approx(schedule.initial_sparsity, abs=F32_ABS)
    # p == 1 makes the decay term exactly zero: the end value is float32(final), whatever the frequency.
    assert schedule(schedule.end_step) == f32(schedule.final_sparsity)
    assert schedule.should_update(schedule.end_step)


@given(schedules, st.integers(min_value=1, max_value=10**6))
def test_call_is_constant_outside_the_range(schedule: SparsitySchedule, offset: int) -> None:
    start_step, end_step = schedule.start_step, schedule.end_step
    assert start_step is not None and end_step is not None
    assert schedule(start_step - offset) == 0.0
    if end_step >= 0:
        assert schedule(end_step + offset) == f32(schedule.final_sparsity)
        assert not schedule.should_update(end_step + offset)
    else:
        assert schedule(start_step + offset) == f32(schedule.final_sparsity)


@settings(max_examples=50)
@given(schedules)
def test_call_equals_sparsity_at_every_update_step(schedule: SparsitySchedule) -> None:
    start_step, end_step = schedule.start_step, schedule.end_step
    assert start_step is not None and end_step is not None
    last = end_step if end_step >= 0 else start_step + 400
    update_steps = [t for t in range(start_step, last + 1) if schedule.should_update(t)]
    assert update_steps[0] == start_step
    for t in update_steps:
        assert schedule(t) == schedule.sparsity(t)
        assert schedule.last_update_step(t) == t


@settings(max_examples=50)
@given(schedules, steps)
def test_call_matches_a_step_by_step_mask_simulation(schedule: SparsitySchedule, step: int) -> None:
    assert schedule(step) == simulated_mask_target(schedule, step)


@given(schedules, steps)
@example(ConstantSparsity(0.0, start_step=0, end_step=-1), -1)  # end_step -1 is "endless", not a step to update at
def test_should_update_is_tfmot_except_at_end_step(schedule: SparsitySchedule, step: int) -> None:
    start_step, end_step, frequency = schedule.start_step, schedule.end_step, schedule.frequency
    assert start_step is not None and end_step is not None and frequency is not None
    expected = tfmot_should_prune(step, start_step, end_step, frequency) or (end_step >= 0 and step == end_step)
    assert schedule.should_update(step) == expected


def test_last_update_step_is_constant_time_arithmetic() -> None:
    schedule = ConstantSparsity(0.5, start_step=7, frequency=13)
    step = 10**15
    assert schedule.last_update_step(step) == 7 + (step - 7) // 13 * 13
    assert schedule(step) == f32(0.5)
    assert schedule.last_update_step(6) is None


def test_end_step_deviation_reaches_the_final_sparsity() -> None:
    # 100 steps, frequency 7: tfmot's last pruning step is 101 and it never applies 0.7.
    schedule = PolynomialDecay(
        initial_sparsity=0.1, final_sparsity=0.7, start_step=3, end_step=103, frequency=7
    )
    assert not tfmot_should_prune(103, 3, 103, 7)
    assert schedule.should_update(103)
    assert schedule(102) == schedule.sparsity(101) < f32(0.7)
    assert schedule(103) == f32(0.7)


# --------------------------------------------------------------------------------------------------
# Fractions of the fit
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [PolynomialDecay, Cubic])
def test_fractions_resolve_against_total_steps(cls: type[PolynomialDecay]) -> None:
    schedule = cls(final_sparsity=0.8, start=0.1, end=0.7)
    assert not schedule.is_resolved
    assert schedule.start_step is None and schedule.end_step is None and schedule.frequency is None
    resolved = schedule.resolve(200)
    assert type(resolved) is cls and resolved.is_resolved
    assert (resolved.start_step, resolved.end_step, resolved.frequency) == (20, 140, 2)
    assert resolved(19) == 0.0 and resolved(140) == f32(0.8)
    assert resolved.resolve(10_000) == resolved  # absolute steps are kept
    assert not schedule.is_resolved  # resolve returns a copy


def test_resolution_uses_round() -> None:
    # round(0.25 * 10) == 2 (half to even), round(0.35 * 10) == round(3.5) == 4.
    resolved = PolynomialDecay(final_sparsity=0.5, start=0.25, end=0.35).resolve(10)
    assert (resolved.start_step, resolved.end_step) == (round(2.5), round(3.5)) == (2, 4)


def test_mixed_fraction_and_step() -> None:
    schedule = ConstantSparsity(0.5, start=0.5, end_step=100)
    assert not schedule.is_resolved and schedule.end_step == 100
    assert schedule.resolve(100).start_step == 50
    with pytest.raises(ValueError, match="total_steps=300"):
        schedule.resolve(300)


def test_too_few_steps_for_the_fractions() -> None:
    with pytest.raises(ValueError, match="total_steps=2"):
        Cubic(final_sparsity=0.5, start=0.1, end=0.2).resolve(2)


def test_defaults() -> None:
    constant = ConstantSparsity(0.5)
    assert constant.is_resolved
    assert (constant.start_step, constant.end_step, constant.frequency) == (0, -1, 100)  # tfmot's defaults
    polynomial = PolynomialDecay(final_sparsity=0.5)
    assert (polynomial.start_step, polynomial.end, polynomial.power, polynomial.initial_sparsity) == (
        0,
        1.0,
        3.0,
        0.0,
    )
    assert polynomial.resolve(1000).end_step == 1000
    assert Cubic(final_sparsity=0.5).power == 3.0


@pytest.mark.parametrize(
    ("start_step", "end_step", "frequency", "expected"),
    [(0, 1000, None, 20), (10, 40, None, 1), (0, 99, None, 1), (5, 5105, None, 102), (0, 1000, 7, 7)],
)
def test_auto_frequency(start_step: int, end_step: int, frequency: int | None, expected: int) -> None:
    schedule = PolynomialDecay(
        final_sparsity=0.5, start_step=start_step, end_step=end_step, frequency=frequency
    )
    assert schedule.frequency == expected
    assert ConstantSparsity(0.5, start_step=start_step, frequency=frequency).frequency == (frequency or 100)


@pytest.mark.parametrize("method", ["__call__", "sparsity", "should_update", "last_update_step"])
@pytest.mark.parametrize(
    "schedule",
    [
        PolynomialDecay(final_sparsity=0.5, start=0.1),
        Cubic(final_sparsity=0.5, end=0.9),
        ConstantSparsity(0.5, start=0.2),
    ],
    ids=repr,
)
def test_unresolved_schedule_asks_for_resolve(schedule: SparsitySchedule, method: str) -> None:
    with pytest.raises(RuntimeError, match=r"\.resolve\(total_steps\)"):
        getattr(schedule, method)(10)


# --------------------------------------------------------------------------------------------------
# Equality with tfmot
# --------------------------------------------------------------------------------------------------

POLY_GRID = list(
    itertools.product(
        [0.0, 0.1, 0.35, 0.6],  # initial
        [0.0, 0.5, 0.7, 0.93, 0.999],  # final
        [(0, 40), (3, 103), (17, 20), (250, 1250)],  # begin, end
        [1, 2, 3, 0.5, 2.7, 6.0],  # power
    )
)


@pytest.mark.parametrize(("initial", "final", "window", "power"), POLY_GRID)
def test_polynomial_equals_tfmot_formula(
    initial: float, final: float, window: tuple[int, int], power: float
) -> None:
    begin, end = window
    schedule = PolynomialDecay(
        initial_sparsity=initial,
        final_sparsity=final,
        start_step=begin,
        end_step=end,
        power=power,
        frequency=1,
    )
    for step in sorted(
        {0, begin, begin + 1, (begin + end) // 2, end - 1, end, end + 7, *range(begin, end, 13)}
    ):
        assert schedule.sparsity(step) == tfmot_polynomial(initial, final, begin, end, power, step)
    if power == 3:
        cubic = Cubic(
            initial_sparsity=initial, final_sparsity=final, start_step=begin, end_step=end, frequency=1
        )
        assert [cubic.sparsity(t) for t in range(begin, end + 1)] == [
            schedule.sparsity(t) for t in range(begin, end + 1)
        ]


# Values printed by tensorflow-model-optimization 0.8.1 (TF 2.21, eager): (step, should_prune, sparsity).
TFMOT_GOLDEN: list[tuple[str, dict[str, Any], list[tuple[int, bool, float]]]] = [
    (
        "poly",
        {
            "initial_sparsity": 0.1,
            "final_sparsity": 0.7,
            "begin_step": 3,
            "end_step": 103,
            "power": 3,
            "frequency": 7,
        },
        [
            (0, False, 0.09999996423721313),
            (3, True, 0.09999996423721313),
            (4, False, 0.11782056093215942),
            (7, False, 0.16915839910507202),
            (10, True, 0.21738576889038086),
            (50, False, 0.6106737852096558),
            (100, False, 0.6999837756156921),
            (102, False, 0.6999993920326233),
            (103, False, 0.699999988079071),
            (150, False, 0.699999988079071),
        ],
    ),
    (
        "poly",
        {
            "initial_sparsity": 0.0,
            "final_sparsity": 0.93,
            "begin_step": 0,
            "end_step": 40,
            "power": 2.7,
            "frequency": 1,
        },
        [
            (0, True, 0.0),
            (1, True, 0.061448752880096436),
            (13, True, 0.6081873178482056),
            (39, True, 0.9299560785293579),
            (40, True, 0.9300000071525574),
        ],
    ),
    (
        "poly",
        {
            "initial_sparsity": 0.35,
            "final_sparsity": 0.5,
            "begin_step": 17,
            "end_step": 20,
            "power": 0.5,
            "frequency": 2,
        },
        [
            (16, False, 0.3499999940395355),
            (17, True, 0.3499999940395355),
            (18, False, 0.3775255084037781),
            (19, True, 0.4133974611759186),
            (20, False, 0.5),
            (21, False, 0.5),
        ],
    ),
    (
        "const",
        {"target_sparsity": 0.93, "begin_step": 5, "end_step": -1, "frequency": 100},
        [
            (0, False, 0.9300000071525574),
            (5, True, 0.9300000071525574),
            (6, False, 0.9300000071525574),
            (105, True, 0.9300000071525574),
            (1000005, True, 0.9300000071525574),
        ],
    ),
    (
        "const",
        {"target_sparsity": 0.3, "begin_step": 2, "end_step": 9, "frequency": 3},
        [
            (1, False, 0.30000001192092896),
            (2, True, 0.30000001192092896),
            (5, True, 0.30000001192092896),
            (8, True, 0.30000001192092896),
            (9, False, 0.30000001192092896),
            (11, False, 0.30000001192092896),
        ],
    ),
]


@pytest.mark.parametrize(("kind", "tfmot_config", "rows"), TFMOT_GOLDEN)
def test_matches_recorded_tfmot_values(
    kind: str, tfmot_config: dict[str, Any], rows: list[tuple[int, bool, float]]
) -> None:
    class_name = "PolynomialDecay" if kind == "poly" else "ConstantSparsity"
    schedule = schedule_from_config({"class_name": class_name, "config": tfmot_config})
    end_step = tfmot_config["end_step"]
    for step, should_prune, value in rows:
        assert schedule.sparsity(step) == value
        assert schedule.should_update(step) == (should_prune or step == end_step)


TFMOT_SCRIPT = textwrap.dedent(
    """
    import itertools, json, os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot

    K = tfmot.sparsity.keras
    grid = json.loads(sys.argv[1])
    out = {"poly": [], "const": [], "graph": []}
    for initial, final, begin, end, power, frequency in grid["poly"]:
        s = K.PolynomialDecay(initial, final, begin, end, power=power, frequency=frequency)
        for step in range(0, end + 4):
            should, value = s(step)
            out["poly"].append([initial, final, begin, end, power, frequency, step,
                                bool(should.numpy()), float(value.numpy())])
    for target, begin, end, frequency in grid["const"]:
        s = K.ConstantSparsity(target, begin, end_step=end, frequency=frequency)
        for step in range(0, max(end, begin + 250) + 4):
            should, value = s(step)
            out["const"].append([target, begin, end, frequency, step, bool(should.numpy()),
                                 float(value.numpy())])
    # Inside model.fit the schedule runs in a tf.function, where grappler rewrites the arithmetic.
    for initial, final, begin, end, power in grid["graph"]:
        s = K.PolynomialDecay(initial, final, begin, end, power=power, frequency=1)
        fn = tf.function(lambda step: s(step)[1])
        for step in range(0, end + 4):
            value = fn(tf.constant(step, tf.int64))
            out["graph"].append([initial, final, begin, end, power, step, float(value.numpy())])
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.slow
@pytest.mark.legacy
def test_equals_real_tfmot_in_a_subprocess() -> None:
    if importlib.util.find_spec("tensorflow_model_optimization") is None:
        pytest.skip("tensorflow-model-optimization is not installed: pip install 'fitslim[keras-legacy]'")
    # A subprocess, because importing tfmot sets TF_USE_LEGACY_KERAS=1 for the whole process.
    grid = {
        "poly": [
            [initial, final, begin, end, power, frequency]
            for initial, final, (begin, end), power, frequency in itertools.product(
                [0.0, 0.35], [0.5, 0.93], [(0, 40), (3, 103), (17, 20)], [1, 3, 2.7, 0.5], [1, 7, 100]
            )
        ],
        "const": [
            [target, begin, end, frequency]
            for target, (begin, end), frequency in itertools.product(
                [0.5, 0.93], [(0, -1), (5, -1), (3, 103), (17, 17)], [1, 7, 100]
            )
        ],
        "graph": [[0.1, 0.7, 3, 103, 3], [0.0, 0.93, 0, 40, 2.7], [0.35, 0.5, 17, 20, 1]],
    }
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-c", TFMOT_SCRIPT, json.dumps(grid)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result_line = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")][-1]
    result = json.loads(result_line.removeprefix("RESULT "))

    deviations = 0
    for initial, final, begin, end, power, frequency, step, should, value in result["poly"]:
        ours = PolynomialDecay(
            initial_sparsity=initial,
            final_sparsity=final,
            start_step=begin,
            end_step=end,
            power=power,
            frequency=frequency,
        )
        assert ulps(ours.sparsity(step), value) <= 1, (initial, final, begin, end, power, step)
        assert F32(ours.sparsity(step)) == F32(value)  # observed: bit-identical in eager mode
        if step == end:
            assert ours.should_update(step)
            deviations += not should
        else:
            assert ours.should_update(step) == should, (begin, end, frequency, step)
    assert deviations > 0  # the grid does contain end steps tfmot never prunes at

    for target, begin, end, frequency, step, should, value in result["const"]:
        constant = ConstantSparsity(target, start_step=begin, end_step=end, frequency=frequency)
        assert F32(constant.sparsity(step)) == F32(value)
        assert constant.should_update(step) == (should or step == end)

    # Graph mode differs from eager tfmot (and so from us) by a few float32 ulps, never more than 3e-7.
    for initial, final, begin, end, power, step, value in result["graph"]:
        ours = PolynomialDecay(
            initial_sparsity=initial, final_sparsity=final, start_step=begin, end_step=end, power=power
        )
        assert ours.sparsity(step) == pytest.approx(value, abs=3e-7)


# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------

ALL_SCHEDULES: list[SparsitySchedule] = [
    ConstantSparsity(0.5),
    ConstantSparsity(0.25, start=0.1, end=0.9, frequency=3),
    ConstantSparsity(0.75, start_step=10, end_step=10),
    ConstantSparsity(0.6, start=0.5, end_step=400),
    PolynomialDecay(final_sparsity=0.5),
    PolynomialDecay(initial_sparsity=0.2, final_sparsity=0.8, start=0.0, end=0.6, power=2.0, frequency=5),
    PolynomialDecay(
        initial_sparsity=0.1, final_sparsity=0.7, start_step=3, end_step=103, power=3, frequency=7
    ),
    Cubic(final_sparsity=0.9),
    Cubic(initial_sparsity=0.05, final_sparsity=0.5, start_step=0, end=0.5),
    Cubic(final_sparsity=0.5, start_step=100, end_step=1100, frequency=None),
]


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=repr)
def test_config_round_trip(schedule: SparsitySchedule) -> None:
    config = schedule.get_config()
    assert config["class_name"] == type(schedule).__name__
    for restored in (
        type(schedule).from_config(config),
        schedule_from_config(config),
        schedule_from_config(json.loads(json.dumps(config))),
    ):
        assert type(restored) is type(schedule)
        assert restored == schedule and hash(restored) == hash(schedule)
        assert restored.get_config() == config
    resolved = schedule.resolve(500)
    assert type(resolved).from_config(resolved.get_config()) == resolved
    assert [resolved(t) for t in range(0, 501, 7)] == [
        schedule_from_config(resolved.get_config())(t) for t in range(0, 501, 7)
    ]


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=repr)
def test_repr_rebuilds_the_schedule(schedule: SparsitySchedule) -> None:
    text = repr(schedule)
    assert text.startswith(type(schedule).__name__ + "(")
    namespace = {"ConstantSparsity": ConstantSparsity, "PolynomialDecay": PolynomialDecay, "Cubic": Cubic}
    assert eval(text, namespace) == schedule


def test_schedule_from_config_dispatch() -> None:
    assert schedule_from_config({"type": "constant", "sparsity": 0.5}) == ConstantSparsity(0.5)
    assert type(schedule_from_config({"type": "polynomial", "final_sparsity": 0.5})) is PolynomialDecay
    assert type(schedule_from_config({"type": "cubic", "final_sparsity": 0.5})) is Cubic
    assert (
        type(schedule_from_config({"class_name": "PolynomialDecay", "final_sparsity": 0.5}))
        is PolynomialDecay
    )
    assert schedule_from_config(
        {"type": "Polynomial_Decay", "final_sparsity": 0.5, "end": 0.6}
    ) == PolynomialDecay(final_sparsity=0.5, end=0.6)


def test_tfmot_style_configs_load() -> None:
    tfmot_poly = {
        "class_name": "PolynomialDecay",
        "config": {
            "initial_sparsity": 0.1,
            "final_sparsity": 0.7,
            "power": 3,
            "begin_step": 3,
            "end_step": 103,
            "frequency": 7,
        },
    }
    assert schedule_from_config(tfmot_poly) == PolynomialDecay(
        initial_sparsity=0.1, final_sparsity=0.7, start_step=3, end_step=103, frequency=7
    )
    tfmot_constant = {
        "class_name": "ConstantSparsity",
        "config": {"target_sparsity": 0.5, "begin_step": 0, "end_step": -1, "frequency": 100},
    }
    assert ConstantSparsity.from_config(tfmot_constant) == ConstantSparsity(0.5, start_step=0, frequency=100)


def test_make_schedule() -> None:
    assert make_schedule("constant", sparsity=0.5, start_step=3) == ConstantSparsity(0.5, start_step=3)
    assert make_schedule("polynomial", sparsity=0.5, start=0.0, end=0.6, power=2.0) == PolynomialDecay(
        final_sparsity=0.5, start=0.0, end=0.6, power=2.0
    )
    assert make_schedule("cubic", final_sparsity=0.5) == Cubic(final_sparsity=0.5)
    assert make_schedule("Cubic", sparsity=0.5) == Cubic(final_sparsity=0.5)
    assert Cubic(final_sparsity=0.5) != PolynomialDecay(final_sparsity=0.5)  # same numbers, other class
    assert len({Cubic(final_sparsity=0.5), Cubic(final_sparsity=0.5), ConstantSparsity(0.5)}) == 2


def test_accepts_numpy_scalars() -> None:
    schedule = PolynomialDecay(
        initial_sparsity=np.float32(0.25),
        final_sparsity=np.float64(0.5),
        start_step=np.int64(0),
        end_step=np.int32(10),
        frequency=np.int64(2),
    )
    assert schedule(np.int64(10)) == 0.5
    assert schedule.resolve(np.int64(5)) == schedule


# --------------------------------------------------------------------------------------------------
# Constructor and argument errors
# --------------------------------------------------------------------------------------------------


def _poly(**kwargs: Any) -> PolynomialDecay:
    return PolynomialDecay(**{"final_sparsity": 0.5, **kwargs})


def _cubic(**kwargs: Any) -> Cubic:
    return Cubic(**{"final_sparsity": 0.5, **kwargs})


def _constant(**kwargs: Any) -> ConstantSparsity:
    return ConstantSparsity(**{"sparsity": 0.5, **kwargs})


INVALID = [
    # sparsities
    (_constant, {"sparsity": 1.2}, ValueError, r"sparsity must be in \[0, 1\); got 1.2"),
    (_constant, {"sparsity": -0.1}, ValueError, "sparsity"),
    (_constant, {"sparsity": 1.0}, ValueError, "sparsity"),
    (_constant, {"sparsity": 0.99999999}, ValueError, "sparsity.*float32"),
    (_constant, {"sparsity": math.nan}, ValueError, "sparsity"),
    (_constant, {"sparsity": "0.5"}, TypeError, "sparsity"),
    (_constant, {"sparsity": True}, TypeError, "sparsity"),
    (_poly, {"final_sparsity": 1.2}, ValueError, r"final_sparsity must be in \[0, 1\); got 1.2\. Pass"),
    (_poly, {"final_sparsity": None}, TypeError, "final_sparsity"),
    (_poly, {"initial_sparsity": -0.1}, ValueError, "initial_sparsity"),
    (_cubic, {"initial_sparsity": 1.0}, ValueError, "initial_sparsity"),
    (_cubic, {"final_sparsity": 2}, ValueError, "final_sparsity"),
    # fractions
    (_poly, {"start": 1.5}, ValueError, "start must be a fraction"),
    (_poly, {"end": -0.1}, ValueError, "end must be a fraction"),
    (_constant, {"start": "0.1"}, TypeError, "start"),
    (_poly, {"start": 0.6, "end": 0.6}, ValueError, "start must be before end"),
    (_cubic, {"start": 0.7, "end": 0.2}, ValueError, "start must be before end"),
    (_constant, {"start": 0.7, "end": 0.2}, ValueError, "start must be <= end"),
    # both a fraction and a step
    (_poly, {"start": 0.1, "start_step": 3}, ValueError, "start and start_step"),
    (_constant, {"end": 0.9, "end_step": 30}, ValueError, "end and end_step"),
    # steps
    (_poly, {"start_step": -1}, ValueError, "start_step"),
    (_poly, {"end_step": -1}, ValueError, "end_step.*ConstantSparsity"),
    (_constant, {"end_step": -2}, ValueError, "end_step"),
    (_poly, {"start_step": 10, "end_step": 10}, ValueError, "start_step must be before end_step"),
    (_constant, {"start_step": 10, "end_step": 5}, ValueError, "start_step must be <= end_step"),
    (_poly, {"start_step": True}, TypeError, "start_step"),
    (_poly, {"end_step": 10.0}, TypeError, "end_step"),
    # frequency
    (_poly, {"frequency": 0}, ValueError, "frequency"),
    (_constant, {"frequency": -3}, ValueError, "frequency"),
    (_cubic, {"frequency": True}, TypeError, "frequency"),
    (_poly, {"frequency": 2.5}, TypeError, "frequency"),
    # power
    (_poly, {"power": 0}, ValueError, "power"),
    (_poly, {"power": -1.0}, ValueError, "power"),
    (_poly, {"power": math.inf}, ValueError, "power"),
    (_poly, {"power": True}, TypeError, "power"),
    (_cubic, {"power": 2.0}, TypeError, "power"),  # Cubic's power is fixed at 3
]


@pytest.mark.parametrize(
    ("factory", "kwargs", "error", "match"), INVALID, ids=[f"{f.__name__[1:]}-{k}" for f, k, _, _ in INVALID]
)
def test_constructor_errors(factory: Any, kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        factory(**kwargs)


def test_error_messages_say_what_to_do() -> None:
    with pytest.raises(
        ValueError, match=r"final_sparsity must be in \[0, 1\); got 1\.2\. Pass .*e\.g\. 0\.5"
    ):
        PolynomialDecay(final_sparsity=1.2)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: ConstantSparsity(0.5).resolve(0), ValueError, "total_steps"),
        (lambda: ConstantSparsity(0.5).resolve(1.5), TypeError, "total_steps"),
        (lambda: ConstantSparsity(0.5).resolve(True), TypeError, "total_steps"),
        (lambda: ConstantSparsity(0.5)("3"), TypeError, "step"),
        (lambda: ConstantSparsity(0.5)(True), TypeError, "step"),
        (lambda: ConstantSparsity(0.5).should_update(2.0), TypeError, "step"),
        (lambda: make_schedule("linear"), ValueError, "schedule name"),
        (lambda: make_schedule(3), TypeError, "schedule name"),
        (lambda: make_schedule("polynomial", sparsity=0.5, final_sparsity=0.5), ValueError, "final_sparsity"),
        (lambda: make_schedule("cubic", sparsity=0.5, power=2.0), ValueError, "power"),
        (lambda: make_schedule("constant", sparsity=0.5, begin=3), ValueError, "begin"),
        (lambda: schedule_from_config({"final_sparsity": 0.5}), ValueError, "class_name"),
        (lambda: schedule_from_config({"type": "linear"}), ValueError, "schedule name"),
        (lambda: schedule_from_config([("type", "cubic")]), TypeError, "config"),  # type: ignore[arg-type]
        (
            lambda: schedule_from_config({"type": "cubic", "class_name": "ConstantSparsity"}),
            ValueError,
            "class_name",
        ),
        (
            lambda: PolynomialDecay.from_config({"class_name": "Cubic", "final_sparsity": 0.5}),
            ValueError,
            "Cubic",
        ),
        (
            lambda: schedule_from_config({"type": "constant", "sparsity": 0.5, "target_sparsity": 0.5}),
            ValueError,
            "target_sparsity",
        ),
    ],
)
def test_other_argument_errors(call: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        call()
