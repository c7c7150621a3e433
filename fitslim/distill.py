"""Knowledge distillation settings and the NumPy reference of the distillation loss (framework-free).

Both plugin sets (``lightning_plugins.Distillation`` and ``keras_callbacks.Distillation``) validate their
arguments with :class:`DistillationSettings` and compute the same loss:

``loss = (1 - alpha) * task_loss + alpha * kd_term + feature_weight * sum(feature_losses)``

where ``kd_term`` is, for ``loss="kl"``, ``T**2 * KL(softmax(t / T) || softmax(s / T))`` (Hinton et al.'s
soft-target loss: the teacher's softened distribution is the target; summed over the class axis 1,
averaged over the batch and any other axes; the ``T**2`` factor keeps the gradient scale independent of
``T``), and for ``loss="mse"`` the mean squared error between the raw logits (``T**2 * mse(s/T, t/T)``,
which is the same number). :func:`kd_loss_reference` and :func:`combined_loss_reference` are the float64
references the framework implementations are tested against.

Example:
    >>> s = DistillationSettings(temperature=2.0, alpha=0.5)
    >>> s.temperature, s.alpha, s.loss, s.features
    (2.0, 0.5, 'kl', {})
    >>> import numpy as np
    >>> student, teacher = np.array([[2.0, 0.0, -1.0]]), np.array([[2.0, 0.0, -1.0]])
    >>> float(kd_loss_reference(student, teacher, temperature=2.0))  # identical logits: no KL
    0.0
    >>> float(combined_loss_reference(task_loss=1.0, kd_term=3.0, alpha=0.5))
    2.0
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "KD_LOSSES",
    "DistillationSettings",
    "adapter_kind",
    "combined_loss_reference",
    "kd_loss_reference",
    "log_softmax_reference",
    "resolve_layer",
]

KD_LOSSES = ("kl", "mse")


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def _callable_name(fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{name}"


@dataclass(frozen=True)
class DistillationSettings:
    """The validated, framework-free settings of a ``Distillation`` callback.

    The defaults (``temperature=1.0, alpha=0.5``) were chosen on a validation split as the setting that never
    cost accuracy in any of the three regimes measured (``benchmarks/distillation.py``): a student trained from
    scratch to convergence, the same student on a short budget, and a pruned + quantization-aware copy fine-tuned
    from its own dense model. Higher temperatures (``4.0``, ``alpha=0.7``) gained most for a student trained
    from scratch to convergence, but cost about 20 points on a short budget and a point in the fine-tuning.

    Args:
        temperature: softmax temperature ``T`` (> 0); higher values soften both distributions.
        alpha: weight of the distillation term in [0, 1]; the task loss gets ``1 - alpha``.
        loss: ``"kl"`` (``T**2`` times the KL divergence of the softened distributions), ``"mse"`` (mean
            squared error of the logits), or a callable ``(student_logits, teacher_logits) -> scalar`` used
            as the distillation term as is.
        features: ``{student_layer: teacher_layer}`` for intermediate-feature distillation (mean squared
            error, through a learnable adapter when the shapes differ); None or ``{}`` for none.
        feature_weight: weight (>= 0) of the summed feature losses.

    Raises:
        TypeError: a non-numeric temperature/alpha/feature_weight, a loss that is neither a known name nor
            callable, or features that are not a mapping of layer names.
        ValueError: temperature <= 0, alpha outside [0, 1], a negative feature_weight, an unknown loss
            name, or an empty layer name.

    Example:
        >>> DistillationSettings(temperature=4.0, alpha=0.7, features={"stem": "stem"}).to_dict()["features"]
        {'stem': 'stem'}
    """

    temperature: float = 1.0
    alpha: float = 0.5
    loss: str | Callable[..., Any] = "kl"
    features: Mapping[str, str] | None = field(default=None)
    feature_weight: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "temperature", self._check_temperature(self.temperature))
        object.__setattr__(self, "alpha", self._check_alpha(self.alpha))
        object.__setattr__(self, "feature_weight", self._check_feature_weight(self.feature_weight))
        object.__setattr__(self, "features", self._check_features(self.features))
        self._check_loss(self.loss)

    @staticmethod
    def _check_temperature(value: object) -> float:
        if not _is_real(value) or not math.isfinite(float(value)):  # type: ignore[arg-type]
            raise TypeError(
                f"Distillation(temperature=...): expected a finite number > 0; got {value!r} "
                f"({type(value).__name__}). HINT: typical values are 1-8, e.g. temperature=4.0."
            )
        number = float(value)  # type: ignore[arg-type]
        if number <= 0.0:
            raise ValueError(
                f"Distillation(temperature=...): must be > 0; got {value!r}. "
                "HINT: 1.0 keeps the logits as they are, typical values are 1-8, e.g. temperature=4.0."
            )
        return number

    @staticmethod
    def _check_alpha(value: object) -> float:
        if not _is_real(value) or not math.isfinite(float(value)):  # type: ignore[arg-type]
            raise TypeError(
                f"Distillation(alpha=...): expected a number in [0, 1]; got {value!r} ({type(value).__name__}). "
                "HINT: alpha is the weight of the distillation term, e.g. alpha=0.7."
            )
        number = float(value)  # type: ignore[arg-type]
        if not 0.0 <= number <= 1.0:
            raise ValueError(
                f"Distillation(alpha=...): must be in [0, 1]; got {value!r}. "
                "HINT: the loss is (1 - alpha) * task_loss + alpha * distillation term, e.g. alpha=0.7."
            )
        return number

    @staticmethod
    def _check_feature_weight(value: object) -> float:
        if not _is_real(value) or not math.isfinite(float(value)):  # type: ignore[arg-type]
            raise TypeError(
                f"Distillation(feature_weight=...): expected a finite number >= 0; got {value!r} "
                f"({type(value).__name__}). HINT: e.g. feature_weight=1.0."
            )
        number = float(value)  # type: ignore[arg-type]
        if number < 0.0:
            raise ValueError(
                f"Distillation(feature_weight=...): must be >= 0; got {value!r}. HINT: e.g. feature_weight=1.0."
            )
        return number

    @staticmethod
    def _check_features(value: object) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise TypeError(
                f"Distillation(features=...): expected a mapping {{student_layer: teacher_layer}}; got "
                f"{type(value).__name__}. HINT: e.g. features={{'model.transition.conv': 'transition.conv'}}."
            )
        bad = [(k, v) for k, v in value.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise TypeError(
                f"Distillation(features=...): layer names must be strings; got {bad!r}. "
                "HINT: use module names as listed by model.named_modules()."
            )
        empty = [(k, v) for k, v in value.items() if not k or not v]
        if empty:
            raise ValueError(
                f"Distillation(features=...): empty layer name in {empty!r}. "
                "HINT: use module names as listed by model.named_modules()."
            )
        return dict(value)

    @staticmethod
    def _check_loss(value: object) -> None:
        if isinstance(value, str):
            if value not in KD_LOSSES:
                raise ValueError(
                    f"Distillation(loss=...): unknown {value!r}. "
                    f"HINT: choose one of {list(KD_LOSSES)} or pass a callable (student_logits, teacher_logits)."
                )
        elif not callable(value):
            raise TypeError(
                f"Distillation(loss=...): expected one of {list(KD_LOSSES)} or a callable; got "
                f"{type(value).__name__}. HINT: e.g. loss='kl'."
            )

    @property
    def loss_name(self) -> str:
        """``"kl"``, ``"mse"`` or ``"callable:<module>.<qualname>"``."""
        return self.loss if isinstance(self.loss, str) else f"callable:{_callable_name(self.loss)}"

    def to_dict(self) -> dict[str, Any]:
        """Plain, checkpoint-safe values (str, float, dict of str); a callable loss is stored by name.

        Example:
            >>> DistillationSettings().to_dict()
            {'temperature': 1.0, 'alpha': 0.5, 'loss': 'kl', 'features': {}, 'feature_weight': 1.0}
        """
        return {
            "temperature": self.temperature,
            "alpha": self.alpha,
            "loss": self.loss_name,
            "features": dict(self.features or {}),
            "feature_weight": self.feature_weight,
        }

    def differences(self, saved: Mapping[str, Any]) -> list[str]:
        """The settings that differ from ``saved`` (a :meth:`to_dict` from a checkpoint), as "name: old → new".

        Example:
            >>> DistillationSettings(alpha=0.5).differences(DistillationSettings(alpha=0.7).to_dict())
            ['alpha: 0.7 → 0.5']
        """
        now = self.to_dict()
        return [f"{k}: {saved.get(k)!r} → {v!r}" for k, v in now.items() if saved.get(k) != v]


def resolve_layer(names: Sequence[str], name: str, who: str = "student", separator: str = ".") -> str:
    """The full name of a layer: ``name`` itself, or the only one of ``names`` ending with ``separator + name``.

    Args:
        names: every layer name of the model (``model.named_modules()`` paths, or Keras layer names).
        name: the name the user gave in ``features``.
        who: ``"student"`` or ``"teacher"``, for the message.
        separator: the path separator of the names.

    Raises:
        ValueError: no such layer, or a suffix shared by several layers; the message lists the names.

    Example:
        >>> resolve_layer(["model", "model.stem", "model.stem.conv"], "stem.conv")
        'model.stem.conv'
    """
    if name in names:
        return name
    matches = [n for n in names if n.endswith(separator + name)]
    if len(matches) == 1:
        return matches[0]
    shown = ", ".join(names[:60]) + (f", ... ({len(names) - 60} more)" if len(names) > 60 else "")
    why = f"is ambiguous (matches {matches})" if matches else "does not exist"
    raise ValueError(
        f"Distillation(features=...): the {who} layer {name!r} {why}. Available {who} layers: [{shown}]. "
        "HINT: use a name from this list."
    )


def adapter_kind(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> str | None:
    """How a feature of ``student_shape`` is mapped onto ``teacher_shape`` (batch axis first).

    Returns None when the shapes are equal (no adapter), ``"conv1d"``/``"conv2d"``/``"conv3d"`` (a 1x1
    convolution) when only axis 1 differs (channels-first maps), ``"linear"`` for ``(N, F)`` features or when
    only the last axis differs (tokens, channels-last maps), and ``"incompatible"`` otherwise (different
    batch, rank or spatial size).

    Example:
        >>> adapter_kind((8, 16, 4, 4), (8, 128, 4, 4)), adapter_kind((8, 4, 4, 16), (8, 4, 4, 32))
        ('conv2d', 'linear')
        >>> adapter_kind((8, 10), (8, 10)) is None, adapter_kind((8, 16, 4, 4), (8, 32, 8, 8))
        (True, 'incompatible')
    """
    s, t = tuple(int(v) for v in student_shape), tuple(int(v) for v in teacher_shape)
    if s == t:
        return None
    if len(s) != len(t) or len(s) < 2 or s[0] != t[0]:
        return "incompatible"
    if len(s) == 2:
        return "linear"
    if s[2:] == t[2:] and len(s) <= 5:
        return f"conv{len(s) - 2}d"
    if s[:-1] == t[:-1]:
        return "linear"
    return "incompatible"


def log_softmax_reference(logits: npt.ArrayLike, temperature: float = 1.0, axis: int = 1) -> npt.NDArray[np.float64]:
    """Numerically stable ``log(softmax(logits / temperature))`` along ``axis``, in float64.

    Example:
        >>> np.exp(log_softmax_reference([[0.0, 0.0]])).tolist()
        [[0.5, 0.5]]
    """
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=axis, keepdims=True)
    out: npt.NDArray[np.float64] = z - np.log(np.exp(z).sum(axis=axis, keepdims=True))
    return out


def kd_loss_reference(
    student_logits: npt.ArrayLike, teacher_logits: npt.ArrayLike, temperature: float = 4.0, loss: str = "kl"
) -> np.float64:
    """The distillation term in float64: ``T**2 * KL(p_teacher || p_student)`` or the logits' MSE.

    The KL divergence is summed over the class axis (axis 1) and averaged over every other axis (the batch,
    and the spatial positions of dense predictions).

    Args:
        student_logits: ``(N, C, ...)`` logits of the student.
        teacher_logits: the teacher's logits, same shape.
        temperature: softmax temperature ``T`` (> 0).
        loss: ``"kl"`` or ``"mse"``.

    Raises:
        ValueError: shapes that differ, or an unknown loss name.

    Example:
        >>> round(float(kd_loss_reference([[1.0, 0.0]], [[0.0, 1.0]], temperature=1.0)), 6)
        0.462117
    """
    s = np.asarray(student_logits, dtype=np.float64)
    t = np.asarray(teacher_logits, dtype=np.float64)
    if s.shape != t.shape:
        raise ValueError(f"student logits {s.shape} and teacher logits {t.shape} differ in shape")
    if loss == "mse":
        return np.float64(np.mean((s - t) ** 2))
    if loss != "kl":
        raise ValueError(f"loss must be one of {list(KD_LOSSES)}; got {loss!r}")
    log_ps = log_softmax_reference(s, temperature)
    log_pt = log_softmax_reference(t, temperature)
    kl = (np.exp(log_pt) * (log_pt - log_ps)).sum(axis=1)
    return np.float64(float(temperature) ** 2 * kl.mean())


def combined_loss_reference(
    task_loss: float,
    kd_term: float,
    alpha: float,
    feature_losses: Sequence[float] = (),
    feature_weight: float = 1.0,
) -> np.float64:
    """``(1 - alpha) * task_loss + alpha * kd_term + feature_weight * sum(feature_losses)``.

    The terms with a zero weight are left out, so ``alpha=0`` gives the task loss exactly and ``alpha=1``
    ignores the task loss entirely (even a non-finite one).

    Example:
        >>> float(combined_loss_reference(2.0, 1.0, alpha=0.25, feature_losses=[0.5], feature_weight=2.0))
        2.75
    """
    total = np.float64(0.0)
    if alpha < 1.0:
        total += (1.0 - alpha) * np.float64(task_loss)
    if alpha > 0.0:
        total += alpha * np.float64(kd_term)
    if feature_losses and feature_weight > 0.0:
        total += feature_weight * np.float64(sum(np.float64(f) for f in feature_losses))
    return np.float64(total)
