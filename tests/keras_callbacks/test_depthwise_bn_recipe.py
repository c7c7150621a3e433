"""Channel pruning through a MobileNetV2-style inverted residual (expand conv, BN, DepthwiseConv2D, BN, project, Add).

The depthwise kernel and both BatchNormalization layers must follow the expand conv's kept channels, so the model
rebuilt with fewer channels computes what the masked model computed, in inference mode (moving statistics), with
and without ``QuantizationAware`` (whose ``freeze_bn`` runs BatchNorm on its moving statistics mid-fit).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="keras not installed")

from keras_callbacks.pruning import Pruning  # noqa: E402
from keras_callbacks.quantization import QuantizationAware  # noqa: E402

N, BATCH = 256, 32


def _inverted_residual() -> Any:
    """8x8x1 → stem conv (8) → one inverted residual block (expand 16, depthwise 3x3, project 8, Add) → head."""
    from keras import layers

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(inputs)
    x = layers.ReLU(6.0)(layers.BatchNormalization(momentum=0.9, name="stem_bn")(x))
    y = layers.Conv2D(16, 1, use_bias=False, name="expand")(x)
    y = layers.ReLU(6.0)(layers.BatchNormalization(momentum=0.9, name="expand_bn")(y))
    y = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(y)
    y = layers.ReLU(6.0)(layers.BatchNormalization(momentum=0.9, name="dw_bn")(y))
    y = layers.Conv2D(8, 1, use_bias=False, name="project")(y)
    y = layers.BatchNormalization(momentum=0.9, name="project_bn")(y)
    x = layers.Add(name="add")([x, y])
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(10, name="head")(x))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(True))
    return model


def _np(v: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(v))


def test_depthwise_and_bn_follow_the_expand_channels(digits_nhwc: Any) -> None:
    model = _inverted_residual()
    x, y = digits_nhwc.x_train[:N], digits_nhwc.y_train[:N]
    cb = Pruning(sparsity=0.5, granularity="channel", scope="layer", start=0.0, end=0.5)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[cb])
    new = cb.pruned_model
    keep = np.any(_np(model.get_layer("expand").kernel).reshape(-1, 16) != 0, axis=0)
    assert int(keep.sum()) == 8
    assert tuple(new.get_layer("dw").kernel.shape) == (3, 3, 8, 1)
    # the depthwise filters and the BN statistics of the kept channels, in the same order
    np.testing.assert_array_equal(_np(new.get_layer("dw").kernel), _np(model.get_layer("dw").kernel)[:, :, keep])
    for bn in ("expand_bn", "dw_bn"):
        for attr in ("gamma", "beta", "moving_mean", "moving_variance"):
            old = _np(getattr(model.get_layer(bn), attr))[keep]
            np.testing.assert_array_equal(_np(getattr(new.get_layer(bn), attr)), old, err_msg=f"{bn}.{attr}")
    # inference mode: the BN moving statistics of the rebuilt model give the masked model's logits
    np.testing.assert_allclose(new.predict(x[:64], verbose=0), model.predict(x[:64], verbose=0), atol=1e-4)


@pytest.mark.slow
def test_pruning_with_qat_and_frozen_bn_keeps_the_rebuilt_model_equal(digits_nhwc: Any) -> None:
    model = _inverted_residual()
    x, y = digits_nhwc.x_train[:N], digits_nhwc.y_train[:N]
    prune = Pruning(sparsity=0.5, granularity="channel", scope="layer", start=0.0, end=0.5)
    qat = QuantizationAware(start=0.6, freeze_bn=0.8, freeze_observers=0.9, keep_fake_quant=True)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[prune, qat])
    new = prune.pruned_model
    a, b = model.predict(x[:64], verbose=0), new.predict(x[:64], verbose=0)
    # both run as fake-quant int8 models (equal on the machine this was written on); a summation-order difference
    # on another CPU may move a few rounding steps (one int8 step of the logits is about 0.4% of their spread), and
    # a depthwise kernel sliced to the wrong channels moves them by about 6%
    spread = float(np.ptp(a))
    assert float(np.max(np.abs(a - b))) <= 0.02 * spread, (np.max(np.abs(a - b)), spread)
    assert float(np.mean(a.argmax(1) == b.argmax(1))) >= 0.95
