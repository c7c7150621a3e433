"""The Keras half of :mod:`benchmarks.realdata`: the same steps and the same rows, with ``keras_callbacks``.

As a user of Keras would do it, for each model:

1. **Dense fp32.** A model built from library code with random initialization (no download):

   - ``resnet``: a user's functional ResNet-style CNN, the twin of the torch side's ``transformers.ResNetConfig``
     model (a 7x7 stride-2 stem without max-pool, then one basic residual block per stage, widths 16-32-64-128,
     strides 1-2-2-2, a 1x1 projection shortcut where the shape changes, global average pooling, a Dense head) on
     the 28x28x1 images;
   - ``mobilenet_v2``: ``keras.applications.MobileNetV2(weights=None, alpha=0.5, input_shape=(32, 32, 1),
     classes=10, classifier_activation=None)`` on the images resized to 32x32. Its BatchNormalization layers
     are built with momentum 0.999: trained from scratch for a few epochs their moving statistics stay near
     their initial values, so the model sits at chance in inference mode while its training accuracy rises.
     Every BatchNormalization's momentum is set to 0.9 after building it (saved with the model).

   ``model.compile(AdamW, cross-entropy on logits)`` with a warm-up + cosine learning rate
   (``keras.optimizers.schedules.CosineDecay`` with ``warmup_target``: 20% of the steps up to the peak, then
   down, the torch side's one-cycle shape), ``model.fit``, ``model.save`` to a ``.keras`` file keyed on the
   settings; later runs with the same settings ``keras.models.load_model`` it. It is exported fp32 to ONNX, ncnn
   and TFLite (LiteRT) with :func:`exporters.export`.
2. **Compressed.** For every fit, a fresh ``keras.models.load_model`` of the dense file, compiled again (AdamW,
   ``student_lr``), is fine-tuned in one ``model.fit`` with ``keras_callbacks.from_recipe(recipe(...),
   teacher=<another reload of the dense model>)``: channel pruning, QAT, distillation and the int8 ``Export``.
3. **Scored** with the torch side's :func:`benchmarks.realdata.score` (every artifact in its own runtime, on NCHW
   test images; the runners hand a Keras-made TFLite model NHWC) and timed with its ``_time``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.realdata_common import (
    INT8_TARGETS,
    ModelResult,
    Settings,
    _artifacts,
    _cache_key,
    _time,
    recipe,
    record_dense,
    score,
)

log = logging.getLogger("benchmarks.realdata")

__all__ = ["BN_MOMENTUM", "SIZES", "build_model", "count_params", "keras_model"]

#: input side per model: the ResNet-style CNN on the native 28x28, MobileNetV2 on 32x32 (its smallest input)
SIZES = {"resnet": 28, "mobilenet_v2": 32}
#: the BatchNormalization momentum of every model (keras.applications.MobileNetV2 builds 0.999)
BN_MOMENTUM = 0.9


def _resnet(quick: bool) -> Any:
    """A user's functional ResNet-style CNN: the torch side's ``ResNetConfig`` model, layer for layer."""
    import keras
    from keras import layers

    widths = [8, 16, 32, 64] if quick else [16, 32, 64, 128]

    def conv_bn(x: Any, filters: int, kernel: int, stride: int, name: str, relu: bool = True) -> Any:
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=name,
                          kernel_initializer="he_normal")(x)  # fmt: skip
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=1e-5, name=name + "_bn")(x)
        return layers.ReLU(name=name + "_relu")(x) if relu else x

    def basic_block(x: Any, filters: int, stride: int, name: str) -> Any:
        shortcut = x
        if stride != 1 or x.shape[-1] != filters:
            shortcut = conv_bn(x, filters, 1, stride, name + "_shortcut", relu=False)
        y = conv_bn(x, filters, 3, stride, name + "_conv1")
        y = conv_bn(y, filters, 3, 1, name + "_conv2", relu=False)
        return layers.ReLU(name=name + "_out")(layers.Add(name=name + "_add")([y, shortcut]))

    inputs = keras.Input((SIZES["resnet"], SIZES["resnet"], 1), name="pixels")
    x = conv_bn(inputs, widths[0], 7, 2, "stem")  # 14x14, no max-pool (as the torch model)
    for i, w in enumerate(widths):
        x = basic_block(x, w, 1 if i == 0 else 2, f"stage{i + 1}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(x), name="resnet_style")


def build_model(name: str, quick: bool) -> Any:
    """A Keras model from library code (random init) returning logits from NHWC pixels in [0, 1].

    Args:
        name: ``"resnet"`` (a functional ResNet-style CNN) or ``"mobilenet_v2"`` (``keras.applications``).
        quick: a narrow variant for smoke runs (ResNet widths 8-16-32-64, MobileNetV2 alpha 0.35).

    Raises:
        ValueError: an unknown ``name``.
    """
    import keras

    if name == "resnet":
        return _resnet(quick)
    if name == "mobilenet_v2":
        side = SIZES[name]
        model = keras.applications.MobileNetV2(
            input_shape=(side, side, 1), alpha=0.35 if quick else 0.5, weights=None, classes=10,
            classifier_activation=None,
        )  # fmt: skip
        for layer in model.layers:  # 0.999 leaves the moving statistics at their init after a short training
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = BN_MOMENTUM
        return model
    raise ValueError(f"models: unknown Keras model {name!r}; choose 'resnet' or 'mobilenet_v2'.")


def count_params(model: Any) -> int:
    """Weights and biases of the Conv, Dense and BatchNorm layers (no QAT ranges, no BN moving statistics).

    The torch side's :func:`benchmarks.realdata.count_params`, on Keras layers.
    """
    import keras

    kinds = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            total += sum(int(np.prod(w.shape)) for w in (layer.gamma, layer.beta) if w is not None)
        elif isinstance(layer, kinds):
            total += int(np.prod(layer.kernel.shape)) + (int(np.prod(layer.bias.shape)) if layer.use_bias else 0)
    return total


def _compile(model: Any, lr: float, steps: int) -> None:
    """AdamW, cross-entropy on logits, warm-up for 20% of ``steps`` to ``lr`` then cosine down (one-cycle shape)."""
    import keras

    warmup = max(1, int(0.2 * steps))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=lr / 25, decay_steps=max(1, steps - warmup), warmup_target=lr, warmup_steps=warmup,
        alpha=1e-4,
    )  # fmt: skip
    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=5e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def _fit(model: Any, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64], epochs: int, lr: float,
         s: Settings, seed: int, callbacks: list[Any]) -> float:  # fmt: skip
    """``model.fit`` as a user writes it; returns the seconds."""
    import keras

    keras.utils.set_random_seed(seed)
    _compile(model, lr, epochs * -(-len(x) // s.batch_size))
    t0 = time.perf_counter()
    model.fit(x, y, batch_size=s.batch_size, epochs=epochs, shuffle=True, callbacks=callbacks, verbose=0)
    return time.perf_counter() - t0


def accuracy(model: Any, x: npt.NDArray[np.float32], y: npt.NDArray[np.int64]) -> float:
    """Top-1 accuracy of a Keras model (inference mode) on NHWC images."""
    logits = np.asarray(model.predict(x, batch_size=500, verbose=0))
    return float((logits.reshape(len(logits), -1).argmax(1) == y).mean())


def _nchw(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))


def keras_model(name: str, s: Settings) -> ModelResult:
    """Dense (trained or reloaded), compressed over the seeds with and without the teacher, all scored.

    Args:
        name: ``"resnet"`` or ``"mobilenet_v2"``.
        s: the run's settings (the same fields as the torch side's).

    Raises:
        ValueError: an unknown ``name``.
        RuntimeError: an ``Export`` that wrote no report, or an int8 ONNX artifact that failed (the gain needs it).
    """
    import keras

    from fitslim.data import fashion_mnist
    from keras_callbacks import QuantizationAware, from_recipe
    from keras_callbacks.quantization import fake_quant_inference

    if name not in SIZES:
        raise ValueError(f"models: unknown Keras model {name!r}; choose 'resnet' or 'mobilenet_v2'.")
    size = SIZES[name]
    data = fashion_mnist(layout="NHWC", size=size)
    x_train, y_train = data.x_train, data.y_train
    if s.train_subset:
        x_train, y_train = x_train[: s.train_subset], y_train[: s.train_subset]
    x_test, y_test = data.x_test, data.y_test
    if s.test_subset:
        x_test, y_test = x_test[: s.test_subset], y_test[: s.test_subset]
    x_test_nchw = _nchw(x_test)  # the runners take NCHW (a Keras-made TFLite model gets NHWC from them)
    out = Path(s.out) / "keras" / name
    out.mkdir(parents=True, exist_ok=True)

    res = ModelResult("keras", name, "")
    keras.utils.set_random_seed(0)
    dense = build_model(name, s.quick)
    if name == "resnet":
        res.description = (
            "a functional Keras ResNet-style CNN (7x7 stride-2 stem, no max-pool, one basic block per stage, widths "
            f"{'8-16-32-64' if s.quick else '16-32-64-128'}, BatchNorm momentum {BN_MOMENTUM}), {size}x{size}x1 input"
        )
    else:
        res.description = (
            f"keras.applications.MobileNetV2(weights=None, alpha={0.35 if s.quick else 0.5}, classes=10, logits), "
            f"every BatchNormalization's momentum set from 0.999 to {BN_MOMENTUM} after building it (at 0.999 the "
            f"moving statistics stay near their init in a short training: chance accuracy in inference mode), "
            f"Fashion-MNIST resized to {size}x{size}x1"
        )
    res.description += "; AdamW, warm-up + cosine learning rate, model.fit, model.save, keras.models.load_model"

    # 1. dense: trained once, saved, reloaded by later runs (and for every compression fit)
    cache = Path(s.out) / "dense" / f"keras-{name}-{_cache_key('keras', name, s, size)}.keras"
    meta = cache.with_suffix(".json")
    if cache.is_file() and meta.is_file():
        res.dense_seconds, res.dense_cached = float(json.loads(meta.read_text(encoding="utf-8"))["seconds"]), True
        log.info("%s: dense Keras model reloaded from %s", name, cache)
    else:
        log.info("%s: training the dense fp32 Keras model (%d epochs, %d images)", name, s.epochs, len(x_train))
        res.dense_seconds = _fit(dense, x_train, y_train, s.epochs, s.lr, s, 0, [])
        cache.parent.mkdir(parents=True, exist_ok=True)
        dense.save(cache)
        meta.write_text(json.dumps({"seconds": res.dense_seconds}), encoding="utf-8")
    dense = keras.models.load_model(cache)
    acc = accuracy(dense, x_test, y_test)
    dense_runners = record_dense(res, dense, acc, count_params(dense), x_test, x_test_nchw, y_test, out, s)

    # 2. compressed: seed by seed, with and without the teacher; the first seed with the teacher exports all
    # targets (the headline artifacts), the other fits the int8 ONNX the gain is measured on
    res.seeds = list(range(s.seeds))
    n_student = s.student_subset or len(x_train)
    x_student, y_student = x_train[:n_student], y_train[:n_student]
    int8_runners: dict[str, Any] = {}
    for seed in res.seeds:
        for distil in (True, False):
            full = seed == res.seeds[0] and distil
            folder = out / f"int8-seed{seed}-{'kd' if distil else 'plain'}"
            teacher = keras.models.load_model(cache) if distil else None
            callbacks = from_recipe(recipe(INT8_TARGETS if full else ["onnx"], folder, distil), teacher=teacher)
            student = keras.models.load_model(cache)  # a fresh reload of the model trained before
            log.info("%s: compressing, seed %d, %s", name, seed, "with the teacher" if distil else "no teacher")
            seconds = _fit(student, x_student, y_student, s.student_epochs, s.student_lr, s, seed, callbacks)
            rep = callbacks[-1].report
            if rep is None:
                raise RuntimeError(f"{name}, seed {seed}: Export wrote no report (the fit ended before on_train_end?)")
            small = callbacks[0].pruned_model if callbacks[0].pruned_model is not None else student
            arts = _artifacts(rep)
            runners = score(arts, rep, x_test_nchw, y_test, s.threads)
            onnx_acc = arts["onnx"].accuracy
            qat = next(cb for cb in callbacks if isinstance(cb, QuantizationAware))
            with fake_quant_inference(small, qat.quant_spec):  # the fake-quant model QAT learned (as the torch side's)
                float_acc = accuracy(small, x_test, y_test)
            if onnx_acc is None:
                raise RuntimeError(f"{name}, seed {seed}: the int8 ONNX artifact failed: {arts['onnx'].reason}")
            (res.kd if distil else res.plain).append(onnx_acc)
            (res.kd_float if distil else res.plain_float).append(float_acc)
            log.info("%s: seed %d %s: int8 ONNX %.2f%%, fake-quant model %.2f%%", name, seed,
                     "kd" if distil else "plain", 100 * onnx_acc, 100 * float_acc)  # fmt: skip
            if full:
                res.int8, int8_runners = arts, runners
                res.student_params, res.student_accuracy, res.student_seconds = count_params(small), float_acc, seconds
                convs = [
                    layer for layer in small.layers
                    if isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.DepthwiseConv2D)
                ]  # fmt: skip
                odd = sum(1 for layer in convs if layer.filters % 8)
                res.notes.append(f"{odd} of {len(convs)} convolutions of the compressed model have output channels "
                                 "not a multiple of 8")  # fmt: skip
                res.notes += [f"int8 {t}: {a.status}: {a.reason}" for t, a in arts.items() if a.status != "ok"]
                res.notes += [
                    f"dense fp32 {t}: {a.status}: {a.reason}" for t, a in res.dense.items() if a.status != "ok"
                ]

    # 3. latency: every runner, interleaved
    pairs = [(res.dense[t], r) for t, r in dense_runners.items()] + [(res.int8[t], r) for t, r in int8_runners.items()]
    log.info("%s: timing %d artifacts", name, len(pairs))
    _time(pairs, x_test_nchw[:1], s)
    return res
