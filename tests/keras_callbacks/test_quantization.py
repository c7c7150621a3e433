"""Keras ``QuantizationAware``: constructor errors, fake-quant vs the NumPy reference, a fit producing a
QuantSpec, the model after fit with ``keep_fake_quant=True`` being the int8 model (until ``remove``; the default
gives the float model back: tests/keras_callbacks/test_hooks.py), int8 exports keeping the learned ranges,
``.keras`` files keeping the ranges, and exact resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="keras not installed")

from fitslim.int8 import absmax_scale  # noqa: E402
from fitslim.int8 import fake_quant as np_fake_quant  # noqa: E402
from fitslim.quantspec import QuantSpec  # noqa: E402
from keras_callbacks._hooks import installed  # noqa: E402
from keras_callbacks.quantization import (  # noqa: E402
    QuantizationAware,
    fake_quant,
    fake_quant_inference,
    float_model,
    folded_weights,
    load_model,
)
from keras_callbacks.reference import build_digits_classifier  # noqa: E402
from tests.exporters.int8_agreement import (  # noqa: E402
    MAX_SPREAD_ERROR,
    MIN_DECISIVE_TOP1,
    assert_int8_agrees,
    result_agreement_problems,
)

QUANTIZED = ("Dense", "Conv1D", "Conv2D", "DepthwiseConv2D", "SeparableConv2D")


def _predict(model: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))


def _patch_depth(layer: Any) -> int:
    """How many fake-quant ``call`` replacements are stacked on ``layer``: each one wraps the ``call`` it replaced."""
    depth, call = 0, layer.__dict__.get("call")
    while installed(call):
        depth += 1
        cells = [c.cell_contents for c in getattr(call, "__closure__", None) or ()]
        call = next((c for c in cells if installed(c)), None)
    return depth


def _ranges(model: Any) -> dict[str, float]:
    return {
        layer.name: float(keras.ops.convert_to_numpy(layer.__dict__["fitslim_input_range"]))
        for layer in model.layers
        if "fitslim_input_range" in layer.__dict__
    }


def _tflite_predict(content: bytes, x: np.ndarray) -> np.ndarray:
    litert = pytest.importorskip("ai_edge_litert.interpreter", reason="LiteRT not installed")
    interp = litert.Interpreter(model_content=content)
    interp.allocate_tensors()
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    preds = []
    for i in range(len(x)):
        interp.set_tensor(inp["index"], x[i : i + 1])
        interp.invoke()
        preds.append(np.array(interp.get_tensor(out["index"])[0]))
    return np.stack(preds)


# ------------------------------------------------------------------------------------------ constructor


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"start": 1.5}, r"QuantizationAware\(start=1.5\): .* HINT"),
        ({"start": True}, r"QuantizationAware\(start=True\)"),
        ({"freeze_bn": -0.1}, r"QuantizationAware\(freeze_bn=-0.1\)"),
        ({"start": 0.8, "freeze_observers": 0.5}, r"QuantizationAware\(freeze_observers=0.5\): is before start"),
        ({"weight_bits": 9}, r"QuantizationAware\(weight_bits=9\)"),
        ({"activation_bits": 8.0}, r"QuantizationAware\(activation_bits=8.0\)"),
        ({"per_channel": "yes"}, r"QuantizationAware\(per_channel='yes'\)"),
        ({"include": "head_fc"}, r"QuantizationAware\(include='head_fc'\)"),
        ({"exclude": "head_fc"}, r"QuantizationAware\(exclude='head_fc'\): must be a list of layer names or fnmatch"),
        ({"observer": "histogram"}, r"QuantizationAware\(observer='histogram'\): .*HINT: use observer='ema'"),
    ],
)
def test_constructor_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        QuantizationAware(**kwargs)


def test_defaults_mirror_lightning() -> None:
    cb = QuantizationAware()
    assert (cb.start, cb.freeze_observers, cb.freeze_bn) == (0.6, 0.9, 0.8)
    assert (cb.weight_bits, cb.activation_bits, cb.per_channel, cb.observer) == (8, 8, True, "ema")


def test_include_naming_no_layer_fails_before_the_first_step(digits_nhwc: Any) -> None:
    model = build_digits_classifier(width=0.5)
    before = [w.copy() for w in model.get_weights()]
    with pytest.raises(ValueError, match=r"QuantizationAware\(include='nope'\): matches no layer"):
        model.fit(
            digits_nhwc.x_train[:32],
            digits_nhwc.y_train[:32],
            epochs=1,
            verbose=0,
            callbacks=[QuantizationAware(include=["nope"])],
        )
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_include_and_exclude_are_fnmatch_patterns_as_on_lightning() -> None:
    model = build_digits_classifier(width=0.5)
    convs = [la.name for la in model.layers if type(la).__name__ in QUANTIZED and la.name.endswith("conv")]
    assert len(convs) >= 2
    chosen = QuantizationAware(include=["*conv"], exclude=["stem_*"])._selected(model)
    assert [la.name for la in chosen] == [n for n in convs if not n.startswith("stem_")]


def test_include_naming_a_layer_without_quantizer(digits_nhwc: Any) -> None:
    model = build_digits_classifier(width=0.5)
    with pytest.raises(ValueError, match=r"include='stem_bn'\): names a BatchNormalization layer"):
        model.fit(
            digits_nhwc.x_train[:32],
            digits_nhwc.y_train[:32],
            epochs=1,
            verbose=0,
            callbacks=[QuantizationAware(include=["stem_bn", "head_fc"])],
        )


# ------------------------------------------------------------------------------------------- core math


def test_fake_quant_per_tensor_equals_numpy_reference() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 5, 5, 3)).astype(np.float32) * 2.0
    amax = 3.0  # some values clip
    ours = keras.ops.convert_to_numpy(fake_quant(x, amax, bits=8))
    ref = np_fake_quant(x, np.float32(amax / 127), bits=8)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6)
    assert np.abs(ours).max() <= amax + 1e-6


def test_kernel_fake_quant_per_channel_equals_numpy_reference() -> None:
    """A Conv2D kernel (kh, kw, in, out): per-output-channel absmax scales, as int8.fake_quant on OIHW."""
    from keras_callbacks.quantization import _quant_kernel

    rng = np.random.default_rng(1)
    k = (rng.normal(size=(3, 3, 4, 6)) * rng.uniform(0.1, 2.0, size=6)).astype(np.float32)
    ours = keras.ops.convert_to_numpy(_quant_kernel(k, 8, True, depthwise=False)).transpose(3, 2, 0, 1)
    oihw = k.transpose(3, 2, 0, 1)
    ref = np_fake_quant(oihw, absmax_scale(oihw, axis=0), axis=0)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-6)
    # depthwise (kh, kw, C, m): channel c*m + j as exporters.source_weights orders it
    d = rng.normal(size=(3, 3, 4, 2)).astype(np.float32)
    ours_d = keras.ops.convert_to_numpy(_quant_kernel(d, 8, True, depthwise=True))
    w = d.transpose(2, 3, 0, 1).reshape(8, 1, 3, 3)
    ref_d = np_fake_quant(w, absmax_scale(w, axis=0), axis=0)
    np.testing.assert_allclose(ours_d.transpose(2, 3, 0, 1).reshape(8, 1, 3, 3), ref_d, rtol=0, atol=2e-6)


# ------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def qat_run(digits_nhwc: Any) -> tuple[Any, QuantizationAware, float]:
    """The digits CNN after 12 epochs with ``QuantizationAware(keep_fake_quant=True)``: the model is its fake-quant
    model."""
    keras.utils.set_random_seed(0)
    model = build_digits_classifier(width=1.0)
    n_weights = len(model.weights)
    qat = QuantizationAware(keep_fake_quant=True)
    model.fit(digits_nhwc.x_train, digits_nhwc.y_train, batch_size=64, epochs=12, verbose=0, callbacks=[qat])
    assert len(model.weights) == n_weights + 5  # one input range kept per quantized layer
    acc = float((_predict(model, digits_nhwc.x_test).argmax(1) == digits_nhwc.y_test).mean())
    return model, qat, acc


@pytest.mark.slow
def test_fit_produces_a_spec_covering_every_weighted_layer(qat_run: Any) -> None:
    model, qat, acc = qat_run
    spec = qat.quant_spec
    assert isinstance(spec, QuantSpec) and qat.result is not None and qat.result.spec is spec
    assert not [k for k in vars(model) if "fitslim" in k]  # the spec travels as an object, not on the model
    assert spec.source == "qat" and spec.framework == "keras"
    weighted = [layer.name for layer in model.layers if type(layer).__name__ in QUANTIZED]
    assert [layer.name for layer in spec] == weighted
    assert acc > 0.85, acc
    folded = folded_weights(model)
    stem = spec.layers[0]
    assert stem.name == "stem_conv" and stem.weight_shape == (16, 1, 3, 3)
    # the digits are in [0, 1]: the stem's learned input range is 1.0
    assert stem.input_scale == pytest.approx(1.0 / 127, rel=1e-3)
    for lq in spec:
        np.testing.assert_allclose(lq.weight_scale_array(), absmax_scale(folded[lq.name], axis=0), rtol=1e-6)
    # BN folding: the stem's scales differ from the unfolded kernel's
    raw = keras.ops.convert_to_numpy(model.get_layer("stem_conv").kernel).transpose(3, 2, 0, 1)
    assert not np.allclose(stem.weight_scale_array(), absmax_scale(raw, axis=0), rtol=1e-3)


@pytest.mark.slow
def test_model_after_fit_is_the_int8_model(qat_run: Any, digits_nhwc: Any) -> None:
    """evaluate/predict after fit agree with the int8 TFLite export; the float model alone does not."""
    pytest.importorskip("tensorflow", reason="tensorflow not installed")
    from keras_callbacks.quantization import tflite_int8

    model, qat, _ = qat_run
    x, y = digits_nhwc.x_test, digits_nhwc.y_test
    assert all(_patch_depth(model.get_layer(lq.name)) == 1 for lq in qat.quant_spec)
    evaluated = model.evaluate(x, y, batch_size=128, verbose=0, return_dict=True)["accuracy"]
    predicted = model.predict(x, batch_size=128, verbose=0)
    with fake_quant_inference(model, qat.quant_spec):
        reference = _predict(model, x)
    np.testing.assert_allclose(predicted, reference, rtol=1e-4, atol=1e-4)
    int8 = float(
        (_tflite_predict(tflite_int8(model, qat.quant_spec, digits_nhwc.x_train[:256]), x).argmax(1) == y).mean()
    )
    # measured: evaluate 0.914, TFLite int8 0.918; the float model without its learned clipping 0.643
    assert abs(evaluated - int8) <= 0.015, (evaluated, int8)
    with float_model(model):
        plain = float((model.predict(x, batch_size=128, verbose=0).argmax(1) == y).mean())
    assert plain < int8 - 0.1, plain
    assert float((model.predict(x, batch_size=128, verbose=0).argmax(1) == y).mean()) == pytest.approx(evaluated)


@pytest.mark.slow
def test_fake_quant_swaps_are_paired_on_the_quantized_model(qat_run: Any, digits_nhwc: Any) -> None:
    model, qat, _ = qat_run
    x = digits_nhwc.x_test[:64]
    calls = {layer.name: layer.__dict__.get("call") for layer in model.layers}
    quantized = _predict(model, x)
    with float_model(model):
        assert all("call" not in layer.__dict__ for layer in model.layers)
        plain = _predict(model, x)
    with fake_quant_inference(model, qat.quant_spec):  # replaces the model's own fake-quant, never stacks on it
        assert all(_patch_depth(model.get_layer(lq.name)) == 1 for lq in qat.quant_spec)
        fq = _predict(model, x)
    with fake_quant_inference(model, qat.quant_spec, clip_only=True):
        clipped = _predict(model, x)
    assert {layer.name: layer.__dict__.get("call") for layer in model.layers} == calls
    np.testing.assert_array_equal(quantized, _predict(model, x))
    np.testing.assert_allclose(fq, quantized, rtol=1e-5, atol=1e-5)
    assert not np.allclose(plain, fq, atol=1e-3)  # the float model really ran inside float_model
    assert not np.allclose(clipped, fq, atol=1e-6) and (clipped.argmax(1) == fq.argmax(1)).mean() >= 0.95


@pytest.mark.slow
def test_clip_only_conversion_graph_has_no_fake_quant_ops(qat_run: Any) -> None:
    """tflite_int8 converts inside clip_only: the model's own fake-quant must not be traced into that graph."""
    tf = pytest.importorskip("tensorflow", reason="tensorflow not installed")
    model, qat, _ = qat_run

    def op_types() -> list[str]:
        fn = tf.function(lambda x: model(x, training=False))
        graph = fn.get_concrete_function(tf.TensorSpec((None, 8, 8, 1), tf.float32)).graph
        return [op.type for op in graph.get_operations()]

    assert sum(t.startswith("FakeQuant") for t in op_types()) == 10  # the quantized model: inputs and kernels
    with fake_quant_inference(model, qat.quant_spec, clip_only=True):
        inside = op_types()
    assert not any(t.startswith("FakeQuant") for t in inside) and inside.count("Minimum") >= 5  # the clips


@pytest.mark.slow
def test_int8_qdq_and_ncnn_exports_follow_the_fake_quant_model(qat_run: Any, digits_nhwc: Any, tmp_path: Path) -> None:
    pytest.importorskip("tf2onnx", reason="tf2onnx not installed")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    from exporters import export

    model, qat, _ = qat_run
    x = digits_nhwc.x_test
    with fake_quant_inference(model, qat.quant_spec):
        fq = _predict(model, x)
    fq_top1 = fq.argmax(1)
    # the kept fake-quant model: export takes its float model and, explicitly, what the fit learned
    with float_model(model):
        report = export(model, ["ncnn", "tensorrt"], precision="int8", directory=tmp_path, samples=x,
                        example_input=x[:1], **qat.result.export_arguments())  # fmt: skip
    assert report["tensorrt"].ok, report
    assert "learned QuantSpec" in report["tensorrt"].scales
    # compared with the fake-quant outputs, not the float ones; top-1 >= 0.98 over the 269 digits was decided by a
    # few near-ties, which differ per CPU (issue 21): the shared rule (decisive samples, spread error) instead
    assert not result_agreement_problems(report["tensorrt"]), result_agreement_problems(report["tensorrt"])
    np.testing.assert_array_equal(_predict(model, x).argmax(1), fq_top1)  # still the int8 model afterwards
    sess = ort.InferenceSession(str(tmp_path / "model.int8.qdq.onnx"), providers=["CPUExecutionProvider"])
    nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    qdq = np.asarray(sess.run(None, {sess.get_inputs()[0].name: nchw})[0])
    # top-1 over all samples measured 0.985 / 0.989 (the Q/DQ graph also quantizes the residual Add's skip input),
    # decided by near-ties that differ per CPU (issue 21): the shared rule, which a garbled copy must fail
    assert_int8_agrees(fq, qdq)
    if report["ncnn"].ok:  # pnnx present
        assert "learned QuantSpec" in report["ncnn"].scales


@pytest.mark.slow
def test_tflite_int8_keeps_the_learned_input_ranges(qat_run: Any, digits_nhwc: Any) -> None:
    pytest.importorskip("tensorflow", reason="tensorflow not installed")
    litert = pytest.importorskip("ai_edge_litert.interpreter", reason="LiteRT not installed")
    from exporters.targets.tflite import kernel_summary
    from keras_callbacks.quantization import tflite_int8

    model, qat, _ = qat_run
    spec = qat.quant_spec
    content = tflite_int8(model, spec, digits_nhwc.x_train[:256])
    interp = litert.Interpreter(model_content=content)
    interp.allocate_tensors()
    assert (
        kernel_summary(interp, require_int8=True) == "int8 kernels: 3 CONV_2D, 1 DEPTHWISE_CONV_2D, 1 FULLY_CONNECTED"
    )
    ranges = []
    for op in interp._get_ops_details():
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            scale, zero = interp._get_tensor_details(int(op["inputs"][0]), 0)["quantization"]
            assert zero == -128  # every layer input here is non-negative: [0, range] on 255 steps
            ranges.append(scale * 255)
    assert ranges == pytest.approx([lq.input_scale * 127 for lq in spec], rel=1e-6)
    # the artifact predicts like the fake-quant model
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    x = digits_nhwc.x_test
    preds = []
    for i in range(len(x)):
        interp.set_tensor(inp["index"], x[i : i + 1])
        interp.invoke()
        preds.append(np.asarray(interp.get_tensor(out["index"])).reshape(-1))
    with fake_quant_inference(model, spec):
        fq = _predict(model, x)
    # top-1 >= 0.98 over all 269 (266 on an AVX2-only CPU) was decided by near-ties that differ per CPU (issue 21)
    assert_int8_agrees(fq, np.stack(preds))


@pytest.mark.slow
def test_deployed_form_with_folded_batchnorm_matches_the_training_fake_quant(qat_run: Any, digits_nhwc: Any) -> None:
    """Per-channel absmax fake-quant commutes with BN folding: the folded graph predicts like the trained one."""
    model, qat, _ = qat_run
    x = digits_nhwc.x_test
    with fake_quant_inference(model, qat.quant_spec):
        fq = _predict(model, x)
    with fake_quant_inference(model, qat.quant_spec, fold_bn=True):
        folded = _predict(model, x)
    assert all(_patch_depth(model.get_layer(lq.name)) == 1 for lq in qat.quant_spec)  # the model's own, back
    assert all("call" not in layer.__dict__ for layer in model.layers if type(layer).__name__ not in QUANTIZED)
    # folding changes float rounding, so an activation may land one fake-quant step over: near-ties may flip, which
    # ones depends on the CPU (issue 21); decisive samples may not (the shared rule, which a garbled copy fails)
    assert_int8_agrees(fq, folded)


@pytest.mark.slow
@pytest.mark.parametrize("observer", ["minmax", "percentile"])
def test_observers(observer: str, digits_nhwc: Any) -> None:
    keras.utils.set_random_seed(0)
    model = build_digits_classifier(width=0.5)
    qat = QuantizationAware(start=0.0, observer=observer)
    model.fit(digits_nhwc.x_train[:128], digits_nhwc.y_train[:128], batch_size=64, epochs=1, verbose=0, callbacks=[qat])
    assert qat.quant_spec is not None and qat.quant_spec.metadata["observer"] == observer
    stem = qat.quant_spec.layers[0].input_scale
    if observer == "minmax":  # running absmax of inputs in [0, 1]
        assert stem == pytest.approx(1.0 / 127, rel=1e-6)
    else:  # the 99.99th percentile clips the rare brightest pixels
        assert 0.5 / 127 < stem <= 1.0 / 127 + 1e-9


@pytest.mark.slow
def test_conv1d_and_separable_conv2d_layers() -> None:
    layers = keras.layers
    inputs = keras.Input((8, 8, 2))
    x = layers.SeparableConv2D(4, 3, padding="same", depth_multiplier=2, name="sep")(inputs)
    x = layers.BatchNormalization(name="sep_bn")(x)
    x = layers.ReLU()(x)
    x = layers.Reshape((64, 4))(x)
    x = layers.Conv1D(6, 3, name="c1d")(x)
    x = layers.GlobalAveragePooling1D()(x)
    model = keras.Model(inputs, layers.Dense(3, name="fc")(x))
    model.compile("adam", "mse")
    rng = np.random.default_rng(0)
    xs, ys = rng.normal(size=(64, 8, 8, 2)).astype("float32"), rng.normal(size=(64, 3)).astype("float32")
    qat = QuantizationAware(start=0.0)
    model.fit(xs, ys, batch_size=32, epochs=1, verbose=0, callbacks=[qat])
    spec = qat.quant_spec
    assert spec is not None
    got = [(lq.name, lq.kind, lq.weight_shape, lq.groups) for lq in spec]
    assert got == [
        ("sep", "conv2d", (4, 1, 3, 3), 2),  # depth multiplier 2: a grouped conv (groups = input channels)
        ("sep/pointwise", "conv2d", (4, 4, 1, 1), 1),
        ("c1d", "conv1d", (6, 4, 3), 1),
        ("fc", "linear", (3, 6), 1),
    ]
    assert all(lq.input_scale > 1e-4 for lq in spec)
    folded = folded_weights(model)
    np.testing.assert_allclose(spec.layers[1].weight_scale_array(), absmax_scale(folded["sep/pointwise"], axis=0))


def _small_qat_fit(digits_nhwc: Any, qat: QuantizationAware, epochs: int = 1) -> Any:
    keras.utils.set_random_seed(0)
    model = build_digits_classifier(width=0.5)
    model.fit(digits_nhwc.x_train[:256], digits_nhwc.y_train[:256], batch_size=64, epochs=epochs, verbose=0,
              callbacks=[qat])  # fmt: skip
    return model


@pytest.mark.slow
def test_second_fit_replaces_the_fake_quant_instead_of_stacking_it(digits_nhwc: Any) -> None:
    x, y = digits_nhwc.x_train[:256], digits_nhwc.y_train[:256]
    qat = QuantizationAware(start=0.0, freeze_observers=0.5, keep_fake_quant=True)
    model = _small_qat_fit(digits_nhwc, qat)
    n_weights, first = len(model.weights), _ranges(model)
    outputs, ranges = [], []
    second = QuantizationAware(start=0.0, keep_fake_quant=True)
    for callbacks in ([qat], [second], []):  # the same callback, a new one, none
        model.fit(x, y, batch_size=64, epochs=1, verbose=0, callbacks=callbacks)
        assert len(model.weights) == n_weights
        assert [_patch_depth(layer) for layer in model.layers if type(layer).__name__ in QUANTIZED] == [1] * 5
        assert "call" not in model.get_layer("stem_bn").__dict__  # BatchNorm back to its own call
        outputs.append(model.predict(x[:64], verbose=0))
        ranges.append(_ranges(model))
    assert qat.quant_spec is not None and [lq.name for lq in qat.quant_spec] == list(first)
    # each fit with a QuantizationAware runs its own schedule (fractions of that fit, not of the optimizer's steps
    # since the first fit): its observers update the kept ranges again; a plain fit leaves them as they are
    assert list(ranges[0]) == list(first) and ranges[0] != first and ranges[1] != ranges[0]
    assert ranges[2] == ranges[1]
    assert second.quant_spec is not None
    with fake_quant_inference(model, second.quant_spec):
        reference = _predict(model, x[:64])
    np.testing.assert_allclose(outputs[-1], reference, rtol=1e-4, atol=1e-4)
    assert not np.allclose(outputs[-2], outputs[-1], atol=1e-4)  # the plain third fit trained the quantized model
    assert np.isfinite(outputs[-1]).all()


@pytest.mark.parametrize(("schedule", "warned"), [("constant", True), ("cosine", False)])
def test_freezing_batchnorm_at_an_undecayed_rate_warns(
    schedule: str, warned: bool, digits_nhwc: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """BatchNorm on moving statistics under a rate still at its start can diverge (a DenseNet fell from 94% to
    13% in one epoch at a constant Adam 3e-3): the freeze says so, and stays quiet once the rate has decayed."""
    keras.utils.set_random_seed(0)
    model = build_digits_classifier(width=0.5)
    # 4 steps, BatchNorm frozen at step 2: a cosine rate over 3 steps is at 25% of its start by then
    rate = 1e-3 if schedule == "constant" else keras.optimizers.schedules.CosineDecay(1e-3, 3)
    model.compile(optimizer=keras.optimizers.Adam(rate), loss=keras.losses.SparseCategoricalCrossentropy(True))
    qat = QuantizationAware(start=0.0, freeze_observers=0.5, freeze_bn=0.5)
    with caplog.at_level("WARNING", logger="keras_callbacks.quantization"):
        model.fit(digits_nhwc.x_train[:256], digits_nhwc.y_train[:256], batch_size=64, epochs=1, verbose=0,
                  callbacks=[qat])  # fmt: skip
    assert qat.quant_spec is not None  # the fit ended normally
    messages = [r.getMessage() for r in caplog.records if "running statistics from step" in r.getMessage()]
    if warned:
        assert len(messages) == 1 and "step 2 (freeze_bn=0.5)" in messages[0]
        assert "100% of its highest in this fit" in messages[0]
        assert "CosineDecay" in messages[0] and "freeze_bn=1.0" in messages[0]
    else:
        assert messages == []


@pytest.mark.slow
def test_remove_gives_back_the_float_model(digits_nhwc: Any) -> None:
    keras.utils.set_random_seed(0)
    n_weights = len(build_digits_classifier(width=0.5).weights)
    model = _small_qat_fit(digits_nhwc, QuantizationAware(start=0.0, keep_fake_quant=True))
    x = digits_nhwc.x_test[:64]
    quantized = model.predict(x, verbose=0)
    with float_model(model):
        plain = model.predict(x, verbose=0)
    assert QuantizationAware.remove(model) is model
    assert len(model.weights) == n_weights and all("call" not in layer.__dict__ for layer in model.layers)
    np.testing.assert_allclose(model.predict(x, verbose=0), plain, rtol=1e-5, atol=1e-5)
    assert not np.allclose(plain, quantized, atol=1e-4)
    fresh = build_digits_classifier(width=0.5)
    fresh.set_weights(model.get_weights())  # the weight list is a plain model's again


@pytest.mark.slow
def test_saved_quantized_model_reloads_quantized(digits_nhwc: Any, tmp_path: Path) -> None:
    qat = QuantizationAware(start=0.0, keep_fake_quant=True)
    model = _small_qat_fit(digits_nhwc, qat)
    x = digits_nhwc.x_test[:64]
    path = tmp_path / "quantized.keras"
    model.save(path)
    with pytest.raises(ValueError, match=r"stem_conv.* expected 1 variables, but received 2"):
        keras.saving.load_model(path)  # a plain load does not know the ranges: use load_model
    reloaded = load_model(path)
    assert _ranges(reloaded) == _ranges(model)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    QuantizationAware.remove(model)
    plain = tmp_path / "plain.keras"
    model.save(plain)
    np.testing.assert_allclose(
        keras.saving.load_model(plain).predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5
    )


# -------------------------------------------------------------------------------------------- resume


_Callback: Any = keras.callbacks.Callback


class _Interrupt(_Callback):
    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if epoch == 1:
            raise RuntimeError("interrupted")


@pytest.mark.slow
def test_backup_and_restore_resume_equals_uninterrupted(digits_nhwc: Any, tmp_path: Path) -> None:
    x, y = digits_nhwc.x_train[:512], digits_nhwc.y_train[:512]

    def run(callbacks: list[Any]) -> tuple[Any, QuantizationAware]:
        keras.utils.set_random_seed(0)
        model = build_digits_classifier(width=0.5)
        qat = QuantizationAware(start=0.25, freeze_observers=0.75, freeze_bn=0.6)
        model.fit(x, y, batch_size=64, epochs=4, shuffle=False, verbose=0, callbacks=[qat, *callbacks])
        return model, qat

    full, qat_full = run([])
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        run([backup, _Interrupt()])
    resumed, qat_resumed = run([keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))])
    for a, b in zip(full.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert qat_full.quant_spec is not None and qat_resumed.quant_spec is not None
    for la, lb in zip(qat_full.quant_spec, qat_resumed.quant_spec, strict=True):
        assert la.input_scale == pytest.approx(lb.input_scale, rel=1e-5)
        np.testing.assert_allclose(la.weight_scales, lb.weight_scales, rtol=1e-5)


@pytest.mark.slow
def test_keras_file_saved_mid_training_resumes_from_its_ranges(digits_nhwc: Any, tmp_path: Path) -> None:
    """A ModelCheckpoint ``.keras`` file saved after fake-quant started reloads with its ranges; the resumed
    fit continues from them and ends like an uninterrupted one."""
    x, y = digits_nhwc.x_train[:512], digits_nhwc.y_train[:512]
    fit = {"batch_size": 64, "epochs": 4, "shuffle": False, "verbose": 0}

    def qat() -> QuantizationAware:
        return QuantizationAware(start=0.25, freeze_observers=0.75, freeze_bn=0.6)

    keras.utils.set_random_seed(0)
    full, qat_full = build_digits_classifier(width=0.5), qat()
    full.fit(x, y, callbacks=[qat_full], **fit)

    path = tmp_path / "epoch{epoch}.keras"
    saved: dict[str, float] = {}

    class Record(_Callback):  # after ModelCheckpoint: the ranges as the epoch-2 file holds them, then stop
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if epoch == 1:
                saved.update(_ranges(self.model))
                self.model.stop_training = True

    keras.utils.set_random_seed(0)
    checkpoint = keras.callbacks.ModelCheckpoint(str(path), save_weights_only=False)
    build_digits_classifier(width=0.5).fit(x, y, callbacks=[qat(), checkpoint, Record()], **fit)
    reloaded = load_model(tmp_path / "epoch2.keras")
    assert len(saved) == 5 and all(v > 0 for v in saved.values())  # fake-quant started in epoch 1
    assert _ranges(reloaded) == saved
    assert int(keras.ops.convert_to_numpy(reloaded.optimizer.iterations)) == 16
    qat_resumed = qat()
    reloaded.fit(x, y, initial_epoch=2, callbacks=[qat_resumed], **fit)
    assert qat_full.quant_spec is not None and qat_resumed.quant_spec is not None
    assert [lq.name for lq in qat_resumed.quant_spec] == [lq.name for lq in qat_full.quant_spec]
    for la, lb in zip(qat_full.quant_spec, qat_resumed.quant_spec, strict=True):
        assert la.input_scale == pytest.approx(lb.input_scale, rel=1e-5), la.name
        np.testing.assert_allclose(la.weight_scales, lb.weight_scales, rtol=1e-4)
    np.testing.assert_allclose(reloaded.predict(x[:64], verbose=0), full.predict(x[:64], verbose=0), atol=1e-4)


# ------------------------------------------------------------------------------------ other backends

_BACKEND_SCRIPT = """
import json
import keras
from fitslim.data import digits
from keras_callbacks.reference import build_digits_classifier
import numpy as np
from keras_callbacks.quantization import QuantizationAware, fake_quant_inference

d = digits(size=8, layout="NHWC")
keras.utils.set_random_seed(0)
model = build_digits_classifier()
n_weights = len(model.weights)
qat = QuantizationAware(start=0.5, keep_fake_quant=True)
model.fit(d.x_train[:256], d.y_train[:256], batch_size=64, epochs=2, verbose=0, callbacks=[qat])
spec = qat.quant_spec
x = d.x_test[:64]
predicted = model.predict(x, verbose=0)
with fake_quant_inference(model, spec):
    reference = keras.ops.convert_to_numpy(model(x, training=False))
quantized = len(model.weights) == n_weights + 5 and sum("call" in l.__dict__ for l in model.layers) == 5
QuantizationAware.remove(model)
plain = model.predict(x, verbose=0)
print("RESULT " + json.dumps({
    "backend": keras.backend.backend(),
    "layers": [lq.name for lq in spec],
    "input_scales": [lq.input_scale for lq in spec],
    "quantized": quantized,
    "predict_vs_fake_quant": float(np.abs(predicted - reference).max()),
    "float_vs_fake_quant": float(np.abs(plain - reference).max()),
    "predict_rows_as_fake_quant": float((np.abs(predicted - reference).max(1) <= 1e-4).mean()),
    "float_rows_as_fake_quant": float((np.abs(plain - reference).max(1) <= 1e-4).mean()),
    "restored": len(model.weights) == n_weights and all("call" not in l.__dict__ for l in model.layers),
}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_qat_on_other_backends(backend: str, tmp_path: Path) -> None:
    import importlib.util
    import json
    import os
    import subprocess
    import sys

    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} not installed")
    root = Path(__file__).resolve().parents[2]
    script = tmp_path / "qat_backend.py"
    script.write_text(_BACKEND_SCRIPT)
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, str(script)], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    r = json.loads(lines[-1][len("RESULT ") :])
    assert r["backend"] == backend and r["quantized"] is True and r["restored"] is True
    # after fit the model is the int8 model: predict (compiled) gives the eager fake-quant run's outputs, where the
    # float model's differ; a value within float rounding of a .5 boundary may take the other int8 level in a few
    # rows (XLA's fusions differ per CPU: 2 of 64 rows off by up to 1.3e-3 on an AVX2-only one)
    assert r["predict_rows_as_fake_quant"] >= 0.9 and r["float_rows_as_fake_quant"] <= 0.1, r
    assert r["layers"] == ["stem_conv", "block_dw_conv", "block_pw_conv", "transition_conv", "head_fc"]
    assert r["input_scales"][0] == pytest.approx(1.0 / 127, rel=1e-3)  # digits in [0, 1]
    assert all(s > 1e-4 for s in r["input_scales"])


# ---------------------------------------------------------------------------------- with Export in fit


#: spread-error bound for the int8 exports of the 2-epoch QAT fits below: 0.111 measured, about 2x margin
SPREAD_2_EPOCHS = 0.25


@pytest.mark.slow
def test_export_callback_uses_the_learned_spec(digits_nhwc: Any, tmp_path: Path) -> None:
    pytest.importorskip("tf2onnx", reason="tf2onnx not installed")
    from keras_callbacks.export import Export

    keras.utils.set_random_seed(0)
    model = build_digits_classifier(width=0.5)
    qat = QuantizationAware(start=0.5)
    export = Export(targets=["tensorrt", "tflite"], precision="int8", directory=tmp_path, calibration_batches=4)
    model.fit(
        digits_nhwc.x_train[:256],
        digits_nhwc.y_train[:256],
        batch_size=64,
        epochs=2,
        verbose=0,
        callbacks=[qat, export],
    )
    report = export.report
    assert report is not None and report.ok, report
    assert report["tensorrt"].scales.startswith("learned QuantSpec (5 layers)")
    # the TFLite artifact keeps the learned ranges (the callback supplies the converter), not re-calibrated
    assert report["tflite"].scales.startswith("learned: each quantized layer's input clipped"), report["tflite"].scales
    # both are compared with the fake-quant model the QAT trained, on 4 batches of 32 from the data given to fit
    # top-1 >= 0.97 over all 128 was decided by near-ties that differ per CPU (issue 21): the shared rule instead,
    # with a wider spread bound: this 2-epoch model's outputs vary little from input to input, so the same int8
    # error is a larger share of their spread (AMD EPYC AVX2: TensorRT Q/DQ 0.111, 128 of 128 decisive agree)
    for r in report:
        assert r.samples == 128 and not result_agreement_problems(r, SPREAD_2_EPOCHS), (r.target, r)


# -------------------------------------------------------------------------------------- distributed

_MIRRORED_SCRIPT = """
import json
import os

os.environ["KERAS_BACKEND"] = "tensorflow"
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from fitslim.data import digits
from keras_callbacks.reference import build_digits_classifier
from keras_callbacks.quantization import QuantizationAware

d = digits(size=8, layout="NHWC")
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
keras.utils.set_random_seed(0)
with strategy.scope():
    model = build_digits_classifier(width=0.5)
seen = {}


class Probe(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        for layer in self.model.layers:
            v = layer.__dict__.get("fitslim_input_range")
            if v is not None:
                seen[layer.name] = [float(x.numpy()) for x in v.value.values]


qat = QuantizationAware(start=0.25)
model.fit(d.x_train[:512], d.y_train[:512], batch_size=64, epochs=2, verbose=0, callbacks=[qat, Probe()])
print("RESULT " + json.dumps({
    "replicas": strategy.num_replicas_in_sync,
    "seen": seen,
    "spec": {lq.name: lq.input_scale for lq in qat.quant_spec},
}))
"""


@pytest.mark.slow
def test_mirrored_strategy_keeps_identical_ranges_on_both_replicas(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    script = tmp_path / "qat_mirrored.py"
    script.write_text(_MIRRORED_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(root), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, str(script)], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    r = json.loads(lines[-1][len("RESULT ") :])
    assert r["replicas"] == 2
    assert sorted(r["seen"]) == sorted(r["spec"])
    for name, values in r["seen"].items():
        assert len(values) == 2 and values[0] == values[1] > 0, (name, values)
        assert r["spec"][name] == pytest.approx(values[0] / 127, rel=1e-6)


@pytest.mark.slow
def test_channel_pruning_then_qat_exports_the_smaller_int8_model(digits_nhwc: Any, tmp_path: Path) -> None:
    """Pruning(channel) rebuilds a smaller model at fit end: the spec, the fake-quant and the exports follow it."""
    from keras_callbacks import Export, Pruning

    d = digits_nhwc
    keras.utils.set_random_seed(0)
    model = build_digits_classifier()
    prune = Pruning(sparsity=0.5, granularity="channel", end=0.4)
    qat = QuantizationAware(start=0.5, freeze_bn=0.7, freeze_observers=0.8, keep_fake_quant=True)
    export = Export(targets=["ncnn", "tensorrt"], precision="int8", directory=tmp_path, calibration_batches=2)
    model.fit(d.x_train, d.y_train, batch_size=64, epochs=2, verbose=0, callbacks=[prune, qat, export])
    small = prune.pruned_model
    assert small is not None and small.count_params() < 0.8 * model.count_params()
    spec = qat.quant_spec
    assert spec is not None
    kernels = folded_weights(small)
    for lq in spec:  # the spec describes the smaller model, layer by layer
        assert tuple(lq.weight_shape) == kernels[lq.name].shape, lq.name
    assert any(tuple(lq.weight_shape) != folded_weights(model)[lq.name].shape for lq in spec)
    # the smaller model is the int8 model too: it predicts what the spec's fake-quant predicts
    got = _predict(small, d.x_test)
    with fake_quant_inference(small, spec):
        want = _predict(small, d.x_test)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with float_model(small):
        assert not np.allclose(_predict(small, d.x_test), want, atol=1e-4)
    report = export.report
    assert report is not None and report.ok, report
    for target in ("ncnn", "tensorrt"):
        # (top-1 >= 0.97 over all samples was decided by near-ties that differ per CPU, issue 21)
        row = report[target]
        assert "learned QuantSpec" in row.scales and row.spread_error is not None, report
        assert row.spread_error < MAX_SPREAD_ERROR, (target, row.spread_error)
        assert row.decisive_top1 is None or row.decisive_top1 >= MIN_DECISIVE_TOP1, (target, row.decisive_top1)


# -- residual Adds after QAT: the int8 Add reads what the fake-quant model adds ------------------------------


def _residual_net() -> Any:
    """conv-BN-ReLU, then a block whose skip input is also the next conv's input (the Add reuses its Q/DQ)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    t = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Conv2D(8, 3, padding="same")(inputs)))
    y = keras.layers.BatchNormalization()(keras.layers.Conv2D(8, 3, padding="same", name="block_conv")(t))
    x = keras.layers.ReLU()(keras.layers.Add(name="residual")([t, y]))
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(10, name="head")(x))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=loss)
    return model


class _ClipRange(_Callback):
    """After the last epoch, before the spec is built: ``block_conv``'s learned range covers a quarter of its input."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        var = self.model.get_layer("block_conv").__dict__["fitslim_input_range"]
        var.assign(var * 0.25)


def test_int8_residual_add_follows_the_fake_quant_model_not_the_clipped_range(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
    from keras_callbacks import Export

    model = _residual_net()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 12, 12, 3)).astype(np.float32), np.arange(64) % 10
    qat = QuantizationAware(start=0.0)
    export = Export(targets=["tensorrt"], precision="int8", directory=tmp_path, calibration_batches=4, batch_size=16)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[qat, _ClipRange(), export])
    assert export.report is not None
    (row,) = [r for r in export.report if r.target == "tensorrt"]
    # the fake-quant model clips block_conv's input to its learned range but adds the unclipped skip tensor; the
    # int8 Add must not clip it to that range (a reused scale would): it gets a scale measured on the Q/DQ graph
    assert row.status == "ok", row.reason
    assert "measured on calibration data" in " ".join(row.notes), row.notes
    assert row.decisive_top1 is not None and row.decisive_top1 >= 0.97
