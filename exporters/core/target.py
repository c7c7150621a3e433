"""The one interface every export target implements, and the checks the core runs on every artifact.

A target module (``exporters.targets.<name>``) registers a :class:`Target`: ``write`` turns an
:class:`~exporters.core.job.ExportJob` into an :class:`Artifact` (its files and the report row so far), and
``runner`` loads artifact files in the target's runtime as a :class:`Runner`. :func:`check` then does, the same way
for every target: compare the artifact with the source on the job's samples and time it (:func:`measure`), give an
fp16 / int8 artifact its latency verdict against the target's fp32 artifact (:func:`latency_verdict`), run the
target's own last check, and install files written to scratch under their final names (:func:`install`).
:mod:`exporters.core.runtimes` runs a report's artifacts through the same runners.

Example:
    >>> sorted(registered())  # the targets register themselves when ``exporters`` is imported
    ['ncnn', 'onnx', 'tensorrt', 'tflite']
    >>> lookup("ncnn").suffixes
    ('.param', '.bin')
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from exporters.core import latency
from exporters.core.inputs import Inputs, take
from exporters.core.job import ExportJob
from exporters.core.report import TargetResult
from exporters.core.verify import compare, fill_agreement, median_latency_ms

__all__ = [
    "Artifact",
    "Runner",
    "RunnerFactory",
    "Target",
    "check",
    "install",
    "latency_verdict",
    "lookup",
    "measure",
    "register",
    "registered",
]

log = logging.getLogger(__name__)


class Runner(Protocol):
    """An artifact loaded once in its runtime."""

    def __call__(self, x: Inputs) -> npt.NDArray[np.float32]:
        """The outputs for a batch of inputs (batch first), one row per sample."""
        ...

    def timed(self, one: Inputs) -> Callable[[], object]:
        """A call without arguments that runs the one-sample batch ``one``, prepared (what latency times)."""
        ...


class RunnerFactory(Protocol):
    """Loads artifact files (in :attr:`Target.suffixes` order) at a precision with a thread count."""

    def __call__(self, paths: Sequence[Path], precision: str, threads: int, batch: int = 256) -> Runner:
        """The loaded artifact; ``batch``: how many samples a batched runtime runs at once."""
        ...


@dataclass
class Artifact:
    """What a target's writer gives back: the report row so far and the files to check.

    Args:
        result: the row: target, precision, final file names, size, runtime, notes; the core fills the
            agreement and latency.
        paths: the files the target's runner loads, in :attr:`Target.suffixes` order.
        finals: where :func:`install` puts ``paths`` after the checks (None: ``paths`` are already final).
        fp32_peer: the fp32 artifact of the same target for the latency verdict: ``() -> (paths, description)``;
            None: no verdict (a note says why where it matters).
        slower: ``(runner, fp32 runner, one sample) -> (costliest layers, hint)`` for the warning of an artifact
            slower than its fp32 peer.
        finish: the target's own last check, after the comparison (it runs with ``verify=False`` too).
        keep: turns a failure of the checks into the error to raise (e.g. naming where the files are kept).
        scratch: a folder of the writer's, removed once the artifact is checked and installed (or has failed).
    """

    result: TargetResult
    paths: list[Path]
    finals: list[Path] | None = None
    fp32_peer: Callable[[], tuple[list[Path], str]] | None = None
    slower: Callable[[Runner, Runner, Inputs], tuple[list[str], str]] | None = None
    finish: Callable[[], None] | None = None
    keep: Callable[[Exception], Exception] | None = None
    scratch: Path | None = None


@dataclass
class Target:
    """One export target.

    Args:
        name: the target's name in ``export(targets=...)``.
        extra: the pip extra that installs its converter and runtime.
        write: ``job -> Artifact``; raises when the artifact cannot be written.
        runner: loads artifact files in the target's runtime.
        suffixes: the file endings of a report row the runner takes, in order.
        layout: ``"NCHW"``: the runner takes NCHW images; ``"source"``: the source's layout.
        needs_onnx: the target starts from the shared ONNX.
    """

    name: str
    extra: str
    write: Callable[[ExportJob], Artifact]
    runner: RunnerFactory
    suffixes: tuple[str, ...]
    layout: str = "NCHW"
    needs_onnx: bool = True


_REGISTRY: dict[str, Target] = {}


def register(target: Target) -> Target:
    """Make ``target`` known to :func:`exporters.export` and :mod:`exporters.core.runtimes` (by its name)."""
    _REGISTRY[target.name] = target
    return target


def registered() -> dict[str, Target]:
    """The registered targets by name."""
    return dict(_REGISTRY)


def lookup(name: str) -> Target:
    """The registered target called ``name``.

    Raises:
        ValueError: no such target.
    """
    if name not in _REGISTRY:
        raise ValueError(f"target {name!r}: no runtime for it; choose {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name]


def samples_for(job: ExportJob, target: Target) -> Inputs:
    """The verification samples in the layout ``target``'s runner takes."""
    return job.samples if target.layout == "source" else job.samples_nchw()


def measure(job: ExportJob, result: TargetResult, run: Runner, x: Inputs) -> None:
    """Compare ``run``'s outputs on ``x`` with the source's (``job.reference``) and time one sample: the row gets
    its agreement, status (ok / mismatch), ``latency_ms`` and ``threads``.

    Raises:
        ValueError: the outputs do not have the source's shape (nor its element count).
    """
    reference = np.asarray(job.reference)
    out = np.asarray(run(x), dtype=np.float32)
    if out.shape != reference.shape:
        if out.size != reference.size:
            raise ValueError(
                f"the artifact's output has shape {tuple(out.shape[1:])} per sample; the source model's is "
                f"{tuple(reference.shape[1:])} (a layout or conversion bug)."
            )
        # runtimes drop unit axes (ncnn returns a (1, 10) output as (10,)); the element order is the same
        out = out.reshape(reference.shape)
    fill_agreement(result, compare(reference, out))
    result.latency_ms = median_latency_ms(run.timed(take(x, 0, 1)))
    result.threads = job.threads


def latency_verdict(job: ExportJob, target: Target, artifact: Artifact, run: Runner, x: Inputs) -> None:
    """Time an fp16 / int8 artifact against the fp32 artifact of its target, interleaved (:mod:`.latency`).

    The row gets ``fp32_latency_ms``, ``latency_ratio`` and ``latency_verdict``, and a warning naming the costliest
    layers when it is slower. The fp32 peer is built for the comparison only. A failure here loses only the verdict.
    """
    result = artifact.result
    if job.precision == "fp32" or artifact.fp32_peer is None or result.latency_ms is None:
        return
    try:
        peer_paths, peer = artifact.fp32_peer()
        fp32 = target.runner(peer_paths, "fp32", job.threads)
        one = take(x, 0, 1)
        latency.compare_with_fp32(result, run.timed(one), fp32.timed(one), peer, job.threads)
        if result.latency_verdict == "slower":
            costly, hint = artifact.slower(run, fp32, one) if artifact.slower is not None else ([], "")
            latency.warn_slower(result, costly, hint)
    except Exception as err:  # the artifact is verified; only the comparison is lost
        log.warning("%s %s: no latency verdict (%s: %s)", target.name, job.precision, type(err).__name__, err)


def check(job: ExportJob, target: Target, artifact: Artifact) -> TargetResult:
    """Verify ``artifact`` in its runtime (when ``job.verify``), judge and time it, give it its latency verdict,
    run the target's last check, then install it; returns its report row.

    Raises:
        Exception: what the runtime, the comparison or the target's check raised (through ``artifact.keep``).
    """
    result = artifact.result
    try:
        try:
            if job.verify:
                x = samples_for(job, target)
                run = target.runner(artifact.paths, job.precision, job.threads)
                measure(job, result, run, x)
                if job.options.latency and result.latency_ratio is None:
                    latency_verdict(job, target, artifact, run, x)
            if artifact.finish is not None:
                artifact.finish()
        except (RuntimeError, ValueError) as err:
            if artifact.keep is None:
                raise
            raise artifact.keep(err) from err
        if artifact.finals is not None:
            install(list(zip(artifact.paths, artifact.finals, strict=True)))
            result.files = [p.name for p in artifact.finals]
            result.size_bytes = sum(p.stat().st_size for p in artifact.finals)
        return result
    finally:
        if artifact.scratch is not None:
            shutil.rmtree(artifact.scratch, ignore_errors=True)


def install(pairs: list[tuple[Path, Path]]) -> None:
    """Copy each ``(source, destination)`` beside its destination, then rename all: all or nothing.

    When a rename fails after another succeeded, every destination is removed, so a new ``.param`` never
    sits beside an old ``.bin``; when the first rename fails, whatever was there stays untouched.
    """
    umask = os.umask(0)
    os.umask(umask)
    staged: list[Path] = []
    done: list[Path] = []
    try:
        for src, dst in pairs:
            dst.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent)
            os.close(fd)
            staged.append(Path(name))
            shutil.copyfile(src, name)
            os.chmod(name, 0o666 & ~umask)
        for tmp, (_, dst) in zip(staged, pairs, strict=True):
            os.replace(tmp, dst)
            done.append(dst)
    except BaseException:
        if done:  # never leave half a model under its final names (nor an older file beside a new one)
            for _, dst in pairs:
                dst.unlink(missing_ok=True)
        raise
    finally:
        for tmp in staged:
            tmp.unlink(missing_ok=True)
