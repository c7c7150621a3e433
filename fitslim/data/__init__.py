"""Data sets: the bundled digits (the default, shipped inside fitslim) and Fashion-MNIST (real data, read from
the four standard IDX files; never downloaded)."""

from fitslim.data.digits import Digits, digits, resize_bilinear
from fitslim.data.fashion import (
    DataFileError,
    FashionMNIST,
    FashionMNISTNotFound,
    fashion_mnist,
    find_fashion_mnist,
)

__all__ = [
    "DataFileError",
    "Digits",
    "FashionMNIST",
    "FashionMNISTNotFound",
    "digits",
    "fashion_mnist",
    "find_fashion_mnist",
    "resize_bilinear",
]
