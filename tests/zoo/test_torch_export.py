"""Every torch zoo model exported to every target: it verifies within its precision's bounds, or the cell
is a known limit whose message names the op or layer and what to do.

CI runs :data:`CI_CELLS` (fp32 and int8 of a few small cases); ``make zoo`` (``FITSLIM_ZOO=full``) runs
every case at fp32, fp16 and int8 and records one support-table cell per target and precision.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.zoo import check_report, full_zoo

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from exporters import export  # noqa: E402
from tests.zoo.torch_zoo import CASES  # noqa: E402

pytestmark = [pytest.mark.zoo, pytest.mark.slow]

TARGETS = ("onnx", "ncnn", "tflite", "tensorrt")
#: fp16 / int8 columns of every target (the onnx target writes its own int8 form; fp16 stays fp32 there)
QUANT_TARGETS = TARGETS
PRECISIONS = ("fp32", "fp16", "int8")

#: the cells CI runs (case, precision) -> targets; one case per kind of graph, inside the CI time budget
CI_CELLS: dict[tuple[str, str], tuple[str, ...]] = {
    ("user_se", "fp32"): ("onnx", "ncnn", "tensorrt"),
    ("user_se", "int8"): ("ncnn", "tflite", "tensorrt"),
    ("user_attention", "fp32"): ("onnx", "ncnn"),
    ("hf_bert", "fp32"): TARGETS,
    ("hf_bert", "int8"): ("tensorrt",),
}

#: known limits: (case, target, precision) -> (status, pattern the reason must match). Every other cell must
#: be ``ok``. A ``failed`` reason names the op or layer and what to do.
EXPECTED: dict[tuple[str, str, str], tuple[str, str]] = {
    **{
        (text, "ncnn", p): ("failed", r"ncnn: this model takes 2 inputs \(int64, int64\).*Export it to 'onnx'")
        for text in ("hf_bert", "hf_distilbert")
        for p in PRECISIONS
    },
    **{
        (text, "tflite", "int8"): ("failed", r"tflite: this torch model takes 2 inputs \(int64, int64\); int8 TFLite")
        for text in ("hf_bert", "hf_distilbert")
    },
}

#: verification inputs: int8 calibrates on one draw and verifies on another
SAMPLES = {"fp32": 16, "fp16": 16, "int8": 64}


def _cells() -> list[Any]:
    if full_zoo():
        return [
            pytest.param(c, p, TARGETS if p == "fp32" else QUANT_TARGETS, id=f"{c}-{p}")
            for c in CASES
            for p in PRECISIONS
        ]
    return [pytest.param(c, p, t, id=f"{c}-{p}") for (c, p), t in CI_CELLS.items()]


def _first(x: Any) -> Any:
    return tuple(a[:1] for a in x) if isinstance(x, tuple) else x[:1]


@pytest.mark.parametrize(("name", "precision", "targets"), _cells())
def test_torch_zoo_export(
    name: str, precision: str, targets: tuple[str, ...], tmp_path: Path, zoo_record: Callable[..., None]
) -> None:
    case = CASES[name]
    model = case.build()
    n = SAMPLES[precision]
    samples = case.inputs(n, 2)
    calibration = case.inputs(n, 1) if precision == "int8" else None
    report = export(
        model,
        list(targets),
        example_input=_first(samples),
        calibration=calibration,
        samples=samples,
        precision=precision,
        directory=tmp_path,
    )
    problems = check_report(report, "torch", name, precision, EXPECTED, zoo_record, tmp_path)
    assert not problems, "\n".join(problems)
    # the rows that are ok really ran: finite outputs compared on every sample
    for row in report:
        if row.ok:
            assert row.samples == n and row.max_abs_error is not None and np.isfinite(row.max_abs_error), row
