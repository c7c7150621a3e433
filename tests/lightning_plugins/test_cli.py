"""LightningCLI builds all four callbacks from a YAML config, the teacher from a checkpoint path and its class.

``fit --config`` trains the reference digits module with ``Pruning``, ``QuantizationAware``, ``Distillation``
(teacher = a ``.ckpt`` file + ``teacher_class``) and ``Export``; ``--print_config`` shows every argument of
every callback with its default.
"""

from __future__ import annotations

import csv
import inspect
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("lightning", reason="lightning not installed")
pytest.importorskip("jsonargparse", reason="jsonargparse[signatures] not installed (the lightning extra has it)")
pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")

import torch
from lightning.pytorch.cli import LightningCLI

import lightning_plugins
from lightning_plugins import Distillation, Export, Pruning, QuantizationAware
from lightning_plugins._compat import pl
from lightning_plugins.reference import DigitsClassifier, DigitsDataModule

CALLBACKS = (Pruning, QuantizationAware, Distillation, Export)


@pytest.fixture(autouse=True)
def _own_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    """LightningCLI gets its arguments from ``args=``; pytest's command line is not for it."""
    monkeypatch.setattr(sys, "argv", ["train.py"])


def _teacher_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A LightningModule checkpoint as ``Trainer.save_checkpoint`` writes it (state and hyper-parameters)."""
    torch.manual_seed(1)
    teacher = DigitsClassifier(width=1.0)
    torch.save(
        {
            "state_dict": teacher.state_dict(),
            "hyper_parameters": dict(teacher.hparams),
            "pytorch-lightning_version": pl.__version__,
        },
        path,
    )
    return {k: v.clone() for k, v in teacher.state_dict().items()}


def _config(tmp_path: Path, teacher: Path) -> dict[str, Any]:
    return {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": 1,
            "limit_train_batches": 6,
            "limit_val_batches": 0,
            "accelerator": "cpu",
            "log_every_n_steps": 1,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(tmp_path),
            "logger": {
                "class_path": "lightning.pytorch.loggers.CSVLogger",
                "init_args": {"save_dir": str(tmp_path), "name": "csv"},
            },
            "callbacks": [
                {
                    "class_path": "lightning_plugins.Pruning",
                    "init_args": {"sparsity": 0.5, "end": 0.5, "frequency": 1, "include": ["torch.nn.Conv2d"]},
                },
                {
                    "class_path": "lightning_plugins.QuantizationAware",
                    "init_args": {"start": 0.5, "calibration_steps": 1},
                },
                {
                    "class_path": "lightning_plugins.Distillation",
                    "init_args": {
                        "teacher": str(teacher),
                        "teacher_class": "lightning_plugins.reference.DigitsClassifier",
                        "temperature": 2.0,
                        "loss": "torch.nn.functional.mse_loss",
                    },
                },
                {
                    "class_path": "lightning_plugins.Export",
                    "init_args": {
                        "targets": ["onnx"],
                        "precision": "fp32",
                        "directory": str(tmp_path / "exports"),
                        "threads": 1,
                    },
                },
            ],
        },
        "model": {"width": 0.5},
        "data": {"batch_size": 32},
    }


@pytest.mark.slow
def test_fit_from_yaml_with_all_four_callbacks(tmp_path: Path) -> None:
    saved = _teacher_checkpoint(tmp_path / "teacher.ckpt")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_config(tmp_path, tmp_path / "teacher.ckpt")))

    cli = LightningCLI(DigitsClassifier, DigitsDataModule, args=["fit", "--config", str(config)])

    found = {type(cb): cb for cb in cli.trainer.callbacks if isinstance(cb, CALLBACKS)}
    assert list(found) == list(CALLBACKS)
    pruning, qat, distill, export = (found[c] for c in CALLBACKS)
    assert pruning.include == [torch.nn.Conv2d]  # the YAML import path became the class
    assert distill.teacher_class is DigitsClassifier and distill.settings.loss is torch.nn.functional.mse_loss
    teacher_state = distill.teacher.state_dict()
    assert all(torch.equal(teacher_state[k].cpu(), v) for k, v in saved.items())  # loaded, not re-initialised
    convs = [m for m in cli.model.modules() if isinstance(m, torch.nn.Conv2d)]
    zeros = sum(int((m.weight == 0).sum()) for m in convs)
    assert zeros == round(0.5 * sum(m.weight.numel() for m in convs))
    assert qat.quant_spec is not None and (tmp_path / "quant_spec.json").is_file()
    assert export.report is not None and export.report["onnx"].ok and export.report["onnx"].precision == "fp32"

    with (Path(cli.trainer.logger.log_dir) / "metrics.csv").open(newline="") as f:
        columns = set(next(csv.reader(f)))
    assert {"pruning/sparsity", "qat/phase", "kd_loss", "task_loss", "combined_loss", "export/onnx/status"} <= columns


def _printed(tmp_path: Path, capsys: pytest.CaptureFixture[str], config: dict[str, Any]) -> dict[str, Any]:
    path = tmp_path / "print.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_info:
        LightningCLI(DigitsClassifier, DigitsDataModule, args=["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed: dict[str, Any] = yaml.safe_load(capsys.readouterr().out)
    return printed


def test_print_config_shows_every_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, tmp_path / "teacher.ckpt")
    printed = _printed(tmp_path, capsys, config)
    given = {c["class_path"]: c.get("init_args", {}) for c in config["trainer"]["callbacks"]}
    callbacks = printed["trainer"]["callbacks"]
    assert [c["class_path"] for c in callbacks] == [f"lightning_plugins.{c.__name__}" for c in CALLBACKS]
    for entry, cls in zip(callbacks, CALLBACKS, strict=True):
        shown = entry["init_args"]
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if name == "self":
                continue
            assert name in shown, (cls.__name__, name)
            if name in given[entry["class_path"]] or param.default is inspect.Parameter.empty:
                continue
            default = list(param.default) if isinstance(param.default, tuple) else param.default
            assert shown[name] == default, (cls.__name__, name, shown[name])
    distill = callbacks[2]["init_args"]
    assert distill["teacher_class"] == "lightning_plugins.reference.DigitsClassifier"
    assert distill["loss"] == "torch.nn.functional.mse_loss"


def test_readme_config_parses_with_every_callback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("## LightningCLI and YAML configs", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = yaml.safe_load(block)
    config["trainer"]["default_root_dir"] = str(tmp_path)
    printed = _printed(tmp_path, capsys, config)["trainer"]["callbacks"]
    assert [c["class_path"] for c in printed] == [f"lightning_plugins.{c.__name__}" for c in CALLBACKS]
    assert printed[2]["init_args"]["teacher_class"] == "my_project.models.TeacherModule"
    assert printed[0]["init_args"]["include"] == ["torch.nn.Conv2d"]


def test_constructor_errors_for_a_checkpoint_teacher(tmp_path: Path) -> None:
    ckpt = str(tmp_path / "t.ckpt")
    needs = r"Distillation\(teacher='.*t.ckpt'\): a checkpoint path needs loader=... or teacher_class=..."
    with pytest.raises(ValueError, match=needs):
        Distillation(ckpt)
    with pytest.raises(ValueError, match=r"Distillation\(teacher_class='my_pkg.Teacher'\): cannot import it"):
        Distillation(ckpt, teacher_class="my_pkg.Teacher")
    with pytest.raises(TypeError, match=r"Distillation\(teacher_class=...\): expected a torch.nn.Module class"):
        Distillation(ckpt, teacher_class="lightning_plugins.reference.evaluate_accuracy")
    with pytest.raises(ValueError, match=r"Distillation\(teacher_class=..., loader=...\): both given"):
        Distillation(ckpt, teacher_class=DigitsClassifier, loader=DigitsClassifier.load_from_checkpoint)
    with pytest.raises(
        ValueError, match=r"Distillation\(teacher_class=.*\): the teacher is already a DigitsClassifier"
    ):
        Distillation(DigitsClassifier(), teacher_class=DigitsClassifier)
    with pytest.raises(ValueError, match=r"Export\(quant_spec='.*missing.json'\): cannot read a QuantSpec"):
        Export(quant_spec=str(tmp_path / "missing.json"))


def test_plain_module_class_loads_a_state_dict_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(2)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    torch.save({"state_dict": teacher.state_dict()}, tmp_path / "t.pt")

    class Teacher(torch.nn.Sequential):
        def __init__(self) -> None:
            super().__init__(torch.nn.Flatten(), torch.nn.Linear(64, 10))

    cb = Distillation(str(tmp_path / "t.pt"), teacher_class=Teacher)
    loaded = cb._require_teacher()
    assert isinstance(loaded, Teacher) and torch.equal(loaded[1].weight, teacher[1].weight)
    assert cb.teacher_identity()["loader"].endswith("Teacher.load_from_checkpoint")
    assert lightning_plugins.Distillation is Distillation
