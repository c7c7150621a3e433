"""Lightning ``QuantizationAware``: int8 quantization-aware training in place, a QuantSpec out.

Every Conv1d/Conv2d (grouped and depthwise included) and Linear of the user's module gets a per-output-channel
symmetric weight fake-quant and a per-tensor symmetric input fake-quant (straight-through gradients), installed
with forward hooks: no tracing, no wrapper, the module keeps its class, attributes and forward signature. A
BatchNorm directly following a conv (the next module registered in the same parent, same channel count) is
folded into the weight before its fake-quant (``fq(w·f)/f`` with ``f = γ/√(running_var+ε)``), so the learned
weight scales are those of the deployed, BN-folded weights.

Timeline (fractions of the fit's optimizer steps): float before ``start``; observers calibrate for
``calibration_steps`` batches; then fake-quant is on; observers freeze at ``freeze_observers`` and BN statistics
at ``freeze_bn``. The phase is a function of ``trainer.global_step`` and all ranges are buffers on the layers,
so a resumed fit continues exactly. Under DDP every rank observes the union of all ranks' batches: the batch
maximum is all-reduced (MAX), a percentile is computed exactly on the union, so the ranges equal one process's.

At fit end the callback builds a :class:`fitslim.QuantSpec` (the scales fake-quant used), writes the
fake-quantized weights into the parameters, removes its hooks and buffers (the module is a plain float model
whose weights sit exactly on the int8 grid) and saves ``quant_spec.json``. ``Export`` placed after it picks the
spec up, so ncnn, TFLite and TensorRT int8 artifacts use the learned scales exactly.

Example:
    >>> from lightning_plugins.quantization import QuantizationAware
    >>> cb = QuantizationAware(start=0.6, freeze_observers=0.9, freeze_bn=0.8)
    >>> # Trainer(max_epochs=10, callbacks=[cb, Export(targets=["ncnn"], precision="int8")]).fit(module, data)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from fitslim.callback_spec import QuantizationAwareSpec, call_arguments
from fitslim.errors import fail, fail_type
from fitslim.metrics import bn_freeze_warning, qat_metrics
from fitslim.quantspec import LayerQuant, QuantSpec
from fitslim.sparsity import match_patterns
from lightning_plugins._compat import pl
from lightning_plugins._fakequant import LayerQuantizer, layer_kind
from lightning_plugins._logging import logs_due

__all__ = ["QuantizationAware", "build_spec", "find_layers", "simulate"]

log = logging.getLogger(__name__)


def _learning_rate(trainer: Any) -> float | None:
    """The first optimizer's current rate (its first parameter group), or None without one."""
    try:
        return float(trainer.optimizers[0].param_groups[0]["lr"])
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None


_STATE_VERSION = 1
_QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def _selectors(argument: str, value: Any) -> list[str | type] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str | type) else list(value)
    for item in items:
        if isinstance(item, type):
            if not issubclass(item, _QUANTIZABLE):
                raise fail(
                    "QuantizationAware",
                    argument,
                    f"layer type {item.__name__} has no quantizer",
                    "QuantizationAware quantizes Conv1d, Conv2d (grouped/depthwise) and Linear; "
                    f"remove {item.__name__} or name those types",
                )
        elif not isinstance(item, str):
            raise fail_type(
                "QuantizationAware",
                argument,
                f"got {item!r}; expected module-name patterns or module types",
                f"e.g. {argument}=['*.conv', nn.Linear]",
            )
    return items


def _matches(name: str, module: nn.Module, selectors: Sequence[str | type]) -> bool:
    for s in selectors:
        if isinstance(s, type) and isinstance(module, s):
            return True
        if isinstance(s, str) and match_patterns([name], [s])[s]:
            return True
    return False


def find_layers(
    root: nn.Module, include: Sequence[str | type] | None = None, exclude: Sequence[str | type] | None = None
) -> list[tuple[str, nn.Module, nn.Module | None]]:
    """The layers to quantize, each with the BatchNorm folded into it (or None).

    A BatchNorm is folded into a conv when it is the next module registered after the conv, in the same parent,
    with as many features as the conv has output channels (``conv -> bn`` as the reference models write it).

    Raises:
        ValueError: nothing quantizable, or an ``include`` pattern that matches no quantizable layer.
    """
    entries = list(root.named_modules())
    layers = [(n, m) for n, m in entries if layer_kind(m) is not None]
    if not layers:
        raise fail(
            "QuantizationAware",
            "include",
            f"the model ({type(root).__name__}) has no Conv1d, Conv2d or Linear layer: nothing to quantize",
            "QuantizationAware quantizes Conv1d/Conv2d/Linear layers; add the callback to a model that has them",
        )
    names = [n for n, _ in layers]
    if include is not None:
        for s in include:
            if isinstance(s, str) and not match_patterns(names, [s])[s]:
                raise fail(
                    "QuantizationAware",
                    "include",
                    f"pattern {s!r} matches no quantizable layer",
                    f"quantizable layers: {names}",
                )
        layers = [(n, m) for n, m in layers if _matches(n, m, include)]
    if exclude:
        layers = [(n, m) for n, m in layers if not _matches(n, m, exclude)]
    if not layers:
        raise fail("QuantizationAware", "exclude", "no layer left to quantize", "exclude fewer layers")
    index = {n: i for i, (n, _) in enumerate(entries)}
    out: list[tuple[str, nn.Module, nn.Module | None]] = []
    for name, module in layers:
        bn: nn.Module | None = None
        i = index[name]
        if isinstance(module, nn.Conv1d | nn.Conv2d) and i + 1 < len(entries):
            nxt_name, nxt = entries[i + 1]
            same_parent = nxt_name.rpartition(".")[0] == name.rpartition(".")[0]
            if isinstance(nxt, _BN) and same_parent and nxt.num_features == module.out_channels:
                bn = nxt
        out.append((name, module, bn))
    return out


def build_spec(quantizers: Mapping[str, LayerQuantizer], weight_bits: int, activation_bits: int) -> QuantSpec:
    """A QuantSpec with the scales each quantizer uses now (weights: BN-folded, per output channel)."""
    layers = []
    for name, q in quantizers.items():
        m = q.module
        w: torch.Tensor = m.weight  # type: ignore[assignment]
        layers.append(
            LayerQuant(
                name=name,
                kind=str(layer_kind(m)),
                weight_shape=tuple(w.shape),
                weight_scales=q.current_weight_scale().detach().cpu().tolist(),
                input_scale=float(q.input_scale().item()),
                groups=int(getattr(m, "groups", 1)),
            )
        )
    return QuantSpec(layers, weight_bits=weight_bits, activation_bits=activation_bits, source="qat", framework="torch")


@contextlib.contextmanager
def simulate(module: nn.Module, spec: QuantSpec) -> Iterator[nn.Module]:
    """Run ``module`` as the fake-quant model of ``spec`` inside the block (exact scales), float after.

    Weights are BN-folded as during QAT and quantized with the spec's per-channel scales (a no-op up to float
    rounding on weights ``QuantizationAware`` baked); inputs with the spec's input scales (ties to even).

    Example:
        >>> # with simulate(model, cb.quant_spec): logits = model(x)
    """
    quantizers: list[LayerQuantizer] = []
    folds = {name: bn for name, _, bn in find_layers(module)}
    try:
        for layer in spec:
            sub = module.get_submodule(layer.name)
            q = LayerQuantizer(sub, spec.weight_bits, spec.activation_bits, bn=folds.get(layer.name))
            q.install()
            q._buf("fq_weight_scale").copy_(torch.tensor(layer.weight_scales, dtype=torch.float32))
            q._buf("fq_frozen").fill_(True)
            q._buf("fq_input_range").fill_(float(layer.input_scale) * _qmax(spec.activation_bits))
            q._buf("fq_observed").fill_(1)
            q.fixed_input_scale = float(layer.input_scale)  # exact, no range -> scale round trip
            q.mode = "eval"
            quantizers.append(q)
        yield module
    finally:
        for q in quantizers:
            q.remove(drop_buffers=True)


def _qmax(bits: int) -> float:
    return float(2 ** (bits - 1) - 1)


class QuantizationAware(pl.Callback):  # type: ignore[name-defined]
    """Quantization-aware training (symmetric int8) of the module being fitted; a QuantSpec at fit end.

    On the trainer's logging steps (``log_every_n_steps``) it logs with ``pl_module.log``: ``qat/phase`` (0 float,
    1 calibrating, 2 fake-quant with observers updating, 3 observers frozen), ``qat/bn_frozen`` and the observed
    input ranges' ``qat/input_range/min|mean|max`` over the quantized layers (:mod:`fitslim.metrics`).

    Args:
        start: fraction of the fit's optimizer steps at which observers start calibrating.
        freeze_observers: fraction at which observer ranges and weight scales freeze (>= start).
        freeze_bn: fraction at which folded BatchNorms switch to their running statistics.
        weight_bits: weight integer width, 2..8.
        activation_bits: activation integer width, 2..8.
        per_channel: one weight scale per output channel (True) or per layer.
        include: module-name patterns or Conv1d/Conv2d/Linear types to quantize; None = all of them.
        exclude: patterns or types left in float (the exporters then refuse int8 for them, naming them).
        observer: ``"ema"`` (moving average of the batch absmax), ``"minmax"`` (running max) or
            ``"percentile"`` (moving average of a batch percentile of ``|x|``).
        momentum: moving-average momentum of ``"ema"``/``"percentile"``.
        percentile: the percentile for ``observer="percentile"``.
        calibration_steps: batches observed at ``start`` before fake-quant switches on.
        directory: where ``quant_spec.json`` is written; default the trainer's ``default_root_dir``.

    Raises:
        ValueError: bits outside 2..8, a timing outside [0, 1], ``freeze_observers < start``, an unknown
            observer, an ``include`` type with no quantizer; before the first step: a model with nothing to
            quantize or an ``include`` pattern matching no layer.
        TypeError: a selector that is neither a pattern nor a module type.

    Example:
        >>> cb = QuantizationAware(start=0.5, freeze_observers=0.9, observer="minmax")
        >>> cb.quant_spec is None
        True
        >>> # Trainer(max_epochs=8, callbacks=[cb, Export(["ncnn", "tflite"], precision="int8")]).fit(m, d)
    """

    def __init__(
        self,
        start: float = 0.6,
        freeze_observers: float = 0.9,
        freeze_bn: float = 0.8,
        weight_bits: int = 8,
        activation_bits: int = 8,
        per_channel: bool = True,
        # types first: a YAML config's "torch.nn.Conv2d" then becomes the class, a pattern stays a string
        include: Sequence[type[nn.Module] | str] | None = None,
        exclude: Sequence[type[nn.Module] | str] | None = None,
        observer: str = "ema",
        momentum: float = 0.01,
        percentile: float = 99.99,
        calibration_steps: int = 8,
        directory: str | os.PathLike[str] | None = None,
    ) -> None:
        arguments = call_arguments(locals())
        super().__init__()
        QuantizationAwareSpec(**arguments).assign(self)
        self.include = _selectors("include", include)
        self.exclude = _selectors("exclude", exclude)
        self.quant_spec: QuantSpec | None = None
        self.spec_path: Path | None = None
        self._quantizers: dict[str, LayerQuantizer] = {}
        self._module: nn.Module | None = None
        self._load_hook: Any = None
        self._steps: tuple[int, int, int] | None = None
        self._phase = "float"
        self._bn_frozen = False
        self._lr_peak: float | None = None
        self._ran_unfrozen = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(weight_bits=self.weight_bits, activation_bits=self.activation_bits)

    @property
    def quantizers(self) -> dict[str, LayerQuantizer]:
        """The installed quantizers by layer name (empty before setup and after fit end)."""
        return self._quantizers

    # -- installation --------------------------------------------------------------------------------

    def _install(self, module: nn.Module, mode: str = "off") -> None:
        self._remove()
        for name, layer, bn in find_layers(module, self.include, self.exclude):
            q = LayerQuantizer(
                layer, self.weight_bits, self.activation_bits, self.per_channel, bn,
                self.observer, self.momentum, self.percentile,
            )  # fmt: skip
            q.install()
            q.mode = mode
            self._quantizers[name] = q

    def _remove(self, drop_buffers: bool = False) -> None:
        for q in self._quantizers.values():
            q.remove(drop_buffers=drop_buffers)
        self._quantizers = {}

    def _before_load(self, module: nn.Module, state_dict: Mapping[str, Any], prefix: str, *args: Any) -> None:
        """load_state_dict pre-hook (test/validate/predict): a checkpoint written mid-QAT brings its buffers."""
        if prefix or module is not self._module:
            return
        if not self._quantizers and any(str(k).endswith(".fq_input_range") for k in state_dict):
            self._install(module, mode="eval")
        for name, q in self._quantizers.items():
            q.fit_buffers(state_dict, f"{name}.")

    @override
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self._load_hook is not None:
            self._load_hook.remove()
            self._load_hook = None
        self._module = pl_module
        if stage == "fit":
            self.quant_spec = None
            self._install(pl_module)
            log.info("fitslim QuantizationAware: %d layers get int8 fake-quant", len(self._quantizers))
        # fit: resize buffers of layers that lost channels; test/validate/predict: install from a QAT checkpoint
        self._load_hook = pl_module.register_load_state_dict_pre_hook(self._before_load)

    @override
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        total = trainer.estimated_stepping_batches
        if not (isinstance(total, int) or (isinstance(total, float) and math.isfinite(total))) or total < 1:
            raise fail(
                "QuantizationAware",
                "start",
                f"the fit has no finite number of optimizer steps ({total!r}) to place start in",
                "set max_epochs or max_steps",
            )
        n = int(total)
        self._steps = (round(self.start * n), round(self.freeze_observers * n), round(self.freeze_bn * n))
        self._lr_peak, self._ran_unfrozen = None, False
        log.info("fitslim QuantizationAware: start/freeze_observers/freeze_bn at steps %s of %d", self._steps, n)

    def _mode(self, step: int) -> str:
        start = self._steps[0] if self._steps is not None else 0
        if step < start:
            return "off"
        return "calibrate" if step < start + self.calibration_steps else "quantize"

    @override
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self._steps is None or not self._quantizers:
            return
        step = int(trainer.global_step)
        mode = self._mode(step)
        freeze_obs = mode == "quantize" and step >= self._steps[1]
        for q in self._quantizers.values():
            q.mode = mode
            if freeze_obs and q.observed:
                q.freeze()
            if step >= self._steps[2] and q.bn is not None:
                q.bn.eval()
        self._phase = "frozen" if freeze_obs else ("float" if mode == "off" else mode)
        rate = _learning_rate(trainer)
        if rate is not None:  # the highest rate of this fit so far (a warm-up starts low)
            self._lr_peak = max(self._lr_peak or rate, rate)
        frozen = step >= self._steps[2]
        if frozen and self._ran_unfrozen and any(q.bn is not None for q in self._quantizers.values()):
            self._warn_if_rate_is_high(trainer, step, rate)  # the freeze happens in this fit, now
        self._ran_unfrozen = not frozen
        self._bn_frozen = frozen

    def _warn_if_rate_is_high(self, trainer: Any, step: int, rate: float | None) -> None:
        """Training on frozen BatchNorm (running statistics) at an undecayed rate can diverge: say so, once."""
        text = bn_freeze_warning(step, self.freeze_bn, rate, self._lr_peak, "a cosine LR scheduler")
        if text and trainer.is_global_zero:
            log.warning("fitslim " + text)

    @override
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Log ``qat/phase``, ``qat/bn_frozen`` and the observed input ranges on the trainer's logging steps."""
        if self._steps is None or not self._quantizers or not logs_due(trainer):
            return
        pl_module.log_dict(self.metrics(), on_step=True, on_epoch=False, batch_size=1)

    def metrics(self) -> dict[str, float]:
        """What the callback logs now (:func:`fitslim.metrics.qat_metrics`): phase, BN freeze, input range summary."""
        quantizers = list(self._quantizers.values())
        if not quantizers:
            return {}
        with torch.no_grad():  # one device sync for all layers
            stacked = torch.stack([q._buf("fq_input_range").float().reshape(()) for q in quantizers]).cpu()
            seen = torch.stack([q._buf("fq_observed").reshape(()) > 0 for q in quantizers]).cpu()
        ranges = [float(r) if s else None for r, s in zip(stacked.tolist(), seen.tolist(), strict=True)]
        return qat_metrics(self._phase, self._bn_frozen, ranges)

    @override
    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._quantizers:
            return
        unobserved = [n for n, q in self._quantizers.items() if not q.observed]
        if unobserved:
            log.warning(
                "fitslim QuantizationAware: no batch reached the observers of %s (start too late?); "
                "no QuantSpec produced, the model stays float",
                unobserved,
            )
            self._remove(drop_buffers=True)
            return
        with torch.no_grad():
            for q in self._quantizers.values():
                q.freeze()
            spec = build_spec(self._quantizers, self.weight_bits, self.activation_bits)
            for q in self._quantizers.values():
                q.bake()
        self._remove(drop_buffers=True)
        spec.metadata.update({"observer": self.observer, "steps": int(trainer.global_step)})
        self.quant_spec = spec
        directory = Path(self.directory if self.directory is not None else trainer.default_root_dir)
        self.spec_path = directory / "quant_spec.json"
        if trainer.is_global_zero:
            directory.mkdir(parents=True, exist_ok=True)
            spec.save(self.spec_path)
            log.info(
                "fitslim QuantizationAware: float → int8 scales for %d layers, weights baked; spec at %s",
                len(spec),
                self.spec_path,
            )

    @override
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            self._remove(drop_buffers=True)
        if self._load_hook is not None:
            self._load_hook.remove()
            self._load_hook = None

    @override
    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        for q in self._quantizers.values():
            q.remove()
        self._quantizers = {}

    # -- checkpointing -------------------------------------------------------------------------------

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "steps": self._steps,
            "quant_spec": None if self.quant_spec is None else self.quant_spec.to_dict(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        spec = state_dict.get("quant_spec")
        self.quant_spec = QuantSpec.from_dict(spec) if spec else None
