"""Measured comparisons against peers; run each as ``python -m benchmarks.<name>`` from the repository root."""

from __future__ import annotations

import os
from pathlib import Path


def emit(text: str, output: str | os.PathLike[str] | None) -> str:
    """Print a benchmark's Markdown and, with ``--output``, write it there too (ending in a newline); return it."""
    print(text)
    if output:
        Path(output).write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    return text
