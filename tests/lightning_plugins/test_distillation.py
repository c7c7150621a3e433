"""Lightning ``Distillation``: the loss really replaces training_step's, teacher frozen, resume, DDP, namespaces."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("lightning", reason="lightning not installed")

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from fitslim.data import digits
from fitslim.distill import combined_loss_reference, kd_loss_reference, log_softmax_reference
from lightning_plugins import Export
from lightning_plugins._compat import pl
from lightning_plugins.distillation import Distillation, _make_adapter, kd_loss
from lightning_plugins.models import torch_model
from lightning_plugins.reference import DigitsClassifier

# transition.conv: student (N, 16, 4, 4) vs teacher (N, 32, 4, 4) -> a 1x1 conv adapter;
# head.fc: (N, 10) on both sides -> compared directly, no adapter.
FEATURES = {"model.transition.conv": "transition.conv", "model.head.fc": "head.fc"}


# --------------------------------------------------------------------------------------------------
# Data, models and helper callbacks (module level: ddp_spawn pickles them)
# --------------------------------------------------------------------------------------------------


class _EpochShuffle(Sampler[int]):
    """A shuffle that depends only on (seed, epoch), so a resumed run sees the same order."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist())

    def __len__(self) -> int:
        return self.n


class _DictDataset(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixels": self.x[i], "label": self.y[i]}


class _Data(pl.LightningDataModule):  # type: ignore[name-defined]
    def __init__(
        self, batch_size: int = 32, labels: np.ndarray | None = None, shuffle: bool = True, dict_batches: bool = False
    ) -> None:
        super().__init__()
        d = digits(size=8, layout="NCHW")
        self.x = torch.from_numpy(d.x_train)
        self.y = torch.from_numpy(d.y_train if labels is None else labels)
        self.batch_size, self.shuffle, self.dict_batches = batch_size, shuffle, dict_batches

    def train_dataloader(self) -> DataLoader:
        ds: Dataset[Any] = _DictDataset(self.x, self.y) if self.dict_batches else TensorDataset(self.x, self.y)
        sampler = _EpochShuffle(len(self.x)) if self.shuffle else None
        return DataLoader(ds, batch_size=self.batch_size, sampler=sampler)


class _DictStudent(DigitsClassifier):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch["pixels"]), batch["label"])


class _ManualStudent(DigitsClassifier):
    def __init__(self) -> None:
        super().__init__(width=0.5)
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        opt = self.optimizers()
        opt.zero_grad()
        self.manual_backward(F.cross_entropy(self(x), y))
        opt.step()


class _BypassStudent(DigitsClassifier):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.model(x), y)  # never calls self(x): no logits for the hook


class _Crash(pl.Callback):  # type: ignore[name-defined]
    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.at_step:
            raise RuntimeError(f"simulated crash at step {self.at_step}")


class _DumpPerRank(pl.Callback):  # type: ignore[name-defined]
    """Writes what each DDP rank ended with, so the parent process can compare ranks."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.first_inputs: list[float] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.first_inputs.append(float(batch[0].sum()))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        cb = next(c for c in trainer.callbacks if isinstance(c, Distillation))
        torch.save(
            {
                "adapters": {k: copy.deepcopy(a.state_dict()) for k, a in cb.adapters.items()},
                # parameters only: BatchNorm running statistics are per rank in DDP (no SyncBatchNorm)
                "student": {k: v.detach().clone() for k, v in pl_module.named_parameters()},
                "inputs": self.first_inputs,
                "ddp_wrapped": sum(p.numel() for p in trainer.strategy.model.parameters()),
                "student_params": sum(p.numel() for p in pl_module.parameters()),
                "groups": [len(g["params"]) for g in trainer.optimizers[0].param_groups],
                "teacher_eval": cb.teacher is not None and not cb.teacher.training,
            },
            self.directory / f"rank{trainer.global_rank}.pt",
        )


class _Probe(pl.Callback):  # type: ignore[name-defined]
    """Computes the expected combined loss of each step independently (NumPy reference), and records what
    Lightning really backpropagated (``on_before_backward``)."""

    def __init__(self, teacher: nn.Module, temperature: float, alpha: float, features: dict[str, str]) -> None:
        self.teacher, self.temperature, self.alpha, self.features = teacher, temperature, alpha, features
        self.expected: list[float] = []
        self.seen: list[float] = []
        self.kd: list[float] = []

    @torch.no_grad()
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        cb = next(c for c in trainer.callbacks if isinstance(c, Distillation))
        x, y = batch
        saved = {k: v.clone() for k, v in pl_module.state_dict().items()}  # BN running stats
        feats: dict[tuple[str, str], torch.Tensor] = {}
        handles = [
            pl_module.get_submodule(s).register_forward_hook(lambda m, a, o, s=s: feats.__setitem__(("s", s), o))
            for s in self.features
        ] + [
            self.teacher.get_submodule(t).register_forward_hook(lambda m, a, o, s=s: feats.__setitem__(("t", s), o))
            for s, t in self.features.items()
        ]
        try:
            student = pl_module.model(x).double().numpy()  # train mode, as in training_step
            teacher = self.teacher(x).double().numpy()
        finally:
            for h in handles:
                h.remove()
            pl_module.load_state_dict(saved)
        task = -log_softmax_reference(student)[np.arange(len(y)), y.numpy()].mean()
        kd = kd_loss_reference(student, teacher, self.temperature)
        self.kd.append(float(kd))
        if self.features and not cb.adapters:
            self.expected.append(float("nan"))  # the adapter does not exist before the first step
            return
        feature_losses = []
        for s in self.features:
            adapter = cb.adapters.get(s)
            mapped = adapter(feats[("s", s)]) if adapter is not None else feats[("s", s)]
            feature_losses.append(float(((mapped.double() - feats[("t", s)].double()) ** 2).mean()))
        self.expected.append(float(combined_loss_reference(task, kd, self.alpha, feature_losses)))

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        self.seen.append(float(loss.detach()))


def _trainer(tmp_path: Path, callbacks: list[Any], trainer_cls: Any = None, **kw: Any) -> Any:
    options: dict[str, Any] = {
        "max_epochs": 1,
        "limit_train_batches": 4,
        "limit_val_batches": 0,
        "num_sanity_val_steps": 0,
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "deterministic": True,
        "log_every_n_steps": 1,
        "default_root_dir": str(tmp_path),
    }
    options.update(kw)
    return (trainer_cls or pl.Trainer)(callbacks=callbacks, **options)


def _student(seed: int = 0, cls: type = DigitsClassifier, **kw: Any) -> Any:
    torch.manual_seed(seed)
    return cls(**kw) if cls is _ManualStudent else cls(width=0.5, **kw)


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_equal_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different


def _assert_restored(module: nn.Module, teacher: nn.Module) -> None:
    assert "training_step" not in module.__dict__
    hooked = [n for n, m in [*module.named_modules(), *teacher.named_modules()] if m._forward_hooks]
    assert not hooked, hooked


@pytest.fixture()
def teacher(trained_torch_digits: nn.Module) -> nn.Module:
    """A trained wider teacher (the width-1.0 fixture CNN; the students are width 0.5), a private copy."""
    return copy.deepcopy(trained_torch_digits).eval()


# --------------------------------------------------------------------------------------------------
# (a) constructor errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"temperature": 0.0}, ValueError, r"Distillation\(temperature=...\): must be > 0"),
        ({"temperature": -1}, ValueError, r"Distillation\(temperature=...\)"),
        ({"alpha": 1.5}, ValueError, r"Distillation\(alpha=...\): must be in \[0, 1\]"),
        ({"alpha": -0.01}, ValueError, r"Distillation\(alpha=...\)"),
        ({"loss": "ce"}, ValueError, r"Distillation\(loss=...\): unknown 'ce'"),
        ({"feature_weight": -1}, ValueError, r"Distillation\(feature_weight=...\)"),
        ({"features": ["stem"]}, TypeError, r"Distillation\(features=...\): expected a mapping"),
        ({"input_fn": "x"}, TypeError, r"Distillation\(input_fn=...\): expected a callable"),
        ({"output_fn": 1}, TypeError, r"Distillation\(output_fn=...\)"),
        ({"teacher": 42}, TypeError, r"Distillation\(teacher=...\): expected a torch.nn.Module or a checkpoint"),
        ({"teacher": "teacher.ckpt"}, ValueError, r"Distillation\(teacher='teacher.ckpt'\): .*needs loader="),
    ],
)
def test_constructor_errors(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    kwargs = {"teacher": nn.Linear(2, 2), **kwargs}
    with pytest.raises(error, match=match):
        Distillation(**kwargs)


# --------------------------------------------------------------------------------------------------
# (b) the loss math against the NumPy reference and the analytic gradient
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.5, 1.0, 4.0, 10.0])
def test_kd_loss_matches_reference_and_gradient(temperature: float) -> None:
    gen = torch.Generator().manual_seed(0)
    s = (torch.randn(6, 10, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    t = torch.randn(6, 10, generator=gen, dtype=torch.float64) * 3
    loss = kd_loss(s, t, temperature)
    assert float(loss.detach()) == pytest.approx(
        float(kd_loss_reference(s.detach().numpy(), t.numpy(), temperature)), rel=1e-12
    )
    # d/ds [T² KL(p_t || p_s)] averaged over N = T (softmax(s/T) - softmax(t/T)) / N: the T² factor makes it O(T).
    loss.backward()
    expected = temperature * (torch.softmax(s.detach() / temperature, 1) - torch.softmax(t / temperature, 1)) / 6
    torch.testing.assert_close(s.grad, expected, rtol=1e-10, atol=1e-12)
    # float32 and half inputs: computed in (at least) float32, same value.
    f32 = kd_loss(s.detach().float(), t.float(), temperature)
    assert f32.dtype == torch.float32 and float(f32) == pytest.approx(float(loss.detach()), rel=1e-5)
    assert kd_loss(s.detach().bfloat16(), t.bfloat16(), temperature).dtype == torch.float32
    mse = kd_loss(s.detach(), t, temperature, loss="mse")
    assert float(mse) == pytest.approx(float(((s.detach() - t) ** 2).mean()), rel=1e-14)
    reference_mse = kd_loss_reference(s.detach().numpy(), t.numpy(), temperature, loss="mse")
    assert float(mse) == pytest.approx(float(reference_mse), rel=1e-14)
    assert float(kd_loss(s.detach(), t, temperature, loss=lambda a, b: (a - b).abs().sum())) == pytest.approx(
        float((s.detach() - t).abs().sum())
    )


def test_kd_loss_dense_predictions() -> None:
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64), torch.randn(2, 5, 3, 4, generator=gen).double()
    assert float(kd_loss(s, t, 2.0)) == pytest.approx(float(kd_loss_reference(s.numpy(), t.numpy(), 2.0)), rel=1e-12)


# Fixed logits (3 samples, 4 classes) and labels, shared by the Keras tests; the pinned values are T² KL
# computed by Hinton's formula in plain Python (tests/core/test_distill.py) for T = 1, 2, 4.
FIXED_STUDENT = [[2.0, -1.0, 0.5, 0.0], [0.3, 1.2, -0.7, 2.2], [-1.5, 0.0, 1.0, 3.0]]
FIXED_TEACHER = [[3.0, -2.0, 0.0, 0.5], [0.0, 2.5, -1.0, 1.0], [-2.0, 0.5, 0.5, 4.0]]
FIXED_LABELS = [0, 1, 3]
PINNED_KD = {1.0: 0.2560372051036171, 2.0: 0.3290448529399241, 4.0: 0.34122452426176125}


class _TorchdistillKDLoss(nn.KLDivLoss):
    """torchdistill's ``KDLoss`` (losses/single.py) as published: ``alpha`` weights the hard-label loss there."""

    def __init__(self, temperature: float, alpha: float | None = None, reduction: str = "batchmean") -> None:
        super().__init__(reduction=reduction)
        self.temperature = temperature
        self.alpha = alpha
        self.beta = 1 - alpha if alpha is not None else None
        self.cross_entropy_loss = nn.CrossEntropyLoss(reduction="mean")

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor | None = None) -> Any:
        soft_loss = super().forward(
            torch.log_softmax(student / self.temperature, dim=1), torch.softmax(teacher / self.temperature, dim=1)
        )
        if self.alpha is None or self.alpha == 0 or targets is None:
            return soft_loss
        hard_loss = self.cross_entropy_loss(student, targets)
        return self.alpha * hard_loss + self.beta * (self.temperature**2) * soft_loss


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kd_loss_equals_independent_references_on_fixed_logits(temperature: float) -> None:
    s = torch.tensor(FIXED_STUDENT, dtype=torch.float64, requires_grad=True)
    t, y = torch.tensor(FIXED_TEACHER, dtype=torch.float64), torch.tensor(FIXED_LABELS)
    ours = kd_loss(s, t, temperature)
    value = float(ours.detach())
    assert value == pytest.approx(PINNED_KD[temperature], rel=1e-12)
    # Hinton et al.: T² · KL(softmax(t/T) ‖ softmax(s/T)), PyTorch's batch-mean reduction.
    hinton = F.kl_div(F.log_softmax(s.detach() / temperature, 1), F.softmax(t / temperature, 1), reduction="batchmean")
    assert value == pytest.approx(float(hinton) * temperature**2, rel=1e-12)
    # torchdistill KDLoss: its soft term alone has no T², its combined loss weights the hard loss by its alpha,
    # so Distillation(alpha=a) is KDLoss(alpha=1 - a).
    soft = float(_TorchdistillKDLoss(temperature)(s.detach(), t))
    assert soft * temperature**2 == pytest.approx(value, rel=1e-12)
    for alpha in (0.3, 0.7, 0.9):
        theirs = float(_TorchdistillKDLoss(temperature, alpha=1.0 - alpha)(s.detach(), t, y))
        ce = float(F.cross_entropy(s.detach(), y))
        assert float(combined_loss_reference(ce, value, alpha)) == pytest.approx(theirs, rel=1e-12)
    # Gradient scale: with T² the distillation gradient is T·(p_s - p_t)/N, of the order of the task gradient
    # (p_s - onehot)/N at any T, so alpha alone sets the balance.
    ours.backward()
    task_grad = torch.autograd.grad(F.cross_entropy(s, y), s)[0]
    expected = temperature * (F.softmax(s / temperature, 1) - F.softmax(t / temperature, 1)) / 3
    torch.testing.assert_close(s.grad, expected, rtol=1e-12, atol=1e-14)
    assert 0.1 < float(s.grad.norm() / task_grad.norm()) < 10.0


# --------------------------------------------------------------------------------------------------
# (c) end to end: the combined loss is what Lightning backpropagates
# --------------------------------------------------------------------------------------------------


def test_backward_sees_the_combined_loss(tmp_path: Path, teacher: nn.Module) -> None:
    probe = _Probe(teacher, temperature=2.0, alpha=0.3, features={})
    cb = Distillation(teacher, temperature=2.0, alpha=0.3)
    trainer = _trainer(tmp_path, [cb, probe])
    trainer.fit(_student(), _Data())
    assert len(probe.seen) == 4
    np.testing.assert_allclose(probe.seen, probe.expected, rtol=2e-5)
    # the user's own loss is logged unchanged next to the distillation terms; epoch means over the 4 steps
    metrics = trainer.callback_metrics
    assert float(metrics["task_loss"]) == float(metrics["train_loss"])
    assert float(metrics["kd_loss"]) == pytest.approx(probe.kd[-1], rel=1e-5)
    assert float(metrics["kd_loss_epoch"]) == pytest.approx(np.mean(probe.kd), rel=1e-5)


def test_backward_sees_feature_terms_through_adapters(tmp_path: Path, teacher: nn.Module) -> None:
    probe = _Probe(teacher, temperature=4.0, alpha=0.7, features=FEATURES)
    cb = Distillation(teacher, temperature=4.0, alpha=0.7, features=FEATURES)
    trainer = _trainer(tmp_path, [cb, probe])
    trainer.fit(_student(), _Data())
    assert np.isnan(probe.expected[0])  # step 0 creates the adapter inside the step
    np.testing.assert_allclose(probe.seen[1:], probe.expected[1:], rtol=2e-5)
    # an adapter only where the shapes differ, deterministic initialisation, trained with the student
    assert list(cb.adapters) == ["model.transition.conv"]
    adapter = cb.adapters["model.transition.conv"]
    assert isinstance(adapter, nn.Conv2d) and (adapter.in_channels, adapter.out_channels) == (16, 32)
    initial = _make_adapter("conv2d", 16, 32, "model.transition.conv").state_dict()
    assert not torch.equal(adapter.weight, initial["weight"])
    groups = trainer.optimizers[0].param_groups
    assert len(groups) == 2 and groups[1]["params"] == [adapter.weight]
    assert groups[1]["lr"] == groups[0]["lr"] and groups[1]["betas"] == groups[0]["betas"]
    for key in ("feature_loss", "feature_loss/model.transition.conv", "feature_loss/model.head.fc"):
        assert np.isfinite(float(trainer.callback_metrics[key])), key


def test_alpha_zero_is_plain_training_bit_for_bit(tmp_path: Path, teacher: nn.Module) -> None:
    plain, distilled = _student(), _student()
    _trainer(tmp_path, [], max_epochs=2).fit(plain, _Data())
    trainer = _trainer(tmp_path, [Distillation(teacher, alpha=0.0)], max_epochs=2)
    trainer.fit(distilled, _Data())
    _assert_equal_states(_state(plain), _state(distilled))
    assert float(trainer.callback_metrics["kd_loss_epoch"]) > 0.0  # the teacher ran and the term was logged


def test_alpha_one_ignores_labels(tmp_path: Path, teacher: nn.Module) -> None:
    """With alpha=1 the task loss is fully replaced: wrong labels give the very same student."""
    labels = digits().y_train
    wrong = np.random.default_rng(0).permutation(labels)
    results = {}
    for name, cbs, y in [
        ("plain", [], labels),
        ("plain_wrong", [], wrong),
        ("kd", [Distillation(teacher, alpha=1.0)], labels),
        ("kd_wrong", [Distillation(teacher, alpha=1.0)], wrong),
    ]:
        module = _student()
        trainer = _trainer(tmp_path, cbs)
        trainer.fit(module, _Data(labels=y))
        results[name] = _state(module)
        if cbs:
            assert np.isfinite(float(trainer.callback_metrics["kd_loss_epoch"]))
    _assert_equal_states(results["kd"], results["kd_wrong"])
    assert not torch.equal(results["plain"]["model.head.fc.weight"], results["plain_wrong"]["model.head.fc.weight"])
    assert not torch.equal(results["plain"]["model.head.fc.weight"], results["kd"]["model.head.fc.weight"])


# --------------------------------------------------------------------------------------------------
# (f) the teacher stays eval and frozen, is not in the checkpoint; every swap is undone
# --------------------------------------------------------------------------------------------------


class _Saboteur(pl.Callback):  # type: ignore[name-defined]
    """Puts the teacher in train mode before every batch, as careless user code might."""

    def __init__(self, teacher: nn.Module) -> None:
        self.teacher = teacher

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.teacher.train()


@pytest.mark.parametrize("crash", [False, True])
def test_teacher_frozen_eval_not_checkpointed_and_all_restored(tmp_path: Path, teacher: nn.Module, crash: bool) -> None:
    teacher.train()  # the user's mode and flags before fit, to be restored after it
    before = _state(teacher)
    seen: list[tuple[bool, bool, bool]] = []
    teacher.register_forward_pre_hook(
        lambda m, a: seen.append((m.training, any(p.requires_grad for p in m.parameters()), torch.is_grad_enabled()))
    )
    module = _student()
    cb = Distillation(teacher, features=FEATURES)
    trainer = _trainer(
        tmp_path, [_Saboteur(teacher), cb, *([_Crash(at_step=3)] if crash else [])], max_epochs=2, limit_val_batches=2
    )
    data = _Data()
    data.val_dataloader = data.train_dataloader  # validation switches modes too
    if crash:
        with pytest.raises(RuntimeError, match="simulated crash"):
            trainer.fit(module, data)
    else:
        trainer.fit(module, data)
    assert len(seen) == (3 if crash else 8) and set(seen) == {(False, False, False)}
    _assert_equal_states(before, _state(teacher))  # eval mode kept: BatchNorm statistics untouched
    teacher._forward_pre_hooks.clear()
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
    _assert_restored(module, teacher)
    if crash:
        return

    path = tmp_path / "final.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["state_dict"].keys() == module.state_dict().keys()
    state = ckpt["callbacks"]["Distillation"]
    assert set(state) == {"version", "settings", "teacher", "adapters"}
    assert state["settings"] == {  # the defaults
        "temperature": 1.0,
        "alpha": 0.5,
        "loss": "kl",
        "features": FEATURES,
        "feature_weight": 1.0,
    }
    assert state["teacher"]["kind"] == "module" and state["teacher"]["class"].endswith("DigitsCNN")
    tensors = [v for a in state["adapters"].values() for v in a["state"].values()]
    assert sum(t.numel() for t in tensors) == 16 * 32  # the adapter, and no teacher weight anywhere
    n_teacher = sum(p.numel() for p in teacher.parameters())
    n_ckpt = sum(v.numel() for v in ckpt["state_dict"].values() if isinstance(v, torch.Tensor))
    assert n_ckpt < n_teacher


# --------------------------------------------------------------------------------------------------
# (d) crash and resume equals an uninterrupted run
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_crash_and_resume_equals_uninterrupted(tmp_path: Path, teacher: nn.Module) -> None:
    def run(seed: int, extra: list[Any], ckpt_path: Path | None = None) -> tuple[Any, Distillation]:
        module, cb = _student(seed), Distillation(teacher, features=FEATURES)
        checkpointing = any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in extra)
        trainer = _trainer(tmp_path, [cb, *extra], max_epochs=3, enable_checkpointing=checkpointing)
        trainer.fit(module, _Data(), ckpt_path=ckpt_path)
        return module, cb

    full, full_cb = run(0, [])
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{epoch}", save_top_k=-1)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(0, [saver, _Crash(at_step=6)])  # dies in the second epoch
    resumed, resumed_cb = run(1, [], ckpt_path=tmp_path / "ckpt" / "epoch=0.ckpt")  # another init: all restored

    _assert_equal_states(_state(full), _state(resumed))
    assert list(full_cb.adapters) == list(resumed_cb.adapters) == ["model.transition.conv"]
    _assert_equal_states(
        _state(full_cb.adapters["model.transition.conv"]), _state(resumed_cb.adapters["model.transition.conv"])
    )


# --------------------------------------------------------------------------------------------------
# (e) DDP on CPU: identical adapters on both ranks, teacher outside DDP
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_spawn_keeps_adapters_identical(tmp_path: Path, teacher: nn.Module) -> None:
    trainer = _trainer(
        tmp_path,
        [Distillation(teacher, features=FEATURES), _DumpPerRank(tmp_path)],
        strategy="ddp_spawn",
        devices=2,
        max_epochs=2,
        limit_train_batches=3,
    )
    trainer.fit(_student(), _Data(shuffle=False))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["inputs"] != ranks[1]["inputs"]  # each rank saw its own data
    _assert_equal_states(ranks[0]["adapters"]["model.transition.conv"], ranks[1]["adapters"]["model.transition.conv"])
    initial = _make_adapter("conv2d", 16, 32, "model.transition.conv").state_dict()
    assert not torch.equal(ranks[0]["adapters"]["model.transition.conv"]["weight"], initial["weight"])
    _assert_equal_states(ranks[0]["student"], ranks[1]["student"])
    for r in ranks:
        assert r["ddp_wrapped"] == r["student_params"]  # the teacher is not inside the DDP module
        assert r["groups"][1] == 1 and r["teacher_eval"]


# --------------------------------------------------------------------------------------------------
# Both Lightning namespaces; together with Export
# --------------------------------------------------------------------------------------------------


def test_pytorch_lightning_namespace_dict_output(tmp_path: Path, teacher: nn.Module) -> None:
    ptl = pytest.importorskip("pytorch_lightning")

    class Student(ptl.LightningModule):  # type: ignore[name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = torch_model("digits_cnn", width=0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

        def training_step(self, batch: Any, batch_idx: int) -> dict[str, Any]:
            x, y = batch
            return {"loss": F.cross_entropy(self(x), y), "n": len(y)}

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Recorder(ptl.Callback):  # type: ignore[name-defined]
        def __init__(self) -> None:
            self.losses: list[float] = []
            self.outputs: list[Any] = []

        def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
            self.losses.append(float(loss.detach()))

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            self.outputs.append(outputs)

    torch.manual_seed(0)
    module, rec = Student(), Recorder()
    trainer = _trainer(
        tmp_path, [Distillation(teacher, alpha=1.0), rec], trainer_cls=ptl.Trainer, limit_train_batches=1
    )
    assert not isinstance(trainer, pl.Trainer)
    trainer.fit(module, train_dataloaders=_Data().train_dataloader())
    metrics = trainer.callback_metrics
    assert rec.losses == [float(metrics["kd_loss"])] != [float(metrics["task_loss"])]
    assert rec.outputs[0]["n"] == 32 and float(rec.outputs[0]["loss"]) == rec.losses[0]
    assert "training_step" not in module.__dict__


@pytest.mark.slow
def test_with_export_in_the_same_callback_list(tmp_path: Path, teacher: nn.Module) -> None:
    onnx = pytest.importorskip("onnx")
    module = _student()
    export = Export(targets=["onnx"], directory=tmp_path / "exports", calibration_batches=2)
    trainer = _trainer(tmp_path, [Distillation(teacher, alpha=0.5, features=FEATURES), export])
    trainer.fit(module, _Data())
    assert export.report is not None and export.report.ok, export.report
    r = export.report["onnx"]
    assert r.max_rel_error is not None and r.max_rel_error <= 1e-4 and r.top1_agreement == 1.0
    model = onnx.load(str(tmp_path / "exports" / "model.onnx"))
    n_onnx = sum(int(np.prod(i.dims)) for i in model.graph.initializer)
    assert n_onnx <= sum(v.numel() for v in module.state_dict().values())  # the student alone
    assert float(trainer.callback_metrics["kd_loss"]) > 0


# --------------------------------------------------------------------------------------------------
# Bad input: clear errors in setup or at the first batch, before any optimizer step
# --------------------------------------------------------------------------------------------------


def _fails_before_any_step(tmp_path: Path, cb: Distillation, module: Any, data: Any, error: type, match: str) -> None:
    before = {k: v.detach().clone() for k, v in module.named_parameters()}
    with pytest.raises(error, match=match):
        _trainer(tmp_path, [cb]).fit(module, data)
    _assert_equal_states(before, {k: v.detach().clone() for k, v in module.named_parameters()})
    assert "training_step" not in module.__dict__ and not module._forward_hooks


@pytest.mark.parametrize(
    ("features", "match"),
    [
        ({"model.nope": "stem"}, r"the student layer 'model.nope' does not exist. Available student layers: \[model, "),
        (
            {"model.stem": "nope"},
            r"the teacher layer 'nope' does not exist. Available teacher layers: \[stem, stem.conv",
        ),
        ({"conv": "stem"}, r"the student layer 'conv' is ambiguous \(matches \['model.stem.conv', 'model.transition"),
    ],
)
def test_unknown_feature_layer(tmp_path: Path, teacher: nn.Module, features: dict[str, str], match: str) -> None:
    _fails_before_any_step(tmp_path, Distillation(teacher, features=features), _student(), _Data(), ValueError, match)


def test_feature_suffix_names_resolve(tmp_path: Path, teacher: nn.Module) -> None:
    cb = Distillation(teacher, features={"transition.conv": "transition.conv"})
    _trainer(tmp_path, [cb], limit_train_batches=1).fit(_student(), _Data())
    assert list(cb.adapters) == ["transition.conv"]


def test_logits_of_different_shapes(tmp_path: Path) -> None:
    teacher = torch_model("digits_cnn", width=0.5, num_classes=12)
    _fails_before_any_step(
        tmp_path,
        Distillation(teacher),
        _student(),
        _Data(),
        ValueError,
        r"the teacher's logits have shape \(32, 12\) and the student's \(32, 10\)",
    )


def test_unreadable_batch_then_input_fn(tmp_path: Path, teacher: nn.Module) -> None:
    _fails_before_any_step(
        tmp_path,
        Distillation(teacher),
        _student(cls=_DictStudent),
        _Data(dict_batches=True),
        ValueError,
        r"Distillation\(input_fn=None\): a dict batch with keys \['label', 'pixels'\] has none of \['x', 'input'",
    )
    trainer = _trainer(tmp_path, [Distillation(teacher, input_fn=_pixels)], limit_train_batches=2)
    trainer.fit(_student(cls=_DictStudent), _Data(dict_batches=True))
    assert np.isfinite(float(trainer.callback_metrics["kd_loss"]))


def _pixels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return batch["pixels"]


def test_manual_optimization_is_refused(tmp_path: Path, teacher: nn.Module) -> None:
    _fails_before_any_step(
        tmp_path, Distillation(teacher), _student(cls=_ManualStudent), _Data(), RuntimeError, "manual optimization"
    )


def test_training_step_without_forward_call(tmp_path: Path, teacher: nn.Module) -> None:
    _fails_before_any_step(
        tmp_path, Distillation(teacher), _student(cls=_BypassStudent), _Data(), RuntimeError, r"never called the module"
    )


def test_teacher_inside_the_student_is_refused(tmp_path: Path) -> None:
    module = _student()
    _fails_before_any_step(tmp_path, Distillation(module.model), module, _Data(), ValueError, "part of the student")


def test_checkpoint_path_teacher_with_loader(tmp_path: Path, teacher: nn.Module) -> None:
    path = tmp_path / "teacher.pt"
    torch.save(teacher.state_dict(), path)
    cb = Distillation(str(path), loader=_load_digits_teacher)
    trainer = _trainer(tmp_path, [cb], limit_train_batches=1)
    trainer.fit(_student(), _Data())
    assert cb.teacher is not None and not cb.teacher.training  # loaded by the callback: left in eval mode
    assert np.isfinite(float(trainer.callback_metrics["kd_loss"]))
    assert cb.state_dict()["teacher"] == {
        "kind": "path",
        "path": str(path),
        "loader": f"{__name__}._load_digits_teacher",
    }
    with pytest.raises(TypeError, match=r"Distillation\(loader=...\): .* returned OrderedDict, not a torch.nn.Module"):
        _trainer(tmp_path, [Distillation(str(path), loader=torch.load)]).fit(_student(), _Data())


def _load_digits_teacher(path: str) -> nn.Module:
    model = torch_model("digits_cnn", width=1.0)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model


def test_docstring_examples() -> None:
    import doctest

    import lightning_plugins.distillation as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
