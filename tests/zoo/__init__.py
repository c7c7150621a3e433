"""A zoo of real architectures built from configs with random weights (no downloads).

``torch_zoo.CASES`` and ``keras_zoo.CASES`` map a case name to a :class:`ZooCase`. ``ci=True`` marks
the one small config per family that ``make test`` runs; ``make zoo`` (``FITSLIM_ZOO=full``) runs all.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LOCATED", "ZooCase", "check_report", "full_zoo", "select"]

#: what an int8 ``mismatch`` reason must say: where the int8 error starts (``exporters.verify.locate_int8_error``)
LOCATED = r"int8 error (first becomes large at '[^']+' \(\w+|builds up over \d+ layers)"


@dataclass(frozen=True)
class ZooCase:
    """One architecture: how to build it and what to feed it.

    ``build()`` returns a fresh model with random weights and data-like normalization statistics.
    ``inputs(batch, seed)`` returns one array (or a tuple of arrays for multi-input models) with the
    model's own dtypes. ``kind`` is ``"vision"`` or ``"text"``.
    """

    name: str
    family: str
    build: Callable[[], Any]
    inputs: Callable[[int, int], Any]
    kind: str = "vision"
    ci: bool = False
    tags: tuple[str, ...] = field(default_factory=tuple)


def full_zoo() -> bool:
    """True when the whole matrix was asked for (``FITSLIM_ZOO=full``, what ``make zoo`` sets)."""
    return os.environ.get("FITSLIM_ZOO", "").lower() == "full"


def select(cases: dict[str, ZooCase]) -> list[ZooCase]:
    """The cases this run covers: every case under ``make zoo``, the ``ci`` subset otherwise."""
    return [c for c in cases.values() if c.ci or full_zoo()]


def image_batch(shape: tuple[int, ...]) -> Callable[[int, int], np.ndarray]:
    """Inputs for an image model: standard-normal float32 of ``(batch, *shape)``."""

    def make(batch: int, seed: int) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)

    return make


def token_batch(vocab: int, length: int) -> Callable[[int, int], tuple[np.ndarray, np.ndarray]]:
    """Inputs for a text model: int64 ``input_ids`` and an int64 ``attention_mask`` with padding."""

    def make(batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        ids = rng.integers(1, vocab, size=(batch, length), dtype=np.int64)
        mask = np.ones((batch, length), np.int64)
        for i in range(batch):
            keep = int(rng.integers(length // 2, length + 1))
            mask[i, keep:] = 0
            ids[i, keep:] = 0
        return ids, mask

    return make


def _figures(row: Any) -> str:
    if row.top1_agreement is None:
        return f"rel err {row.max_rel_error or 0:.0e}, spread err {row.spread_error or 0:.2f}"
    decisive = ""
    if row.decisive_top1 is not None:
        decisive = f", {row.decisive_top1 * 100:.0f}% of {row.decisive_samples} decisive"
    return f"top-1 {row.top1_agreement * 100:.0f}%{decisive}, spread err {row.spread_error or 0:.2f}"


def cell_detail(row: Any) -> str:
    """A support-table cell's text for one report row: the reason, or how close the artifact is.

    A mismatch gives its figures and, for int8, where the error originates (the reason's ``int8 error ...``
    clause).
    """
    if row.status == "mismatch" and row.max_abs_error is not None and np.isfinite(row.max_abs_error):
        reason = str(row.reason.splitlines()[0]) if row.reason else ""
        where = reason[reason.index("int8 error") :] if "int8 error" in reason else ""
        rel = f"rel err {row.max_rel_error:.1e}, " if row.precision != "int8" and row.max_rel_error is not None else ""
        return rel + _figures(row) + (f"; {where}" if where else "")
    if row.status != "ok":
        return str(row.reason.splitlines()[0]) if row.reason else str(row.status)
    if row.precision == "int8" and row.top1_agreement is not None:
        return _figures(row)
    return f"rel err {row.max_rel_error or 0:.0e}"


def check_report(
    report: Any,
    framework: str,
    name: str,
    precision: str,
    expected: dict[tuple[str, str, str], tuple[str, str]],
    record: Callable[..., None],
    directory: Path,
) -> list[str]:
    """Record every row of an export report as a table cell; return the rows that break expectations.

    A row with no entry in ``expected`` must be ok; one with an entry must have that status and a reason
    matching its pattern, or be ok where a ``mismatch`` was expected (random-weight int8 cells near the bound
    may pass on another machine; passing is never a defect). A mismatch must keep its artifact, named in the
    report.
    """
    problems = []
    for row in report:
        record(framework, name, f"{row.target} {precision}", row.status, cell_detail(row))
        want = expected.get((name, row.target, precision))
        if want is None:
            if not row.ok:
                problems.append(f"{row.target} {precision}: {row.status}: {row.reason}")
            continue
        status, pattern = want
        if status == "mismatch" and row.ok:
            continue
        if row.status != status or not re.search(pattern, row.reason):
            problems.append(f"{row.target} {precision}: expected {status} /{pattern}/, got {row.status}: {row.reason}")
        if row.status == "mismatch" and not (row.files and all((directory / f).is_file() for f in row.files)):
            problems.append(f"{row.target} {precision}: a mismatch must keep its artifact; files {row.files}")
    return problems
