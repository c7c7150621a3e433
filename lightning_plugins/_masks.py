"""Layer selection and bool mask buffers for :class:`lightning_plugins.Pruning` (private).

A mask is a ``bool`` buffer registered on the module that owns the parameter, named ``<param>_mask``
(``weight_mask``), so it lives in the module's ``state_dict`` and in every Lightning checkpoint. Masks
are applied by multiplying the parameter in place right after each optimizer step (one fused
``torch._foreach_mul_``), not in the forward, so the forward and backward cost nothing extra.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fitslim.sparsity import match_patterns

__all__ = [
    "MASK_SUFFIX",
    "LayerSelection",
    "MaskSet",
    "MaskedParam",
    "param_of",
    "default_channel_exclusions",
    "prunable_layers",
    "select_layers",
    "weights_numpy",
]

log = logging.getLogger(__name__)

MASK_SUFFIX = "_mask"
Selector = str | type


@dataclass(frozen=True)
class MaskedParam:
    """One masked parameter: ``<layer>.<param>`` with its mask buffer ``<layer>.<param>_mask``."""

    layer: str
    param: str = "weight"

    @property
    def buffer(self) -> str:
        """Name of the mask buffer on the layer."""
        return self.param + MASK_SUFFIX

    @property
    def key(self) -> str:
        """Dotted name of the parameter."""
        return f"{self.layer}.{self.param}" if self.layer else self.param


def param_of(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """``module.<name>`` as a tensor (typed access for the type checker)."""
    value = getattr(module, name)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.{name} is not a tensor")
    return value


def prunable_layers(root: nn.Module) -> list[tuple[str, nn.Module]]:
    """Conv (any dimension, not transposed) and Linear layers with a weight, in definition order."""
    out: list[tuple[str, nn.Module]] = []
    for name, module in root.named_modules():
        if isinstance(module, nn.Linear) or (isinstance(module, nn.modules.conv._ConvNd) and not module.transposed):
            if isinstance(getattr(module, "weight", None), torch.Tensor):
                out.append((name, module))
    return out


def default_channel_exclusions(layers: Sequence[tuple[str, nn.Module]]) -> tuple[str | None, str | None]:
    """(first conv, classifier head): the layers channel pruning leaves alone by default.

    The head is the last ``nn.Linear`` (or the last conv when the model has no Linear): pruning its
    outputs would drop classes. The first conv sees the raw input and is the most sensitive layer.
    """
    convs = [n for n, m in layers if isinstance(m, nn.modules.conv._ConvNd)]
    linears = [n for n, m in layers if isinstance(m, nn.Linear)]
    first = convs[0] if convs else None
    head = linears[-1] if linears else (convs[-1] if len(convs) > 1 else None)
    return first, head


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _select(
    layers: Sequence[tuple[str, nn.Module]], selectors: Sequence[Selector], argument: str, *, strict: bool
) -> set[str]:
    """Names of ``layers`` matched by name patterns (on the layer or an enclosing module) or by type."""
    names = [n for n, _ in layers]
    chosen: set[str] = set()
    patterns = [s for s in selectors if isinstance(s, str)]
    all_names = sorted({a for n in names for a in _ancestors(n)})
    hits = match_patterns(all_names, patterns)
    for pattern in patterns:
        matched = {n for n in names if any(a in hits[pattern] for a in _ancestors(n))}
        if strict and not matched:
            sample = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise ValueError(
                f"Pruning({argument}=...): pattern {pattern!r} matches no prunable layer. "
                f"HINT: patterns are fnmatch patterns on module names such as {sample}."
            )
        chosen |= matched
    for kind in (s for s in selectors if isinstance(s, type)):
        matched = {n for n, m in layers if isinstance(m, kind)}
        if strict and not matched:
            raise ValueError(
                f"Pruning({argument}=...): type {kind.__name__} matches no prunable layer. "
                "HINT: prunable layers are Conv1d/2d/3d and Linear."
            )
        chosen |= matched
    return chosen


@dataclass
class LayerSelection:
    """The layers a ``Pruning`` callback prunes, and those it was told (or defaults) to leave alone."""

    selected: list[str]
    excluded: list[str]
    explicit: set[str]


def select_layers(
    root: nn.Module,
    include: Sequence[Selector] | None,
    exclude: Sequence[Selector] | None,
    *,
    channel_defaults: bool,
) -> LayerSelection:
    """Resolve ``include``/``exclude`` against the model's prunable layers.

    Args:
        root: the module being pruned.
        include: name patterns or module types to prune; None = every prunable layer.
        exclude: name patterns or module types never to prune (added to the defaults).
        channel_defaults: also exclude the first conv (unless an include pattern names it) and the head.

    Raises:
        ValueError: an include entry that matches no prunable layer, or nothing left to prune.
    """
    layers = prunable_layers(root)
    if not layers:
        raise ValueError(
            f"Pruning: the model ({type(root).__name__}) has no prunable layer. "
            "HINT: Pruning handles Conv1d/2d/3d and Linear layers."
        )
    names = [n for n, _ in layers]
    included = set(names) if include is None else _select(layers, include, "include", strict=True)
    explicit: set[str] = set()
    if include is not None:
        own = match_patterns(names, [s for s in include if isinstance(s, str)])
        explicit = {n for hits in own.values() for n in hits}
    excluded = _select(layers, exclude, "exclude", strict=False) if exclude else set()
    if channel_defaults:
        # the first conv can be named back in; the head never: pruning its outputs would drop classes
        first, head = default_channel_exclusions(layers)
        defaults = [n for n in (first, head) if n is not None and (n == head or n not in explicit)]
        if defaults:
            log.debug("Pruning(granularity='channel'): leaving %s unpruned by default", defaults)
        excluded |= set(defaults)
    selected = [n for n in names if n in included and n not in excluded]
    if not selected:
        raise ValueError(
            f"Pruning(include=..., exclude=...): no prunable layer left out of {len(names)} "
            f"(included {len(included)}, excluded {sorted(excluded)}). HINT: loosen exclude or widen include."
        )
    return LayerSelection(selected, sorted(n for n in names if n not in selected), explicit)


class MaskSet:
    """Bool mask buffers for a list of parameters of one root module.

    Args:
        root: the module that owns every masked parameter (the LightningModule).
        params: the masked parameters.
    """

    def __init__(self, root: nn.Module, params: Sequence[MaskedParam]) -> None:
        self.root = root
        self.params = list(params)
        self._pinned: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    def register(self) -> None:
        """Add an all-True mask buffer per parameter (kept when one of the right shape already exists).

        Raises:
            ValueError: a parameter is already pruned by ``torch.nn.utils.prune`` (has ``<param>_orig``).
        """
        self._pinned = None
        for spec in self.params:
            module = self.root.get_submodule(spec.layer)
            if hasattr(module, spec.param + "_orig"):
                raise ValueError(
                    f"Pruning: layer {spec.layer!r} is already pruned by torch.nn.utils.prune "
                    f"({spec.param}_orig). HINT: call torch.nn.utils.prune.remove on it, or exclude it."
                )
            param = getattr(module, spec.param)
            existing = module._buffers.get(spec.buffer)
            if existing is not None and existing.shape == param.shape and existing.dtype == torch.bool:
                continue
            module.register_buffer(spec.buffer, torch.ones_like(param, dtype=torch.bool), persistent=True)

    def registered(self) -> bool:
        """Whether every mask buffer exists."""
        return all(spec.buffer in self.root.get_submodule(spec.layer)._buffers for spec in self.params)

    def tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(parameters, masks), looked up now (a device move replaces buffer objects)."""
        params: list[torch.Tensor] = []
        masks: list[torch.Tensor] = []
        for spec in self.params:
            module = self.root.get_submodule(spec.layer)
            params.append(param_of(module, spec.param))
            masks.append(param_of(module, spec.buffer))
        return params, masks

    def pin(self, pinned: bool = True) -> None:
        """Cache the tensor lists for :meth:`apply` (once the model sits on its device), or drop the cache."""
        self._pinned = self.tensors() if pinned else None

    @torch.no_grad()
    def apply(self) -> None:
        """Zero every pruned entry in place (exact zeros; the sign bit of a zero may be set)."""
        params, masks = self._pinned or self.tensors()
        if params:
            torch._foreach_mul_(params, masks)

    @torch.no_grad()
    def set(self, arrays: Iterable[npt.NDArray[np.bool_]]) -> None:
        """Copy new keep-masks (NumPy bool arrays, one per parameter) into the buffers and apply them."""
        _, masks = self.tensors()
        for mask, array in zip(masks, arrays, strict=True):
            mask.copy_(torch.from_numpy(np.ascontiguousarray(array)).reshape(mask.shape))
        self.apply()

    def numpy(self) -> list[npt.NDArray[np.bool_]]:
        """The masks as NumPy arrays (copies)."""
        return [m.detach().cpu().numpy().copy() for m in self.tensors()[1]]

    @torch.no_grad()
    def remove(self) -> None:
        """Fold the masks into the parameters and delete the buffers (a plain state_dict remains)."""
        self._pinned = None
        self.apply()
        for spec in self.params:
            module = self.root.get_submodule(spec.layer)
            module._buffers.pop(spec.buffer, None)

    def counts(self) -> dict[str, tuple[int, int]]:
        """``{param key: (pruned, total)}`` from the masks."""
        out = {}
        for spec, mask in zip(self.params, self.tensors()[1], strict=True):
            out[spec.key] = (int(mask.numel() - mask.sum().item()), int(mask.numel()))
        return out


def weights_numpy(root: nn.Module, params: Sequence[MaskedParam]) -> list[npt.NDArray[np.float32]]:
    """Current values of ``params`` as float32 NumPy arrays (CPU copies for non-CPU tensors)."""
    out = []
    for spec in params:
        tensor = param_of(root.get_submodule(spec.layer), spec.param).detach()
        out.append(tensor.float().cpu().numpy())
    return out
