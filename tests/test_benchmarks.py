"""The benchmark runner (``python -m benchmarks``): section collection and failure handling, on fake modules."""

from __future__ import annotations

import re
import subprocess
import sys
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


def _report(directory: Path, rows: list[tuple[str, str, list[str]]]) -> object:
    from exporters.core.report import ExportReport, TargetResult

    results = []
    for target, precision, files in rows:
        for f in files:
            (directory / f).write_bytes(b"x" * (100 if precision == "int8" else 400))
        results.append(TargetResult(target, precision, files=files))
    return ExportReport(source="fake", directory=str(directory), results=results)


def test_headline_rows_read_the_artifact_they_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After, the 'without int8' row reads the student's fp32 ONNX, not the int8 `onnx` artifact of the same fit."""
    from benchmarks import headline
    from exporters.core import runtimes

    (tmp_path / "int8").mkdir()
    (tmp_path / "fp32").mkdir()
    int8 = _report(
        tmp_path / "int8",
        [
            ("onnx", "int8", ["model.int8.onnx"]),  # onnxruntime's int8 file: the row must not read it
            ("ncnn", "int8", ["model.int8.ncnn.param", "model.int8.ncnn.bin"]),
            ("tflite", "int8", ["model.int8.tflite"]),
            ("tensorrt", "int8", ["model.qdq.onnx"]),
        ],
    )
    fp32 = _report(tmp_path / "fp32", [("onnx", "fp32", ["model.onnx"])])
    loaded: list[tuple[str, str]] = []

    def fake_runner(report: object, target: str, threads: int = 2) -> object:
        loaded.append((Path(report.directory).name, target))  # type: ignore[attr-defined]
        return lambda x: x

    monkeypatch.setattr(runtimes, "runner", fake_runner)
    after = headline.load_artifacts([int8, fp32], "after", threads=1)
    fp32_row = after[headline.PRUNED_FP32]
    assert fp32_row.status == "ok" and fp32_row.path == tmp_path / "fp32" / "model.onnx"
    assert fp32_row.precision == "fp32" and fp32_row.size == 400
    assert after["onnxruntime"].path == tmp_path / "int8" / "model.qdq.onnx"
    assert after["ncnn"].path is not None and after["ncnn"].path.name == "model.int8.ncnn.param"
    assert all(after[r].precision == "int8" for r in ("onnxruntime", "ncnn", "LiteRT"))
    assert ("fp32", "onnx") in loaded and ("int8", "onnx") not in loaded
    assert "without int8" in headline.LABELS[headline.PRUNED_FP32]
    assert "model.onnx (fp32)" in headline.files_read(after)
    # without the student's fp32 export the row is skipped, never filled with the int8 file
    alone = headline.load_artifacts([int8], "after", threads=1)
    assert alone[headline.PRUNED_FP32].status == "skipped" and alone[headline.PRUNED_FP32].path is None
    # before, every row is fp32 and the last row is the dense ONNX again
    before = headline.load_artifacts([fp32], "before", threads=1)
    assert before[headline.PRUNED_FP32] is before["onnxruntime"] and before["onnxruntime"].precision == "fp32"


@pytest.mark.slow
def test_keras_pruning_overhead_times_a_fit_whose_masks_change_after_epoch_0() -> None:
    """The timed span holds mask updates: sparsity still rises after epoch 0, and epoch 0's steps are timed too."""
    pytest.importorskip("keras", reason="keras not installed")
    pytest.importorskip("tensorflow", reason="tensorflow not installed")
    from benchmarks import keras as bench

    res = bench._spawn("keras3", "pruning", 2)
    ramp = res["epoch_sparsity"]
    assert len(ramp) == 2 and ramp[0] < ramp[1] - 0.05, ramp  # the schedule was still moving in epoch 1
    assert abs(res["sparsity"] - bench.SPARSITY) < 0.02
    assert {e for e, _, _ in res["records"]} == {0, 1}
    fit_cpu, fit_wall = res["fit"]
    steps_wall = sum(w for _, _, w in res["records"])
    assert 0 < steps_wall <= fit_wall and fit_cpu > 0
    final = {v: {"sparsity": 0.5, "accuracy": 0.9, "version": "x"} for v in bench.PRUNING_NAMES}
    final[("keras3", "pruning")]["epoch_sparsity"] = ramp
    steps = {v: [(0.01, 0.02)] * 3 for v in bench.PRUNING_NAMES}
    fits = {v: [(1.0, 2.0)] for v in bench.PRUNING_NAMES}
    fits[("keras3", "pruning")] = [(1.5, 2.0)]
    text = "\n".join(bench.pruning_table(steps, fits, final, rounds=1, epochs=2))
    assert "| fitslim Pruning (Keras 3) | 1.50 | 2.00 | 1.50x | 1.00x |" in text
    assert "whole fit): NOT met (1.50x vs 1.00x" in text


def _cited_commands() -> list[tuple[str, str]]:
    """``(readme, command)`` for every backticked ``python -m benchmarks.<module> ...`` in the two READMEs."""
    found = []
    for readme in (ROOT / "README.md", ROOT / "benchmarks" / "README.md"):
        text = readme.read_text(encoding="utf-8")
        for span in re.findall(r"`([^`]*python -m benchmarks\.[^`]*)`", text):
            found.append((str(readme.relative_to(ROOT)), " ".join(span.split())))
    return found


def test_every_cited_benchmark_command_exists_with_its_options() -> None:
    """A figure's command in a README names a module that exists and options (and choices) that it has."""
    commands = _cited_commands()
    assert any("ort_weights --models digits_cnn" in c for _, c in commands)
    for readme, command in commands:
        words = command.split("python -m ", 1)[1].replace("[", " ").replace("]", " ").replace("|", " ").split()
        module = ROOT / (words[0].replace(".", "/") + ".py")
        assert module.is_file(), f"{readme}: `{command}` names no module"
        source = module.read_text(encoding="utf-8")
        option = ""
        for word in words[1:]:
            if word.startswith("--"):
                option = word
                negated = word.startswith("--no-") and f'"--{word[5:]}"' in source and "BooleanOptionalAction" in source
                assert f'"{word}"' in source or negated, f"{readme}: `{command}`: {words[0]} has no {word} option"
            elif option in ("--models", "--parts", "--targets", "--model") and not word.startswith(("/", "DIR")):
                assert f'"{word}"' in source, f"{readme}: `{command}`: {option} has no choice {word}"


def test_no_readme_figure_from_a_setting_no_script_has() -> None:
    """The issue's unscripted figures: ORT's layout-optimization level is set by no benchmark; the install table's
    columns are the ones benchmarks.install writes."""
    from benchmarks import install

    scripts = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "benchmarks").glob("*.py"))
    for readme in (ROOT / "README.md", ROOT / "benchmarks" / "README.md"):
        text = readme.read_text(encoding="utf-8")
        for level in ("ORT_ENABLE_EXTENDED", "ORT_ENABLE_BASIC", "ORT_DISABLE_ALL"):
            assert level not in text or level in scripts, f"{readme.name} quotes {level} figures no script measures"
        assert "47.7%" not in text
    header = install.render([]).splitlines()[0]
    readme_headers = [ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith("| one-framework")]
    assert readme_headers == [header]
    row = install.Install("lightning", True, 31.4, 29.6, 1_000_000_000, (2.0, 2.5))
    assert "| `[lightning]` | 1.0 GB | 31 s | 30 s | 2.0, 2.5 |" in install.render([row])
    before = install.children_cpu_seconds()
    subprocess.run([sys.executable, "-c", "sum(i * i for i in range(2_000_000))"], check=True)
    assert install.children_cpu_seconds() > before
