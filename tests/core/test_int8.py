"""The int8 math reference against hand-computed cases: ties, clamps, per-channel axes."""

from __future__ import annotations

import numpy as np
import pytest

from fitslim import int8


def test_round_half_away_ties() -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49, -0.51], dtype=np.float32)
    assert int8.round_half_away(x).tolist() == [1, 2, 3, -1, -2, -3, 0, -1]


def test_round_half_even_ties() -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.51, -0.49], dtype=np.float32)
    assert int8.round_half_even(x).tolist() == [0, 2, 2, -0, -2, -2, 1, -0]


def test_per_tensor_absmax_scale_and_quantize() -> None:
    x = np.array([-2.54, 0.011, 1.0, 2.54], dtype=np.float32)
    scale = int8.absmax_scale(x)
    assert scale.shape == ()
    assert scale == np.float32(2.54) / np.float32(127)
    assert int8.quantize(x, scale).tolist() == [-127, 1, 50, 127]
    # ties on an exactly representable grid: 0.5, 1.5, -0.5, -1.5 steps
    s = np.float32(0.5)
    ties = np.array([0.25, 0.75, -0.25, -0.75], dtype=np.float32)
    assert int8.quantize(ties, s, rounding="half_away").tolist() == [1, 2, -1, -2]
    assert int8.quantize(ties, s, rounding="half_even").tolist() == [0, 2, 0, -2]


def test_clamp_is_symmetric_127() -> None:
    s = np.float32(1.0)
    x = np.array([200.0, -200.0, 127.4, -127.6, 126.5], dtype=np.float32)
    assert int8.quantize(x, s).tolist() == [127, -127, 127, -127, 127]
    assert int8.quantize(x, s, rounding="half_even").tolist() == [127, -127, 127, -127, 126]


def test_per_channel_axis0_conv_weight() -> None:
    w = np.zeros((2, 1, 2, 2), dtype=np.float32)
    w[0] = [[[1.0, -0.5], [0.25, 0.0]]]
    w[1] = [[[0.0, 0.0], [0.0, 4.0]]]
    scales = int8.absmax_scale(w, axis=0)
    np.testing.assert_array_equal(scales, np.array([1 / 127, 4 / 127], dtype=np.float32))
    q = int8.quantize(w, scales, axis=0)
    assert q[0].ravel().tolist() == [127, -64, 32, 0]  # 63.5 -> 64 and 31.75 -> 32 away from zero
    assert q[1].ravel().tolist() == [0, 0, 0, 127]


def test_per_channel_last_axis_keras_layout() -> None:
    w = np.array([[1.0, 2.0], [-3.0, 0.5]], dtype=np.float32)  # (in, out), Keras Dense layout
    scales = int8.absmax_scale(w, axis=-1)
    np.testing.assert_array_equal(scales, np.array([3 / 127, 2 / 127], dtype=np.float32))
    np.testing.assert_array_equal(int8.quantize(w, scales, axis=-1), [[42, 127], [-127, 32]])


def test_all_zero_channel_gets_min_scale_and_quantizes_to_zero() -> None:
    w = np.zeros((3, 4), dtype=np.float32)
    scales = int8.absmax_scale(w, axis=0)
    assert np.all(scales == np.float32(int8.MIN_SCALE))
    assert not int8.quantize(w, scales, axis=0).any()


def test_fake_quant_equals_dequantized_quantize_and_error_within_half_step() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 3, 3, 3)).astype(np.float32)
    s = int8.absmax_scale(x, axis=0)
    fq = int8.fake_quant(x, s, axis=0)
    np.testing.assert_array_equal(fq, int8.dequantize(int8.quantize(x, s, axis=0), s, axis=0))
    step = s.reshape(-1, 1, 1, 1)
    assert np.all(np.abs(fq - x) <= step / 2 + 1e-7)


def test_percentile_scale_clips_outlier() -> None:
    x = np.concatenate([np.linspace(-1, 1, 10001, dtype=np.float32), np.array([100.0], dtype=np.float32)])
    assert int8.percentile_scale(x, 100.0) == int8.absmax_scale(x)
    assert int8.percentile_scale(x, 99.0) < np.float32(1.0 / 127 * 1.001)
    with pytest.raises(ValueError, match="percentile"):
        int8.percentile_scale(x, 0.0)


def test_bits_and_ncnn_multiplier() -> None:
    assert int8.qmax(8) == 127 and int8.qmax(4) == 7 and int8.qmax(2) == 1
    with pytest.raises(ValueError, match="bits"):
        int8.qmax(9)
    with pytest.raises(ValueError, match="bits"):
        int8.qmax(True)  # type: ignore[arg-type]
    assert int8.quantize(np.array([0.3, -0.9], np.float32), 0.1, bits=4).tolist() == [3, -7]
    np.testing.assert_allclose(int8.ncnn_multiplier(np.array([0.5, 0.25], np.float32)), [2.0, 4.0])


def test_rounding_and_axis_errors() -> None:
    with pytest.raises(ValueError, match="rounding"):
        int8.quantize(np.ones(2), 1.0, rounding="up")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="axis"):
        int8.absmax_scale(np.ones((2, 2)), axis=3)
