"""The reference model twins: lazy imports, equal sizes, identical math given the same weights.

Weight-count rule (used everywhere below): a model's weights are its trainable parameters plus the
BatchNorm running statistics.
- torch: ``sum(p.numel() for p in model.parameters())`` plus every buffer except
  ``num_batches_tracked`` (BN ``running_mean`` and ``running_var``);
- keras: ``model.count_params()``, i.e. trainable + non-trainable weights (BN ``moving_mean`` and
  ``moving_variance`` are the non-trainable ones; dropout seed state is not a weight);
- spec: :meth:`num_weights` computes the same number without a framework.
Trainable torch parameters must also equal keras' trainable weights, buffers its non-trainable ones.

The Keras side runs on the TensorFlow backend: the ``keras_tf`` fixture sets ``KERAS_BACKEND`` before
keras is first imported (if another test imported keras first, its backend is used and the math must
still agree); ``test_twins_agree_on_every_keras_backend`` checks TensorFlow, PyTorch and JAX in
subprocesses.
"""

from __future__ import annotations

import doctest
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fitslim.models import MODEL_NAMES, mobilenet_v2_spec
from fitslim.models.spec import _make_divisible, digits_cnn_spec, normalize_input_size
from keras_callbacks.models import keras_model
from lightning_plugins.models import torch_model

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[2]
HEAVY = {"torch", "keras", "tensorflow", "jax", "tf_keras"}
REL_TOL = 1e-4


# ----------------------------------------------------------------------------- helpers


def _run_python(code: str, backend: str | None = None, timeout: float = 300) -> str:
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    if backend is not None:
        env["KERAS_BACKEND"] = backend
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=timeout
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def _torch_weight_counts(model: Any) -> tuple[int, int]:
    """(trainable parameters, BN running statistics) of a torch model; see the module docstring."""
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for n, b in model.named_buffers() if not n.endswith("num_batches_tracked"))
    return params, buffers


def _keras_weight_counts(model: Any) -> tuple[int, int]:
    """(trainable, non-trainable) weights of a keras model; see the module docstring."""
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    frozen = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    assert trainable + frozen == model.count_params()
    return trainable, frozen


def _randomize(model: Any, calibration: np.ndarray, seed: int = 0) -> Any:
    """Non-trivial weights everywhere the transfer must carry them, with realistic BN statistics.

    BN affines and the head get random values, then the running statistics are measured on
    ``calibration`` (as training would), so activations neither explode nor saturate: with
    uncalibrated statistics a deep MobileNetV2 saturates its ReLU6s and outputs a constant, which
    would make any equivalence check vacuous.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(0.5 + torch.rand(n, generator=generator))
                module.bias.copy_(0.2 * torch.randn(n, generator=generator))
                module.reset_running_stats()
                module.momentum = None  # cumulative average over the calibration pass
            elif isinstance(module, torch.nn.Linear):
                module.weight.copy_(0.1 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
        model.train()
        model(torch.from_numpy(calibration))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = 0.1
            assert not torch.allclose(module.running_var, torch.ones_like(module.running_var))
    return model.eval()


def _torch_out(model: Any, x_nchw: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x_nchw)).numpy()


def _keras_out(keras: Any, model: Any, x_nchw: np.ndarray) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(model(x_nchw.transpose(0, 2, 3, 1), training=False)))


def _input(name: str, height: int, width: int, batch: int = 3, seed: int = 1) -> np.ndarray:
    channels = 1 if name == "digits_cnn" else 3
    return np.random.default_rng(seed).standard_normal((batch, channels, height, width)).astype(np.float32)


@pytest.fixture(scope="module")
def keras_tf() -> Any:
    """keras on the TensorFlow backend (unless another test already imported keras)."""
    if "keras" not in sys.modules:
        previous = os.environ.get("KERAS_BACKEND")
        os.environ["KERAS_BACKEND"] = "tensorflow"
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        try:
            keras = pytest.importorskip("keras")
        finally:
            if previous is None:
                os.environ.pop("KERAS_BACKEND", None)
            else:
                os.environ["KERAS_BACKEND"] = previous
    else:
        keras = importlib.import_module("keras")
    return keras


# ----------------------------------------------------------------------------- imports and names


def test_models_package_imports_no_framework() -> None:
    code = (
        "import sys, json\n"
        "import fitslim.models, fitslim.models.spec\n"
        "from fitslim.models import MODEL_NAMES, digits_cnn_spec, mobilenet_v2_spec\n"
        "light = sorted({m.split('.')[0] for m in sys.modules})\n"
        "from lightning_plugins.models import torch_model\n"
        "torch_model('digits_cnn')\n"
        "after_torch = sorted({m.split('.')[0] for m in sys.modules})\n"
        "print(json.dumps([light, after_torch]))"
    )
    light, after_torch = json.loads(_run_python(code))
    assert not HEAVY & set(light), HEAVY & set(light)
    assert "torch" in after_torch  # the torch twin lives with the Lightning plugin set ...
    assert not {"keras", "tensorflow", "jax"} & set(after_torch)  # ... and pulls in torch only


@pytest.mark.parametrize(
    ("name", "home"),
    [
        ("torch_model", "lightning_plugins.models"),
        ("keras_model", "keras_callbacks.models"),
        ("copy_torch_to_keras", "keras_callbacks.models"),
    ],
)
def test_a_twin_imported_from_its_old_home_names_the_new_one(name: str, home: str) -> None:
    with pytest.raises(ImportError, match=rf"moved to {home}.{name}.*HINT: from {home} import {name}"):
        exec(f"from fitslim.models import {name}", {})


@pytest.mark.parametrize("build", [torch_model, keras_model])
def test_unknown_name_lists_known_names(build: Any) -> None:
    with pytest.raises(ValueError, match=r"name=.*'resnet50'.*digits_cnn, mobilenet_v2"):
        build("resnet50")
    assert MODEL_NAMES == ("digits_cnn", "mobilenet_v2")


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: digits_cnn_spec(width=0), "width"),
        (lambda: digits_cnn_spec(num_classes=0), "num_classes"),
        (lambda: digits_cnn_spec(in_channels=1.5), "in_channels"),  # type: ignore[arg-type]
        (lambda: mobilenet_v2_spec(width_multiplier=-1.0), "width_multiplier"),
        (lambda: mobilenet_v2_spec(dropout=1.0), "dropout"),
        (lambda: mobilenet_v2_spec(input_size=(0, 5)), "input_size"),
        (lambda: mobilenet_v2_spec(input_size=(96, 80, 3)), "input_size"),  # type: ignore[arg-type]
    ],
)
def test_spec_rejects_bad_arguments(call: Any, argument: str) -> None:
    with pytest.raises(ValueError, match=rf"^{argument}: got .*; pass"):
        call()


# ----------------------------------------------------------------------------- spec math


def test_make_divisible_matches_reference_code() -> None:
    # values from the MobileNet reference implementation's channel tables
    assert [_make_divisible(32 * a) for a in (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)] == [16, 16, 24, 32, 40, 48]
    assert _make_divisible(16 * 0.35) == 8
    assert _make_divisible(1280 * 1.4) == 1792
    assert _make_divisible(100, 8) == 104 and _make_divisible(9, 8) == 16  # never >10% below


def test_digits_widths() -> None:
    assert [(s.stem_channels, s.out_channels) for s in map(digits_cnn_spec, (0.5, 1.0, 2.0, 4.0))] == [
        (8, 16),
        (16, 32),
        (32, 64),
        (64, 128),
    ]


def test_mobilenet_v2_spec_is_the_standard_network() -> None:
    spec = mobilenet_v2_spec(width_multiplier=1.0, num_classes=1000, input_size=224)
    assert spec.stem_channels == 32 and spec.last_channels == 1280 and len(spec.blocks) == 17
    assert [b.out_channels for b in spec.blocks] == [16] + [24] * 2 + [32] * 3 + [64] * 4 + [96] * 3 + [160] * 3 + [320]
    assert [i for i, b in enumerate(spec.blocks) if b.stride == 2] == [1, 3, 6, 13]
    assert sum(b.use_residual for b in spec.blocks) == 10
    assert spec.feature_size() == (7, 7)
    # Keras Applications MobileNetV2(alpha=1.0): 3,538,984 total = 3,504,872 trainable + 34,112 BN stats
    assert spec.num_weights() == 3_538_984
    assert mobilenet_v2_spec(width_multiplier=1.4).last_channels == 1792
    assert mobilenet_v2_spec(input_size=(96, 80)).feature_size() == (3, 3)
    assert normalize_input_size((96, 80)) == (96, 80) and normalize_input_size(None) is None


# ----------------------------------------------------------------------------- torch twin


@pytest.mark.parametrize("width", [0.5, 1.0, 2.0, 4.0])
def test_torch_digits_weight_count_matches_spec(width: float) -> None:
    model = torch_model("digits_cnn", width=width)
    assert sum(_torch_weight_counts(model)) == model.spec.num_weights()


@pytest.mark.parametrize("alpha", [0.35, 1.0])
def test_torch_mobilenet_weight_count_matches_spec(alpha: float) -> None:
    model = torch_model("mobilenet_v2", width_multiplier=alpha, num_classes=10, input_size=96)
    assert sum(_torch_weight_counts(model)) == model.spec.num_weights()


def test_torch_mobilenet_matches_reference_parameter_count() -> None:
    # torchvision's mobilenet_v2() has 3,504,872 parameters; same architecture here
    params, buffers = _torch_weight_counts(torch_model("mobilenet_v2"))
    assert (params, buffers) == (3_504_872, 34_112)


def test_torch_submodule_names() -> None:
    names = dict(torch_model("mobilenet_v2", width_multiplier=0.35, num_classes=10).named_modules())
    for name in (
        "stem.conv",
        "blocks.0.dw_conv",
        "blocks.1.expand_conv",
        "blocks.16.project_bn",
        "last.conv",
    ):
        assert name in names
    assert "blocks.0.expand_conv" not in names  # expansion 1: no expand conv
    assert isinstance(names["blocks.1.dw_conv"], torch.nn.Conv2d)
    assert names["blocks.1.dw_conv"].stride == (2, 2) and names["blocks.1.dw_conv"].padding == (1, 1)
    assert isinstance(names["head.fc"], torch.nn.Linear)
    digits = dict(torch_model("digits_cnn").named_modules())
    assert {"stem.conv", "block.dw_conv", "block.pw_conv", "pool", "transition.conv", "head.fc"} <= set(digits)
    assert digits["block.dw_conv"].groups == 16


@pytest.mark.parametrize(
    ("name", "kwargs", "shape"),
    [
        ("digits_cnn", {}, (8, 8)),
        ("digits_cnn", {"width": 2.0}, (16, 16)),
        ("digits_cnn", {"width": 0.5}, (9, 7)),
        ("mobilenet_v2", {"width_multiplier": 0.35, "num_classes": 10}, (96, 80)),
    ],
)
def test_torch_output_shape_and_sensitivity(name: str, kwargs: dict[str, Any], shape: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = _randomize(torch_model(name, **kwargs), _input(name, *shape, batch=8, seed=0))
    a = _torch_out(model, _input(name, *shape, seed=1))
    b = _torch_out(model, _input(name, *shape, seed=2))
    assert a.shape == (3, 10) and np.isfinite(a).all()
    scale = np.abs(a).max()
    assert np.abs(a - b).max() > 1e-3 * scale  # other inputs, other outputs
    assert np.abs(a[0] - a[1]).max() > 1e-3 * scale  # not a constant function of the batch


def test_torch_init_is_deterministic() -> None:
    torch.manual_seed(123)
    first = torch_model("mobilenet_v2", width_multiplier=0.35, num_classes=10).state_dict()
    torch.manual_seed(123)
    second = torch_model("mobilenet_v2", width_multiplier=0.35, num_classes=10).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    torch.manual_seed(124)
    third = torch_model("mobilenet_v2", width_multiplier=0.35, num_classes=10).state_dict()
    assert not torch.equal(first["stem.conv.weight"], third["stem.conv.weight"])


@pytest.mark.parametrize("module", ["fitslim.models", "fitslim.models.spec", "lightning_plugins.models"])
def test_docstring_examples_without_keras(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


# ----------------------------------------------------------------------------- keras twin


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("digits_cnn", {"width": 0.5}),
        ("digits_cnn", {"width": 1.0}),
        ("digits_cnn", {"width": 2.0}),
        ("mobilenet_v2", {"width_multiplier": 0.35, "num_classes": 10, "input_size": 96}),
        ("mobilenet_v2", {"width_multiplier": 1.0, "num_classes": 10, "input_size": 160}),
    ],
)
def test_twins_have_equal_weight_counts(keras_tf: Any, name: str, kwargs: dict[str, Any]) -> None:
    t_model: Any = torch_model(name, **kwargs)
    k_model = keras_model(name, **kwargs)
    params, buffers = _torch_weight_counts(t_model)
    trainable, frozen = _keras_weight_counts(k_model)
    assert (params, buffers) == (trainable, frozen)
    assert params + buffers == k_model.count_params() == t_model.spec.num_weights()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "kwargs", "shape", "fixed"),
    [
        ("digits_cnn", {"width": 1.0}, (8, 8), True),
        ("digits_cnn", {"width": 2.0}, (16, 16), True),
        ("digits_cnn", {"width": 0.5}, (9, 7), False),
        ("mobilenet_v2", {"width_multiplier": 0.35, "num_classes": 10}, (96, 96), True),
        ("mobilenet_v2", {"width_multiplier": 0.35, "num_classes": 10}, (96, 80), True),
        ("mobilenet_v2", {"width_multiplier": 0.35, "num_classes": 10}, (97, 83), False),
    ],
)
def test_twins_compute_the_same_function(
    keras_tf: Any, name: str, kwargs: dict[str, Any], shape: tuple[int, int], fixed: bool
) -> None:
    from keras_callbacks.models import copy_torch_to_keras

    torch.manual_seed(0)
    t_model = _randomize(torch_model(name, **kwargs), _input(name, *shape, batch=8, seed=0))
    k_model = keras_model(name, input_size=shape if fixed else None, **kwargs)
    pairs = copy_torch_to_keras(t_model, k_model)
    assert len(pairs) == sum(1 for layer in k_model.layers if layer.weights)
    assert all(k == t.replace(".", "_") for t, k in pairs)

    x1, x2 = _input(name, *shape, seed=1), _input(name, *shape, seed=2)
    t1, k1 = _torch_out(t_model, x1), _keras_out(keras_tf, k_model, x1)
    assert t1.shape == k1.shape == (3, 10)
    scale = np.abs(t1).max()
    assert scale > 0.1  # meaningful magnitude, so the relative check below means something
    assert np.abs(t1 - k1).max() <= REL_TOL * scale, np.abs(t1 - k1).max() / scale

    t2, k2 = _torch_out(t_model, x2), _keras_out(keras_tf, k_model, x2)
    assert np.abs(t2 - k2).max() <= REL_TOL * np.abs(t2).max()
    assert np.abs(k1 - k2).max() > 1e-3 * scale  # sensitivity: other inputs, other outputs
    assert np.abs(k1[0] - k1[1]).max() > 1e-3 * scale


@pytest.mark.slow
def test_keras_layer_names_and_padding(keras_tf: Any) -> None:
    model = keras_model("mobilenet_v2", width_multiplier=0.35, num_classes=10, input_size=(96, 80))
    assert model.name == "mobilenet_v2"
    assert model.input_shape == (None, 96, 80, 3) and model.output_shape == (None, 10)
    layers = {layer.name: layer for layer in model.layers}
    assert layers["stem_pad"].__class__.__name__ == "ZeroPadding2D"
    assert layers["stem_conv"].padding == "valid" and tuple(layers["stem_conv"].strides) == (2, 2)
    assert layers["blocks_1_dw_conv"].padding == "valid" and "blocks_1_dw_pad" in layers
    assert layers["blocks_2_dw_conv"].padding == "same" and "blocks_2_dw_pad" not in layers
    assert "blocks_2_add" in layers and "blocks_1_add" not in layers
    bns = [layer for layer in model.layers if layer.__class__.__name__ == "BatchNormalization"]
    assert bns and all(bn.epsilon == 1e-5 and bn.momentum == 0.9 for bn in bns)
    # deterministic names: a second build names every layer the same way
    again = keras_model("mobilenet_v2", width_multiplier=0.35, num_classes=10, input_size=(96, 80))
    assert [layer.name for layer in again.layers] == list(layers)
    digits = keras_model("digits_cnn", input_size=16)
    assert digits.input_shape == (None, 16, 16, 1) and digits.output_shape == (None, 10)


@pytest.mark.slow
def test_transfer_rejects_mismatched_structures_and_writes_nothing(keras_tf: Any) -> None:
    from keras_callbacks.models import copy_torch_to_keras

    k_model = keras_model("digits_cnn", width=2.0)
    before = [w.copy() for w in k_model.get_weights()]
    with pytest.raises(ValueError, match=r"'stem\.conv'.*'stem_conv'.*shapes differ"):
        copy_torch_to_keras(torch_model("digits_cnn", width=1.0), k_model)
    assert all(np.array_equal(a, b) for a, b in zip(before, k_model.get_weights(), strict=True))
    with pytest.raises(ValueError, match=r"torch module 'block\.dw_conv' has no keras layer"):
        copy_torch_to_keras(torch_model("digits_cnn"), keras_model("mobilenet_v2", num_classes=10))


def test_keras_reference_classifier_can_train_with_the_lightning_adam(keras_tf: Any) -> None:
    """With ``epsilon=TORCH_ADAM_EPSILON`` the Keras reference classifier's Adam is the Lightning module's.

    Keras' own epsilon (1e-7, the default kept for existing users) trains a different model from the same
    recipe; the demo compares the two frameworks, so it trains both halves with this optimizer.
    """
    from types import SimpleNamespace

    pytest.importorskip("lightning_plugins.reference")
    from keras_callbacks.reference import TORCH_ADAM_EPSILON, build_digits_classifier
    from lightning_plugins.reference import DigitsClassifier

    module = DigitsClassifier(width=0.5, lr=3e-3)
    module._trainer = SimpleNamespace(max_epochs=2)  # configure_optimizers reads only max_epochs
    torch_adam = module.configure_optimizers()["optimizer"]
    assert isinstance(torch_adam, torch.optim.Adam)
    group = torch_adam.param_groups[0]
    keras_adam = build_digits_classifier(width=0.5, lr=3e-3, epsilon=TORCH_ADAM_EPSILON).optimizer
    assert type(keras_adam).__name__ == "Adam"
    assert float(keras_adam.learning_rate) == pytest.approx(group["lr"])
    assert (keras_adam.beta_1, keras_adam.beta_2) == pytest.approx(group["betas"])
    assert keras_adam.epsilon == pytest.approx(group["eps"], rel=1e-9)
    assert not keras_adam.amsgrad and not group["amsgrad"]
    assert not group["weight_decay"] and not keras_adam.weight_decay
    assert build_digits_classifier(width=0.5).optimizer.epsilon == pytest.approx(1e-7)  # Keras' default kept


@pytest.mark.slow
@pytest.mark.parametrize("module", ["keras_callbacks.models", "keras_callbacks.transfer"])
def test_docstring_examples_with_keras(keras_tf: Any, module: str) -> None:
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0


_BACKEND_CHECK = """
import json, numpy as np, torch, keras
from keras_callbacks.models import copy_torch_to_keras, keras_model
from lightning_plugins.models import torch_model
torch.manual_seed(0)
errors = {"backend": keras.backend.backend()}
for name, kwargs, shape in [("digits_cnn", {"width": 1.0}, (9, 7)),
                            ("mobilenet_v2", {"width_multiplier": 0.35, "num_classes": 10}, (45, 33))]:
    t = torch_model(name, **kwargs)
    channels = 1 if name == "digits_cnn" else 3
    x = np.random.default_rng(0).standard_normal((10, channels, *shape)).astype("float32")
    with torch.no_grad():
        for m in t.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.bias.normal_(0, 0.2)
                m.momentum = None
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 0.1)
        t(torch.from_numpy(x[2:]))  # calibrate BN statistics (train mode)
        t.eval()
        yt = t(torch.from_numpy(x[:2])).numpy()
    k = keras_model(name, input_size=None, **kwargs)
    copy_torch_to_keras(t, k)
    yk = np.asarray(keras.ops.convert_to_numpy(k(x[:2].transpose(0, 2, 3, 1), training=False)))
    scale = float(np.abs(yt).max())
    errors[name] = float(np.abs(yt - yk).max() / scale)
    errors[name + "_rows_differ"] = bool(np.abs(yk[0] - yk[1]).max() > 1e-3 * scale)
print(json.dumps(errors))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "torch", "jax"])
def test_twins_agree_on_every_keras_backend(backend: str) -> None:
    pytest.importorskip({"tensorflow": "tensorflow", "torch": "torch", "jax": "jax"}[backend])
    result = json.loads(_run_python(_BACKEND_CHECK, backend=backend))
    assert result["backend"] == backend
    assert result["digits_cnn"] <= REL_TOL and result["mobilenet_v2"] <= REL_TOL, result
    assert result["digits_cnn_rows_differ"] and result["mobilenet_v2_rows_differ"], result
