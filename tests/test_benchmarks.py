"""The benchmark runner (``python -m benchmarks``): section collection and failure handling, on fake modules."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

import benchmarks.__main__ as runner

ROOT = Path(__file__).resolve().parent.parent

OK_MODULE = """
import argparse
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--quick", action="store_true")
parser.add_argument("--output")
args = parser.parse_args()
mode = "quick" if args.quick else "full"
Path(args.output).write_text(f"# Fake benchmark\\n\\n| mode |\\n|---|\\n| {mode} |\\n\\n```\\n# not a heading\\n```\\n")
"""

FAIL_MODULE = """
import sys
for i in range(100):
    print(f"progress line {i}")
raise RuntimeError("the fake benchmark broke")
"""

RETURN_MODULE = """
def main(argv):
    return "table of " + " ".join(argv)
"""


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[runner.Benchmark, ...]:
    """Three fake benchmark modules on the subprocesses' PYTHONPATH: one ok, one failing, one returning text."""
    pkg = tmp_path / "fakes"
    pkg.mkdir()
    for name, source in (("fake_ok", OK_MODULE), ("fake_fail", FAIL_MODULE), ("fake_return", RETURN_MODULE)):
        (pkg / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", str(pkg))
    return (
        runner.Benchmark("ok", "fake_ok", "a fake that works"),
        runner.Benchmark("broken", "fake_fail", "a fake that raises"),
        runner.Benchmark("plain", "fake_return", "a fake returning text", quick=("--size", "9"), collect="return"),
    )


def test_sections_in_order_with_failures_reported(fakes: tuple[runner.Benchmark, ...], tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    outcomes = runner.run_all(fakes, quick=True, output=out, timeout=120, log_dir=tmp_path / "logs")
    assert [(o.bench.name, o.ok) for o in outcomes] == [("ok", True), ("broken", False), ("plain", True)]
    broken = outcomes[1]
    assert broken.error == "exit status 1"
    assert broken.log_tail[-1] == "RuntimeError: the fake benchmark broke"
    assert len(broken.log_tail) == runner.TAIL_LINES and "progress line 0" not in broken.log_tail
    text = out.read_text(encoding="utf-8")
    # table of contents: one row per benchmark, linked, with its status
    assert "| 1 | [ok](#ok) | a fake that works | ok |" in text
    assert "| 2 | [broken](#broken) | a fake that raises | **FAILED** (exit status 1) |" in text
    assert "Status: 2 ok, 1 failed" in text
    # sections in order; the module's heading is nested under the section, code blocks are left alone
    assert text.index("## 1. ok") < text.index("## 2. broken") < text.index("## 3. plain")
    assert "### Fake benchmark" in text and "\n# not a heading\n" in text
    assert "| quick |" in text  # --quick was passed through
    assert "RuntimeError: the fake benchmark broke" in text
    # a returned plain-text table goes into a code block; quick arguments reach main(argv)
    assert "```\ntable of --size 9\n```" in text
    assert re.search(r"- Machine: .+\d+ cores", text)


def test_main_exits_non_zero_when_a_benchmark_fails(
    fakes: tuple[runner.Benchmark, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "BENCHMARKS", fakes)
    out = tmp_path / "all.md"
    assert runner.main(["--output", str(out), "--logs", str(tmp_path / "logs")]) == 1
    assert "| full |" in out.read_text(encoding="utf-8")  # no --quick: the full arguments
    assert runner.main(["--only", "ok", "plain", "--output", str(out), "--logs", str(tmp_path / "logs")]) == 0
    text = out.read_text(encoding="utf-8")
    assert "broken" not in text and "Status: 2 ok, 0 failed" in text


def test_missing_output_is_a_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fake_silent.py").write_text("print('done, but wrote nothing')\n", encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    bench = runner.Benchmark("silent", "fake_silent", "writes nothing")
    outcome = runner.run_one(bench, quick=False, timeout=60, log_dir=tmp_path)
    assert not outcome.ok and outcome.error == "finished without writing its results"
    assert outcome.log_tail == ["done, but wrote nothing"]


def test_real_benchmarks_accept_the_runner_arguments() -> None:
    """Every flag the runner passes exists in the module's command line (no import: reads the source)."""
    assert runner.BENCHMARKS[0].name == "headline"
    for bench in runner.BENCHMARKS:
        source = (ROOT / (bench.module.replace(".", "/") + ".py")).read_text(encoding="utf-8")
        flags = [a for a in (*bench.full, *bench.quick) if a.startswith("--")]
        if bench.collect == "output":
            flags.append("--output")
        else:
            assert re.search(r"def main\(argv", source), bench.module
        for flag in flags:
            assert f'"{flag}"' in source, f"{bench.module} has no {flag} option"


def test_scaling_table_reports_cpu_time_and_load_beside_wall_time() -> None:
    from benchmarks import scaling

    step = {"precision": "fp32", "target": "onnx", "seconds": 30.0, "cpu_seconds": 12.0, "load": 3.5}
    step |= {"max_rss_mb": 2048.0, "status": "ok", "reason": ""}
    text = scaling.render([{"model": "resnet50", "params": 25.6e6, "steps": [step]}], 224)
    row = next(line for line in text.splitlines() if line.startswith("| resnet50"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    header = next(line for line in text.splitlines() if line.startswith("| model"))
    assert len(cells) == len(header.strip("|").split("|"))  # one cell per column
    assert cells[2] == "30 / 12 s" and cells[-3] == "30 / 12 s" and cells[-1] == "3.5-3.5"
    before = scaling._cpu_seconds()
    sum(i * i for i in range(300_000))
    assert scaling._cpu_seconds() > before


def test_speed224_retime_refuses_a_record_whose_artifacts_are_gone(tmp_path: Path) -> None:
    import argparse

    from benchmarks import speed224

    record = {"model": "mobilenet_v2", "size": 32, "workdir": str(tmp_path / "gone"), "variants": {"dense fp32": {}}}
    args = argparse.Namespace(threads=1, rounds=1, burst=1)
    with pytest.raises(FileNotFoundError, match="run without --reuse"):
        speed224.retime(record, args)
