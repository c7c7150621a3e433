"""The callbacks' arguments, validation and defaults, once for both plugin sets (framework-free).

``lightning_plugins`` and ``keras_callbacks`` declare the same public constructors; each builds one of these frozen
specs from its arguments, so a value is refused with the same error on either side and the defaults are the ones
written here (the recipe and the tests compare the signatures with them). What needs the framework (which layer
types a selector may name, how a teacher is loaded, the export runtimes' options) stays with the plugin set or
with :class:`exporters.core.settings.ExportSettings`.

Example:
    >>> spec = PruningSpec(sparsity=0.5, granularity="channel", end=0.6)
    >>> spec.sparsity, spec.nm, type(spec.resolved_schedule).__name__
    (0.5, None, 'PolynomialDecay')
    >>> QuantizationAwareSpec(start=0.5).freeze_observers
    0.9
    >>> try:
    ...     PruningSpec(sparsity=1.5)
    ... except ValueError as err:
    ...     print(err)
    Pruning(sparsity=...): got 1.5, outside [0, 1). HINT: pass the fraction to prune, e.g. 0.5.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import InitVar, dataclass, field, fields
from typing import Any

from fitslim.distill import DistillationSettings
from fitslim.errors import fail, fail_type
from fitslim.recipe import EXPORT_PRECISIONS, EXPORT_TARGETS, PRECISIONS
from fitslim.schedules import SparsitySchedule, make_schedule
from fitslim.sparsity import GRANULARITIES, IMPORTANCES, SCOPES, parse_n_of_m

__all__ = [
    "ATTENTION_MODES",
    "NCNN_DEPTHWISE_MODES",
    "ONNX_WEIGHT_TYPES",
    "QAT_OBSERVERS",
    "SCHEDULE_NAMES",
    "DistillationSpec",
    "ExportSpec",
    "PruningArguments",
    "PruningSpec",
    "QuantizationAwareSpec",
    "Selectors",
    "call_arguments",
    "check_callables",
    "check_export_options",
    "defaults",
]

SCHEDULE_NAMES = ("polynomial", "constant", "cubic")
#: ``Pruning(attention=...)``: whole heads of attention modules, or their MLPs and convs only
ATTENTION_MODES = ("heads", "mlp")
#: ``QuantizationAware(observer=...)``: EMA of the batch absmax, running absmax, EMA of a batch percentile
QAT_OBSERVERS = ("ema", "minmax", "percentile")


def call_arguments(local_vars: Mapping[str, Any], drop: Sequence[str] = ()) -> dict[str, Any]:
    """A constructor's arguments from its ``locals()``: without ``self`` (and ``__class__``, which ``super()`` adds).

    Called first thing in ``__init__``, so the public signature stays written out (IDEs, ``LightningCLI``) while
    the arguments are handed on to a spec by keyword, once.

    Args:
        local_vars: ``locals()`` of the constructor, before any other local is bound.
        drop: arguments of one plugin set only, left out.
    """
    return {k: v for k, v in local_vars.items() if k not in ("self", "__class__", *drop)}


def defaults(spec: type[Any]) -> dict[str, Any]:
    """The public defaults of a spec class: ``{argument: default}`` (derived fields left out).

    Example:
        >>> defaults(QuantizationAwareSpec)["start"]
        0.6
    """
    return {f.name: f.default for f in fields(spec) if f.init}


def check_callables(callback: str, **functions: Any) -> None:
    """Refuse a given argument that is not callable (``None`` means "use the default").

    Raises:
        TypeError: naming the first argument that is neither None nor callable.
    """
    for name, fn in functions.items():
        if fn is not None and not callable(fn):
            raise fail_type(callback, name, f"expected a callable or None; got {fn!r}", "pass a function")


@dataclass(frozen=True)
class Selectors:
    """What an ``include``/``exclude`` entry may be besides a name pattern: a subclass of ``base``.

    Args:
        base: the framework's layer base class (``torch.nn.Module``, ``keras.layers.Layer``).
        what: how the error names the entries, e.g. ``"module-name patterns (str) or nn.Module types"``.
        example: a valid value for the hint, e.g. ``"['*.conv', nn.Linear]"``.
    """

    base: type = object
    what: str = "name patterns (str) or layer types"
    example: str = "['*conv']"

    def check(self, callback: str, argument: str, value: Any) -> list[str | type] | None:
        """``value`` as a list of patterns and types (one pattern or type alone is a list of one).

        Raises:
            TypeError: an entry that is neither a string nor a subclass of ``base``.
        """
        if value is None:
            return None
        items = [value] if isinstance(value, str | type) else list(value)
        for item in items:
            if not (isinstance(item, str) or (isinstance(item, type) and issubclass(item, self.base))):
                raise fail_type(
                    callback, argument, f"got {item!r}; expected {self.what}", f"e.g. {argument}={self.example}"
                )
        return items


def _set(obj: Any, **values: Any) -> None:
    for name, value in values.items():
        object.__setattr__(obj, name, value)


@dataclass(frozen=True)
class PruningSpec:
    """The validated arguments of ``Pruning`` (both plugin sets); see ``lightning_plugins.Pruning`` for each.

    After validation ``sparsity`` is a float, ``include``/``exclude`` lists (or None), ``resolved_schedule`` the
    :class:`fitslim.schedules.SparsitySchedule` the callback follows and ``nm`` the ``(n, m)`` of an N:M
    granularity (None otherwise).

    Args:
        selectors: what the plugin set takes besides patterns in ``include``/``exclude`` (not stored).

    Raises:
        ValueError: a sparsity outside [0, 1), ``end <= start``, an unknown granularity / scope / schedule /
            importance / attention, N:M with another sparsity, ``round_to`` without channel granularity.
        TypeError: an argument of the wrong type.
    """

    sparsity: float = 0.5
    granularity: str = "unstructured"
    scope: str = "global"
    schedule: Any = "polynomial"  # a name or a fitslim.schedules.SparsitySchedule
    start: float = 0.0
    end: float = 0.7
    frequency: int | None = None
    include: Any = None
    exclude: Any = None
    importance: str = "l1"
    make_permanent: bool = True
    start_step: int | None = None
    end_step: int | None = None
    example_input: Any = field(default=None, compare=False)
    round_to: int | None = None
    attention: str = "heads"
    resolved_schedule: Any = field(init=False, default=None)
    nm: tuple[int, int] | None = field(init=False, default=None)
    selectors: InitVar[Selectors | None] = None

    def __post_init__(self, selectors: Selectors | None) -> None:
        sparsity, granularity, round_to = self.sparsity, self.granularity, self.round_to
        if isinstance(sparsity, bool) or not isinstance(sparsity, int | float):
            raise fail_type("Pruning", "sparsity", f"got {sparsity!r}; expected a number", "e.g. sparsity=0.5")
        if not (math.isfinite(sparsity) and 0.0 <= sparsity < 1.0):
            raise fail(
                "Pruning", "sparsity", f"got {sparsity!r}, outside [0, 1)", "pass the fraction to prune, e.g. 0.5"
            )
        for name, value, choices in (
            ("granularity", granularity, GRANULARITIES),
            ("scope", self.scope, SCOPES),
            ("importance", self.importance, IMPORTANCES),
            ("attention", self.attention, ATTENTION_MODES),
        ):
            if value not in choices:
                raise fail("Pruning", name, f"unknown {value!r}", f"choose one of {list(choices)}")
        nm = parse_n_of_m(granularity) if ":" in granularity else None
        if nm is not None and not math.isclose(sparsity, 1 - nm[0] / nm[1]):
            exact = 1 - nm[0] / nm[1]
            raise fail(
                "Pruning",
                "sparsity",
                f"granularity={granularity!r} prunes exactly {exact}; got {sparsity!r}",
                f"pass sparsity={exact} (or leave the default)",
            )
        if round_to is not None:
            if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
                raise fail("Pruning", "round_to", f"got {round_to!r}", "pass a positive integer such as 8, or None")
            if granularity != "channel":
                raise fail(
                    "Pruning",
                    "round_to",
                    f"rounds kept channel counts, but granularity={granularity!r}",
                    "use granularity='channel', or leave round_to=None",
                )
        if not isinstance(self.make_permanent, bool):
            raise fail_type(
                "Pruning", "make_permanent", f"got {self.make_permanent!r}; expected True or False", "pass a bool"
            )
        schedule = self.schedule
        if isinstance(schedule, SparsitySchedule):
            resolved = schedule
        elif isinstance(schedule, str):
            if schedule not in SCHEDULE_NAMES:
                raise fail(
                    "Pruning",
                    "schedule",
                    f"unknown {schedule!r}",
                    f"choose one of {list(SCHEDULE_NAMES)} or a SparsitySchedule",
                )
            timing = {
                "start": None if self.start_step is not None else self.start,
                "end": None if self.end_step is not None else self.end,
                "start_step": self.start_step,
                "end_step": self.end_step,
            }
            if timing["start"] is not None and timing["end"] is not None and not timing["end"] > timing["start"]:
                raise fail(
                    "Pruning",
                    "end",
                    f"end={self.end!r} is not after start={self.start!r}",
                    "pass an end after the start",
                )
            try:
                resolved = make_schedule(schedule, sparsity=sparsity, frequency=self.frequency, **timing)
            except ValueError as err:
                raise ValueError(f"Pruning(schedule={schedule!r}, ...): {err}") from err
        else:
            raise fail_type(
                "Pruning",
                "schedule",
                f"got {type(schedule).__name__}; expected a name or a SparsitySchedule",
                f"one of {list(SCHEDULE_NAMES)}",
            )
        kinds = selectors or Selectors()
        _set(
            self,
            sparsity=float(sparsity),
            include=kinds.check("Pruning", "include", self.include),
            exclude=kinds.check("Pruning", "exclude", self.exclude),
            resolved_schedule=resolved,
            nm=nm,
        )

    def assign(self, callback: Any) -> None:
        """Set the callback's public attributes (the same names on both sides) from this spec."""
        callback.spec = self
        callback.schedule = self.resolved_schedule
        for name in ("nm", "sparsity", "granularity", "scope", "importance", "make_permanent", "round_to"):
            setattr(callback, name, getattr(self, name))
        for name in ("attention", "include", "exclude", "example_input"):
            setattr(callback, name, getattr(self, name))


class PruningArguments:
    """The public constructor of ``Pruning``, written once for both plugin sets.

    Each plugin set's ``Pruning`` inherits it before its framework's callback class, sets ``selectors`` (the layer
    types an ``include``/``exclude`` entry may name) and defines ``_reset()`` (its per-fit state). The arguments
    are validated by :class:`PruningSpec`; ``lightning_plugins.Pruning`` documents each.
    """

    selectors: Selectors = Selectors()

    def __init__(
        self,
        sparsity: float = 0.5,
        granularity: str = "unstructured",
        scope: str = "global",
        schedule: str | SparsitySchedule = "polynomial",
        start: float = 0.0,
        end: float = 0.7,
        frequency: int | None = None,
        # types first: a YAML config's "torch.nn.Conv2d" then becomes the class, a pattern stays a string
        include: Sequence[type | str] | None = None,
        exclude: Sequence[type | str] | None = None,
        importance: str = "l1",
        make_permanent: bool = True,
        start_step: int | None = None,
        end_step: int | None = None,
        example_input: Any = None,
        round_to: int | None = None,
        attention: str = "heads",
    ) -> None:
        arguments = call_arguments(locals())
        super().__init__()
        PruningSpec(**arguments, selectors=self.selectors).assign(self)
        self._reset()

    def _reset(self) -> None:
        """Clear the per-fit state (defined by each plugin set)."""
        raise NotImplementedError


def _fraction(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise fail(
            "QuantizationAware",
            name,
            f"got {value!r}, not a number",
            f"pass a fraction of the fit in [0, 1], e.g. {name}=0.6",
        )
    if not 0.0 <= float(value) <= 1.0:
        raise fail(
            "QuantizationAware",
            name,
            f"got {value!r}, outside [0, 1]",
            f"pass a fraction of the fit in [0, 1], e.g. {name}=0.6",
        )
    return float(value)


def _bits(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail("QuantizationAware", name, f"got {value!r}, not an integer", f"use {name}=8 for int8")
    if not 2 <= value <= 8:
        raise fail(
            "QuantizationAware",
            name,
            f"got {value!r}, outside 2..8",
            f"use {name}=8 for int8 (the exporters carry int8 only)",
        )
    return int(value)


@dataclass(frozen=True)
class QuantizationAwareSpec:
    """The validated arguments of ``QuantizationAware`` (both plugin sets; see ``lightning_plugins`` for each).

    ``include``/``exclude`` are kept as given: which entries are valid depends on the framework (module types on
    the torch side, name patterns only on Keras). ``momentum``, ``percentile``, ``calibration_steps`` and
    ``directory`` are arguments of the Lightning callback only; the Keras one keeps their defaults.

    Raises:
        ValueError: a timing outside [0, 1], ``freeze_observers < start``, bits outside 2..8, an unknown
            observer, a momentum outside (0, 1], a percentile outside (0, 100], non-positive calibration steps.
        TypeError: a per_channel that is not a bool (also a ValueError, as the Keras callback always raised).
    """

    start: float = 0.6
    freeze_observers: float = 0.9
    freeze_bn: float = 0.8
    weight_bits: int = 8
    activation_bits: int = 8
    per_channel: bool = True
    include: Any = None
    exclude: Any = None
    observer: str = "ema"
    momentum: float = 0.01
    percentile: float = 99.99
    calibration_steps: int = 8
    directory: str | os.PathLike[str] | None = None

    def __post_init__(self) -> None:
        start = _fraction("start", self.start)
        freeze_observers = _fraction("freeze_observers", self.freeze_observers)
        freeze_bn = _fraction("freeze_bn", self.freeze_bn)
        if freeze_observers < start:
            raise fail(
                "QuantizationAware",
                "freeze_observers",
                f"is before start={self.start!r} (got {self.freeze_observers!r}), so no range would be observed",
                "observers must see batches after start: pass freeze_observers >= start, e.g. 0.9",
            )
        weight_bits = _bits("weight_bits", self.weight_bits)
        activation_bits = _bits("activation_bits", self.activation_bits)
        if not isinstance(self.per_channel, bool):
            raise fail_type(
                "QuantizationAware",
                "per_channel",
                f"got {self.per_channel!r}; expected True or False",
                "use per_channel=True (ncnn/TensorRT style)",
            )
        if self.observer not in QAT_OBSERVERS:
            raise fail(
                "QuantizationAware",
                "observer",
                f"unknown {self.observer!r}",
                f"use observer='ema' (or one of {list(QAT_OBSERVERS)})",
            )
        momentum, percentile, steps = self.momentum, self.percentile, self.calibration_steps
        if isinstance(momentum, bool) or not (isinstance(momentum, int | float) and 0.0 < float(momentum) <= 1.0):
            raise fail("QuantizationAware", "momentum", f"got {momentum!r}, outside (0, 1]", "pass e.g. momentum=0.01")
        if isinstance(percentile, bool) or not (
            isinstance(percentile, int | float) and 0.0 < float(percentile) <= 100.0
        ):
            raise fail(
                "QuantizationAware", "percentile", f"got {percentile!r}, outside (0, 100]", "pass e.g. percentile=99.99"
            )
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise fail("QuantizationAware", "calibration_steps", f"got {steps!r}", "pass a positive number of batches")
        _set(
            self,
            start=start,
            freeze_observers=freeze_observers,
            freeze_bn=freeze_bn,
            weight_bits=weight_bits,
            activation_bits=activation_bits,
            momentum=float(momentum),
            percentile=float(percentile),
        )

    def assign(self, callback: Any, names: Sequence[str] | None = None) -> None:
        """Set ``names`` (default: every argument) on the callback as public attributes, and ``callback.spec``."""
        callback.spec = self
        for name in defaults(type(self)) if names is None else names:
            setattr(callback, name, getattr(self, name))


@dataclass(frozen=True)
class DistillationSpec:
    """The validated arguments of ``Distillation`` both plugin sets share (the teacher is the framework's).

    Raises:
        TypeError: a non-callable ``input_fn``, ``output_fn`` or ``loader``; a bad type in the settings.
        ValueError: a setting out of range (see :class:`fitslim.distill.DistillationSettings`).
    """

    temperature: float = 1.0
    alpha: float = 0.5
    loss: str | Callable[..., Any] = "kl"
    features: Mapping[str, str] | None = None
    feature_weight: float = 1.0
    input_fn: Callable[[Any], Any] | None = None
    output_fn: Callable[[Any], Any] | None = None
    loader: Callable[[str], Any] | None = None

    def __post_init__(self) -> None:
        settings = DistillationSettings(self.temperature, self.alpha, self.loss, self.features, self.feature_weight)
        check_callables("Distillation", input_fn=self.input_fn, output_fn=self.output_fn, loader=self.loader)
        object.__setattr__(self, "_settings", settings)

    @property
    def settings(self) -> DistillationSettings:
        """The loss settings (``callback.settings``)."""
        settings: DistillationSettings = self.__dict__["_settings"]
        return settings


@dataclass
class ExportSpec:
    """The arguments of ``Export`` both plugin sets share, with their defaults.

    They are validated where the export options are known: :class:`exporters.core.settings.ExportSettings` extends this
    class (so it is not frozen) and checks every field; ``ExportSettings.from_spec`` builds it by keyword.
    """

    targets: Sequence[str] = ("onnx",)
    directory: str | os.PathLike[str] = "exports"
    precision: str = "auto"
    example_input: Any = None
    calibration: Any = None
    calibration_batches: int = 8
    quant_spec: Any = None  # a fitslim.QuantSpec, or the path of a quant_spec.json
    verify: bool = True
    threads: int = 2
    input_fn: Callable[[Any], Any] | None = None
    ncnn_depthwise: str = "int8"
    onnx_weights: str = "auto"
    verify_data: Any = None


#: ``ncnn_depthwise``: depthwise convolutions of the ncnn int8 model int8 (default) or kept fp32
NCNN_DEPTHWISE_MODES = ("int8", "float")
#: ``onnx_weights``: how the ``onnx`` int8 artifact stores its weights
ONNX_WEIGHT_TYPES = ("auto", "int8", "uint8")

_OPTION_WHY = {
    "ncnn_depthwise": "'float' keeps depthwise convolutions fp32 in the ncnn int8 model, faster on x86",
    "onnx_weights": "how the onnx int8 artifact stores its weights: 'uint8' for x86 CPUs without VNNI, 'int8' for "
    "ARM and VNNI CPUs, 'auto' for the exporting CPU",
}


def check_export_options(
    targets: str | Sequence[str],
    precision: str,
    ncnn_depthwise: str = "int8",
    onnx_weights: str = "auto",
    callback: str | None = None,
) -> list[str]:
    """The one check of the export options every entry point takes (``Export`` on both sides, ``export()``).

    Args:
        targets: any of the export targets (a single name is one target).
        precision: ``fp32``, ``fp16``, ``int8``, and for a callback also ``auto``.
        ncnn_depthwise: one of :data:`NCNN_DEPTHWISE_MODES`.
        onnx_weights: one of :data:`ONNX_WEIGHT_TYPES`.
        callback: the callback's class name, so the error names ``Export(precision=...)``; None for ``export()``,
            whose errors name the argument alone.

    Returns:
        The targets as a list, each once, in their order.

    Raises:
        ValueError: an unknown or empty target, or an unknown value, naming the argument and the choices.
    """

    def unknown(argument: str, value: Any, choices: Sequence[str], many: bool = False) -> ValueError:
        pick = f"choose {'any' if many else 'one'} of {list(choices)}"
        why = _OPTION_WHY.get(argument)
        if callback is None:
            return ValueError(f"{argument}: unknown {value!r}; {pick}" + (f" ({why})." if why else "."))
        return fail(callback, argument, f"unknown {value!r}", pick + (f" ({why})" if why else ""))

    names = [targets] if isinstance(targets, str) else list(targets)
    bad = [t for t in names if t not in EXPORT_TARGETS]
    if bad or not names:
        raise unknown("targets", bad or names, EXPORT_TARGETS, many=True)
    precisions = PRECISIONS if callback is None else EXPORT_PRECISIONS
    if precision not in precisions:
        raise unknown("precision", precision, precisions)
    if ncnn_depthwise not in NCNN_DEPTHWISE_MODES:
        raise unknown("ncnn_depthwise", ncnn_depthwise, NCNN_DEPTHWISE_MODES)
    if onnx_weights not in ONNX_WEIGHT_TYPES:
        raise unknown("onnx_weights", onnx_weights, ONNX_WEIGHT_TYPES)
    return list(dict.fromkeys(names))
