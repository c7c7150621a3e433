"""The step of the running ``fit`` that the Keras callbacks' schedules are keyed on.

``start``/``end`` are fractions of the whole fit (``epochs * steps_per_epoch``), so the step a schedule reads must
count this fit's batches: ``epoch * steps_per_epoch + batch``, where ``epoch`` already includes ``initial_epoch``
(and the epoch ``BackupAndRestore`` resumes at). It must not be ``model.optimizer.iterations``: a model fit before
(or reloaded from a ``.keras`` file of a finished fit) starts the next fit with the optimizer's count of every
earlier step, and a schedule read from it finds its phases over before the first batch (QAT observers that never
run, a pruning schedule past its end with no mask ever computed). On a resumed fit both counts agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["fit_step"]


def fit_step(params: Mapping[str, Any] | None, epoch: int, batch: int) -> int:
    """The index of the optimizer step about to run: ``epoch * steps_per_epoch + batch``.

    Args:
        params: the callback's ``params`` (``steps`` is the number of steps per epoch).
        epoch: the epoch index Keras passed to ``on_epoch_begin`` (``initial_epoch`` included).
        batch: the batch index within the epoch.

    Raises:
        ValueError: ``params`` has no number of steps per epoch (a fit of unknown length).
    """
    steps = (params or {}).get("steps")
    if not steps:
        raise ValueError(
            f"fit_step(params): steps per epoch is {steps!r}. HINT: pass steps_per_epoch= to fit when the data "
            "has no known length."
        )
    return int(epoch) * int(steps) + int(batch)
