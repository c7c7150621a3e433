"""Install cost of fitslim's one-framework extras: venv size, wall time and CPU time of a fresh install.

Run: ``python -m benchmarks.install [--extras lightning keras ...] [--output f.md] [--keep DIR]``.

fitslim's wheel is built once first (``pip wheel --no-deps``, not timed: it is the ``.`` of the command). Then for
each extras set, one after another (never two at once, so they do not share the CPUs): a fresh venv
(``python -m venv``), then ``pip install -c constraints.txt '<wheel>[<extras>]'``, timed.
Wall time is the pip command's; CPU time is user + system of pip and every process it waited for (its build
backends, byte-compilation), read from ``resource.getrusage(RUSAGE_CHILDREN)`` before and after; size is every
file of the venv, after the install. The load average beside each row says how busy the machine was. pip uses
whatever cache and wheel sources it is configured with: run the benchmark twice and keep the second run for
figures "with the wheels already downloaded". Each venv is removed after it is measured unless ``--keep`` is
given.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import emit

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("benchmarks.install")

#: the rows of README.md's install table: extras -> what the row is
SETS: dict[str, str] = {
    "lightning": "",
    "keras": "",
    "lightning,onnx,ncnn": "the Lightning quickstart",
    "keras,onnx,tflite,tensorrt": "the Keras quickstart; no torch",
}


@dataclass
class Install:
    """One measured install."""

    extras: str
    ok: bool
    wall_s: float
    cpu_s: float
    size_bytes: int
    load: tuple[float, float]
    error: str = ""


def children_cpu_seconds() -> float:
    """User + system CPU seconds of every child process this process has waited for so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tree_size(path: Path) -> int:
    """Bytes of every regular file under ``path`` (symlinks not followed, not counted)."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def build_wheel(work: Path) -> Path:
    """fitslim's wheel, built from the repository into ``work``.

    Raises:
        RuntimeError: pip could not build it (its error output is in the message).
    """
    cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(work), str(ROOT)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    wheels = sorted(work.glob("fitslim-*.whl"))
    if proc.returncode != 0 or not wheels:
        raise RuntimeError(f"building fitslim's wheel failed: {proc.stderr[-2000:]}")
    return wheels[-1]


def install(extras: str, wheel: Path, work: Path, timeout: int) -> Install:
    """A fresh venv under ``work`` with ``wheel[extras]`` installed under the constraints; measured.

    Args:
        extras: comma-separated extras, e.g. ``"lightning,onnx,ncnn"``.
        wheel: fitslim's wheel (:func:`build_wheel`).
        work: a folder for the venv.
        timeout: seconds the pip install may take.
    """
    env_dir = work / f"venv-{extras.replace(',', '-')}"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, capture_output=True, timeout=300)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    cmd = [*pip, "-c", str(ROOT / "constraints.txt"), f"{wheel}[{extras}]"]
    load0 = os.getloadavg()[0]
    cpu0, t0 = children_cpu_seconds(), time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        ok, error = proc.returncode == 0, proc.stderr[-2000:] if proc.returncode else ""
    except subprocess.TimeoutExpired:
        ok, error = False, f"timed out after {timeout} s"
    wall, cpu = time.perf_counter() - t0, children_cpu_seconds() - cpu0
    return Install(extras, ok, wall, cpu, tree_size(env_dir), (load0, os.getloadavg()[0]), error)


def render(rows: list[Install]) -> str:
    """The Markdown table of README.md's install section."""
    lines = [
        "| one-framework install (fresh venv, `pip install -c constraints.txt '.[...]'`) | size | time | CPU time "
        "| load average (start, end) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        note = SETS.get(r.extras, "")
        name = f"`[{r.extras}]`" + (f" ({note})" if note else "")
        if not r.ok:
            lines.append(f"| {name} | failed: {r.error.strip().splitlines()[-1] if r.error else '?'} | | | |")
            continue
        lines.append(
            f"| {name} | {r.size_bytes / 1e9:.1f} GB | {r.wall_s:.0f} s | {r.cpu_s:.0f} s "
            f"| {r.load[0]:.1f}, {r.load[1]:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    """Command line entry point; prints (and optionally writes) the Markdown table and returns it."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--extras", nargs="+", default=list(SETS), help="comma-separated extras sets, one per row")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds each install may take")
    parser.add_argument("--keep", type=Path, default=None, help="create the venvs here and keep them")
    parser.add_argument("--output", default=None, help="also write the Markdown here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = args.keep or Path(tempfile.mkdtemp(prefix="fitslim-install-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        wheel = build_wheel(work)
        for extras in args.extras:
            rows.append(install(extras, wheel, work, args.timeout))
            log.info("%s", render(rows[-1:]).splitlines()[-1])  # each row as it is measured
            if args.keep is None:
                shutil.rmtree(work / f"venv-{extras.replace(',', '-')}", ignore_errors=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return emit(render(rows), args.output)


if __name__ == "__main__":
    main()
