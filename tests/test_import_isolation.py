"""Each package imports only its own framework: checked in a fresh interpreter via sys.modules.

The core (``fitslim`` without its application layer ``fitslim.app``) imports neither plugin set nor the
exporters, not even lazily inside a function: checked on the source.
"""

from __future__ import annotations

import ast
import json
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
APPLICATION = ("lightning_plugins", "keras_callbacks", "exporters")
# framework twins of the reference models: they import their framework by design, and only when asked for
FRAMEWORK_MODULES = ("fitslim.models.torch_models", "fitslim.models.keras_models")
# fitslim.cli forwards to fitslim.app.cli inside main(), for console scripts installed by fitslim 0.1.0
APP_FORWARDERS = ("fitslim/cli.py",)


def _core_modules() -> list[str]:
    names = []
    for path in sorted(CORE.rglob("*.py")):
        rel = path.relative_to(CORE.parent)
        if rel.parts[1] == "app":
            continue
        name = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        if name not in FRAMEWORK_MODULES:
            names.append(name)
    return names


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
    assert "fitslim.schedules" in modules and "fitslim.data" in modules and "fitslim.app.cli" not in modules
    loaded = _imported_after("import " + ", ".join(modules))
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
    assert not loaded & set(APPLICATION), loaded & set(APPLICATION)


def test_core_source_never_imports_the_application_layer() -> None:
    """Lazy imports inside functions count too: only fitslim/app/ may use the plugin sets and exporters."""
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        rel = path.relative_to(CORE.parent).as_posix()
        if rel.startswith("fitslim/app/"):
            continue
        for name in _imports(path):
            top = name.split(".")[0]
            if top in APPLICATION or (name.startswith("fitslim.app") and rel not in APP_FORWARDERS):
                offenders.append(f"{rel}: import {name}")
    assert not offenders, offenders
    # the check sees lazy imports: the application layer itself is full of them
    assert {"exporters", "lightning_plugins", "keras_callbacks"} <= {
        n.split(".")[0] for n in _imports(CORE / "app" / "demo.py")
    }


def test_cli_starts_without_any_framework() -> None:
    """``fitslim --help`` and friends load no framework: the application layer imports them per command."""
    loaded = _imported_after("import fitslim.app.cli, fitslim.cli")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
    assert not loaded & set(APPLICATION), loaded & set(APPLICATION)


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
