"""The one place where ``keras_callbacks`` changes the user's model in place, and takes every change back.

A Keras callback cannot swap the model that ``fit`` holds, so QAT (layer ``call`` methods, range variables),
distillation (``compute_loss``, the adapters and loss trackers, the optimizer) and the pruning train-step hook
change it in place. They do it only through a :class:`Hooks` group: each change is recorded when it is made and
undone in reverse order by :meth:`Hooks.undo` (idempotent; also the ``with`` block's exit). Groups are registered
per model (weakly), so a fit that raised leaves nothing behind:

- an exception inside the train function (a train step, the loss, the data pipeline) undoes every group of the
  model at once: :func:`rebuild_train_function` wraps the function Keras calls, and every callback rebuilds
  through it;
- an exception elsewhere inside ``fit`` (another callback's hook) never reaches the callbacks (Keras 3's ``fit``
  has no ``try``/``finally`` around them): the next fit's callbacks undo the stale groups of their kind before
  installing their own, and :func:`remove` undoes everything now.

``kept`` groups (``QuantizationAware(keep_fake_quant=True)``, :func:`keras_callbacks.load_model`) outlive the fit on
request and are undone only by :func:`remove` or by the next ``QuantizationAware``.

What travels from one callback to another (the learned QuantSpec, the smaller model after channel removal) goes
through :func:`handoff`, a table keyed weakly by the model, never an attribute of the model.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "FitHandoff",
    "Hooks",
    "groups",
    "handoff",
    "installed",
    "rebuild_train_function",
    "remove",
    "reset_compiled",
    "swapped",
]

log = logging.getLogger(__name__)

_ABSENT = object()

#: id(model) -> its live groups, oldest first (a weakref.finalize drops the entry with the model)
_GROUPS: dict[int, list[Hooks]] = {}
_HANDOFF: dict[int, FitHandoff] = {}
#: every function a group installed (to tell fitslim's replacements from a user's own)
_OURS: weakref.WeakSet[Any] = weakref.WeakSet()


def installed(value: Any) -> bool:
    """Whether ``value`` (e.g. a layer's instance ``call``) was installed by a :class:`Hooks` group."""
    try:
        return value in _OURS
    except TypeError:  # not weak-referenceable: not ours
        return False


def _entry(table: dict[int, Any], model: Any, make: Callable[[], Any]) -> Any:
    key = id(model)
    if key not in table:
        table[key] = make()
        weakref.finalize(model, table.pop, key, None)
    return table[key]


class Hooks:
    """Changes made to objects of one model for one owner, undone together in reverse order.

    Args:
        model: the model the changes belong to (registered weakly, for :func:`remove` and the train-function guard).
        kind: what made them (``"quantization"``, ``"distillation"``, ``"train-step"``, ...), for :func:`groups`.
        kept: the changes are meant to outlive the fit (undone by :func:`remove` only).

    Example:
        >>> # with Hooks(model, "fake-quant view") as h: h.replace(layer, "call", fn); model.predict(x)
    """

    def __init__(self, model: Any | None, kind: str, kept: bool = False) -> None:
        self.kind, self.kept = kind, kept
        self._model: Callable[[], Any] = lambda: None
        self._undo: list[Callable[[], None]] = []
        if model is not None:
            self.attach(model)

    def attach(self, model: Any) -> None:
        """Register the group under ``model`` (for a group filled while the model was being built, by a load)."""
        self._model = weakref.ref(model)
        _entry(_GROUPS, model, list).append(self)

    def __len__(self) -> int:
        return len(self._undo)

    def __enter__(self) -> Hooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undo()

    def replace(self, obj: Any, name: str, value: Any = _ABSENT) -> None:
        """Put ``value`` in place of ``obj.<name>`` as an instance attribute (no value: remove the instance one).

        Bypasses Keras's attribute tracking (a function or a tensor is not state Keras should save). The old
        instance attribute, or its absence, comes back on :meth:`undo`.
        """
        had = name in obj.__dict__
        old = obj.__dict__.get(name)
        if value is _ABSENT:
            obj.__dict__.pop(name, None)
        else:
            object.__setattr__(obj, name, value)
            if callable(value):
                _OURS.add(value)

        def undo() -> None:
            if had:
                object.__setattr__(obj, name, old)
            else:
                obj.__dict__.pop(name, None)

        self._undo.append(undo)

    def track(self, model: Any, name: str, layer: Any) -> None:
        """Set a Keras-tracked sub-layer ``model.<name> = layer`` (its variables train with the model) until undo."""
        with _unlocked(model):
            setattr(model, name, layer)

        def undo() -> None:
            if getattr(model, name, None) is None:  # not in __dict__ on PyTorch: a registered sub-module there
                return
            with _unlocked(model):
                model._tracker.untrack(layer)
            delattr(model, name)

        self._undo.append(undo)

    def variable(self, layer: Any, name: str, **add_weight: Any) -> Any:
        """A new weight of ``layer`` (``layer.add_weight(name=name, ...)``) reachable as ``layer.<name>`` until undo."""
        with _unlocked(layer):
            var = layer.add_weight(name=name, **add_weight)
        object.__setattr__(layer, name, var)

        def undo() -> None:
            if layer.__dict__.get(name) is var:
                layer._untrack_variable(var)
                del layer.__dict__[name]

        self._undo.append(undo)
        return var

    def on_undo(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` at :meth:`undo`, in its place in the reverse order (e.g. give the user's optimizer back)."""
        self._undo.append(fn)

    def undo(self) -> None:
        """Undo every change, newest first; idempotent. Every step runs; a failed one is re-raised at the end."""
        steps, self._undo = self._undo, []
        model = self._model()
        if model is not None:
            live = _GROUPS.get(id(model), [])
            if self in live:
                live.remove(self)
        error: BaseException | None = None
        for step in reversed(steps):
            try:
                step()
            except Exception as err:  # keep undoing: a half-restored model is worse than one error
                log.warning("fitslim: undoing a hook failed: %s", err)
                error = error or err
        if error is not None:
            raise error


def groups(model: Any, kind: str | None = None, kept: bool | None = None) -> list[Hooks]:
    """The live groups of ``model`` (oldest first), optionally only those of one ``kind`` / ``kept`` flag."""
    return [
        g
        for g in list(_GROUPS.get(id(model), []))
        if (kind is None or g.kind == kind) and (kept is None or g.kept == kept)
    ]


def remove(model: Any, kept: bool = True) -> Any:
    """Undo every fitslim change on ``model`` (newest first); ``kept=False`` leaves the kept fake-quant in place.

    Use it after a ``fit`` that raised outside the train function, or to drop a kept fake-quant model.

    Returns:
        ``model`` itself, with no fitslim attribute and no replaced method.
    """
    for group in reversed(groups(model)):
        if kept or not group.kept:
            group.undo()
    reset_compiled(model)
    return model


def reset_compiled(model: Any) -> None:
    """Drop the model's cached train/test/predict functions, so the next ``fit``/``evaluate``/``predict`` retraces."""
    for name in ("train_function", "test_function", "predict_function"):
        if getattr(model, name, None) is not None:
            setattr(model, name, None)


def rebuild_train_function(model: Any) -> None:
    """``model.make_train_function(force=True)``, the result guarded: an exception inside it undoes every hook.

    Keras 3's ``fit`` calls the callbacks on no exception path; the train function is where the hooks run, so its
    exception path is where they are undone (all non-kept groups of the model; the cached functions are dropped).
    """
    model.make_train_function(force=True)
    inner = model.train_function
    if inner is None:
        return
    ref = weakref.ref(model)

    def train_function(*args: Any, **kwargs: Any) -> Any:
        try:
            return inner(*args, **kwargs)
        except BaseException:
            owner = ref()
            if owner is not None:
                log.warning("fitslim: the train step raised; every fitslim hook on %r is undone", owner.name)
                remove(owner, kept=False)
            raise

    model.train_function = train_function


@contextlib.contextmanager
def swapped(obj: Any, name: str, value: Any) -> Iterator[None]:
    """Within the block, ``obj.<name>`` is ``value`` (a tensor for one call, a class method for one load)."""
    old = obj.__dict__.get(name, _ABSENT)
    if isinstance(obj, type):
        setattr(obj, name, value)
    else:
        object.__setattr__(obj, name, value)  # bypass Keras tracking: not state of the layer
    try:
        yield
    finally:
        if old is not _ABSENT:
            (setattr if isinstance(obj, type) else object.__setattr__)(obj, name, old)
        elif isinstance(obj, type):
            delattr(obj, name)
        else:
            obj.__dict__.pop(name, None)


@contextlib.contextmanager
def _unlocked(layer: Any) -> Iterator[None]:
    """Keras locks a built layer's tracker; adding a weight or a sub-layer after ``fit`` started needs it open."""
    tracker: Any = getattr(layer, "_tracker", None)
    locked = bool(getattr(tracker, "locked", False))
    if locked:
        tracker.unlock()
    try:
        yield
    finally:
        if locked:
            tracker.lock()


class FitHandoff:
    """What one callback of a fit leaves for the next ones, kept beside the model, not on it.

    Attributes:
        pruned_model: ``Pruning``'s rebuild with fewer channels, after channel removal in this fit.
        quantized: ``QuantizationAware``'s result (``quantization.QATResult``) of this fit, held weakly: it holds the
            model, and the callback that owns it keeps it alive for the callbacks after it.
    """

    def __init__(self) -> None:
        self.pruned_model: Any = None
        self._quantized: Callable[[], Any] | None = None

    @property
    def quantized(self) -> Any:
        return self._quantized() if self._quantized is not None else None

    @quantized.setter
    def quantized(self, value: Any) -> None:
        self._quantized = weakref.ref(value) if value is not None else None


def handoff(model: Any) -> FitHandoff:
    """The hand-off record of ``model`` (created empty on first use; dropped with the model)."""
    record: FitHandoff = _entry(_HANDOFF, model, FitHandoff)
    return record
