"""Render the zoo's support table: ``cells.jsonl`` (one cell per line, written by ``zoo_record``) → Markdown.

One table per framework; rows are the zoo cases, columns the recorded columns (target and precision), a
cell is ``ok`` with its agreement, or the status with its short reason. A later cell for the same
(framework, case, column) replaces an earlier one. Totals per framework follow each table.

Usage: ``python -m tests.zoo.table [cells.jsonl] [--output docs/zoo-support.md]`` (default input:
``$FITSLIM_ZOO_RESULTS/cells.jsonl``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

TARGET_ORDER = ("onnx", "ncnn", "tflite", "tensorrt")
PRECISION_ORDER = ("fp32", "fp16", "int8")
STATUS_ORDER = ("ok", "unverified", "mismatch", "failed", "refused")

HEADER = """# Model zoo support

Every architecture of the test zoo (`tests/zoo/`: HuggingFace `transformers` models built from small configs,
`keras.applications` with `weights=None`, and user-style models; random weights, no downloads) exported to
every target and precision, and verified in the target's own runtime. `ok` means finite outputs within the
precision's bounds (fp32: max relative error 1e-4; fp16: 1e-2; int8: top-1 agreement of at least 97% on
the samples whose top-2 margin is meaningful, or a bounded error against the outputs' input-to-input
spread when none is; see `exporters/core/verify.py`). `mismatch`: the artifact was written and kept, but its
outputs are not finite or out of bounds; an int8 mismatch says where the int8 error originates (the first layer
whose own int8 noise is large, from ONNX Runtime's per-tensor comparison of the float and Q/DQ graphs) or that
it builds up over many layers. `unverified`: written, but no runtime here ran it at that precision (the
`tensorrt` fp16 file is the fp32 ONNX: fp16 is TensorRT's builder flag, so the cell is `unverified` where no
TensorRT engine was built and run). The `onnx` fp16 file is an fp16 ONNX (fp16 weights, fp32 inputs and
outputs). `failed` / `refused`: no artifact; the reason names the op or
layer. `not run` (or a case missing from a table) was not part of the run that wrote this file.

Callback columns: a short fit of the random-weight model with that callback in the user's own `fit`
(`tests/zoo/test_lightning_callbacks.py`, `tests/zoo/test_keras_callbacks.py`). `pruning unstructured`: 50% of
the kernels' weights zero; `pruning channel 50%`: channels removed, the smaller model's parameter ratio, its own
forward and further training checked; `qat+export int8`: `QuantizationAware` then `Export` at int8 from the
learned QuantSpec, the TensorRT Q/DQ artifact verified against the fake-quant model (a `mismatch` on random
weights after a one-epoch fit can pass once trained: see `benchmarks/README.md`); `distillation`: the loss with
a teacher of the same family. `refused`: stopped before the first step, naming the layer. `accuracy ...`: the
digits fine-tune of `benchmarks/zoo_keras.py` / `zoo_lightning.py`, within 2 points of dense or not.

Trained-weights int8 columns (`... int8 trained`, `tests/zoo/test_torch_trained_int8.py` and
`tests/zoo/test_keras_trained_int8.py`; the random-weight int8 columns stay): the case is first fine-tuned on
Fashion-MNIST at its own input size (`fine-tune (Fashion-MNIST)`: 60 AdamW steps of 32 training images, test top-1
on 300 test images; grey replicated to 3 channels; the text cases read each image as 16 tokens, the mean intensity
of a 4x4 grid of cells binned into ids 1..99, labels modulo 3, a deterministic mapping of the same real images, see
`tests/zoo/trained.py`). Then `<target> int8 trained`: PTQ, calibrated on 64 training images, verified against the
trained model on 64 test images (torch: tflite left out of this column to fit the run's time budget); `qat <target>
int8 trained`: `QuantizationAware` + `Export(precision="int8")` in a 10-step second fit (Lightning `Trainer.fit`,
Keras `model.fit`) on training images from the fine-tuned weights, verified against the fake-quant model on the same
test images. The Keras file's per-case fine-tune settings (more steps, BatchNorm momentum, pixel range) are written
and measured there. A mismatch there points at a defect, not at random weights. Each cell ends with the fine-tuned
accuracy. Run them alone with `python -m tests.zoo.run --only torch --select trained_int8 --merge` (or `--only
keras`).
Regenerate with `make zoo`.
"""


def load(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The cells of a ``cells.jsonl``, last one winning per (framework, case, column).

    Raises:
        FileNotFoundError: no such file.
    """
    cells: dict[tuple[str, str, str], dict[str, Any]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            c = json.loads(line)
            cells[(c["framework"], c["case"], c["column"])] = c
    return list(cells.values())


def parse(text: str) -> dict[tuple[str, str, str], tuple[str, str]]:
    """The cells of a rendered support table: (framework, case, column) -> (status, detail); inverse of
    :func:`render` for every cell that was run (details longer than 260 characters come back cut)."""
    cells: dict[tuple[str, str, str], tuple[str, str]] = {}
    framework, columns = "", list[str]()
    for line in text.splitlines():
        if line.startswith("## "):
            framework, columns = line[3:].strip(), []
        elif line.startswith("| case |"):
            columns = [c.strip() for c in line.strip().strip("|").split("|")][1:]
        elif line.startswith("| ") and framework and columns:
            cut = line.strip()[1:-1].replace("\\|", "\0").split("|")  # an escaped | is no column border
            parts = [c.strip().replace("\0", "|") for c in cut]
            case = parts[0]
            for column, cell in zip(columns, parts[1:], strict=False):
                if cell != "not run":
                    status, _, detail = cell.partition(": ")
                    cells[(framework, case, column)] = (status, detail)
    return cells


def merge(old: str, cells: list[dict[str, Any]], note: str) -> tuple[list[dict[str, Any]], str]:
    """The cells of a rendered table ``old`` with ``cells`` over them, and its notes followed by ``note``.

    A partial run (one column, a few cases) then updates its cells and keeps every other one as recorded.
    """
    new = {(c["framework"], c["case"], c["column"]) for c in cells}
    kept = [
        {"framework": f, "case": case, "column": col, "status": status, "detail": detail}
        for (f, case, col), (status, detail) in parse(old).items()
        if (f, case, col) not in new
    ]
    marker = "Regenerate with `make zoo`.\n"
    head = old.split("\n## ", 1)[0]
    notes = head.split(marker, 1)[1].strip() if marker in head else ""
    return kept + cells, "\n\n".join(n for n in (notes, note.strip()) if n)


def _column_key(column: str) -> tuple[int, int, str]:
    target, _, precision = column.partition(" ")
    t = TARGET_ORDER.index(target) if target in TARGET_ORDER else len(TARGET_ORDER)
    p = PRECISION_ORDER.index(precision) if precision in PRECISION_ORDER else len(PRECISION_ORDER)
    return (p, t, column)


def _cell(c: dict[str, Any]) -> str:
    detail = " ".join(str(c.get("detail", "")).split())
    if len(detail) > 260:
        detail = detail[:257] + "..."
    text = c["status"] if not detail else f"{c['status']}: {detail}"
    return text.replace("|", "\\|")


def render(cells: list[dict[str, Any]], note: str = "") -> str:
    """The Markdown document: one table per framework, then its totals (``note``: a paragraph about the run)."""
    out = [HEADER] + ([note.strip() + "\n"] if note.strip() else [])
    for framework in sorted({c["framework"] for c in cells}):
        mine = [c for c in cells if c["framework"] == framework]
        cases = list(dict.fromkeys(c["case"] for c in mine))
        columns = sorted({c["column"] for c in mine}, key=_column_key)
        grid = {(c["case"], c["column"]): c for c in mine}
        out.append(f"## {framework}\n")
        out.append("| case | " + " | ".join(columns) + " |")
        out.append("|---|" + "---|" * len(columns))
        for case in cases:
            row = [_cell(grid[(case, col)]) if (case, col) in grid else "not run" for col in columns]
            out.append(f"| {case} | " + " | ".join(row) + " |")
        totals = Counter(c["status"] for c in mine)
        parts = [f"{totals[s]} {s}" for s in STATUS_ORDER if totals[s]]
        out.append(f"\nTotals ({framework}, {len(mine)} cells): " + ", ".join(parts) + ".\n")
    if not cells:
        out.append("No cells were recorded.\n")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cells", nargs="?", help="cells.jsonl (default: $FITSLIM_ZOO_RESULTS/cells.jsonl)")
    parser.add_argument("--output", default="docs/zoo-support.md", help="the Markdown file to write")
    parser.add_argument("--note", default="", help="a paragraph about the run, printed under the header")
    parser.add_argument("--merge", action="store_true", help="keep the cells and notes already in --output under these")
    args = parser.parse_args(argv)
    source = args.cells or os.path.join(os.environ.get("FITSLIM_ZOO_RESULTS", "zoo-results"), "cells.jsonl")
    if not Path(source).is_file():
        print(f"no zoo cells at {source}; run the zoo tests with FITSLIM_ZOO_RESULTS set first", file=sys.stderr)
        return 2
    target = Path(args.output)
    cells, note = load(source), args.note
    if args.merge and target.is_file():
        cells, note = merge(target.read_text(encoding="utf-8"), cells, note)
    text = render(cells, note)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.partial")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(target)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
