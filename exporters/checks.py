"""Checks of ``export()``'s inputs that run before anything is written.

A bad file, an input in the wrong layout or an output path that is a file becomes a ``ValueError`` naming the
argument and the fix, instead of an error from deep inside a converter, and no folder is left behind.

Example:
    >>> from exporters.checks import output_dir
    >>> output_dir("exports").name
    'exports'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["check_onnx_file", "output_dir", "probe_source"]


def _why(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__


def output_dir(directory: str | os.PathLike[str]) -> Path:
    """The output folder as a Path, refused when it, or a folder above it, is a file.

    Raises:
        ValueError: naming ``directory`` and the file in the way.
    """
    out = Path(directory)
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "" if probe == out else f" (in {str(out)!r})"
        raise ValueError(f"directory: {str(probe)!r}{where} is a file, not a folder; give a folder, e.g. 'exports'.")
    return out


def check_onnx_file(path: str | os.PathLike[str]) -> None:
    """Load and check an ``.onnx`` model file.

    Raises:
        ValueError: naming ``model`` and the file: truncated, corrupt or not ONNX.
    """
    import onnx

    try:
        onnx.checker.check_model(onnx.load(str(path), load_external_data=False))
    except Exception as err:
        raise ValueError(
            f"model: {str(path)!r} is not a valid ONNX model ({_why(err)}); the file may be truncated or not "
            "ONNX at all: export it again."
        ) from err


def probe_source(source: Any, example: npt.NDArray[np.float32]) -> None:
    """Run the source model once on the example input, so a wrong shape or layout is named as such.

    Raises:
        ValueError: naming ``example_input``, its shape, the model's error and the layout the framework takes.
    """
    if source.framework == "onnx":
        return
    try:
        source.predict(example[:1])
    except Exception as err:
        layout = (
            "torch models take NCHW (batch, channels, height, width): np.transpose(x, (0, 3, 1, 2)) turns NHWC into it"
            if source.framework == "torch"
            else "Keras models take NHWC (batch, height, width, channels): np.transpose(x, (0, 2, 3, 1)) turns NCHW "
            "into it"
        )
        raise ValueError(
            f"example_input: the model fails on an input of shape {tuple(example.shape)} ({_why(err)}); pass "
            f"inputs (example_input, calibration) the model takes; {layout}."
        ) from err
