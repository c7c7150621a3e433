"""Keras zoo: ``keras.applications`` families with ``weights=None`` at small inputs, plus user-style models.

BatchNormalization moving statistics are set from one batch of the case's inputs (momentum 0 for that
call), so random-weight activations stay in a data-like range. Heads give logits
(``classifier_activation=None``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from tests.zoo import ZooCase, image_batch

__all__ = ["CASES", "build"]


def _bn_stats(model: keras.Model, inputs: Callable[[int, int], Any]) -> keras.Model:
    bns = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    if bns:
        saved = [layer.momentum for layer in bns]
        for layer in bns:
            layer.momentum = 0.0
        model(inputs(16, 1000), training=True)
        for layer, momentum in zip(bns, saved, strict=True):
            layer.momentum = momentum
    return model


def _all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    out: list[keras.layers.Layer] = []
    for layer in model.layers:
        out.append(layer)
        if isinstance(layer, keras.Model):
            out.extend(_all_layers(layer))
    return out


def _app(name: str, size: int, **kwargs: Any) -> Callable[[], keras.Model]:
    def make() -> keras.Model:
        keras.utils.set_random_seed(0)
        return getattr(keras.applications, name)(
            weights=None, input_shape=(size, size, 3), classes=10, classifier_activation=None, **kwargs
        )

    return make


def _small(family: str) -> Callable[[], keras.Model]:
    """A small config of a ``keras.applications`` family, built with the family's own builder (the functions
    behind ``ResNet50``, ``DenseNet121``, ...: the same blocks, layer kinds and names, fewer and narrower) at 32 px.
    """

    def make() -> keras.Model:
        from keras.src.applications import convnext, densenet, efficientnet, efficientnet_v2, nasnet, resnet

        keras.utils.set_random_seed(0)
        common: dict[str, Any] = {
            "weights": None, "input_shape": (32, 32, 3), "classes": 10, "classifier_activation": None
        }  # fmt: skip
        if family == "resnet":

            def stack(x: Any) -> Any:
                x = resnet.stack_residual_blocks_v1(x, 16, 1, stride1=1, name="conv2")
                x = resnet.stack_residual_blocks_v1(x, 32, 1, name="conv3")
                return resnet.stack_residual_blocks_v1(x, 64, 1, name="conv4")

            return resnet.ResNet(stack, False, True, name="resnet_small", **common)
        if family == "densenet":
            return densenet.DenseNet([1, 2, 2, 1], name="densenet_small", **common)
        if family == "efficientnet":
            return efficientnet.EfficientNet(0.25, 0.1, 32, name="efficientnet_small", **common)
        if family == "efficientnet_v2":  # the B0 block table (the name picks it), one block per stage
            return efficientnet_v2.EfficientNetV2(0.25, 0.1, 32, name="efficientnetv2-b0", **common)
        if family == "convnext":
            return convnext.ConvNeXt([1, 1, 1, 1], [16, 32, 64, 128], default_size=32, name="convnext_small", **common)
        if family == "nasnet":
            return nasnet.NASNet(
                penultimate_filters=192, num_blocks=1, stem_block_filters=16, name="nasnet_small", **common
            )
        raise ValueError(f"no small config for {family!r}")

    return make


def _sequential() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(16, 3, padding="same", use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.SeparableConv2D(32, 3, strides=2, padding="same"),
            keras.layers.Activation("swish"),
            keras.layers.DepthwiseConv2D(3, padding="same"),
            keras.layers.Conv2D(32, 1, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dropout(0.1),
            keras.layers.Dense(10),
        ]
    )


class _Subclassed(keras.Model):
    """A user's subclassed model: layers in ``__init__``, a residual and a squeeze-excitation in ``call``."""

    def __init__(self) -> None:
        super().__init__(name="user_subclassed")  # the class name gives "__subclassed", not a valid TF scope name
        self.stem = keras.layers.Conv2D(16, 3, padding="same", activation="relu")
        self.conv = keras.layers.Conv2D(16, 3, padding="same")
        self.bn = keras.layers.BatchNormalization()
        self.se_reduce = keras.layers.Dense(4, activation="relu")
        self.se_expand = keras.layers.Dense(16, activation="sigmoid")
        self.pool = keras.layers.GlobalAveragePooling2D()
        self.head = keras.layers.Dense(10)

    def call(self, x: Any, training: bool | None = None) -> Any:
        x = self.stem(x)
        y = keras.ops.relu(self.bn(self.conv(x), training=training))
        s = self.se_expand(self.se_reduce(self.pool(y)))
        x = x + y * keras.ops.reshape(s, (-1, 1, 1, 16))
        return self.head(self.pool(x))


def _subclassed() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = _Subclassed()
    model(np.zeros((1, 32, 32, 3), np.float32))
    return model


def _case(
    name: str,
    family: str,
    make: Callable[[], keras.Model],
    size: int = 32,
    ci: bool = False,
    tags: tuple[str, ...] = (),
) -> ZooCase:
    inputs = image_batch((size, size, 3))

    def build() -> keras.Model:
        return _bn_stats(make(), inputs)

    return ZooCase(name, family, build, inputs, "vision", ci, tags)


# ci=True: the cases CI exports at fp32 and int8, one per family. Where a family's builder takes a config, CI runs
# a small config of it (``_small``); the full-size models (ResNet50 alone took 51 s for fp32 ONNX + int8 Q/DQ on a
# loaded 2-core machine) run under make zoo. Xception, InceptionV3 and VGG16 take no config: CI runs them as
# they are, at their smallest input.
_ALL = [
    _case("mobilenet", "mobilenet", _app("MobileNet", 32, alpha=0.25), ci=True),
    _case("mobilenet_v2", "mobilenet_v2", _app("MobileNetV2", 32, alpha=0.35), ci=True),
    _case(
        "mobilenet_v3_small",
        "mobilenet_v3",
        _app("MobileNetV3Small", 32, alpha=0.75, minimalistic=False),
        ci=True,
        tags=("se",),
    ),
    _case("mobilenet_v3_large", "mobilenet_v3", _app("MobileNetV3Large", 32, alpha=0.75), tags=("se",)),
    _case("resnet50", "resnet", _app("ResNet50", 32)),
    _case("resnet50_v2", "resnet", _app("ResNet50V2", 32)),
    _case("efficientnet_b0", "efficientnet", _app("EfficientNetB0", 32), tags=("se", "normalization")),
    _case("efficientnet_v2_b0", "efficientnet", _app("EfficientNetV2B0", 32), tags=("se", "rescaling")),
    _case("densenet121", "densenet", _app("DenseNet121", 32)),
    _case("convnext_tiny", "convnext", _app("ConvNeXtTiny", 32), tags=("layernorm",)),
    _case("xception", "xception", _app("Xception", 71), 71, ci=True, tags=("separable",)),
    _case("inception_v3", "inception", _app("InceptionV3", 75), 75, ci=True),
    _case("nasnet_mobile", "nasnet", _app("NASNetMobile", 32), tags=("separable",)),
    _case("vgg16", "vgg", _app("VGG16", 32), ci=True),
    _case("resnet_small", "resnet", _small("resnet"), ci=True),
    _case("efficientnet_small", "efficientnet", _small("efficientnet"), ci=True, tags=("se", "normalization")),
    _case("efficientnet_v2_small", "efficientnet", _small("efficientnet_v2"), tags=("se", "rescaling")),
    _case("densenet_small", "densenet", _small("densenet"), ci=True),
    _case("convnext_small", "convnext", _small("convnext"), ci=True, tags=("layernorm",)),
    _case("nasnet_small", "nasnet", _small("nasnet"), ci=True, tags=("separable",)),
    _case("user_sequential", "user_sequential", _sequential, ci=True, tags=("separable",)),
    _case("user_subclassed", "user_subclassed", _subclassed, ci=True, tags=("subclassed", "se")),
]

CASES: dict[str, ZooCase] = {c.name: c for c in _ALL}


def build(name: str) -> tuple[keras.Model, np.ndarray]:
    """The model of a case and one example batch (2 samples)."""
    case = CASES[name]
    return case.build(), case.inputs(2, 0)


if __name__ == "__main__":  # a quick look at the zoo: parameters and output spread
    import time

    for case in CASES.values():
        t0 = time.perf_counter()
        model, x = build(case.name)
        y = np.asarray(model(x, training=False))
        print(
            f"{case.name:20s} {model.count_params():>11,d} params  out {y.shape}  "
            f"finite {bool(np.isfinite(y).all())}  std {float(y.std()):.3f}  "
            f"{time.perf_counter() - t0:.1f}s  ci={case.ci}"
        )
