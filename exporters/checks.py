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

__all__ = ["check_onnx_file", "legacy_trace_check", "output_dir", "probe_source"]


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


def probe_source(source: Any, example: Any) -> None:
    """Run the source model once on the example input, so a wrong shape or layout is named as such.

    Raises:
        ValueError: naming ``example_input``, its shape, the model's error and the layout the framework takes.
    """
    if source.framework == "onnx":
        return
    several = isinstance(example, tuple)
    first = tuple(a[:1] for a in example) if several else example[:1]
    try:
        source.predict(first)
    except Exception as err:
        shape = " and ".join(str(tuple(a.shape)) for a in example) if several else str(tuple(example.shape))
        layout = (
            "torch models take NCHW (batch, channels, height, width): np.transpose(x, (0, 3, 1, 2)) turns NHWC into it"
            if source.framework == "torch"
            else "Keras models take NHWC (batch, height, width, channels): np.transpose(x, (0, 2, 3, 1)) turns NCHW "
            "into it"
        )
        raise ValueError(
            f"example_input: the model fails on an input of shape {shape} ({_why(err)}); pass "
            f"inputs (example_input, calibration) the model takes; {layout}."
        ) from err


def legacy_trace_check(
    export_fn: Any, example: tuple[npt.NDArray[Any], ...], path: Path, dynamo_error: BaseException
) -> str:
    """Guard the fallback to the legacy (tracing) torch.onnx exporter: it is reported, and refused when unsafe.

    A trace records the operations one input runs through, so a branch on the data (``if x.sum() > 0``) is
    frozen to the branch the example took. The model is traced a second time on a different input, and both
    ONNX graphs are run on both inputs: if they disagree, the model has data-dependent control flow and the
    trace is refused.

    Args:
        export_fn: ``export_fn(inputs, path)`` runs the legacy exporter on the given NumPy inputs.
        example: the example inputs (the first trace, already written to ``path``).
        path: the ONNX file of the first trace.
        dynamo_error: why the dynamo exporter failed.

    Returns:
        The warning for the report.

    Raises:
        RuntimeError: the two traces differ.
    """
    reason = _why(dynamo_error).replace("\x1b[96m", "").replace("\x1b[0m", "")
    warning = (
        f"WARNING: the legacy torch.onnx tracer was used because torch.export failed ({reason}); a trace keeps "
        "only the branch the example input took"
    )
    if not all(a.dtype.kind == "f" for a in example):
        return warning + " (not checked: integer inputs)."
    other = tuple((-1.0 - 3.0 * a).astype(a.dtype) for a in example)  # another sign and scale: flips x>0, x.sum()>c
    second = path.with_name(path.stem + ".second.onnx")
    try:
        export_fn(other, second)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        first_s, second_s = (
            ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for p in (path, second)
        )
        names = [i.name for i in first_s.get_inputs()]
        for inputs in (example, other):
            feed = dict(zip(names, inputs, strict=True))
            a = np.asarray(first_s.run(None, feed)[0], dtype=np.float64)
            b = np.asarray(second_s.run(None, feed)[0], dtype=np.float64)
            if a.shape != b.shape or np.max(np.abs(a - b), initial=0.0) > 1e-4 * max(1.0, float(np.max(np.abs(a)))):
                raise RuntimeError(
                    f"{warning}, and two traces (on the example input and on a second input) compute different "
                    "outputs: the model branches on its input data, so any trace is wrong for some inputs. "
                    "Make the branch traceable (torch.where, or torch.cond) so torch.export can export it."
                )
    finally:
        second.unlink(missing_ok=True)
    return warning + "; a second trace on another input computes the same outputs."
