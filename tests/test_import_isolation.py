"""Each package imports only its own framework: checked in a fresh interpreter via sys.modules."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = (
    "torch",
    "tensorflow",
    "keras",
    "tf_keras",
    "onnx",
    "onnxruntime",
    "ncnn",
    "jax",
    "lightning",
    "pytorch_lightning",
)


def _imported_after(statement: str) -> set[str]:
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(m.split('.')[0] for m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_core_imports_no_framework() -> None:
    loaded = _imported_after(
        "import fitslim, fitslim.schedules, fitslim.recipe, fitslim.data, fitslim.models, fitslim.cli"
    )
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_exporters_import_no_framework() -> None:
    loaded = _imported_after("import exporters")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


@pytest.mark.slow
def test_lightning_plugins_import_no_tensorflow_or_keras() -> None:
    pytest.importorskip("torch", reason="torch not installed")
    loaded = _imported_after("import lightning_plugins, lightning_plugins.reference")
    assert "torch" in loaded  # the check below is meaningful only if the module really loaded
    assert not loaded & {"tensorflow", "keras", "tf_keras"}, loaded & {"tensorflow", "keras", "tf_keras"}


@pytest.mark.slow
def test_keras_callbacks_import_no_torch() -> None:
    pytest.importorskip("keras", reason="keras not installed")
    loaded = _imported_after(
        "import os; os.environ['KERAS_BACKEND'] = 'tensorflow'\n"
        "import keras_callbacks, keras_callbacks.reference, keras"
    )
    assert "keras" in loaded
    assert "torch" not in loaded and "lightning" not in loaded
