"""The tf-keras / tfmot legacy path, each check in its own process (tfmot flips TF_USE_LEGACY_KERAS)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# find_spec, not importorskip: importing tfmot here would flip this pytest process to tf-keras
for _dist in ("tensorflow_model_optimization", "tf_keras"):
    if importlib.util.find_spec(_dist) is None:
        pytest.skip(f"{_dist} not installed: pip install 'fitslim[keras-legacy]'", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("legacy_checks.py")

pytestmark = [pytest.mark.slow, pytest.mark.legacy]


def _run(check: str, out: Path, timeout: float = 240) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), check, str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"{check} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result


def test_pytest_process_stays_on_keras3() -> None:
    """Importing the legacy helpers must not flip this process to tf-keras."""
    import keras_callbacks.legacy  # noqa: F401

    assert os.environ.get("TF_USE_LEGACY_KERAS") in (None, "", "0")
    assert "tensorflow_model_optimization" not in sys.modules


def test_tfmot_pruned_model_exports_stripped_and_sparse(tmp_path: Path) -> None:
    r = _run("prune", tmp_path)
    assert r["wrapped"] is True
    assert r["ok"] == {"onnx": True, "tflite": True}
    assert r["rel"]["onnx"] <= 1e-4 and r["rel"]["tflite"] <= 1e-4
    assert r["fc_sparsity"] == pytest.approx(0.5, abs=0.01)  # the tfmot zeros survive strip + export
    assert r["source"].startswith("tf_keras")


def test_tfmot_qat_model_gives_int8_tflite_from_its_ranges(tmp_path: Path) -> None:
    r = _run("qat", tmp_path)
    assert r["wrapped"] is True
    assert r["summary"].startswith("int8 kernels: 2 CONV_2D, 1 FULLY_CONNECTED")
    # LiteRT int8 vs the tfmot fake-quant model, top-1 on the digits test split (measured 0.985)
    assert r["agreement"] >= 0.97
    assert r["accuracy"] > 0.5
    assert (tmp_path / "model.int8.tflite").is_file()


def test_wrong_keras_errors_say_which_keras_and_what_to_do(tmp_path: Path) -> None:
    r = _run("errors", tmp_path)
    assert r["flavors"] == ["keras3", "tf_keras"]
    to_legacy = r["messages"]["keras3_to_legacy"]
    assert "got a Keras 3 model" in to_legacy and "keras 3." in to_legacy and "HINT" in to_legacy
    to_keras3 = r["messages"]["legacy_to_keras3"]
    assert to_keras3.startswith("QuantizationAware: got a tf-keras (Keras 2) model") and "HINT" in to_keras3


def test_migration_example_reaches_the_same_sparsity_before_and_after() -> None:
    if importlib.util.find_spec("keras_callbacks.pruning") is None:
        pytest.skip("keras_callbacks.Pruning not available")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.pop("TF_USE_LEGACY_KERAS", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "legacy_tfmot_migration.py")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [
        line for line in proc.stderr.splitlines() if line.startswith(("before", "after")) and "kernel sparsity" in line
    ]
    assert len(lines) == 2, proc.stderr[-2000:]
    assert all("kernel sparsity 0.500" in line for line in lines), lines
