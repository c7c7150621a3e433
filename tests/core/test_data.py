"""The bundled digits: identical to scikit-learn's, deterministic split, layouts, resizing."""

from __future__ import annotations

import numpy as np
import pytest

from fitslim.data import digits, resize_bilinear


def test_bundled_copy_equals_scikit_learn() -> None:
    sklearn_datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn not installed")
    ref = sklearn_datasets.load_digits()
    d = digits()
    x = np.concatenate([d.x_train, d.x_val, d.x_test])[:, 0] * 16.0
    y = np.concatenate([d.y_train, d.y_val, d.y_test])
    assert len(x) == 1797
    # the split is a permutation of sklearn's data: compare as sorted rows
    ours = np.concatenate([x.reshape(len(x), -1), y[:, None]], axis=1)
    theirs = np.concatenate([ref.images.reshape(1797, -1), ref.target[:, None]], axis=1)
    np.testing.assert_array_equal(ours[np.lexsort(ours.T)], theirs[np.lexsort(theirs.T)])


def test_split_is_deterministic_disjoint_and_stratified() -> None:
    a, b = digits(), digits()
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert (len(a.y_train), len(a.y_val), len(a.y_test)) == (1259, 269, 269)
    assert set(np.bincount(a.y_test)) <= {26, 27, 28}  # every class ~15%
    assert not np.array_equal(digits(seed=1).y_test, a.y_test)
    rows = {r.tobytes() for r in a.x_test}
    assert sum(r.tobytes() in rows for r in a.x_train) < 5  # only genuine duplicate images may coincide


def test_layouts_dtype_and_range() -> None:
    nchw, nhwc = digits(layout="NCHW"), digits(layout="NHWC")
    assert nchw.x_train.shape[1:] == (1, 8, 8) == nchw.input_shape
    assert nhwc.x_train.shape[1:] == (8, 8, 1) == nhwc.input_shape
    np.testing.assert_array_equal(nchw.x_train[:, 0], nhwc.x_train[..., 0])
    assert nchw.x_train.dtype == np.float32 and nchw.y_train.dtype == np.int64
    assert nchw.x_train.min() == 0.0 and nchw.x_train.max() == 1.0


def test_resize_bilinear_matches_hand_case_and_shapes() -> None:
    img = np.array([[[0.0, 1.0], [2.0, 3.0]]], dtype=np.float32)
    out = resize_bilinear(img, 4)
    # half-pixel centres: source coords -0.25(clamped 0), 0.25, 0.75, 1.25(clamped 1)
    np.testing.assert_allclose(out[0, 0], [0.0, 0.25, 0.75, 1.0], atol=1e-6)
    np.testing.assert_allclose(out[0, :, 0], [0.0, 0.5, 1.5, 2.0], atol=1e-6)
    d = digits(size=16)
    assert d.x_test.shape[1:] == (1, 16, 16) and d.size == 16
    np.testing.assert_allclose(resize_bilinear(img, 2), img)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layout": "CHW"}, "layout"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"test_fraction": 0.5, "val_fraction": 0.45}, "val_fraction"),
        ({"size": 0}, "size"),
    ],
)
def test_errors(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        digits(**kwargs)
