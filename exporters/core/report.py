"""The export report: one row per target, printed as a table and saved as JSON and Markdown.

Example:
    >>> r = ExportReport(source="torch DigitsCNN", results=[TargetResult("onnx", "fp32", status="ok",
    ...     files=["model.onnx"], size_bytes=23_000, max_abs_error=1e-6, max_rel_error=2e-7)])
    >>> r.ok, r["onnx"].size_bytes
    (True, 23000)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fitslim.fileio import atomic_write_text

__all__ = ["ExportReport", "TargetResult", "STATUSES"]

STATUSES = ("ok", "unverified", "mismatch", "failed", "skipped")


@dataclass
class TargetResult:
    """The outcome of one target at one precision.

    Args:
        target: ``onnx``, ``ncnn``, ``tflite`` or ``tensorrt``.
        precision: ``fp32``, ``fp16`` or ``int8``.
        status: ``ok`` (written, run in its runtime and within its precision's bounds), ``unverified``
            (written but not run or compared: ``export(..., verify=False)``, or a precision no runtime here
            executes; ``reason`` says which), ``mismatch`` (written, but its outputs are not finite or out of
            bounds, or it is not what the precision promises: ``reason`` says how; the files stay for
            inspection), ``failed`` (``reason`` says why) or ``skipped`` (``reason`` says why).
        files: artifact paths relative to the export directory (also for a ``mismatch``, or a ``failed``
            artifact kept for inspection).
        size_bytes: total size of the artifact files.
        max_abs_error: largest absolute difference from the source model's outputs.
        max_rel_error: ``max_abs_error`` divided by the largest absolute source output.
        top1_agreement: share of samples whose arg-max agrees with the source (logit-like outputs only).
        latency_ms: median latency of one single-sample inference in the runtime.
        threads: threads the runtime used for the latency.
        runtime: the runtime (and version) that verified the artifact.
        scales: for int8, where the scales came from (learned QuantSpec used exactly, or re-calibrated and why).
        reason: why the target failed or was skipped.
        notes: anything else worth knowing (ops kept in float, commands to build an engine elsewhere).
        samples: how many inputs the verification compared.
        spread_error: RMS error relative to the source outputs' input-to-input spread (see exporters.core.verify).
        decisive_top1: top-1 agreement over the samples whose top-2 margin is meaningful.
        decisive_samples: how many samples were decisive.
        fp32_latency_ms: for an fp16 / int8 artifact, the median latency of the fp32 artifact of the same target in
            the same runtime, timed interleaved with this one in one run (:mod:`exporters.core.latency`).
        latency_ratio: ``latency_ms / fp32_latency_ms`` from that run (below 1: faster than fp32).
        latency_verdict: ``faster``, ``same`` or ``slower`` than fp32 on this machine, outside a noise band of
            :data:`exporters.core.latency.NOISE_BAND` (``""`` when not measured).
        latency_peer: what the fp32 side was, e.g. ``fp32 ncnn built for comparison``.
    """

    target: str
    precision: str
    status: str = "ok"
    files: list[str] = field(default_factory=list)
    size_bytes: int | None = None
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    top1_agreement: float | None = None
    latency_ms: float | None = None
    threads: int | None = None
    runtime: str = ""
    scales: str = ""
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    samples: int = 0
    spread_error: float | None = None
    decisive_top1: float | None = None
    decisive_samples: int = 0
    fp32_latency_ms: float | None = None
    latency_ratio: float | None = None
    latency_verdict: str = ""
    latency_peer: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"TargetResult.status must be one of {STATUSES}; got {self.status!r}.")

    @property
    def ok(self) -> bool:
        """True when the artifact was written, run in its runtime and matched the source within its bounds.

        An ``unverified`` artifact is not ok: nothing checked it (see :attr:`written`).
        """
        return self.status == "ok"

    @property
    def written(self) -> bool:
        """True when the artifact is usable as far as fitslim knows: ``ok``, or written and ``unverified``."""
        return self.status in ("ok", "unverified")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.2f} MB"
    return f"{n / 1024:.1f} KB"


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _vs_fp32(r: TargetResult) -> str:
    if r.latency_ratio is None:
        return "-"
    return f"{r.latency_ratio:.2f}x ({r.latency_verdict})" if r.latency_verdict else f"{r.latency_ratio:.2f}x"


@dataclass
class ExportReport:
    """All targets of one export; ``str(report)`` is a table.

    Args:
        results: one :class:`TargetResult` per target.
        source: a description of the source model.
        directory: where the artifacts and the report files are.
        verification: which inputs the artifacts were verified on, e.g. ``64 validation samples``.
    """

    results: list[TargetResult] = field(default_factory=list)
    source: str = ""
    directory: str = ""
    verification: str = ""

    @property
    def ok(self) -> bool:
        """True when every target was written and verified within its bounds.

        False as soon as one target is ``unverified``; the CLI then still exits 0 when every target was written
        (``--no-verify`` asked for it), after saying which artifacts nothing checked.
        """
        return bool(self.results) and all(r.ok for r in self.results)

    @property
    def unverified(self) -> list[TargetResult]:
        """The targets whose artifact was written but not run in its runtime and compared with the source."""
        return [r for r in self.results if r.status == "unverified"]

    @property
    def failures(self) -> list[TargetResult]:
        """The targets that failed."""
        return [r for r in self.results if r.status == "failed"]

    @property
    def mismatches(self) -> list[TargetResult]:
        """The targets whose artifact was written but does not match the source (not finite or out of bounds)."""
        return [r for r in self.results if r.status == "mismatch"]

    @property
    def slower_than_fp32(self) -> list[TargetResult]:
        """The fp16 / int8 artifacts that ran slower than the fp32 artifact of their target on this machine."""
        return [r for r in self.results if r.latency_verdict == "slower"]

    def __iter__(self) -> Iterator[TargetResult]:
        return iter(self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, target: str) -> TargetResult:
        for r in self.results:
            if r.target == target:
                return r
        raise KeyError(f"no result for target {target!r}; targets: {[r.target for r in self.results]}")

    def rows(self) -> list[list[str]]:
        """Header and rows of the table, as strings."""
        head = [
            "target",
            "precision",
            "status",
            "file",
            "size",
            "max abs err",
            "max rel err",
            "top-1",
            "latency",
            "vs fp32",
        ]
        out = [head]
        for r in self.results:
            latency = "-" if r.latency_ms is None else f"{r.latency_ms:.3f} ms ({r.threads} thr)"
            top1 = "-" if r.top1_agreement is None else f"{r.top1_agreement * 100:.1f}%"
            out.append(
                [
                    r.target,
                    r.precision,
                    r.status,
                    ", ".join(r.files) or "-",
                    _size(r.size_bytes),
                    _num(r.max_abs_error, ".2e"),
                    _num(r.max_rel_error, ".2e"),
                    top1,
                    latency,
                    _vs_fp32(r),
                ]
            )
        return out

    def _footnotes(self) -> list[str]:
        lines = []
        for r in self.results:
            if r.reason:
                lines.append(f"{r.target} ({r.precision}) {r.status}: {r.reason}")
            if r.scales:
                lines.append(f"{r.target} ({r.precision}) scales: {r.scales}")
            lines.extend(f"{r.target} ({r.precision}): {n}" for n in r.notes)
        return lines

    def __str__(self) -> str:
        rows = self.rows()
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = [f"Export of {self.source}" + (f" into {self.directory}" if self.directory else "")]
        if self.verification:
            lines.append(f"Verified on {self.verification}")
        for i, row in enumerate(rows):
            lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths))
        lines.extend(self._footnotes())
        return "\n".join(lines)

    def to_markdown(self) -> str:
        """The table as Markdown, with the notes below it."""
        rows = self.rows()
        md = [f"# Export report\n\nSource: {self.source}\n"]
        if self.verification:
            md.append(f"Verified on {self.verification}\n")
        md.append("| " + " | ".join(rows[0]) + " |")
        md.append("|" + "---|" * len(rows[0]))
        md.extend("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows[1:])
        notes = self._footnotes()
        if notes:
            md.append("")
            md.extend(f"- {n}" for n in notes)
        return "\n".join(md) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "source": self.source,
            "directory": self.directory,
            "verification": self.verification,
            "results": [r.to_dict() for r in self.results],
        }

    def to_json(self) -> str:
        """The report as JSON text."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExportReport:
        """Inverse of :meth:`to_dict`."""
        return cls(
            results=[TargetResult(**r) for r in d.get("results", [])],
            source=d.get("source", ""),
            directory=d.get("directory", ""),
            verification=d.get("verification", ""),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ExportReport:
        """Read ``report.json`` (or a directory that holds one)."""
        p = Path(path)
        if p.is_dir():
            p = p / "report.json"
        if not p.is_file():
            raise FileNotFoundError(f"no export report at {str(p)!r}; run an export first.")
        return cls.from_dict(json.loads(p.read_text(encoding="utf-8")))

    def save(self, directory: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
        """Write ``report.json`` and ``report.md`` atomically; returns both paths."""
        d = Path(directory if directory is not None else self.directory)
        return atomic_write_text(d / "report.json", self.to_json()), atomic_write_text(
            d / "report.md", self.to_markdown()
        )
