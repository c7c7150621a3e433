"""Trained weights for the zoo's int8 cells: a short fine-tune of each case on Fashion-MNIST at its own input size.

A random-weight model's int8 ``mismatch`` cannot be told from a defect (its near-random logits spread less than
int8 rounding), so the ``... int8 trained`` columns of the support table first fine-tune the case on real data and
then judge its int8 artifacts (PTQ, and QAT followed by ``Export``) against that trained model, on test images.

Data: :func:`fitslim.data.fashion_mnist` at 28 px, a fixed subset resized bilinearly to the case's side with the
loader's own :func:`fitslim.data.digits.resize_bilinear` (what ``fashion_mnist(size=...)`` does, without resizing
all 70,000 images), normalized with the data set's mean and std, the grey channel replicated where the model takes
3 channels. Text cases (BERT, DistilBERT; vocabulary 100, 16 tokens, 3 labels) read each image as a sequence: the
image averaged down to 4x4, each of the 16 cells' mean intensity binned into token ids 1..99, the label taken
modulo 3 (classes {0, 3, 6, 9}, {1, 4, 7}, {2, 5, 8}); a deterministic mapping of the same real images.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from tests.zoo import ZooCase, cell_detail

__all__ = ["MEAN", "STD", "TEXT_TOKENS", "TEXT_VOCAB", "accuracy_floor", "real_data", "record_trained", "trained_cases"]

#: Fashion-MNIST's pixel mean and std (training split, pixels in [0, 1])
MEAN, STD = 0.2860, 0.3530
#: the text cases' sequence: a 4x4 grid of the image, one token per cell, ids below the zoo configs' vocabulary
TEXT_TOKENS, TEXT_VOCAB = 16, 100


@functools.lru_cache(maxsize=1)
def _fashion() -> Any:
    from fitslim.data import fashion_mnist

    return fashion_mnist(layout="NCHW")


def _images(x: npt.NDArray[np.float32], shape: tuple[int, ...], layout: str) -> npt.NDArray[np.float32]:
    """``(N, 1, 28, 28)`` pixels in [0, 1] as the case's input: resized, normalized, channels replicated."""
    from fitslim.data.digits import resize_bilinear

    channels, side = (shape[0], shape[1]) if layout == "NCHW" else (shape[2], shape[0])
    if side != x.shape[-1]:
        x = resize_bilinear(x[:, 0], side)[:, None]
    x = ((x - MEAN) / STD).astype(np.float32)
    x = np.repeat(x, channels, axis=1) if channels != 1 else x
    return np.ascontiguousarray(x if layout == "NCHW" else x.transpose(0, 2, 3, 1))


def _tokens(x: npt.NDArray[np.float32], vocab: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Token ids (1..vocab-1) of the 4x4 cell means of 28x28 images, and an all-ones attention mask."""
    cells = x[:, 0, :28, :28].reshape(len(x), 4, 7, 4, 7).mean(axis=(2, 4)).reshape(len(x), TEXT_TOKENS)
    ids = 1 + np.minimum((cells * (vocab - 1)).astype(np.int64), vocab - 2)
    return ids, np.ones_like(ids)


def real_data(case: ZooCase, split: str, count: int, layout: str = "NCHW", offset: int = 0) -> tuple[Any, Any]:
    """``count`` Fashion-MNIST samples of ``split`` (``"train"`` or ``"test"``) as ``case``'s inputs, with labels.

    Args:
        case: the zoo case: its ``inputs`` give the shape (vision) or the vocabulary (text).
        split: ``"train"`` (the loader's training split) or ``"test"`` (the standard test split).
        count: how many samples, from ``offset`` on.
        layout: ``"NCHW"`` (torch) or ``"NHWC"`` (Keras).
        offset: the first sample.

    Returns:
        ``(inputs, labels)``: inputs as ``case.inputs`` gives them (an array, or ``(ids, mask)`` for text),
        int64 labels (modulo 3 for the 3-label text cases).

    Raises:
        ValueError: an unknown split.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split: {split!r} is not a split; use 'train' or 'test'.")
    d = _fashion()
    x = (d.x_train if split == "train" else d.x_test)[offset : offset + count]
    y = (d.y_train if split == "train" else d.y_test)[offset : offset + count].astype(np.int64)
    like = case.inputs(1, 0)
    if case.kind == "text":
        return _tokens(x, TEXT_VOCAB), y % 3
    return _images(x, tuple(like.shape[1:]), layout), y


def accuracy_floor(case: ZooCase) -> float:
    """The least test accuracy a fine-tune must reach to count as trained: chance (10 or 3 classes) plus 10 points
    (BERT's 60-step fine-tune on the token mapping reached 49% of 3 classes, the vision cases 47-77% of 10)."""
    return 1.0 / (3 if case.kind == "text" else 10) + 0.10


def record_trained(
    record: Callable[..., None],
    expected: dict[tuple[str, str], tuple[str, str]],
    framework: str,
    name: str,
    column: str,
    row: Any,
    accuracy: float,
) -> str:
    """Record one trained int8 cell (figures first, then the fine-tuned accuracy); the problem, or ''.

    Args:
        record: the ``zoo_record`` fixture.
        expected: known limits, ``(case, column) -> (status, reason pattern)``; every other cell must be ok, and a
            known mismatch that passes is no problem.
        framework: ``"torch"`` or ``"keras"``; name: the case; column: the cell's column.
        row: the export report's row; accuracy: the fine-tuned test accuracy.
    """
    detail = f"{cell_detail(row)}; fine-tuned {accuracy * 100:.0f}%"
    record(framework, name, column, row.status, detail)
    want = expected.get((name, column))
    if want is None:
        return "" if row.ok else f"{column}: {row.status}: {row.reason}"
    if want[0] == "mismatch" and row.ok:  # passing is never a defect
        return ""
    if row.status != want[0] or not re.search(want[1], row.reason or ""):
        return f"{column}: expected {want[0]} /{want[1]}/, got {row.status}: {row.reason}"
    return ""


def trained_cases(cases: Sequence[str], first: Sequence[str]) -> list[Any]:
    """The trained-int8 test parameters: ``first`` (so a run cut short covers them), then the other cases; none
    unless the full zoo runs (``FITSLIM_ZOO=full``)."""
    import pytest

    from tests.zoo import full_zoo

    order = [*first, *(n for n in cases if n not in first)]
    return [pytest.param(n, id=f"{n}-trained_int8") for n in order] if full_zoo() else []
