"""Shared fixtures: the bundled digits and small trained reference models (trained once per session)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from fitslim.data import Digits, digits


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``realdata`` tests need Fashion-MNIST: skip with the install hint when it is absent, unless
    ``FITSLIM_REQUIRE_REALDATA=1`` (CI sets it), where absent data is a failure, never a silent skip."""
    if item.get_closest_marker("realdata") is None:
        return
    from fitslim.data import FashionMNISTNotFound, find_fashion_mnist

    try:
        find_fashion_mnist()
        return
    except FashionMNISTNotFound as err:
        missing = str(err)
    if os.environ.get("FITSLIM_REQUIRE_REALDATA") == "1":
        pytest.fail(f"FITSLIM_REQUIRE_REALDATA=1 and {missing}", pytrace=False)
    pytest.skip(f"needs Fashion-MNIST: {missing}")


@pytest.fixture(scope="session")
def digits_nchw() -> Digits:
    return digits(size=8, layout="NCHW")


@pytest.fixture(scope="session")
def digits_nhwc() -> Digits:
    return digits(size=8, layout="NHWC")


@pytest.fixture(scope="session")
def trained_torch_digits(digits_nchw: Digits) -> Any:
    """The reference digits CNN trained for a few epochs with a plain torch loop (eval mode)."""
    torch = pytest.importorskip("torch", reason="torch not installed")
    from lightning_plugins.models import torch_model

    torch.manual_seed(0)
    model = torch_model("digits_cnn", width=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.from_numpy(digits_nchw.x_train), torch.from_numpy(digits_nchw.y_train)
    gen = torch.Generator().manual_seed(0)
    for _ in range(8):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(torch.from_numpy(digits_nchw.x_test)).argmax(1).numpy() == digits_nchw.y_test).mean()
    assert acc > 0.9, f"fixture model did not train (test accuracy {acc:.3f})"
    return model


@pytest.fixture(scope="session")
def trained_keras_digits(digits_nhwc: Digits) -> Any:
    """The Keras twin of the digits CNN trained for a few epochs with model.fit."""
    keras = pytest.importorskip("keras", reason="keras not installed")
    from keras_callbacks.reference import build_digits_classifier, evaluate_accuracy

    keras.utils.set_random_seed(0)
    model = build_digits_classifier(width=1.0, size=8)
    model.fit(digits_nhwc.x_train, digits_nhwc.y_train, batch_size=64, epochs=8, verbose=0)
    acc = evaluate_accuracy(model, digits_nhwc.x_test, digits_nhwc.y_test)
    assert acc > 0.9, f"fixture model did not train (test accuracy {acc:.3f})"
    return model


@pytest.fixture
def export_spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The keyword arguments the next ``exporters.export`` call received (it still runs), e.g. what an Export
    callback passed as ``calibration`` and ``samples``."""
    import importlib

    export_module = importlib.import_module("exporters.core.export")  # the package's `export` is the function
    seen: dict[str, Any] = {}
    real = export_module.export

    def spy(model: Any, *args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(export_module, "export", spy)
    return seen


def random_bn_stats(model: Any, seed: int = 0) -> Any:
    """Give every BatchNorm of a torch model non-trivial statistics, so BN folding is really exercised."""
    from lightning_plugins.models import randomize_batchnorm

    return randomize_batchnorm(model, seed)


np.set_printoptions(precision=4, suppress=True)
