"""Lightning ``Distillation``: logit and feature distillation inside the user's unchanged ``training_step``.

The callback wraps the module's ``training_step`` for the duration of ``fit`` (restored on every exit path).
Around each call it runs the teacher on the batch's input (eval mode, ``torch.no_grad``, the student's
device and dtype), captures the student's logits with a forward hook on the LightningModule and its
intermediate features with forward hooks on named submodules, and returns

``(1 - alpha) * task_loss + alpha * kd_term + feature_weight * sum(feature_losses)``

in place of the loss ``training_step`` returned, before Lightning runs backward. ``kd_term`` is
``T**2 * KL(softmax(t / T) || softmax(s / T))`` for ``loss="kl"`` (see :mod:`fitslim.distill`, which holds
the settings and the NumPy reference shared with the Keras side).

The teacher is kept on the callback, never on the student: it is not wrapped by DDP, not trained, and not
written into the student's checkpoint; the callback's own checkpoint state holds the teacher's identity,
the settings, and the learnable feature adapters (with their own optimizer parameter group), so resume
restores them.

Example:
    >>> import torch
    >>> from lightning_plugins.distillation import Distillation
    >>> from lightning_plugins.models import torch_model
    >>> teacher = torch_model("digits_cnn", width=4.0)
    >>> cb = Distillation(teacher, temperature=4.0, alpha=0.7, features={"model.transition.conv": "transition.conv"})
    >>> cb.settings.alpha
    0.7
    >>> # Trainer(callbacks=[cb]).fit(DigitsClassifier(width=0.5), DigitsDataModule())
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from fitslim.callback_spec import DistillationSpec
from fitslim.distill import adapter_kind, resolve_layer
from lightning_plugins._compat import pl

__all__ = ["Distillation", "kd_loss"]

log = logging.getLogger(__name__)

_INPUT_KEYS = ("x", "input", "image")
# Learning-rate schedulers keep some settings as one list entry per parameter group; the adapters'
# group copies the first group's entry so the schedule drives it too.
_PER_GROUP_SCHEDULER_LISTS = (
    "base_lrs",
    "_last_lr",
    "min_lrs",
    "max_lrs",
    "lr_lambdas",
    "base_momentums",
    "max_momentums",
)
_NOTHING: Any = object()


# --------------------------------------------------------------------------------------------------
# Losses (torch; the float64 reference is fitslim.distill.kd_loss_reference)
# --------------------------------------------------------------------------------------------------


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 4.0,
    loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "kl",
) -> torch.Tensor:
    """The distillation term: ``T**2 * KL(softmax(t/T) || softmax(s/T))``, the logits' MSE, or ``loss(s, t)``.

    The KL divergence is summed over the class axis (1) and averaged over the batch and any other axes;
    half-precision logits are upcast to float32 first.

    Args:
        student_logits: ``(N, C, ...)`` student logits (with a graph).
        teacher_logits: the teacher's logits, same shape (no graph needed).
        temperature: softmax temperature ``T`` (> 0).
        loss: ``"kl"``, ``"mse"``, or a callable ``(student_logits, teacher_logits) -> scalar``.

    Raises:
        ValueError: an unknown loss name.

    Example:
        >>> s, t = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
        >>> round(float(kd_loss(s, t, temperature=1.0)), 6)
        0.462117
    """
    if callable(loss):
        return loss(student_logits, teacher_logits)
    s, t = _at_least_fp32(student_logits), _at_least_fp32(teacher_logits)
    if loss == "mse":
        return F.mse_loss(s, t)
    if loss != "kl":
        raise ValueError(f"kd_loss(loss=...): unknown {loss!r}. HINT: use 'kl', 'mse' or a callable.")
    log_ps = F.log_softmax(s / temperature, dim=1)
    log_pt = F.log_softmax(t / temperature, dim=1)
    kl = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(1).mean()
    return kl * (temperature * temperature)


# --------------------------------------------------------------------------------------------------
# Batches, outputs, modules
# --------------------------------------------------------------------------------------------------


def _default_input(batch: Any) -> Any:
    """The model input of a batch: a tensor batch itself, the first element of a tuple/list, or x/input/image."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, Mapping):
        for key in _INPUT_KEYS:
            if key in batch:
                return batch[key]
        raise ValueError(
            f"Distillation(input_fn=None): a dict batch with keys {sorted(map(str, batch))} has none of "
            f"{list(_INPUT_KEYS)}, so the teacher's input is unknown. "
            "HINT: pass input_fn=lambda batch: batch['<your input key>']."
        )
    if isinstance(batch, tuple | list) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise ValueError(
        f"Distillation(input_fn=None): cannot read the model input from a batch of type {type(batch).__name__}; "
        "the default takes a tensor batch, the first element of a tuple/list of tensors, or "
        f"batch[{'|'.join(_INPUT_KEYS)}]. HINT: pass input_fn=lambda batch: <the teacher's input>."
    )


def _default_output(outputs: Any, who: str) -> torch.Tensor:
    """The logits in a model's outputs: a tensor, a ``.logits``/``["logits"]`` entry, or a tuple's first element."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    found = outputs.get("logits") if isinstance(outputs, Mapping) else getattr(outputs, "logits", None)
    if found is None and isinstance(outputs, tuple | list) and outputs:
        found = outputs[0]
    if isinstance(found, torch.Tensor):
        return found
    raise TypeError(
        f"Distillation(output_fn=None): cannot find the logits in the {who}'s output of type "
        f"{type(outputs).__name__}. HINT: pass output_fn=lambda outputs: <the logits tensor>."
    )


def _call_model(model: nn.Module, x: Any) -> Any:
    if isinstance(x, Mapping):
        return model(**x)
    if isinstance(x, tuple | list):
        return model(*x)
    return model(x)


def _first_tensor(output: Any) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _resolve_layer(root: nn.Module, name: str, who: str) -> str:
    return resolve_layer([n for n, _ in root.named_modules() if n], name, who)


def _make_adapter(kind: str, cin: int, cout: int, key: str) -> nn.Module:
    """A bias-free 1x1 conv / linear map, initialised from a seed derived from ``key`` alone.

    The same seed on every rank and in every run makes the adapters identical across DDP processes
    without a broadcast, and leaves the global RNG (dropout, shuffling) untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(key.encode()))
        if kind == "linear":
            return nn.Linear(cin, cout, bias=False)
        conv = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d, "conv3d": nn.Conv3d}[kind]
        return conv(cin, cout, 1, bias=False)


def _fingerprint(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _logs_due(trainer: Any) -> bool:
    """Whether the trainer writes step logs at this step (its ``log_every_n_steps``); True when unknown."""
    due = getattr(getattr(trainer, "_logger_connector", None), "should_update_logs", None)
    return True if due is None else bool(due)


def _name_of(fn: Any) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def _teacher_class(value: Any) -> type[nn.Module]:
    """``teacher_class`` as a class: itself, or imported from ``"package.module.Class"``."""
    if isinstance(value, str):
        module_name, _, attr = value.rpartition(".")
        try:
            value = getattr(importlib.import_module(module_name), attr) if module_name else None
        except (ImportError, AttributeError) as err:
            raise ValueError(
                f"Distillation(teacher_class={value!r}): cannot import it ({type(err).__name__}: {err}). HINT: give "
                "the full import path of the teacher's class, e.g. 'my_project.models.Teacher'."
            ) from None
        if value is None:
            raise ValueError(
                f"Distillation(teacher_class={module_name or attr!r}): not an import path. HINT: give the full "
                "import path of the teacher's class, e.g. 'my_project.models.Teacher'."
            )
    if not (isinstance(value, type) and issubclass(value, nn.Module)):
        raise TypeError(
            f"Distillation(teacher_class=...): expected a torch.nn.Module class or its import path; got {value!r}. "
            "HINT: pass the class of the teacher's checkpoint, e.g. teacher_class=MyLightningModule."
        )
    return value


class _CheckpointLoader:
    """``path -> teacher`` for ``teacher_class`` (picklable for ddp_spawn; named after the class in checkpoints)."""

    def __init__(self, cls: type[nn.Module]) -> None:
        self.cls = cls
        self.__module__ = cls.__module__
        self.__qualname__ = f"{cls.__qualname__}.load_from_checkpoint"

    def __call__(self, path: str) -> nn.Module:
        load = getattr(self.cls, "load_from_checkpoint", None)
        if callable(load):
            module: nn.Module = load(path, map_location="cpu")
            return module
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
            state = state["state_dict"]
        try:
            module = self.cls()
        except TypeError as err:
            raise TypeError(
                f"Distillation(teacher_class={self.cls.__qualname__}): a plain nn.Module class is built without "
                f"arguments before its state_dict loads, and this one needs some ({err}). HINT: pass "
                "loader=... that builds and loads it, or use a LightningModule that saves its hyper-parameters."
            ) from None
        module.load_state_dict(state)
        return module


class _DistilledStep:
    """Stands in for ``pl_module.training_step`` during fit (a picklable object, not a closure)."""

    def __init__(self, callback: Distillation, step: Callable[..., Any]) -> None:
        self.callback = callback
        self.step = step
        self.active = True
        # Lightning inspects training_step (is it overridden, which arguments it takes) through __wrapped__.
        self.__wrapped__ = step

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.active:
            return self.step(*args, **kwargs)
        return self.callback._distilled_step(self.step, args, kwargs)


# --------------------------------------------------------------------------------------------------
# The callback
# --------------------------------------------------------------------------------------------------


class Distillation(pl.Callback):  # type: ignore[name-defined]
    """Distil a teacher into the module being trained, without changing its ``training_step``.

    The loss ``training_step`` returns (a tensor, or the ``"loss"`` of a dict) becomes
    ``(1 - alpha) * task_loss + alpha * kd_term + feature_weight * sum(feature_losses)`` before backward;
    ``kd_term`` is ``T**2 * KL(softmax(teacher/T) || softmax(student/T))`` for ``loss="kl"``, the logits'
    mean squared error for ``"mse"``, or ``loss(student_logits, teacher_logits)``. The student's logits are
    the output of its first ``self(x)`` call in ``training_step`` (through ``output_fn``). Feature losses are
    the mean squared error between the student's layer output, mapped by a learnable bias-free 1x1 conv or
    linear adapter when the shapes differ, and the teacher's. Logged with ``pl_module.log``: ``task_loss``,
    ``kd_loss`` (the ``kd_term``), ``combined_loss`` (the loss backward sees), and with features ``feature_loss``
    (their sum) and ``feature_loss/<student layer>``, on the trainer's logging steps (``log_every_n_steps``), and
    their epoch means as ``<name>_epoch`` at each epoch end.

    The teacher runs on the batch as Lightning hands it to ``training_step`` (after device transfer and
    ``on_after_batch_transfer``, inside the precision context), just before ``training_step``; augmentation
    done inside ``training_step`` is not seen by the teacher (do it in ``on_after_batch_transfer``, or give
    ``input_fn``). It runs in eval mode under ``torch.no_grad`` on the student's device and dtype; its parameters
    get ``requires_grad=False`` and its mode and ``requires_grad`` flags are restored when training ends
    (its device and dtype are not). Adapters train with the student in their own parameter group of the
    (single) optimizer, copying the first group's hyper-parameters and learning-rate schedule; in DDP their
    gradients are averaged across ranks, so they stay identical. Manual optimization is not supported.

    Args:
        teacher: the teacher: an ``nn.Module`` (a LightningModule works), or a checkpoint path together
            with ``teacher_class`` or ``loader``.
        temperature: softmax temperature ``T`` (> 0).
        alpha: weight of the distillation term in [0, 1]; the task loss gets ``1 - alpha``.
        loss: ``"kl"``, ``"mse"``, or a callable ``(student_logits, teacher_logits) -> scalar tensor``.
        features: ``{student_layer: teacher_layer}`` module names for feature distillation. Student names are
            paths in the LightningModule (``"model.transition.conv"``); a unique suffix (``"transition.conv"``)
            also works.
        feature_weight: weight (>= 0) of the summed feature losses.
        input_fn: ``batch -> input`` for the teacher; default: a tensor batch, the first element of a
            tuple/list, or ``batch["x"|"input"|"image"]``. A tuple input is passed as ``*args``, a dict as
            ``**kwargs``.
        output_fn: ``outputs -> logits``, applied to both the student's and the teacher's outputs; default: a
            tensor, a ``logits`` entry/attribute, or the first element of a tuple.
        loader: ``path -> nn.Module`` for a checkpoint-path teacher, e.g. ``MyModule.load_from_checkpoint``;
            called in ``setup`` on every rank.
        teacher_class: for a checkpoint-path teacher, its class or the class's import path
            (``"my_project.models.Teacher"``, as a LightningCLI / YAML config gives it): a LightningModule is
            loaded with ``load_from_checkpoint(path, map_location="cpu")``, any other ``nn.Module`` is built
            without arguments and gets the checkpoint's ``state_dict``. Use it or ``loader``, not both.

    Raises:
        TypeError: a teacher that is neither an ``nn.Module`` nor a path, non-callable ``input_fn``,
            ``output_fn`` or ``loader``, a ``teacher_class`` that is not an ``nn.Module`` class, or a bad type in
            the settings.
        ValueError: temperature <= 0, alpha outside [0, 1], an unknown loss, a negative feature_weight, a
            path teacher without ``teacher_class`` or ``loader``, both of them, a ``teacher_class`` with a module
            teacher, or one that cannot be imported. During ``fit`` (in ``setup`` or at the first batch, before any
            optimizer step): an unknown feature layer, teacher and student logits of different shapes, a
            teacher that is part of the student, a batch the default ``input_fn`` cannot read.
        RuntimeError: manual optimization, or a ``training_step`` that never calls the module (``self(x)``).

    Example:
        >>> from lightning_plugins.models import torch_model
        >>> from lightning_plugins.distillation import Distillation
        >>> cb = Distillation(torch_model("digits_cnn", width=4.0), temperature=4.0, alpha=0.7)
        >>> cb.settings.to_dict()["loss"]
        'kl'
        >>> # Trainer(max_epochs=5, callbacks=[cb]).fit(DigitsClassifier(width=0.5), DigitsDataModule())
    """

    def __init__(
        self,
        teacher: nn.Module | str | os.PathLike[str],
        temperature: float = 1.0,
        alpha: float = 0.5,
        # callables first: a YAML config's import path ("torch.nn.functional.mse_loss") then becomes the function
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | str = "kl",
        features: Mapping[str, str] | None = None,
        feature_weight: float = 1.0,
        input_fn: Callable[[Any], Any] | None = None,
        output_fn: Callable[[Any], torch.Tensor] | None = None,
        loader: Callable[[str], Any] | None = None,
        teacher_class: type[nn.Module] | str | None = None,
    ) -> None:
        super().__init__()
        spec = DistillationSpec(temperature, alpha, loss, features, feature_weight, input_fn, output_fn, loader)
        self.settings = spec.settings
        if teacher_class is not None:
            if not isinstance(teacher, str | os.PathLike):
                raise ValueError(
                    f"Distillation(teacher_class={teacher_class!r}): the teacher is already a "
                    f"{type(teacher).__name__}, not a checkpoint path. HINT: give teacher_class only with "
                    "teacher='path/to/teacher.ckpt'."
                )
            if loader is not None:
                raise ValueError(
                    f"Distillation(teacher_class=..., loader=...): both given ({teacher_class!r}, {_name_of(loader)}). "
                    "HINT: keep one: teacher_class for a LightningModule checkpoint, loader for any other format."
                )
            loader = _CheckpointLoader(_teacher_class(teacher_class))
        if isinstance(teacher, str | os.PathLike):
            if loader is None:
                raise ValueError(
                    f"Distillation(teacher={os.fspath(teacher)!r}): a checkpoint path needs loader=... or "
                    "teacher_class=... to build the teacher. HINT: e.g. teacher_class=MyLightningModule (in YAML "
                    "teacher_class: my_project.models.MyLightningModule), or pass the module."
                )
        elif not isinstance(teacher, nn.Module):
            raise TypeError(
                f"Distillation(teacher=...): expected a torch.nn.Module or a checkpoint path; got "
                f"{type(teacher).__name__}. HINT: pass the trained teacher model (a LightningModule works)."
            )
        self.teacher: nn.Module | None = teacher if isinstance(teacher, nn.Module) else None
        self.teacher_path: str | None = None if isinstance(teacher, nn.Module) else os.fspath(teacher)
        self.loader = loader
        #: the class a checkpoint-path teacher is loaded with (``teacher_class``), or None
        self.teacher_class: type[nn.Module] | None = getattr(loader, "cls", None) if teacher_class else None
        self.input_fn = input_fn
        self.output_fn = output_fn
        #: Learnable feature adapters, ``{student layer (as given in features): module}``.
        self.adapters: dict[str, nn.Module] = {}
        self._adapter_specs: dict[str, tuple[str, int, int]] = {}
        self._reset_runtime()

    def _reset_runtime(self) -> None:
        self._trainer: Any = None
        self._module: Any = None
        self._step: _DistilledStep | None = None
        self._had_step_attr = False
        self._previous_step_attr: Any = None
        self._hooks: list[RemovableHandle] = []
        self._student_paths: dict[str, str] = {}
        self._student_layers: dict[str, nn.Module] = {}
        self._student_hooks: dict[str, RemovableHandle] = {}
        self._teacher_saved: tuple[bool, list[bool]] | None = None
        self._capturing = False
        self._logits: Any = _NOTHING
        self._student_features: dict[str, torch.Tensor] = {}
        self._teacher_features: dict[str, torch.Tensor] = {}
        self._fingerprint: str | None = None
        self._fit_started = False
        self._device: torch.device | None = None
        self._dtype: torch.dtype | None = None
        self._warned_no_optimizer = False
        self._metric_values: dict[str, list[torch.Tensor]] = {}
        self._metric_sizes: list[int] = []

    def __getstate__(self) -> dict[str, Any]:
        # ddp_spawn pickles the trainer's callbacks: send settings, teacher and adapters, not live hooks.
        state = dict(self.__dict__)
        for key in ("_trainer", "_module", "_step", "_hooks", "_student_layers", "_student_hooks"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._trainer, self._module, self._step = None, None, None
        self._hooks, self._student_layers, self._student_hooks = [], {}, {}

    # ---------------------------------------------------------------------------------- setup, teardown

    @override
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        self._restore()  # a previous fit that died without its teardown
        if not getattr(pl_module, "automatic_optimization", True):
            raise RuntimeError(
                f"Distillation: {type(pl_module).__name__} uses manual optimization (automatic_optimization=False), "
                "where training_step runs backward itself and the callback cannot replace the loss. "
                "HINT: use automatic optimization, or compute the distillation loss in your training_step with "
                "lightning_plugins.distillation.kd_loss."
            )
        others = [cb for cb in getattr(trainer, "callbacks", []) if isinstance(cb, Distillation) and cb is not self]
        if others:
            raise ValueError(
                f"Distillation: found {len(others) + 1} Distillation callbacks in the trainer; one is supported. "
                "HINT: distil from one teacher per fit (or an ensemble module as the teacher)."
            )
        teacher = self._load_teacher()
        shared = {id(p) for p in teacher.parameters()} & {id(p) for p in pl_module.parameters()}
        if any(m is teacher for m in pl_module.modules()) or shared:
            raise ValueError(
                f"Distillation(teacher=...): the teacher ({type(teacher).__name__}) is part of the student "
                f"{type(pl_module).__name__} ({len(shared)} shared parameters), so it would be trained, wrapped by "
                "DDP and saved in the student's checkpoint. HINT: keep the teacher off the LightningModule and "
                "pass it only to Distillation."
            )
        features = dict(self.settings.features or {})
        self._student_paths = {key: _resolve_layer(pl_module, key, "student") for key in features}
        teacher_paths = {key: _resolve_layer(teacher, value, "teacher") for key, value in features.items()}
        self._fingerprint = None if self.teacher_path is not None else _fingerprint(teacher)

        self._trainer, self._module = trainer, pl_module
        self._teacher_saved = (teacher.training, [p.requires_grad for p in teacher.parameters()])
        teacher.eval()
        teacher.requires_grad_(False)
        self._hooks.append(pl_module.register_forward_hook(self._logits_hook))
        for key, path in teacher_paths.items():
            self._hooks.append(teacher.get_submodule(path).register_forward_hook(self._teacher_hook(key)))
        self._refresh_student_hooks()
        self._had_step_attr = "training_step" in pl_module.__dict__
        self._previous_step_attr = pl_module.__dict__.get("training_step")
        self._step = _DistilledStep(self, pl_module.training_step)
        pl_module.training_step = self._step
        log.info(
            "Distillation: %s → %s, temperature %g, alpha %g, loss %s%s",
            type(teacher).__name__,
            type(pl_module).__name__,
            self.settings.temperature,
            self.settings.alpha,
            self.settings.loss_name,
            f", features {features}" if features else "",
        )

    @override
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._fit_started = True
        self._device = pl_module.device
        self._dtype = next((p.dtype for p in pl_module.parameters() if p.is_floating_point()), None)
        teacher = self._require_teacher()
        teacher.to(device=self._device, dtype=self._dtype)
        self._place_adapters()
        self._attach_adapters()  # adapters restored from a checkpoint join the optimizer before its state loads

    @override
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._keep_teacher_eval()
        self._metric_values, self._metric_sizes = {}, []

    @override
    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self._metric_sizes:
            sizes = torch.tensor(self._metric_sizes, dtype=torch.float64)
            weights = sizes / sizes.sum()
            for name, values in self._metric_values.items():
                mean = (torch.stack(values).cpu().double() * weights).sum().float().to(pl_module.device)
                # sync_dist: the epoch figure is the mean over every rank's batches, not rank zero's alone
                pl_module.log(f"{name}_epoch", mean, on_step=False, on_epoch=True, sync_dist=True)
        self._metric_values, self._metric_sizes = {}, []

    @override
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._keep_teacher_eval()

    @override
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if getattr(trainer, "world_size", 1) <= 1 or not self.adapters:
            return
        # The adapters live outside the DDP-wrapped module: average their gradients like DDP does.
        params = [p for a in self.adapters.values() for p in a.parameters() if p.grad is not None]
        if not params:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in params])  # type: ignore[union-attr]
        flat = trainer.strategy.reduce(flat, reduce_op="mean")
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p))  # type: ignore[union-attr]
            offset += n

    @override
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._restore()  # before on_fit_end hooks (e.g. Export) see the module

    @override
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self._restore()

    @override
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._restore()

    def _restore(self) -> None:
        """Undo everything ``setup`` did to the student and the teacher (idempotent)."""
        try:
            module, step = self._module, self._step
            if step is not None:
                step.active = False
                if module is not None and module.__dict__.get("training_step") is step:
                    if self._had_step_attr:
                        module.training_step = self._previous_step_attr
                    else:
                        del module.training_step
        finally:
            for handle in [*self._hooks, *self._student_hooks.values()]:
                handle.remove()
            self._hooks, self._student_hooks, self._student_layers = [], {}, {}
            if self._teacher_saved is not None and self.teacher is not None:
                training, flags = self._teacher_saved
                self.teacher.train(training)
                for p, flag in zip(self.teacher.parameters(), flags, strict=False):
                    p.requires_grad_(flag)
            self._teacher_saved = None
            self._step, self._module, self._capturing = None, None, False
            self._logits = _NOTHING
            self._student_features.clear()
            self._teacher_features.clear()
            self._fit_started = False

    # ---------------------------------------------------------------------------------- teacher, hooks

    def _load_teacher(self) -> nn.Module:
        if self.teacher is None:
            path = self.teacher_path
            loaded = self.loader(path) if self.loader is not None and path is not None else None
            if not isinstance(loaded, nn.Module):
                raise TypeError(
                    f"Distillation(loader=...): {_name_of(self.loader)}({path!r}) returned "
                    f"{type(loaded).__name__}, not a torch.nn.Module. HINT: the loader must return the teacher model."
                )
            self.teacher = loaded.eval()
        return self.teacher

    def _require_teacher(self) -> nn.Module:
        return self.teacher if self.teacher is not None else self._load_teacher()

    def _keep_teacher_eval(self) -> None:
        if self.teacher is not None and self.teacher.training:
            self.teacher.eval()

    def _logits_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self._capturing and self._logits is _NOTHING:
            self._logits = output

    def _student_hook(self, key: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self._capturing and key not in self._student_features:
                tensor = _first_tensor(output)
                if tensor is not None:
                    self._student_features[key] = tensor

        return hook

    def _teacher_hook(self, key: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if key not in self._teacher_features:
                tensor = _first_tensor(output)
                if tensor is not None:
                    self._teacher_features[key] = tensor

        return hook

    def _refresh_student_hooks(self) -> None:
        """Hook the student layers, again if another callback replaced one (e.g. wrapped it for fake-quant)."""
        module = self._module
        for key, path in self._student_paths.items():
            layer = module.get_submodule(path)
            if self._student_layers.get(key) is layer:
                continue
            old = self._student_hooks.pop(key, None)
            if old is not None:
                old.remove()
            self._student_hooks[key] = layer.register_forward_hook(self._student_hook(key))
            self._student_layers[key] = layer

    # ---------------------------------------------------------------------------------- the step

    def _distilled_step(self, step: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        teacher = self._require_teacher()
        self._keep_teacher_eval()
        if self._student_paths:
            self._refresh_student_hooks()
        batch = args[0] if args else kwargs.get("batch")
        x = (self.input_fn or _default_input)(batch)
        self._teacher_features.clear()
        self._student_features.clear()
        self._logits = _NOTHING
        try:
            with torch.no_grad():
                teacher_out = _call_model(teacher, x)
            self._capturing = True
            try:
                out = step(*args, **kwargs)
            finally:
                self._capturing = False
            if out is None:  # Lightning skips the step
                return None
            return self._combine(out, teacher_out)
        finally:
            self._logits = _NOTHING
            self._student_features.clear()
            self._teacher_features.clear()

    def _combine(self, out: Any, teacher_out: Any) -> Any:
        module, s = self._module, self.settings
        task = out.get("loss") if isinstance(out, Mapping) else out
        if not isinstance(task, torch.Tensor):
            raise TypeError(
                f"Distillation: training_step returned {type(out).__name__}; expected a loss tensor or a dict with "
                "a 'loss' tensor. HINT: return the task loss from training_step."
            )
        if self._logits is _NOTHING:
            raise RuntimeError(
                f"Distillation: {type(module).__name__}.training_step never called the module itself, so the "
                "student's logits were not seen (they are captured by a forward hook on the LightningModule). "
                "HINT: compute the logits with self(x) in training_step."
            )
        student_logits = self.output_fn(self._logits) if self.output_fn else _default_output(self._logits, "student")
        teacher_logits = self.output_fn(teacher_out) if self.output_fn else _default_output(teacher_out, "teacher")
        if student_logits.shape != teacher_logits.shape or student_logits.dim() < 2:
            raise ValueError(
                f"Distillation: the teacher's logits have shape {tuple(teacher_logits.shape)} and the student's "
                f"{tuple(student_logits.shape)}; they must be equal and (N, C, ...). HINT: use a teacher trained "
                "on the same classes, or an output_fn that returns matching logits."
            )
        with torch.set_grad_enabled(torch.is_grad_enabled() and s.alpha > 0.0):
            kd = kd_loss(student_logits, teacher_logits, s.temperature, s.loss)
        feature_losses = self._feature_losses()

        if s.alpha == 0.0:
            total = task  # exactly the user's loss: same tensor, same gradients
        elif s.alpha == 1.0:
            total = kd
        else:
            total = (1.0 - s.alpha) * task + s.alpha * kd
        metrics = {"task_loss": task, "kd_loss": kd}
        if feature_losses:
            values = list(feature_losses.values())
            feature_total = values[0] if len(values) == 1 else torch.stack(values).sum()
            if s.feature_weight > 0.0:
                total = total + s.feature_weight * feature_total
            metrics["feature_loss"] = feature_total
            metrics.update({f"feature_loss/{key}": value for key, value in feature_losses.items()})
        metrics["combined_loss"] = total
        self._record(metrics, int(student_logits.shape[0]))
        if isinstance(out, Mapping):
            return {**out, "loss": total}
        return total

    def _record(self, metrics: dict[str, torch.Tensor], batch_size: int) -> None:
        """Accumulate the epoch means; log step values only when the trainer writes logs.

        ``LightningModule.log`` costs a fraction of a millisecond per call, a noticeable share of a small
        model's step, so step values go through it only on the trainer's logging steps (``log_every_n_steps``,
        when its loggers receive them anyway) and epoch means once per epoch (``on_train_epoch_end``).
        """
        for name, value in metrics.items():
            self._metric_values.setdefault(name, []).append(value.detach())
        self._metric_sizes.append(batch_size)
        if _logs_due(self._trainer):
            for name, value in metrics.items():
                self._module.log(name, value.detach(), on_step=True, on_epoch=False, batch_size=batch_size)

    def _feature_losses(self) -> dict[str, torch.Tensor]:
        if not self._student_paths:
            return {}
        pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        features = self.settings.features or {}
        for key, path in self._student_paths.items():
            student, teacher = self._student_features.get(key), self._teacher_features.get(key)
            if student is None or teacher is None:
                who, name = ("student", path) if student is None else ("teacher", features[key])
                raise RuntimeError(
                    f"Distillation(features=...): the {who} layer {name!r} produced no tensor during the step "
                    "(it was not called, or returned no tensor). HINT: pick a layer on the forward path."
                )
            pairs[key] = (student, teacher)
        created = [key for key, (st, te) in pairs.items() if self._ensure_adapter(key, st, te)]
        if created:
            self._attach_adapters()
        losses = {}
        for key, (student, teacher) in pairs.items():
            adapter = self.adapters.get(key)
            mapped = adapter(student) if adapter is not None else student
            if mapped.shape != teacher.shape:
                raise ValueError(
                    f"Distillation(features=...): {key!r} gives {tuple(mapped.shape)} after its adapter but the "
                    f"teacher layer {features[key]!r} gives {tuple(teacher.shape)}. HINT: resume with the same "
                    "features and models as the checkpoint."
                )
            losses[key] = F.mse_loss(_at_least_fp32(mapped), _at_least_fp32(teacher))
        return losses

    # ---------------------------------------------------------------------------------- adapters

    def _ensure_adapter(self, key: str, student: torch.Tensor, teacher: torch.Tensor) -> bool:
        """Create the adapter for ``key`` on first use; True when one was created."""
        if key in self.adapters:
            return False
        kind = adapter_kind(tuple(student.shape), tuple(teacher.shape))
        if kind is None:
            return False
        if kind == "incompatible":
            raise ValueError(
                f"Distillation(features=...): student layer {key!r} gives {tuple(student.shape)} and teacher layer "
                f"{(self.settings.features or {})[key]!r} gives {tuple(teacher.shape)}; a 1x1 conv or linear adapter "
                "maps only the channel axis (1) or the last axis. HINT: pair layers with the same spatial size."
            )
        axis = -1 if kind == "linear" else 1
        cin, cout = int(student.shape[axis]), int(teacher.shape[axis])
        self.adapters[key] = _make_adapter(kind, cin, cout, key)
        self._adapter_specs[key] = (kind, cin, cout)
        self._place_adapters()
        log.info("Distillation: %s adapter for %r, %d → %d channels", kind, key, cin, cout)
        return True

    def _place_adapters(self) -> None:
        if self._device is None:
            return
        for adapter in self.adapters.values():
            adapter.to(device=self._device, dtype=self._dtype)

    def _attach_adapters(self) -> None:
        """Add the adapters' parameters missing from the optimizer as one new parameter group."""
        trainer = self._trainer
        optimizers = list(getattr(trainer, "optimizers", None) or [])
        if not self.adapters or trainer is None:
            return
        if not optimizers:
            if not self._warned_no_optimizer:
                log.warning("Distillation: the trainer has no optimizer; the feature adapters will not be trained")
                self._warned_no_optimizer = True
            return
        optimizer = optimizers[0]
        present = {id(p) for group in optimizer.param_groups for p in group["params"]}
        new = [p for a in self.adapters.values() for p in a.parameters() if id(p) not in present]
        if not new:
            return
        n_groups = len(optimizer.param_groups)
        group = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
        optimizer.add_param_group({**group, "params": new})
        for config in getattr(trainer, "lr_scheduler_configs", None) or []:
            scheduler = config.scheduler
            if getattr(scheduler, "optimizer", None) is not optimizer:
                continue
            for attr in _PER_GROUP_SCHEDULER_LISTS:
                values = getattr(scheduler, attr, None)
                if isinstance(values, list) and len(values) == n_groups and values:
                    values.append(values[0])

    # ---------------------------------------------------------------------------------- checkpoint

    def teacher_identity(self) -> dict[str, Any]:
        """What identifies the teacher in a checkpoint (never its weights): its path, or class and fingerprint."""
        if self.teacher_path is not None:
            return {"kind": "path", "path": self.teacher_path, "loader": _name_of(self.loader)}
        teacher = self._require_teacher()
        if self._fingerprint is None:
            self._fingerprint = _fingerprint(teacher)
        return {
            "kind": "module",
            "class": f"{type(teacher).__module__}.{type(teacher).__qualname__}",
            "parameters": int(sum(p.numel() for p in teacher.parameters())),
            "fingerprint": self._fingerprint,
        }

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "settings": self.settings.to_dict(),
            "teacher": self.teacher_identity(),
            "adapters": {
                key: {
                    "kind": kind,
                    "in": cin,
                    "out": cout,
                    "state": {k: v.detach().cpu().clone() for k, v in self.adapters[key].state_dict().items()},
                }
                for key, (kind, cin, cout) in self._adapter_specs.items()
            },
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        changed = self.settings.differences(state_dict.get("settings", {}))
        if changed:
            log.warning(
                "Distillation: settings differ from the checkpoint's, using the new ones: %s", "; ".join(changed)
            )
        saved, now = state_dict.get("teacher"), self.teacher_identity()
        if saved is not None and saved != now:
            log.warning("Distillation: the teacher differs from the checkpoint's: %s → %s", saved, now)
        adapters: dict[str, nn.Module] = {}
        specs: dict[str, tuple[str, int, int]] = {}
        for key, entry in state_dict.get("adapters", {}).items():
            kind, cin, cout = str(entry["kind"]), int(entry["in"]), int(entry["out"])
            adapter = _make_adapter(kind, cin, cout, key)
            adapter.load_state_dict(entry["state"])
            adapters[key], specs[key] = adapter, (kind, cin, cout)
        self.adapters, self._adapter_specs = adapters, specs
        self._place_adapters()
        if self._fit_started:  # strategies that restore after setup: the optimizer exists already
            self._attach_adapters()
