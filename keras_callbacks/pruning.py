"""Keras 3 ``Pruning``: scheduled magnitude pruning (unstructured, 2:4) inside the user's ``model.fit``.

The twin of :class:`lightning_plugins.pruning.Pruning`: same arguments, same defaults, and the same mask math
(:mod:`fitslim.sparsity`) on the same schedule (:mod:`fitslim.schedules`), where a step is a step of the running
fit (``epoch * steps_per_epoch + batch``, ``initial_epoch`` included; not the optimizer's iterations, which also
count every earlier fit of a model fit before) and the fit's total is ``epochs * steps_per_epoch``. Masks are
recomputed before the update steps and applied after every optimizer step (inside the compiled train step on
TensorFlow, in ``on_train_batch_end`` on JAX, PyTorch and under ``MirroredStrategy``), so pruned kernels are
exactly zero after each step. Masks live in the callback; the zeros live in the weights, so a run resumed from a
``keras.callbacks.BackupAndRestore`` backup or a ``.keras`` file saved mid-training recovers the masks from the
weights and continues exactly like an uninterrupted run. Works on the TensorFlow, PyTorch and JAX backends.

Example:
    >>> from keras_callbacks.pruning import Pruning
    >>> cb = Pruning(sparsity=0.5, schedule="polynomial", start=0.0, end=0.6)
    >>> # model.fit(x, y, epochs=10, callbacks=[cb])
"""

from __future__ import annotations

import fnmatch
import logging
from typing import Any

import keras
import numpy as np

from fitslim.callback_spec import PruningArguments, Selectors
from fitslim.errors import fail
from fitslim.schedules import SparsitySchedule
from fitslim.sparsity import (
    channel_masks,
    channel_scores,
    magnitude_masks,
    n_of_m_mask,
)
from keras_callbacks._backend import masking_function, patch_train_step, sync_state, to_numpy
from keras_callbacks._hooks import handoff
from keras_callbacks._steps import fit_step

__all__ = ["Pruning"]

log = logging.getLogger(__name__)

_PRUNABLE = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
)
_TRANSPOSED = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)


class SeparablePart:
    """One kernel of a SeparableConv1D/2D layer, pruned as a kernel of its own.

    ``part`` is ``"depthwise"`` (kernel ``(..., in, multiplier)``, one input per filter) or ``"pointwise"``
    (kernel ``(1, .., in * multiplier, filters)``). ``name`` is the layer's name, ``layer`` the layer.
    """

    def __init__(self, layer: Any, part: str) -> None:
        self.layer, self.part, self.name = layer, part, layer.name

    @property
    def kernel(self) -> Any:
        """The kernel variable this part prunes."""
        return self.layer.depthwise_kernel if self.part == "depthwise" else self.layer.pointwise_kernel

    def __repr__(self) -> str:
        return f"SeparablePart({self.name!r}, {self.part!r})"


_SELECTORS = Selectors(
    keras.layers.Layer, "layer-name patterns (str) or keras Layer types", "['*_conv', keras.layers.Dense]"
)


def prunable_layers(model: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Dense, Conv1D/2D/3D, DepthwiseConv1D/2D and SeparableConv1D/2D kernels, as ``(dotted name, layer)`` pairs.

    Layers of nested models are named ``"<inner model>.<layer>"``. A separable conv gives two entries,
    ``"<layer>/depthwise"`` and ``"<layer>/pointwise"``, each a :class:`SeparablePart`.
    """
    out: list[tuple[str, Any]] = []
    for layer in getattr(model, "layers", []):
        name = f"{prefix}{layer.name}"
        if isinstance(layer, _SEPARABLE):
            if getattr(layer, "pointwise_kernel", None) is not None:
                out.extend((f"{name}/{part}", SeparablePart(layer, part)) for part in ("depthwise", "pointwise"))
        elif isinstance(layer, _PRUNABLE) and not isinstance(layer, _TRANSPOSED):
            if getattr(layer, "kernel", None) is not None:
                out.append((name, layer))
        elif hasattr(layer, "layers"):
            out.extend(prunable_layers(layer, prefix=name + "."))
    return out


def _kernel(layer: Any) -> Any:
    """The pruned kernel: a layer's ``kernel``, a separable conv's pointwise kernel (its output channels)."""
    if isinstance(layer, _SEPARABLE):
        return layer.pointwise_kernel
    return layer.kernel


def _is_depthwise(layer: Any) -> bool:
    return isinstance(layer, _DEPTHWISE) or (isinstance(layer, SeparablePart) and layer.part == "depthwise")


def _input_axis(layer: Any) -> int | None:
    """The kernel's input-channel axis (Keras layouts: Dense ``(in, out)``, conv ``(..., in, out)``)."""
    if _is_depthwise(layer):
        return None  # one input per filter, like torch's depthwise weight (C, 1, kh, kw)
    return 0 if isinstance(layer, keras.layers.Dense) else -2


def _matches(name: str, selector: str | type, layer: Any) -> bool:
    if isinstance(selector, type):
        return isinstance(getattr(layer, "layer", layer), selector)
    base = name.rsplit("/", 1)[0] if isinstance(layer, SeparablePart) else name
    return any(fnmatch.fnmatchcase(n, p) for n in {name, base} for p in (selector, "*." + selector))


class Pruning(PruningArguments, keras.callbacks.Callback):
    """Prune the Keras model being fitted on a sparsity schedule: unstructured, whole channels, or 2:4.

    The schedule's absolute target is reached exactly at every update step (counts use ``round``), computed
    by the same functions as the Lightning twin, so the same weights at the same step give the same masks.
    Masks are computed in ``on_train_batch_begin`` at update steps (before that step's optimizer update, as
    on the Lightning side) and applied in ``on_train_batch_end`` after every step. The logs get
    ``pruning/sparsity`` (over exactly the pruned kernels), ``pruning/model_sparsity`` (over every Dense/Conv
    kernel of the model, pruned or not), ``pruning/target`` and ``pruning/sparsity/<layer>`` at every
    batch and epoch end: put ``Pruning`` before ``CSVLogger``/``TensorBoard`` in ``callbacks`` so they see them.

    Granularities:

    - ``"unstructured"``: single weights of Dense/Conv/DepthwiseConv kernels and of both kernels of
      SeparableConv1D/2D layers (named ``"<layer>/depthwise"`` and ``"<layer>/pointwise"``), smallest magnitude
      first.
    - ``"2:4"``: in every four consecutive weights along the kernel's input axis two are kept (``sparsity``
      must be 0.5). Layers whose input dimension is not a multiple of 4 are skipped unless named in
      ``include`` (then an error).
    - ``"channel"``: output channels of Dense/Conv layers, scored by the L1/L2 norm of their filters (summed over
      the producers of a group); channels joined by ``Add``-like layers, squeeze-excitation ``Multiply`` and
      element-wise ``keras.ops`` nodes (hard-sigmoid's ``x + 3``) form one group, and BatchNormalization,
      depthwise convs, separable convs' depthwise kernels, channel-only ``Reshape`` and the consuming layers' input
      slices follow. Separable convs are pruned like convs (their filters). A LayerNormalization freezes the
      channels it normalizes (its statistics over the channel axis change when channels are removed, so the
      masked model and the smaller one would differ); the hidden units of the MLP after it are pruned. The
      classifier head never loses outputs,
      the first conv is left alone unless ``include`` names it, and a group that reaches a layer without a
      channel rule (Flatten, Reshape, Concatenate, ...) is left alone. During ``fit`` the channels are masked
      (zeros); with ``make_permanent`` the model is rebuilt at ``on_train_end`` from its config with fewer
      filters/units and the kept weights, compiled like the original: the user's model object keeps the
      masked (zeroed) weights and the smaller model is ``callback.pruned_model`` (also handed to a
      ``QuantizationAware`` / ``Export`` callback placed after this one, beside the model, not on it). Functional and
      Sequential models only; ``on_train_begin`` rebuilds the model once with half the channels, so a graph that
      cannot be rebuilt is refused before the first step.

    Args:
        sparsity: final target in [0, 1).
        granularity: ``"unstructured"``, ``"channel"`` or ``"2:4"``.
        scope: ``"global"`` (one threshold over all pruned layers) or ``"layer"``.
        schedule: ``"polynomial"``, ``"constant"``, ``"cubic"`` or a :class:`fitslim.schedules.SparsitySchedule`.
        start: fraction of the fit's optimizer steps at which pruning starts.
        end: fraction of the fit at which the final sparsity is reached (> start).
        frequency: optimizer steps between mask updates; None = about 50 updates between start and end.
        include: layer-name patterns (fnmatch; nested models' layers are ``"inner.layer"``) or layer types;
            None = every prunable layer.
        exclude: patterns or layer types never pruned.
        importance: ``"l1"`` or ``"l2"`` (the same order for single weights).
        make_permanent: kept for parity with the Lightning twin; the zeros are in the kernels already, so
            after ``fit`` the model holds its pruned weights and nothing of the callback remains attached.
        start_step: absolute start step instead of ``start``.
        end_step: absolute end step instead of ``end``.
        example_input: unused on Keras (the graph is known); kept for parity.
        round_to: channel granularity only: keep a multiple of this many channels in every group (the
            best-scoring pruned channels are kept again), e.g. 8 so runtimes' blocked kernels still apply; the
            sparsity reached may then fall below the target.
        attention: channel granularity only. ``"heads"``: every ``keras.layers.MultiHeadAttention`` loses whole
            heads (per layer, to the schedule's target, at least one head kept), scored by the L1/L2 norm of the
            head's query, key, value and output kernels; during ``fit`` the head's slices of those kernels and of
            the query/key/value biases are masked, and the rebuilt model has a smaller ``num_heads`` with the kept
            slices. ``"mlp"``: attention layers stay whole and only Dense/Conv hidden dimensions are pruned.
            An attention layer inside a nested model, or one whose kernels do not have the per-head layout, is
            refused with ``"heads"`` in ``on_train_begin``, naming it.

    Raises:
        ValueError: a sparsity outside [0, 1), ``end <= start``, an unknown granularity / scope / schedule /
            importance / attention, 2:4 with a sparsity other than 0.5; and in ``on_train_begin``: an ``include`` entry
            that matches nothing, a model with no prunable layer, a fit without a known step count,
            ``steps_per_execution > 1``, channel pruning of a subclassed model, with no removable group or of a
            graph that cannot be rebuilt with fewer channels, an attention layer that cannot lose whole heads.
        TypeError: an argument of the wrong type.

    Example:
        >>> cb = Pruning(sparsity=0.8, granularity="unstructured", scope="global", end=0.5)
        >>> cb = Pruning(granularity="2:4", schedule="constant", start=0.3)
        >>> cb = Pruning(sparsity=0.5, granularity="channel", include=["*_conv"])
        >>> # model.fit(x, y, epochs=8, callbacks=[cb]); small = cb.pruned_model
        >>> # model.fit(x, y, epochs=8, callbacks=[cb, keras.callbacks.CSVLogger("log.csv")])
    """

    selectors = _SELECTORS

    def _reset(self) -> None:
        self.pruned_model: Any = None
        self._layers: list[tuple[str, Any]] = []
        self._masks: list[np.ndarray] | None = None
        self._mask_vars: list[Any] = []
        self._apply_fn: Any = None
        self._step_count: int | None = None
        self._epoch = 0
        self._undo: Any = None
        self._graph: ChannelGraph | None = None
        self._keep: dict[int, np.ndarray] = {}
        self._resolved: SparsitySchedule | None = None
        self._last_update: int | None = None
        self._target = 0.0
        self._before = 0.0
        self._metrics: dict[str, float] = {}
        self._others: tuple[int, int] = (0, 0)  # zeros and size of the kernels this callback does not prune
        # attention="heads": {layer name: (layer, [(per-head variable, head axis)])}, head keep-masks, mask variables
        self._heads: dict[str, tuple[Any, list[tuple[Any, int]]]] = {}
        self._head_keep: dict[str, np.ndarray] = {}
        self._head_mask_vars: list[Any] = []

    @property
    def masks(self) -> dict[str, np.ndarray]:
        """The current keep-masks (True = kept) by layer name, in the kernels' Keras layout."""
        if self._masks is None:
            return {}
        return {name: mask for (name, _), mask in zip(self._layers, self._masks, strict=True)}

    @property
    def layer_names(self) -> list[str]:
        """The names of the pruned layers (after ``on_train_begin``)."""
        return [name for name, _ in self._layers]

    # -- preparation ---------------------------------------------------------------------------------

    def _select(self, model: Any) -> list[tuple[str, Any]]:
        layers = prunable_layers(model)
        if not layers:
            raise ValueError(
                f"Pruning: the model ({type(model).__name__}) has no prunable layer. "
                "HINT: Pruning handles Dense, Conv1D/2D/3D and DepthwiseConv1D/2D layers."
            )
        chosen = layers
        explicit: set[str] = set()
        if self.include is not None:
            for selector in self.include:
                hits = [name for name, layer in layers if _matches(name, selector, layer)]
                if not hits:
                    shown = selector if isinstance(selector, str) else selector.__name__
                    raise fail(
                        "Pruning",
                        "include",
                        f"{shown!r} matches no prunable layer (prunable: {[n for n, _ in layers]})",
                        "use one of these names or a pattern such as '*_conv'",
                    )
                if isinstance(selector, str):
                    explicit.update(hits)
            chosen = [(n, lay) for n, lay in layers if any(_matches(n, s, lay) for s in self.include)]
        if self.exclude:
            chosen = [(n, lay) for n, lay in chosen if not any(_matches(n, s, lay) for s in self.exclude)]
        if self.granularity == "channel":
            # as on the Lightning side: the first conv only when named in include, the head never
            convs = [n for n, lay in layers if isinstance(lay, _CONVS)]
            denses = [n for n, lay in layers if isinstance(lay, keras.layers.Dense)]
            first = convs[0] if convs else None
            head = denses[-1] if denses else (convs[-1] if len(convs) > 1 else None)
            chosen = [(n, lay) for n, lay in chosen if n != head and (n != first or n in explicit)]
        if self.nm is not None:
            m = self.nm[1]
            bad = []
            for name, layer in chosen:
                axis = _input_axis(layer)
                if axis is None or tuple(_kernel(layer).shape)[axis] % m:
                    bad.append(name)
            named = [n for n in bad if n in explicit]
            if named:
                raise fail(
                    "Pruning",
                    "include",
                    f"layer {named[0]!r} has an input dimension that is not a multiple of {m}, "
                    f"so {self.granularity} cannot apply",
                    f"exclude {named[0]!r}",
                )
            if bad:
                log.info("Pruning(%s): skipping %s (input dimension not a multiple of %d)", self.granularity, bad, m)
            chosen = [(n, lay) for n, lay in chosen if n not in bad]
        if not chosen:
            raise fail(
                "Pruning",
                "exclude",
                f"no prunable layer left out of {len(layers)}",
                "loosen exclude or widen include" + (" or use 'unstructured'" if self.nm else ""),
            )
        return chosen

    def _total_steps(self) -> int:
        params = self.params or {}
        epochs, steps = params.get("epochs"), params.get("steps")
        if not epochs or not steps:
            raise fail(
                "Pruning",
                "schedule",
                f"the fit has no known length (epochs={epochs!r}, steps per epoch={steps!r})",
                "pass steps_per_epoch=... to fit() for a generator or an unsized dataset",
            )
        return int(epochs) * int(steps)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        """Validate the model and the fit, resolve the schedule (before the first step)."""
        model = self.model
        if int(getattr(model, "steps_per_execution", 1) or 1) > 1:
            raise fail(
                "Pruning",
                "granularity",
                f"the model is compiled with steps_per_execution={model.steps_per_execution}, so callbacks "
                "do not run after every optimizer step and pruned weights could regrow",
                "compile with steps_per_execution=1",
            )
        self._reset()
        handoff(model).pruned_model = None  # an earlier fit's smaller model is not this fit's
        if self.granularity == "channel":
            _check_graph(model)
        self._layers = self._select(model)
        if self.granularity == "channel":
            self._heads = _attention_heads(model) if self.attention == "heads" else {}
            self._prepare_channels(model)
        self._resolved = self.schedule.resolve(self._total_steps())
        self._before = self._zero_fraction()
        # the whole model's kernels: what the pruned ones leave out counts in pruning/model_sparsity
        pruned = {id(_kernel(lay)) for _, lay in self._layers}
        others = [to_numpy(_kernel(lay)) for _, lay in prunable_layers(model) if id(_kernel(lay)) not in pruned]
        self._others = (sum(int(k.size - np.count_nonzero(k)) for k in others), sum(k.size for k in others))
        # all-True mask variables exist from the start, so the (possibly compiled) masking captures them once
        self._mask_vars = [
            keras.Variable(
                np.ones(tuple(_kernel(lay).shape)),
                dtype=_kernel(lay).dtype,
                trainable=False,
                name=f"{n.replace('/', '_')}_mask",
            )
            for n, lay in self._layers
        ]
        head_vars = [v for _, parts in self._heads.values() for v, _ in parts]
        self._head_mask_vars = [
            keras.Variable(np.ones(tuple(v.shape)), dtype=v.dtype, trainable=False, name="head_mask") for v in head_vars
        ]
        self._apply_fn = masking_function(
            [_kernel(layer) for _, layer in self._layers] + head_vars, self._mask_vars + self._head_mask_vars
        )
        self._undo = patch_train_step(model, self._apply_fn)

    def _zero_fraction(self) -> float:
        kernels = [to_numpy(_kernel(layer)) for _, layer in self._layers]
        total = sum(k.size for k in kernels)
        return sum(int(k.size - np.count_nonzero(k)) for k in kernels) / max(total, 1)

    # -- masks ---------------------------------------------------------------------------------------

    def _set_masks(self, masks: list[np.ndarray]) -> None:
        self._masks = [np.asarray(m, dtype=bool) for m in masks]
        for var, m in zip(self._mask_vars, self._masks, strict=True):
            var.assign(m.astype(var.dtype))
        counts = [(int(m.size - np.count_nonzero(m)), int(m.size)) for m in self._masks]
        zeros, total = sum(p for p, _ in counts), sum(t for _, t in counts)
        self._metrics = {
            "pruning/sparsity": zeros / max(total, 1),
            "pruning/model_sparsity": (zeros + self._others[0]) / max(total + self._others[1], 1),
            "pruning/target": self._target,
        }
        for (name, _), (p, t) in zip(self._layers, counts, strict=True):
            self._metrics[f"pruning/sparsity/{name}"] = p / max(t, 1)
        if self._keep:
            kept = sum(int(k.sum()) for k in self._keep.values())
            self._metrics["pruning/channel_sparsity"] = 1 - kept / max(sum(k.size for k in self._keep.values()), 1)
        if self._head_keep:
            head_masks = [
                _head_mask(var, axis, self._head_keep[name])
                for name, (_, parts) in self._heads.items()
                for var, axis in parts
            ]
            for var, m in zip(self._head_mask_vars, head_masks, strict=True):
                var.assign(m.astype(var.dtype))
            kept = sum(int(k.sum()) for k in self._head_keep.values())
            self._metrics["pruning/head_sparsity"] = 1 - kept / max(sum(k.size for k in self._head_keep.values()), 1)

    def _apply(self) -> None:
        if self._apply_fn is not None:
            self._apply_fn()

    def _update(self, step: int) -> None:
        """Recompute the masks for the schedule's target at ``step`` and zero the pruned weights."""
        if self._resolved is None:
            return
        target = self._resolved.sparsity(step)
        weights = [to_numpy(_kernel(layer)) for _, layer in self._layers]
        if self.granularity == "channel":
            masks = self._channel_masks(target, weights)
        elif self.nm is not None:
            if target <= 0:
                return
            n, m = self.nm
            masks = [
                n_of_m_mask(w, n, m, axis=_input_axis(layer) or 0)
                for w, (_, layer) in zip(weights, self._layers, strict=True)
            ]
        else:
            masks = magnitude_masks(weights, target, self.scope, self.importance)
        self._last_update = step
        self._target = target
        if self._heads:
            self._head_keep = {
                name: channel_masks([_head_scores(parts, self.importance)], target, "layer")[0]
                for name, (_, parts) in self._heads.items()
            }
        self._set_masks(masks)
        self._apply()
        log.debug("Pruning: step %d target %.4f sparsity %.4f", step, target, self._metrics["pruning/sparsity"])

    def _recover(self, step: int) -> None:
        """After a resume (step > 0, no masks yet): the masks in effect are the zeros of the restored kernels."""
        if self._resolved is None:
            return
        last = self._resolved.last_update_step(step - 1)
        if last is None:
            return
        self._target = self._resolved.sparsity(last)
        self._last_update = last
        if self._graph is not None:
            for g in self._graph.groups():
                k = to_numpy(_kernel(self._graph.producers[g][0]))
                self._keep[g] = np.any(k.reshape(-1, k.shape[-1]) != 0, axis=0)
        for name, (layer, _) in self._heads.items():
            out = to_numpy(layer._output_dense.kernel)  # (heads, value_dim, model dim)
            self._head_keep[name] = np.any(out.reshape(out.shape[0], -1) != 0, axis=1)
        self._set_masks([to_numpy(_kernel(layer)) != 0 for _, layer in self._layers])
        log.info("Pruning: resumed at step %d with the masks of step %d (from the weights' zeros)", step, last)

    # -- channels ------------------------------------------------------------------------------------

    def _prepare_channels(self, model: Any) -> None:
        """Build the channel groups; the masked layers become every kernel that carries a pruned group."""
        graph = ChannelGraph(model, {name for name, _ in self._layers})
        groups = graph.groups()
        if not groups and not self._heads:
            raise fail(
                "Pruning",
                "granularity",
                "channel pruning found no channel group it can remove (every group reaches an output, a layer "
                "without a channel rule such as Flatten/Concatenate, or an excluded layer)",
                "name the convs to prune in include=..., or use 'unstructured'",
            )
        touched: set[str] = set()
        for g in groups:
            touched.update(
                lay.name for lay in graph.producers[g] + graph.members.get(g, []) + graph.consumers.get(g, [])
            )
        self._graph = graph
        self._check_rebuild(model)
        self._layers = [
            (name, lay)
            for name, lay in prunable_layers(model)
            if (name.rsplit("/", 1)[0] if isinstance(lay, SeparablePart) else name) in touched
        ]

    def _check_rebuild(self, model: Any) -> None:
        """Rebuild the model once with half of every group's channels, before the first step.

        The smaller model is built at ``on_train_end``; a graph this callback cannot follow must fail here,
        not after the user's training ran.
        """
        graph = self._graph
        if graph is None or not self.make_permanent:
            return
        self._keep = {}
        for g in graph.groups():
            n = int(_kernel(graph.producers[g][0]).shape[-1])
            self._keep[g] = np.arange(n) < max(1, n // 2)
        self._head_keep = {
            name: np.arange(lay.num_heads) < max(1, lay.num_heads // 2) for name, (lay, _) in self._heads.items()
        }
        try:
            self._rebuild(model, trial=True)
        except Exception as err:  # any failure of the trial rebuild is the user's answer
            raise fail(
                "Pruning",
                "granularity",
                f"the model cannot be rebuilt with fewer channels ({type(err).__name__}: {str(err)[:300]})",
                "exclude the layers around the one named there (exclude=[...]), or use 'unstructured'",
            ) from err
        finally:
            self._keep = {}
            self._head_keep = {}

    def _channel_masks(self, target: float, weights: list[np.ndarray]) -> list[np.ndarray]:
        graph = self._graph
        if graph is None:
            return [np.ones(w.shape, dtype=bool) for w in weights]
        groups = graph.groups()
        scores = [
            channel_scores([np.moveaxis(to_numpy(_kernel(p)), -1, 0) for p in graph.producers[g]], self.importance)
            for g in groups
        ]
        self._keep = dict(zip(groups, channel_masks(scores, target, self.scope, self.round_to), strict=True))
        masks = []
        for (_, layer), w in zip(self._layers, weights, strict=True):
            mask = np.ones(w.shape, dtype=bool)
            depthwise_part = isinstance(layer, SeparablePart) and layer.part == "depthwise"
            out_g = None if depthwise_part else graph.group_of(graph.out_group, layer.name)
            in_g = graph.group_of(graph.in_group, layer.name)
            if out_g in self._keep:
                axis = -2 if _is_depthwise(layer) else -1
                mask &= np.expand_dims(self._keep[out_g], tuple(i for i in range(w.ndim) if i != axis % w.ndim))
            if in_g in self._keep:
                axis = -2 if depthwise_part else (_input_axis(layer) or 0)
                mask &= np.expand_dims(self._keep[in_g], tuple(i for i in range(w.ndim) if i != axis % w.ndim))
            masks.append(mask)
        return masks

    def _rebuild(self, model: Any, trial: bool = False) -> Any:
        """A new model with the pruned channels removed, the kept weights copied, compiled like ``model``.

        ``trial``: only check that it builds and takes the weights (not compiled, nothing logged).
        """
        graph = self._graph
        if graph is None:
            return model
        sync_state(model)
        kept = {p.name: int(self._keep[g].sum()) for g in self._keep for p in graph.producers[g]}
        reshaped = {
            name: int(self._keep[root].sum())
            for name in graph.reshapes
            if (root := graph.group_of(graph.reshapes, name)) in self._keep
        }
        config = model.get_config()
        for entry in config["layers"]:
            entry.pop("build_config", None)  # the shapes change: layers are rebuilt when the graph is called
            cfg = entry["config"]
            if cfg.get("name") in kept:
                cfg["filters" if "filters" in cfg else "units"] = kept[cfg["name"]]
            if cfg.get("name") in reshaped:
                cfg["target_shape"] = [*cfg["target_shape"][:-1], reshaped[cfg["name"]]]
            if cfg.get("name") in self._head_keep:
                cfg["num_heads"] = int(self._head_keep[cfg["name"]].sum())
        new = (keras.Sequential if isinstance(model, keras.Sequential) else keras.Model).from_config(config)
        for name, keep in self._head_keep.items():
            layer, parts = self._heads[name]
            axes = {id(v): axis for v, axis in parts}
            idx = np.flatnonzero(keep)
            values = [
                np.take(to_numpy(w), idx, axis=axes[id(w)]) if id(w) in axes else to_numpy(w) for w in layer.weights
            ]
            new.get_layer(name).set_weights(values)
        for name, layer in graph.layers.items():
            if name in self._head_keep:
                continue
            # the layer's own variables; ones other callbacks attached (QAT ranges) are not in the clean clone
            own = [w for w in layer.weights if not str(getattr(w, "name", "")).startswith("fitslim_")]
            values = [to_numpy(w) for w in own]
            if not values:
                continue
            out_g, in_g = graph.group_of(graph.out_group, name), graph.group_of(graph.in_group, name)
            out_idx = np.flatnonzero(self._keep[out_g]) if out_g in self._keep else None
            in_idx = np.flatnonzero(self._keep[in_g]) if in_g in self._keep else None
            if out_idx is None and in_idx is None:
                pass
            elif isinstance(layer, _CONVS + (keras.layers.Dense,)):
                kernel = values[0]
                if in_idx is not None:
                    kernel = np.take(kernel, in_idx, axis=_input_axis(layer) or 0)
                if out_idx is not None:
                    kernel = np.take(kernel, out_idx, axis=-1)
                    values = [kernel, *[np.take(v, out_idx, axis=0) for v in values[1:]]]
                else:
                    values = [kernel, *values[1:]]
            elif isinstance(layer, _SEPARABLE):  # depthwise (..., in, 1), pointwise (..., in, out), bias (out,)
                depthwise, pointwise, *rest = values
                if in_idx is not None:
                    depthwise, pointwise = np.take(depthwise, in_idx, axis=-2), np.take(pointwise, in_idx, axis=-2)
                if out_idx is not None:
                    pointwise, rest = np.take(pointwise, out_idx, axis=-1), [np.take(v, out_idx, axis=0) for v in rest]
                values = [depthwise, pointwise, *rest]
            elif out_idx is not None and isinstance(layer, _DEPTHWISE):
                values = [np.take(values[0], out_idx, axis=-2), *[np.take(v, out_idx, axis=0) for v in values[1:]]]
            elif out_idx is not None:  # BatchNormalization: every variable is per channel
                values = [np.take(v, out_idx, axis=0) for v in values]
            new.get_layer(name).set_weights(values)
        if trial:
            return new
        if getattr(model, "compiled", False):
            new.compile_from_config(model.get_compile_config())
        before = sum(int(np.prod(w.shape)) for w in model.weights)
        after = sum(int(np.prod(w.shape)) for w in new.weights)
        log.info("fitslim Pruning: channels removed, parameters %s → %s (callback.pruned_model)", before, after)
        return new

    # -- hooks ---------------------------------------------------------------------------------------

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """At update steps, recompute the masks (before this step's optimizer update)."""
        if self._resolved is None:
            return
        step = fit_step(self.params, self._epoch, batch)
        if self._step_count is None:
            if self._masks is None and step > 0:
                sync_state(self.model)
                self._recover(step)  # a resumed fit: weights restored by BackupAndRestore / a loaded .keras file
        self._step_count = step
        if step != self._last_update and self._resolved.should_update(step):
            sync_state(self.model)
            self._update(step)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Keep the epoch index (``initial_epoch`` included): the schedule's step is this fit's own step."""
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Zero the pruned weights again after the optimizer step; report sparsity in ``logs``."""
        if self._step_count is not None:
            self._step_count += 1  # one optimizer step per batch (steps_per_execution=1 is checked)
        if self._masks is None:
            return
        if self._undo is None:  # not masked inside the compiled step (JAX, PyTorch, MirroredStrategy)
            sync_state(self.model)
            self._apply()
        if logs is not None:
            logs.update(self._metrics)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Report sparsity in the epoch ``logs`` (seen by CSVLogger/TensorBoard placed after this callback)."""
        if logs is not None and self._resolved is not None:
            zero = {"pruning/sparsity": 0.0, "pruning/model_sparsity": 0.0, "pruning/target": 0.0}
            logs.update(self._metrics or zero)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        """Apply the final masks (update at the last step if the schedule asks) and log before → after."""
        if self._resolved is None:
            return
        if self._undo is not None:
            self._undo()
            self._undo = None
        sync_state(self.model)
        step = self._step_count if self._step_count is not None else 0  # the fit's steps run, as counted per batch
        if step != self._last_update and self._resolved.should_update(step):
            self._update(step)
        if self._masks is not None:
            self._apply()
        if (
            self.granularity == "channel"
            and self.make_permanent
            and self._graph is not None
            and (self._keep or self._head_keep)
        ):
            self.pruned_model = self._rebuild(self.model)
            handoff(self.model).pruned_model = self.pruned_model  # for QuantizationAware / Export after this one
        log.info(
            "fitslim Pruning (%s, %s): kernel sparsity %.2f → %.2f over %d pruned kernels (%.2f of the model's)",
            self.granularity,
            self.scope,
            self._before,
            self._zero_fraction(),
            len(self._layers),
            self._metrics.get("pruning/model_sparsity", 0.0),
        )
        self._resolved = None
        self._apply_fn = None
        self._mask_vars = []
        self._head_mask_vars = []
        self._step_count = None


# -- channel pruning: dependency groups over the Keras graph, masks, physical rebuild -------------------------

_PASSTHROUGH = (
    keras.layers.ReLU,
    keras.layers.Activation,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.Softmax,
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.Identity,
)
_MERGE = (keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply, keras.layers.Maximum, keras.layers.Average)
_CONVS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


#: keras.ops applied element-wise to one tensor (or to a tensor and a Python number), as in
#: ``hard_sigmoid = relu6(x + 3) * (1 / 6)``: the channels pass through
_ELEMENTWISE_OPS = frozenset(
    "Abs Add Cast Clip Divide Elu Exp Gelu HardSigmoid HardSilu HardSwish LeakyRelu Log Maximum Minimum "
    "Multiply Negative Power Relu Relu6 Selu Sigmoid Silu Softplus Sqrt Square Subtract Swish Tanh TrueDivide".split()
)


def _channels(tensor: Any) -> int | None:
    shape = getattr(tensor, "shape", None)
    return None if not shape else shape[-1]


def _is_elementwise(op: Any, node: Any) -> bool:
    """A keras.ops node (not a layer) that maps channels one to one: its other arguments are Python numbers."""
    if isinstance(op, keras.layers.Layer) or type(op).__name__ not in _ELEMENTWISE_OPS:
        return False
    args = [*node.arguments.args, *node.arguments.kwargs.values()]
    tensors = node.input_tensors
    others = [a for a in args if not any(a is t for t in tensors) and not isinstance(a, list | tuple)]
    return bool(tensors) and all(isinstance(a, int | float | bool | str) or a is None for a in others)


def _last_axis(layer: Any) -> bool:
    """A normalization over (and with parameters along) the last axis only."""
    axis = layer.axis
    rank = len(layer.input.shape)
    axes = list(axis) if isinstance(axis, list | tuple) else [axis]
    return [a % rank for a in axes] == [rank - 1]


def _keeps_channels(layer: Any) -> bool:
    """A Reshape that only adds or drops size-1 axes in front of the channel axis (a squeeze-excitation's)."""
    before, after = tuple(layer.input.shape[1:]), tuple(layer.output.shape[1:])
    if not before or not after or before[-1] != after[-1] or before[-1] is None:
        return False
    return all(d == 1 for d in before[:-1]) and all(d == 1 for d in after[:-1])


def _attention_heads(model: Any) -> dict[str, tuple[Any, list[tuple[Any, int]]]]:
    """``{name: (layer, [(variable, head axis)])}`` for every MultiHeadAttention of ``model`` (``attention="heads"``).

    The per-head variables are the query/key/value kernels ``(dim, heads, key_dim)`` and biases ``(heads, key_dim)``
    and the output kernel ``(heads, value_dim, dim)``; the output bias is shared by all heads.

    Raises:
        ValueError: an attention layer inside a nested model (the rebuild takes the outer config only) or one
            whose kernels do not have that layout, naming it.
    """
    out: dict[str, tuple[Any, list[tuple[Any, int]]]] = {}

    def refuse(name: str, why: str) -> ValueError:
        return fail(
            "Pruning",
            "attention",
            f"attention layer {name!r} cannot lose whole heads: {why}",
            "pass attention='mlp' to leave attention layers whole and prune the MLP hidden dimensions",
        )

    def walk(container: Any, nested: str | None) -> None:
        for layer in getattr(container, "layers", []):
            if isinstance(layer, keras.layers.MultiHeadAttention):
                if nested is not None:
                    raise refuse(layer.name, f"it is inside the nested model {nested!r}")
                parts: list[tuple[Any, int]] = []
                heads = int(layer.num_heads)
                for sub in ("_query_dense", "_key_dense", "_value_dense", "_output_dense"):
                    dense = getattr(layer, sub, None)
                    kernel = getattr(dense, "kernel", None)
                    axis = 0 if sub == "_output_dense" else 1
                    if kernel is None or len(kernel.shape) != 3 or int(kernel.shape[axis]) != heads:
                        shape = None if kernel is None else tuple(kernel.shape)
                        raise refuse(layer.name, f"its {sub[1:]} kernel {shape} has no heads axis of size {heads}")
                    parts.append((kernel, axis))
                    bias = getattr(dense, "bias", None)
                    if bias is not None and sub != "_output_dense":
                        parts.append((bias, 0))
                if heads > 1:
                    out[layer.name] = (layer, parts)
            elif hasattr(layer, "layers"):
                walk(layer, nested or layer.name)

    walk(model, None)
    return out


def _head_scores(parts: list[tuple[Any, int]], importance: str) -> np.ndarray:
    """One score per head: the L1/L2 norm of its slices of the query, key, value and output kernels."""
    kernels = [np.moveaxis(to_numpy(v), axis, 0) for v, axis in parts if len(v.shape) == 3]
    return np.asarray(channel_scores(kernels, importance))


def _head_mask(var: Any, axis: int, keep: np.ndarray) -> np.ndarray:
    """The keep-mask of a per-head variable: ``keep`` broadcast along every axis but the heads axis."""
    shape = [1] * len(var.shape)
    shape[axis] = keep.size
    return np.broadcast_to(keep.reshape(shape), tuple(var.shape)).copy()


def _check_graph(model: Any) -> None:
    """Channel pruning rebuilds the model from its config: it needs a Functional or Sequential model."""
    if not any(c.__name__ in ("Functional", "Sequential") for c in type(model).__mro__):
        raise fail(
            "Pruning",
            "granularity",
            f"channel pruning needs a graph, and {type(model).__name__!r} is a subclassed model",
            "build the model with the Functional API or keras.Sequential, or use 'unstructured'",
        )


class ChannelGraph:
    """Channel dependency groups of a Functional or Sequential Keras model (channels-last).

    A group is a set of channels that must be removed together: the outputs of its producers (Dense/Conv,
    merged through ``Add``-like layers), the BatchNormalization and depthwise layers they flow through, and
    the inputs of the layers consuming them. A group reaching a model output, a layer without a channel rule
    (Flatten, Reshape, Concatenate, ...) or a producer that is not selected is frozen.

    Raises:
        ValueError: a model without a graph (subclassed) or a layer that cannot be followed, naming it.
    """

    def __init__(self, model: Any, selected: set[str]) -> None:
        _check_graph(model)
        self.parent: dict[int, int] = {}
        self.frozen: set[int] = set()
        self.out_group: dict[str, int] = {}
        self.in_group: dict[str, int] = {}
        self.producers: dict[int, list[Any]] = {}
        self.members: dict[int, list[Any]] = {}  # BN and depthwise layers carrying the group's channels
        self.consumers: dict[int, list[Any]] = {}
        self.layers: dict[str, Any] = {}
        counter = [0]

        def new() -> int:
            counter[0] += 1
            self.parent[counter[0]] = counter[0]
            return counter[0]

        self.reshapes: dict[str, int] = {}  # Reshape layers whose target's last axis is a group's channel count
        operations = getattr(model, "operations", None) or model.layers
        for layer in operations:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            if isinstance(layer, keras.layers.Layer):
                self.layers[layer.name] = layer
            nodes = getattr(layer, "_inbound_nodes", [])
            if len(nodes) != 1:
                raise fail(
                    "Pruning",
                    "granularity",
                    f"layer {layer.name!r} is called {len(nodes)} times; channel pruning needs each layer once",
                    "use 'unstructured' for models with shared layers",
                )
            parents = [t._keras_history[0].name for t in nodes[0].input_tensors]
            ins = []
            for p in parents:
                if p not in self.out_group:  # the model input
                    g = new()
                    self.frozen.add(g)
                    self.out_group[p] = g
                ins.append(self.out_group[p])
            if not ins:  # a constant: nothing flows in
                g = new()
                self.frozen.add(g)
                self.out_group[layer.name] = g
            elif isinstance(layer, _CONVS + (keras.layers.Dense,) + _SEPARABLE) and not isinstance(layer, _TRANSPOSED):
                g_in = self._find(ins[0])
                self.in_group[layer.name] = g_in
                self.consumers.setdefault(g_in, []).append(layer)
                if int(getattr(layer, "depth_multiplier", 1) or 1) != 1:
                    self.frozen.add(g_in)  # the pointwise inputs are (channel, multiplier) pairs
                g = new()
                self.producers[g] = [layer]
                chosen = layer.name in selected or f"{layer.name}/pointwise" in selected
                if not chosen or int(getattr(layer, "groups", 1) or 1) != 1:
                    self.frozen.add(g)
                self.out_group[layer.name] = g
            elif isinstance(layer, _DEPTHWISE):
                g = self._find(ins[0])
                if int(layer.depth_multiplier) != 1:
                    self.frozen.add(g)
                self.members.setdefault(g, []).append(layer)
                self.out_group[layer.name] = g
            elif isinstance(layer, keras.layers.BatchNormalization) and _last_axis(layer):
                g = self._find(ins[0])
                self.members.setdefault(g, []).append(layer)
                self.out_group[layer.name] = g
            elif isinstance(layer, _MERGE) or _is_elementwise(layer, nodes[0]):
                self.out_group[layer.name] = self._merge(layer, nodes[0], ins)
            elif isinstance(layer, _PASSTHROUGH) and not layer.weights:
                self.out_group[layer.name] = self._find(ins[0])
            elif isinstance(layer, keras.layers.Reshape) and _keeps_channels(layer):
                g = self._find(ins[0])
                self.reshapes[layer.name] = g
                self.out_group[layer.name] = g
            else:  # no channel rule: freeze what flows in, start a frozen group
                for g in ins:
                    self.frozen.add(self._find(g))
                g = new()
                self.frozen.add(g)
                self.out_group[layer.name] = g
        for output in model.outputs:
            self.frozen.add(self._find(self.out_group[output._keras_history[0].name]))

    def _merge(self, layer: Any, node: Any, ins: list[int]) -> int:
        """An element-wise merge (``Add``, a squeeze-excitation ``Multiply``, ``x + 3``): one group out.

        Inputs with the full channel count are joined; one broadcast along the channel axis (last dimension
        1, e.g. a spatial attention map) keeps its own group, frozen.
        """
        tensors = node.input_tensors
        widths = [_channels(t) for t in tensors]
        full = max((w for w in widths if w is not None), default=None)
        joined: int | None = None
        for g, w in zip(ins, widths, strict=True):
            if w is not None and w == 1 and full is not None and full > 1:
                self.frozen.add(self._find(g))
                continue
            joined = self._find(g) if joined is None else self._union(joined, g)
        return joined if joined is not None else self._find(ins[0])

    def _find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def _union(self, a: int, b: int) -> int:
        ra, rb = self._find(a), self._find(b)
        if ra == rb:
            return ra
        self.parent[rb] = ra
        for table in (self.producers, self.members, self.consumers):
            table.setdefault(ra, []).extend(table.pop(rb, []))
        if rb in self.frozen:
            self.frozen.add(ra)
        return ra

    def groups(self) -> list[int]:
        """The prunable groups (not frozen, with at least one producer), in a stable order."""
        roots = sorted({self._find(g) for g in self.producers})
        frozen = {self._find(g) for g in self.frozen}
        return [g for g in roots if g not in frozen and self.producers.get(g)]

    def group_of(self, table: dict[str, int], name: str) -> int | None:
        g = table.get(name)
        return None if g is None else self._find(g)
