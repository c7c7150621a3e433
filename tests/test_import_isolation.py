"""Each package imports only its own framework: checked in a fresh interpreter via sys.modules.

The core (every module of ``fitslim``, no exemption) imports neither a framework, nor a plugin set, nor the
exporters, nor the application layer ``fitslim_app``, not even lazily inside a function: checked on the source.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

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


CORE = Path(__file__).resolve().parents[1] / "fitslim"
APPLICATION = ("lightning_plugins", "keras_callbacks", "exporters", "fitslim_app")


def _core_modules() -> list[str]:
    return [
        ".".join(path.relative_to(CORE.parent).with_suffix("").parts).removesuffix(".__init__")
        for path in sorted(CORE.rglob("*.py"))
    ]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_core_imports_no_framework() -> None:
    modules = _core_modules()
    assert {"fitslim.schedules", "fitslim.data", "fitslim.models", "fitslim.models.spec"} <= set(modules)
    loaded = _imported_after("import " + ", ".join(modules))
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
    assert not loaded & set(APPLICATION), loaded & set(APPLICATION)


def test_core_source_never_imports_the_application_layer() -> None:
    """Lazy imports inside functions count too: no module of fitslim/ uses a framework, plugin set or exporter."""
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        rel = path.relative_to(CORE.parent).as_posix()
        for name in _imports(path):
            if name.split(".")[0] in (*APPLICATION, *HEAVY):
                offenders.append(f"{rel}: import {name}")
    assert not offenders, offenders
    # the check sees lazy imports: the application layer on top is full of them
    assert {"exporters", "lightning_plugins", "keras_callbacks"} <= {
        n.split(".")[0] for n in _imports(CORE.parent / "fitslim_app" / "demo.py")
    }


def test_cli_starts_without_any_framework() -> None:
    """``fitslim --help`` and friends load no framework: the application layer imports them per command."""
    loaded = _imported_after("import fitslim_app.cli")
    plugin_sets = {"lightning_plugins", "keras_callbacks", "exporters"}
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
    assert not loaded & plugin_sets, loaded & plugin_sets


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


# ----------------------------------------------------------------------------- a missing extra, simulated

BLOCKER = '''
import os, sys
_blocked = set(filter(None, os.environ.get("FITSLIM_TEST_BLOCK", "").split(",")))
class _Blocker:
    """Acts as if the blocked top-level packages were not installed."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Blocker())
'''


def _run_without(blocked: str, code: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (or ``python -m`` args when code is empty) in a fresh interpreter where ``blocked`` is absent."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    root = str(Path(__file__).resolve().parents[1])
    env.update(PYTHONPATH=os.pathsep.join([str(site), root]), FITSLIM_TEST_BLOCK=blocked, TF_CPP_MIN_LOG_LEVEL="2")
    argv = [sys.executable, "-c", code] if code else [sys.executable, *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def test_the_blocker_blocks(tmp_path: Path) -> None:
    proc = _run_without("json", "import json", tmp_path)
    assert proc.returncode != 0 and "No module named 'json'" in proc.stderr


@pytest.mark.parametrize(
    ("blocked", "statement", "message"),
    [
        ("torch", "import lightning_plugins", "lightning_plugins needs torch"),
        ("lightning,pytorch_lightning", "from lightning_plugins.reference import DigitsClassifier", "needs Lightning"),
        ("keras", "import keras_callbacks", "keras_callbacks needs Keras 3"),
        ("keras", "from keras_callbacks.reference import build_digits_classifier", "keras_callbacks needs Keras 3"),
        ("torch", "from lightning_plugins.models import torch_model", "lightning_plugins needs torch"),
    ],
)
def test_a_missing_framework_names_the_extra(blocked: str, statement: str, message: str, tmp_path: Path) -> None:
    proc = _run_without(blocked, statement, tmp_path)
    last = proc.stderr.strip().splitlines()[-1]
    extra = "keras" if "keras" in statement else "lightning"
    assert proc.returncode != 0 and message in last and f"pip install 'fitslim[{extra}]'" in last, proc.stderr[-2000:]


EXPORT_WITHOUT = """
import numpy as np
from exporters import export
from tests.test_bad_inputs import _tiny_onnx
from pathlib import Path
model = str(_tiny_onnx(Path("tiny.onnx")))
report = export(model, {targets!r}, example_input=np.zeros((1, 1, 8, 8), np.float32), directory="out")
for r in report:
    print("ROW", r.target, r.status, r.reason)
"""


@pytest.mark.parametrize(
    ("blocked", "target", "extra"),
    [("pnnx", "ncnn", "ncnn"), ("ncnn", "ncnn", "ncnn")],
)
def test_an_export_target_without_its_runtime_names_the_extra(
    blocked: str, target: str, extra: str, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    proc = _run_without(blocked, EXPORT_WITHOUT.format(targets=[target]), tmp_path)
    rows = [line.split(" ", 3) for line in proc.stdout.splitlines() if line.startswith("ROW ")]
    assert proc.returncode == 0 and rows, proc.stderr[-2000:]
    assert rows[0][1:3] == [target, "failed"] and f"pip install 'fitslim[{extra}]'" in rows[0][3], rows


def test_demo_skips_a_framework_that_is_not_installed(tmp_path: Path) -> None:
    code = (
        "from fitslim_app.cli import installed_frameworks\n"
        "print(installed_frameworks(None))\n"
        "print(installed_frameworks(['keras']))"
    )
    proc = _run_without("keras,tensorflow", code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    both, keras_only = proc.stdout.strip().splitlines()[-2:]
    assert both.startswith("(['lightning'], {'keras': ") and "pip install 'fitslim[keras]'" in both, both
    assert keras_only.startswith("([], {'keras'"), keras_only
    # with no framework at all, the demo refuses at once (exit 2) and names both extras
    proc = _run_without("keras,tensorflow,torch", "", tmp_path, "-m", "fitslim_app.cli", "demo", "--output", "d")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "skipping lightning: torch" in proc.stderr and "skipping keras: keras, tensorflow" in proc.stderr
    assert "pip install 'fitslim[lightning]' or 'fitslim[keras]'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "d").exists()
