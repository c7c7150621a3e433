"""Lightning ``Pruning``: scheduled magnitude pruning (unstructured, whole channels, 2:4) inside the user's fit.

Masks are bool buffers on the pruned layers (``<layer>.weight_mask``), applied in place right after every
optimizer step, so pruned weights are exactly zero after each step, masks are in every checkpoint, and the
forward pass costs nothing extra. The target is a pure function of ``trainer.global_step`` (see
:mod:`fitslim.schedules`), so a resumed run or every DDP rank computes the same masks. Channel pruning masks
whole dependency groups (torch-pruning's ``DependencyGraph``) and removes them physically at the schedule's
end (or at fit end), rebinding the optimizers to the smaller tensors.

Example:
    >>> from lightning_plugins.pruning import Pruning
    >>> cb = Pruning(sparsity=0.5, granularity="channel", schedule="polynomial", start=0.0, end=0.6)
    >>> # Trainer(max_epochs=10, callbacks=[cb, Export(targets=["onnx"])]).fit(module, datamodule)
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from typing_extensions import override

from fitslim.callback_spec import PruningArguments, Selectors
from fitslim.errors import fail
from fitslim.schedules import SparsitySchedule
from fitslim.sparsity import magnitude_masks, n_of_m_mask
from lightning_plugins._channels import ChannelPlan, Structure, build_plan, rebind_optimizers, shrink
from lightning_plugins._compat import pl
from lightning_plugins._masks import (
    MASK_SUFFIX,
    MaskedParam,
    MaskSet,
    param_of,
    prunable_layers,
    select_layers,
    weights_numpy,
)

__all__ = ["Pruning"]

log = logging.getLogger(__name__)

_STATE_VERSION = 1


_SELECTORS = Selectors(nn.Module, "module-name patterns (str) or nn.Module types", "['*.conv', nn.Linear]")


def _is_spawn(trainer: Any) -> bool:
    """Whether the strategy runs fit in child processes whose weights are copied back into the parent's module."""
    launcher = getattr(getattr(trainer, "strategy", None), "launcher", None)
    return type(launcher).__name__ == "_MultiProcessingLauncher"


def _rewrap_ddp(trainer: Any) -> None:
    """Re-wrap a DDP-wrapped module after its parameters were replaced (DDP's reducer holds the old ones)."""
    strategy = trainer.strategy
    if isinstance(getattr(strategy, "model", None), nn.parallel.DistributedDataParallel) and hasattr(
        strategy, "configure_ddp"
    ):
        strategy.model = strategy.lightning_module
        strategy.configure_ddp()


def _first_input(trainer: Any) -> Any:
    """One training input without advancing the loader's sampler RNG (dataset[0] + collate when possible)."""
    from exporters.core.source import batch_input

    loader = trainer.train_dataloader
    if loader is None:  # on_fit_start runs before the fit loop sets its loader up: ask the loader's source
        source = getattr(getattr(trainer, "fit_loop", None), "_data_source", None)
        if source is not None and source.is_defined():
            loader = source.dataloader()
    if isinstance(loader, Sequence | Mapping):
        loader = next(iter(loader.values() if isinstance(loader, Mapping) else loader))
    dataset = getattr(loader, "dataset", None)
    if dataset is not None and hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):
        collate = getattr(loader, "collate_fn", None) or torch.utils.data.default_collate
        return batch_input(collate([dataset[0]]))
    return batch_input(next(iter(loader)))


class Pruning(PruningArguments, pl.Callback):  # type: ignore[name-defined]
    """Prune the module being fitted on a sparsity schedule: unstructured, whole channels, or 2:4.

    The schedule's absolute target is reached exactly at every update step (counts use ``round``), and
    pruned weights stay exactly zero after every optimizer step. Masks (bool buffers), the schedule position
    and the removed-channel structure are checkpointed, so ``trainer.fit(..., ckpt_path=...)`` continues with
    the same masks and weights as an uninterrupted run. Sparsity per layer and overall is logged at every
    update (``pruning/sparsity``, ``pruning/sparsity/<layer>``, ``pruning/target``) and a before -> after
    summary at fit end.

    Granularities:

    - ``"unstructured"``: single weights of Conv/Linear layers, smallest magnitude first.
    - ``"channel"``: output channels, scored by the L1/L2 norm of their filters (summed over the layers that
      produce the channel); every layer sharing the channel (BN, LayerNorm, residual adds, depthwise convs, the
      next layer's inputs) is masked with it. Grouped convs and GroupNorm lose whole groups and attention
      modules whole heads (see ``attention``), each group to the target. Before the first step every group is
      removed once on trial and put back: one whose removal breaks the forward is refused, naming its layer.
      (LayerNorm normalizes over the masked zeros until the channels are removed; the fit after ``end``
      adapts to the removal.) The classifier head (the last Linear, or the last conv when there is
      none) never loses outputs; the first conv is left alone unless an ``include`` pattern names it. With
      ``make_permanent`` the channels are removed physically at the schedule's ``end`` (the rest of the fit
      fine-tunes the smaller model; the optimizers are rebound to it) or at fit end when the schedule runs
      to the end; ``sparsity`` is then the fraction of channels.
    - ``"2:4"``: in every four consecutive weights along the input dimension two are kept (``sparsity``
      must be 0.5; the schedule only says when masks are computed: every update step with a target > 0).
      Layers whose input dimension is not a multiple of 4 are skipped unless named in ``include`` (then an
      error); ``scope`` does not apply.

    Args:
        sparsity: final target in [0, 1): fraction of weights (unstructured) or of channels (channel).
        granularity: ``"unstructured"``, ``"channel"`` or ``"2:4"``.
        scope: ``"global"`` (one threshold over all pruned layers) or ``"layer"`` (each layer, or each
            channel group, pruned to the target).
        schedule: ``"polynomial"`` (tfmot PolynomialDecay, cubic), ``"constant"``, ``"cubic"``, or a
            :class:`fitslim.schedules.SparsitySchedule`, which then overrides sparsity/start/end/frequency.
        start: fraction of the fit's optimizer steps at which pruning starts.
        end: fraction of the fit at which the final sparsity is reached (> start).
        frequency: optimizer steps between mask updates; None = about 50 updates between start and end.
        include: module-name patterns (fnmatch on names such as ``"model.blocks.3.dw_conv"``; a pattern
            also matches a trailing part, ``"blocks.*"``, and selects every layer under a matching module)
            or module types; None = every Conv/Linear.
        exclude: patterns or types never pruned (in addition to the channel defaults).
        importance: ``"l1"`` or ``"l2"`` filter norm (the same order for single weights).
        make_permanent: at fit end fold the masks into the weights and drop the buffers and hooks (channel:
            remove the channels physically), so ``torch.save`` / ONNX export carry the result.
        start_step: absolute start step instead of ``start``.
        end_step: absolute end step instead of ``end``.
        example_input: an input batch for tracing channel dependencies; default: the module's
            ``example_input_array``, else the first training sample.
        round_to: channel granularity only: keep a multiple of this many channels in every group (the
            best-scoring pruned channels are kept again), e.g. 8 so runtimes' blocked kernels still apply; the
            sparsity reached may then fall below the target.
        attention: channel granularity only: ``"heads"`` prunes attention modules with q/k/v projections (HF
            style) by whole heads, q/k/v/o together, and updates the module's head count so its own reshape
            still works; ``"mlp"`` leaves the q/k/v/o projections alone and prunes MLP hidden dimensions and
            convs only.

    Raises:
        ValueError: a sparsity outside [0, 1), ``end <= start``, an unknown granularity / scope / schedule /
            importance, 2:4 with a sparsity other than 0.5; and, before the first optimizer step, an
            ``include`` pattern that matches nothing, a model with no prunable layer, a channel group that
            cannot be resolved, channel removal under a spawn strategy, or a fit without a finite step count.
        TypeError: an argument of the wrong type.

    Example:
        >>> cb = Pruning(sparsity=0.8, granularity="unstructured", scope="global", end=0.5)
        >>> cb = Pruning(granularity="channel", exclude=["*.dw_conv"], importance="l2")
        >>> cb = Pruning(granularity="2:4", schedule="constant", start=0.3)
        >>> # Trainer(max_epochs=8, callbacks=[cb]).fit(module, datamodule)
    """

    selectors = _SELECTORS

    def _reset(self) -> None:
        self._module: nn.Module | None = None
        self._trainer: Any = None
        self._masks: MaskSet | None = None
        self._plan: ChannelPlan | None = None
        self._keep: list[np.ndarray] | None = None
        self._resolved: SparsitySchedule | None = None
        self._phase = "dense"  # dense -> masking -> removed (channels cut) | permanent (masks folded)
        self._structure: Structure = {}
        self._last_update: int | None = None
        self._target = 0.0
        self._example: torch.Tensor | None = None
        self._hooks: list[Any] = []
        self._load_hook: Any = None
        self._before: dict[str, float] = {}

    @property
    @override
    def state_key(self) -> str:
        names = [s if isinstance(s, str) else s.__name__ for s in (self.include or [])]
        return self._generate_state_key(granularity=self.granularity, scope=self.scope, include=names)

    @property
    def structure(self) -> Structure:
        """Per pruned layer, the kept channel indices (``"out"``/``"in"``) and original sizes."""
        return self._structure

    @property
    def masks(self) -> MaskSet | None:
        """The live mask set (None before setup and after the masks were made permanent)."""
        return self._masks

    # -- preparation ---------------------------------------------------------------------------------

    def _stats(self, module: nn.Module) -> dict[str, float]:
        weights = [param_of(m).detach() for _, m in prunable_layers(module)]
        total = sum(w.numel() for w in weights)
        zeros = sum(int((w == 0).sum()) for w in weights)
        return {"params": float(sum(p.numel() for p in module.parameters())), "sparsity": zeros / max(total, 1)}

    def _example_input(self, trainer: Any, module: nn.Module) -> Any:
        x = self.example_input
        if x is None:
            x = getattr(module, "example_input_array", None)
        if x is None and self._example is not None:
            x = self._example
        if x is None:
            try:
                x = _first_input(trainer)
            except Exception as err:
                raise fail(
                    "Pruning",
                    "example_input",
                    f"no input to trace the model with ({type(err).__name__}: {err})",
                    "pass example_input=... or set module.example_input_array",
                ) from err
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if isinstance(x, torch.Tensor):
            self._example = x[:1].detach().cpu().clone()
            device = next((p.device for p in module.parameters()), torch.device("cpu"))
            return x[:1].to(device)
        return x

    def _prepare(self, trainer: Any, module: nn.Module) -> None:
        """Choose the layers, validate them and register all-True masks (phase dense -> masking)."""
        selection = select_layers(module, self.include, self.exclude, channel_defaults=self.granularity == "channel")
        if self.granularity == "channel":
            self._plan = build_plan(
                module,
                selection.selected,
                self._example_input(trainer, module),
                explicit=selection.explicit,
                attention=self.attention,
            )
            params = self._plan.params
        else:
            names = selection.selected
            if self.nm is not None:
                m = self.nm[1]
                bad = [n for n in names if param_of(module.get_submodule(n)).shape[1] % m]
                named = [n for n in bad if n in selection.explicit]
                if named:
                    raise fail(
                        "Pruning",
                        "include",
                        f"layer {named[0]!r} has {param_of(module.get_submodule(named[0])).shape[1]} input "
                        f"channels, not a multiple of {m}, so {self.granularity} cannot apply",
                        f"exclude {named[0]!r}",
                    )
                if bad:
                    log.info(
                        "Pruning(%s): skipping %s (input dimension not a multiple of %d)", self.granularity, bad, m
                    )
                names = [n for n in names if n not in bad]
                if not names:
                    raise fail(
                        "Pruning",
                        "granularity",
                        f"no layer has an input dimension divisible by {m}",
                        "use 'unstructured'",
                    )
            params = [MaskedParam(n, "weight") for n in names]
        self._masks = MaskSet(module, params)
        self._masks.register()
        self._phase = "masking"

    def _pending_state(self, trainer: Any) -> dict[str, Any] | None:
        """This callback's state in the checkpoint Lightning is restoring right now, if any."""
        loaded = getattr(getattr(trainer, "_checkpoint_connector", None), "_loaded_checkpoint", None) or {}
        state = (loaded.get("callbacks") or {}).get(self.state_key)
        return state if isinstance(state, dict) else None

    def _before_load(self, module: nn.Module, state_dict: Mapping[str, Any], prefix: str, *args: Any) -> None:
        """load_state_dict pre-hook: rebuild structure and masks before a checkpoint's weights load.

        Lightning loads the model's weights before any callback state (checkpoint_connector.restore_model
        runs before restore_callbacks), so the removed channels are read from the checkpoint here.
        """
        if prefix or module is not self._module:
            return
        state = self._pending_state(self._trainer)
        if state is None:
            return
        self._structure = dict(state.get("structure") or {})
        if self._structure:
            shrink(module, self._structure)
        example = state.get("example_input")
        self._example = example if isinstance(example, torch.Tensor) else self._example
        if state.get("phase") == "masking" and self._phase == "dense":
            self._prepare(self._trainer, module)
        elif state.get("phase") in ("removed", "permanent"):
            self._phase = str(state["phase"])
        self._apply_counters(state)

    def _apply_counters(self, state: Mapping[str, Any]) -> None:
        last = state.get("last_update_step")
        self._last_update = None if last is None else int(last)
        self._target = float(state.get("target", 0.0))

    # -- Lightning hooks -----------------------------------------------------------------------------

    @override
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self._module is not pl_module:
            if self._load_hook is not None:
                self._load_hook.remove()
            self._reset()
            self._module = pl_module
            self._before = self._stats(pl_module)
            self._load_hook = pl_module.register_load_state_dict_pre_hook(self._before_load)
        self._trainer = trainer
        if stage == "fit" and self._phase == "permanent":
            self._phase, self._last_update, self._target = "dense", None, 0.0  # a new fit prunes again
        if stage == "fit" and self.granularity == "channel" and self.make_permanent and _is_spawn(trainer):
            raise fail(
                "Pruning",
                "granularity",
                "physically removing channels under a spawn strategy (ddp_spawn, ddp_notebook) cannot work: "
                "Lightning copies the trained weights back into the parent process's full-size module",
                "use strategy='ddp', or make_permanent=False (channels stay masked) and Pruning.restore(...)",
            )

    @override
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        total = trainer.estimated_stepping_batches
        if not (isinstance(total, int) or (isinstance(total, float) and math.isfinite(total))) or total < 1:
            raise fail(
                "Pruning",
                "end",
                f"the fit has no finite number of optimizer steps ({total!r}) to place start/end in",
                "set max_epochs or max_steps, or pass start_step/end_step",
            )
        try:
            self._resolved = self.schedule.resolve(int(total))
        except ValueError as err:
            raise ValueError(f"Pruning(start=..., end=...): {err}") from err
        if self._phase == "dense":
            self._prepare(trainer, pl_module)

    @override
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self._phase != "masking" or self._masks is None:
            return
        self._remove_hooks()
        for opt in trainer.optimizers:
            self._hooks.append(opt.register_step_post_hook(self._after_step))
        self._masks.pin()  # the model is on its device now: look the tensors up once, not every step
        self._masks.apply()

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._masks is not None:
            self._masks.apply()

    @override
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        step = int(trainer.global_step)
        if self._phase != "masking" or self._resolved is None or step == self._last_update:
            return
        if not self._resolved.should_update(step):
            return
        self._update(step, trainer, pl_module, log_to_module=True)
        end_step = self._resolved.end_step
        if self.granularity == "channel" and self.make_permanent and step == end_step:
            self._remove_channels(trainer, pl_module)

    @override
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        step = int(trainer.global_step)
        if self._phase == "masking" and self._resolved is not None and step != self._last_update:
            if self._resolved.should_update(step):
                self._update(step, trainer, pl_module, log_to_module=False)

    @override
    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._remove_hooks()
        if self.make_permanent and self._phase == "masking" and self._masks is not None:
            if self.granularity == "channel":
                self._remove_channels(trainer, pl_module)
            else:
                self._masks.remove()
                self._masks = None
                self._phase = "permanent"
        if trainer.is_global_zero:
            after = self._stats(pl_module)
            log.info(
                "fitslim Pruning (%s, %s): weight sparsity %.2f → %.2f, parameters %s → %s%s",
                self.granularity, self.scope, self._before.get("sparsity", 0.0), after["sparsity"],
                f"{int(self._before.get('params', 0)):,}", f"{int(after['params']):,}",
                f", channels removed in {len(self._structure)} layers" if self._structure else "",
            )  # fmt: skip

    @override
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._remove_hooks()

    @override
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        if self._masks is not None:
            self._masks.pin(False)

    # -- pruning -------------------------------------------------------------------------------------

    def _update(self, step: int, trainer: Any, pl_module: Any, *, log_to_module: bool) -> None:
        """Recompute the masks for the schedule's target at ``step`` and zero the pruned weights."""
        if self._masks is None or self._resolved is None:
            return
        target = self._resolved.sparsity(step)
        module = self._masks.root
        if self.granularity == "channel" and self._plan is not None:
            self._keep = self._plan.keep(target, self.scope, self.importance, self.round_to)
            self._masks.set(self._plan.param_masks(self._keep))
        elif self.nm is not None:
            if target > 0:
                n, m = self.nm
                self._masks.set([n_of_m_mask(w, n, m, axis=1) for w in weights_numpy(module, self._masks.params)])
        else:
            weights = weights_numpy(module, self._masks.params)
            self._masks.set(magnitude_masks(weights, target, self.scope, self.importance))
        self._last_update = step
        self._target = target
        self._log_metrics(step, trainer, pl_module, log_to_module=log_to_module)

    def _log_metrics(self, step: int, trainer: Any, pl_module: Any, *, log_to_module: bool) -> None:
        if self._masks is None:
            return
        root, norm = self._masks.root, nn.modules.batchnorm._NormBase
        counts = {  # kernels only (as on the Keras side): a channel mask also covers BatchNorm's affine weights
            k: v
            for k, v in self._masks.counts().items()
            if k.endswith(".weight") and not isinstance(root.get_submodule(k[: -len(".weight")]), norm)
        }
        pruned = sum(p for p, _ in counts.values())
        total = sum(t for _, t in counts.values())
        metrics = {"pruning/sparsity": pruned / max(total, 1), "pruning/target": self._target}
        if self._keep is not None:
            kept = sum(int(k.sum()) for k in self._keep)
            metrics["pruning/channel_sparsity"] = 1 - kept / max(sum(k.size for k in self._keep), 1)
        for key, (p, t) in counts.items():
            metrics[f"pruning/sparsity/{key[: -len('.weight')]}"] = p / max(t, 1)
        if log_to_module:
            pl_module.log_dict(metrics, on_step=True, on_epoch=False, logger=False, batch_size=1)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)

    def _remove_channels(self, trainer: Any, pl_module: Any) -> None:
        """Cut the masked channels out (torch-pruning), then rebind the optimizers to the new tensors."""
        if self._plan is None or self._masks is None:
            return
        keep = self._keep or self._plan.keep_from_masks(self._masks.params, self._masks.numpy())
        module = self._plan.root_module
        old = {(n, k): p for n, sub in module.named_modules() for k, p in sub.named_parameters(recurse=False)}
        before = sum(p.numel() for p in module.parameters())
        self._masks.remove()
        self._masks = None
        self._structure, sliced = self._plan.remove(keep)
        swaps: dict[int, tuple[nn.Parameter, dict[int, list[int]]]] = {}
        for (layer, param), dims in sliced.items():
            new, previous = getattr(module.get_submodule(layer), param, None), old.get((layer, param))
            if isinstance(new, nn.Parameter) and previous is not None and new is not previous:
                swaps[id(previous)] = (new, dims)
        rebound = rebind_optimizers(trainer.optimizers, swaps)
        _rewrap_ddp(trainer)
        self._plan = None
        self._phase = "removed"
        log.info(
            "fitslim Pruning: removed %d of %d channels at step %d; parameters %s → %s; %d optimizer slots rebound",
            sum(int((~k).sum()) for k in keep), sum(k.size for k in keep), int(trainer.global_step),
            f"{before:,}", f"{sum(p.numel() for p in module.parameters()):,}", rebound,
        )  # fmt: skip

    # -- checkpointing -------------------------------------------------------------------------------

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "phase": self._phase,
            "last_update_step": self._last_update,
            "target": self._target,
            "structure": self._structure,
            "example_input": self._example,
            "granularity": self.granularity,
            "schedule": self.schedule.get_config(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._apply_counters(state_dict)
        if state_dict.get("structure") and not self._structure:
            raise RuntimeError(
                "Pruning: the checkpoint holds a channel-pruned model but its structure was not rebuilt before "
                "the weights loaded. HINT: load it with Pruning.restore(module, checkpoint_path)."
            )

    @staticmethod
    def restore(
        module: nn.Module,
        checkpoint: str | os.PathLike[str] | Mapping[str, Any],
        *,
        prefix: str = "",
        state_key: str | None = None,
        make_permanent: bool = False,
    ) -> nn.Module:
        """Load a checkpoint written during a pruned fit into a fresh module: structure first, then weights.

        Removed channels are cut from ``module`` (from the kept indices in the callback state), mask buffers
        found in the checkpoint are registered, then the weights load strictly.

        Args:
            module: a freshly built module of the trained architecture (e.g. ``DigitsClassifier(width=0.5)``).
            checkpoint: a Lightning checkpoint path, or the loaded dict. Only load files you trust (pickle).
            prefix: load only keys under this prefix, stripped (``"model."`` loads a LightningModule's
                checkpoint into its inner ``nn.Module``).
            state_key: which ``Pruning`` state to use when the checkpoint holds several.
            make_permanent: fold the masks into the weights and drop the mask buffers after loading.

        Returns:
            ``module``, restored in place.

        Raises:
            ValueError: several Pruning states and no ``state_key``, or a structure that does not fit.

        Example:
            >>> # module = Pruning.restore(DigitsClassifier(width=0.5), "checkpoints/last.ckpt")
        """
        ckpt = checkpoint if isinstance(checkpoint, Mapping) else torch.load(
            os.fspath(checkpoint), map_location="cpu", weights_only=False
        )  # fmt: skip
        states = {k: v for k, v in (ckpt.get("callbacks") or {}).items() if str(k).startswith("Pruning")}
        if state_key is not None:
            state = states.get(state_key)
        elif len(states) > 1:
            raise ValueError(
                f"Pruning.restore(state_key=...): the checkpoint holds {len(states)} Pruning states "
                f"({sorted(map(str, states))}). HINT: pass state_key=... naming one."
            )
        else:
            state = next(iter(states.values()), None)
        weights = ckpt.get("state_dict", ckpt)
        weights = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
        structure = dict((state or {}).get("structure") or {})
        if prefix:
            structure = {k[len(prefix) :]: v for k, v in structure.items() if k.startswith(prefix)}
        if structure:
            shrink(module, structure)
        registered = []
        for key, value in weights.items():
            layer, _, buffer = key.rpartition(".")
            if not buffer.endswith(MASK_SUFFIX) or value.dtype != torch.bool:
                continue
            try:
                sub = module.get_submodule(layer)
            except AttributeError:
                continue
            param = buffer[: -len(MASK_SUFFIX)]
            if isinstance(getattr(sub, param, None), torch.Tensor):
                sub.register_buffer(buffer, torch.ones_like(value), persistent=True)
                registered.append(MaskedParam(layer, param))
        module.load_state_dict(weights, strict=True)
        if make_permanent and registered:
            MaskSet(module, registered).remove()
        return module
