"""int8 judged on trained weights (Keras zoo): each case fine-tuned on Fashion-MNIST, then its int8 artifacts.

``make zoo`` (``FITSLIM_ZOO=full``) runs every case: a short fine-tune at the case's own input size
(:mod:`tests.zoo.trained`, NHWC) with a plain ``model.compile(AdamW)`` + ``model.fit``, then PTQ to every target at
int8 (``<target> int8 trained``: calibrated on training images after the fine-tune's, verified against the trained
model on test images), then ``QuantizationAware`` + ``Export`` at int8 in a short second ``model.fit`` of the
fine-tuned model (``qat <target> int8 trained``, verified against the fake-quant model on the same test images): the
ordinary workflow, a model fit before and then fit again with the callbacks. A mismatch here points at a defect, not
at random weights. ``make test`` runs none of it. The torch twin is tests/zoo/test_torch_trained_int8.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.zoo import LOCATED

keras = pytest.importorskip("keras")

from exporters import export  # noqa: E402
from keras_callbacks import Export, QuantizationAware  # noqa: E402
from tests.zoo.keras_zoo import CASES  # noqa: E402
from tests.zoo.trained import MEAN, STD, accuracy_floor, real_data, record_trained, trained_cases  # noqa: E402

pytestmark = [pytest.mark.zoo, pytest.mark.slow]

#: tflite is the TFLite converter on the Keras side (seconds a case), so every target runs
PTQ_TARGETS = ("onnx", "ncnn", "tflite", "tensorrt")
QAT_TARGETS = ("onnx", "ncnn", "tflite", "tensorrt")
#: the fine-tune: steps of BATCH training images (AdamW), then accuracy on TEST test images (as the torch twin)
STEPS, BATCH, LR, TEST = 60, 32, 2e-3, 300
#: cases whose fine-tune needs more than STEPS to be clearly trained: case -> steps. Measured (test top-1 on TEST):
#: user_sequential 21.0% after 60 steps (1 point over the floor), 51.3% after 200
MORE_STEPS: dict[str, int] = {"user_sequential": 200}
#: cases fine-tuned at a lower learning rate: VGG16 (no normalization layers) stayed at chance at LR (11.7% after 60
#: steps), 27.3% at 1e-4; more steps were not tried (277 s for 60 on 2 shared cores)
CASE_LR: dict[str, float] = {"vgg16": 1e-4}
#: keras.applications models whose BatchNormalization momentum (0.999 in MobileNetV2/V3, 0.99 in MobileNet) is
#: lowered to 0.9 for the fine-tune: at 0.999 the moving statistics move 6% of the way in 60 steps (45% at 0.99), so
#: the model in inference mode still normalizes with the build's statistics and stays near chance (keras.applications'
#: momentum 0.999 needs thousands of steps). The user's momentum is restored after the fine-tune, before QAT.
#: Measured (test top-1 after 60 steps, momentum as built -> 0.9): mobilenet_v2 11.7% -> 38.0%, mobilenet 17.0% ->
#: 30.7%
BN_MOMENTUM_09 = frozenset({"mobilenet_v2", "mobilenet"})
#: keras.applications models that normalize their own input (ConvNeXt's PreStem: ImageNet mean and std of 0..255
#: pixels) take pixels in 0..255 here instead of the normalized images: fed normalized images, the stem sees 1/58 of
#: their spread on a constant offset, and convnext_small stayed at chance (9.7% after 60 steps, 11.7% after 200; as
#: pixels: 77.3% after 60). Calibration and verification images get the same mapping.
PIXEL_INPUT = frozenset({"convnext_small", "convnext_tiny"})
#: int8: calibration on training images after the fine-tune's, verification on test images
CALIBRATION, SAMPLES = 64, 64
#: QAT: a short second fit from the fine-tuned weights, fake-quant on from the start
QAT_STEPS = 10
#: known limits of the trained int8 cells: (case, column) -> (status, reason pattern); every other cell must be ok
EXPECTED: dict[tuple[str, str], tuple[str, str]] = {
    # measured 2026-12-07 (docs/zoo-support.md): after QAT of the 45%-trained EfficientNet small config, the onnx and
    # Q/DQ (tensorrt) files agree with the fake-quant model on 25 of 26 decisive samples (96.2%, bound 97%; spread
    # error 0.20 / 0.12), the int8 error first large at the first squeeze-excitation's reduce conv (block1a_se_reduce,
    # SQNR 17.5 -> 12.3 dB); its ncnn and tflite int8 files pass (100% of 26)
    **{("efficientnet_small", f"qat {t} int8 trained"): ("mismatch", LOCATED) for t in ("onnx", "tensorrt")},
    # densenet_small's qat onnx cell (40 of 42 decisive at first) is ok since the onnx int8 exporter keeps float the
    # BatchNorm shift and ReLU between a float scale and the next layer after QAT (42 of 42, spread error 0.24)
    # measured 2026-12-07: MobileNet at alpha 0.25 (8-channel depthwise stages), fine-tuned to 31%, 21-22 decisive
    # samples: PTQ ncnn and Q/DQ 20 of 21 (spread error 0.39), int8 error built up over 66 layers (output SQNR 8 dB);
    # after QAT the onnx file 21 of 22 (first large at conv1, SQNR 2 dB) and the tflite file 20 of 22 (built up over
    # 66 layers, output SQNR 10 dB), while the Q/DQ and ncnn files from the same QuantSpec agree on 22 of 22
    **{
        ("mobilenet", c): ("mismatch", LOCATED)
        for c in ("ncnn int8 trained", "tensorrt int8 trained", "qat onnx int8 trained", "qat tflite int8 trained")
    },
}


def _batch_norms(model: Any) -> list[Any]:
    out = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            out.append(layer)
    return out


def _predict(model: Any, x: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [np.asarray(keras.ops.convert_to_numpy(model(x[i : i + 100], training=False))) for i in range(0, len(x), 100)]
    )


def images(name: str, split: str, count: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` Fashion-MNIST images of ``split`` as case ``name``'s NHWC input (0..255 pixels for
    :data:`PIXEL_INPUT`), with their labels."""
    x, y = real_data(CASES[name], split, count, layout="NHWC", offset=offset)
    if name in PIXEL_INPUT:
        x = ((x * STD + MEAN) * 255.0).astype(np.float32)
    return x, y


def fine_tune(name: str) -> tuple[Any, float, float, int]:
    """The case's model fine-tuned on Fashion-MNIST: ``(compiled model, test accuracy, seconds, steps)``."""
    case = CASES[name]
    steps = MORE_STEPS.get(name, STEPS)
    model = case.build()
    keras.utils.set_random_seed(0)
    bns = _batch_norms(model) if name in BN_MOMENTUM_09 else []
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.9
    model.compile(
        optimizer=keras.optimizers.AdamW(CASE_LR.get(name, LR)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = images(name, "train", steps * BATCH)
    t0 = time.perf_counter()
    try:
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    finally:
        for bn, momentum in zip(bns, saved, strict=True):
            bn.momentum = momentum
    xt, yt = images(name, "test", TEST)
    accuracy = float((_predict(model, xt).argmax(-1) == yt).mean())
    return model, accuracy, time.perf_counter() - t0, steps


#: the CI cases first (one per family), so a matrix cut short by its time budget covers them
FIRST = (
    "user_sequential", "resnet_small", "mobilenet_v2", "efficientnet_small", "convnext_small", "densenet_small",
    "vgg16", "mobilenet",
)  # fmt: skip


@pytest.mark.parametrize("name", trained_cases(list(CASES), FIRST))
def test_keras_zoo_trained_int8(name: str, tmp_path: Path, zoo_record: Callable[..., None]) -> None:
    case = CASES[name]
    model, accuracy, seconds, steps = fine_tune(name)
    zoo_record("keras", name, "fine-tune (Fashion-MNIST)", "ok" if accuracy >= accuracy_floor(case) else "mismatch",
               f"test top-1 {accuracy * 100:.1f}% on {TEST} ({steps} steps x {BATCH}, {seconds:.0f} s)")  # fmt: skip
    assert accuracy >= accuracy_floor(case), f"{name}: fine-tuned to {accuracy:.3f} only"
    calibration, _ = images(name, "train", CALIBRATION, offset=steps * BATCH)
    samples, _ = images(name, "test", SAMPLES, offset=TEST)
    problems = []
    report = export(model, list(PTQ_TARGETS), example_input=samples[:1], calibration=calibration, samples=samples,
                    precision="int8", directory=tmp_path / "ptq", latency=False)  # fmt: skip
    for row in report:
        problems.append(
            record_trained(zoo_record, EXPECTED, "keras", name, f"{row.target} int8 trained", row, accuracy)
        )

    # QAT from the fine-tuned weights in a second fit, then Export at int8 from the learned spec
    x, y = images(name, "train", QAT_STEPS * BATCH, offset=steps * BATCH)
    qat = QuantizationAware(start=0.0)
    exp = Export(targets=list(QAT_TARGETS), precision="int8", directory=tmp_path / "qat", calibration_batches=4,
                 batch_size=BATCH, verify_data=samples)  # fmt: skip
    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[qat, exp])
    assert qat.quant_spec is not None and exp.report is not None
    for row in exp.report:
        problems.append(
            record_trained(zoo_record, EXPECTED, "keras", name, f"qat {row.target} int8 trained", row, accuracy)
        )
    assert len(exp.report) == len(QAT_TARGETS) and len(report) == len(PTQ_TARGETS)
    problems = [p for p in problems if p]
    assert not problems, "\n".join(problems)
