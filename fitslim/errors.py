"""One way to refuse a callback argument, for both plugin sets: which argument, what was received, what to do.

Every argument error of the callbacks reads ``Callback(argument=...): problem. HINT: hint.``; where the value
itself helps (a Keras QAT layer name) it stands in the call: ``Callback(argument='nope'): problem. HINT: hint.``

Example:
    >>> str(fail("Pruning", "sparsity", "got 1.5, outside [0, 1)", "pass the fraction to prune, e.g. 0.5"))
    'Pruning(sparsity=...): got 1.5, outside [0, 1). HINT: pass the fraction to prune, e.g. 0.5.'
    >>> err = fail_type("Export", "input_fn", "expected a callable; got 3", "pass a function")
    >>> isinstance(err, TypeError), isinstance(err, ValueError)
    (True, True)
    >>> str(fail("QuantizationAware", "include", "matches no layer", "check the name").showing("nope"))
    "QuantizationAware(include='nope'): matches no layer. HINT: check the name."
"""

from __future__ import annotations

from typing import Any

__all__ = ["ArgumentError", "ArgumentTypeError", "fail", "fail_type"]

_HIDDEN: Any = object()


class ArgumentError(ValueError):
    """A callback argument out of range or unknown; the message names the callback, the argument and the fix.

    Args:
        callback: the callback's class name, e.g. ``"Pruning"``.
        argument: the argument's name.
        problem: what was received and why it is refused (no final period).
        hint: what to do instead (no final period).
        value: the value, shown in the call when given.
    """

    def __init__(self, callback: str, argument: str, problem: str, hint: str, value: Any = _HIDDEN) -> None:
        self.callback, self.argument, self.problem, self.hint, self.value = callback, argument, problem, hint, value
        shown = "..." if value is _HIDDEN else repr(value)
        super().__init__(f"{callback}({argument}={shown}): {problem.rstrip('.')}. HINT: {hint.rstrip('.')}.")

    def __reduce__(self) -> tuple[Any, ...]:  # errors cross process boundaries (DDP spawn): rebuild from the parts
        return type(self), (self.callback, self.argument, self.problem, self.hint, *self._shown())

    def _shown(self) -> tuple[Any, ...]:
        return () if self.value is _HIDDEN else (self.value,)

    def showing(self, value: Any) -> ArgumentError:
        """The same error with ``value`` in the call instead of ``...`` (and of the same class)."""
        return type(self)(self.callback, self.argument, self.problem, self.hint, value)


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument of the wrong type: a ``TypeError``, and an :class:`ArgumentError` (so a ``ValueError``) too."""


def fail(callback: str, argument: str, problem: str, hint: str) -> ArgumentError:
    """The error for an argument value out of range or unknown (raise it).

    Args:
        callback: the callback's class name.
        argument: the argument's name.
        problem: what was received and why it is refused.
        hint: what to do instead.
    """
    return ArgumentError(callback, argument, problem, hint)


def fail_type(callback: str, argument: str, problem: str, hint: str) -> ArgumentTypeError:
    """The error for an argument of the wrong type (raise it); see :func:`fail`."""
    return ArgumentTypeError(callback, argument, problem, hint)
