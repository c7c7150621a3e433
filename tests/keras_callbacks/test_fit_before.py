"""Keras callbacks on a model that was trained before (issue 25): fit once with a plain ``fit``, then (1) fit
again with the callbacks, (2) saved to ``.keras`` and reloaded first, (3) reloaded and compiled again with a new
optimizer first; on the TensorFlow backend in this process, on PyTorch and JAX in a subprocess each
(``backend_checks.check_fit_before``). Channel pruning, QAT and distillation run together as the README's recipe
(int8 Export on path 1) on every path and backend; unstructured pruning on its own, on every path on TensorFlow and
on path 1 on the others. The PyTorch and JAX subprocesses start together with the module's first test and run while
the TensorFlow checks run here (each is mostly one busy thread: imports, tracing, a tiny model), so the file's wall
time is about the longest of the three instead of their sum.

The plain fit before takes more optimizer steps than the whole callback fit, so a schedule keyed on
``optimizer.iterations`` (what the callbacks used) finds every phase over at the first batch: QAT observers that
never run and a spec that fails after the whole fit, pruning masks that are never computed. Also: the failure of
observers that do not run comes at the end of the first epoch with them on, and the end-of-fit error says why.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

keras = pytest.importorskip("keras", reason="keras not installed")

from keras_callbacks.quantization import QuantizationAware  # noqa: E402
from keras_callbacks.reference import build_digits_classifier  # noqa: E402

CHECKS = Path(__file__).with_name("backend_checks.py")
ROOT = Path(__file__).resolve().parents[2]
PATHS = ("fit", "reloaded", "recompiled")
#: the Keras backends checked in a subprocess each (``backend_checks.py fit_before``)
OTHER_BACKENDS = ("torch", "jax")
#: seconds a subprocess may take (a busy shared 2-core machine, both running at once)
SUBPROCESS_TIMEOUT = 900

#: ``qat/phase`` after each of the callback fit's 16 steps with start=0.5, freeze_bn=0.8, freeze_observers=0.9:
#: float for steps 0-7, fake-quant with observers from step 8, observers frozen from step round(0.9 * 16) = 14
PHASES = [0.0] * 8 + [2.0] * 6 + [3.0] * 2
LAYERS = ["stem_conv", "block_dw_conv", "block_pw_conv", "transition_conv", "head_fc"]


def _checks() -> Any:
    sys.path.insert(0, str(CHECKS.parent))
    import backend_checks

    return backend_checks


def _assert_recipe(r: dict[str, Any], backend: str, path: str) -> None:
    """Pruning(channel) + QuantizationAware + Distillation (+ int8 Export on the ``fit`` path) on a model fit before."""
    assert r["backend"] == backend and r["error"] is None, r.get("error")
    # QAT ran its whole schedule inside this fit and observed every layer
    assert r["phases"] == PHASES, r["phases"]
    assert r["layers"] == LAYERS
    assert r["input_scales"][0] == pytest.approx(1.0 / 127, rel=1e-3)  # digits in [0, 1]
    assert all(s > 1e-4 for s in r["input_scales"]), r["input_scales"]
    # after fit the (smaller) model is the int8 model: predict gives the eager fake-quant outputs (a value within
    # float rounding of a .5 boundary may take the other level in a few rows on some CPUs)
    assert r["predict_rows_as_fake_quant"] >= 0.9, r
    # channel pruning reached its target on the masks, held them after every step, and removed the channels
    assert r["zeros_after_every_step"] and r["channel_sparsity"] == pytest.approx(0.5)
    assert r["params"][1] < 0.5 * r["params"][0], r["params"]
    # the distillation term is in the loss the fit minimized: loss = 0.4 * task + 0.6 * kd, not the plain CE
    h = r["history"]
    for loss, task, kd, combined in zip(h["loss"], h["task_loss"], h["kd_loss"], h["combined_loss"], strict=True):
        assert kd > 0 and combined == pytest.approx(loss, rel=1e-4)
        assert loss == pytest.approx(0.4 * task + 0.6 * kd, rel=1e-3, abs=1e-5)
        assert abs(loss - task) > 0.05 * task, (loss, task)
    assert r["distillation_restored"]
    if backend == "jax" or path != "fit":  # no int8 target runs a JAX-backend model here (ONNX needs jax2onnx)
        assert "export" not in r
        return
    assert r["export"] and all(e["ok"] for e in r["export"]), r["export"]
    assert all(e["scales"].startswith("learned") for e in r["export"]), r["export"]  # the QAT spec, not a PTQ one


def _assert_unstructured(r: dict[str, Any], backend: str) -> None:
    """Unstructured Pruning(0.5, end=0.5) on a model fit before: the schedule ran from this fit's start."""
    assert r["backend"] == backend
    assert r["zeros_after_every_step"]
    assert r["mask_sparsity"] == pytest.approx(0.5, abs=1e-3) and r["zero_fraction"] >= r["mask_sparsity"]
    assert r["logged_sparsity"][0] < 0.5 and r["logged_sparsity"][-1] == pytest.approx(0.5, abs=1e-3)


@pytest.fixture(scope="module")
def other_backends(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, tuple[subprocess.Popen[str], Path]]]:
    """``backend_checks.py fit_before`` started in a subprocess per selected, installed backend of
    :data:`OTHER_BACKENDS`: ``{backend: (process, folder with its stdout.txt / stderr.txt)}``.

    Started at once, not waited for: they run while the TensorFlow checks run in this process. Output goes to files
    (a pipe nobody reads while the TensorFlow checks run could fill and stall the child). Killed at teardown if
    still running.
    """
    test = test_callbacks_on_a_model_fit_before_other_backends.__name__
    selected = {
        item.callspec.params["backend"]
        for item in request.session.items
        if getattr(item, "originalname", "") == test and hasattr(item, "callspec")
    }
    started: dict[str, tuple[subprocess.Popen[str], Path]] = {}
    for backend in OTHER_BACKENDS:
        if backend not in selected or importlib.util.find_spec(backend) is None:
            continue
        folder = tmp_path_factory.mktemp(f"fit_before_{backend}")
        env = {
            **os.environ,
            "KERAS_BACKEND": backend,
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONPATH": str(ROOT),
            "FITSLIM_TMP": str(folder),
        }
        with open(folder / "stdout.txt", "w") as out, open(folder / "stderr.txt", "w") as err:
            proc = subprocess.Popen(
                [sys.executable, str(CHECKS), "fit_before"], stdout=out, stderr=err, text=True, env=env, cwd=ROOT
            )
        started[backend] = (proc, folder)
    yield started
    for proc, _ in started.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def tensorflow_results(
    tmp_path_factory: pytest.TempPathFactory, other_backends: dict[str, tuple[subprocess.Popen[str], Path]]
) -> dict[str, Any]:
    """Every check of ``backend_checks.check_fit_before`` on the TensorFlow backend, run once for the module (while
    the other backends' subprocesses run)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FITSLIM_TMP", str(tmp_path_factory.mktemp("fit_before")))
        result: dict[str, Any] = _checks().check_fit_before()
    return result


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS)
def test_recipe_on_a_model_fit_before_tensorflow(path: str, tensorflow_results: dict[str, Any]) -> None:
    _assert_recipe(tensorflow_results[path]["recipe"], "tensorflow", path)


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS)
def test_unstructured_pruning_on_a_model_fit_before_tensorflow(path: str, tensorflow_results: dict[str, Any]) -> None:
    _assert_unstructured(tensorflow_results[path]["unstructured"], "tensorflow")


@pytest.mark.slow
@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_callbacks_on_a_model_fit_before_other_backends(
    backend: str, other_backends: dict[str, tuple[subprocess.Popen[str], Path]]
) -> None:
    pytest.importorskip(backend)
    proc, folder = other_backends[backend]
    returncode = proc.wait(timeout=SUBPROCESS_TIMEOUT)
    stdout, stderr = ((folder / name).read_text() for name in ("stdout.txt", "stderr.txt"))
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert returncode == 0 and lines, stderr[-3000:]
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    assert sorted(result) == sorted(PATHS)
    for path in PATHS:
        _assert_recipe(result[path]["recipe"], backend, path)
    # unstructured pruning shares the schedule's step with channel pruning (checked on every path above); its own
    # masking runs on the fit path (CPU time: the whole file must stay small)
    assert [path for path in PATHS if "unstructured" in result[path]] == ["fit"]
    _assert_unstructured(result["fit"]["unstructured"], backend)


# -- the failure comes early, and says what happened ------------------------------------------------------------


def _digits(digits_nhwc: Any) -> tuple[np.ndarray, np.ndarray]:
    return digits_nhwc.x_train[:512], digits_nhwc.y_train[:512]


@pytest.mark.slow
def test_observers_that_do_not_run_fail_after_the_first_epoch_with_them_on(digits_nhwc: Any) -> None:
    """A stale train function (compiled by the fit before, put back by another callback) never runs the fake-quant
    layers: the fit stops at the end of the first epoch with the observers on, and the model is left as it was."""
    x, y = _digits(digits_nhwc)
    keras.utils.set_random_seed(0)
    model = build_digits_classifier(width=0.5)
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    batches: list[int] = []

    class Stale(keras.callbacks.Callback):  # after QuantizationAware: undoes its rebuilds before every step
        def set_model(self, m: Any) -> None:
            super().set_model(m)
            self.stale = m.train_function

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            self.model.train_function = self.stale
            batches.append(batch)

    assert model.train_function is not None
    qat = QuantizationAware(start=0.5)  # 3 epochs of 8 steps: observers from step 12, in epoch 1
    with pytest.raises(RuntimeError, match=r"observers were on for 4 training steps .* every quantized layer at zero"):
        model.fit(x, y, batch_size=64, epochs=3, verbose=0, shuffle=False, callbacks=[qat, Stale()])
    assert len(batches) == 16  # epochs 0 and 1 ran, not 2
    for layer in model.layers:
        assert "call" not in layer.__dict__ and "fitslim_input_range" not in layer.__dict__, layer.name


@pytest.mark.slow
def test_fit_stopped_before_start_names_the_step_it_stopped_at(digits_nhwc: Any) -> None:
    x, y = _digits(digits_nhwc)
    keras.utils.set_random_seed(0)
    model = build_digits_classifier(width=0.5)

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.model.stop_training = True

    qat = QuantizationAware(start=0.5)
    with pytest.raises(ValueError, match=r"ended after 8 of its 16 steps, before QAT's start at step 8") as err:
        model.fit(x, y, batch_size=64, epochs=2, verbose=0, callbacks=[qat, StopAfterFirstEpoch()])
    assert "start QAT earlier" not in str(err.value) and "HINT: let the fit run past start" in str(err.value)
