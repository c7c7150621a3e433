"""Fashion-MNIST: 70,000 28x28 grey images of clothing in 10 classes, read from the four standard IDX files.

fitslim never downloads it. :func:`fashion_mnist` looks for the files in ``path``, else in the folder named by
the ``FITSLIM_FASHION_MNIST`` environment variable when it is set (and only there), else where the Debian package
``dataset-fashion-mnist`` installs them (``/usr/share/datasets/fashion-mnist``). Each file may be gzipped
(``*-ubyte.gz``, as the dataset's authors and the Debian package ship them) or not.

The split is fixed: the 10,000-image test split is the standard one, untouched; the validation split is 6,000
images (600 of each class) carved from the 60,000 training images by a fixed permutation, the same for every
caller and every choice of hyper-parameters; the remaining 54,000 are for training.

Example (needs the files):
    >>> from fitslim.data import fashion_mnist
    >>> d = fashion_mnist(layout="NHWC")  # doctest: +SKIP
    >>> d.x_train.shape, d.x_val.shape, d.x_test.shape  # doctest: +SKIP
    ((54000, 28, 28, 1), (6000, 28, 28, 1), (10000, 28, 28, 1))
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fitslim.data.digits import Digits, Layout, resize_bilinear

__all__ = [
    "CLASSES",
    "DEBIAN_DIR",
    "ENV_VAR",
    "FILES",
    "VAL_PER_CLASS",
    "DataFileError",
    "FashionMNIST",
    "FashionMNISTNotFound",
    "fashion_mnist",
    "find_fashion_mnist",
]

#: the environment variable naming a folder that holds the four files
ENV_VAR = "FITSLIM_FASHION_MNIST"
#: where ``apt-get install dataset-fashion-mnist`` puts them
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
#: the four standard files: role -> (file stem, IDX magic number, number of items)
FILES: dict[str, tuple[str, int, int]] = {
    "train_images": ("train-images-idx3-ubyte", 2051, 60000),
    "train_labels": ("train-labels-idx1-ubyte", 2049, 60000),
    "test_images": ("t10k-images-idx3-ubyte", 2051, 10000),
    "test_labels": ("t10k-labels-idx1-ubyte", 2049, 10000),
}
#: the class names, by label
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
#: validation images of each class carved from the training split (6,000 in all)
VAL_PER_CLASS = 600
#: the seed of the fixed validation permutation (part of the data set's definition: never a parameter)
_SPLIT_SEED = 20201
_SIDE = 28


class FashionMNISTNotFound(FileNotFoundError):
    """The four Fashion-MNIST files are in none of the places :func:`fashion_mnist` looks."""


class DataFileError(ValueError):
    """A data file exists but is not what it should be (truncated, wrong magic number, wrong shape)."""


@dataclass(frozen=True)
class FashionMNIST(Digits):
    """Fashion-MNIST as float32 images in [0, 1] and int64 labels: 54,000 train, 6,000 validation, 10,000 test.

    The fields are those of :class:`fitslim.data.Digits`, so code written for the bundled digits runs on it;
    ``source`` is the folder the files were read from.
    """

    source: str = ""

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names, by label."""
        return CLASSES


def _candidates(path: str | os.PathLike[str] | None) -> list[tuple[str, Path]]:
    if path is not None:
        return [("path argument", Path(path))]
    env = os.environ.get(ENV_VAR)
    if env:  # an explicit choice, like ``path``: never silently replaced by the Debian package's copy
        return [(f"${ENV_VAR}", Path(env))]
    return [("Debian package dataset-fashion-mnist", DEBIAN_DIR)]


def _file_in(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def find_fashion_mnist(path: str | os.PathLike[str] | None = None) -> Path:
    """The folder that holds the four Fashion-MNIST files.

    Args:
        path: a folder to use; when None, ``$FITSLIM_FASHION_MNIST`` when set (then only there), else the Debian
            package's folder.

    Raises:
        FashionMNISTNotFound: no candidate folder holds all four files; the message names what is missing and
            both ways to get the files.
    """
    tried = []
    for how, folder in _candidates(path):
        missing = [stem for stem, _, _ in FILES.values() if _file_in(folder, stem) is None]
        if not missing:
            return folder
        tried.append(f"{folder} ({how}): missing {', '.join(m + '[.gz]' for m in missing)}")
    raise FashionMNISTNotFound(
        "Fashion-MNIST not found. Looked in: "
        + "; ".join(tried)
        + ". HINT: install the Debian package (apt-get install dataset-fashion-mnist), or put the four files "
        "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
        "t10k-labels-idx1-ubyte.gz from the dataset's authors (github.com/zalandoresearch/fashion-mnist) in a "
        f"folder and pass it as path=... or set {ENV_VAR}."
    )


def _read_idx(file: Path, magic: int, items: int) -> npt.NDArray[np.uint8]:
    """One IDX file as uint8, checked: magic number, item count, image shape, length."""
    try:
        raw = gzip.decompress(file.read_bytes()) if file.suffix == ".gz" else file.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataFileError(
            f"{file}: cannot be read as a gzip file ({exc}); it is truncated or corrupt. HINT: reinstall the Debian "
            "package dataset-fashion-mnist or fetch the file again."
        ) from exc
    dims = 3 if magic == 2051 else 1
    header = 4 + 4 * dims
    if len(raw) < header:
        raise DataFileError(f"{file}: {len(raw)} bytes, shorter than an IDX header ({header} bytes); truncated.")
    got = int.from_bytes(raw[:4], "big")
    if got != magic:
        raise DataFileError(
            f"{file}: IDX magic number {got:#010x}, expected {magic:#010x} "
            f"({'images' if dims == 3 else 'labels'}); is it the right file?"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    want = (items, _SIDE, _SIDE) if dims == 3 else (items,)
    if shape != want:
        raise DataFileError(f"{file}: holds an array of shape {shape}, expected {want} for Fashion-MNIST.")
    size = int(np.prod(shape))
    if len(raw) - header != size:
        raise DataFileError(
            f"{file}: {len(raw) - header} bytes of data after the header, expected {size} for shape {shape}; "
            "truncated or padded."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


@functools.lru_cache(maxsize=2)
def _load(folder: str) -> dict[str, npt.NDArray[np.uint8]]:
    out = {}
    for role, (stem, magic, items) in FILES.items():
        file = _file_in(Path(folder), stem)
        if file is None:  # removed since find_fashion_mnist looked
            raise FashionMNISTNotFound(f"{folder}: {stem}[.gz] is gone.")
        out[role] = _read_idx(file, magic, items)
    for split in ("train", "test"):
        labels = out[f"{split}_labels"]
        if labels.max() > 9:
            raise DataFileError(f"{folder}: {split} labels go up to {labels.max()}; Fashion-MNIST has 10 classes.")
    return out


def _validation_index(labels: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    rng = np.random.default_rng(_SPLIT_SEED)
    val = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        val[rng.permutation(idx)[:VAL_PER_CLASS]] = True
    return val


def fashion_mnist(
    path: str | os.PathLike[str] | None = None, layout: Layout = "NCHW", size: int = _SIDE
) -> FashionMNIST:
    """Load Fashion-MNIST with its fixed train / validation / test split.

    Args:
        path: folder of the four IDX files (gzipped or not); when None, ``$FITSLIM_FASHION_MNIST`` when set (then
            only there), else the Debian package's folder (``apt-get install dataset-fashion-mnist``).
        layout: ``"NCHW"`` (torch, ONNX, ncnn) or ``"NHWC"`` (Keras, TFLite).
        size: image side; 28 is native, other sizes are resized bilinearly.

    Raises:
        ValueError: an unknown layout or a size that is not a positive integer.
        FashionMNISTNotFound: the files are not there (the message says how to get them).
        DataFileError: a file is truncated, has the wrong magic number or the wrong shape (the message names it).
    """
    if layout not in ("NCHW", "NHWC"):
        raise ValueError(f"layout must be 'NCHW' or 'NHWC'; got {layout!r}.")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive integer; got {size!r}. Use 28 (native) or e.g. 32.")
    folder = find_fashion_mnist(path)
    raw = _load(str(folder.resolve()))
    val = _validation_index(raw["train_labels"])

    def images(a: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        x = a.astype(np.float32) / np.float32(255.0)
        if size != _SIDE:
            x = resize_bilinear(x, size)
        return np.ascontiguousarray(x[:, None] if layout == "NCHW" else x[..., None])

    x_train_all = images(raw["train_images"])
    y_train_all = raw["train_labels"].astype(np.int64)
    return FashionMNIST(
        x_train=x_train_all[~val],
        y_train=y_train_all[~val],
        x_val=x_train_all[val],
        y_val=y_train_all[val],
        x_test=images(raw["test_images"]),
        y_test=raw["test_labels"].astype(np.int64),
        layout=layout,
        size=size,
        source=str(folder),
    )
