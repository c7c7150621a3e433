"""The runnable examples in the core's docstrings stay correct."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "fitslim.int8",
    "fitslim.quantspec",
    "fitslim.recipe",
    "fitslim.fileio",
    "fitslim.data.digits",
    "fitslim.schedules",
    "fitslim.sparsity",
    "fitslim.metrics",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0
