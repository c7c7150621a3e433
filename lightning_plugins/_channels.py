"""Dependency-aware channel groups, channel masks, physical removal and its replay (private).

torch-pruning's ``DependencyGraph`` finds which layers share a channel dimension (conv -> BN -> next
conv's input, residual adds, depthwise convs, flatten into a Linear). During the schedule the whole
group is masked (every member's slice is zeroed); at the end the masked channels are removed with
torch-pruning. What was removed is recorded per layer as kept indices (original numbering), so a fresh
module can be shrunk to the same structure without a graph or an example input (:func:`shrink`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fitslim.sparsity import channel_masks, channel_scores
from lightning_plugins._masks import MaskedParam, param_of

__all__ = ["ChannelGroup", "ChannelPlan", "build_plan", "rebind_optimizers", "shrink"]

log = logging.getLogger(__name__)

_BN = nn.modules.batchnorm._BatchNorm
# Structure map: {layer: {"out": kept indices, "in": kept indices, "out_size": n, "in_size": n}}
Structure = dict[str, dict[str, Any]]


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _axes(module: nn.Module, is_out: bool) -> list[tuple[str, int, str]]:
    """(param, dim, structure axis) touched when a channel of ``module`` is pruned, or raise for unknown layers."""
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        if _is_depthwise(module):
            return [("weight", 0, "out"), ("bias", 0, "out")]
        if is_out:
            return [("weight", 0, "out"), ("bias", 0, "out")]
        if module.groups == 1:
            return [("weight", 1, "in")]
    elif isinstance(module, nn.Linear):
        return [("weight", 0, "out"), ("bias", 0, "out")] if is_out else [("weight", 1, "in")]
    elif isinstance(module, _BN):
        return [("weight", 0, "out"), ("bias", 0, "out")]
    elif not any(True for _ in module.parameters(recurse=False)):
        return []
    raise LookupError(type(module).__name__)


@dataclass
class _Member:
    layer: str
    axes: list[tuple[str, int, str]]
    idxs: npt.NDArray[np.int64]
    root_idxs: npt.NDArray[np.int64]
    producer: bool


@dataclass
class ChannelGroup:
    """Layers sharing one channel dimension, rooted at the conv/linear whose outputs they are."""

    root: str
    channels: int
    members: list[_Member] = field(default_factory=list)

    @property
    def layers(self) -> list[str]:
        """Names of the member layers with parameters."""
        return sorted({m.layer for m in self.members})


@dataclass
class ChannelPlan:
    """The prunable channel groups of a module and the parameters their masks cover."""

    root_module: nn.Module
    graph: Any
    groups: list[ChannelGroup]
    names: dict[nn.Module, str]

    @property
    def params(self) -> list[MaskedParam]:
        """Every masked parameter, in a fixed order."""
        seen: dict[tuple[str, str], None] = {}
        for g in self.groups:
            for m in g.members:
                module = self.root_module.get_submodule(m.layer)
                for param, _, _ in m.axes:
                    if getattr(module, param, None) is not None:
                        seen.setdefault((m.layer, param), None)
        return [MaskedParam(layer, param) for layer, param in seen]

    @property
    def total_channels(self) -> int:
        """Channels over all groups."""
        return sum(g.channels for g in self.groups)

    def scores(self, importance: str) -> list[npt.NDArray[np.floating]]:
        """Per group, per root channel: summed L1/L2 filter norms of the producing layers."""
        out: list[npt.NDArray[np.floating]] = []
        for g in self.groups:
            filters = []
            for m in g.members:
                if not m.producer:
                    continue
                w = param_of(self.root_module.get_submodule(m.layer)).detach().float().cpu().numpy()
                full = np.zeros((g.channels, *w.shape[1:]), dtype=np.float64)
                full[m.root_idxs] = w[m.idxs]
                filters.append(full)
            out.append(channel_scores(filters, importance))
        return out

    def keep(
        self, sparsity: float, scope: str, importance: str, round_to: int | None = None
    ) -> list[npt.NDArray[np.bool_]]:
        """Per group, per root channel: True = kept, for the target ``sparsity`` (kept counts rounded up to
        multiples of ``round_to``)."""
        return channel_masks(self.scores(importance), sparsity, scope, round_to)

    def keep_from_masks(
        self, params: Sequence[MaskedParam], masks: Sequence[npt.NDArray[np.bool_]]
    ) -> list[npt.NDArray[np.bool_]]:
        """Per group, per root channel: True unless the channel's filter is fully masked (e.g. after a resume)."""
        arrays = {(p.layer, p.param): m for p, m in zip(params, masks, strict=True)}
        out = []
        for g in self.groups:
            member = next(m for m in g.members if m.producer)
            dim = next(d for p, d, _ in member.axes if p == "weight")
            rows = np.moveaxis(arrays[(member.layer, "weight")], dim, 0)[member.idxs]
            kept = np.ones(g.channels, dtype=bool)
            kept[member.root_idxs] = rows.reshape(len(member.idxs), -1).any(axis=1)
            out.append(kept)
        return out

    def param_masks(self, keep: Sequence[npt.NDArray[np.bool_]]) -> list[npt.NDArray[np.bool_]]:
        """Full-shape keep-masks of :attr:`params` for per-group channel keep vectors."""
        params = self.params
        index = {(p.layer, p.param): i for i, p in enumerate(params)}
        masks = [
            np.ones(tuple(getattr(self.root_module.get_submodule(p.layer), p.param).shape), dtype=bool) for p in params
        ]
        for g, kept in zip(self.groups, keep, strict=True):
            for m in g.members:
                pruned = m.idxs[~kept[m.root_idxs]]
                if pruned.size == 0:
                    continue
                for param, dim, _ in m.axes:
                    i = index.get((m.layer, param))
                    if i is not None:
                        np.moveaxis(masks[i], dim, 0)[pruned] = False
        return masks

    def remove(self, keep: Sequence[npt.NDArray[np.bool_]]) -> Structure:
        """Physically remove the channels not kept (torch-pruning), returning the per-layer kept indices."""
        structure: Structure = {}
        for g, kept in zip(self.groups, keep, strict=True):
            for m in g.members:
                module = self.root_module.get_submodule(m.layer)
                pruned = set(m.idxs[~kept[m.root_idxs]].tolist())
                for param, dim, axis in m.axes:
                    tensor = getattr(module, param, None)
                    if tensor is None:
                        continue
                    entry = structure.setdefault(m.layer, {})
                    size = int(tensor.shape[dim])
                    previous = set(entry.get(axis, range(size)))
                    entry[axis] = sorted(previous - pruned)
                    entry[f"{axis}_size"] = size
        import torch_pruning as tp

        for g, kept in zip(self.groups, keep, strict=True):
            drop = np.flatnonzero(~kept).tolist()
            if not drop:
                continue
            root = self.root_module.get_submodule(g.root)
            fn = tp.prune_linear_out_channels if isinstance(root, nn.Linear) else tp.prune_conv_out_channels
            self.graph.get_pruning_group(root, fn, drop).prune()
        _check_structure(self.root_module, structure)
        return {k: v for k, v in structure.items() if _changed(v)}


def _changed(entry: Mapping[str, Any]) -> bool:
    return any(len(entry[a]) != entry[f"{a}_size"] for a in ("out", "in") if a in entry)


def _check_structure(root: nn.Module, structure: Structure) -> None:
    for layer, entry in structure.items():
        module = root.get_submodule(layer)
        for param, dim, axis in _axes(module, is_out=True) + _axes(module, is_out=False):
            tensor = getattr(module, param, None)
            if tensor is not None and axis in entry and tensor.shape[dim] != len(entry[axis]):
                raise RuntimeError(
                    f"Pruning: after removing channels, {layer}.{param} has {tensor.shape[dim]} entries on "
                    f"dim {dim}, expected {len(entry[axis])}. This is a bug; please report it."
                )


def build_plan(root: nn.Module, selected: Sequence[str], example_input: Any, *, explicit: set[str]) -> ChannelPlan:
    """Trace ``root`` with torch-pruning and return the channel groups made only of ``selected`` producers.

    Args:
        root: the module to prune (traced in eval mode; train/eval flags are restored).
        selected: names of the conv/linear layers whose output channels may be pruned.
        example_input: one input batch for the trace.
        explicit: layers the user named in ``include``; each must end up in a prunable group.

    Raises:
        ValueError: the trace fails, a group holds a layer whose channels cannot be masked, or an
            explicitly included layer is coupled with a layer that is not selected.
    """
    import torch_pruning as tp

    names = {m: n for n, m in root.named_modules()}
    chosen = set(selected)
    ignored = [m for n, m in root.named_modules() if n not in chosen and isinstance(m, (nn.Linear, nn.Conv1d,
               nn.Conv2d, nn.Conv3d))]  # fmt: skip
    modes = {m: m.training for m in root.modules()}
    root.eval()
    try:
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(root, example_inputs=example_input, verbose=False)
    except Exception as err:
        raise ValueError(
            f"Pruning(granularity='channel'): tracing {type(root).__name__} for its channel dependencies "
            f"failed ({type(err).__name__}: {err}). HINT: pass example_input=... matching the model's forward, "
            "or use granularity='unstructured'."
        ) from err
    finally:
        for m, mode in modes.items():
            m.training = mode
    groups: list[ChannelGroup] = []
    covered: set[str] = set()
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv1d, nn.Conv2d,
                                      nn.Conv3d, nn.Linear)):  # fmt: skip
        root_module = group[0].dep.target.module
        channel_group = ChannelGroup(names[root_module], len(group[0].idxs))
        for item in group.items:
            module = item.dep.target.module
            if not isinstance(module, nn.Module) or module is root or module not in names:
                if isinstance(module, nn.Parameter):
                    raise ValueError(
                        f"Pruning(granularity='channel'): the channel group of {channel_group.root!r} holds a "
                        "bare nn.Parameter, whose channels cannot be masked. HINT: exclude that layer."
                    )
                continue
            is_out = graph.is_out_channel_pruning_fn(item.dep.handler)
            try:
                axes = _axes(module, is_out)
            except LookupError:
                raise ValueError(
                    f"Pruning(granularity='channel'): layer {names[module]!r} ({type(module).__name__}) is in the "
                    f"channel group of {channel_group.root!r}, and its channels cannot be masked or removed "
                    "(supported: Conv/Linear, depthwise convs, BatchNorm). HINT: exclude "
                    f"{channel_group.root!r} (exclude=[{channel_group.root!r}])."
                ) from None
            if not axes:
                continue
            producer = (is_out or _is_depthwise(module)) and not isinstance(module, _BN)
            channel_group.members.append(
                _Member(
                    names[module],
                    axes,
                    np.asarray(item.idxs, dtype=np.int64),
                    np.asarray(item.root_idxs, dtype=np.int64),
                    producer,
                )
            )
            if producer:
                covered.add(names[module])
        if channel_group.channels > 1:
            groups.append(channel_group)
    for layer in sorted(explicit & chosen):
        if layer not in covered:
            raise ValueError(
                f"Pruning(include=...): layer {layer!r} cannot be channel-pruned: its channel dependency group "
                "also holds a layer that is excluded or not included (a residual add, a depthwise conv, or the "
                "first conv / the head, excluded by default). HINT: include every layer of that group, e.g. "
                "include=['*'] with exclude=[...] for the layers to keep."
            )
    if not groups:
        raise ValueError(
            f"Pruning(granularity='channel'): no prunable channel group in {type(root).__name__}: every group "
            "holds an excluded layer (the first conv and the head are excluded by default). "
            "HINT: include the first conv explicitly (include=['<name>', ...]) or use granularity='unstructured'."
        )
    return ChannelPlan(root, graph, groups, names)


def _index(tensor: torch.Tensor, dim: int, kept: Sequence[int]) -> torch.Tensor:
    return tensor.index_select(dim, torch.as_tensor(list(kept), dtype=torch.long, device=tensor.device)).clone()


@torch.no_grad()
def shrink(root: nn.Module, structure: Structure) -> None:
    """Cut a fresh module down to a recorded structure (kept indices per layer), before its weights load.

    Args:
        root: a module of the same architecture as the one pruned.
        structure: ``{layer: {"out": [...], "in": [...], "out_size": n, "in_size": n}}``.

    Raises:
        ValueError: a layer is missing, of another type, or of another original size.
    """
    for layer, entry in structure.items():
        try:
            module = root.get_submodule(layer)
        except AttributeError:
            raise ValueError(
                f"Pruning.restore: the checkpoint prunes layer {layer!r}, which the module lacks."
            ) from None
        for axis in ("out", "in"):
            if axis not in entry:
                continue
            kept = entry[axis]
            axes = [(p, d) for p, d, a in _axes(module, is_out=axis == "out") if a == axis]
            for param, dim in axes:
                tensor = getattr(module, param, None)
                if tensor is None:
                    continue
                if tensor.shape[dim] == len(kept):
                    continue  # already cut (the same structure restored twice)
                if tensor.shape[dim] != entry[f"{axis}_size"]:
                    raise ValueError(
                        f"Pruning.restore: {layer}.{param} has {tensor.shape[dim]} entries on dim {dim}; the "
                        f"checkpoint was pruned from {entry[f'{axis}_size']}. HINT: build the module with the "
                        "same arguments as the one trained."
                    )
                setattr(module, param, nn.Parameter(_index(tensor, dim, kept), requires_grad=tensor.requires_grad))
            n = len(kept)
            if isinstance(module, _BN):
                for buf in ("running_mean", "running_var"):
                    value = getattr(module, buf, None)
                    if value is not None and value.shape[0] != n:
                        setattr(module, buf, _index(value, 0, kept))
                module.num_features = n
            elif isinstance(module, nn.Linear):
                if axis == "out":
                    module.out_features = n
                else:
                    module.in_features = n
            elif isinstance(module, nn.modules.conv._ConvNd):
                if _is_depthwise(module) or (module.groups > 1 and module.weight.shape[1] == 1):
                    module.out_channels = module.in_channels = module.groups = n
                elif axis == "out":
                    module.out_channels = n
                else:
                    module.in_channels = n


def rebind_optimizers(
    optimizers: Sequence[torch.optim.Optimizer], swaps: Mapping[int, tuple[nn.Parameter, Any]]
) -> int:
    """Point optimizers at the parameters that replaced old ones, slicing per-parameter state to match.

    The optimizer objects stay the same, so LR schedulers, Lightning's optimizer wrappers and step hooks
    keep working; their ``param_groups`` and ``state`` now hold the new tensors.

    Args:
        optimizers: the trainer's optimizers.
        swaps: ``{id(old parameter): (new parameter, {dim: kept indices})}``.

    Returns:
        How many parameter slots were rebound.
    """
    count = 0
    for opt in optimizers:
        for group in opt.param_groups:
            for i, old in enumerate(group["params"]):
                swap = swaps.get(id(old))
                if swap is None:
                    continue
                new, kept = swap
                group["params"][i] = new
                state = opt.state.pop(old, None)
                if state:
                    opt.state[new] = {k: _slice_state(v, old.shape, kept) for k, v in state.items()}
                count += 1
    return count


def _slice_state(value: Any, shape: torch.Size, kept: Mapping[int, Sequence[int]]) -> Any:
    if not isinstance(value, torch.Tensor) or value.shape != shape:
        return value
    for dim, idxs in kept.items():
        value = _index(value, dim, idxs)
    return value
