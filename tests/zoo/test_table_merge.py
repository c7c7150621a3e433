"""``python -m tests.zoo.table --merge``: a partial zoo run (the trained-weights int8 columns) updates its cells and
keeps every other cell and note of the support table."""

from __future__ import annotations

from tests.zoo.table import merge, parse, render


def test_merge_keeps_the_other_cells_and_notes_and_puts_new_cells_over_old() -> None:
    old = render(
        [
            {"framework": "torch", "case": "a", "column": "onnx int8", "status": "mismatch", "detail": "top-1 50%"},
            {"framework": "torch", "case": "a", "column": "onnx int8 trained", "status": "mismatch", "detail": "old"},
            {"framework": "keras", "case": "k", "column": "onnx fp32", "status": "ok", "detail": "rel err 1e-06"},
        ],
        note="The first run's note.",
    )
    new = [{"framework": "torch", "case": "a", "column": "onnx int8 trained", "status": "ok", "detail": "top-1 99%"}]
    cells, note = merge(old, new, "This run's note.")
    text = render(cells, note)
    got = parse(text)
    assert got[("torch", "a", "onnx int8 trained")] == ("ok", "top-1 99%")  # the new cell wins
    assert got[("torch", "a", "onnx int8")] == ("mismatch", "top-1 50%")  # the others stay
    assert got[("keras", "k", "onnx fp32")] == ("ok", "rel err 1e-06")
    assert text.index("The first run's note.") < text.index("This run's note.") < text.index("## keras")
    assert text.count("The first run's note.") == 1
