"""Run the whole zoo (``make zoo``): one pytest process per (framework, case), then render the support table.

A single process over every Keras case grows until a 24 GB machine kills it (TensorFlow and the converters
keep graph state from case to case), so each case gets a fresh process: its export matrix and its callback
cells run together, its memory is returned when it ends. Tests that belong to no case (graph-fix and refusal
tests, the accuracy checks) run in one process per file. Each process appends its cells to
``<results>/cells.jsonl``; a process that is killed (memory) or times out is recorded in ``runs.jsonl`` and
named in the table's note, so its cases read ``not run`` instead of vanishing.

Usage: ``python -m tests.zoo.run [--results zoo-results] [--output docs/zoo-support.md] [--only keras]
[-k EXPR] [--select TEXT] [--keep]`` (``-k``: cases whose name contains EXPR; ``--select``: test ids containing
TEXT; ``--keep``: add to the cells of an earlier run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from tests.zoo import table

ROOT = Path(__file__).resolve().parents[2]
FILES = {
    "keras": (
        "tests/zoo/test_keras_export.py",
        "tests/zoo/test_keras_callbacks.py",
        "tests/zoo/test_keras_trained_int8.py",
    ),
    "torch": (
        "tests/zoo/test_torch_export.py",
        "tests/zoo/test_lightning_callbacks.py",
        "tests/zoo/test_torch_trained_int8.py",
    ),
}


def _which(runs: list[dict[str, Any]], most: int = 8) -> str:
    """`` (torch hf_deit, ...)`` for a partial run, so that a merged note says which cases it ran."""
    if not runs or len(runs) > most:
        return ""
    return " (" + ", ".join(f"{r['framework']} {r['group']}" for r in runs) + ")"


def _env(results: Path) -> dict[str, str]:
    return {**os.environ, "FITSLIM_ZOO": "full", "FITSLIM_ZOO_RESULTS": str(results), "TF_CPP_MIN_LOG_LEVEL": "3"}


def collect(framework: str, env: dict[str, str]) -> list[str]:
    """The zoo test ids of one framework, as ``pytest --collect-only -q`` lists them."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "zoo", *FILES[framework]],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    ids = [line.strip() for line in proc.stdout.splitlines() if "::" in line]
    if proc.returncode not in (0, 5) or not ids:
        raise RuntimeError(f"collecting the {framework} zoo failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return ids


def group(ids: list[str], cases: set[str]) -> dict[str, list[str]]:
    """Test ids by case (the first ``-``-separated part of a parametrized id that names a case); the rest by
    file (``misc:<file>``), after the cases."""
    groups: dict[str, list[str]] = defaultdict(list)
    for node in ids:
        match = re.search(r"\[([^\]]*)\]$", node)
        first = match.group(1).split("-")[0] if match else ""
        groups[first if first in cases else f"misc:{node.split('::')[0]}"].append(node)
    return dict(sorted(groups.items(), key=lambda kv: kv[0].startswith("misc:")))  # the table's cases first


def run_group(ids: list[str], env: dict[str, str], timeout: float, log: Path) -> dict[str, object]:
    """One pytest process over ``ids``: its exit code (negative: killed by that signal), wall seconds and peak
    RSS (from ``wait4``)."""
    t0 = time.perf_counter()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *ids], cwd=ROOT, env=env,
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(1.0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "rc": proc.returncode,
        "timed_out": time.perf_counter() > deadline,
        "wall_s": round(time.perf_counter() - t0, 1),
        "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2),  # ru_maxrss is in KiB on Linux
    }


def _cases(framework: str) -> set[str]:
    module = "tests.zoo.keras_zoo" if framework == "keras" else "tests.zoo.torch_zoo"
    # the case names only: read them from the module's source so this process imports no framework
    text = (ROOT / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8")
    return set(re.findall(r'_case\(\s*"([a-z0-9_]+)"', text)) | set(re.findall(r'ZooCase\(\s*"([a-z0-9_]+)"', text))


def duration(seconds: float) -> str:
    """``"8 min 0 s"`` for 479.6 seconds (whole seconds, then minutes)."""
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="zoo-results", help="folder for cells.jsonl, runs.jsonl and logs")
    parser.add_argument("--output", default="docs/zoo-support.md", help="the support table to write")
    parser.add_argument("--only", choices=sorted(FILES), help="one framework (default: both)")
    parser.add_argument("-k", dest="pattern", default="", help="only cases whose name contains this")
    parser.add_argument("--select", default="", help="only test ids containing this (e.g. 'callbacks')")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds one case may run")
    parser.add_argument("--keep", action="store_true", help="append to earlier cells instead of starting afresh")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the cells and notes of the table at --output and put this run's cells over them (a partial run, "
        "e.g. --select trained_int8 for the trained-weights int8 columns)",
    )
    args = parser.parse_args(argv)
    results = Path(args.results).resolve()
    results.mkdir(parents=True, exist_ok=True)
    if not args.keep:
        for name in ("cells.jsonl", "runs.jsonl", "pytest.log"):
            (results / name).unlink(missing_ok=True)
    env = _env(results)
    start = time.perf_counter()
    runs = []
    for framework in [args.only] if args.only else sorted(FILES):
        ids = [node for node in collect(framework, env) if args.select in node]
        groups = group(ids, _cases(framework))
        for key, ids in groups.items():
            if args.pattern and args.pattern not in key:
                continue
            print(f"[zoo] {framework} {key}: {len(ids)} test(s) ...", flush=True)
            run = {"framework": framework, "group": key, "tests": len(ids)}
            run.update(run_group(ids, env, args.timeout, results / "pytest.log"))
            runs.append(run)
            with open(results / "runs.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(run) + "\n")
            print(f"[zoo]   rc {run['rc']}, {run['wall_s']} s, peak RSS {run['peak_rss_gb']} GB", flush=True)
    wall = time.perf_counter() - start
    broken = [r for r in runs if r["rc"] not in (0, 1)]  # 1: some test broke its expectation (see pytest.log)
    failing = [r for r in runs if r["rc"] == 1]
    note = (
        f"This run ({time.strftime('%Y-%m-%d')}, `make zoo`, {os.cpu_count()} CPUs): {len(runs)} pytest processes, "
        f"one per case{_which(runs)}, {duration(wall)} in all; the largest process peaked at "
        f"{max((float(r['peak_rss_gb']) for r in runs), default=0):.1f} GB."
    )
    if failing:
        note += (
            " Processes with a test that broke the zoo's expectations: "
            + ", ".join(f"{r['framework']} {r['group']}" for r in failing)
            + "."
        )
    if broken:
        note += (
            " Killed or timed out (their cells read `not run`): "
            + ", ".join(f"{r['framework']} {r['group']} (rc {r['rc']})" for r in broken)
            + "."
        )
    cells = results / "cells.jsonl"
    if not cells.is_file():
        print("[zoo] no cells were recorded", file=sys.stderr)
        return 2
    rc = table.main([str(cells), "--output", args.output, "--note", note, *(["--merge"] if args.merge else [])])
    print(f"[zoo] {note}")
    return rc or (2 if broken else 0)


if __name__ == "__main__":
    raise SystemExit(main())
