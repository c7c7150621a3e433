"""What a user installs: a complete sdist, the license, the version, and extras that keep frameworks apart."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_sdist_holds_everything_make_test_needs(tmp_path: Path) -> None:
    code = "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    archive = tmp_path / proc.stdout.strip().splitlines()[-1]
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    required = {
        "LICENSE",
        "README.md",
        "constraints.txt",
        "Makefile",
        ".ci/run",
        "pyproject.toml",
        "tests/conftest.py",
        "tests/zoo/torch_zoo.py",
        "tests/core/test_cli.py",
        "examples/recipes/digits.yaml",
        "fitslim/data/digits.npz",
        "fitslim/py.typed",
    }
    assert required <= names, sorted(required - names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    if shutil.which("git") and (ROOT / ".git").exists():  # from a checkout: every tracked file ships
        tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
        missing = set(tracked.stdout.split()) - names - {".gitignore"}
        assert not missing, sorted(missing)


def test_license_is_the_one_pyproject_declares() -> None:
    assert PYPROJECT["project"]["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_extras_keep_frameworks_apart_and_pin_nothing() -> None:
    extras: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]

    def closure(name: str) -> set[str]:
        out: set[str] = set()
        for req in extras[name]:
            if req.startswith("fitslim["):
                for sub in req[len("fitslim[") : -1].split(","):
                    out |= closure(sub)
            else:
                out.add(req)
        return out

    def names(reqs: set[str]) -> set[str]:
        return {r.split("[")[0].split(">")[0].split("<")[0].split("=")[0].split(";")[0].strip() for r in reqs}

    for name in extras:
        for req in closure(name):
            assert "==" not in req, f"[{name}] pins {req!r}: exact pins belong in constraints.txt"
    torch_free = names(closure("keras") | closure("onnx") | closure("tflite") | closure("tensorrt"))
    assert not torch_free & {"torch", "lightning", "pnnx", "litert-torch", "torch-pruning"}, torch_free
    assert not names(closure("lightning")) & {"tensorflow", "keras", "tf-keras"}
    assert "torch" in names(closure("lightning")) and "pnnx" in names(closure("ncnn"))
    assert names(closure("all")) >= set().union(*(names(closure(e)) for e in extras if e != "all"))
    pins = {_norm(line.split("==")[0]) for line in (ROOT / "constraints.txt").read_text().split() if "==" in line}
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text().split()
    unpinned = {_norm(n) for n in names(closure("all"))} - pins
    assert not unpinned, f"constraints.txt must pin every extra's package: {sorted(unpinned)}"


@pytest.mark.parametrize("script", ["fitslim"])
def test_console_script_points_at_the_application_layer(script: str) -> None:
    assert PYPROJECT["project"]["scripts"][script] == "fitslim_app.cli:main"
