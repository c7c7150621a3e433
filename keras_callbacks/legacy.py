"""The tf-keras / tfmot legacy path: detect which Keras a model is, strip tfmot wrappers, export.

tensorflow-model-optimization (tfmot) works only with tf-keras (Keras 2): importing it sets
``TF_USE_LEGACY_KERAS=1`` for the whole process, and it rejects Keras 3 models. fitslim's callbacks
are Keras 3. This module lets a tfmot user export what they already trained (``prune_low_magnitude``
+ ``UpdatePruningStep``, or ``quantize_model``) through :func:`exporters.export`, and gives a clear
error when a Keras 3 model reaches a legacy-only path or the reverse. It imports tfmot only inside
the functions that need it, so importing this module never flips the process to legacy Keras.

Example:
    >>> from keras_callbacks.legacy import keras_flavor
    >>> keras_flavor(object()) is None
    True
    >>> # report = export_tfmot(pruned_tf_keras_model, ["tflite", "ncnn"], directory="exports")
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "export_tfmot",
    "is_tfmot_pruned",
    "is_tfmot_quantized",
    "keras_flavor",
    "prepare_for_export",
    "require_keras3",
    "require_tf_keras",
    "strip_tfmot",
    "tfmot_qat_tflite",
]

log = logging.getLogger(__name__)

_PRUNE_WRAPPERS = ("PruneLowMagnitude",)
_QUANT_WRAPPERS = ("QuantizeWrapper", "QuantizeWrapperV2", "QuantizeLayer", "QuantizeAnnotate")


def keras_flavor(model: Any) -> str | None:
    """``"keras3"`` for a Keras 3 model or layer, ``"tf_keras"`` for a tf-keras (Keras 2) one, else None."""
    for cls in type(model).__mro__:
        mod = cls.__module__ or ""
        if mod.startswith(("tf_keras", "keras.src.engine", "keras.engine", "tensorflow.python.keras")):
            return "tf_keras"
        if mod.startswith("tensorflow_model_optimization"):
            return "tf_keras"
        if mod.startswith("keras"):
            return "keras3"
    return None


def _keras_versions() -> str:
    import importlib.metadata as md

    parts = []
    for dist in ("keras", "tf-keras", "tensorflow-model-optimization"):
        try:
            parts.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            parts.append(f"{dist} not installed")
    return ", ".join(parts)


def require_tf_keras(model: Any, where: str) -> None:
    """Raise unless ``model`` is a tf-keras (Keras 2) model, as tfmot needs.

    Raises:
        ValueError: a Keras 3 model (or another type), saying which Keras it got and what to do.
    """
    flavor = keras_flavor(model)
    if flavor == "tf_keras":
        return
    got = "a Keras 3 model" if flavor == "keras3" else f"a {type(model).__module__}.{type(model).__qualname__}"
    raise ValueError(
        f"{where}: got {got} ({_keras_versions()}); this legacy path takes tf-keras (Keras 2) models wrapped by "
        "tensorflow-model-optimization, which rejects Keras 3. HINT: for a Keras 3 model use "
        "keras_callbacks.Pruning / QuantizationAware in model.fit and exporters.export (or keras_callbacks.Export)."
    )


def require_keras3(model: Any, where: str) -> None:
    """Raise unless ``model`` is a Keras 3 model, as fitslim's Keras callbacks need.

    Raises:
        ValueError: a tf-keras / tfmot model, saying which Keras it got and what to do.
    """
    flavor = keras_flavor(model)
    if flavor == "keras3":
        return
    got = "a tf-keras (Keras 2) model" if flavor == "tf_keras" else f"a {type(model).__qualname__}"
    raise ValueError(
        f"{where}: got {got} ({_keras_versions()}); fitslim's Keras callbacks patch Keras 3 models. HINT: "
        "build the model with `import keras` (Keras 3, TF_USE_LEGACY_KERAS unset, tfmot not imported) and use "
        "keras_callbacks.Pruning / QuantizationAware instead of tfmot (see examples/legacy_tfmot_migration.py); "
        "to export a model already trained with tfmot use keras_callbacks.legacy.export_tfmot."
    )


def _layer_types(model: Any) -> set[str]:
    return {type(layer).__name__ for layer in getattr(model, "layers", [])}


def is_tfmot_pruned(model: Any) -> bool:
    """Whether ``model`` holds tfmot ``PruneLowMagnitude`` wrappers."""
    return keras_flavor(model) == "tf_keras" and bool(_layer_types(model) & set(_PRUNE_WRAPPERS))


def is_tfmot_quantized(model: Any) -> bool:
    """Whether ``model`` is a tfmot quantization-aware model (``quantize_model``)."""
    return keras_flavor(model) == "tf_keras" and bool(_layer_types(model) & set(_QUANT_WRAPPERS))


def _tfmot() -> Any:
    try:
        import tensorflow_model_optimization as tfmot
    except ImportError as err:
        raise ImportError(
            f"the tf-keras legacy path needs tensorflow-model-optimization and tf-keras ({err}): "
            "pip install 'fitslim[keras-legacy]'"
        ) from err
    return tfmot


def strip_tfmot(model: Any) -> Any:
    """The model without tfmot pruning wrappers (``strip_pruning``: kernels keep their zeros).

    Quantization wrappers are kept: the TFLite converter turns them into int8 kernels.

    Raises:
        ValueError: a Keras 3 model.
    """
    require_tf_keras(model, "strip_tfmot(model)")
    if not is_tfmot_pruned(model):
        return model
    stripped = _tfmot().sparsity.keras.strip_pruning(model)
    log.info("stripped tfmot pruning wrappers: %d → %d layers", len(model.layers), len(stripped.layers))
    return stripped


def prepare_for_export(model: Any) -> Any:
    """What ``exporters.export`` / ``Export`` should export: tfmot pruning stripped; other models unchanged."""
    return strip_tfmot(model) if is_tfmot_pruned(model) else model


def tfmot_qat_tflite(model: Any, representative: npt.NDArray[np.float32] | None = None, limit: int = 256) -> bytes:
    """Convert a tfmot ``quantize_model`` model to an int8 ``.tflite`` keeping its learned ranges.

    Uses ``tf.lite.TFLiteConverter.from_keras_model`` with ``Optimize.DEFAULT``: the fake-quant ops
    tfmot inserted carry the ranges. ``representative`` (NHWC inputs) fills tensors without one.

    Raises:
        ValueError: not a tfmot quantization-aware tf-keras model.
    """
    require_tf_keras(model, "tfmot_qat_tflite(model)")
    if not is_tfmot_quantized(model):
        raise ValueError(
            "tfmot_qat_tflite(model): the tf-keras model has no tfmot quantization wrappers. HINT: wrap it with "
            "tfmot.quantization.keras.quantize_model and train, or export it with calibration via exporters.export."
        )
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if representative is not None:
        data = np.asarray(representative, dtype=np.float32)

        def gen() -> Iterable[list[npt.NDArray[np.float32]]]:
            for i in range(min(len(data), limit)):
                yield [data[i : i + 1]]

        converter.representative_dataset = gen
    return bytes(converter.convert())


def export_tfmot(
    model: Any,
    targets: Sequence[str] = ("tflite",),
    directory: str | os.PathLike[str] = "exports",
    precision: str = "fp32",
    **kwargs: Any,
) -> Any:
    """Export a tf-keras model trained with tfmot through :func:`exporters.export`.

    Pruning wrappers are stripped first (the zeros stay). A ``quantize_model`` model at ``int8``
    writes ``model.int8.tflite`` from its own QAT ranges (:func:`tfmot_qat_tflite`) and returns its
    path in a dict ``{"tflite": path}``; other targets of a QAT model are not supported here.

    Args:
        model: the tf-keras model (tfmot-wrapped or plain).
        targets: the export targets.
        directory: output folder.
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        **kwargs: passed to :func:`exporters.export` (``example_input``, ``calibration``, ``samples``...).

    Raises:
        ValueError: a Keras 3 model (use ``exporters.export`` directly), or a tfmot QAT model with a
            target other than tflite int8.
    """
    require_tf_keras(model, "export_tfmot(model)")
    if is_tfmot_quantized(model):
        if list(targets) != ["tflite"] or precision != "int8":
            raise ValueError(
                f"export_tfmot(targets={list(targets)!r}, precision={precision!r}): a tfmot quantize_model model "
                "exports as int8 TFLite from its own QAT. HINT: pass targets=['tflite'], precision='int8'; for "
                "ncnn/TensorRT int8 move to keras_callbacks.QuantizationAware, whose QuantSpec feeds every target."
            )
        from pathlib import Path

        from fitslim.fileio import atomic_path

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        calib = kwargs.get("calibration")
        content = tfmot_qat_tflite(model, None if calib is None else np.asarray(calib, dtype=np.float32))
        path = out / "model.int8.tflite"
        with atomic_path(path) as tmp:
            tmp.write_bytes(content)
        log.info("tfmot QAT → %s (%.1f KB)", path, len(content) / 1024)
        return {"tflite": path}
    from exporters.core.export import export

    return export(prepare_for_export(model), targets, precision=precision, directory=directory, **kwargs)
