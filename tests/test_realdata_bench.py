"""benchmarks/realdata.py: the goal table (every row, every goal column) and the verdicts beside the figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import realdata
from benchmarks.realdata import COLUMNS, GOALS, Artifact, ModelResult

QUANTITIES = ("test accuracy", "test accuracy (floor)", "parameters", "file size", "latency, batch 1")


def _result(drop_pt: float, size_ratio: float, gains_pt: list[float]) -> ModelResult:
    """A synthetic result: dense 90.00%, every int8 artifact ``drop_pt`` below it, files ``size_ratio`` of fp32."""
    res = ModelResult("lightning", "resnet", "synthetic", dense_params=1000, student_params=300, dense_accuracy=0.9)
    for target in ("onnx", "ncnn", "tflite"):
        res.dense[target] = Artifact(target, "fp32", "ok", size=100_000, accuracy=0.9, latency_ms=1.0)
    for target in realdata.INT8_TARGETS:
        res.int8[target] = Artifact(target, "int8", "ok", size=int(100_000 * size_ratio),
                                    accuracy=0.9 - drop_pt / 100, latency_ms=0.55)  # fmt: skip
    res.seeds = list(range(len(gains_pt)))
    res.plain = [0.88] * len(gains_pt)
    res.kd = [0.88 + g / 100 for g in gains_pt]
    res.kd_float, res.plain_float = list(res.kd), list(res.plain)
    return res


def _by(rows: list[dict[str, str]], quantity: str, runtime: str) -> dict[str, str]:
    return next(r for r in rows if r["quantity"].startswith(quantity) and r["runtime"] == runtime)


def test_goal_verdicts_follow_the_figures() -> None:
    # 0.7 pt lost: misses the 0.5 pt goal, meets the 1.0 pt floor
    rows = realdata.rows(_result(drop_pt=0.7, size_ratio=0.10, gains_pt=[0.2, 0.3, 0.1]))
    acc, floor = _by(rows, "test accuracy", "ncnn"), _by(rows, "test accuracy (floor)", "ncnn")
    assert (acc["measured"], acc["goal"], acc["status"]) == ("+0.70 pt drop", "<= 0.5 pt", "MISSED")
    assert (floor["goal"], floor["status"]) == ("<= 1 pt", "met")
    assert _by(rows, "parameters", "-")["measured"] == "0.300x" and _by(rows, "parameters", "-")["status"] == "met"
    assert _by(rows, "file size", "LiteRT")["status"] == "met"
    # latency 0.55x: ncnn's goal (0.6x) met, onnxruntime's and LiteRT's (0.5x) missed, TensorRT has none
    assert _by(rows, "latency", "ncnn")["status"] == "met"
    assert _by(rows, "latency", "onnxruntime")["status"] == "MISSED"
    assert _by(rows, "latency", "LiteRT")["status"] == "MISSED"
    assert _by(rows, "latency", realdata.RUNTIME["tensorrt"][0])["status"] == "-"
    kd = _by(rows, "distillation gain", "onnxruntime (int8 ONNX)")
    assert kd["measured"] == "+0.20 ± 0.10 pt" and kd["status"] == "MISSED"
    # the other side of every bound
    rows = realdata.rows(_result(drop_pt=0.3, size_ratio=0.2, gains_pt=[0.4, 0.5, 0.3]))
    assert _by(rows, "test accuracy", "onnxruntime")["status"] == "met"
    assert _by(rows, "file size", "onnxruntime")["status"] == "MISSED"
    assert _by(rows, "distillation gain", "onnxruntime (int8 ONNX)")["status"] == "met"


def test_a_failed_model_is_a_missed_row_not_a_crash() -> None:
    rows = realdata.rows(ModelResult("keras", "mobilenet_v2", "", error="RuntimeError: QAT on a fitted model"))
    expected = ("keras mobilenet_v2", "error", "-", "-", "-", "RuntimeError: QAT on a fitted model", "-", "MISSED")
    assert rows == [dict(zip(COLUMNS, expected, strict=True))]


def test_parse_quick_and_full_defaults() -> None:
    quick, full = realdata.parse(["--quick"]), realdata.parse([])
    assert (quick.seeds, quick.train_subset, quick.test_subset, quick.batch_size) == (1, 256, 200, 32)
    assert (full.seeds, full.train_subset, full.test_subset, full.batch_size) == (3, None, None, 128)  # all 10,000
    assert full.seeds >= 3 and full.threads == 2


@pytest.mark.slow
@pytest.mark.realdata
def test_quick_run_writes_every_row_and_goal(tmp_path: Path) -> None:
    # 256 training images in batches of 32: 8 steps, enough for the pruning and QAT schedules to resolve
    args = ["--quick", "--test-subset", "100", "--rounds", "1", "--burst", "1", "--out", str(tmp_path)]
    text = realdata.main(args)
    header = "| " + " | ".join(COLUMNS) + " |"
    assert header in text
    payload = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    rows = payload["rows"]
    assert rows and all(set(r) == set(COLUMNS) for r in rows)
    assert not any(r["quantity"] == "error" for r in rows), rows
    for quantity in QUANTITIES:
        runtimes = {r["runtime"] for r in rows if r["quantity"] == quantity}
        expected = {"-"} if quantity == "parameters" else {realdata.RUNTIME[t][0] for t in realdata.INT8_TARGETS}
        assert runtimes == expected, (quantity, runtimes)
    assert [r["goal"] for r in rows if r["quantity"].startswith("distillation gain")] == [GOALS["distillation"].text()]
    # every goal column is filled with a verdict computed from a figure (not "-"), except the TensorRT latency
    for r in rows:
        if r["goal"] != "(no goal)":
            assert r["status"] in ("met", "MISSED") and r["measured"] != "-", r
    # every artifact was scored in its own runtime on the test images
    for target, art in payload["results"][0]["int8"].items():
        assert art["accuracy"] is not None, (target, art)
    assert (tmp_path / "results.md").read_text(encoding="utf-8").startswith("## Fashion-MNIST")
    assert list((tmp_path / "dense").glob("lightning-resnet-*.pt")), "the dense model is cached for later runs"
