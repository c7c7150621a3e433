"""Zoo fixtures: ``zoo_record`` writes one support-table cell per (framework, case, column).

Cells go to ``$FITSLIM_ZOO_RESULTS/cells.jsonl`` when that variable is set (``make zoo``, i.e.
``python -m tests.zoo.run``, sets it and then renders the table with ``python -m tests.zoo.table``);
otherwise recording is a no-op.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

STATUSES = ("ok", "unverified", "mismatch", "refused", "failed")


@pytest.fixture
def zoo_record() -> Callable[..., None]:
    """``zoo_record(framework, case, column, status, detail="")`` appends one table cell."""

    def record(framework: str, case: str, column: str, status: str, detail: str = "") -> None:
        if status not in STATUSES:
            raise ValueError(f"zoo_record status must be one of {STATUSES}, got {status!r}")
        out = os.environ.get("FITSLIM_ZOO_RESULTS")
        if not out:
            return
        Path(out).mkdir(parents=True, exist_ok=True)
        row = {"framework": framework, "case": case, "column": column, "status": status, "detail": detail[:300]}
        with open(Path(out) / "cells.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

    return record
