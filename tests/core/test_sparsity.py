"""Core sparsity math (NumPy only) against plain sort-based references: counts, scopes, N:M, channels, patterns."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import fitslim.sparsity as sparsity
from fitslim.sparsity import (
    channel_masks,
    channel_scores,
    magnitude_masks,
    match_patterns,
    n_of_m_mask,
    parse_n_of_m,
    prune_count,
    prune_lowest,
    sparsity_of,
)


def _reference_keep(scores: np.ndarray, count: int) -> np.ndarray:
    """Prune the ``count`` lowest, ties lowest index first: a stable argsort."""
    keep = np.ones(scores.size, dtype=bool)
    keep[np.argsort(scores.reshape(-1), kind="stable")[:count]] = False
    return keep


def test_docstring_examples() -> None:
    result = doctest.testmod(sparsity)
    assert result.attempted > 5 and result.failed == 0


@pytest.mark.parametrize(
    ("total", "s", "expected"),
    [(10, 0.5, 5), (7, 0.5, 4), (5, 0.5, 2), (3, 0.5, 2), (100, 0.8000000119209290, 80), (9, 0.0, 0), (1, 0.4, 0)],
)
def test_prune_count_rounds_half_to_even(total: int, s: float, expected: int) -> None:
    assert prune_count(total, s) == expected == round(s * total)


@pytest.mark.parametrize("bad", [-0.1, 1.0, float("nan")])
def test_prune_count_rejects_bad_sparsity(bad: float) -> None:
    with pytest.raises(ValueError, match="sparsity"):
        prune_count(10, bad)


@pytest.mark.parametrize("seed", range(6))
def test_prune_lowest_matches_stable_argsort(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random(257), 1)  # many ties
    for count in (0, 1, 13, 128, 256, 257):
        np.testing.assert_array_equal(prune_lowest(scores, count), _reference_keep(scores, count))


def test_magnitude_masks_global_vs_layer() -> None:
    rng = np.random.default_rng(0)
    small, large = rng.normal(0, 0.01, (4, 6)), rng.normal(0, 1.0, (3, 5, 2))
    glob = magnitude_masks([small, large], 0.5, "global")
    flat = np.abs(np.concatenate([small.ravel(), large.ravel()]))
    keep = _reference_keep(flat, round(0.5 * flat.size))
    np.testing.assert_array_equal(np.concatenate([m.ravel() for m in glob]), keep)
    assert (~glob[0]).sum() == 24  # the small-magnitude layer goes first under one global threshold
    layer = magnitude_masks([small, large], 0.5, "layer")
    assert [(~m).sum() for m in layer] == [12, 15]
    for m, w in zip(layer, (small, large), strict=True):
        np.testing.assert_array_equal(m.ravel(), _reference_keep(np.abs(w.ravel()), round(0.5 * w.size)))
    np.testing.assert_array_equal(
        np.concatenate([m.ravel() for m in magnitude_masks([small, large], 0.5, "global", "l2")]), keep
    )


def test_n_of_m_keeps_two_largest_of_every_four_along_inputs() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(6, 8, 3, 3))
    mask = n_of_m_mask(w, 2, 4, axis=1)
    groups = np.moveaxis(mask, 1, -1).reshape(6, 3, 3, 2, 4)
    assert (groups.sum(-1) == 2).all()
    mags = np.moveaxis(np.abs(w), 1, -1).reshape(6, 3, 3, 2, 4)
    kept_min = np.where(groups, mags, np.inf).min(-1)
    pruned_max = np.where(groups, -np.inf, mags).max(-1)
    assert (kept_min >= pruned_max).all()
    linear = n_of_m_mask(np.array([[0.0, 0.0, 0.0, 0.0, -1.0, 0.5, 2.0, 0.1]]))
    np.testing.assert_array_equal(linear, [[False, False, True, True, True, False, True, False]])
    with pytest.raises(ValueError, match="multiple of 4"):
        n_of_m_mask(np.ones((4, 6)))
    assert parse_n_of_m("2:4") == (2, 4)
    with pytest.raises(ValueError, match="N:M"):
        parse_n_of_m("4:2")


def test_channel_l1_and_l2_choose_different_channels() -> None:
    filters = np.array([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0], [5.0, 5.0, 0.0, 0.0]])
    l1, l2 = channel_scores([filters], "l1"), channel_scores([filters], "l2")
    np.testing.assert_allclose(l1, [4.0, 3.0, 10.0])
    np.testing.assert_allclose(l2, [2.0, 3.0, np.sqrt(50.0)])
    assert channel_masks([l1], 0.34)[0].tolist() == [True, False, True]
    assert channel_masks([l2], 0.34)[0].tolist() == [False, True, True]
    summed = channel_scores([filters, 2 * filters], "l1")
    np.testing.assert_allclose(summed, 3 * l1)


def test_channel_masks_layer_and_global_counts() -> None:
    rng = np.random.default_rng(2)
    groups = [rng.random(8), rng.random(16) * 10, rng.random(3)]
    layer = channel_masks(groups, 0.5, "layer")
    assert [int((~m).sum()) for m in layer] == [4, 8, 2]  # round(1.5) = 2
    glob = channel_masks(groups, 0.5, "global")
    assert sum(int((~m).sum()) for m in glob) == round(0.5 * 27)
    assert all(m.any() for m in glob)
    # global ranks scores relative to their group's mean: scaling one group changes nothing
    scaled = channel_masks([groups[0], groups[1] * 1000, groups[2]], 0.5, "global")
    for a, b in zip(glob, scaled, strict=True):
        np.testing.assert_array_equal(a, b)
    # the last channel of a group is never pruned
    tiny = channel_masks([np.array([0.0]), np.array([1.0, 2.0])], 0.9, "global")
    assert tiny[0].tolist() == [True] and tiny[1].sum() == 1


def test_match_patterns_and_sparsity_of() -> None:
    names = ["model.stem.conv", "model.blocks.0.dw_conv", "model.blocks.0.pw_conv", "model.head.fc"]
    hits = match_patterns(names, ["blocks.*", "*dw_conv", "head.fc", "stem", "nothing*"])
    assert hits["blocks.*"] == names[1:3]
    assert hits["*dw_conv"] == [names[1]]
    assert hits["head.fc"] == [names[3]]
    assert hits["stem"] == [] and hits["nothing*"] == []
    assert sparsity_of([np.ones(3, bool), np.zeros(1, bool)]) == 0.25


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_channel_masks_round_to_keeps_multiples_and_the_best_channels(scope: str) -> None:
    rng = np.random.default_rng(0)
    scores = [rng.random(c) + 0.1 for c in (32, 24, 10, 3)]
    plain = channel_masks(scores, 0.6, scope)
    rounded = channel_masks(scores, 0.6, scope, round_to=8)
    for s, p, r in zip(scores, plain, rounded, strict=True):
        kept = int(r.sum())
        assert kept % 8 == 0 or kept == s.size, (s.size, kept)
        assert kept >= int(p.sum()) and (p <= r).all()  # only ever keeps more: the same channels plus others
        back = r & ~p
        if back.any():  # the channels kept again are the best-scoring of those the plain mask pruned
            assert s[back].min() >= s[~r].max(initial=-np.inf)
    assert all((a == b).all() for a, b in zip(channel_masks(scores, 0.6, scope, round_to=1), plain, strict=True))
    with pytest.raises(ValueError, match="round_to must be a positive integer or None; got 0"):
        channel_masks(scores, 0.6, scope, round_to=0)


def test_pruning_spec_round_to_is_for_channels_only() -> None:
    from fitslim.callback_spec import PruningSpec

    assert PruningSpec(sparsity=0.5, granularity="channel", round_to=8).round_to == 8
    with pytest.raises(ValueError, match=r"Pruning\(round_to=...\).*granularity='unstructured'"):
        PruningSpec(sparsity=0.5, granularity="unstructured", round_to=8)
    with pytest.raises(ValueError, match=r"Pruning\(round_to=...\): got -2"):
        PruningSpec(sparsity=0.5, granularity="channel", round_to=-2)
