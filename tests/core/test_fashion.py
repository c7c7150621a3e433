"""Fashion-MNIST loader: where it looks, its errors on bad files, its fixed split; and a bounded real-data case.

Most cases run on small or fake IDX files written to ``tmp_path``; the ``realdata`` ones read the real files
(skipped with the install hint when they are absent, failed instead under ``FITSLIM_REQUIRE_REALDATA=1``, as CI
sets it).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

import fitslim.data.fashion as fashion
from fitslim.data import DataFileError, FashionMNIST, FashionMNISTNotFound, fashion_mnist, resize_bilinear

REPO = Path(__file__).resolve().parents[2]


def _idx(magic: int, shape: tuple[int, ...], data: npt.NDArray[np.uint8] | bytes) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in shape)
    return header + (data.tobytes() if isinstance(data, np.ndarray) else data)


def _write(folder: Path, stem: str, payload: bytes, gz: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (stem + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(payload, compresslevel=1) if gz else payload)
    return path


def _fake_images(n: int, test: bool) -> npt.NDArray[np.uint8]:
    """Images that carry their own index (pixels 0-2, base 256) and split (pixel 3: 1 for test)."""
    x = np.zeros((n, 28, 28), dtype=np.uint8)
    i = np.arange(n)
    x[:, 0, 0], x[:, 0, 1], x[:, 0, 2] = i % 256, (i // 256) % 256, i // 65536
    x[:, 0, 3] = 1 if test else 0
    x[:, 5:20, 5:20] = (i % 7 * 30)[:, None, None]  # something to resize
    return x


def _decode(x: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(index, split flag) of images written by :func:`_fake_images`, from NCHW or NHWC float arrays."""
    p = np.rint(x.reshape(len(x), 28, 28) * 255).astype(np.int64)
    return p[:, 0, 0] + 256 * p[:, 0, 1] + 65536 * p[:, 0, 2], p[:, 0, 3]


@pytest.fixture(scope="module")
def fake_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Full-size fake files (uncompressed: quick to write and read); labels i % 10 for train, (i * 3) % 10 test."""
    folder = tmp_path_factory.mktemp("fake-fashion")
    _write(folder, "train-images-idx3-ubyte", _idx(2051, (60000, 28, 28), _fake_images(60000, test=False)))
    _write(folder, "train-labels-idx1-ubyte", _idx(2049, (60000,), (np.arange(60000) % 10).astype(np.uint8)))
    _write(folder, "t10k-images-idx3-ubyte", _idx(2051, (10000, 28, 28), _fake_images(10000, test=True)))
    _write(folder, "t10k-labels-idx1-ubyte", _idx(2049, (10000,), (np.arange(10000) * 3 % 10).astype(np.uint8)))
    return folder


# ------------------------------------------------------------------------------------------- where it looks


def _hint_both_ways(message: str) -> None:
    assert "apt-get install dataset-fashion-mnist" in message, message
    assert "train-images-idx3-ubyte.gz" in message and "zalandoresearch/fashion-mnist" in message, message
    assert "FITSLIM_FASHION_MNIST" in message and "path=" in message, message


def test_missing_files_name_both_ways_to_get_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(fashion.ENV_VAR, raising=False)
    with pytest.raises(FashionMNISTNotFound) as err:
        fashion_mnist(tmp_path)
    _hint_both_ways(str(err.value))
    assert f"{tmp_path} (path argument)" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)

    # no path, no variable: the Debian package's folder (pointed at an empty one here)
    monkeypatch.setattr(fashion, "DEBIAN_DIR", tmp_path / "debian")
    with pytest.raises(FashionMNISTNotFound, match="Debian package dataset-fashion-mnist") as err:
        fashion_mnist()
    _hint_both_ways(str(err.value))

    # only some files: the message names the missing ones, not the present one
    _write(tmp_path, "train-labels-idx1-ubyte", b"", gz=True)
    with pytest.raises(FashionMNISTNotFound) as err:
        fashion_mnist(tmp_path)
    assert "missing train-images-idx3-ubyte[.gz], t10k-images" in str(err.value)
    assert "train-labels-idx1-ubyte[.gz]" not in str(err.value)


def test_env_var_is_an_explicit_choice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_folder: Path) -> None:
    """A set ``$FITSLIM_FASHION_MNIST`` is the only place looked: no silent fallback to the Debian copy."""
    monkeypatch.setattr(fashion, "DEBIAN_DIR", fake_folder)  # a complete folder where the package would be
    monkeypatch.setenv(fashion.ENV_VAR, str(tmp_path / "elsewhere"))
    with pytest.raises(FashionMNISTNotFound) as err:
        fashion.find_fashion_mnist()
    assert "$FITSLIM_FASHION_MNIST" in str(err.value) and str(fake_folder) not in str(err.value)
    _hint_both_ways(str(err.value))
    monkeypatch.setenv(fashion.ENV_VAR, str(fake_folder))
    assert fashion.find_fashion_mnist() == fake_folder
    monkeypatch.delenv(fashion.ENV_VAR)
    assert fashion.find_fashion_mnist() == fake_folder  # the Debian place when the variable is unset
    # an explicit path wins over the variable
    monkeypatch.setenv(fashion.ENV_VAR, str(tmp_path / "elsewhere"))
    assert fashion.find_fashion_mnist(fake_folder) == fake_folder


# --------------------------------------------------------------------------------------------- bad files


LABELS = ("train-labels-idx1-ubyte", 2049)
IMAGES = ("t10k-images-idx3-ubyte", 2051)


@pytest.mark.parametrize(
    ("stem", "magic", "items", "payload", "gz", "match"),
    [
        # truncated gzip stream: half of a valid .gz file
        (*LABELS, 50, "truncated-gz", True, "cannot be read as a gzip file.*truncated or corrupt"),
        (*LABELS, 50, "not-gz", True, "cannot be read as a gzip file"),
        (*LABELS, 50, _idx(2051, (50,), bytes(50)), False, "magic number 0x00000803, expected 0x00000801"),
        (*IMAGES, 5, _idx(2049, (5, 28, 28), bytes(5 * 784)), False, r"magic number .*\(images\)"),
        (*IMAGES, 5, _idx(2051, (5, 27, 28), bytes(5 * 27 * 28)), False, r"shape \(5, 27, 28\), expected \(5, 28"),
        (*LABELS, 50, _idx(2049, (49,), bytes(49)), True, r"shape \(49,\), expected \(50,\)"),
        (*IMAGES, 5, _idx(2051, (5, 28, 28), bytes(5 * 784 - 1)), False, "3919 bytes of data.*expected 3920"),
        (*LABELS, 50, _idx(2049, (50,), bytes(51)), True, "51 bytes of data.*truncated or padded"),
        (*LABELS, 50, b"\x00\x00\x08", False, "shorter than an IDX header"),
    ],
)
def test_bad_files_raise_data_file_error_naming_the_file(
    tmp_path: Path, stem: str, magic: int, items: int, payload: bytes | str, gz: bool, match: str
) -> None:
    if payload == "truncated-gz":
        whole = gzip.compress(_idx(2049, (50,), np.arange(50, dtype=np.uint8) % 10))
        file = tmp_path / (stem + ".gz")
        file.write_bytes(whole[: len(whole) // 2])
    elif payload == "not-gz":
        file = tmp_path / (stem + ".gz")
        file.write_bytes(_idx(2049, (50,), bytes(50)))  # plain IDX bytes under a .gz name
    else:
        assert isinstance(payload, bytes)
        file = _write(tmp_path, stem, payload, gz=gz)
    with pytest.raises(DataFileError, match=match) as err:
        fashion._read_idx(file, magic, items)
    assert str(err.value).startswith(str(file)), err.value
    assert isinstance(err.value, ValueError)


def test_good_small_file_reads_exactly(tmp_path: Path) -> None:
    images = np.arange(3 * 784, dtype=np.uint32).reshape(3, 28, 28).astype(np.uint8)
    for gz in (False, True):
        file = _write(tmp_path / str(gz), IMAGES[0], _idx(2051, (3, 28, 28), images), gz=gz)
        np.testing.assert_array_equal(fashion._read_idx(file, 2051, 3), images)


def test_public_loader_reports_the_bad_file(tmp_path: Path) -> None:
    """Through :func:`fashion_mnist`: the first bad file is named, never a numpy traceback."""
    for stem, _, _ in fashion.FILES.values():
        _write(tmp_path, stem, b"", gz=True)
    bad = _write(tmp_path, "train-images-idx3-ubyte", _idx(2051, (60000, 28, 28), bytes(1000)), gz=True)
    with pytest.raises(DataFileError, match="expected 47040000") as err:
        fashion_mnist(tmp_path)
    assert str(bad) in str(err.value)


def test_labels_above_nine_are_rejected(tmp_path: Path, fake_folder: Path) -> None:
    for name in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).symlink_to(fake_folder / name)
    _write(tmp_path, "train-labels-idx1-ubyte", _idx(2049, (60000,), np.full(60000, 10, dtype=np.uint8)))
    with pytest.raises(DataFileError, match="train labels go up to 10; Fashion-MNIST has 10 classes"):
        fashion_mnist(tmp_path)


# ------------------------------------------------------------------------------------------------- split


@pytest.mark.slow
def test_fixed_split_sizes_balance_disjoint_and_deterministic(fake_folder: Path) -> None:
    d = fashion_mnist(fake_folder)
    assert isinstance(d, FashionMNIST) and d.source == str(fake_folder)
    assert (len(d.y_train), len(d.y_val), len(d.y_test)) == (54000, 6000, 10000)
    assert d.x_train.shape[1:] == (1, 28, 28) and d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    assert np.bincount(d.y_val).tolist() == [600] * 10
    assert np.bincount(d.y_train).tolist() == [5400] * 10
    train_idx, train_flag = _decode(d.x_train)
    val_idx, val_flag = _decode(d.x_val)
    test_idx, test_flag = _decode(d.x_test)
    # validation comes from the training file only; the test split is the whole test file, in order
    assert not val_flag.any() and not train_flag.any() and test_flag.all()
    np.testing.assert_array_equal(test_idx, np.arange(10000))
    assert sorted(np.concatenate([train_idx, val_idx]).tolist()) == list(range(60000))
    np.testing.assert_array_equal(d.y_val, val_idx % 10)  # each image keeps its label
    # the split's definition is pinned: the same validation images on every machine and every run
    digest = hashlib.sha256(np.sort(val_idx).astype("<i8").tobytes()).hexdigest()[:16]
    assert digest == PINNED_VAL_DIGEST, digest
    np.testing.assert_array_equal(_decode(fashion_mnist(fake_folder).x_val)[0], val_idx)

    # the same split for the other layout and for any size
    nhwc = fashion_mnist(fake_folder, layout="NHWC")
    assert nhwc.x_val.shape[1:] == (28, 28, 1)
    np.testing.assert_array_equal(_decode(nhwc.x_val)[0], val_idx)
    small = fashion_mnist(fake_folder, size=12)
    assert small.x_val.shape[1:] == (1, 12, 12)
    np.testing.assert_array_equal(small.y_val, d.y_val)
    np.testing.assert_allclose(small.x_val[:, 0], resize_bilinear(d.x_val[:, 0], 12), atol=1e-6)


#: the first 16 hex digits of the SHA-256 of the sorted validation indices for labels i % 10
PINNED_VAL_DIGEST = "fc0f22f580b86c00"


@pytest.mark.parametrize(("kwargs", "match"), [({"layout": "CHW"}, "layout"), ({"size": 0}, "size")])
def test_argument_errors(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fashion_mnist(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real() -> FashionMNIST:
    return fashion_mnist()


@pytest.mark.realdata
@pytest.mark.slow
def test_real_data_shapes_range_and_class_balance(real: FashionMNIST) -> None:
    assert real.x_train.shape == (54000, 1, 28, 28) and real.x_test.shape == (10000, 1, 28, 28)
    assert real.x_val.shape == (6000, 1, 28, 28)
    assert real.x_train.min() == 0.0 and real.x_train.max() == 1.0
    assert np.bincount(real.y_train).tolist() == [5400] * 10
    assert np.bincount(real.y_val).tolist() == [600] * 10
    assert np.bincount(real.y_test).tolist() == [1000] * 10
    assert len(real.classes) == 10 and real.classes[9] == "Ankle boot"
    # images are real: per-class mean images differ (trousers and bags do not look alike)
    means = np.stack([real.x_test[real.y_test == c].mean(0).ravel() for c in range(10)])
    assert np.abs(means[1] - means[8]).mean() > 0.05


@pytest.mark.realdata
@pytest.mark.slow
def test_real_data_tiny_softmax_regression_learns(real: FashionMNIST) -> None:
    """Softmax regression, 4 epochs of SGD on 10,000 training images (well under a second).

    It reaches 0.81 on the validation split (0.10 is chance); the floor 0.70 leaves 11 points for any
    CPU's float rounding, and fails on shuffled labels or images that are not Fashion-MNIST.
    """
    n = 10000
    x, y = real.x_train[:n].reshape(n, -1), real.y_train[:n]
    w, b = np.zeros((784, 10), np.float32), np.zeros(10, np.float32)
    for _ in range(4):
        for i in range(0, n, 50):
            xb, yb = x[i : i + 50], y[i : i + 50]
            z = xb @ w + b
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(yb)), yb] -= 1
            w -= 0.1 * xb.T @ p / len(yb)
            b -= 0.1 * p.mean(0)
    acc = float(((real.x_val.reshape(len(real.x_val), -1) @ w + b).argmax(1) == real.y_val).mean())
    assert acc > 0.70, acc


# ----------------------------------------------------------------------------------- fail, not skip, in CI


def _pytest_realdata(env_extra: dict[str, str], empty: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FITSLIM_REQUIRE_REALDATA"}
    env.update({fashion.ENV_VAR: str(empty), "OMP_NUM_THREADS": "1", **env_extra})
    node = "tests/core/test_fashion.py::test_real_data_shapes_range_and_class_balance"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", node],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_realdata_tests_skip_locally_but_fail_when_required(tmp_path: Path) -> None:
    """Without the data a ``realdata`` test skips with the install hint, and fails under FITSLIM_REQUIRE_REALDATA=1."""
    local = _pytest_realdata({}, tmp_path)
    assert local.returncode == 0, local.stdout[-2000:] + local.stderr[-2000:]
    assert "1 skipped" in local.stdout and "apt-get install dataset-fashion-mnist" in local.stdout, local.stdout
    ci = _pytest_realdata({"FITSLIM_REQUIRE_REALDATA": "1"}, tmp_path)
    assert ci.returncode == 1, ci.stdout[-2000:] + ci.stderr[-2000:]
    # a failure at setup: pytest counts it as an error, and the run fails
    assert "1 error" in ci.stdout and "FITSLIM_REQUIRE_REALDATA=1 and Fashion-MNIST not found" in ci.stdout, ci.stdout
    assert "apt-get install dataset-fashion-mnist" in ci.stdout
