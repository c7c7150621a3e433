"""A model's inputs as the exporters pass them around: one array, or a tuple of arrays (token ids and masks).

The lowest layer of :mod:`exporters`: every target, the quantization table and the runtimes read inputs through
these helpers, and onnxruntime sessions are fed and run in chunks here (:func:`ort_feed`, :func:`ort_run`).

Example:
    >>> import numpy as np
    >>> x = as_inputs((np.zeros((4, 16), np.int64), np.ones((4, 16), np.int64)))
    >>> input_count(x), [a.shape for a in take(x, 0, 2)]
    (4, [(2, 16), (2, 16)])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "Inputs",
    "as_inputs",
    "concat_inputs",
    "fixed_batch",
    "input_count",
    "is_multi",
    "ort_feed",
    "ort_run",
    "take",
]

#: a model's inputs, batch first: one array, or a tuple of arrays with their own dtypes (token ids and
#: masks stay int64); a dict's values are taken in order
Inputs = Any


def _array(a: Any) -> npt.NDArray[Any]:
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # torch
        a = a.detach().cpu().numpy()
    elif hasattr(a, "numpy") and not isinstance(a, np.ndarray):  # tf
        a = a.numpy()
    arr = np.asarray(a)
    # signed integers (token ids, masks) and booleans keep their dtype; everything else, uint8 images
    # included, is float32
    return np.ascontiguousarray(arr if arr.dtype.kind in "ib" else arr.astype(np.float32))


def is_multi(x: Any) -> bool:
    """True for several inputs: a tuple or dict of arrays (a list stays a list of batches or numbers)."""
    if isinstance(x, Mapping):
        return True
    return isinstance(x, tuple) and len(x) > 0 and all(hasattr(a, "shape") for a in x)


def as_inputs(x: Any) -> Inputs:
    """One float32 array, or (several inputs) a tuple of arrays, each keeping an integer or bool dtype.

    Raises:
        ValueError: several inputs with different batch sizes.
    """
    if not is_multi(x):
        return _array(x)
    arrays = tuple(_array(a) for a in (x.values() if isinstance(x, Mapping) else x))
    batches = {len(a) if a.ndim else 1 for a in arrays}
    if len(batches) > 1:
        raise ValueError(
            f"example_input: the inputs have different batch sizes {[len(a) for a in arrays]}; give every input "
            "the same number of samples (batch first)."
        )
    return arrays if len(arrays) > 1 else arrays[0]


def input_count(x: Inputs) -> int:
    """How many samples ``x`` holds."""
    return len(x[0]) if isinstance(x, tuple) else len(x)


def take(x: Inputs, start: int, stop: int) -> Inputs:
    """Samples ``start:stop`` of every input."""
    return tuple(a[start:stop] for a in x) if isinstance(x, tuple) else x[start:stop]


def concat_inputs(parts: list[Inputs]) -> Inputs:
    """Concatenate input batches along the batch axis."""
    if parts and isinstance(parts[0], tuple):
        return tuple(np.concatenate([p[i] for p in parts]) for i in range(len(parts[0])))
    return np.concatenate(parts)


def ort_feed(session: Any, x: Inputs) -> dict[str, Any]:
    """The onnxruntime feed for ``x``: its arrays in the order of the session's inputs, cast to their types.

    Raises:
        ValueError: the number of arrays differs from the model's inputs.
    """
    inputs = session.get_inputs()
    arrays = x if isinstance(x, tuple) else (x,)
    if len(arrays) != len(inputs):
        raise ValueError(
            f"the ONNX model takes {len(inputs)} input(s) {[i.name for i in inputs]}; got {len(arrays)} array(s). "
            "Pass a tuple with one array per input."
        )
    types = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}
    return {
        i.name: np.ascontiguousarray(a, dtype=types.get(i.type, np.float32))
        for i, a in zip(inputs, arrays, strict=True)
    }


def fixed_batch(session: Any) -> int | None:
    """The batch size an onnxruntime session's first input is fixed to (``torch.onnx.export``'s default), or None."""
    dim = session.get_inputs()[0].shape[0] if session.get_inputs()[0].shape else None
    return dim if isinstance(dim, int) and dim > 0 else None


def ort_run(session: Any, x: Inputs, output_names: list[str] | None = None, batch: int = 256) -> list[Any]:
    """Run ``x`` through an onnxruntime session in chunks of ``batch``, or of the model's fixed batch size.

    Raises:
        ValueError: a fixed batch size that does not divide the number of samples.
    """
    n = input_count(x)
    step = fixed_batch(session) or batch
    if n % step and fixed_batch(session):
        raise ValueError(f"the ONNX model takes batches of exactly {step}; got {n} samples, not a multiple of it.")
    chunks = [session.run(output_names, ort_feed(session, take(x, i, i + step))) for i in range(0, n, step)]
    return [np.concatenate([np.asarray(c[k]) for c in chunks]) for k in range(len(chunks[0]))]
