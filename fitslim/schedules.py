"""Sparsity schedules: pure functions from the global step to an absolute target sparsity.

A schedule never returns an increment: the target for a step depends only on the step, so a resumed
run, or every rank of a multi-process run, computes the same mask target. The formulas follow
``tensorflow_model_optimization.sparsity.keras`` (tfmot) to float32 exactness, so a Keras user moving
from ``tfmot.sparsity.keras.PolynomialDecay`` gets the same numbers.

Timing is given either as fractions of the whole fit (``start``/``end`` in [0, 1], turned into steps
by :meth:`SparsitySchedule.resolve` once the trainer knows its total optimizer steps) or as absolute
steps (``start_step``/``end_step``; ``end_step=-1`` means "never stop", as in tfmot).

Example:
    >>> schedule = PolynomialDecay(final_sparsity=0.5, start=0.0, end=0.5, frequency=10).resolve(100)
    >>> schedule.start_step, schedule.end_step
    (0, 50)
    >>> schedule(0), schedule(9), schedule(50), schedule(99)
    (0.0, 0.0, 0.5, 0.5)
    >>> round(schedule(25), 4)  # last update at step 20: 0.5 * (1 - (1 - 20 / 50) ** 3)
    0.392
"""

from __future__ import annotations

import abc
import inspect
import math
import numbers
from collections.abc import Mapping
from typing import Any, ClassVar, Self

import numpy as np

__all__ = [
    "ConstantSparsity",
    "Cubic",
    "PolynomialDecay",
    "SparsitySchedule",
    "make_schedule",
    "schedule_from_config",
]

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)

# Auto frequency: about 50 mask updates over a finite range; tfmot's default (100) for an endless one.
_AUTO_UPDATES = 50
_AUTO_ENDLESS_FREQUENCY = 100

# tfmot argument names accepted in configs, so a legacy tfmot config loads unchanged.
_TFMOT_ALIASES = {"begin_step": "start_step", "target_sparsity": "sparsity"}


# --------------------------------------------------------------------------------------------------
# Argument checks (three-part messages: which argument, what was received, what to do)
# --------------------------------------------------------------------------------------------------


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def _check_sparsity(name: str, value: object) -> float:
    if not _is_real(value):
        raise TypeError(
            f"{name} must be a number in [0, 1); got {value!r} ({type(value).__name__}). "
            "Pass a fraction of weights to prune, e.g. 0.5."
        )
    number = float(value)  # type: ignore[arg-type]
    if not 0.0 <= number < 1.0:
        raise ValueError(
            f"{name} must be in [0, 1); got {value!r}. Pass a fraction of weights to prune, e.g. 0.5."
        )
    if np.float32(number) >= _F1:
        # The schedule computes in float32 (as tfmot does); this value would become exactly 1.0 there.
        raise ValueError(
            f"{name} must be in [0, 1); got {value!r}, which is 1.0 in float32. "
            "Pass a fraction of weights to prune below 1 - 1e-7, e.g. 0.99."
        )
    return number


def _check_fraction(name: str, value: object) -> float | None:
    if value is None:
        return None
    if not _is_real(value):
        raise TypeError(
            f"{name} must be a fraction of the fit in [0, 1]; got {value!r} ({type(value).__name__}). "
            f"Pass e.g. {name}=0.5, or use {name}_step for an absolute step."
        )
    number = float(value)  # type: ignore[arg-type]
    if not 0.0 <= number <= 1.0:
        raise ValueError(
            f"{name} must be a fraction of the fit in [0, 1]; got {value!r}. "
            f"Pass e.g. {name}=0.5, or use {name}_step for an absolute step."
        )
    return number


def _check_step(name: str, value: object, *, allow_endless: bool) -> int | None:
    if value is None:
        return None
    if not _is_int(value):
        raise TypeError(
            f"{name} must be an int (an optimizer step); got {value!r} ({type(value).__name__}). "
            f"Pass e.g. {name}=1000, or use the fraction argument instead."
        )
    step = int(value)  # type: ignore[call-overload]
    if allow_endless and step == -1:
        return step
    if step < 0:
        if allow_endless:
            hint = "-1 (never stop) or a step >= 0"
        elif step == -1:
            hint = "a step >= 0 here (this schedule needs an end; -1 = never stop is for ConstantSparsity)"
        else:
            hint = "a step >= 0"
        raise ValueError(f"{name} must be {hint}; got {value!r}. Pass e.g. {name}=1000.")
    return step


def _check_frequency(value: object) -> int | None:
    if value is None:
        return None
    if not _is_int(value):
        raise TypeError(
            f"frequency must be an int >= 1 or None; got {value!r} ({type(value).__name__}). "
            "Pass the number of steps between mask updates, e.g. frequency=100, or None for auto."
        )
    frequency = int(value)  # type: ignore[call-overload]
    if frequency < 1:
        raise ValueError(
            f"frequency must be an int >= 1 or None; got {value!r}. "
            "Pass the number of steps between mask updates, e.g. frequency=100, or None for auto."
        )
    return frequency


def _check_power(value: object) -> float:
    if not _is_real(value):
        raise TypeError(
            f"power must be a positive number; got {value!r} ({type(value).__name__}). "
            "Pass e.g. power=3.0 (cubic, the tfmot default)."
        )
    power = float(value)  # type: ignore[arg-type]
    if not (math.isfinite(power) and power > 0.0):
        raise ValueError(f"power must be a positive number; got {value!r}. Pass e.g. power=3.0 (cubic).")
    return power


def _check_total_steps(value: object) -> int:
    if not _is_int(value):
        raise TypeError(
            f"total_steps must be an int >= 1; got {value!r} ({type(value).__name__}). "
            "Pass the fit's total optimizer steps, e.g. trainer.estimated_stepping_batches."
        )
    total = int(value)  # type: ignore[call-overload]
    if total < 1:
        raise ValueError(
            f"total_steps must be an int >= 1; got {value!r}. "
            "Pass the fit's total optimizer steps, e.g. trainer.estimated_stepping_batches."
        )
    return total


def _as_step(step: object) -> int:
    if not _is_int(step):
        raise TypeError(
            f"step must be an int (the global optimizer step); got {step!r} ({type(step).__name__}). "
            "Pass e.g. trainer.global_step or int(optimizer.iterations)."
        )
    return int(step)  # type: ignore[call-overload]


def _fmt(value: float | None) -> str:
    return "None" if value is None else repr(value)


# --------------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------------


class SparsitySchedule(abc.ABC):
    """Base class of sparsity schedules: an absolute target sparsity as a pure function of the step.

    Three views of a schedule, all pure functions of the global step:

    - :meth:`sparsity` is the raw formula value, identical to the second value tfmot's schedule returns.
    - :meth:`should_update` says whether the mask is recomputed at the step: tfmot's ``should_prune``
      every ``frequency`` steps in [start_step, end_step], with one deviation: it is also true at
      exactly ``end_step`` (when ``end_step >= 0``), so the final sparsity is always reached. tfmot
      never reaches it when ``end_step - begin_step`` is not a multiple of ``frequency``.
    - ``schedule(step)`` is the target in effect at the step, i.e. what the mask holds: 0.0 before the
      first update step, otherwise ``sparsity`` at the last update step at or before ``step``.

    Subclasses implement :meth:`_formula`, :meth:`get_config` and :attr:`final_sparsity`.

    Args:
        start: Fraction of the fit in [0, 1] at which pruning starts; exclusive with ``start_step``.
        end: Fraction of the fit in [0, 1] at which pruning ends; exclusive with ``end_step``.
        start_step: Absolute optimizer step at which pruning starts (>= 0). Default: step 0.
        end_step: Absolute optimizer step at which pruning ends (>= 0, or -1 = never stop where the
            subclass allows it).
        frequency: Steps between mask updates (>= 1), or None for auto: ``max(1, (end_step -
            start_step) // 50)`` once resolved, 100 for ``end_step=-1``.

    Raises:
        ValueError: A timing argument out of range, both a fraction and a step for the same end, or
            start after end.
        TypeError: A timing argument of the wrong type (bools are not steps).

    Example:
        >>> schedule = ConstantSparsity(0.5, start_step=10, frequency=5)
        >>> schedule(9), schedule(10), schedule.should_update(15), schedule.should_update(16)
        (0.0, 0.5, True, False)
    """

    #: Short name used by :func:`make_schedule` and recipes.
    kind: ClassVar[str] = ""
    #: Whether ``end_step=-1`` (never stop) is allowed.
    _ALLOW_ENDLESS: ClassVar[bool] = False
    #: Whether start must be strictly before end (the polynomial divides by end - start).
    _STRICT_ORDER: ClassVar[bool] = True

    def __init__(
        self,
        *,
        start: float | None = None,
        end: float | None = None,
        start_step: int | None = None,
        end_step: int | None = None,
        frequency: int | None = None,
    ) -> None:
        for fraction_name, step_name, fraction, step in (
            ("start", "start_step", start, start_step),
            ("end", "end_step", end, end_step),
        ):
            if fraction is not None and step is not None:
                raise ValueError(
                    f"{fraction_name} and {step_name} were both given ({fraction_name}={fraction!r}, "
                    f"{step_name}={step!r}). Pass either a fraction of the fit ({fraction_name}) or an "
                    f"absolute step ({step_name}), not both."
                )
        self._start = _check_fraction("start", start)
        self._end = _check_fraction("end", end)
        self._start_step = _check_step("start_step", start_step, allow_endless=False)
        self._end_step = _check_step("end_step", end_step, allow_endless=self._ALLOW_ENDLESS)
        self._frequency = _check_frequency(frequency)
        if self._start is None and self._start_step is None:
            self._start_step = 0
        if self._end is None and self._end_step is None:
            self._end_step, self._end = self._default_end()
        self._check_order(self._start, self._end, "start", "end", context="")
        self._check_order(self._start_step, self._end_step, "start_step", "end_step", context="")

    # -- timing -------------------------------------------------------------------------------------

    def _default_end(self) -> tuple[int | None, float | None]:
        """(end_step, end) used when neither is given: the whole fit by default."""
        return None, 1.0

    def _check_order(
        self, first: float | None, last: float | None, first_name: str, last_name: str, *, context: str
    ) -> None:
        if first is None or last is None or last == -1:
            return
        if self._STRICT_ORDER and not first < last:
            raise ValueError(
                f"{first_name} must be before {last_name} for {type(self).__name__}; got "
                f"{first_name}={first!r}, {last_name}={last!r}{context}. Pass a {last_name} after "
                f"{first_name} (the sparsity grows between them)."
            )
        if not first <= last:
            raise ValueError(
                f"{first_name} must be <= {last_name}; got {first_name}={first!r}, {last_name}={last!r}"
                f"{context}. Pass a {last_name} at or after {first_name}."
            )

    @property
    def is_resolved(self) -> bool:
        """True when both ends are absolute steps (no fraction of the fit left to resolve)."""
        return self._start is None and self._end is None

    @property
    def start(self) -> float | None:
        """Start as a fraction of the fit, or None when given as an absolute step."""
        return self._start

    @property
    def end(self) -> float | None:
        """End as a fraction of the fit, or None when given as an absolute step."""
        return self._end

    @property
    def start_step(self) -> int | None:
        """Absolute start step, or None while the start is an unresolved fraction."""
        return self._start_step

    @property
    def end_step(self) -> int | None:
        """Absolute end step (-1 = never stop), or None while the end is an unresolved fraction."""
        return self._end_step

    @property
    def frequency(self) -> int | None:
        """Steps between mask updates; the auto value once resolved; None if auto and unresolved."""
        if self._frequency is not None:
            return self._frequency
        if self._start_step is None or self._end_step is None:
            return None
        if self._end_step == -1:
            return _AUTO_ENDLESS_FREQUENCY
        return max(1, (self._end_step - self._start_step) // _AUTO_UPDATES)

    def resolve(self, total_steps: int) -> Self:
        """Return a copy with absolute steps, turning fractions into ``round(fraction * total_steps)``.

        Absolute steps are kept as they are, so resolving twice, or resolving a schedule given in
        steps, is harmless.

        Args:
            total_steps: Total optimizer steps of the whole fit (e.g. Lightning's
                ``trainer.estimated_stepping_batches``, or ``epochs * steps_per_epoch`` in Keras).

        Raises:
            TypeError: ``total_steps`` is not an int.
            ValueError: ``total_steps`` < 1, or the resolved start is not before the resolved end
                (too few steps for the requested fractions).

        Example:
            >>> PolynomialDecay(final_sparsity=0.8, start=0.1, end=0.7).resolve(200).end_step
            140
        """
        total = _check_total_steps(total_steps)
        start_step = self._start_step if self._start is None else round(self._start * total)
        end_step = self._end_step if self._end is None else round(self._end * total)
        self._check_order(
            start_step,
            end_step,
            "start_step",
            "end_step",
            context=f" after resolving start={_fmt(self._start)}, end={_fmt(self._end)} against "
            f"total_steps={total}",
        )
        config = self.get_config()
        config.update(start=None, end=None, start_step=start_step, end_step=end_step)
        return type(self).from_config(config)

    def _steps(self) -> tuple[int, int, int]:
        """(start_step, end_step, frequency) of a resolved schedule."""
        frequency = self.frequency
        if self._start_step is None or self._end_step is None or frequency is None:
            raise RuntimeError(
                f"{self!r} is given in fractions of the fit and has no absolute steps yet. "
                "Call .resolve(total_steps) first, e.g. schedule = schedule.resolve(1000)."
            )
        return self._start_step, self._end_step, frequency

    # -- evaluation ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def _formula(self, step: int, start_step: int, end_step: int) -> float:
        """The raw schedule value at ``step`` for resolved steps (float32-exact, as in tfmot)."""

    @property
    @abc.abstractmethod
    def final_sparsity(self) -> float:
        """The sparsity the schedule ends at."""

    def sparsity(self, step: int) -> float:
        """Return the raw formula value at ``step`` (tfmot's second return value, float32-exact).

        Args:
            step: Global optimizer step.

        Raises:
            RuntimeError: The schedule has unresolved fractions; call :meth:`resolve` first.
            TypeError: ``step`` is not an int.

        Example:
            >>> PolynomialDecay(final_sparsity=0.5, start_step=0, end_step=10).sparsity(10)
            0.5
        """
        start_step, end_step, _ = self._steps()
        return self._formula(_as_step(step), start_step, end_step)

    def should_update(self, step: int) -> bool:
        """Return whether the mask is recomputed at ``step``.

        Same as tfmot's ``_should_prune_in_step`` (``start_step <= step <= end_step`` or endless, and
        ``(step - start_step) % frequency == 0``), and also true at exactly ``end_step`` so the final
        sparsity is always reached.

        Args:
            step: Global optimizer step.

        Raises:
            RuntimeError: The schedule has unresolved fractions; call :meth:`resolve` first.
            TypeError: ``step`` is not an int.

        Example:
            >>> schedule = PolynomialDecay(final_sparsity=0.5, start_step=0, end_step=25, frequency=10)
            >>> [s for s in range(30) if schedule.should_update(s)]
            [0, 10, 20, 25]
        """
        start_step, end_step, frequency = self._steps()
        step = _as_step(step)
        if step < start_step or (end_step >= 0 and step > end_step):
            return False
        return (step - start_step) % frequency == 0 or step == end_step

    def last_update_step(self, step: int) -> int | None:
        """Return the last update step at or before ``step`` (O(1)), or None before the first one.

        Args:
            step: Global optimizer step.

        Raises:
            RuntimeError: The schedule has unresolved fractions; call :meth:`resolve` first.
            TypeError: ``step`` is not an int.

        Example:
            >>> ConstantSparsity(0.5, start_step=3, end_step=20, frequency=5).last_update_step(17)
            13
        """
        start_step, end_step, frequency = self._steps()
        step = _as_step(step)
        if step < start_step:
            return None
        if end_step >= 0 and step >= end_step:
            return end_step
        return start_step + (step - start_step) // frequency * frequency

    def __call__(self, step: int) -> float:
        """Return the target sparsity in effect at ``step``: what the mask holds after this step.

        Args:
            step: Global optimizer step.

        Raises:
            RuntimeError: The schedule has unresolved fractions; call :meth:`resolve` first.
            TypeError: ``step`` is not an int.

        Example:
            >>> ConstantSparsity(0.5, start_step=3)(2), ConstantSparsity(0.5, start_step=3)(3)
            (0.0, 0.5)
        """
        last = self.last_update_step(step)
        if last is None:
            return 0.0
        return self.sparsity(last)

    # -- serialization ------------------------------------------------------------------------------

    def _timing_config(self) -> dict[str, Any]:
        return {
            "start": self._start,
            "end": self._end,
            "start_step": self._start_step,
            "end_step": self._end_step,
            "frequency": self._frequency,
        }

    @abc.abstractmethod
    def get_config(self) -> dict[str, Any]:
        """Return a flat, JSON/YAML-friendly dict with ``class_name`` and the constructor arguments."""

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        """Build a schedule of this class from :meth:`get_config` output.

        Also accepts tfmot's nested form ``{"class_name": ..., "config": {...}}`` and its argument
        names ``begin_step`` / ``target_sparsity``.

        Args:
            config: Constructor arguments, optionally with ``class_name`` (or ``type``) naming this class.

        Raises:
            TypeError: ``config`` is not a mapping.
            ValueError: ``class_name`` names another schedule, or an unknown argument is present.

        Example:
            >>> schedule = Cubic(final_sparsity=0.5, start=0.2, end=0.8)
            >>> Cubic.from_config(schedule.get_config()) == schedule
            True
        """
        name, arguments = _split_config(config)
        if name is not None and name != cls.__name__ and _lookup(name) is not cls:
            raise ValueError(
                f"config names class {name!r}, not {cls.__name__}. Call schedule_from_config(config) "
                f"to dispatch on the name, or pass a {cls.__name__} config."
            )
        accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        unknown = sorted(set(arguments) - set(accepted))
        if unknown:
            raise ValueError(
                f"config for {cls.__name__} has unknown argument(s) {unknown}. "
                f"Pass only {accepted} (plus class_name)."
            )
        return cls(**arguments)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SparsitySchedule):
            return NotImplemented
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.get_config().items())))

    def __repr__(self) -> str:
        config = self.get_config()
        config.pop("class_name")
        shown = {k: v for k, v in config.items() if v is not None or k == "frequency"}
        arguments = ", ".join(f"{key}={value!r}" for key, value in shown.items())
        return f"{type(self).__name__}({arguments})"


# --------------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------------


class ConstantSparsity(SparsitySchedule):
    """Constant target sparsity, applied every ``frequency`` steps in [start, end] (tfmot semantics).

    Matches ``tfmot.sparsity.keras.ConstantSparsity(target_sparsity, begin_step, end_step=-1,
    frequency=100)``: by default pruning starts at step 0 and never stops, re-applying the mask
    every 100 steps (the auto frequency for an endless schedule).

    Args:
        sparsity: Target fraction of weights to prune, in [0, 1).
        start: Fraction of the fit at which pruning starts; exclusive with ``start_step``.
        end: Fraction of the fit at which pruning stops; exclusive with ``end_step``.
        start_step: Absolute start step (>= 0). Default 0 when ``start`` is not given either.
        end_step: Absolute stop step, or -1 (default) to keep pruning until the fit ends.
        frequency: Steps between mask updates (>= 1), or None for auto (100 when endless, else
            ``max(1, (end_step - start_step) // 50)``).

    Raises:
        ValueError: ``sparsity`` outside [0, 1), a timing argument out of range, both a fraction and a
            step for the same end, or start after end.
        TypeError: An argument of the wrong type.

    Example:
        >>> schedule = ConstantSparsity(0.75, start=0.5).resolve(40)
        >>> schedule(19), schedule(20), schedule.end_step, schedule.frequency
        (0.0, 0.75, -1, 100)
    """

    kind: ClassVar[str] = "constant"
    _ALLOW_ENDLESS: ClassVar[bool] = True
    _STRICT_ORDER: ClassVar[bool] = False

    def __init__(
        self,
        sparsity: float,
        *,
        start: float | None = None,
        end: float | None = None,
        start_step: int | None = None,
        end_step: int | None = None,
        frequency: int | None = None,
    ) -> None:
        self._target = _check_sparsity("sparsity", sparsity)
        super().__init__(start=start, end=end, start_step=start_step, end_step=end_step, frequency=frequency)

    def _default_end(self) -> tuple[int | None, float | None]:
        return -1, None

    @property
    def target_sparsity(self) -> float:
        """The constant target sparsity, as given."""
        return self._target

    @property
    def final_sparsity(self) -> float:
        """The constant target sparsity, as given."""
        return self._target

    def _formula(self, step: int, start_step: int, end_step: int) -> float:
        # tfmot returns tf.constant(target_sparsity, dtype=tf.float32).
        return float(np.float32(self._target))

    def get_config(self) -> dict[str, Any]:
        """Return a flat dict with ``class_name`` and the constructor arguments.

        Example:
            >>> ConstantSparsity(0.5).get_config()["class_name"]
            'ConstantSparsity'
        """
        return {"class_name": type(self).__name__, "sparsity": self._target, **self._timing_config()}


class PolynomialDecay(SparsitySchedule):
    """Sparsity growing polynomially from ``initial_sparsity`` to ``final_sparsity`` (tfmot semantics).

    ``sparsity(step) = (initial - final) * (1 - p) ** power + final`` with ``p = clip((step -
    start_step) / (end_step - start_step), 0, 1)``, computed in float32 exactly as
    ``tfmot.sparsity.keras.PolynomialDecay`` computes it eagerly, so the values are identical.

    Args:
        initial_sparsity: Sparsity at ``start``, in [0, 1). Default 0.0.
        final_sparsity: Sparsity reached at ``end`` and held after it, in [0, 1).
        start: Fraction of the fit at which pruning starts; exclusive with ``start_step``.
        end: Fraction of the fit at which the final sparsity is reached; exclusive with ``end_step``.
            Default 1.0 (the end of the fit) when ``end_step`` is not given either.
        start_step: Absolute start step (>= 0). Default 0 when ``start`` is not given either.
        end_step: Absolute end step, after the start (no -1: the decay needs an end).
        power: Exponent of the decay, > 0. Default 3.0 (tfmot's default, the cubic of Zhu & Gupta).
        frequency: Steps between mask updates (>= 1), or None for auto: ``max(1, (end_step -
            start_step) // 50)``.

    Raises:
        ValueError: A sparsity outside [0, 1), ``power`` <= 0, a timing argument out of range, both a
            fraction and a step for the same end, or start not before end.
        TypeError: An argument of the wrong type.

    Example:
        >>> schedule = PolynomialDecay(initial_sparsity=0.2, final_sparsity=0.8, start_step=0,
        ...                            end_step=100, power=1.0, frequency=10)
        >>> round(schedule(55), 6), schedule(100)
        (0.5, 0.800000011920929)
    """

    kind: ClassVar[str] = "polynomial"

    def __init__(
        self,
        *,
        initial_sparsity: float = 0.0,
        final_sparsity: float,
        start: float | None = None,
        end: float | None = None,
        start_step: int | None = None,
        end_step: int | None = None,
        power: float = 3.0,
        frequency: int | None = None,
    ) -> None:
        self._initial = _check_sparsity("initial_sparsity", initial_sparsity)
        self._final = _check_sparsity("final_sparsity", final_sparsity)
        self._power = _check_power(power)
        super().__init__(start=start, end=end, start_step=start_step, end_step=end_step, frequency=frequency)

    @property
    def initial_sparsity(self) -> float:
        """Sparsity at the start step, as given."""
        return self._initial

    @property
    def final_sparsity(self) -> float:
        """Sparsity at the end step, as given."""
        return self._final

    @property
    def power(self) -> float:
        """Exponent of the decay."""
        return self._power

    def _formula(self, step: int, start_step: int, end_step: int) -> float:
        # Mirror tfmot's eager ops one by one: cast(step - begin, float32) / float32(end - begin),
        # clip to [0, 1], float32(initial - final) * pow(1 - p, float32(power)) + float32(final).
        # Scalar float32 arithmetic: numpy's scalar power is libm powf, as TF's scalar Pow kernel;
        # numpy's vectorised array power is not, and differs in the last bit.
        p = np.float32(step - start_step) / np.float32(end_step - start_step)
        p = min(_F1, max(_F0, p))
        decay = (_F1 - p) ** np.float32(self._power)
        value = np.float32(self._initial - self._final) * decay + np.float32(self._final)
        return float(value)

    def get_config(self) -> dict[str, Any]:
        """Return a flat dict with ``class_name`` and the constructor arguments.

        Example:
            >>> PolynomialDecay(final_sparsity=0.5).get_config()["end"]
            1.0
        """
        return {
            "class_name": type(self).__name__,
            "initial_sparsity": self._initial,
            "final_sparsity": self._final,
            "power": self._power,
            **self._timing_config(),
        }


class Cubic(PolynomialDecay):
    """Gradual pruning of Zhu & Gupta (2017): PolynomialDecay with the power fixed at 3.

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3`` for ``t0 <= t <= t0 + n * dt``,
    where ``t0`` is ``start_step``, ``n * dt`` is ``end_step - start_step`` and ``dt`` is ``frequency``.

    Args:
        initial_sparsity: Sparsity at ``start``, in [0, 1). Default 0.0.
        final_sparsity: Sparsity reached at ``end`` and held after it, in [0, 1).
        start: Fraction of the fit at which pruning starts; exclusive with ``start_step``.
        end: Fraction of the fit at which the final sparsity is reached; exclusive with ``end_step``.
            Default 1.0 when ``end_step`` is not given either.
        start_step: Absolute start step (>= 0). Default 0 when ``start`` is not given either.
        end_step: Absolute end step, after the start.
        frequency: Steps between mask updates (>= 1), or None for auto: ``max(1, (end_step -
            start_step) // 50)``.

    Raises:
        ValueError: A sparsity outside [0, 1), a timing argument out of range, both a fraction and a
            step for the same end, or start not before end.
        TypeError: An argument of the wrong type.

    Example:
        >>> schedule = Cubic(final_sparsity=0.9, start=0.0, end=0.5).resolve(1000)
        >>> schedule.end_step, schedule.frequency, schedule(500), schedule(999)
        (500, 10, 0.8999999761581421, 0.8999999761581421)
    """

    kind: ClassVar[str] = "cubic"

    def __init__(
        self,
        *,
        initial_sparsity: float = 0.0,
        final_sparsity: float,
        start: float | None = None,
        end: float | None = None,
        start_step: int | None = None,
        end_step: int | None = None,
        frequency: int | None = None,
    ) -> None:
        super().__init__(
            initial_sparsity=initial_sparsity,
            final_sparsity=final_sparsity,
            start=start,
            end=end,
            start_step=start_step,
            end_step=end_step,
            power=3.0,
            frequency=frequency,
        )

    def get_config(self) -> dict[str, Any]:
        """Return a flat dict with ``class_name`` and the constructor arguments (no ``power``).

        Example:
            >>> "power" in Cubic(final_sparsity=0.5).get_config()
            False
        """
        config = super().get_config()
        del config["power"]
        return config


# --------------------------------------------------------------------------------------------------
# Factories
# --------------------------------------------------------------------------------------------------

_REGISTRY: dict[str, type[SparsitySchedule]] = {
    "constant": ConstantSparsity,
    "constantsparsity": ConstantSparsity,
    "polynomial": PolynomialDecay,
    "polynomialdecay": PolynomialDecay,
    "cubic": Cubic,
}
_NAMES = ("constant", "polynomial", "cubic")


def _lookup(name: object) -> type[SparsitySchedule]:
    if not isinstance(name, str):
        raise TypeError(
            f"schedule name must be a str; got {name!r} ({type(name).__name__}). Pass one of {list(_NAMES)}."
        )
    key = name.strip().lower().replace("_", "").replace("-", "")
    if key not in _REGISTRY:
        raise ValueError(
            f"schedule name must be one of {list(_NAMES)} (or a class name: ConstantSparsity, "
            f"PolynomialDecay, Cubic); got {name!r}. Pass e.g. 'polynomial'."
        )
    return _REGISTRY[key]


def _split_config(config: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(class name or None, constructor arguments) from a flat, or tfmot-nested, config."""
    if not isinstance(config, Mapping):
        raise TypeError(
            f"config must be a mapping; got {config!r} ({type(config).__name__}). "
            "Pass the dict returned by get_config(), e.g. {'type': 'polynomial', 'final_sparsity': 0.5}."
        )
    arguments = dict(config)
    name = arguments.pop("class_name", None)
    kind = arguments.pop("type", None)
    if name is not None and kind is not None and _lookup(name) is not _lookup(kind):
        raise ValueError(
            f"config has class_name={name!r} and type={kind!r}, naming different schedules. "
            "Pass only one of them."
        )
    name = name if name is not None else kind
    if set(arguments) == {"config"} and isinstance(arguments["config"], Mapping):
        arguments = dict(arguments["config"])  # tfmot's {"class_name": ..., "config": {...}}
    for alias, argument in _TFMOT_ALIASES.items():
        if alias in arguments:
            if argument in arguments:
                raise ValueError(
                    f"config has both {alias!r} (tfmot's name) and {argument!r}. Pass only {argument!r}."
                )
            arguments[argument] = arguments.pop(alias)
    return name, arguments


def schedule_from_config(config: Mapping[str, Any]) -> SparsitySchedule:
    """Build a schedule from a config, dispatching on its ``class_name`` or ``type`` key.

    Accepts :meth:`SparsitySchedule.get_config` output, recipe-style configs
    (``{"type": "polynomial", "final_sparsity": 0.5, "start": 0.0, "end": 0.6}``) and tfmot's
    ``{"class_name": "PolynomialDecay", "config": {...}}`` with tfmot's argument names.

    Args:
        config: Mapping with ``class_name`` or ``type`` ("constant", "polynomial", "cubic" or a class
            name) and the constructor arguments.

    Raises:
        TypeError: ``config`` is not a mapping, or the name is not a str.
        ValueError: No ``class_name``/``type`` key, an unknown name, or invalid arguments.

    Example:
        >>> schedule_from_config({"type": "cubic", "final_sparsity": 0.5, "end": 0.6})
        Cubic(initial_sparsity=0.0, final_sparsity=0.5, end=0.6, start_step=0, frequency=None)
    """
    name, _ = _split_config(config)
    if name is None:
        raise ValueError(
            f"config must name its schedule with a 'class_name' or 'type' key; got keys {sorted(config)}. "
            f"Add e.g. 'type': 'polynomial' (one of {list(_NAMES)})."
        )
    return _lookup(name).from_config(config)


def make_schedule(name: str, **kwargs: Any) -> SparsitySchedule:
    """Build a schedule by short name: "constant", "polynomial" or "cubic".

    ``sparsity`` is accepted for every kind as the final target (``final_sparsity`` for the
    polynomial and cubic schedules), so a callback can pass its own ``sparsity`` argument through.

    Args:
        name: "constant", "polynomial" or "cubic" (class names are accepted too).
        **kwargs: Constructor arguments of the chosen schedule.

    Raises:
        TypeError: ``name`` is not a str, or an argument of the wrong type.
        ValueError: An unknown name, both ``sparsity`` and ``final_sparsity``, or invalid arguments.

    Example:
        >>> make_schedule("polynomial", sparsity=0.5, start=0.0, end=0.6).resolve(100).end_step
        60
    """
    cls = _lookup(name)
    if issubclass(cls, PolynomialDecay) and "sparsity" in kwargs:
        if "final_sparsity" in kwargs:
            raise ValueError(
                f"sparsity and final_sparsity were both given ({kwargs['sparsity']!r}, "
                f"{kwargs['final_sparsity']!r}). Pass only one: they both mean the final target."
            )
        kwargs["final_sparsity"] = kwargs.pop("sparsity")
    return cls.from_config(kwargs)
