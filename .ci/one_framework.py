"""CI, second step: each framework's README quickstart in a fresh venv that holds only that framework's extras.

The Lightning venv gets ``[lightning,onnx,ncnn]`` and must not contain TensorFlow or Keras; the Keras venv gets
``[keras,onnx,tflite,tensorrt]`` and must not contain torch or Lightning (the quickstart's ncnn target then fails
with the extra to install, which is checked too). The wheel is built once; both venvs install it with
``constraints.txt`` from pip's cache (without byte-compiling, to save CI time) and run at the same time. Prints
the install time and size of each venv.

Usage: python .ci/one_framework.py [lightning] [keras] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- quickstart: (?P<name>[\w-]+) -->\s*\n```python\n(?P<code>.*?)\n```", re.DOTALL)

FRAMEWORKS: dict[str, dict[str, object]] = {
    "lightning": {
        "extras": "lightning,onnx,ncnn",
        "absent": ["tensorflow", "keras", "tf_keras"],
        "folder": "exports/lightning",
        "ok": ["onnx", "ncnn"],
        "failed": {},
    },
    "keras": {
        "extras": "keras,onnx,tflite,tensorrt",
        "absent": ["torch", "lightning", "pytorch_lightning"],
        "folder": "exports/keras",
        "ok": ["tflite"],
        "failed": {"ncnn": "pip install 'fitslim[ncnn]'"},
    },
}


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 2**20


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload]
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        return subprocess.CompletedProcess(argv, -9, out, f"timed out after {err.timeout:.0f} s")


def check(name: str, work: Path, wheel: Path) -> list[str]:
    """Install, check what is absent, run the quickstart, check its report; returns the problems found."""
    spec = FRAMEWORKS[name]
    env_dir = work / f"venv-{name}"
    problems: list[str] = []
    t0 = time.perf_counter()
    _run([sys.executable, "-m", "venv", str(env_dir)], timeout=300)
    py = env_dir / "bin" / "python"
    base = _size_mb(env_dir)
    t1 = time.perf_counter()
    pip = _run(
        [
            str(py),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-compile",
            "-c",
            "constraints.txt",
            f"{wheel}[{spec['extras']}]",
        ],
        cwd=ROOT,
        timeout=900,
    )
    t2 = time.perf_counter()
    if pip.returncode != 0:
        return [f"{name}: pip install failed: {pip.stderr[-3000:]}"]
    print(
        f"{name}: pip install 'fitslim[{spec['extras']}]' took {t2 - t1:.0f} s, venv {_size_mb(env_dir):.0f} MB "
        f"({_size_mb(env_dir) - base:.0f} MB installed)",
        flush=True,
    )
    absent = json.dumps(spec["absent"])
    found = _run(
        [str(py), "-c", f"import importlib.util as u, json; print([m for m in {absent} if u.find_spec(m)])"],
        cwd=work,
    )
    if found.stdout.strip() != "[]":
        problems.append(f"{name}: the venv holds another framework: {found.stdout.strip()} {found.stderr[-500:]}")
    code = next((m["code"] for m in MARKER.finditer((ROOT / "README.md").read_text()) if m["name"] == name), None)
    if code is None:
        return [*problems, f"{name}: README.md has no quickstart block named {name!r}"]
    run_dir = work / f"run-{name}"
    run_dir.mkdir()
    (run_dir / "quickstart.py").write_text(code + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KERAS_BACKEND", "TF_USE_LEGACY_KERAS")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = _run([str(py), "quickstart.py"], cwd=run_dir, env=env, timeout=900)
    t3 = time.perf_counter()
    print(f"{name}: quickstart ran in {t3 - t2:.0f} s (exit {proc.returncode}); {t3 - t0:.0f} s in all", flush=True)
    log = f"\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    if proc.returncode != 0 or "student test accuracy" not in proc.stdout:
        return [*problems, f"{name}: the quickstart failed{log}"]
    report = json.loads((run_dir / str(spec["folder"]) / "report.json").read_text())
    rows = {r["target"]: r for r in report["results"]}
    for target in spec["ok"]:  # type: ignore[attr-defined]
        if rows.get(target, {}).get("status") != "ok":
            problems.append(f"{name}: {target} is not ok: {rows.get(target)}")
    for target, hint in spec["failed"].items():  # type: ignore[attr-defined]
        row = rows.get(target, {})
        if row.get("status") != "failed" or hint not in row.get("reason", ""):
            problems.append(f"{name}: {target} should fail naming {hint!r}; got {row}")
        else:
            print(f"{name}: {target} without its extra: {row['reason'][-160:]}", flush=True)
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("frameworks", nargs="*", help=f"any of {list(FRAMEWORKS)} (default: all)")
    parser.add_argument("--keep", default=None, help="keep the venvs and runs in this folder")
    args = parser.parse_args()
    unknown = set(args.frameworks) - set(FRAMEWORKS)
    if unknown:
        parser.error(f"unknown frameworks {sorted(unknown)}; choose from {list(FRAMEWORKS)}")
    args.frameworks = args.frameworks or list(FRAMEWORKS)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fitslim-one-framework-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        built = _run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(work / "wheel"), "."], cwd=ROOT
        )
        if built.returncode != 0:
            print(f"FAILED building the wheel: {built.stderr[-3000:]}", file=sys.stderr)
            return 1
        wheel = next((work / "wheel").glob("fitslim-*.whl"))
        print(f"built {wheel.name} in {time.perf_counter() - t0:.0f} s", flush=True)
        with ThreadPoolExecutor(max_workers=len(args.frameworks)) as pool:
            results = list(pool.map(lambda name: check(name, work, wheel), args.frameworks))
        problems = [p for found in results for p in found]
        print(f"one-framework checks: {time.perf_counter() - t0:.0f} s in all", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    for p in problems:
        print(f"FAILED {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
