"""Lightning ``Pruning``: exact scheduled sparsity, zeros after every step, channel removal, exact resume, DDP."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("lightning", reason="lightning not installed")
pytest.importorskip("torch_pruning", reason="torch-pruning not installed")

import torch
from torch import nn

from fitslim.data import digits
from fitslim.sparsity import prune_count
from lightning_plugins._channels import build_plan
from lightning_plugins._compat import pl
from lightning_plugins.models import torch_model
from lightning_plugins.pruning import Pruning
from lightning_plugins.reference import DigitsClassifier
from tests.lightning_plugins.helpers import CaptureLogger, Crash, Digits, cpu_trainer

# -- helpers -------------------------------------------------------------------------------------------


_trainer = cpu_trainer


def _module(seed: int = 0, **kw: Any) -> DigitsClassifier:
    torch.manual_seed(seed)
    return DigitsClassifier(width=0.5, **kw)


def _masks(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if k.endswith("_mask")}


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].shape == sb[key].shape, key
        assert torch.equal(sa[key], sb[key]), f"{key} differs"


# -- (a) constructor errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sparsity": 1.0}, r"Pruning\(sparsity=...\): got 1.0, outside \[0, 1\)"),
        ({"sparsity": -0.1}, r"Pruning\(sparsity=...\)"),
        ({"start": 0.5, "end": 0.5}, r"Pruning\(end=...\): end=0.5 is not after start=0.5"),
        ({"start": 0.6, "end": 0.2}, r"Pruning\(end=...\)"),
        ({"granularity": "block"}, r"Pruning\(granularity=...\): unknown 'block'"),
        ({"scope": "model"}, r"Pruning\(scope=...\): unknown 'model'"),
        ({"schedule": "linear"}, r"Pruning\(schedule=...\): unknown 'linear'"),
        ({"importance": "l0"}, r"Pruning\(importance=...\): unknown 'l0'"),
        ({"granularity": "2:4", "sparsity": 0.7}, r"Pruning\(sparsity=...\): granularity='2:4' prunes exactly 0.5"),
        ({"frequency": 0}, r"frequency"),
    ],
)
def test_constructor_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Pruning(**kwargs)


def test_constructor_type_errors() -> None:
    with pytest.raises(TypeError, match=r"Pruning\(sparsity=...\)"):
        Pruning(sparsity="half")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Pruning\(include=...\)"):
        Pruning(include=[3])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"Pruning\(schedule=...\)"):
        Pruning(schedule=0.5)  # type: ignore[arg-type]


# -- bad input found on the model, before the first optimizer step -------------------------------------


class _LinearLN(pl.LightningModule):  # type: ignore[name-defined]
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.ln, self.fc2 = nn.Linear(64, 16), nn.LayerNorm(16), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.ln(self.fc1(x.flatten(1))))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class _Reshaped(_LinearLN):
    """fc1's 16 outputs are read as a 4x4 grid: removing any of them breaks the forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln(self.fc1(x.flatten(1)))
        return self.fc2(h.view(-1, 4, 4).transpose(1, 2).reshape(-1, 16))


class _NoWeights(_LinearLN):
    def __init__(self) -> None:
        pl.LightningModule.__init__(self)
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10] * self.scale


@pytest.mark.parametrize(
    ("make", "kwargs", "match"),
    [
        (
            _module,
            {"include": ["nothing.*"]},
            r"Pruning\(include=...\): pattern 'nothing.\*' matches no prunable layer",
        ),
        (_module, {"include": [nn.Conv3d]}, r"Pruning\(include=...\): type Conv3d matches no prunable layer"),
        (_NoWeights, {}, r"has no prunable layer"),
        (_Reshaped, {"granularity": "channel"}, r"removing channels of the group rooted at 'fc1' .* breaks the model"),
        (_module, {"granularity": "channel", "include": ["stem.conv"]}, r"layer 'model.stem.conv' cannot be channel"),
        (
            _module,
            {"granularity": "2:4", "include": ["stem.conv"]},
            r"'model.stem.conv' has 1 input channels, not a multiple of 4",
        ),
        (_module, {"exclude": [nn.Conv2d, nn.Linear]}, r"no prunable layer left"),
    ],
)
def test_model_errors_before_first_step(tmp_path: Path, make: Any, kwargs: dict[str, Any], match: str) -> None:
    module = make()
    before = copy.deepcopy(module.state_dict())
    trainer = _trainer(tmp_path, [Pruning(**kwargs)], epochs=1, batches=2)
    with pytest.raises(ValueError, match=match):
        trainer.fit(module, Digits(batch_size=16))
    assert trainer.global_step == 0
    for key, value in before.items():
        assert torch.equal(module.state_dict()[key], value)


def test_channel_removal_refused_under_spawn_strategy() -> None:
    class _MultiProcessingLauncher:
        pass

    trainer = SimpleNamespace(strategy=SimpleNamespace(launcher=_MultiProcessingLauncher()))
    with pytest.raises(ValueError, match=r"Pruning\(granularity=...\): physically removing channels under a spawn"):
        Pruning(granularity="channel").setup(trainer, _module(), "fit")
    Pruning(granularity="channel", make_permanent=False).setup(trainer, _module(), "fit")
    Pruning(granularity="unstructured").setup(trainer, _module(), "fit")


def test_layer_selection_defaults_and_patterns() -> None:
    from lightning_plugins._masks import select_layers

    module = _module()
    everything = select_layers(module, ["*"], None, channel_defaults=True)
    assert "model.stem.conv" in everything.selected  # named back in by the pattern
    assert "model.head.fc" not in everything.selected  # the head never loses its outputs
    default = select_layers(module, None, None, channel_defaults=True)
    assert default.selected == ["model.block.dw_conv", "model.block.pw_conv", "model.transition.conv"]
    blocks = select_layers(module, ["block"], ["*.dw_conv"], channel_defaults=False)
    assert blocks.selected == ["model.block.pw_conv"]
    typed = select_layers(module, [nn.Linear], None, channel_defaults=False)
    assert typed.selected == ["model.head.fc"]


# -- (b) mask math on a model, against NumPy -----------------------------------------------------------


class _TwoConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(4, 3, 1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.c1 = nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c1(torch.relu(self.bn(self.c0(x))))


def test_l1_and_l2_channel_importance_pick_different_channels() -> None:
    model = _TwoConvs()
    with torch.no_grad():
        model.c0.weight.copy_(
            torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0], [4.0, 4.0, 0.0, 0.0]])[..., None, None]
        )
    model.train()
    plan = build_plan(model, ["c0"], torch.zeros(1, 4, 2, 2), explicit={"c0"})
    assert model.training and model.bn.training  # the trace runs in eval mode and restores the flags
    assert [g.root for g in plan.groups] == ["c0"] and plan.groups[0].layers == ["bn", "c0", "c1"]
    keep_l1 = plan.keep(0.34, "layer", "l1")[0]  # L1 = [4, 3, 8]: channel 1 goes
    keep_l2 = plan.keep(0.34, "layer", "l2")[0]  # L2 = [2, 3, 5.66]: channel 0 goes
    assert keep_l1.tolist() == [True, False, True] and keep_l2.tolist() == [False, True, True]
    masks = dict(zip([p.key for p in plan.params], plan.param_masks([keep_l2]), strict=True))
    assert not masks["c0.weight"][0].any() and masks["c0.weight"][1:].all()
    assert masks["bn.weight"].tolist() == [False, True, True] == masks["bn.bias"].tolist()
    assert not masks["c1.weight"][:, 0].any() and masks["c1.weight"][:, 1:].all()


class SparsityProbe(pl.Callback):  # type: ignore[name-defined]
    """Placed around Pruning: snapshots weights before an update, checks exact counts after, zeros after steps."""

    def __init__(self, cb: Pruning, scope: str) -> None:
        self.cb, self.scope = cb, scope
        self.before: list[np.ndarray] = []
        self.updates: list[tuple[int, float, int]] = []
        self.steps_checked = 0

    def snapshot(self, trainer: Any, pl_module: Any) -> None:
        self.before = [t.detach().numpy().copy() for t in self.cb.masks.tensors()[0]] if self.cb.masks else []

    def check(self, trainer: Any, pl_module: Any) -> None:
        step = trainer.global_step
        schedule = self.cb.schedule.resolve(trainer.estimated_stepping_batches)
        if not schedule.should_update(step):
            return
        target = schedule.sparsity(step)
        masks = [m.numpy() for m in self.cb.masks.tensors()[1]]
        scores = [np.abs(w) for w in self.before]
        if self.scope == "global":
            flat = np.concatenate([s.ravel() for s in scores])
            k = round(target * flat.size)
            keep = np.ones(flat.size, bool)
            keep[np.argsort(flat, kind="stable")[:k]] = False
            np.testing.assert_array_equal(np.concatenate([m.ravel() for m in masks]), keep)
            assert int((~np.concatenate([m.ravel() for m in masks])).sum()) == prune_count(flat.size, target)
        else:
            for m, s in zip(masks, scores, strict=True):
                assert int((~m).sum()) == round(target * s.size)
        self.updates.append((step, target, int(sum((~m).sum() for m in masks))))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        params, masks = self.cb.masks.tensors()
        for p, m in zip(params, masks, strict=True):
            assert torch.all(p[~m] == 0), "a pruned weight is non-zero after the optimizer step"
        self.steps_checked += 1


class _Before(pl.Callback):  # type: ignore[name-defined]
    def __init__(self, probe: SparsityProbe) -> None:
        self.probe = probe

    def on_train_batch_start(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        self.probe.snapshot(trainer, pl_module)


class _After(pl.Callback):  # type: ignore[name-defined]
    def __init__(self, probe: SparsityProbe) -> None:
        self.probe = probe

    def on_train_batch_start(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        self.probe.check(trainer, pl_module)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        self.probe.on_train_batch_end(trainer, pl_module)


# -- (c) end-to-end fits ------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_unstructured_exact_sparsity_every_update_and_zeros_after_every_step(tmp_path: Path, scope: str) -> None:
    pl.seed_everything(0)
    cb = Pruning(sparsity=0.6, scope=scope, start=0.1, end=0.6, frequency=2, make_permanent=False)
    probe = SparsityProbe(cb, scope)
    capture = CaptureLogger()
    trainer = _trainer(tmp_path, [_Before(probe), cb, _After(probe)], epochs=2, batches=10, logger=capture)
    module = _module()
    trainer.fit(module, Digits(batch_size=32))
    schedule = cb.schedule.resolve(20)
    expected_steps = [s for s in range(20) if schedule.should_update(s)]
    assert [u[0] for u in probe.updates] == expected_steps == [2, 4, 6, 8, 10, 12]
    assert probe.updates[-1][1] == pytest.approx(0.6) and probe.steps_checked == 20
    total = sum(m.numel() for m in cb.masks.tensors()[1])
    # the logger received one row per update step, with per-layer and global sparsity
    rows = [(step, m) for step, m in capture.rows if "pruning/sparsity" in m]
    assert [step for step, _ in rows] == expected_steps
    assert "pruning/sparsity/model.head.fc" in rows[-1][1]
    assert trainer.callback_metrics["pruning/sparsity"].item() == pytest.approx(probe.updates[-1][2] / total)
    # make_permanent=False: masks stay as bool buffers in the state_dict
    assert all(v.dtype == torch.bool for v in _masks(module).values()) and len(_masks(module)) == 5


def test_make_permanent_folds_masks_into_plain_weights(tmp_path: Path) -> None:
    pl.seed_everything(0)
    cb = Pruning(sparsity=0.5, end=0.5, frequency=2)
    module = _module()
    _trainer(tmp_path, [cb], epochs=1, batches=10).fit(module, Digits(batch_size=32))
    assert not _masks(module) and cb.masks is None
    weights = [m.weight for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros == round(0.5 * sum(w.numel() for w in weights))
    fresh = DigitsClassifier(width=0.5)
    fresh.load_state_dict(module.state_dict())  # a plain state_dict: loads into the user's own class


def test_two_four_pattern(tmp_path: Path) -> None:
    pl.seed_everything(0)
    cb = Pruning(granularity="2:4", schedule="constant", start_step=3, frequency=4, make_permanent=False)
    module = _module()
    _trainer(tmp_path, [cb], epochs=1, batches=10).fit(module, Digits(batch_size=32))
    pruned = {p.layer for p in cb.masks.params}
    assert pruned == {"model.block.pw_conv", "model.transition.conv", "model.head.fc"}  # inputs 8, 8, 16
    for layer in pruned:
        sub = module.get_submodule(layer)
        groups = sub.weight_mask.movedim(1, -1).reshape(-1, 4)
        assert torch.all(groups.sum(-1) == 2), layer
        w = sub.weight.detach().movedim(1, -1).reshape(-1, 4)
        assert torch.all(w[~groups] == 0) and torch.all((w != 0).sum(-1) <= 2)


@pytest.mark.slow
def test_channel_masks_then_removal_and_optimizer_rebind(tmp_path: Path) -> None:
    pl.seed_everything(0)
    # width 1 (stem 16, transition 32 channels); the stem group too: the first conv is named explicitly
    include = ["stem.conv", "block.*", "transition.conv"]
    cb = Pruning(sparsity=0.5, granularity="channel", scope="layer", end=0.5, frequency=2, include=include)
    seen: dict[str, Any] = {}

    class Watch(pl.Callback):  # type: ignore[name-defined]
        def on_train_batch_start(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            if cb.masks is not None and trainer.global_step == 8:
                mask = pl_module.model.transition.conv.weight_mask
                seen["masked_channels"] = int((~mask.flatten(1).any(1)).sum())
                seen["bn_zero"] = int((pl_module.model.transition.bn.weight == 0).sum())
                seen["fc_in_zero"] = int((~pl_module.model.head.fc.weight_mask.any(0)).sum())

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, *args: Any) -> None:
            seen.setdefault("loss", []).append((trainer.global_step, float(outputs["loss"])))

    torch.manual_seed(0)
    module = DigitsClassifier(width=1.0, lr=5e-3)
    trainer = _trainer(tmp_path, [cb, Watch()], epochs=4, batches=10)
    trainer.fit(module, Digits(batch_size=32))
    # while masking (step 8, target 0.5 * (1 - (1 - 8/20)^3) = 0.392): whole channels masked in every member
    assert seen["masked_channels"] == round(0.392 * 32) == seen["bn_zero"] == seen["fc_in_zero"]
    m = module.model
    assert m.transition.conv.weight.shape == (16, 8, 3, 3) and m.transition.bn.running_mean.shape == (16,)
    assert m.head.fc.weight.shape == (10, 16)
    assert m.stem.conv.weight.shape == (8, 1, 3, 3) and m.block.dw_conv.weight.shape == (8, 1, 3, 3)
    assert m.block.dw_conv.groups == 8 and m.block.pw_conv.weight.shape == (8, 8, 1, 1)
    assert sorted(cb.structure) == [
        "model.block.dw_bn", "model.block.dw_conv", "model.block.pw_bn", "model.block.pw_conv", "model.head.fc",
        "model.stem.bn", "model.stem.conv", "model.transition.bn", "model.transition.conv",
    ]  # fmt: skip
    assert len(cb.structure["model.transition.conv"]["out"]) == 16
    assert cb.structure["model.transition.conv"]["in"] == cb.structure["model.stem.conv"]["out"]
    assert not _masks(module)
    # the optimizer holds exactly the new tensors, with state sliced to their shapes
    opt = trainer.optimizers[0]
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in module.parameters()}
    for p in module.parameters():
        assert opt.state[p]["exp_avg"].shape == p.shape
    # training went on after the removal (step 20) and the loss kept falling
    after = [loss for step, loss in seen["loss"] if step > 20]
    assert np.mean(after[-10:]) < np.mean(after[:10])
    assert module(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


# -- (d) crash-and-resume equality --------------------------------------------------------------------


def _resume_case(tmp_path: Path, make_cb: Any, crash_epoch: int, epochs: int = 4) -> tuple[nn.Module, nn.Module]:
    ckpt_dir = tmp_path / "ckpt"

    def checkpoint() -> Any:
        return pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=-1, every_n_epochs=1)

    pl.seed_everything(0)
    full = _module()
    _trainer(tmp_path / "a", [make_cb()], epochs=epochs).fit(full, Digits(batch_size=32))
    pl.seed_everything(0)
    crashed = _module()
    with pytest.raises(RuntimeError, match="simulated crash"):
        _trainer(tmp_path / "b", [make_cb(), checkpoint(), Crash(crash_epoch)], epochs=epochs,
                 enable_checkpointing=True).fit(crashed, Digits(batch_size=32))  # fmt: skip
    pl.seed_everything(1)  # a different init and RNG state: everything must come from the checkpoint
    resumed = _module(seed=1)
    _trainer(tmp_path / "c", [make_cb(), checkpoint()], epochs=epochs, enable_checkpointing=True).fit(
        resumed, Digits(batch_size=32), ckpt_path=str(ckpt_dir / "last.ckpt")
    )
    return full, resumed


@pytest.mark.slow
def test_resume_gives_same_masks_and_weights(tmp_path: Path) -> None:
    def make() -> Pruning:
        return Pruning(sparsity=0.75, start=0.0, end=0.8, frequency=3, make_permanent=False)

    full, resumed = _resume_case(tmp_path, make, crash_epoch=2)
    masks = _masks(full)
    assert masks and sum(int((~m).sum()) for m in masks.values()) == round(
        0.75 * sum(m.numel() for m in masks.values())
    )
    _assert_same_state(full, resumed)


@pytest.mark.slow
def test_resume_after_channel_removal_rebuilds_structure(tmp_path: Path) -> None:
    def make() -> Pruning:
        return Pruning(sparsity=0.5, granularity="channel", start=0.0, end=0.4, frequency=2)

    full, resumed = _resume_case(tmp_path, make, crash_epoch=3)  # removal at step 13 (epoch 1), crash in epoch 3
    assert full.model.transition.conv.weight.shape[0] == 8
    _assert_same_state(full, resumed)
    # and a checkpoint of the channel-pruned model loads into fresh modules outside fit
    ckpt = tmp_path / "ckpt" / "last.ckpt"
    fresh = Pruning.restore(DigitsClassifier(width=0.5), ckpt)
    _assert_same_state(resumed, fresh)
    plain = Pruning.restore(torch_model("digits_cnn", width=0.5), ckpt, prefix="model.")
    x = torch.from_numpy(digits().x_test[:16])
    torch.testing.assert_close(plain.eval()(x), resumed.eval()(x), rtol=0, atol=0)


@pytest.mark.slow
def test_restore_of_masking_checkpoint(tmp_path: Path) -> None:
    pl.seed_everything(0)
    cb = Pruning(sparsity=0.5, granularity="channel", end=1.0, frequency=2, make_permanent=False)
    module = _module()
    trainer = _trainer(tmp_path, [cb], epochs=1, batches=6)
    trainer.fit(module, Digits(batch_size=32))
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    fresh = Pruning.restore(DigitsClassifier(width=0.5), tmp_path / "m.ckpt")
    _assert_same_state(module, fresh)
    folded = Pruning.restore(DigitsClassifier(width=0.5), tmp_path / "m.ckpt", make_permanent=True)
    assert not _masks(folded) and (folded.model.transition.conv.weight == 0).flatten(1).all(1).sum() == 8


# -- (e) DDP ------------------------------------------------------------------------------------------


class DumpMasks(pl.Callback):  # type: ignore[name-defined]
    def __init__(self, directory: str) -> None:
        self.directory = directory

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        state = {k: v.clone() for k, v in pl_module.state_dict().items()}
        torch.save(state, Path(self.directory) / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_ddp_spawn_masks_identical_on_both_ranks(tmp_path: Path) -> None:
    pl.seed_everything(0)
    cb = Pruning(sparsity=0.5, end=0.6, frequency=2, make_permanent=False)
    trainer = _trainer(tmp_path, [cb, DumpMasks(str(tmp_path))], epochs=2, batches=6, strategy="ddp_spawn", devices=2)
    module = _module()
    trainer.fit(module, Digits(batch_size=16))
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    masks = [k for k in r0 if k.endswith("_mask")]
    assert len(masks) == 5
    for key in r0:  # BN running stats see each rank's own last batch (DDP re-broadcasts them each forward)
        if "running_" not in key:
            assert torch.equal(r0[key], r1[key]), key
    pruned = sum(int((~r0[k]).sum()) for k in masks)
    assert pruned == round(0.5 * sum(r0[k].numel() for k in masks))
    # the parent process received the trained (pruned) weights
    assert torch.equal(module.model.head.fc.weight, r0["model.head.fc.weight"])


# -- namespaces and Export ----------------------------------------------------------------------------


@pytest.mark.slow
def test_pytorch_lightning_namespace(tmp_path: Path) -> None:
    ptl = pytest.importorskip("pytorch_lightning")

    class Module(ptl.LightningModule):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.model = torch_model("digits_cnn", width=0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self) -> Any:
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    ptl.seed_everything(0)
    module = Module()
    cb = Pruning(sparsity=0.5, granularity="channel", end=0.5, frequency=2)
    trainer = ptl.Trainer(max_epochs=1, limit_train_batches=8, accelerator="cpu", devices=1, logger=False,
                          enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                          callbacks=[cb], default_root_dir=str(tmp_path))  # fmt: skip
    trainer.fit(module, train_dataloaders=Digits(batch_size=32).train_dataloader())
    assert module.model.transition.conv.weight.shape[0] == 8
    assert {id(p) for p in trainer.optimizers[0].param_groups[0]["params"]} == {id(p) for p in module.parameters()}


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["channel", "unstructured"])
def test_export_after_pruning_carries_smaller_or_sparse_model(tmp_path: Path, granularity: str) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    from lightning_plugins import Export

    pl.seed_everything(0)
    module = _module()
    cb = Pruning(sparsity=0.5, granularity=granularity, end=0.5, frequency=2)
    export = Export(targets=["onnx"], directory=tmp_path / "exports", calibration_batches=2)
    _trainer(tmp_path, [cb, export], epochs=1, batches=8).fit(module, Digits(batch_size=32))
    assert export.report is not None and export.report.ok, export.report
    graph = onnx.load(str(tmp_path / "exports" / "model.onnx")).graph
    weights = [numpy_helper.to_array(t) for t in graph.initializer]
    if granularity == "channel":
        shapes = {w.shape for w in weights}
        assert (8, 8, 3, 3) in shapes and (16, 8, 3, 3) not in shapes
        assert any(w.shape in ((10, 8), (8, 10)) for w in weights)
    else:
        total = sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear))
        zeros = sum(int((w == 0).sum()) for w in weights if w.ndim >= 2)
        assert zeros >= round(0.5 * total)


def test_channel_round_to_keeps_a_multiple_of_eight(tmp_path: Path) -> None:
    pl.seed_everything(0)
    # 60% of the transition conv's 32 channels would leave 13; round_to=8 keeps 16 (as on the Keras side)
    cb = Pruning(sparsity=0.6, granularity="channel", end=0.5, frequency=2, round_to=8)
    module = DigitsClassifier(width=1.0)
    cpu_trainer(tmp_path, [cb], epochs=2, batches=8).fit(module, Digits(batch_size=32))
    assert module.model.transition.conv.out_channels == 16
    assert module.model.head.fc.in_features == 16
