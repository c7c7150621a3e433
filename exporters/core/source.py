"""The model being exported, whatever framework it comes from, behind one small interface.

The one place that branches on the source framework: torch ``nn.Module``, Keras 3 model, tf-keras
(Keras 2) model, or an ``.onnx`` file. Everything downstream asks a :class:`Source` for predictions in
NumPy and for its layout.

Example:
    >>> # src = Source.from_model(torch_module)
    >>> # src.framework, src.layout  ->  ('torch', 'NCHW')
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from exporters.core.inputs import as_inputs, ort_run

__all__ = [
    "FRAMEWORKS",
    "Source",
    "as_numpy",
    "batch_input",
    "batches_to_numpy",
    "detect_framework",
    "keras_backend",
    "keras_layers",
    "source_weights",
]

FRAMEWORKS = ("torch", "keras", "tf_keras", "onnx")

_INPUT_KEYS = ("x", "input", "inputs", "image", "images")


def detect_framework(model: Any) -> str:
    """Name the framework of ``model``: ``torch``, ``keras`` (Keras 3), ``tf_keras`` (Keras 2) or ``onnx``.

    Raises:
        ValueError: the type is none of those, naming the type and the accepted ones.
        FileNotFoundError: an ``.onnx`` path that does not exist.
    """
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        if path.suffix.lower() != ".onnx":
            raise ValueError(f"model: a path must name an .onnx file; got {str(path)!r}.")
        if not path.is_file():
            raise FileNotFoundError(f"model: ONNX file {str(path)!r} does not exist.")
        return "onnx"
    # Keras first: on the torch backend every Keras 3 layer is also a torch.nn.Module
    for cls in type(model).__mro__:
        mod = cls.__module__ or ""
        if mod.startswith("tf_keras") or mod.startswith("keras.src.engine") or mod.startswith("keras.engine"):
            return "tf_keras"
        if mod.startswith("keras"):
            return "keras"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        return "torch"
    raise ValueError(
        f"model: unsupported type {type(model).__module__}.{type(model).__qualname__}. Pass a torch.nn.Module, "
        "a Keras 3 model, a tf-keras model, or a path to an .onnx file."
    )


def keras_backend(framework: str) -> str:
    """The backend a model of ``framework`` runs on: Keras 3's configured backend, ``tensorflow`` for tf-keras."""
    if framework != "keras":
        return "tensorflow" if framework == "tf_keras" else framework
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "backend") and hasattr(keras.backend, "backend"):
        return str(keras.backend.backend())
    return os.environ.get("KERAS_BACKEND", "tensorflow")


def keras_layers(model: Any) -> list[Any]:
    """Every layer of a Keras model, nested models and layers of subclassed models included, each once."""
    seen: set[int] = set()
    out: list[Any] = []
    stack = list(reversed(getattr(model, "layers", [])))
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        out.append(layer)
        stack.extend(reversed(getattr(layer, "layers", []) or []))
    return out


def source_weights(source: Source) -> dict[str, npt.NDArray[np.float32]]:
    """Weights of the source's weighted layers, output channel first, keyed like a QuantSpec's layer names.

    torch: module path → ``module.weight`` (Conv OIHW, Linear (out, in)). Keras: layer name → kernel
    transposed to OIHW / (out, in); a depthwise kernel (kh, kw, C, m) becomes (C*m, 1, kh, kw) (Keras 3
    ``DepthwiseConv2D.kernel``, tf-keras ``depthwise_kernel``); a ``SeparableConv2D`` gives its depthwise
    kernel under its name and its pointwise kernel under ``<name>/pointwise``.
    """
    out: dict[str, npt.NDArray[np.float32]] = {}
    if source.framework == "torch":
        import torch

        for name, mod in source.model.named_modules():
            if isinstance(mod, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)):
                out[name] = as_numpy(mod.weight)
        return out
    if source.framework not in ("keras", "tf_keras"):
        return out

    def depthwise(k: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return np.ascontiguousarray(k.transpose(2, 3, 0, 1).reshape(-1, 1, k.shape[0], k.shape[1]))

    def dense_or_conv(k: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        return np.ascontiguousarray(k.transpose(k.ndim - 1, k.ndim - 2, *range(k.ndim - 2)))

    for layer in keras_layers(source.model):
        kind = type(layer).__name__
        pointwise = getattr(layer, "pointwise_kernel", None)
        dw = getattr(layer, "depthwise_kernel", None)
        if dw is None and "Depthwise" in kind:
            dw = getattr(layer, "kernel", None)
        if dw is not None:
            out[layer.name] = depthwise(as_numpy(dw))
            if pointwise is not None:
                out[f"{layer.name}/pointwise"] = dense_or_conv(as_numpy(pointwise))
            continue
        kernel = getattr(layer, "kernel", None) if not getattr(layer, "layers", None) else None
        if kernel is None or not hasattr(kernel, "shape") or len(kernel.shape) < 2:
            continue
        out[layer.name] = dense_or_conv(as_numpy(kernel))
    return out


def as_numpy(x: Any) -> npt.NDArray[np.float32]:
    """A float32 NumPy array from a NumPy array, torch tensor, TF/Keras tensor or nested list."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch
        x = x.detach().cpu().numpy()
    elif hasattr(x, "numpy") and not isinstance(x, np.ndarray):  # tf
        x = x.numpy()
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def batch_input(batch: Any) -> Any:
    """The model input of a batch: the batch itself, its first element, or its x/input/image entry."""
    if isinstance(batch, Mapping):
        for key in _INPUT_KEYS:
            if key in batch:
                return batch[key]
        raise ValueError(
            f"calibration: a dict batch needs one of the keys {list(_INPUT_KEYS)}; got {sorted(map(str, batch))}. "
            "Pass the input arrays themselves."
        )
    if isinstance(batch, (tuple, list)) and batch and hasattr(batch[0], "shape"):
        return batch[0]  # (x, y) or [x, ...]: the input comes first
    return batch


def batches_to_numpy(batches: Iterable[Any], limit: int | None = None) -> npt.NDArray[Any]:
    """Stack input batches (arrays, tensors, ``(x, y)`` tuples or dicts) into one array (float32, or int64 ids).

    Args:
        batches: the iterable of batches.
        limit: stop after this many samples.

    Raises:
        ValueError: no batch, or batches whose sample shapes differ.
    """
    arrays: list[npt.NDArray[Any]] = []
    total = 0
    for batch in batches:
        a = as_inputs(batch_input(batch))  # token ids stay integers
        arrays.append(a)
        total += len(a)
        if limit is not None and total >= limit:
            break
    if not arrays:
        raise ValueError("calibration: the iterable gave no batch. Pass a few batches of real inputs.")
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) > 1:
        raise ValueError(f"calibration: batches have different sample shapes {sorted(shapes)}.")
    out = np.concatenate(arrays)
    return out[:limit] if limit is not None else out


@dataclass
class Source:
    """A model to export and a uniform way to run it on NumPy inputs.

    Args:
        model: the torch module, Keras model, or ONNX path.
        framework: one of :data:`FRAMEWORKS`.
    """

    model: Any
    framework: str

    @classmethod
    def from_model(cls, model: Any) -> Source:
        """Wrap ``model``, detecting its framework."""
        return cls(model, detect_framework(model))

    @property
    def layout(self) -> str:
        """``NCHW`` for torch and ONNX, ``NHWC`` for Keras (channels-last image inputs)."""
        return "NHWC" if self.framework in ("keras", "tf_keras") else "NCHW"

    @property
    def description(self) -> str:
        """A short human description, e.g. ``torch DigitsCNN``."""
        if self.framework == "onnx":
            return f"onnx {Path(self.model).name}"
        name = getattr(self.model, "name", None) if self.framework != "torch" else None
        return f"{self.framework} {name or type(self.model).__name__}"

    def input_shape(self) -> tuple[int | None, ...] | None:
        """The declared input shape (batch dim None) when the model declares one, else None."""
        if self.framework in ("keras", "tf_keras"):
            shape = getattr(self.model, "input_shape", None)
            if isinstance(shape, list):
                shape = shape[0]
            return tuple(shape) if shape is not None else None
        if self.framework == "onnx":
            import onnx

            m = onnx.load(str(self.model), load_external_data=False)
            init = {i.name for i in m.graph.initializer}
            first = next(i for i in m.graph.input if i.name not in init)
            dims = first.type.tensor_type.shape.dim
            return tuple((d.dim_value if d.HasField("dim_value") else None) for d in dims)
        return None

    def predict(self, x: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Run the source model on ``x`` (in :attr:`layout`) in inference mode; returns float32 NumPy.

        ``x`` may be a tuple of arrays for a model with several inputs (each keeps an integer dtype).
        """
        a = as_inputs(x)
        if self.framework == "torch":
            return self._predict_torch(a)
        if self.framework in ("keras", "tf_keras"):
            out = self.model(a, training=False)
            if isinstance(out, (list, tuple)):
                out = out[0]
            return as_numpy(out)
        return self._predict_onnx(a)

    def _predict_torch(self, a: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        import torch

        model = self.model
        was_training = model.training
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        model.eval()
        try:
            with torch.no_grad():
                args = a if isinstance(a, tuple) else (a,)
                out = model(*(torch.from_numpy(t).to(device) for t in args))
        finally:
            model.train(was_training)
        if isinstance(out, (list, tuple)):
            out = out[0]
        return as_numpy(out)

    def _predict_onnx(self, a: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        import onnxruntime as ort

        sess = getattr(self, "_ort", None)
        if sess is None:
            sess = ort.InferenceSession(str(self.model), providers=["CPUExecutionProvider"])
            self._ort = sess
        return np.asarray(ort_run(sess, a)[0], dtype=np.float32)
