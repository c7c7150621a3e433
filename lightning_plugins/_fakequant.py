"""In-place fake-quant for Conv1d/Conv2d/Linear: the plain core under ``QuantizationAware``.

Each quantized layer gets a :class:`LayerQuantizer` installed as a forward pre-hook (plus a forward hook):
before the layer runs, its ``weight`` is swapped for the fake-quantized (optionally BatchNorm-folded) weight
and its input is fake-quantized; after it runs the original ``Parameter`` is put back. The module keeps its
class, attributes, parameter names and forward signature. Observer ranges live in buffers on the layer
(``fq_input_range``, ``fq_weight_scale``, ``fq_frozen``, ``fq_observed``), so they are in every checkpoint.

The math is that of :mod:`fitslim.int8` with ``rounding="half_even"``: ``q = clamp(round(x / s), -qmax, qmax)``,
``x̂ = q * s``, scales ``max(absmax / qmax, MIN_SCALE)``; gradients pass straight through inside the range.

Example:
    >>> import torch
    >>> from torch import nn
    >>> conv = nn.Conv2d(1, 4, 3)
    >>> fq = LayerQuantizer(conv, weight_bits=8, activation_bits=8)
    >>> fq.install(); fq.mode = "quantize"
    >>> conv(torch.ones(1, 1, 5, 5)).shape
    torch.Size([1, 4, 3, 3])
    >>> fq.remove()
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fitslim.int8 import MIN_SCALE, qmax

__all__ = [
    "BUFFERS",
    "LayerQuantizer",
    "MODES",
    "fake_quant",
    "layer_kind",
    "observe",
    "observe_all_ranks",
    "scale_from_range",
]

#: Modes: "off" = float, "calibrate" = observe inputs only, "quantize" = observe + fake-quant,
#: "eval" = fake-quant with the stored ranges, no observation.
MODES = ("off", "calibrate", "quantize", "eval")
BUFFERS = ("fq_input_range", "fq_weight_scale", "fq_frozen", "fq_observed")
OBSERVERS = ("ema", "minmax", "percentile")


class _FakeQuant(torch.autograd.Function):
    """``clamp(round(x / s), -m, m) * s`` forward (ties to even); straight-through gradient inside the range."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, m: int) -> torch.Tensor:
        q = torch.round(x / scale)
        ctx.save_for_backward((q >= -m) & (q <= m))
        return torch.clamp(q, -m, m) * scale

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (inside,) = ctx.saved_tensors
        return grad * inside.to(grad.dtype), None, None


def fake_quant(x: torch.Tensor, scale: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Symmetric fake-quant of ``x``; ``scale`` is a scalar or already shaped to broadcast (per channel)."""
    out: torch.Tensor = _FakeQuant.apply(x, scale.to(x.dtype), qmax(bits))
    return out


def scale_from_range(rng: torch.Tensor, bits: int) -> torch.Tensor:
    """``max(range / qmax, MIN_SCALE)`` in float32, as :func:`fitslim.int8.absmax_scale`."""
    s = rng.detach().to(torch.float32) / torch.tensor(float(qmax(bits)), dtype=torch.float32)
    return torch.clamp(s, min=MIN_SCALE)


def observe(x: torch.Tensor, observer: str, percentile: float) -> torch.Tensor:
    """This batch's statistic of ``|x|``: its maximum, or a percentile for ``observer="percentile"``."""
    a = x.detach().abs().flatten().to(torch.float32)
    if a.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=x.device)
    if observer == "percentile":
        k = max(1, min(a.numel(), int(round(percentile / 100.0 * a.numel()))))
        return a.kthvalue(k).values
    return a.max()


def _world_size() -> int:
    """The process group's size (1 without one)."""
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Reduce across ranks (MAX) when a process group runs, so every rank gets the same ranges."""
    dist = torch.distributed
    if _world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def _union_percentile(x: torch.Tensor, percentile: float) -> torch.Tensor:
    """:func:`observe`'s percentile of ``|x|`` over the union of every rank's ``x``, the same on every rank.

    The k-th smallest of the union is its m-th largest (``m = n - k + 1``), and the m largest values of the union
    are among the m largest of each rank, so each rank sends only its top m (m is about n/10,000 for the default
    99.99): two collectives, exact, equal to one process observing all ranks' batches at once. (The MAX of the
    ranks' own percentiles, what the other observers reduce with, is larger than the union's percentile.)
    """
    dist = torch.distributed
    a = x.detach().abs().flatten().to(torch.float32)
    total = torch.tensor([a.numel()], dtype=torch.long, device=a.device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    n = int(total.item())
    if n == 0:
        return torch.zeros((), dtype=torch.float32, device=a.device)
    k = max(1, min(n, int(round(percentile / 100.0 * n))))
    m = n - k + 1
    top = torch.full((m,), -1.0, dtype=torch.float32, device=a.device)  # below any |x|: padding never wins
    mine = torch.topk(a, min(m, a.numel())).values
    top[: mine.numel()] = mine
    parts = [torch.empty_like(top) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, top)
    return torch.topk(torch.cat(parts), m).values[-1]


def observe_all_ranks(x: torch.Tensor, observer: str, percentile: float) -> torch.Tensor:
    """:func:`observe` on the union of every rank's ``x`` when a process group runs (else on ``x``).

    The batch maximum of the union is the MAX of the ranks' maxima (``"ema"``, ``"minmax"``: one all-reduce of a
    scalar); a percentile is computed exactly on the union (:func:`_union_percentile`).
    """
    if _world_size() > 1 and observer == "percentile":
        return _union_percentile(x, percentile)
    return _all_reduce_max(observe(x, observer, percentile))


def layer_kind(module: nn.Module) -> str | None:
    """The QuantSpec kind of a module, or None when it has no quantizer."""
    if isinstance(module, nn.Conv2d):
        if module.groups > 1 and module.groups == module.in_channels == module.out_channels:
            return "depthwise_conv2d"
        return "conv2d"
    if isinstance(module, nn.Conv1d):
        return "conv1d"
    if isinstance(module, nn.Linear):
        return "linear"
    return None


class LayerQuantizer:
    """Fake-quant of one layer's weight (per output channel) and input (per tensor), installed in place.

    Args:
        module: a Conv1d, Conv2d or Linear.
        weight_bits: weight integer width (2..8).
        activation_bits: input integer width (2..8).
        per_channel: one weight scale per output channel (True) or one for the whole weight.
        bn: the BatchNorm that follows the conv, folded into the weight before fake-quant.
        observer: ``"ema"``, ``"minmax"`` or ``"percentile"``.
        momentum: EMA momentum for ``"ema"``/``"percentile"``.
        percentile: percentile of ``|x|`` for ``"percentile"``.
    """

    def __init__(
        self,
        module: nn.Module,
        weight_bits: int = 8,
        activation_bits: int = 8,
        per_channel: bool = True,
        bn: nn.Module | None = None,
        observer: str = "ema",
        momentum: float = 0.01,
        percentile: float = 99.99,
    ) -> None:
        self.module = module
        self.weight_bits, self.activation_bits = weight_bits, activation_bits
        self.per_channel, self.bn = per_channel, bn
        self.observer, self.momentum, self.percentile = observer, momentum, percentile
        self.mode = "off"
        #: when set, the input scale used as is (a spec's exact scale), instead of the observed range
        self.fixed_input_scale: float | None = None
        self._handles: list[Any] = []
        self._weight: nn.Parameter | None = None

    # -- buffers ------------------------------------------------------------------------------------

    def register_buffers(self) -> None:
        """Create the state buffers (idempotent), so a checkpoint with them loads strictly."""
        m = self.module
        w: torch.Tensor = m.weight  # type: ignore[assignment]
        defaults = {
            "fq_input_range": torch.zeros((), dtype=torch.float32),
            "fq_weight_scale": torch.ones(w.shape[0], dtype=torch.float32),
            "fq_frozen": torch.zeros((), dtype=torch.bool),
            "fq_observed": torch.zeros((), dtype=torch.long),
        }
        for name, value in defaults.items():
            if not isinstance(getattr(m, name, None), torch.Tensor):
                m.register_buffer(name, value.to(w.device), persistent=True)

    def fit_buffers(self, state_dict: Any, prefix: str) -> None:
        """Resize ``fq_weight_scale`` to a checkpoint's (its layer lost channels to Pruning before it was saved)."""
        saved = state_dict.get(f"{prefix}fq_weight_scale")
        mine = self.module._buffers.get("fq_weight_scale")
        if isinstance(saved, torch.Tensor) and mine is not None and saved.shape != mine.shape:
            self.module.register_buffer("fq_weight_scale", torch.ones_like(saved).to(mine.device), persistent=True)

    def drop_buffers(self) -> None:
        for name in BUFFERS:
            self.module._buffers.pop(name, None)

    def _buf(self, name: str) -> torch.Tensor:
        t: torch.Tensor = self.module._buffers[name]  # type: ignore[assignment]
        return t

    @property
    def observed(self) -> bool:
        """Whether the input observer has seen at least one batch."""
        return bool(self._buf("fq_observed").item() > 0)

    # -- math ---------------------------------------------------------------------------------------

    def fold_factor(self) -> torch.Tensor | None:
        """``γ / sqrt(running_var + ε)`` per output channel of the folded BatchNorm, or None."""
        bn: Any = self.bn
        if bn is None:
            return None
        var: torch.Tensor = bn.running_var
        gamma = bn.weight if bn.weight is not None else torch.ones_like(var)
        out: torch.Tensor = (gamma / torch.sqrt(var + bn.eps)).to(torch.float32)
        return out

    def _shape(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        return t.reshape(-1, *([1] * (ndim - 1)))

    def _folded(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        f = self.fold_factor()
        if f is None:
            return w, None
        f = self._shape(f.detach(), w.ndim)
        return w * f, f

    def current_weight_scale(self, w: torch.Tensor | None = None) -> torch.Tensor:
        """The per-output-channel weight scale fake-quant uses now (frozen, or from the folded weight)."""
        w = self._original() if w is None else w
        frozen = self._buf("fq_weight_scale")
        if bool(self._buf("fq_frozen").item()) and frozen.shape[0] == w.shape[0]:
            return frozen
        folded, _ = self._folded(w.detach())
        a = folded.abs().reshape(folded.shape[0], -1).amax(dim=1)
        if not self.per_channel:
            a = a.amax().expand_as(a)
        return scale_from_range(a, self.weight_bits)

    def input_scale(self) -> torch.Tensor:
        """The per-tensor input scale (from the observed range, or :attr:`fixed_input_scale`)."""
        if self.fixed_input_scale is not None:
            return torch.tensor(self.fixed_input_scale, dtype=torch.float32, device=self._buf("fq_input_range").device)
        return scale_from_range(self._buf("fq_input_range"), self.activation_bits)

    def quantized_weight(self, w: torch.Tensor) -> torch.Tensor:
        """``fq(w · f) / f`` (f the BN fold factor, 1 without BN): the weight the layer computes with."""
        folded, f = self._folded(w)
        s = self._shape(self.current_weight_scale(w), w.ndim)
        q = fake_quant(folded, s, self.weight_bits)
        if f is None:
            return q
        safe = torch.where(f == 0, torch.ones_like(f), f)
        return torch.where(f == 0, w, q / safe)

    def freeze(self) -> None:
        """Store the current weight scale and stop observing."""
        if not bool(self._buf("fq_frozen").item()):
            scale = self.current_weight_scale()
            if self._buf("fq_weight_scale").shape != scale.shape:  # channels were removed (Pruning)
                self.module.register_buffer("fq_weight_scale", scale.clone(), persistent=True)
            else:
                self._buf("fq_weight_scale").copy_(scale)
            self._buf("fq_frozen").fill_(True)

    def _update_range(self, x: torch.Tensor) -> None:
        stat = observe_all_ranks(x, self.observer, self.percentile)
        rng, seen = self._buf("fq_input_range"), self._buf("fq_observed")
        if int(seen.item()) == 0:
            rng.copy_(stat)
        elif self.observer == "minmax":
            rng.copy_(torch.maximum(rng, stat))
        else:
            rng.copy_(rng + self.momentum * (stat - rng))
        seen.add_(1)

    # -- hooks --------------------------------------------------------------------------------------

    def _original(self) -> torch.Tensor:
        if self._weight is not None:
            return self._weight
        w: torch.Tensor = self.module._parameters["weight"]  # type: ignore[assignment]
        return w

    def _restore(self) -> None:
        if self._weight is not None:
            self.module._parameters["weight"] = self._weight
            self._weight = None

    def _pre(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        self._restore()
        if self.mode == "off" or not args or not isinstance(args[0], torch.Tensor):
            return None
        x = args[0]
        frozen = bool(self._buf("fq_frozen").item())
        if module.training and self.mode in ("calibrate", "quantize") and not frozen:
            self._update_range(x)
        if self.mode == "calibrate" or not self.observed:
            return None
        weight: nn.Parameter = module._parameters["weight"]  # type: ignore[assignment]
        self._weight = weight
        module._parameters["weight"] = self.quantized_weight(weight)  # type: ignore[assignment]
        xq = fake_quant(x, self.input_scale(), self.activation_bits)
        return (xq, *args[1:])

    def _post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._restore()

    def install(self) -> None:
        """Register the buffers and the hooks."""
        self.register_buffers()
        if not self._handles:
            self._handles = [
                self.module.register_forward_pre_hook(self._pre),
                self.module.register_forward_hook(self._post),
            ]

    def remove(self, drop_buffers: bool = False) -> None:
        """Remove the hooks (the original Parameter is back); optionally drop the buffers."""
        self._restore()
        for h in self._handles:
            h.remove()
        self._handles = []
        if drop_buffers:
            self.drop_buffers()

    @torch.no_grad()
    def bake(self) -> None:
        """Write the fake-quantized weight into the Parameter (the float model then equals the int8 one)."""
        w = self._original()
        w.copy_(self.quantized_weight(w.detach()))
