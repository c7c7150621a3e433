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

__all__ = [
    "LOCATED", "Record", "ZooCase", "assert_listed_mismatches_bounded", "check_expected_mismatch", "check_report",
    "full_zoo", "recorded", "select", "within_record",
]  # fmt: skip

#: what an int8 ``mismatch`` reason must say: where the int8 error starts (``exporters.core.verify.locate_int8_error``)
LOCATED = r"int8 error (first becomes large at '[^']+' \(\w+|builds up over \d+ layers)"

#: the support table ``make zoo`` writes: its figures bound the cells listed as expected mismatches
SUPPORT_TABLE = Path(__file__).resolve().parents[2] / "docs" / "zoo-support.md"

#: how much worse than its recorded figures an expected mismatch may be: max relative error up to 4x the record,
#: top-1 agreement down to half of it, spread error up to 1.5x the record plus 0.1. Room for another CPU's
#: rounding (int8 kernels with and without VNNI, oneDNN on and off), not for NaN, 0% or unrelated outputs.
REL_ERROR_FACTOR, TOP1_FACTOR, SPREAD_FACTOR, SPREAD_SLACK = 4.0, 0.5, 1.5, 0.1


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


@dataclass(frozen=True)
class Record:
    """A support-table cell's recorded figures (None: the cell does not give it).

    ``decisive_top1`` comes only from a cell that quotes the verification's own reason (``top-1 agreement 28.6% on
    14 decisive samples``), as the callback columns recorded before they wrote :func:`cell_detail`.
    """

    status: str
    rel_error: float | None = None
    top1: float | None = None
    spread_error: float | None = None
    decisive_top1: float | None = None

    @classmethod
    def parse(cls, status: str, detail: str) -> Record:
        """The figures of a cell as :func:`cell_detail` writes them (``rel err 2.2e-04, top-1 100%, ...``)."""
        figures = detail.split(";")[0]
        rel = re.search(r"\brel err ([0-9.]+e[-+]?\d+|[0-9.]+)", figures)
        top1 = re.match(r"(?:rel err \S+ )?top-1 (\d+(?:\.\d+)?)%", figures.replace(",", ""))
        spread = re.search(r"\bspread err ([0-9.]+)", figures)
        decisive = None
        if not (rel or top1 or spread):  # a cell quoting the verification's reason (older callback cells)
            spread = re.search(r"\bRMS error ([0-9.]+) of the outputs' input-to-input spread", detail)
            decisive = re.search(r"\btop-1 agreement ([0-9.]+)% on \d+ decisive samples", detail)
        return cls(
            status,
            float(rel.group(1)) if rel else None,
            float(top1.group(1)) / 100 if top1 else None,
            float(spread.group(1)) if spread else None,
            float(decisive.group(1)) / 100 if decisive else None,
        )


_RECORDS: dict[Path, dict[tuple[str, str, str], tuple[str, str]]] = {}


def recorded(framework: str, case: str, column: str, table: Path | None = None) -> Record | None:
    """A cell's figures in the support table (``table``, default :data:`SUPPORT_TABLE`); None when not recorded."""
    from tests.zoo.table import parse

    path = table or SUPPORT_TABLE
    if path not in _RECORDS:
        _RECORDS[path] = parse(path.read_text(encoding="utf-8")) if path.is_file() else {}
    cell = _RECORDS[path].get((framework, case, column))
    return Record.parse(*cell) if cell is not None else None


def within_record(row: Any, record: Record | None) -> str:
    """Why an expected-mismatch row is worse than its recorded figures allow (empty when it is within them).

    The bounds are the record with the margins above (:data:`REL_ERROR_FACTOR`, ...): a NaN, all-wrong or
    unrelated artifact in a listed cell fails, as does a listed cell with no recorded figure to bound it.
    """
    if row.max_abs_error is None or not np.isfinite(row.max_abs_error):
        return "outputs not finite or not compared"
    figures = record and [record.rel_error, record.top1, record.spread_error, record.decisive_top1]
    if record is None or not figures or all(f is None for f in figures):
        return "no recorded figure bounds this expected mismatch: record the cell (make zoo) in docs/zoo-support.md"
    why = []
    if record.rel_error is not None and (row.max_rel_error or 0.0) > REL_ERROR_FACTOR * record.rel_error:
        why.append(f"max relative error {row.max_rel_error:.1e} over {REL_ERROR_FACTOR:g}x the recorded "
                   f"{record.rel_error:.1e}")  # fmt: skip
    if record.top1 is not None and (row.top1_agreement is None or row.top1_agreement < TOP1_FACTOR * record.top1):
        got = "none" if row.top1_agreement is None else f"{row.top1_agreement * 100:.0f}%"
        why.append(f"top-1 agreement {got} under {TOP1_FACTOR:g}x the recorded {record.top1 * 100:.0f}%")
    decisive = record.decisive_top1
    if decisive is not None and (row.decisive_top1 is None or row.decisive_top1 < TOP1_FACTOR * decisive):
        got = "none" if row.decisive_top1 is None else f"{row.decisive_top1 * 100:.0f}%"
        why.append(f"decisive top-1 agreement {got} under {TOP1_FACTOR:g}x the recorded {decisive * 100:.1f}%")
    bound = SPREAD_FACTOR * (record.spread_error or 0.0) + SPREAD_SLACK
    if record.spread_error is not None and (row.spread_error is None or row.spread_error > bound):
        why.append(f"spread error {row.spread_error} over {bound:.2f} (recorded {record.spread_error:.2f})")
    return "; ".join(why)


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
    table: Path | None = None,
) -> list[str]:
    """Record every row of an export report as a table cell; return the rows that break expectations.

    A row with no entry in ``expected`` must be ok, or ``unverified`` with its files written and a reason (a
    precision no runtime here runs, e.g. a TensorRT fp16 file without TensorRT). One with an entry must have
    that status and a reason matching its pattern, or be ok where a ``mismatch`` was expected (random-weight int8
    cells near the bound may pass on another machine; passing is never a defect). An expected mismatch must stay
    within its recorded figures in the support table (``table``, default :data:`SUPPORT_TABLE`) with the margins
    of :func:`within_record`, and keep its artifact, named in the report.
    """
    problems = []
    for row in report:
        column = f"{row.target} {precision}"
        record(framework, name, column, row.status, cell_detail(row))
        want = expected.get((name, row.target, precision))
        if want is None:
            if row.status == "unverified" and row.reason and row.files:
                if not all((directory / f).is_file() for f in row.files):
                    problems.append(f"{column}: an unverified artifact must be written; files {row.files}")
            elif not row.ok:
                problems.append(f"{column}: {row.status}: {row.reason}")
            continue
        status, pattern = want
        if status == "mismatch" and row.ok:
            continue
        if row.status != status or not re.search(pattern, row.reason):
            problems.append(f"{column}: expected {status} /{pattern}/, got {row.status}: {row.reason}")
        if row.status == "mismatch":
            worse = within_record(row, recorded(framework, name, column, table))
            if worse:
                problems.append(f"{column}: expected mismatch beyond its record: {worse}")
            if not (row.files and all((directory / f).is_file() for f in row.files)):
                problems.append(f"{column}: a mismatch must keep its artifact; files {row.files}")
    return problems


def assert_listed_mismatches_bounded(framework: str, names: Any, cases: Any, column: str = "qat+export int8") -> None:
    """Each listed expected-mismatch case has figures in the support table under ``column``, and is bounded by them:
    a row at its record passes :func:`within_record`, a NaN row does not."""
    from exporters.core.report import TargetResult

    assert set(names) <= set(cases), set(names) - set(cases)
    for name in sorted(names):
        record = recorded(framework, name, column)
        assert record is not None and record.status == "mismatch", (name, record)
        at_record = TargetResult("tensorrt", "int8", status="mismatch", max_abs_error=1.0,
                                 max_rel_error=record.rel_error, top1_agreement=record.top1,
                                 spread_error=record.spread_error, decisive_top1=record.decisive_top1)  # fmt: skip
        assert within_record(at_record, record) == "", (name, record)  # bounded: it has a figure, and passes at it
        nan = TargetResult("tensorrt", "int8", status="mismatch", max_abs_error=float("nan"))
        assert "not finite" in within_record(nan, record)


def check_expected_mismatch(
    row: Any, framework: str, case: str, column: str, directory: Path, table: Path | None = None
) -> list[str]:
    """Why a row in a cell listed as an expected int8 ``mismatch`` breaks that expectation (empty: it keeps it).

    What the callback zoo (``tests/zoo/test_*_callbacks.py``) asks of a listed cell, with the bound
    :func:`check_report` puts on the export zoo's: the row is ``ok`` (passing is never a defect), or a ``mismatch``
    whose reason says where the int8 error starts (:data:`LOCATED`), whose artifact stays in ``directory``, and
    whose figures stay within the cell's record in the support table (``table``, default :data:`SUPPORT_TABLE`;
    :func:`within_record`), so a NaN, 0% or unrelated artifact fails, as does a listed cell with no record.

    Args:
        row: the report row (an ``exporters.core.report.TargetResult``).
        framework: the support table's section, ``torch`` or ``keras``.
        case: the zoo case, the table's row.
        column: the table's column, as the test records the cell (``qat+export int8``).
        directory: the export directory the row's files are relative to.
        table: the support table to read the record from.
    """
    if row.ok:
        return []
    problems = []
    if row.status != "mismatch" or not re.search(LOCATED, row.reason or ""):
        problems.append(f"{column}: expected a mismatch that says where its int8 error starts, got {row.status}: "
                        f"{row.reason}")  # fmt: skip
    if row.status == "mismatch":
        worse = within_record(row, recorded(framework, case, column, table))
        if worse:
            problems.append(f"{column}: expected mismatch beyond its record ({framework} / {case}): {worse}")
        if not (row.files and all((Path(directory) / f).is_file() for f in row.files)):
            problems.append(f"{column}: a mismatch must keep its artifact; files {row.files}")
    return problems
