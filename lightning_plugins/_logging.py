"""Sending metrics and report files to a Lightning trainer's loggers (rank zero), whatever the logger.

Metrics go through ``logger.log_metrics``, which every Lightning logger has. Files (the export report) go where
the logger has a place for them, found by what its ``experiment`` offers rather than by its class, so both
Lightning namespaces and user loggers work: MLflow's client ``log_artifact(run_id, path, artifact_path)``,
TensorBoard's ``SummaryWriter.add_text`` (the Markdown report as text), W&B's ``Run.save``. CSV-style loggers
have no place for files; they get the metrics only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["log_files", "log_metrics", "logs_due"]

log = logging.getLogger(__name__)


def logs_due(trainer: Any) -> bool:
    """Whether the trainer writes step logs at this step (its ``log_every_n_steps``); True when unknown."""
    due = getattr(getattr(trainer, "_logger_connector", None), "should_update_logs", None)
    return True if due is None else bool(due)


def log_metrics(trainer: Any, metrics: Mapping[str, float], step: int | None = None) -> None:
    """``logger.log_metrics`` on every logger of the trainer, on global rank zero only."""
    if not metrics or not getattr(trainer, "is_global_zero", True):
        return
    step = int(trainer.global_step) if step is None else step
    for logger in getattr(trainer, "loggers", None) or []:
        logger.log_metrics(dict(metrics), step=step)


def _put_file(logger: Any, path: Path, text: str, tag: str, step: int) -> str | None:
    """Give one file to one logger; the kind of place it went, or None when the logger has none."""
    experiment = logger.experiment
    run_id = getattr(logger, "run_id", None)
    if run_id is not None and callable(getattr(experiment, "log_artifact", None)):  # MLflow client
        experiment.log_artifact(run_id, os.fspath(path), artifact_path=tag)
        return "artifact"
    if callable(getattr(experiment, "add_text", None)):  # TensorBoard SummaryWriter
        if path.suffix == ".md":
            experiment.add_text(f"{tag}/{path.name}", text, global_step=step)
            flush = getattr(experiment, "flush", None)
            if callable(flush):
                flush()
            return "text"
        return None
    if callable(getattr(experiment, "save", None)) and callable(getattr(experiment, "log", None)):  # W&B run
        experiment.save(os.fspath(path), base_path=os.fspath(path.parent), policy="now")
        return "file"
    return None


def log_files(trainer: Any, paths: Sequence[str | os.PathLike[str]], tag: str, step: int | None = None) -> list[str]:
    """Give the files to every logger of the trainer that has a place for them (rank zero only).

    A logger that fails to take a file is logged as a warning: the files stay on disk either way.

    Returns:
        ``"<logger class>: <kind>"`` for each file taken (``artifact``, ``text`` or ``file``).
    """
    if not getattr(trainer, "is_global_zero", True):
        return []
    step = int(trainer.global_step) if step is None else step
    taken: list[str] = []
    for logger in getattr(trainer, "loggers", None) or []:
        for raw in paths:
            path = Path(raw)
            if not path.is_file():
                continue
            try:
                text = path.read_text(encoding="utf-8") if path.suffix == ".md" else ""
                kind = _put_file(logger, path, text, tag, step)
            except Exception as err:  # a logger's service being down must not fail the fit
                log.warning("fitslim: %s did not take %s: %s", type(logger).__name__, path.name, err)
                continue
            if kind is not None:
                taken.append(f"{type(logger).__name__}: {kind}")
    return taken
