"""The Lightning callbacks on the torch zoo: every family in a short ``Trainer.fit`` per callback.

Each (case, callback) cell fits the case's model for a few steps on its own inputs with random labels and
checks what the callback promises: unstructured sparsity reached exactly; channels removed mid-fit with the
model's own forward and the next training steps running on the smaller model, fewer parameters, and a
verified ONNX export; QAT then ``Export()`` at its default precision giving verified int8 artifacts from the
learned spec; distillation changing the loss. A case that cannot be handled must be refused before the first
optimizer step, naming the layer (listed in ``_REFUSED``). ``make test`` runs the cells in ``_CI``;
``FITSLIM_ZOO=full`` runs every case and column and records the support table's cells.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.zoo import (
    ZooCase,
    assert_listed_mismatches_bounded,
    cell_detail,
    check_expected_mismatch,
    full_zoo,
    select,
)
from tests.zoo.torch_zoo import CASES

pytestmark = pytest.mark.zoo

pl = pytest.importorskip("lightning.pytorch")

from lightning_plugins import Distillation, Export, Pruning, QuantizationAware  # noqa: E402
from lightning_plugins._masks import prunable_layers  # noqa: E402
from lightning_plugins.quantization import find_layers  # noqa: E402

COLUMNS = ("pruning unstructured", "pruning channel 50%", "qat+export int8", "distillation")
#: what make test runs: the architectures the channel rules were written for (grouped convs, LayerNorm,
#: attention heads, a refusal) and one QAT/distillation cell
_CI = {
    ("user_grouped", "pruning unstructured"),
    ("user_grouped", "pruning channel 50%"),
    ("hf_regnet", "pruning channel 50%"),
    ("hf_vit", "pruning channel 50%"),
    ("hf_convnext", "pruning channel 50%"),
    ("user_attention", "pruning channel 50%"),
    ("hf_vit", "qat+export int8"),
    ("hf_vit", "distillation"),
}
#: cells refused before the first step, with the layer the refusal must name
_REFUSED = {("user_attention", "pruning channel 50%"): "model.qkv"}
#: channel cells that also export the pruned model in make test (ONNX export of the larger HF models is slow)
_CI_EXPORT = {"user_grouped", "hf_vit"}
#: cases whose int8 artifact after the 4-step QAT fit of random weights is a ``mismatch`` against the fake-quant
#: model (their near-random outputs spread less than int8 rounding amplified through the depth), kept and located,
#: and no worse than the cell's figures in docs/zoo-support.md allow (``tests.zoo.check_expected_mismatch``); the
#: trained families of benchmarks/zoo_lightning.py verify
_QAT_RANDOM_MISMATCH = {"hf_mobilenet_v2", "hf_mobilevit"}
_STEPS = 4
_BATCH = 4


class ZooModule(pl.LightningModule):  # type: ignore[misc]
    """A user's module around a zoo model: cross-entropy on ``(*inputs, label)`` batches, AdamW."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(*x)
        return out

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        *x, y = batch
        return F.cross_entropy(self(*x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class ParamCount(pl.Callback):  # type: ignore[misc]
    """Records the module's parameter count after every training batch."""

    def __init__(self) -> None:
        self.counts: list[int] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        self.counts.append(sum(p.numel() for p in pl_module.parameters()))


def _loader(case: ZooCase, classes: int) -> DataLoader:
    x = case.inputs(_BATCH * _STEPS, 0)
    xs = [torch.from_numpy(a) for a in (x if isinstance(x, tuple) else (x,))]
    y = torch.randint(0, classes, (len(xs[0]),), generator=torch.Generator().manual_seed(0))
    return DataLoader(TensorDataset(*xs, y), batch_size=_BATCH)


def _trainer(root: Path, callbacks: list[Any]) -> Any:
    return pl.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root), callbacks=callbacks,
    )  # fmt: skip


def _cells() -> list[Any]:
    out = []
    for case in select(CASES) if full_zoo() else CASES.values():
        for column in COLUMNS:
            if full_zoo() or (case.name, column) in _CI:
                out.append(pytest.param(case.name, column, id=f"{case.name}-{column}"))
    return out


def _forward(module: nn.Module, loader: DataLoader) -> torch.Tensor:
    *x, _ = next(iter(loader))
    module.eval()
    with torch.no_grad():
        out: torch.Tensor = module(*x)
    return out


def _fit_pruning_unstructured(case: ZooCase, module: ZooModule, loader: DataLoader, root: Path) -> str:
    cb = Pruning(sparsity=0.5, start=0.0, end=0.5)
    _trainer(root, [cb]).fit(module, loader)
    weights = [m.weight for _, m in prunable_layers(module)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    total = sum(w.numel() for w in weights)
    assert zeros == round(0.5 * total), (zeros, total)  # one global threshold: the target is met exactly
    assert torch.isfinite(_forward(module, loader)).all()
    return f"sparsity {zeros / total:.2f}"


def _fit_pruning_channel(case: ZooCase, module: ZooModule, loader: DataLoader, root: Path) -> str:
    before = sum(p.numel() for p in module.parameters())
    expected = _forward(module, loader).shape
    counts = ParamCount()
    export = Export(targets=["onnx"], directory=root / "exports", calibration_batches=2)
    exporting = full_zoo() or case.name in _CI_EXPORT
    cb = Pruning(sparsity=0.5, granularity="channel", start=0.0, end=0.5)
    _trainer(root, [cb, counts, *([export] if exporting else [])]).fit(module, loader)
    after = sum(p.numel() for p in module.parameters())
    assert after < before
    # removed mid-fit at the schedule's end: the last training steps ran on the smaller model
    assert counts.counts[0] == before and counts.counts[-2:] == [after, after], counts.counts
    out = _forward(module, loader)
    assert out.shape == expected and torch.isfinite(out).all()  # the model's own forward, no reshape crash
    detail = f"params {before:,} -> {after:,} ({after / before:.2f}x)"
    if not exporting:
        return detail
    assert export.report is not None
    row = export.report.results[0]
    assert (row.precision, row.status) == ("fp32", "ok"), row  # precision="auto" without a QuantSpec: fp32
    return f"{detail}; onnx fp32 verified, max rel error {row.max_rel_error:.1e}"


def _fit_qat_export(case: ZooCase, module: ZooModule, loader: DataLoader, root: Path) -> str | tuple[str, str]:
    qat = QuantizationAware(start=0.0, calibration_steps=1)
    export = Export(targets=["tensorrt"], directory=root / "exports", calibration_batches=2)  # default "auto"
    _trainer(root, [qat, export]).fit(module, loader)
    assert qat.quant_spec is not None
    quantizable = {n for n, _, _ in find_layers(module)}
    assert {layer.name for layer in qat.quant_spec} == quantizable  # every Conv/Linear carries learned scales
    assert export.report is not None
    row = export.report.results[0]
    assert row.precision == "int8", row  # precision="auto" after QAT: int8 from the learned spec
    detail = f"{len(quantizable)} layers; tensorrt int8 Q/DQ {row.status}"
    if not row.ok and case.name in _QAT_RANDOM_MISMATCH:
        problems = check_expected_mismatch(row, "torch", case.name, "qat+export int8", root / "exports")
        assert not problems, problems
        return "mismatch", f"{cell_detail(row)}; {detail}"  # figures first: tests.zoo.Record.parse reads them
    assert row.status == "ok", f"{detail}: {row.reason}"
    agreement = "" if row.top1_agreement is None else f", top-1 agreement {row.top1_agreement:.2f}"
    return detail + agreement


def _fit_distillation(case: ZooCase, module: ZooModule, loader: DataLoader, root: Path) -> str:
    teacher = copy.deepcopy(module.model).eval()
    with torch.no_grad():  # a teacher that disagrees with the student, so the distillation term is not zero
        gen = torch.Generator().manual_seed(1)
        for p in teacher.parameters():
            p.add_(0.2 * p.std().nan_to_num() * torch.randn(p.shape, generator=gen))
    text = case.kind == "text"
    cb = Distillation(teacher, temperature=4.0, alpha=0.7, input_fn=(lambda b: tuple(b[:-1])) if text else None)
    trainer = _trainer(root, [cb])
    trainer.fit(module, loader)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    kd, task, combined = (metrics.get(f"{k}_loss_epoch", float("nan")) for k in ("kd", "task", "combined"))
    assert np.isfinite(kd) and kd > 0, metrics  # the teacher's term entered the loss backward saw
    assert combined == pytest.approx(0.3 * task + 0.7 * kd, rel=1e-4), metrics
    return f"task loss {task:.3g}, kd loss {kd:.3g}, combined {combined:.3g}"


_FITS: dict[str, Callable[[ZooCase, ZooModule, DataLoader, Path], str | tuple[str, str]]] = {
    "pruning unstructured": _fit_pruning_unstructured,
    "pruning channel 50%": _fit_pruning_channel,
    "qat+export int8": _fit_qat_export,
    "distillation": _fit_distillation,
}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "column"), _cells())
def test_lightning_callback_on_zoo(name: str, column: str, tmp_path: Path, zoo_record: Any) -> None:
    case = CASES[name]
    torch.manual_seed(0)
    model = case.build().train()
    module = ZooModule(model)
    loader = _loader(case, int(_forward(module, _loader(case, 2)).shape[-1]))
    module.train()
    refused = _REFUSED.get((name, column))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    try:
        detail = _FITS[column](case, module, loader, tmp_path)
    except ValueError as err:
        if refused is None:
            zoo_record("torch", name, column, "failed", f"{type(err).__name__}: {err}")
            raise
        # refused before the first optimizer step, naming the layer; the weights are untouched
        assert f"'{refused}" in str(err) or f"'model.{refused}" in str(err), err
        after = module.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before if k in after)
        zoo_record("torch", name, column, "refused", str(err))
        return
    except Exception as err:
        zoo_record("torch", name, column, "failed", f"{type(err).__name__}: {err}")
        raise
    assert refused is None, f"{name} / {column} was expected to be refused naming {refused!r}"
    status, text = detail if isinstance(detail, tuple) else ("ok", detail)
    zoo_record("torch", name, column, status, text)


def test_zoo_cells_cover_every_ci_family() -> None:
    families = {CASES[n].family for n, _ in _CI}
    assert {"regnet", "vit", "convnext", "user_grouped", "user_attention"} <= families
    assert set(_REFUSED) <= {(n, c) for n in CASES for c in COLUMNS}
    assert os.environ.get("FITSLIM_ZOO", "") != "full" or len(_cells()) == len(select(CASES)) * len(COLUMNS)


def test_every_listed_qat_mismatch_has_a_recorded_bound() -> None:
    """Each cell of ``_QAT_RANDOM_MISMATCH`` has figures in docs/zoo-support.md under the column this file records."""
    assert_listed_mismatches_bounded("torch", _QAT_RANDOM_MISMATCH, CASES)


def test_export_precision_auto_resolves_from_the_quant_spec() -> None:
    from exporters.core.settings import ExportSettings
    from fitslim.quantspec import LayerQuant, QuantSpec
    from fitslim.recipe import Recipe

    spec = QuantSpec([LayerQuant("fc", "linear", (2, 3), [0.1, 0.1], 0.05)], source="qat")
    assert Export().settings.precision == "auto"
    assert ExportSettings().resolve_precision(None) == "fp32"
    assert ExportSettings().resolve_precision(spec) == "int8"  # a QAT callback left one
    assert ExportSettings(quant_spec=spec).resolve_precision(None) == "int8"  # given explicitly
    for explicit in ("fp32", "fp16", "int8"):  # explicit values keep their meaning
        assert ExportSettings(precision=explicit).resolve_precision(spec) == explicit
        assert ExportSettings(precision=explicit).resolve_precision(None) == explicit
    assert Recipe.from_dict({"export": {"targets": ["onnx"]}}).export["precision"] == "auto"
    with pytest.raises(ValueError, match=r"Export\(precision=...\): unknown 'int4'.*'auto'"):
        ExportSettings(precision="int4")


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed"])
def test_mixed_precision_on_cuda_keeps_masks_exact_and_exports(precision: str, tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    case = CASES["user_grouped"]
    module = ZooModule(case.build().train())
    loader = _loader(case, 10)
    pruning = Pruning(sparsity=0.5, start=0.0, end=0.5, make_permanent=False)
    qat = QuantizationAware(start=0.5, calibration_steps=1)
    export = Export(targets=["tensorrt"], directory=tmp_path / "exports", calibration_batches=2)
    seen: list[bool] = []

    class MasksHold(pl.Callback):  # type: ignore[misc]
        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            masks = pruning.masks
            assert masks is not None
            params, bufs = masks.tensors()
            exact = [bool((p[~b] == 0).all()) and p.dtype == torch.float32 for p, b in zip(params, bufs, strict=True)]
            seen.append(all(exact))

    trainer = pl.Trainer(
        max_epochs=2, accelerator="gpu", devices=1, precision=precision, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
        callbacks=[pruning, MasksHold(), qat, export],
    )  # fmt: skip
    trainer.fit(module, loader)
    assert seen and all(seen)  # pruned weights exactly zero (fp32 master weights) after every step
    assert qat.quant_spec is not None and export.report is not None
    row = export.report.results[0]
    assert (row.precision, row.status) == ("int8", "ok"), row  # a CUDA-trained model's int8 export verifies


@pytest.fixture(scope="module")
def vit_dense_accuracy() -> float:
    if not full_zoo():
        pytest.skip("a 12-epoch fit per variant: runs under FITSLIM_ZOO=full (make zoo)")
    from benchmarks.zoo_lightning import run_variant

    return float(np.mean([run_variant("vit", "dense", epochs=12, size=32, seed=s).accuracy for s in (0, 1)]))


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["unstructured 50%", "channel 50%", "qat int8"])
def test_compressed_vit_stays_within_two_points_of_dense(
    variant: str, vit_dense_accuracy: float, zoo_record: Any
) -> None:
    """One row of the accuracy table (benchmarks/zoo_lightning.py has the others): HF ViT on digits, 2 seeds."""
    from benchmarks.zoo_lightning import run_variant

    acc = float(np.mean([run_variant("vit", variant, epochs=12, size=32, seed=s).accuracy for s in (0, 1)]))
    delta = 100 * (acc - vit_dense_accuracy)
    zoo_record("torch", "hf_vit", f"accuracy {variant}", "ok" if delta >= -2.0 else "mismatch",
               f"{100 * acc:.1f}% vs dense {100 * vit_dense_accuracy:.1f}% ({delta:+.1f} pt)")  # fmt: skip
    assert delta >= -2.0, f"{variant}: {100 * acc:.1f}% vs dense {100 * vit_dense_accuracy:.1f}%"


@pytest.mark.parametrize("with_mask", [False, True], ids=["ids-only", "ids-and-mask"])
def test_export_callback_keeps_token_ids_of_a_text_model(with_mask: bool, tmp_path: Path) -> None:
    """BERT batches ``(input_ids, attention_mask, label)``: the Export callback keeps the ids int64 and, with
    ``input_fn``, both inputs; the ONNX artifact takes them with their own dtypes and verifies."""
    import onnx

    case = CASES["hf_bert"]
    module = ZooModule(case.build())
    loader = _loader(case, classes=3)
    input_fn = (lambda b: tuple(b[:-1])) if with_mask else None
    export = Export(targets=["onnx"], directory=tmp_path / "exports", calibration_batches=2, input_fn=input_fn)
    _trainer(tmp_path, [export]).fit(module, loader)
    assert export.report is not None
    row = export.report.results[0]
    assert (row.precision, row.status) == ("fp32", "ok"), row.reason
    graph = onnx.load(str(tmp_path / "exports" / "model.onnx")).graph
    dtypes = [i.type.tensor_type.elem_type for i in graph.input]
    assert dtypes == [onnx.TensorProto.INT64] * (2 if with_mask else 1), dtypes
