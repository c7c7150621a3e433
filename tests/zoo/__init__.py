"""A zoo of real architectures built from configs with random weights (no downloads).

``torch_zoo.CASES`` and ``keras_zoo.CASES`` map a case name to a :class:`ZooCase`. ``ci=True`` marks
the one small config per family that ``make test`` runs; ``make zoo`` (``FITSLIM_ZOO=full``) runs all.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ZooCase", "full_zoo", "select"]


@dataclass(frozen=True)
class ZooCase:
    """One architecture: how to build it and what to feed it.

    ``build()`` returns a fresh model with random weights and data-like normalization statistics.
    ``inputs(batch, seed)`` returns one array (or a tuple of arrays for multi-input models) with the
    model's own dtypes. ``kind`` is ``"vision"`` or ``"text"``.
    """

    name: str
    family: str
    build: Callable[[], Any]
    inputs: Callable[[int, int], Any]
    kind: str = "vision"
    ci: bool = False
    tags: tuple[str, ...] = field(default_factory=tuple)


def full_zoo() -> bool:
    """True when the whole matrix was asked for (``FITSLIM_ZOO=full``, what ``make zoo`` sets)."""
    return os.environ.get("FITSLIM_ZOO", "").lower() == "full"


def select(cases: dict[str, ZooCase]) -> list[ZooCase]:
    """The cases this run covers: every case under ``make zoo``, the ``ci`` subset otherwise."""
    return [c for c in cases.values() if c.ci or full_zoo()]


def image_batch(shape: tuple[int, ...]) -> Callable[[int, int], np.ndarray]:
    """Inputs for an image model: standard-normal float32 of ``(batch, *shape)``."""

    def make(batch: int, seed: int) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)

    return make


def token_batch(vocab: int, length: int) -> Callable[[int, int], tuple[np.ndarray, np.ndarray]]:
    """Inputs for a text model: int64 ``input_ids`` and an int64 ``attention_mask`` with padding."""

    def make(batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        ids = rng.integers(1, vocab, size=(batch, length), dtype=np.int64)
        mask = np.ones((batch, length), np.int64)
        for i in range(batch):
            keep = int(rng.integers(length // 2, length + 1))
            mask[i, keep:] = 0
            ids[i, keep:] = 0
        return ids, mask

    return make
