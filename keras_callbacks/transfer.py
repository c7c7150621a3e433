"""Copy weights from a PyTorch model into its Keras twin.

Importing this module is cheap; torch, numpy conversions and keras are touched only inside
:func:`copy_torch_to_keras`.

Example:
    >>> from keras_callbacks.models import copy_torch_to_keras, keras_model
    >>> from lightning_plugins.models import torch_model
    >>> t = torch_model("digits_cnn").eval()
    >>> k = keras_model("digits_cnn")
    >>> pairs = copy_torch_to_keras(t, k)
    >>> pairs[0]
    ('stem.conv', 'stem_conv')
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["copy_torch_to_keras", "keras_layer_name"]


def keras_layer_name(torch_name: str) -> str:
    """The Keras layer name of a torch module path in the fitslim twins (``.`` becomes ``_``).

    Args:
        torch_name: a name from ``torch_model.named_modules()``.

    Returns:
        The Keras layer name.

    Example:
        >>> keras_layer_name("blocks.3.dw_conv")
        'blocks_3_dw_conv'
    """
    return torch_name.replace(".", "_")


def _torch_weighted_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    from torch import nn

    found: list[tuple[str, torch.nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.BatchNorm2d | nn.Linear):
            found.append((name, module))
        elif not list(module.children()) and any(True for _ in module.parameters(recurse=False)):
            raise ValueError(
                f"copy_torch_to_keras: torch module {name!r} ({type(module).__name__}) has weights but "
                "is not Conv2d, BatchNorm2d or Linear. Only those layer types can be copied; "
                "HINT: copy it by hand."
            )
    return found


def _keras_weighted_layers(model: Any) -> list[Any]:
    found: list[Any] = []
    for layer in model.layers:
        sublayers = getattr(layer, "layers", None)
        if sublayers is not None and layer is not model:
            found.extend(_keras_weighted_layers(layer))
        elif layer.weights:
            found.append(layer)
    return found


def _kind_of_torch(module: torch.nn.Module) -> str:
    from torch import nn

    if isinstance(module, nn.Conv2d):
        if module.groups == 1:
            return "conv"
        if module.groups == module.in_channels and module.out_channels % module.in_channels == 0:
            return "depthwise"
        return "grouped"
    if isinstance(module, nn.BatchNorm2d):
        return "bn"
    return "dense"


def _kind_of_keras(layer: Any) -> str:
    import keras

    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return "depthwise"
    if isinstance(layer, keras.layers.Conv2D):
        return "conv"
    if isinstance(layer, keras.layers.BatchNormalization):
        return "bn"
    if isinstance(layer, keras.layers.Dense):
        return "dense"
    return type(layer).__name__


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().float().numpy()


def _pair(
    torch_layers: list[tuple[str, torch.nn.Module]], keras_layers: list[Any]
) -> list[tuple[str, torch.nn.Module, Any]]:
    """Pair layers by name (``.`` -> ``_``) when all names match, else by order."""
    by_name = {layer.name: layer for layer in keras_layers}
    if all(keras_layer_name(name) in by_name for name, _ in torch_layers):
        pairs = [(name, module, by_name[keras_layer_name(name)]) for name, module in torch_layers]
        used = {id(layer) for _, _, layer in pairs}
        unused = [layer.name for layer in keras_layers if id(layer) not in used]
        if unused:
            raise ValueError(
                f"copy_torch_to_keras: keras layer {unused[0]!r} has weights but no torch module named "
                f"{unused[0].replace('_', '.')!r} (or similar) feeds it. The structures do not match; "
                "HINT: build both twins with the same arguments."
            )
        return pairs
    if len(torch_layers) != len(keras_layers):
        missing = next(name for name, _ in torch_layers if keras_layer_name(name) not in by_name)
        raise ValueError(
            f"copy_torch_to_keras: torch module {missing!r} has no keras layer named "
            f"{keras_layer_name(missing)!r}, and the models have {len(torch_layers)} (torch) vs "
            f"{len(keras_layers)} (keras) weighted layers, so they cannot be paired by order either. "
            "HINT: build both twins with the same arguments."
        )
    return [(name, module, layer) for (name, module), layer in zip(torch_layers, keras_layers, strict=True)]


def _convert(name: str, module: torch.nn.Module, layer: Any) -> list[np.ndarray]:
    """The Keras weight list for ``layer`` holding the values of torch ``module``."""
    from torch import nn

    t_kind, k_kind = _kind_of_torch(module), _kind_of_keras(layer)
    where = (
        f"torch module {name!r} ({type(module).__name__}) -> "
        f"keras layer {layer.name!r} ({type(layer).__name__})"
    )
    if t_kind == "grouped":
        raise ValueError(
            f"copy_torch_to_keras: {where}: grouped convs other than depthwise are not supported."
        )
    if t_kind != k_kind:
        raise ValueError(f"copy_torch_to_keras: {where}: layer types differ ({t_kind} vs {k_kind}).")
    weights: list[np.ndarray] = []
    if isinstance(module, nn.Conv2d):
        strides = tuple(int(s) for s in layer.strides)
        if tuple(module.stride) != strides or tuple(module.dilation) != tuple(layer.dilation_rate):
            raise ValueError(
                f"copy_torch_to_keras: {where}: stride/dilation differ ({tuple(module.stride)}/"
                f"{tuple(module.dilation)} vs {strides}/{tuple(layer.dilation_rate)})."
            )
        w = _to_numpy(module.weight)
        if t_kind == "conv":
            weights.append(w.transpose(2, 3, 1, 0))  # OIHW -> HWIO
        else:
            channels = module.in_channels
            multiplier = module.out_channels // channels
            kh, kw = w.shape[2], w.shape[3]
            # torch output channel c * multiplier + j is keras kernel[:, :, c, j]
            weights.append(w.reshape(channels, multiplier, kh, kw).transpose(2, 3, 0, 1))
        if module.bias is not None:
            weights.append(_to_numpy(module.bias))
    elif isinstance(module, nn.BatchNorm2d):
        if abs(float(module.eps) - float(layer.epsilon)) > 1e-12:
            raise ValueError(
                f"copy_torch_to_keras: {where}: BatchNorm epsilon differs ({module.eps} vs {layer.epsilon}); "
                "HINT: build the keras layer with BatchNormalization(epsilon=1e-5)."
            )
        if module.running_mean is None or module.running_var is None:
            raise ValueError(
                f"copy_torch_to_keras: {where}: the torch BatchNorm2d has no running statistics "
                "(track_running_stats=False); HINT: build it with track_running_stats=True."
            )
        channels = module.num_features
        ones, zeros = _to_numpy(module.running_var) * 0 + 1, _to_numpy(module.running_mean) * 0
        gamma = _to_numpy(module.weight) if module.weight is not None else ones
        beta = _to_numpy(module.bias) if module.bias is not None else zeros
        if layer.scale:
            weights.append(gamma)
        elif module.weight is not None:
            raise ValueError(f"copy_torch_to_keras: {where}: torch has a BN scale, keras has scale=False.")
        if layer.center:
            weights.append(beta)
        elif module.bias is not None:
            raise ValueError(f"copy_torch_to_keras: {where}: torch has a BN shift, keras has center=False.")
        weights.extend([_to_numpy(module.running_mean), _to_numpy(module.running_var)])
        if any(w.shape != (channels,) for w in weights):
            raise ValueError(f"copy_torch_to_keras: {where}: channel counts differ.")
    elif isinstance(module, nn.Linear):
        weights.append(_to_numpy(module.weight).T)  # (out, in) -> (in, out)
        if module.bias is not None:
            weights.append(_to_numpy(module.bias))
    expected = [tuple(w.shape) for w in layer.get_weights()]
    got = [tuple(w.shape) for w in weights]
    if expected != got:
        raise ValueError(
            f"copy_torch_to_keras: {where}: weight shapes differ "
            f"(keras expects {expected}, torch gives {got}). "
            "HINT: build both twins with the same width, channels and classes."
        )
    return weights


def copy_torch_to_keras(torch_model: torch.nn.Module, keras_model: Any) -> list[tuple[str, str]]:
    """Copy every Conv2d, BatchNorm2d and Linear weight of ``torch_model`` into ``keras_model``.

    Layers are paired by name (torch ``blocks.3.dw_conv`` -> keras ``blocks_3_dw_conv``, as in the
    fitslim twins) when every torch name has a keras layer, otherwise by order of the weighted
    layers. Conv kernels go OIHW -> HWIO, depthwise ``(C*m, 1, kh, kw)`` -> ``(kh, kw, C, m)``,
    Linear ``(out, in)`` -> ``(in, out)``, BatchNorm gamma/beta/running mean/running variance as is.
    Nothing is written unless every layer converts.

    Args:
        torch_model: the source ``torch.nn.Module``.
        keras_model: the target built ``keras.Model`` (a fitslim twin or the same structure).

    Returns:
        The ``(torch module name, keras layer name)`` pairs that were copied, in order.

    Raises:
        ValueError: the structures do not match (the message names the layer), or a layer type
            other than Conv2d (plain or depthwise), BatchNorm2d or Linear carries weights.

    Example:
        >>> from keras_callbacks.models import copy_torch_to_keras, keras_model
    >>> from lightning_plugins.models import torch_model
        >>> t = torch_model("mobilenet_v2", width_multiplier=0.35, num_classes=10, input_size=96)
        >>> k = keras_model("mobilenet_v2", width_multiplier=0.35, num_classes=10, input_size=96)
        >>> len(copy_torch_to_keras(t.eval(), k))
        105
    """
    torch_layers = _torch_weighted_modules(torch_model)
    keras_layers = _keras_weighted_layers(keras_model)
    pairs = _pair(torch_layers, keras_layers)
    converted = [(layer, _convert(name, module, layer)) for name, module, layer in pairs]
    for layer, weights in converted:
        layer.set_weights(weights)
    return [(name, layer.name) for name, _, layer in pairs]
