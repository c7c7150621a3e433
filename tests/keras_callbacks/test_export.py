"""Keras ``Export``: export at the end of ``model.fit`` from the data given to fit, failures lose nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="keras not installed")
pytest.importorskip("tf2onnx", reason="tf2onnx not installed")

from keras_callbacks import Export  # noqa: E402
from keras_callbacks.reference import build_digits_classifier  # noqa: E402

pytestmark = pytest.mark.slow


def test_export_at_train_end_takes_batches_from_fit(tmp_path: Path, digits_nhwc: Any) -> None:
    keras.utils.set_random_seed(0)
    model = build_digits_classifier(width=0.5)
    cb = Export(targets=["onnx"], directory=tmp_path, calibration_batches=2, batch_size=16)
    model.fit(digits_nhwc.x_train[:64], digits_nhwc.y_train[:64], batch_size=16, epochs=1, verbose=0, callbacks=[cb])
    assert cb.report is not None and cb.report.ok, cb.report
    r = cb.report["onnx"]
    assert r.samples == 32  # 2 batches of 16 from the arrays given to fit
    assert r.max_rel_error is not None and r.max_rel_error <= 1e-4 and r.top1_agreement == 1.0
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "report.md").is_file()


def test_export_from_a_tf_dataset_given_to_fit(tmp_path: Path, digits_nhwc: Any) -> None:
    import tensorflow as tf

    model = build_digits_classifier(width=0.5)
    ds = tf.data.Dataset.from_tensor_slices((digits_nhwc.x_train[:48], digits_nhwc.y_train[:48])).batch(16)
    cb = Export(targets=["onnx"], directory=tmp_path, calibration_batches=3)
    model.fit(ds, epochs=1, verbose=0, callbacks=[cb])
    assert cb.report is not None and cb.report["onnx"].ok and cb.report["onnx"].samples == 48


def test_failure_is_reported_and_weights_are_kept(
    tmp_path: Path, digits_nhwc: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import exporters.onnx_export as onnx_export

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("tf2onnx exploded")

    monkeypatch.setattr(onnx_export, "to_onnx", boom)
    model = build_digits_classifier(width=0.5)
    cb = Export(targets=["onnx", "tflite"], directory=tmp_path)
    model.fit(digits_nhwc.x_train[:32], digits_nhwc.y_train[:32], epochs=1, verbose=0, callbacks=[cb])
    weights = [w.copy() for w in model.get_weights()]
    assert cb.report is not None and [r.status for r in cb.report] == ["failed", "failed"]
    assert "tf2onnx exploded" in cb.report["onnx"].reason
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights(), strict=True))
    assert not (tmp_path / "model.onnx").exists()
    assert model.predict(digits_nhwc.x_test[:4], verbose=0).shape == (4, 10)


def test_constructor_errors() -> None:
    with pytest.raises(ValueError, match=r"Export\(targets=...\): unknown \['onnx2'\]"):
        Export(targets=["onnx2"])
    with pytest.raises(ValueError, match=r"Export\(precision=...\)"):
        Export(precision="bf16")
