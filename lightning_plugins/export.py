"""Lightning ``Export``: at fit end, on global rank zero, write verified deployment artifacts.

Example:
    >>> from lightning_plugins import Export
    >>> cb = Export(targets=["onnx", "ncnn"], directory="exports")
    >>> # Trainer(callbacks=[cb]).fit(module, datamodule); print(cb.report)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from typing_extensions import override

from exporters.core.inputs import as_inputs
from exporters.core.latency import latency_metrics
from exporters.core.report import ExportReport
from exporters.core.settings import ExportSettings
from exporters.core.source import batch_input
from fitslim.callback_spec import ExportSpec, call_arguments
from fitslim.metrics import export_metrics
from fitslim.quantspec import QuantSpec
from lightning_plugins._compat import pl
from lightning_plugins._logging import log_files, log_metrics

__all__ = ["Export"]

log = logging.getLogger(__name__)


def _find_quant_spec(trainer: Any, pl_module: Any) -> QuantSpec | None:
    """A QuantSpec left by a QAT callback (duck-typed: any callback with a ``quant_spec``) or on the module."""
    for cb in getattr(trainer, "callbacks", []):
        spec = getattr(cb, "quant_spec", None)
        if isinstance(spec, QuantSpec):
            return spec
    spec = getattr(pl_module, "quant_spec", None)
    return spec if isinstance(spec, QuantSpec) else None


def _fake_quant_reference(module: Any, spec: QuantSpec) -> Any:
    """Outputs of ``module`` run as the fake-quant model of ``spec``: what int8 artifacts must reproduce."""
    import torch

    from lightning_plugins.quantization import simulate

    def run(x: Any) -> Any:
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad(), simulate(module, spec):
                param = next(module.parameters(), None)
                device = param.device if param is not None else torch.device("cpu")
                inputs = x if isinstance(x, (tuple, list)) else (x,)  # token ids and mask: one tensor each
                return module(*(torch.as_tensor(a, device=device) for a in inputs)).detach().cpu().numpy()
        finally:
            module.train(was_training)

    return run


class Export(pl.Callback):  # type: ignore[name-defined]
    """Export the trained module to ONNX, ncnn, TFLite and TensorRT when ``fit`` ends.

    Runs on global rank zero only, after the last checkpoint is written; under a multi-process strategy the other
    ranks wait for it and receive its :attr:`report`. An export failure is logged and
    recorded in :attr:`report`; it never raises out of ``fit`` and never touches the trained weights.
    The report reaches the trainer's loggers: per target ``export/<target>/status`` (1 ok, 0.5 unverified,
    0 skipped, -1 mismatch, -2 failed), ``size_bytes``, ``max_abs_error``, ``max_rel_error``, ``top1_agreement`` and
    ``latency_ms`` as metrics; ``report.md``/``report.json`` as MLflow artifacts, W&B files, and the
    Markdown table as TensorBoard text. Every fp16 / int8 artifact is timed against fp32 of its target
    (:mod:`exporters.core.latency`): ``export/<target>/latency_ratio``, ``fp32_latency_ms`` and ``slower_than_fp32``
    (1.0 when it runs slower than fp32 on this machine, which the report and the log also give as a WARNING).

    The artifacts are verified on held-out inputs: ``verify_data`` when given, else the trainer's validation
    dataloader (``val_dataloaders``, or the datamodule's ``val_dataloader()``), else training batches after the
    calibration ones; the report's ``Verified on ...`` line says which.

    Args:
        targets: any of ``"onnx"``, ``"ncnn"``, ``"tflite"``, ``"tensorrt"``.
        directory: output folder for artifacts and ``report.json`` / ``report.md``.
        precision: ``"auto"`` (int8 when a QuantSpec is present, i.e. ``QuantizationAware`` ran or
            ``quant_spec`` is given; fp32 otherwise), ``"fp32"``, ``"fp16"`` or ``"int8"``.
        example_input: one input batch; the first training batch when None.
        calibration: input batches for int8 and verification; the first ``calibration_batches`` training
            batches when None.
        calibration_batches: how many training batches to calibrate on (and how many validation batches, or
            further training batches, to verify on).
        quant_spec: learned int8 scales, or the path of a ``quant_spec.json``; taken from a
            ``QuantizationAware`` callback when None.
        verify: run each artifact in its runtime and compare with the module.
        threads: runtime threads for verification and latency.
        input_fn: ``batch -> input`` when batches are not ``(x, y)`` tuples or dicts with ``x``/``input``/``image``.
        ncnn_depthwise: ``"int8"`` (default) or ``"float"``: depthwise convolutions stay fp32 in the ncnn int8
            model, which is faster on x86 (ncnn's int8 depthwise kernel is slower than its fp32 one there).
        onnx_weights: ``"auto"`` (default: for the exporting CPU), ``"int8"`` (ARM, x86 with VNNI) or ``"uint8"``
            (x86 without VNNI): how the ``onnx`` int8 artifact stores its weights.
        verify_data: inputs to verify on (an array, or a DataLoader / batches); see above for the default.

    Raises:
        ValueError: unknown target or precision, or a ``quant_spec`` path that holds no QuantSpec.
        TypeError: a ``verify_data`` that is not inputs.
    """

    def __init__(
        self,
        targets: Sequence[str] = ("onnx",),
        directory: str | os.PathLike[str] = "exports",
        precision: str = "auto",
        example_input: Any = None,
        calibration: Any = None,
        calibration_batches: int = 8,
        quant_spec: QuantSpec | str | os.PathLike[str] | None = None,
        verify: bool = True,
        threads: int = 2,
        input_fn: Callable[[Any], Any] | None = None,
        ncnn_depthwise: str = "int8",
        onnx_weights: str = "auto",
        verify_data: Any = None,
    ) -> None:
        arguments = call_arguments(locals())
        super().__init__()
        self.settings = ExportSettings.from_spec(ExportSpec(**arguments))
        self.report: ExportReport | None = None

    def _batches(self, loader: Any, count: int) -> list[Any]:
        get = self.settings.input_fn or batch_input
        # as_inputs keeps integer inputs (token ids, masks) and several inputs (input_fn=lambda b: b[:-1])
        return [as_inputs(get(b)) for b in islice(iter(loader), count)]

    def _training_batches(self, trainer: Any, count: int) -> list[Any]:
        loader = getattr(trainer, "train_dataloader", None)
        if loader is None and getattr(trainer, "datamodule", None) is not None:
            loader = trainer.datamodule.train_dataloader()
        if loader is None:
            return []
        return self._batches(loader, count)

    def _validation_batches(self, trainer: Any, pl_module: Any) -> list[Any]:
        """The first batches of the fit's validation data (the first val dataloader), or [] when there is none."""
        loader = getattr(trainer, "val_dataloaders", None)
        for owner in (getattr(trainer, "datamodule", None), pl_module):
            if loader is not None:
                break
            hook = getattr(owner, "val_dataloader", None)
            if callable(hook):
                try:
                    loader = hook()
                except Exception:  # Lightning's default hook raises when the user defined none
                    loader = None
        if isinstance(loader, dict):
            loader = next(iter(loader.values()), None)
        if isinstance(loader, list | tuple):
            loader = loader[0] if loader else None
        if loader is None:
            return []
        try:
            return self._batches(loader, self.settings.calibration_batches)
        except Exception as err:  # unreadable validation data: verify on training batches instead
            log.warning("fitslim Export could not take batches from the validation data: %s", err)
            return []

    @override
    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        try:
            if trainer.is_global_zero:
                self._export(trainer, pl_module)
        finally:
            # The other ranks wait here until rank zero's artifacts and report are complete (so a script that reads
            # them after fit never sees a half-written file), and get its report.
            if int(getattr(trainer, "world_size", 1)) > 1:
                self.report = trainer.strategy.broadcast(self.report, src=0)

    def _export(self, trainer: Any, pl_module: Any) -> None:
        s = self.settings
        held_out = self._validation_batches(trainer, pl_module) if s.verify and s.verify_data is None else []
        count = s.calibration_batches if held_out else s.training_batches_wanted()
        batches = self._training_batches(trainer, count) if s.needs_training_data() else []
        spec = s.quant_spec or _find_quant_spec(trainer, pl_module)
        reference = _fake_quant_reference(pl_module, spec) if spec is not None and spec.source == "qat" else None
        self.report = s.run(pl_module, batches, spec, type(pl_module).__name__, reference, held_out=held_out)
        self._log_report(trainer, self.report)

    @staticmethod
    def _log_report(trainer: Any, report: ExportReport) -> None:
        """The report's figures as metrics to every logger; ``report.md``/``report.json`` where a logger keeps files."""
        try:
            log_metrics(trainer, {**export_metrics(report), **latency_metrics(report)})
            directory = Path(report.directory or ".")
            log_files(trainer, [directory / "report.md", directory / "report.json"], tag="export")
        except Exception as err:  # a logger problem must not turn a finished fit into a failure
            log.warning("fitslim Export: the report did not reach the loggers: %s", err)
