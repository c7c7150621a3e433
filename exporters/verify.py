"""Comparing an artifact's outputs with the source model's, and timing a runtime.

Example:
    >>> import numpy as np
    >>> ref = np.array([[1.0, 3.0], [2.0, -1.0]], np.float32)
    >>> a = compare(ref, ref + np.float32(0.01))
    >>> round(a.max_abs_error, 4), a.top1_agreement
    (0.01, 1.0)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from exporters.report import TargetResult

__all__ = ["Agreement", "compare", "fill_agreement", "median_latency_ms", "nchw_to_nhwc", "nhwc_to_nchw"]


@dataclass(frozen=True)
class Agreement:
    """How close an artifact's outputs are to the source's.

    ``max_rel_error`` is the largest absolute difference divided by the largest absolute reference
    output, so it is scale-free and well defined when single outputs are near zero.
    """

    max_abs_error: float
    max_rel_error: float
    top1_agreement: float | None
    samples: int


def compare(reference: npt.ArrayLike, output: npt.ArrayLike) -> Agreement:
    """Compare outputs of the same inputs; arg-max agreement for (N, C>1) logit-like outputs.

    Raises:
        ValueError: the shapes differ (a layout or batch bug in an exporter).
    """
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(output, dtype=np.float64)
    if ref.shape != out.shape:
        raise ValueError(f"output shape {out.shape} differs from the source's {ref.shape}.")
    diff = float(np.max(np.abs(ref - out))) if ref.size else 0.0
    denom = float(np.max(np.abs(ref))) if ref.size else 0.0
    rel = diff / denom if denom > 0 else (0.0 if diff == 0 else float("inf"))
    top1 = None
    if ref.ndim == 2 and ref.shape[1] > 1:
        top1 = float(np.mean(ref.argmax(1) == out.argmax(1)))
    return Agreement(diff, rel, top1, int(ref.shape[0]) if ref.ndim else 1)


def fill_agreement(result: TargetResult, agreement: Agreement) -> TargetResult:
    """Copy an :class:`Agreement` into a :class:`TargetResult` and return it."""
    result.max_abs_error = agreement.max_abs_error
    result.max_rel_error = agreement.max_rel_error
    result.top1_agreement = agreement.top1_agreement
    result.samples = agreement.samples
    return result


def median_latency_ms(run: Callable[[], Any], warmup: int = 5, repeats: int = 30) -> float:
    """Median wall time of ``run()`` in milliseconds after ``warmup`` calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


def nchw_to_nhwc(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """(N, C, H, W) → (N, H, W, C); other ranks are returned unchanged."""
    a = np.asarray(x, dtype=np.float32)
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if a.ndim == 4 else a


def nhwc_to_nchw(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """(N, H, W, C) → (N, C, H, W); other ranks are returned unchanged."""
    a = np.asarray(x, dtype=np.float32)
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2)) if a.ndim == 4 else a
