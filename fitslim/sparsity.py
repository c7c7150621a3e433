"""Framework-free sparsity math shared by the Lightning and Keras ``Pruning`` callbacks (NumPy only).

Both plugin sets compute masks with these functions, so the same weights give the same masks on either
side, on every rank of a distributed run and after a resume. The rules:

- A target sparsity becomes a count with ``round(sparsity * n)`` (Python's round, half to even), never
  ``floor``: 50% of 7 weights prunes 4 (3.5 rounds to 4), 50% of 5 prunes 2 (2.5 rounds to 2).
- The lowest scores are pruned; among equal scores the lowest flat index goes first, so a mask is fully
  determined by the weights (no dependence on sort stability or hardware).
- Unstructured scores are ``|w|`` (``"l1"``) or ``w**2`` (``"l2"``): the same order, hence the same masks;
  the importance only makes a difference for channels, whose score is the sum over the group's producing
  layers of each filter's L1 or L2 norm.
- N:M (``"2:4"``): in every run of M consecutive weights along the input dimension, the N largest are
  kept (the M - N smallest pruned, ties to the lower index).
- Channel scope ``"layer"`` prunes ``round(sparsity * C)`` channels of each group (at most C - 1);
  ``"global"`` prunes ``round(sparsity * sum(C))`` channels over all groups, ranking scores divided by
  their group's mean (so wide and narrow layers compare), and always keeps one channel per group.
- Layer patterns are ``fnmatch`` patterns on dotted module names; a pattern also matches any name that
  ends with it at a dot boundary (``"head.fc"`` matches ``"model.head.fc"``).

Example:
    >>> import numpy as np
    >>> prune_count(7, 0.5), prune_count(5, 0.5)
    (4, 2)
    >>> magnitude_masks([np.array([0.3, -0.1, 0.2, 0.0])], 0.5)[0]
    array([ True, False,  True, False])
    >>> n_of_m_mask(np.array([[1.0, -4.0, 3.0, 2.0]]), n=2, m=4, axis=1)
    array([[False,  True,  True, False]])
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "GRANULARITIES",
    "IMPORTANCES",
    "SCOPES",
    "channel_masks",
    "channel_scores",
    "magnitude_masks",
    "match_patterns",
    "n_of_m_mask",
    "parse_n_of_m",
    "prune_count",
    "prune_lowest",
    "sparsity_of",
]

#: Pruning granularities understood by both plugin sets.
GRANULARITIES: tuple[str, ...] = ("unstructured", "channel", "2:4")
#: Where a target count is computed: over all pruned layers together, or per layer (per channel group).
SCOPES: tuple[str, ...] = ("global", "layer")
#: Weight importance: L1 (``|w|``, sum of ``|w|`` per filter) or L2 (``w**2``, filter L2 norm).
IMPORTANCES: tuple[str, ...] = ("l1", "l2")

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.floating]


def _check_sparsity(sparsity: float) -> float:
    value = float(sparsity)
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise ValueError(f"sparsity must be in [0, 1); got {sparsity!r}. HINT: pass a fraction, e.g. 0.5.")
    return value


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}; got {value!r}.")
    return value


def prune_count(total: int, sparsity: float) -> int:
    """Return how many of ``total`` elements a target ``sparsity`` prunes: ``round(sparsity * total)``.

    Args:
        total: number of prunable elements (>= 0).
        sparsity: target fraction in [0, 1).

    Raises:
        ValueError: ``total`` < 0 or ``sparsity`` outside [0, 1).

    Example:
        >>> [prune_count(10, s) for s in (0.0, 0.25, 0.5, 0.8000000119)]
        [0, 2, 5, 8]
    """
    if total < 0:
        raise ValueError(f"total must be >= 0; got {total!r}.")
    return int(round(_check_sparsity(sparsity) * int(total)))


def prune_lowest(scores: npt.ArrayLike, count: int) -> BoolArray:
    """Return a keep-mask (True = kept) of a 1-D score array that prunes exactly ``count`` lowest scores.

    Ties at the threshold are pruned lowest index first, so the result equals
    ``np.argsort(scores, kind="stable")[:count]`` being pruned, computed in O(n) with a partition.

    Args:
        scores: 1-D importance scores (higher = more important).
        count: how many to prune; clipped to [0, len(scores)].

    Example:
        >>> prune_lowest([0.5, 0.1, 0.1, 0.9], 2)
        array([ True, False, False,  True])
        >>> prune_lowest([0.0, 0.0, 0.0], 2)
        array([False, False,  True])
    """
    flat = np.asarray(scores).reshape(-1)
    n = flat.size
    count = max(0, min(int(count), n))
    keep = np.ones(n, dtype=bool)
    if count == 0:
        return keep
    if count == n:
        keep[:] = False
        return keep
    threshold = np.partition(flat, count - 1)[count - 1]
    below = flat < threshold
    keep[below] = False
    remaining = count - int(below.sum())
    if remaining > 0:
        keep[np.flatnonzero(flat == threshold)[:remaining]] = False
    return keep


def _unstructured_scores(weight: npt.ArrayLike, importance: str) -> FloatArray:
    w = np.asarray(weight)
    if not np.issubdtype(w.dtype, np.floating) or w.dtype.itemsize < 4:
        w = w.astype(np.float32)
    if importance == "l1":
        return np.abs(w)  # exact in the weights' own precision
    # squares of float32 values are exact in float64, so "l2" orders weights exactly as "l1" does
    return np.square(w.astype(np.float64))


def magnitude_masks(
    weights: Sequence[npt.ArrayLike], sparsity: float, scope: str = "global", importance: str = "l1"
) -> list[BoolArray]:
    """Return unstructured keep-masks (True = kept), one per weight array, pruning the smallest magnitudes.

    Args:
        weights: the weight arrays of the pruned layers (any shapes).
        sparsity: target fraction in [0, 1).
        scope: ``"global"`` prunes ``round(sparsity * total)`` over all arrays together; ``"layer"`` prunes
            ``round(sparsity * n_i)`` in each array.
        importance: ``"l1"`` or ``"l2"`` (same order for single weights, hence the same masks).

    Raises:
        ValueError: an unknown scope or importance, or ``sparsity`` outside [0, 1).

    Example:
        >>> a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.5, 5.0])
        >>> [m.tolist() for m in magnitude_masks([a, b], 0.5, "global")]
        [[False, False, True, True], [False, True]]
        >>> [m.tolist() for m in magnitude_masks([a, b], 0.5, "layer")]
        [[False, False, True, True], [False, True]]
    """
    _check_choice("scope", scope, SCOPES)
    _check_choice("importance", importance, IMPORTANCES)
    sparsity = _check_sparsity(sparsity)
    scores = [_unstructured_scores(w, importance) for w in weights]
    if scope == "layer":
        return [prune_lowest(s, prune_count(s.size, sparsity)).reshape(s.shape) for s in scores]
    if not scores:
        return []
    flat = np.concatenate([s.reshape(-1) for s in scores])
    keep = prune_lowest(flat, prune_count(flat.size, sparsity))
    out: list[BoolArray] = []
    offset = 0
    for s in scores:
        out.append(keep[offset : offset + s.size].reshape(s.shape))
        offset += s.size
    return out


def parse_n_of_m(granularity: str) -> tuple[int, int]:
    """Return ``(n, m)`` of an ``"N:M"`` granularity string (N kept in every M).

    Raises:
        ValueError: not of the form ``"N:M"`` with 0 < N < M.

    Example:
        >>> parse_n_of_m("2:4")
        (2, 4)
    """
    parts = granularity.split(":")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        n, m = int(parts[0]), int(parts[1])
        if 0 < n < m:
            return n, m
    raise ValueError(f"granularity {granularity!r} is not 'N:M' with 0 < N < M. HINT: e.g. '2:4'.")


def n_of_m_mask(weight: npt.ArrayLike, n: int = 2, m: int = 4, axis: int = 1, importance: str = "l1") -> BoolArray:
    """Return the N:M keep-mask of ``weight``: in each run of ``m`` consecutive weights along ``axis``, keep ``n``.

    For a conv weight ``(out, in, kh, kw)`` or a linear weight ``(out, in)`` the input dimension is
    ``axis=1``: the groups are ``w[o, 4g:4g+4, y, x]``, as NVIDIA's 2:4 sparse tensor cores expect.

    Args:
        weight: the weight array.
        n: weights kept per group.
        m: group size; ``weight.shape[axis]`` must be a multiple of it.
        axis: the input dimension.
        importance: ``"l1"`` or ``"l2"`` (same masks).

    Raises:
        ValueError: ``weight.shape[axis]`` is not a multiple of ``m``, or ``n``/``m``/``axis`` are invalid.

    Example:
        >>> n_of_m_mask(np.array([[0.1, 0.0, 0.0, 0.2, 9.0, 8.0, 7.0, 6.0]])).astype(int)
        array([[1, 0, 0, 1, 1, 1, 0, 0]])
    """
    _check_choice("importance", importance, IMPORTANCES)
    w = _unstructured_scores(weight, importance)
    if not 0 < n < m:
        raise ValueError(f"n:m must satisfy 0 < n < m; got {n}:{m}.")
    if not -w.ndim <= axis < w.ndim:
        raise ValueError(f"axis {axis} is out of range for a weight of shape {w.shape}.")
    size = w.shape[axis]
    if size % m:
        raise ValueError(
            f"the input dimension (axis {axis}) has {size} weights, not a multiple of {m}. "
            f"HINT: {n}:{m} sparsity needs input channels divisible by {m}; exclude this layer."
        )
    moved = np.moveaxis(w, axis, -1)
    groups = moved.reshape(*moved.shape[:-1], size // m, m)
    order = np.argsort(groups, axis=-1, kind="stable")
    keep = np.ones(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[..., : m - n], False, axis=-1)
    return np.moveaxis(keep.reshape(moved.shape), -1, axis)


def channel_scores(filters: Sequence[npt.ArrayLike], importance: str = "l1") -> FloatArray:
    """Return one score per channel: the sum over ``filters`` of each channel's L1 or L2 filter norm.

    Args:
        filters: arrays whose first axis is the channel (e.g. the conv weights producing one channel group,
            each sliced to the group's channel order); all with the same number of channels.
        importance: ``"l1"`` (sum of ``|w|``) or ``"l2"`` (square root of the sum of ``w**2``).

    Raises:
        ValueError: no filters, filters with different channel counts, or an unknown importance.

    Example:
        >>> f = np.array([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
        >>> channel_scores([f], "l1").tolist(), channel_scores([f], "l2").tolist()
        ([4.0, 3.0], [2.0, 3.0])
    """
    _check_choice("importance", importance, IMPORTANCES)
    if not filters:
        raise ValueError("channel_scores needs at least one filter array.")
    arrays = [np.asarray(f, dtype=np.float64) for f in filters]
    channels = arrays[0].shape[0]
    total = np.zeros(channels, dtype=np.float64)
    for a in arrays:
        if a.shape[0] != channels:
            raise ValueError(f"filters have different channel counts: {a.shape[0]} and {channels}.")
        flat = a.reshape(channels, -1)
        total += np.abs(flat).sum(axis=1) if importance == "l1" else np.sqrt(np.square(flat).sum(axis=1))
    return total


def channel_masks(
    scores: Sequence[npt.ArrayLike], sparsity: float, scope: str = "layer", round_to: int | None = None
) -> list[BoolArray]:
    """Return one channel keep-mask per group (True = kept) from per-group channel scores.

    Args:
        scores: one 1-D score array per channel group.
        sparsity: target fraction of channels to prune, in [0, 1).
        scope: ``"layer"``: ``min(round(sparsity * C), C - 1)`` channels of each group; ``"global"``:
            ``round(sparsity * sum(C))`` channels in all, the lowest of ``score / mean(group score)``, never
            the last channel of a group.
        round_to: keep a multiple of this many channels in each group (or all of them): the best-scoring
            pruned channels are kept again until it is, so the sparsity reached may fall below the target.
            Runtimes' blocked kernels (onnxruntime's NCHWc, ncnn's packing) want multiples of 4 or 8.

    Raises:
        ValueError: an unknown scope, ``sparsity`` outside [0, 1), or ``round_to`` < 1.

    Example:
        >>> [m.tolist() for m in channel_masks([np.array([1.0, 2.0, 3.0, 4.0])], 0.5)]
        [[False, False, True, True]]
        >>> [m.tolist() for m in channel_masks([np.array([1.0, 1.0]), np.array([1.0, 9.0, 9.0, 9.0])], 0.5, "global")]
        [[False, True], [False, False, True, True]]
        >>> [int(m.sum()) for m in channel_masks([np.arange(1.0, 17.0), np.arange(1.0, 11.0)], 0.6, round_to=4)]
        [8, 4]
    """
    _check_choice("scope", scope, SCOPES)
    sparsity = _check_sparsity(sparsity)
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to must be a positive integer or None; got {round_to!r}.")
    arrays = [np.asarray(s, dtype=np.float64).reshape(-1) for s in scores]
    keep = _channel_keep(arrays, sparsity, scope)
    if round_to is not None and round_to > 1:
        for a, k in zip(arrays, keep, strict=True):
            want = min(a.size, -(-int(k.sum()) // round_to) * round_to)
            pruned = np.flatnonzero(~k)
            back = pruned[np.argsort(-a[pruned], kind="stable")][: want - int(k.sum())]
            k[back] = True
    return keep


def _channel_keep(arrays: Sequence[FloatArray], sparsity: float, scope: str) -> list[BoolArray]:
    if scope == "layer":
        return [prune_lowest(a, min(prune_count(a.size, sparsity), max(a.size - 1, 0))) for a in arrays]
    normalized = []
    for a in arrays:
        mean = float(a.mean()) if a.size else 0.0
        normalized.append(a / mean if mean > 0 else np.zeros_like(a))
    keep = [np.ones(a.size, dtype=bool) for a in arrays]
    if not arrays:
        return keep
    budget = prune_count(sum(a.size for a in arrays), sparsity)
    flat = np.concatenate(normalized)
    owner = np.concatenate([np.full(a.size, g) for g, a in enumerate(arrays)])
    local = np.concatenate([np.arange(a.size) for a in arrays])
    left = [a.size for a in arrays]
    for i in np.argsort(flat, kind="stable"):
        if budget == 0:
            break
        g = int(owner[i])
        if left[g] <= 1:
            continue
        keep[g][local[i]] = False
        left[g] -= 1
        budget -= 1
    return keep


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, "*." + pattern)


def match_patterns(names: Sequence[str], patterns: Sequence[str]) -> dict[str, list[str]]:
    """Return, for each pattern, the names it matches (``fnmatch``; also at any dot-boundary suffix).

    Args:
        names: dotted module names, e.g. ``"model.stem.conv"``.
        patterns: ``fnmatch`` patterns, e.g. ``"*.conv"``, ``"stem.*"``, ``"head.fc"``.

    Example:
        >>> match_patterns(["model.stem.conv", "model.head.fc"], ["head.fc", "*conv", "x"])
        {'head.fc': ['model.head.fc'], '*conv': ['model.stem.conv'], 'x': []}
    """
    return {p: [n for n in names if _matches(n, p)] for p in patterns}


def sparsity_of(masks: Sequence[npt.ArrayLike]) -> float:
    """Return the fraction of False (pruned) entries over all ``masks`` (0.0 for none).

    Example:
        >>> sparsity_of([np.array([True, False]), np.array([False, False])])
        0.75
    """
    total = sum(int(np.asarray(m).size) for m in masks)
    pruned = sum(int(np.asarray(m).size - np.count_nonzero(m)) for m in masks)
    return pruned / total if total else 0.0
