"""Names and values of the metrics fitslim's callbacks log, shared by the Lightning and Keras sides.

Both plugin sets put the same keys in the trainer's loggers (Lightning) or the ``logs`` dict (Keras):

- ``Pruning``: ``pruning/sparsity``, ``pruning/target``, ``pruning/sparsity/<layer>`` (and
  ``pruning/channel_sparsity``).
- ``QuantizationAware``: ``qat/phase`` (:data:`QAT_PHASES`), ``qat/bn_frozen`` (0 or 1) and a summary of the
  observed input ranges (absolute maxima, float units) over the quantized layers: ``qat/input_range/min``,
  ``qat/input_range/mean``, ``qat/input_range/max`` and ``qat/observed_layers`` (see :func:`qat_metrics`).
- ``Distillation``: ``task_loss`` (the user's loss), ``kd_loss`` (the distillation term), ``combined_loss``
  (what backward sees) and, with features, ``feature_loss``.
- ``Export``: ``export/<target>/status`` (:data:`EXPORT_STATUS`), ``size_bytes``, ``max_abs_error``,
  ``max_rel_error``, ``top1_agreement`` and ``latency_ms`` per target, and ``export/targets_ok``
  (:func:`export_metrics`).

Example:
    >>> qat_metrics("quantize", bn_frozen=False, ranges=[1.0, 3.0, None])["qat/input_range/mean"]
    2.0
    >>> QAT_PHASES["float"], QAT_PHASES["frozen"]
    (0, 3)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = [
    "DISTILLATION_METRICS",
    "EXPORT_FIELDS",
    "EXPORT_STATUS",
    "QAT_PHASES",
    "bn_freeze_warning",
    "export_metrics",
    "qat_metrics",
]

#: ``qat/phase`` values: float training, observers calibrating with fake-quant off (Lightning's
#: ``calibration_steps``), fake-quant on with observers updating, fake-quant on with observers frozen.
QAT_PHASES: dict[str, int] = {"float": 0, "calibrate": 1, "quantize": 2, "frozen": 3}

#: ``export/<target>/status`` values.
EXPORT_STATUS: dict[str, float] = {"ok": 1.0, "unverified": 0.5, "skipped": 0.0, "mismatch": -1.0, "failed": -2.0}

#: The numeric fields of an export report's rows that become ``export/<target>/<field>``.
EXPORT_FIELDS = ("size_bytes", "max_abs_error", "max_rel_error", "top1_agreement", "latency_ms")

#: What ``Distillation`` logs on both sides (``feature_loss`` only with ``features``).
DISTILLATION_METRICS = ("task_loss", "kd_loss", "combined_loss", "feature_loss")


def qat_metrics(phase: str, bn_frozen: bool, ranges: Iterable[float | None]) -> dict[str, float]:
    """The ``qat/...`` metrics of one moment of quantization-aware training.

    Args:
        phase: a key of :data:`QAT_PHASES`.
        bn_frozen: whether folded BatchNorms run on their moving statistics.
        ranges: the observed input absolute maximum of each quantized layer; None (or <= 0) for a layer whose
            observer has not seen a batch yet. The summary is over the observed layers (``qat/observed_layers``),
            0.0 while there is none.

    Raises:
        ValueError: an unknown phase.
    """
    if phase not in QAT_PHASES:
        raise ValueError(f"qat_metrics(phase=...): unknown {phase!r}. HINT: one of {list(QAT_PHASES)}.")
    seen = [float(r) for r in ranges if r is not None and math.isfinite(float(r)) and float(r) > 0.0]
    out = {"qat/phase": float(QAT_PHASES[phase]), "qat/bn_frozen": float(bool(bn_frozen))}
    out["qat/observed_layers"] = float(len(seen))
    # the same keys at every call (Keras' CSVLogger keeps the columns of its first row): 0.0 before any observation
    out["qat/input_range/min"] = min(seen, default=0.0)
    out["qat/input_range/mean"] = sum(seen) / len(seen) if seen else 0.0
    out["qat/input_range/max"] = max(seen, default=0.0)
    return out


def bn_freeze_warning(step: int, freeze_bn: float, rate: float | None, peak: float | None, decay: str) -> str | None:
    """What ``QuantizationAware`` says when BatchNorm freezes while the learning rate is still high, or None.

    Training on frozen BatchNorm (running statistics) at a rate above half of the fit's highest so far can diverge:
    a Keras DenseNet at a constant Adam 3e-3 fell from 94% to 13% on the digits in one epoch, with or without
    fake-quant. ``decay`` names the framework's way to decay the rate.
    """
    if rate is None or not peak or rate < 0.5 * peak:
        return None
    return (
        f"QuantizationAware: BatchNorm runs on its running statistics from step {step} (freeze_bn={freeze_bn:g}) "
        f"while the learning rate is still {rate:.3g} ({100.0 * rate / peak:.0f}% of its highest in this fit). At a "
        "high rate the steps on frozen BatchNorm can diverge: a DenseNet at a constant Adam 3e-3 fell from 94% to 13% "
        f"on the digits in one epoch. Decay the rate over the fit (e.g. {decay}) or pass freeze_bn=1.0 to keep "
        "BatchNorm in training mode."
    )


def export_metrics(report: Any, prefix: str = "export") -> dict[str, float]:
    """An export report (``exporters.ExportReport``) as flat metrics for a logger.

    Each row gives ``<prefix>/<target>/status`` (:data:`EXPORT_STATUS`; an unknown status counts as failed) and
    those of :data:`EXPORT_FIELDS` it has. A target exported at more than one precision is keyed
    ``<target>_<precision>``. ``<prefix>/targets_ok`` counts the rows with status ``ok``.

    Example:
        >>> from types import SimpleNamespace as Row
        >>> rows = [Row(target="onnx", precision="fp32", status="ok", size_bytes=2048, max_abs_error=1e-6,
        ...             max_rel_error=None, top1_agreement=1.0, latency_ms=0.5)]
        >>> export_metrics(Row(results=rows))["export/onnx/size_bytes"]
        2048.0
    """
    rows = list(getattr(report, "results", []))
    targets = [str(r.target) for r in rows]
    out: dict[str, float] = {}
    for r in rows:
        key = str(r.target) if targets.count(str(r.target)) == 1 else f"{r.target}_{r.precision}"
        out[f"{prefix}/{key}/status"] = EXPORT_STATUS.get(str(r.status), EXPORT_STATUS["failed"])
        for name in EXPORT_FIELDS:
            value = getattr(r, name, None)
            if value is not None and math.isfinite(float(value)):
                out[f"{prefix}/{key}/{name}"] = float(value)
    out[f"{prefix}/targets_ok"] = float(sum(1 for r in rows if r.status == "ok"))
    return out
