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
_NORMS = (nn.LayerNorm, nn.GroupNorm)
_CONV = nn.modules.conv._ConvNd
# Structure map: {layer: {"out": kept, "in": kept, "out_size": n, "in_size": n,
#                         "param:<name>": kept, "param:<name>_size": n, "param:<name>_dim": d,
#                         "heads": kept heads, "heads_size": n}}
Structure = dict[str, dict[str, Any]]
#: (param, dim, axis) touched when one channel of a layer is pruned; param "" records the axis only.
Axes = list[tuple[str, int, str]]
#: attention modules: names of the q/k/v/o projections and of the head size attribute, as HF writes them
_QKV = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q_lin", "k_lin", "v_lin"))
_HEAD_SIZE = ("attention_head_size", "head_dim", "dim_per_head", "head_size")
_NUM_HEADS = ("num_attention_heads", "num_heads", "n_heads")
ATTENTION_MODES = ("heads", "mlp")


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, _CONV) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _is_grouped(m: nn.Module) -> bool:
    return isinstance(m, _CONV) and m.groups > 1 and not _is_depthwise(m)


def _axes(module: nn.Module, is_out: bool) -> Axes:
    """(param, dim, structure axis) touched when a channel of ``module`` is pruned, or raise for unknown layers."""
    if isinstance(module, _CONV) and not module.transposed:
        if _is_depthwise(module) or is_out:
            return [("weight", 0, "out"), ("bias", 0, "out")]
        if module.groups == 1:
            return [("weight", 1, "in")]
        return [("", 1, "in")]  # grouped: whole groups go with their output rows; only in_channels changes
    if isinstance(module, nn.Linear):
        return [("weight", 0, "out"), ("bias", 0, "out")] if is_out else [("weight", 1, "in")]
    norm = isinstance(module, _BN | nn.GroupNorm)
    if norm or (isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1):
        return [("weight", 0, "out"), ("bias", 0, "out")]
    if isinstance(module, nn.Embedding):
        return [("weight", 1, "out")]
    if not any(True for _ in module.parameters(recurse=False)):
        return []
    raise LookupError(type(module).__name__)


def _param_size(module: nn.Module, param: str, dim: int) -> int:
    if param == "":
        return int(module.in_channels)  # type: ignore[arg-type]
    return int(param_of(module, param).shape[dim])


@dataclass
class _Member:
    layer: str
    axes: Axes
    idxs: npt.NDArray[np.int64]
    root_idxs: npt.NDArray[np.int64]
    producer: bool


@dataclass
class _Heads:
    """An attention module pruned head-wise: its q projection's output channel ``c`` is in head ``c // size``."""

    module: str
    query: str
    size: int


@dataclass
class ChannelGroup:
    """Layers sharing one channel dimension, rooted at the conv/linear whose outputs they are.

    ``blocks`` (one id per root channel) ties channels that go together: a GroupNorm group, a grouped conv's
    group, an attention head; such groups are pruned by whole blocks, each to the target (``scope="layer"``).
    """

    root: str
    channels: int
    members: list[_Member] = field(default_factory=list)
    blocks: npt.NDArray[np.int64] | None = None
    heads: list[_Heads] = field(default_factory=list)

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
                    if param and isinstance(getattr(module, param, None), torch.Tensor):
                        seen.setdefault((m.layer, param), None)
        return [MaskedParam(layer, param) for layer, param in seen]

    def scores(self, importance: str) -> list[npt.NDArray[np.floating]]:
        """Per group, per root channel: summed L1/L2 filter norms of the producing layers."""
        out: list[npt.NDArray[np.floating]] = []
        for g in self.groups:
            filters = []
            for m in g.members:
                if not m.producer:
                    continue
                param, dim = next((p, d) for p, d, _ in m.axes if p)
                w = param_of(self.root_module.get_submodule(m.layer), param).detach().float().cpu().numpy()
                w = np.moveaxis(w, dim, 0)
                full = np.zeros((g.channels, *w.shape[1:]), dtype=np.float64)
                full[m.root_idxs] = w[m.idxs]
                filters.append(full.reshape(g.channels, -1))
            out.append(channel_scores(filters, importance))
        return out

    def keep(
        self, sparsity: float, scope: str, importance: str, round_to: int | None = None
    ) -> list[npt.NDArray[np.bool_]]:
        """Per group, per root channel: True = kept, for the target ``sparsity`` (kept counts rounded up to
        multiples of ``round_to``). Blocked groups (heads, whole groups) lose whole blocks, each to the target."""
        scores = self.scores(importance)
        plain = [i for i, g in enumerate(self.groups) if g.blocks is None]
        keep: list[npt.NDArray[np.bool_]] = [np.ones(g.channels, dtype=bool) for g in self.groups]
        for i, k in zip(plain, channel_masks([scores[i] for i in plain], sparsity, scope, round_to), strict=True):
            keep[i] = k
        for i, g in enumerate(self.groups):
            if g.blocks is None:
                continue
            ids = np.unique(g.blocks)
            block_scores = np.array([scores[i][g.blocks == b].mean() for b in ids])
            kept_blocks = channel_masks([block_scores], sparsity, "layer")[0]
            keep[i] = np.isin(g.blocks, ids[kept_blocks])
        return keep

    def keep_from_masks(
        self, params: Sequence[MaskedParam], masks: Sequence[npt.NDArray[np.bool_]]
    ) -> list[npt.NDArray[np.bool_]]:
        """Per group, per root channel: True unless the channel's filter is fully masked (e.g. after a resume)."""
        arrays = {(p.layer, p.param): m for p, m in zip(params, masks, strict=True)}
        out = []
        for g in self.groups:
            kept = np.zeros(g.channels, dtype=bool)
            for member in (m for m in g.members if m.producer):
                param, dim = next((p, d) for p, d, _ in member.axes if p)
                rows = np.moveaxis(arrays[(member.layer, param)], dim, 0)[member.idxs]
                kept[member.root_idxs] |= rows.reshape(len(member.idxs), -1).any(axis=1)
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

    def structure(self, keep: Sequence[npt.NDArray[np.bool_]], groups: Sequence[int] | None = None) -> Structure:
        """Per-layer kept indices (original numbering) for per-group keep vectors (only ``groups``, if given)."""
        structure: Structure = {}
        chosen = range(len(self.groups)) if groups is None else groups
        for gi in chosen:
            g, kept = self.groups[gi], keep[gi]
            for m in g.members:
                module = self.root_module.get_submodule(m.layer)
                pruned = set(m.idxs[~kept[m.root_idxs]].tolist())
                for param, dim, axis in m.axes:
                    if param and not isinstance(getattr(module, param, None), torch.Tensor):
                        continue
                    entry = structure.setdefault(m.layer, {})
                    size = _param_size(module, param, dim)
                    previous = set(entry.get(axis, range(size)))
                    entry[axis] = sorted(previous - pruned)
                    entry[f"{axis}_size"] = size
                    if axis.startswith("param:"):
                        entry[f"{axis}_dim"] = dim
            for h in g.heads:
                q = structure.get(h.query, {}).get("out")
                if q is None:
                    continue
                entry = structure.setdefault(h.module, {})
                entry["heads"] = sorted({c // h.size for c in q})
                entry["heads_size"] = param_of(self.root_module.get_submodule(h.query)).shape[0] // h.size
                entry["head_dim"] = h.size
        return {k: v for k, v in structure.items() if _changed(v)}

    def remove(self, keep: Sequence[npt.NDArray[np.bool_]]) -> tuple[Structure, dict[tuple[str, str], Any]]:
        """Physically remove the channels not kept; returns the per-layer kept indices and, per replaced
        parameter ``(layer, param)``, ``{dim: kept indices}`` (for the optimizer state)."""
        structure = self.structure(keep)
        sliced = shrink(self.root_module, structure)
        _check_structure(self.root_module, structure)
        return structure, sliced


def _changed(entry: Mapping[str, Any]) -> bool:
    sizes = {k[: -len("_size")]: v for k, v in entry.items() if k.endswith("_size")}
    return any(len(entry[k]) != v for k, v in sizes.items() if k in entry)


def _check_structure(root: nn.Module, structure: Structure) -> None:
    for layer, entry in structure.items():
        module = root.get_submodule(layer)
        checks = [(p, d, a) for p, d, a in _safe_axes(module) if p] + [
            (k[len("param:") :], int(entry[f"{k}_dim"]), k)
            for k in entry
            if k.startswith("param:") and not k.endswith(("_size", "_dim"))
        ]
        for param, dim, axis in checks:
            tensor = getattr(module, param, None)
            if isinstance(tensor, torch.Tensor) and axis in entry and tensor.shape[dim] != len(entry[axis]):
                raise RuntimeError(
                    f"Pruning: after removing channels, {layer}.{param} has {tensor.shape[dim]} entries on "
                    f"dim {dim}, expected {len(entry[axis])}. This is a bug; please report it."
                )


def _safe_axes(module: nn.Module) -> Axes:
    try:
        return _axes(module, is_out=True) + _axes(module, is_out=False)
    except LookupError:
        return []


def _attention_modules(root: nn.Module) -> list[tuple[str, list[str], str | None, int]]:
    """HF-style attention modules: (name, [q, k, v] names, output projection name or None, head size)."""
    found = []
    for name, module in root.named_modules():
        for q, k, v in _QKV:
            subs = [getattr(module, a, None) for a in (q, k, v)]
            if not all(isinstance(s, nn.Linear) for s in subs):
                continue
            size = next((getattr(module, a) for a in _HEAD_SIZE if isinstance(getattr(module, a, None), int)), None)
            if size is None:
                heads = next((getattr(module, a) for a in _NUM_HEADS if isinstance(getattr(module, a, None), int)), 0)
                size = subs[0].out_features // heads if heads else None  # type: ignore[union-attr]
            if not size or any(s.out_features % size for s in subs):  # type: ignore[union-attr]
                continue
            prefix = f"{name}." if name else ""
            outs = [o for o in ("o_proj", "out_lin", "out_proj") if isinstance(getattr(module, o, None), nn.Linear)]
            out = f"{prefix}{outs[0]}" if outs else None
            found.append((name, [f"{prefix}{a}" for a in (q, k, v)], out, int(size)))
    return found


def _bare_axes(param: torch.Tensor, channels: int) -> Axes:
    """A bare ``nn.Parameter`` in a group (cls token, position embedding, layer scale): its last dimension."""
    if param.ndim >= 1 and param.shape[-1] == channels:
        return [("", param.ndim - 1, "")]
    raise LookupError("nn.Parameter")


def build_plan(
    root: nn.Module,
    selected: Sequence[str],
    example_input: Any,
    *,
    explicit: set[str],
    attention: str = "heads",
) -> ChannelPlan:
    """Trace ``root`` with torch-pruning and return the channel groups made only of ``selected`` producers.

    Supported in a group: Conv/Linear (inputs and outputs), depthwise and grouped convs (whole groups),
    BatchNorm, LayerNorm (ConvNeXt's and HF's too), GroupNorm (whole groups), Embedding, and bare
    parameters along their last dimension (cls tokens, position embeddings, layer scales). Attention modules
    with q/k/v projections (HF style) are pruned by whole heads (``attention="heads"``), or left alone
    (``attention="mlp"``: only MLP hidden dimensions and convs are pruned). Every group is removed once on
    trial (and put back) before training, so a group whose removal breaks the model's forward is refused here,
    not at the end of the schedule.

    Args:
        root: the module to prune (traced in eval mode; train/eval flags are restored).
        selected: names of the conv/linear layers whose output channels may be pruned.
        example_input: one input batch for the trace.
        explicit: layers the user named in ``include``; each must end up in a prunable group.
        attention: ``"heads"`` or ``"mlp"``.

    Raises:
        ValueError: the trace fails, a group holds a layer whose channels cannot be removed, removing a group's
            channels breaks the forward, or an explicitly included layer is coupled with a layer that is not
            selected.
    """
    import torch_pruning as tp

    names = {m: n for n, m in root.named_modules()}
    param_names = {id(p): n for n, p in root.named_parameters()}
    chosen = set(selected)
    attn = _attention_modules(root)
    projections = {n for _, qkv, out, _ in attn for n in [*qkv, *([out] if out else [])]}
    if attention == "mlp":
        chosen -= projections
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
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=(nn.Conv1d, nn.Conv2d,
                                      nn.Conv3d, nn.Linear)):  # fmt: skip
        root_module = group[0].dep.target.module
        channel_group = ChannelGroup(names[root_module], len(group[0].idxs))
        for item in group.items:
            module = item.dep.target.module
            is_out = graph.is_out_channel_pruning_fn(item.dep.handler)
            if isinstance(module, nn.Parameter):
                pname = param_names.get(id(module), "?")
                owner, _, attr = pname.rpartition(".")
                if module.ndim and len(item.idxs) and max(item.idxs) >= module.shape[-1]:
                    # indexed per head, not per channel (Swin's relative position bias): heads resize it
                    continue
                try:
                    axes = [(attr, d, f"param:{attr}") for _, d, _ in _bare_axes(module, int(module.shape[-1]))]
                except LookupError:
                    raise _refuse(pname, "nn.Parameter", channel_group.root) from None
                channel_group.members.append(_member(owner, axes, item, producer=False))
                continue
            if not isinstance(module, nn.Module) or module is root or module not in names:
                continue
            try:
                axes = _axes(module, is_out)
            except LookupError:
                raise _refuse(names[module], type(module).__name__, channel_group.root) from None
            if not axes:
                continue
            producer = (is_out or _is_depthwise(module)) and isinstance(module, _CONV | nn.Linear)
            channel_group.members.append(_member(names[module], axes, item, producer))
        if channel_group.channels > 1 and any(m.producer for m in channel_group.members):
            groups.append(channel_group)
    groups = _tie_blocks(root, groups, attn if attention == "heads" else [])
    _trial(root, groups, example_input, projections if attention == "heads" else set())
    covered = {m.layer for g in groups for m in g.members if m.producer}
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


def _member(layer: str, axes: Axes, item: Any, producer: bool) -> _Member:
    return _Member(
        layer, axes, np.asarray(item.idxs, dtype=np.int64), np.asarray(item.root_idxs, dtype=np.int64), producer
    )


def _refuse(layer: str, kind: str, root: str) -> ValueError:
    return ValueError(
        f"Pruning(granularity='channel'): layer {layer!r} ({kind}) is in the channel group of {root!r}, and its "
        "channels cannot be removed (supported: Conv/Linear, depthwise and grouped convs, BatchNorm, LayerNorm, "
        f"GroupNorm, Embedding, attention heads). HINT: exclude {root!r} (exclude=[{root!r}])."
    )


def _tie_blocks(
    root: nn.Module, groups: list[ChannelGroup], attn: Sequence[tuple[str, list[str], str | None, int]]
) -> list[ChannelGroup]:
    """Merge groups that must lose channels together and tie channels into blocks pruned whole.

    A grouped conv's input group and output group lose the same conv groups; q/k/v of an attention module
    lose the same heads; a GroupNorm loses whole norm groups. Groups are merged by concatenating their root
    channel spaces; ``blocks`` labels each channel with the block (union of tied channels) it belongs to.
    """
    offsets = np.cumsum([0] + [g.channels for g in groups])
    parent = list(range(int(offsets[-1])))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(a: int, b: int) -> None:
        parent[find(a)] = find(b)

    tied = False
    # (layer, "out"/"in") -> list of (group index, member) so grouped convs and attention can find their groups
    where: dict[tuple[str, bool], list[tuple[int, _Member]]] = {}
    for gi, g in enumerate(groups):
        for m in g.members:
            outward = any(a == "out" for _, _, a in m.axes)
            where.setdefault((m.layer, outward), []).append((gi, m))

    def tie(gi: int, m: _Member, size: int, key: Any, anchors: dict[Any, int]) -> None:
        for idx, r in zip(m.idxs.tolist(), m.root_idxs.tolist(), strict=True):
            node = int(offsets[gi]) + r
            label = (key, idx // size)
            if label in anchors:
                union(node, anchors[label])
            else:
                anchors[label] = node

    for name, module in root.named_modules():
        if isinstance(module, nn.GroupNorm) and 1 < module.num_groups < module.num_channels:
            anchors: dict[Any, int] = {}
            for gi, m in where.get((name, True), []):
                tie(gi, m, module.num_channels // module.num_groups, name, anchors)
                tied = True
        elif _is_grouped(module):
            anchors = {}
            size_in = int(module.in_channels) // int(module.groups)
            size_out = int(module.out_channels) // int(module.groups)
            for gi, m in where.get((name, False), []):
                tie(gi, m, size_in, name, anchors)
                tied = True
            for gi, m in where.get((name, True), []):
                tie(gi, m, size_out, name, anchors)
                tied = True
    heads_of: dict[int, list[_Heads]] = {}
    for module_name, qkv, _, size in attn:
        anchors = {}
        for layer in qkv:
            for gi, m in where.get((layer, True), []):
                tie(gi, m, size, module_name, anchors)
                heads_of.setdefault(gi, []).append(_Heads(module_name, qkv[0], size))
                tied = True
    if not tied:
        return groups
    # merge groups whose channels were tied across them
    owner = np.searchsorted(offsets, np.arange(int(offsets[-1])), side="right") - 1
    component: dict[int, int] = {}
    for node in range(int(offsets[-1])):
        component.setdefault(find(node), int(owner[node]))
    gparent = list(range(len(groups)))

    def gfind(i: int) -> int:
        while gparent[i] != i:
            i = gparent[i]
        return i

    for node in range(int(offsets[-1])):
        a, b = gfind(int(owner[node])), gfind(component[find(node)])
        if a != b:
            gparent[a] = b
    merged: dict[int, list[int]] = {}
    for gi in range(len(groups)):
        merged.setdefault(gfind(gi), []).append(gi)
    out: list[ChannelGroup] = []
    for members in merged.values():
        base = 0
        new = ChannelGroup(groups[members[0]].root, sum(groups[gi].channels for gi in members))
        labels: list[int] = []
        for gi in members:
            g = groups[gi]
            for m in g.members:
                new.members.append(_Member(m.layer, m.axes, m.idxs, m.root_idxs + base, m.producer))
            labels.extend(find(int(offsets[gi]) + r) for r in range(g.channels))
            new.heads.extend(h for h in heads_of.get(gi, []) if h not in new.heads)
            base += g.channels
        ids = np.unique(np.asarray(labels, dtype=np.int64), return_inverse=True)[1]
        if len(set(labels)) < new.channels:
            new.blocks = np.asarray(ids, dtype=np.int64).reshape(-1)
        out.append(new)
    return out


def _trial(root: nn.Module, groups: list[ChannelGroup], example_input: Any, projections: set[str]) -> None:
    """Remove one channel (or block) of every group on trial, run the forward, and put everything back.

    A group whose removal breaks the forward (a reshape that needs the channel count, an op torch-pruning does
    not follow) is refused here, naming its root layer, instead of crashing the fit at the end of the schedule.
    """
    if not groups:
        return
    plan = ChannelPlan(root, None, groups, {})
    keep = []
    for g in groups:
        k = np.ones(g.channels, dtype=bool)
        k[g.blocks == g.blocks[0] if g.blocks is not None else 0] = False
        keep.append(k)

    def attempt(which: Sequence[int]) -> Exception | None:
        undo: list[tuple[Any, str, Any]] = []
        modes = {m: m.training for m in root.modules()}
        root.eval()
        try:
            shrink(root, plan.structure(keep, which), undo=undo)
            with torch.no_grad():
                args = example_input if isinstance(example_input, tuple | list) else (example_input,)
                root(*args)
        except Exception as err:
            return err
        finally:
            for obj, attr, value in reversed(undo):
                setattr(obj, attr, value)
            for m, mode in modes.items():
                m.training = mode
        return None

    if attempt(range(len(groups))) is None:
        return
    for gi, g in enumerate(groups):
        err = attempt([gi])
        if err is not None:
            hint = f"exclude {g.root!r} (exclude=[{g.root!r}])"
            if any(m.layer in projections for m in g.members):
                hint += ", or prune MLP dimensions only with attention='mlp'"
            raise ValueError(
                f"Pruning(granularity='channel'): removing channels of the group rooted at {g.root!r} (with "
                f"{', '.join(g.layers[:6])}{', ...' if len(g.layers) > 6 else ''}) breaks the model's forward "
                f"({type(err).__name__}: {str(err)[:200]}), so it cannot be pruned. HINT: {hint}."
            )


def _index(tensor: torch.Tensor, dim: int, kept: Sequence[int]) -> torch.Tensor:
    return tensor.index_select(dim, torch.as_tensor(list(kept), dtype=torch.long, device=tensor.device)).clone()


def _set(obj: Any, attr: str, value: Any, undo: list[tuple[Any, str, Any]] | None) -> None:
    if undo is not None:
        undo.append((obj, attr, getattr(obj, attr)))
    setattr(obj, attr, value)


@torch.no_grad()
def shrink(
    root: nn.Module, structure: Structure, undo: list[tuple[Any, str, Any]] | None = None
) -> dict[tuple[str, str], dict[int, list[int]]]:
    """Cut a module down to a recorded structure (kept indices per layer): at channel removal, and on a fresh
    module before a pruned checkpoint's weights load.

    Args:
        root: a module of the same architecture as the one pruned.
        structure: ``{layer: {"out": [...], "in": [...], "out_size": n, "in_size": n, ...}}``.
        undo: when given, every attribute replaced is appended as ``(object, name, old value)``.

    Returns:
        Per replaced parameter ``(layer, param)``, the kept indices per dimension.

    Raises:
        ValueError: a layer is missing, of another type, or of another original size.
    """
    sliced: dict[tuple[str, str], dict[int, list[int]]] = {}
    for layer, entry in structure.items():
        try:
            module = root.get_submodule(layer)
        except AttributeError:
            raise ValueError(
                f"Pruning.restore: the checkpoint prunes layer {layer!r}, which the module lacks."
            ) from None
        axes_of: list[tuple[str, list[tuple[str, int]]]] = []
        for axis in ("out", "in"):
            if axis in entry:
                axes_of.append((axis, [(p, d) for p, d, a in _axes(module, is_out=axis == "out") if a == axis]))
        for key in entry:
            if key.startswith("param:") and not key.endswith(("_size", "_dim")):
                axes_of.append((key, [(key[len("param:") :], int(entry[f"{key}_dim"]))]))
        for axis, params in axes_of:
            kept = entry[axis]
            for param, dim in params:
                tensor = getattr(module, param, None) if param else None
                if not isinstance(tensor, torch.Tensor) or tensor.shape[dim] == len(kept):
                    continue  # no such tensor, or already cut (the same structure restored twice)
                if tensor.shape[dim] != entry[f"{axis}_size"]:
                    raise ValueError(
                        f"Pruning.restore: {layer}.{param} has {tensor.shape[dim]} entries on dim {dim}; the "
                        f"checkpoint was pruned from {entry[f'{axis}_size']}. HINT: build the module with the "
                        "same arguments as the one trained."
                    )
                new = nn.Parameter(_index(tensor, dim, kept), requires_grad=tensor.requires_grad)
                _set(module, param, new if isinstance(tensor, nn.Parameter) else new.data, undo)
                sliced.setdefault((layer, param), {})[dim] = list(kept)
            if axis.startswith("param:"):
                continue
            _resize(module, axis, entry, undo)
        if "heads" in entry:
            _resize_heads(module, entry, undo)
    return sliced


def _resize(module: nn.Module, axis: str, entry: Mapping[str, Any], undo: list[tuple[Any, str, Any]] | None) -> None:
    """Update a layer's size attributes (and BatchNorm statistics) after its channels were cut."""
    kept = entry[axis]
    n = len(kept)
    if isinstance(module, _BN):
        for buf in ("running_mean", "running_var"):
            value = getattr(module, buf, None)
            if value is not None and value.shape[0] != n:
                _set(module, buf, _index(value, 0, kept), undo)
        _set(module, "num_features", n, undo)
    elif isinstance(module, nn.LayerNorm):
        _set(module, "normalized_shape", (n,), undo)
    elif isinstance(module, nn.GroupNorm):
        per_group = entry[f"{axis}_size"] // module.num_groups
        _set(module, "num_groups", n // per_group, undo)
        _set(module, "num_channels", n, undo)
    elif isinstance(module, nn.Embedding):
        _set(module, "embedding_dim", n, undo)
    elif isinstance(module, nn.Linear):
        _set(module, "out_features" if axis == "out" else "in_features", n, undo)
    elif isinstance(module, _CONV):
        if _is_depthwise(module) or (module.groups > 1 and module.weight.shape[1] == 1 and axis == "out"):
            for attr in ("out_channels", "in_channels", "groups"):
                _set(module, attr, n, undo)
        elif axis == "out":
            if module.groups > 1:  # whole groups: the count of groups follows the output rows
                _set(module, "groups", n // (entry["out_size"] // module.groups), undo)
            _set(module, "out_channels", n, undo)
        else:
            _set(module, "in_channels", n, undo)


def _resize_heads(module: nn.Module, entry: Mapping[str, Any], undo: list[tuple[Any, str, Any]] | None) -> None:
    """An attention module that lost heads: its head counts and per-head tables (Swin's relative position bias)."""
    kept, before, size = entry["heads"], int(entry["heads_size"]), int(entry["head_dim"])
    for sub in module.modules():
        for attr in _NUM_HEADS:
            if getattr(sub, attr, None) == before:
                _set(sub, attr, len(kept), undo)
        if getattr(sub, "all_head_size", None) == before * size:
            _set(sub, "all_head_size", len(kept) * size, undo)
        table = getattr(sub, "relative_position_bias_table", None)
        if isinstance(table, nn.Parameter) and table.shape[-1] == before:
            new = nn.Parameter(_index(table, table.ndim - 1, kept), requires_grad=table.requires_grad)
            _set(sub, "relative_position_bias_table", new, undo)


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
