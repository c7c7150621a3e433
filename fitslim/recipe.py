"""The recipe: one YAML (or dict) describing pruning, QAT, distillation and export for either framework.

Every key is validated strictly: an unknown key names itself and the allowed keys; a value out of range
names its key path (``pruning.schedule.end``), the value and the range. The keys are the argument names
of the callbacks, identical on the Lightning and Keras sides.

Example:
    >>> r = Recipe.from_yaml('''
    ... pruning: {sparsity: 0.5, granularity: channel, end: 0.6}
    ... quantization: {start: 0.6}
    ... export: {targets: [onnx, ncnn]}
    ... ''')
    >>> r.pruning["sparsity"], r.quantization["freeze_observers"], r.distillation
    (0.5, 0.9, None)
    >>> Recipe.from_yaml(r.to_yaml()) == r
    True
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "EXPORT_PRECISIONS",
    "EXPORT_TARGETS",
    "PRECISIONS",
    "RECIPE_VERSION",
    "Recipe",
    "RecipeError",
    "SECTIONS",
    "build_callbacks",
    "recipe_builder",
]

RECIPE_VERSION = 1
EXPORT_TARGETS = ("onnx", "ncnn", "tflite", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
#: What ``Export(precision=...)`` and the recipe take: ``"auto"`` is int8 when a QuantSpec is present
#: (QuantizationAware ran, or one was given), else fp32.
EXPORT_PRECISIONS = ("auto", *PRECISIONS)
SCHEDULES = ("constant", "polynomial", "cubic")


class RecipeError(ValueError):
    """A recipe key is unknown, missing its fix, or out of range; the message starts with the key path."""


@dataclass(frozen=True)
class _Field:
    kind: str  # float | int | bool | str | choice | str_list | choice_list | str_map | schedule
    default: Any = None
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] = ()
    nullable: bool = False
    hint: str = ""

    def range_text(self) -> str:
        left = "(" if self.lo_open else "["
        right = ")" if self.hi_open else "]"
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        return f"{left}{lo}, {hi}{right}"


_SCHEDULE_FIELDS: dict[str, _Field] = {
    "type": _Field("choice", "polynomial", choices=SCHEDULES),
    "initial_sparsity": _Field("float", 0.0, lo=0.0, hi=1.0, hi_open=True),
    "power": _Field("float", 3.0, lo=0.0, lo_open=True, hint="the polynomial exponent; 3 is cubic"),
    "start": _Field("float", None, nullable=True, lo=0.0, hi=1.0, hint="a fraction of the fit"),
    "end": _Field("float", None, nullable=True, lo=0.0, hi=1.0, hint="a fraction of the fit"),
    "start_step": _Field("int", None, lo=0, nullable=True),
    "end_step": _Field("int", None, lo=-1, nullable=True, hint="-1 means never stop"),
    "frequency": _Field("int", None, lo=1, nullable=True, hint="steps between mask updates"),
}

_FIELDS: dict[str, dict[str, _Field]] = {
    "pruning": {
        "sparsity": _Field("float", 0.5, lo=0.0, hi=1.0, hi_open=True, hint="the fraction of weights to remove"),
        "granularity": _Field("choice", "unstructured", choices=("unstructured", "channel", "2:4")),
        "scope": _Field("choice", "global", choices=("global", "layer")),
        "schedule": _Field("schedule", "polynomial", choices=SCHEDULES),
        "start": _Field("float", 0.0, lo=0.0, hi=1.0, hint="a fraction of the fit"),
        "end": _Field("float", 0.7, lo=0.0, hi=1.0, hint="a fraction of the fit"),
        "start_step": _Field("int", None, lo=0, nullable=True),
        "end_step": _Field("int", None, lo=-1, nullable=True),
        "frequency": _Field("int", None, lo=1, nullable=True, hint="steps between mask updates"),
        "include": _Field("str_list", None, nullable=True, hint="module-name patterns"),
        "exclude": _Field("str_list", None, nullable=True, hint="module-name patterns"),
        "importance": _Field("choice", "l1", choices=("l1", "l2")),
        "make_permanent": _Field("bool", True),
        "round_to": _Field("int", None, lo=1, nullable=True, hint="channel granularity: keep multiples of it, e.g. 8"),
        "attention": _Field("choice", "heads", choices=("heads", "mlp")),
    },
    "quantization": {
        "start": _Field("float", 0.6, lo=0.0, hi=1.0, hint="a fraction of the fit"),
        "freeze_observers": _Field("float", 0.9, lo=0.0, hi=1.0, hint="a fraction of the fit, >= start"),
        "freeze_bn": _Field("float", 0.8, lo=0.0, hi=1.0, hint="a fraction of the fit, >= start"),
        "weight_bits": _Field("int", 8, lo=2, hi=8),
        "activation_bits": _Field("int", 8, lo=2, hi=8),
        "per_channel": _Field("bool", True),
        "include": _Field("str_list", None, nullable=True, hint="module-name patterns"),
        "exclude": _Field("str_list", None, nullable=True, hint="module-name patterns"),
        "observer": _Field("choice", "ema", choices=("ema", "minmax", "percentile")),
    },
    "distillation": {
        "teacher": _Field("str", None, nullable=True, hint="a checkpoint path, or give the teacher in code"),
        "temperature": _Field("float", 1.0, lo=0.0, lo_open=True),
        "alpha": _Field("float", 0.5, lo=0.0, hi=1.0),
        "loss": _Field("choice", "kl", choices=("kl", "mse")),
        "features": _Field("str_map", None, nullable=True, hint="{student_layer: teacher_layer}"),
        "feature_weight": _Field("float", 1.0, lo=0.0),
    },
    "export": {
        "targets": _Field("choice_list", ["onnx"], choices=EXPORT_TARGETS),
        "precision": _Field("choice", "auto", choices=EXPORT_PRECISIONS),
        "directory": _Field("str", "exports"),
        "verify": _Field("bool", True),
    },
}

#: The recipe's sections, in order.
SECTIONS: tuple[str, ...] = tuple(_FIELDS)
_TOP_KEYS = ("version", *SECTIONS)


def _err(path: str, msg: str) -> RecipeError:
    return RecipeError(f"{path}: {msg}")


def _check_number(path: str, value: Any, f: _Field) -> float | int:
    is_int = f.kind == "int"
    ok_type = isinstance(value, int) if is_int else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        want = "an integer" if is_int else "a number"
        raise _err(path, f"expected {want} in {f.range_text()}; got {value!r}. Fix: set {path} to {want}.")
    v: float | int = int(value) if is_int else float(value)
    below = f.lo is not None and (v <= f.lo if f.lo_open else v < f.lo)
    above = f.hi is not None and (v >= f.hi if f.hi_open else v > f.hi)
    if below or above:
        hint = f" ({f.hint})" if f.hint else ""
        raise _err(path, f"{v!r} is out of range {f.range_text()}{hint}. Fix: choose a value in {f.range_text()}.")
    return v


def _check_value(path: str, value: Any, f: _Field) -> Any:
    if value is None:
        if f.nullable:
            return None
        raise _err(path, f"must not be empty. Fix: remove the key to use the default {f.default!r}, or set a value.")
    if f.kind in ("float", "int"):
        return _check_number(path, value, f)
    if f.kind == "bool":
        if not isinstance(value, bool):
            raise _err(path, f"expected true or false; got {value!r}.")
        return value
    if f.kind == "str":
        if not isinstance(value, str) or not value:
            raise _err(path, f"expected a non-empty string; got {value!r}.")
        return value
    if f.kind == "choice":
        if value not in f.choices:
            raise _err(path, f"{value!r} is not one of {list(f.choices)}. Fix: use one of them.")
        return value
    if f.kind in ("str_list", "choice_list"):
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise _err(path, f"expected a list; got {value!r}. Fix: write it as [a, b].")
        out = []
        for i, item in enumerate(value):
            sub = f"{path}[{i}]"
            if f.kind == "choice_list":
                out.append(_check_value(sub, item, _Field("choice", choices=f.choices)))
            else:
                out.append(_check_value(sub, item, _Field("str")))
        if f.kind == "choice_list" and not out:
            raise _err(path, f"must name at least one of {list(f.choices)}.")
        if len(set(map(str, out))) != len(out):
            raise _err(path, f"has duplicates: {out}. Fix: list each entry once.")
        return out
    if f.kind == "str_map":
        if not isinstance(value, Mapping):
            raise _err(path, f"expected a mapping {f.hint}; got {value!r}.")
        return {
            _check_value(f"{path} key", k, _Field("str")): _check_value(f"{path}.{k}", v, _Field("str"))
            for k, v in value.items()
        }
    if f.kind == "schedule":
        if isinstance(value, str):
            return _check_value(path, value, _Field("choice", choices=f.choices))
        if isinstance(value, Mapping):
            return _check_section(path, value, _SCHEDULE_FIELDS, fill_defaults=False)
        raise _err(path, f"expected one of {list(f.choices)} or a mapping with keys {list(_SCHEDULE_FIELDS)}.")
    raise AssertionError(f"unhandled field kind {f.kind}")  # pragma: no cover - programming error


def _check_section(path: str, data: Any, fields: Mapping[str, _Field], fill_defaults: bool = True) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise _err(path, f"expected a mapping of settings; got {data!r}. Allowed keys: {list(fields)}.")
    for key in data:
        if key not in fields:
            raise _err(f"{path}.{key}", f"unknown key. Allowed keys in {path}: {list(fields)}.")
    out: dict[str, Any] = {}
    for key, f in fields.items():
        if key in data:
            out[key] = _check_value(f"{path}.{key}", data[key], f)
        elif fill_defaults:
            out[key] = copy.deepcopy(f.default)
    return out


def _check_timing(path: str, sec: Mapping[str, Any], explicit: Mapping[str, Any]) -> None:
    """Fractions and steps are alternatives; the window must be non-empty."""
    for frac, step in (("start", "start_step"), ("end", "end_step")):
        if explicit.get(frac) is not None and explicit.get(step) is not None:
            raise _err(
                f"{path}.{step}",
                f"given together with {path}.{frac}. Fix: give the fraction or the step, not both.",
            )
    start, end = sec.get("start"), sec.get("end")
    if (
        explicit.get("start_step") is None
        and explicit.get("end_step") is None
        and start is not None
        and end is not None
    ):
        if end <= start:
            raise _err(f"{path}.end", f"{end} is not after start {start}. Fix: end must be > start, e.g. 0.7.")
    s_step, e_step = explicit.get("start_step"), explicit.get("end_step")
    if s_step is not None and e_step is not None and e_step != -1 and e_step <= s_step:
        raise _err(f"{path}.end_step", f"{e_step} is not after start_step {s_step}. Fix: end_step > start_step.")
    schedule = sec.get("schedule")
    kind = schedule.get("type") if isinstance(schedule, Mapping) else sec.get("type", schedule)
    if e_step == -1 and kind not in (None, "constant"):
        raise _err(
            f"{path}.end_step",
            f"-1 (never stop) needs the constant schedule; the {kind} schedule needs an end. Fix: e.g. end_step: 1000.",
        )


def _validate(data: Any) -> dict[str, Any]:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise RecipeError(f"recipe: expected a mapping with sections {list(SECTIONS)}; got {type(data).__name__}.")
    for key in data:
        if key not in _TOP_KEYS:
            raise _err(str(key), f"unknown section. Allowed top-level keys: {list(_TOP_KEYS)}.")
    version = data.get("version", RECIPE_VERSION)
    if version != RECIPE_VERSION:
        raise _err("version", f"{version!r} is not supported; this fitslim reads recipe version {RECIPE_VERSION}.")
    out: dict[str, Any] = {"version": RECIPE_VERSION}
    for name in SECTIONS:
        if name not in data:
            out[name] = None
            continue
        raw = data[name] if data[name] is not None else {}
        sec = _check_section(name, raw, _FIELDS[name])
        if name == "pruning":
            explicit = {k: raw.get(k) for k in ("start", "end", "start_step", "end_step")}
            if isinstance(sec["schedule"], dict):
                inner = sec["schedule"]
                for k in ("start", "end", "start_step", "end_step", "frequency"):
                    if inner.get(k) is not None and raw.get(k) is not None:
                        raise _err(
                            f"pruning.schedule.{k}",
                            f"also given as pruning.{k}. Fix: set the timing in one place.",
                        )
                _check_timing("pruning.schedule", {**sec, **{k: v for k, v in inner.items() if v is not None}}, inner)
            _check_timing("pruning", sec, explicit)
            if sec["round_to"] is not None and sec["granularity"] != "channel":
                raise _err(
                    "pruning.round_to",
                    f"rounds kept channel counts, but granularity is {sec['granularity']}. "
                    "Fix: granularity: channel, or drop round_to.",
                )
        if name == "quantization":
            for key in ("freeze_observers", "freeze_bn"):
                if sec[key] < sec["start"]:
                    raise _err(
                        f"quantization.{key}",
                        f"{sec[key]} is before quantization.start {sec['start']}. Fix: set it >= start.",
                    )
        out[name] = sec
    return out


class Recipe:
    """A validated recipe; sections not given are ``None``, given sections have every default filled in.

    Args:
        data: a mapping with any of the sections ``pruning``, ``quantization``, ``distillation``,
            ``export`` (and optionally ``version``).

    Raises:
        RecipeError: an unknown key or an invalid value, the message starting with its key path.
    """

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        self._data = _validate(data)

    @property
    def pruning(self) -> dict[str, Any] | None:
        """Settings for ``Pruning``, or None."""
        return self._section("pruning")

    @property
    def quantization(self) -> dict[str, Any] | None:
        """Settings for ``QuantizationAware``, or None."""
        return self._section("quantization")

    @property
    def distillation(self) -> dict[str, Any] | None:
        """Settings for ``Distillation``, or None."""
        return self._section("distillation")

    @property
    def export(self) -> dict[str, Any] | None:
        """Settings for ``Export``, or None."""
        return self._section("export")

    def _section(self, name: str) -> dict[str, Any] | None:
        sec = self._data[name]
        return None if sec is None else copy.deepcopy(sec)

    def callback_kwargs(self, section: str) -> dict[str, Any] | None:
        """Keyword arguments for the callback of ``section``, identical for Lightning and Keras; None if absent.

        ``pruning``: a schedule given as a mapping becomes a :class:`fitslim.schedules.SparsitySchedule` (its
        timing replaces the section's); absolute steps replace the fraction defaults. ``distillation``: the
        ``teacher`` entry is left out (the caller resolves it).

        Raises:
            ValueError: an unknown section name.
        """
        if section not in SECTIONS:
            raise ValueError(f"section must be one of {list(SECTIONS)}; got {section!r}.")
        kw = self._section(section)
        if kw is None:
            return None
        if section == "pruning":
            sched = kw["schedule"]
            if isinstance(sched, dict):
                from fitslim.schedules import make_schedule

                timing = {k: kw.pop(k) for k in ("start", "end", "start_step", "end_step", "frequency")}
                if timing["start_step"] is not None:
                    timing["start"] = None
                if timing["end_step"] is not None:
                    timing["end"] = None
                inner = {k: v for k, v in sched.items() if v is not None}
                timing.update({k: inner.pop(k) for k in list(inner) if k in timing})
                name = inner.pop("type", "polynomial")
                if name == "constant":
                    inner.pop("initial_sparsity", None)
                    inner.pop("power", None)
                elif name == "cubic":
                    inner.pop("power", None)
                args = {k: v for k, v in {**timing, **inner}.items() if v is not None}
                kw["schedule"] = make_schedule(name, sparsity=kw["sparsity"], **args)
            else:
                for frac, step in (("start", "start_step"), ("end", "end_step")):
                    if kw.get(step) is not None:
                        kw.pop(frac)
        elif section == "distillation":
            kw.pop("teacher")
        return kw

    def to_dict(self) -> dict[str, Any]:
        """The normalised recipe (given sections only, defaults filled in)."""
        return {k: copy.deepcopy(v) for k, v in self._data.items() if v is not None}

    def to_yaml(self) -> str:
        """YAML text that :meth:`from_yaml` reads back to an equal recipe."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """Validate a dict."""
        return cls(data)

    @classmethod
    def from_yaml(cls, source: str | os.PathLike[str]) -> Recipe:
        """Read a recipe from a YAML file path or from YAML text.

        Raises:
            RecipeError: unparseable YAML, or an invalid recipe.
        """
        text: str
        if isinstance(source, os.PathLike) or (
            isinstance(source, str) and "\n" not in source and source.endswith((".yaml", ".yml"))
        ):
            path = Path(source)
            if not path.is_file():
                raise RecipeError(f"recipe: file {str(path)!r} does not exist. Fix: check the path.")
            text = path.read_text(encoding="utf-8")
        else:
            text = str(source)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise RecipeError(f"recipe: not valid YAML: {err}") from err
        return cls(data)

    @classmethod
    def load(cls, source: str | os.PathLike[str] | Mapping[str, Any] | Recipe) -> Recipe:
        """A recipe from a path, YAML text, a dict, or a Recipe (returned as is)."""
        if isinstance(source, Recipe):
            return source
        if isinstance(source, Mapping):
            return cls(source)
        return cls.from_yaml(source)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Recipe) and self._data == other._data

    def __hash__(self) -> int:  # recipes are mutable-free views, but dict contents are not hashable
        return hash(yaml.safe_dump(self._data, sort_keys=True))

    def __repr__(self) -> str:
        given = [k for k in SECTIONS if self._data[k] is not None]
        return f"Recipe(sections={given})"


def build_callbacks(
    recipe: str | os.PathLike[str] | Mapping[str, Any] | Recipe,
    factories: Mapping[str, Callable[..., Any]],
    teacher: Any = None,
    loader: Callable[[str], Any] | None = None,
) -> list[Any]:
    """The callbacks a recipe describes, in the order pruning, quantization, distillation, export.

    Both plugin sets call this with their own classes, so one recipe means the same on either side.

    Args:
        recipe: a YAML path, YAML text, a dict, or a :class:`Recipe`.
        factories: ``{section: callback class}`` for every section.
        teacher: the teacher for ``distillation``; else the recipe's ``teacher`` path with ``loader``.
        loader: ``path -> teacher`` for a recipe that names a teacher checkpoint.

    Raises:
        RecipeError: an invalid recipe, or a distillation section without a teacher.
    """
    r = Recipe.load(recipe)
    callbacks: list[Any] = []
    for section in SECTIONS:
        kw = r.callback_kwargs(section)
        if kw is None:
            continue
        if section == "distillation":
            path: str | None = (r.distillation or {}).get("teacher")
            if teacher is None and path is None:
                raise RecipeError(
                    "distillation.teacher: the recipe distils but names no teacher. Fix: pass teacher=model, "
                    "or set distillation.teacher to a checkpoint path and pass loader=."
                )
            if teacher is None:
                callbacks.append(factories[section](path, loader=loader, **kw))
            else:
                callbacks.append(factories[section](teacher, **kw))
        else:
            callbacks.append(factories[section](**kw))
    return callbacks


def recipe_builder(
    pruning: Callable[..., Any],
    quantization: Callable[..., Any],
    distillation: Callable[..., Any],
    export: Callable[..., Any],
) -> Callable[..., list[Any]]:
    """The ``from_recipe`` of a plugin set: :func:`build_callbacks` with that plugin set's callback classes.

    Args:
        pruning: the ``Pruning`` class.
        quantization: the ``QuantizationAware`` class.
        distillation: the ``Distillation`` class.
        export: the ``Export`` class.
    """
    factories = {"pruning": pruning, "quantization": quantization, "distillation": distillation, "export": export}
    package = getattr(pruning, "__module__", "").split(".")[0]

    def from_recipe(
        recipe: str | os.PathLike[str] | Mapping[str, Any] | Recipe,
        teacher: Any = None,
        loader: Callable[[str], Any] | None = None,
    ) -> list[Any]:
        return build_callbacks(recipe, factories, teacher, loader)

    from_recipe.__doc__ = f"""Build the {package} callbacks a recipe describes, in the order pruning, quantization,
    distillation, export.

    Args:
        recipe: a YAML path, YAML text, a dict, or a :class:`fitslim.Recipe`.
        teacher: the teacher for ``distillation``; else the recipe's ``teacher`` path is loaded with ``loader``.
        loader: ``path -> teacher`` for a recipe that names a teacher checkpoint.

    Raises:
        fitslim.RecipeError: an invalid recipe (the message starts with the key path), or a distillation
            section without a teacher.
    """
    from_recipe.__module__ = f"{package}.recipe"
    from_recipe.__qualname__ = "from_recipe"
    return from_recipe
