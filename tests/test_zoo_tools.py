"""The zoo's own tooling: the support table renderer and the per-case runner behind ``make zoo``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.zoo import run, table


def _write(path: Path, cells: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(c) + "\n" for c in cells), encoding="utf-8")
    return path


def test_table_keeps_the_last_cell_orders_columns_and_counts_totals(tmp_path: Path) -> None:
    cells = [
        {"framework": "keras", "case": "a", "column": "tflite int8", "status": "failed", "detail": "op 'X' | y"},
        {"framework": "keras", "case": "a", "column": "onnx fp32", "status": "mismatch", "detail": "old"},
        {"framework": "keras", "case": "a", "column": "onnx fp32", "status": "ok", "detail": "rel err 1e-06"},
        {"framework": "keras", "case": "b", "column": "ncnn fp32", "status": "ok", "detail": ""},
    ]
    out = tmp_path / "t.md"
    assert table.main([str(_write(tmp_path / "c.jsonl", cells)), "--output", str(out), "--note", "run note"]) == 0
    text = out.read_text(encoding="utf-8")
    assert "run note" in text
    assert "| case | onnx fp32 | ncnn fp32 | tflite int8 |" in text  # fp32 before int8, onnx before ncnn
    assert "| a | ok: rel err 1e-06 | not run | failed: op 'X' \\| y |" in text  # the later cell wins
    assert "| b | not run | ok | not run |" in text
    assert "Totals (keras, 3 cells): 2 ok, 1 failed." in text


def test_table_without_cells_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert table.main([str(tmp_path / "none.jsonl"), "--output", str(tmp_path / "t.md")]) == 2
    assert "no zoo cells" in capsys.readouterr().err


def test_runner_groups_tests_by_case_and_the_rest_by_file() -> None:
    ids = [
        "tests/zoo/test_keras_export.py::test_keras_zoo_export[mobilenet-fp32-targets0]",
        "tests/zoo/test_keras_export.py::test_keras_zoo_export[mobilenet_v2-int8-targets2]",
        "tests/zoo/test_keras_callbacks.py::test_keras_zoo_callbacks[mobilenet-distillation]",
        "tests/zoo/test_keras_callbacks.py::test_a_graph_that_cannot_be_rebuilt_is_refused_before_the_first_step",
        "tests/zoo/test_keras_callbacks.py::test_compressed_keras_zoo_model_stays_within_two_points_of_dense[x]",
    ]
    groups = run.group(ids, {"mobilenet", "mobilenet_v2"})
    assert groups["mobilenet"] == [ids[0], ids[2]]  # export and callbacks of a case share one process
    assert groups["mobilenet_v2"] == [ids[1]]
    assert groups["misc:tests/zoo/test_keras_callbacks.py"] == ids[3:]


def test_runner_reads_every_case_name_of_both_zoos() -> None:
    keras_cases, torch_cases = run._cases("keras"), run._cases("torch")
    assert {"mobilenet", "resnet50", "nasnet_mobile", "user_subclassed"} <= keras_cases
    assert {"hf_vit", "hf_bert", "user_unet"} <= torch_cases


def test_runner_reports_exit_code_time_and_memory_of_a_process(tmp_path: Path) -> None:
    test = tmp_path / "test_one.py"
    test.write_text("def test_one():\n    assert True\n", encoding="utf-8")
    result = run.run_group([str(test)], run._env(tmp_path), timeout=120, log=tmp_path / "log")
    assert result["rc"] == 0 and not result["timed_out"]
    assert 0 < float(str(result["wall_s"])) < 120 and float(str(result["peak_rss_gb"])) > 0
    assert "1 passed" in (tmp_path / "log").read_text(encoding="utf-8")


def test_runner_writes_durations_in_whole_seconds() -> None:
    assert run.duration(479.6) == "8 min 0 s"  # not "8 min 60 s"
    assert run.duration(4174.4) == "69 min 34 s"  # not "70 min 34 s"
    assert run.duration(59.4) == "0 min 59 s"


def test_table_parses_back_what_it_renders(tmp_path: Path) -> None:
    cells = [
        {"framework": "torch", "case": "a", "column": "onnx int8", "status": "mismatch",
         "detail": "top-1 31%, 41% of 27 decisive, spread err 0.86; int8 error | builds up"},
        {"framework": "torch", "case": "b", "column": "ncnn fp16", "status": "ok", "detail": "rel err 2e-03"},
        {"framework": "keras", "case": "a", "column": "tensorrt fp16", "status": "unverified", "detail": "fp32 file"},
    ]  # fmt: skip
    parsed = table.parse(table.render(cells))
    assert parsed == {(c["framework"], c["case"], c["column"]): (c["status"], c["detail"]) for c in cells}
    assert ("torch", "a", "ncnn fp16") not in parsed  # 'not run' is no record
    assert "1 unverified" in table.render(cells)


def _row(status: str, top1: float | None, spread: float, rel: float = 0.3, files: bool = True) -> Any:
    from exporters.core.report import TargetResult

    reason = "verification failed: top-1 agreement 40.0% under the int8 bound; int8 error builds up over 9 layers"
    return TargetResult("tensorrt", "int8", status=status, files=["m.onnx"] if files else [], max_abs_error=rel * 9,
                        max_rel_error=rel, top1_agreement=top1, spread_error=spread,
                        reason=reason if status == "mismatch" else "written, not compared")  # fmt: skip


def test_an_expected_mismatch_is_bounded_by_its_recorded_figures(tmp_path: Path) -> None:
    from tests.zoo import check_report

    detail = "top-1 40%, 50% of 30 decisive, spread err 0.80; int8 error builds up over 9 layers"
    cells = [{"framework": "torch", "case": "net", "column": "tensorrt int8", "status": "mismatch", "detail": detail}]
    doc = tmp_path / "support.md"
    doc.write_text(table.render(cells), encoding="utf-8")
    (tmp_path / "m.onnx").write_bytes(b"onnx")

    def problems(row: Any, name: str = "net", listed: bool = True) -> list[str]:
        expected = {(name, "tensorrt", "int8"): ("mismatch", "int8 error")} if listed else {}
        return check_report([row], "torch", name, "int8", expected, lambda *a: None, tmp_path, table=doc)

    assert problems(_row("mismatch", 0.35, 0.9)) == []  # a little worse than recorded, as on another CPU
    assert problems(_row("ok", 0.99, 0.1)) == []  # passing is never a defect
    nan = _row("mismatch", None, float("nan"), rel=float("nan"))
    nan.max_abs_error = float("nan")
    zero = _row("mismatch", 0.0, 1.4)
    for bad, why in (
        (nan, "not finite"),
        (zero, "top-1 agreement 0% under 0.5x the recorded 40%"),
        (_row("mismatch", 0.38, 2.5), "spread error 2.5 over 1.30"),
    ):
        (problem,) = problems(bad)
        assert "beyond its record" in problem and why in problem, problem
    (unrecorded,) = problems(_row("mismatch", 0.35, 0.9), name="other")  # listed, but no figure to bound it
    assert "no recorded figure bounds this expected mismatch" in unrecorded
    # a row nobody listed: unverified passes when written and explained, never silently
    assert problems(_row("unverified", None, 0.0), listed=False) == []
    assert problems(_row("unverified", None, 0.0, files=False), listed=False) == [
        "tensorrt int8: unverified: written, not compared"
    ]
    (tmp_path / "m.onnx").unlink()
    assert "an unverified artifact must be written" in problems(_row("unverified", None, 0.0), listed=False)[0]


def test_the_callback_zoo_bounds_a_listed_qat_mismatch_by_its_record(tmp_path: Path) -> None:
    """``check_expected_mismatch`` (what tests/zoo/test_*_callbacks.py run on a listed ``qat+export int8`` cell)
    reads the figures of each format the callback columns recorded, passes a row at its record and fails a NaN
    row, a 0% row and a listed cell with no record."""
    from exporters.core.report import TargetResult
    from tests.zoo import check_expected_mismatch, recorded

    where = "int8 error first becomes large at 'conv' (Conv, SQNR 5.3 dB, from 5.6 dB at its inputs)"
    cells = [  # the Lightning and the Keras cells as the 2026-12-05 run recorded them, and as they record now
        ("torch", "old_torch", "53 layers; tensorrt int8 Q/DQ mismatch: verification failed: RMS error 0.48 of the "
         f"outputs' input-to-input spread exceeds the bound 0.2; {where}"),
        ("keras", "old_keras", "[\"tensorrt: mismatch verification failed: top-1 agreement 28.6% on 14 decisive "
         "samples is under the int8 bound 97%; RM...\"]"),
        ("keras", "new", f"top-1 40%, 50% of 14 decisive, spread err 0.80; {where}; 5/5 layers"),
    ]  # fmt: skip
    doc = tmp_path / "support.md"
    doc.write_text(table.render([{"framework": f, "case": c, "column": "qat+export int8", "status": "mismatch",
                                  "detail": d} for f, c, d in cells]), encoding="utf-8")  # fmt: skip
    records = {case: recorded(framework, case, "qat+export int8", doc) for framework, case, _ in cells}
    assert all(r is not None for r in records.values()), records
    assert records["old_torch"] and records["old_torch"].spread_error == pytest.approx(0.48)
    assert records["old_keras"] and records["old_keras"].decisive_top1 == pytest.approx(0.286)
    assert records["new"] and (records["new"].top1, records["new"].spread_error) == pytest.approx((0.4, 0.8))
    (tmp_path / "m.onnx").write_bytes(b"onnx")

    def row(top1: float | None, decisive: float | None, spread: float, abs_error: float = 2.7) -> Any:
        out = _row("mismatch", top1, spread)
        out.reason, out.decisive_top1, out.max_abs_error = f"verification failed; {where}", decisive, abs_error
        return out

    def problems(framework: str, case: str, r: Any) -> list[str]:
        return check_expected_mismatch(r, framework, case, "qat+export int8", tmp_path, table=doc)

    at_record = {"old_torch": row(0.3, 0.3, 0.48), "old_keras": row(0.3, 0.286, 0.9), "new": row(0.4, 0.5, 0.8)}
    zero = {"old_torch": row(0.0, 0.0, 1.4), "old_keras": row(0.0, 0.0, 1.4), "new": row(0.0, 0.0, 1.4)}
    for framework, case, _ in cells:
        assert problems(framework, case, at_record[case]) == [], case
        assert problems(framework, case, _row("ok", 0.99, 0.1)) == []  # passing is never a defect
        (nan,) = problems(framework, case, row(None, None, float("nan"), abs_error=float("nan")))
        assert "beyond its record" in nan and "not finite" in nan, nan
        (no,) = problems(framework, case, zero[case])
        assert "beyond its record" in no and ("top-1 agreement 0%" in no or "spread error 1.4 over" in no), no
    (unrecorded,) = problems("torch", "new", at_record["new"])  # listed, but no record in that framework's table
    assert "no recorded figure bounds this expected mismatch" in unrecorded
    (lost,) = problems("keras", "new", TargetResult("tensorrt", "int8", status="failed", reason="pnnx exit 1"))
    assert "expected a mismatch that says where its int8 error starts" in lost
    (tmp_path / "m.onnx").unlink()
    assert "a mismatch must keep its artifact" in problems("keras", "new", at_record["new"])[0]
