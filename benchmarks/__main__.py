"""Run every benchmark, each in its own process, and write one Markdown report.

Run: ``python -m benchmarks [--quick] [--output benchmarks/results.md] [--only headline export ...]``
(``make bench`` runs the full set into ``benchmarks/results.md``).

Each benchmark module runs in a fresh subprocess (some need one: the tfmot part of ``keras.py`` sets
``TF_USE_LEGACY_KERAS`` for its whole process, and a crash or a leaked thread pool must not touch the next
benchmark), in the order of :data:`BENCHMARKS`, headline first. Modules with an ``--output`` flag write
their Markdown there; the others (``ncnn_int8``, ``tflite``) return their table from ``main(argv)``, which
a small worker mode of this runner calls and saves. The report has the date, the machine (cores, CPU
model), the total time, a table of contents with each benchmark's status and time, then every section.
A benchmark that fails (non-zero exit, timeout, no output) appears as a failed section with the tail of
its log, the others still run, and the runner exits with status 1 at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TAIL_LINES = 40


@dataclass(frozen=True)
class Benchmark:
    """How to run one benchmark module.

    Args:
        name: short name (also the anchor in the report).
        module: the module to run (``python -m <module>``).
        title: one line saying what it measures.
        full: extra arguments of the full run.
        quick: extra arguments of the ``--quick`` run.
        collect: ``"output"`` (the module writes its Markdown to ``--output FILE``) or ``"return"`` (its
            ``main(argv)`` returns the text; a plain-text table is put in a code block).
    """

    name: str
    module: str
    title: str
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] = ("--quick",)
    collect: str = "output"


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        "headline",
        "benchmarks.headline",
        "speed at 224x224 (MobileNetV2, ResNet-50, ViT-tiny: 50% channels / int8 in three runtimes), then "
        "MobileNetV2 and digits CNN before -> after int8 + channel pruning + distillation (Lightning)",
    ),
    Benchmark(
        "peers",
        "benchmarks.peers",
        "fitslim int8 vs ORT quantize_static, the TFLite converter's int8 PTQ and ncnn fp32 (MobileNetV2-224)",
    ),
    Benchmark(
        "scaling",
        "benchmarks.scaling",
        "export wall time and peak memory vs parameters: MobileNetV2, ResNet-50, ~100M ViT, every target",
        quick=("--models", "mobilenet_v2", "--size", "96"),
    ),
    Benchmark(
        "export",
        "benchmarks.export",
        "every export target x precision: size, latency, agreement (MobileNetV2-160, digits CNN)",
    ),
    Benchmark(
        "ncnn_int8",
        "benchmarks.ncnn_int8",
        "ncnn int8 vs fp32 on MobileNetV2-160, with and without requantize fusion",
        quick=("--size", "96", "--repeats", "20"),
        collect="return",
    ),
    Benchmark(
        "tflite",
        "benchmarks.tflite",
        "LiteRT fp32 / fp16 / int8 on MobileNetV2-160 from Keras and from torch",
        quick=("--size", "96", "--repeats", "40", "--passes", "4"),
        collect="return",
    ),
    Benchmark(
        "pruning",
        "benchmarks.pruning",
        "fitslim Pruning vs plain training and Lightning ModelPruning: overhead, accuracy, resume, MobileNetV2",
    ),
    Benchmark(
        "distillation",
        "benchmarks.distillation",
        "digits student with and without a teacher: accuracy and step time",
    ),
    Benchmark(
        "distributed",
        "benchmarks.distributed",
        "Lightning callbacks under DDP (2 CPU processes, gloo): step time of each against plain DDP",
    ),
    Benchmark(
        "keras_distributed",
        "benchmarks.keras_distributed",
        "Keras callbacks under tf.distribute.MirroredStrategy (2 logical CPUs): step time against the plain fit",
        quick=("--steps", "20"),
    ),
    Benchmark(
        "keras",
        "benchmarks.keras",
        "Keras callbacks vs tfmot: pruning and QAT overhead, exported int8 accuracy",
    ),
    Benchmark(
        "zoo_keras",
        "benchmarks.zoo_keras",
        "Keras zoo families on digits: unstructured 50%, channel 50% and QAT accuracy against dense",
    ),
    Benchmark(
        "zoo_lightning",
        "benchmarks.zoo_lightning",
        "torch zoo families on digits (Lightning): unstructured 50%, channel 50% and QAT accuracy against dense",
    ),
)


@dataclass
class Outcome:
    """The result of one benchmark run."""

    bench: Benchmark
    ok: bool
    seconds: float
    command: list[str]
    markdown: str = ""
    error: str = ""
    log_tail: list[str] = field(default_factory=list)


# -- machine -------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model from ``/proc/cpuinfo``, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")) and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine() -> str:
    """One line describing the machine."""
    cores = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    cores_text = f"{cores} cores" if usable == cores else f"{cores} cores ({usable} usable)"
    return f"{cpu_model()}, {cores_text}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


# -- running -------------------------------------------------------------------------------------------


def command(bench: Benchmark, quick: bool, output: Path) -> list[str]:
    """The command line that runs ``bench`` and leaves its Markdown (or text) in ``output``."""
    args = list(bench.quick if quick else bench.full)
    if bench.collect == "output":
        return [sys.executable, "-m", bench.module, *args, "--output", str(output)]
    if bench.collect == "return":
        return [sys.executable, "-m", "benchmarks", "--call", bench.module, "--to", str(output), "--", *args]
    raise ValueError(f"Benchmark {bench.name}: collect={bench.collect!r}; use 'output' or 'return'.")


def _tail(text: str, n: int = TAIL_LINES) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.strip()][-n:]


def run_one(bench: Benchmark, quick: bool, timeout: float | None, log_dir: Path) -> Outcome:
    """Run one benchmark in a subprocess; never raises for a failing benchmark."""
    output = log_dir / f"{bench.name}.md"
    log_path = log_dir / f"{bench.name}.log"
    output.unlink(missing_ok=True)
    cmd = command(bench, quick, output)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    t0 = time.perf_counter()
    error = ""
    with log_path.open("w", encoding="utf-8") as log:
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
            if proc.returncode != 0:
                error = f"exit status {proc.returncode}"
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout:.0f} s"
    seconds = time.perf_counter() - t0
    log_text = log_path.read_text(encoding="utf-8", errors="replace")
    markdown = output.read_text(encoding="utf-8") if output.exists() else ""
    if not error and not markdown.strip():
        error = "finished without writing its results"
    shown = command(bench, quick, Path(f"{bench.name}.md"))  # reproducible without the log directory
    outcome = Outcome(bench, not error, seconds, shown, markdown, error)
    if error:
        outcome.log_tail = _tail(log_text)
    elif bench.collect == "return":
        outcome.markdown = "```\n" + markdown.strip("\n") + "\n```\n"
    return outcome


def demote_headings(markdown: str, levels: int = 2) -> str:
    """Push every Markdown heading down ``levels`` levels (outside code blocks), so sections nest."""
    out, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            line = "#" * levels + line
        out.append(line)
    return "\n".join(out)


# -- the report ----------------------------------------------------------------------------------------


def _display(cmd: Sequence[str]) -> str:
    """The command as a user would type it (``python``, paths relative to the repository)."""
    parts = ["python" if c == sys.executable else c for c in cmd]
    return " ".join(p.replace(str(ROOT) + os.sep, "") for p in parts)


def report(
    outcomes: list[Outcome], quick: bool, started: dt.datetime, total: float, pending: Sequence[Benchmark] = ()
) -> str:
    """The whole Markdown report."""
    failed = [o for o in outcomes if not o.ok]
    lines = [
        "# fitslim benchmark results",
        "",
        f"- Date: {started.strftime('%Y-%m-%d %H:%M %Z').strip()}",
        f"- Machine: {machine()}",
        f"- Mode: {'quick (`--quick`: short runs, for a smoke test; not the reference figures)' if quick else 'full'}",
        f"- Total time: {total / 60:.1f} min ({total:.0f} s)",
        f"- Status: {len(outcomes) - len(failed)} ok, {len(failed)} failed"
        + (f", {len(pending)} not run yet" if pending else ""),
        "",
        "Generated by `python -m benchmarks" + (" --quick" if quick else "") + "`; each benchmark ran in its own "
        "process, one after the other, so the figures of different sections were taken at different times.",
        "",
        "## Contents",
        "",
        "| # | benchmark | measures | status | time |",
        "|---|---|---|---|---|",
    ]
    for i, o in enumerate(outcomes, 1):
        status = "ok" if o.ok else f"**FAILED** ({o.error})"
        lines.append(f"| {i} | [{o.bench.name}](#{o.bench.name}) | {o.bench.title} | {status} | {o.seconds:.0f} s |")
    for j, b in enumerate(pending, len(outcomes) + 1):
        lines.append(f"| {j} | {b.name} | {b.title} | not run yet | |")
    lines.append("")
    for i, o in enumerate(outcomes, 1):
        lines += [
            f'<a id="{o.bench.name}"></a>',
            "",
            f"## {i}. {o.bench.name}: {o.bench.title}",
            "",
            f"`{_display(o.command)}`: {'ok' if o.ok else 'FAILED, ' + o.error}, {o.seconds:.0f} s.",
            "",
        ]
        if o.ok:
            lines += [demote_headings(o.markdown).rstrip("\n"), ""]
        else:
            if o.markdown.strip():
                lines += ["Partial output:", "", demote_headings(o.markdown).rstrip("\n"), ""]
            lines += [f"Last {len(o.log_tail)} lines of its log:", "", "```", *o.log_tail, "```", ""]
    return "\n".join(lines)


def run_all(
    benchmarks: Sequence[Benchmark], quick: bool, output: Path | None, timeout: float | None, log_dir: Path
) -> list[Outcome]:
    """Run ``benchmarks`` in order, rewriting ``output`` after each (partial results survive a crash)."""
    started = dt.datetime.now().astimezone()
    t0 = time.perf_counter()
    log_dir.mkdir(parents=True, exist_ok=True)
    outcomes: list[Outcome] = []
    for i, bench in enumerate(benchmarks, 1):
        print(f"[{i}/{len(benchmarks)}] {bench.name}: running", file=sys.stderr, flush=True)
        outcome = run_one(bench, quick, timeout, log_dir)
        outcomes.append(outcome)
        status = "ok" if outcome.ok else f"FAILED ({outcome.error}); log: {log_dir / (bench.name + '.log')}"
        print(f"[{i}/{len(benchmarks)}] {bench.name}: {status}, {outcome.seconds:.0f} s", file=sys.stderr, flush=True)
        if output is not None:
            text = report(outcomes, quick, started, time.perf_counter() - t0, benchmarks[i:])
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(text + "\n", encoding="utf-8")
    return outcomes


def call(module: str, argv: list[str], to: Path) -> None:
    """Worker mode: call ``module.main(argv)`` and save the text it returns."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("absl", "tensorflow", "tf2onnx", "onnx_ir", "exporters", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    text = importlib.import_module(module).main(argv)
    if not isinstance(text, str):
        raise TypeError(f"{module}.main(argv) returned {type(text).__name__}, not the report text")
    to.write_text(text, encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (1 when a benchmark failed)."""
    raw = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if "--" in raw:
        cut = raw.index("--")
        raw, rest = raw[:cut], raw[cut + 1 :]
    names = [b.name for b in BENCHMARKS]
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every benchmark's short mode (a smoke test)")
    parser.add_argument("--output", type=Path, default=None, help="write the Markdown report here")
    parser.add_argument("--only", nargs="+", choices=names, default=None, help="run only these benchmarks")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed per benchmark (default: none)")
    parser.add_argument("--logs", type=Path, default=None, help="keep each benchmark's log and output here")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--call", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--to", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(raw)
    if args.call:
        if args.to is None:
            parser.error("--call needs --to FILE")
        call(args.call, rest, args.to)
        return 0
    if rest:
        parser.error(f"unexpected arguments after --: {rest}")
    chosen = [b for b in BENCHMARKS if args.only is None or b.name in args.only]
    if args.list:
        for b in chosen:
            print(f"{b.name:<13} {_display(command(b, args.quick, Path('OUT')))}\n{'':<13} {b.title}")
        return 0
    log_dir = args.logs or Path(tempfile.mkdtemp(prefix="fitslim-bench-logs-"))
    t0 = time.perf_counter()
    outcomes = run_all(chosen, args.quick, args.output, args.timeout, log_dir)
    failed = [o.bench.name for o in outcomes if not o.ok]
    where = f"; report: {args.output}" if args.output else ""
    print(
        f"{len(outcomes) - len(failed)} of {len(outcomes)} benchmarks ok in {time.perf_counter() - t0:.0f} s{where}"
        + (f"; failed: {', '.join(failed)}" if failed else ""),
        file=sys.stderr,
    )
    if args.output is None:
        print(report(outcomes, args.quick, dt.datetime.now().astimezone(), time.perf_counter() - t0))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
