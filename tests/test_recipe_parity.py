"""One recipe, two frameworks: the same sparsity at every step and the same set of artifacts.

The recipe (pruning + quantization-aware training + distillation + int8 export to ONNX and ncnn) is written
once to a YAML file and turned into callbacks by ``lightning_plugins.from_recipe`` and
``keras_callbacks.from_recipe``. The reference digits CNN is then fitted for one epoch of the bundled digits in
each framework (the same 20 optimizer steps at batch size 64), and after every step the test records

- what the ``Pruning`` callback logs (``pruning/sparsity``, ``pruning/target`` and, for channel pruning,
  ``pruning/channel_sparsity``): Lightning sends them to the trainer's loggers at every mask update, Keras puts
  them in the batch ``logs``;
- the fraction of exactly-zero weights in the Conv/Linear (Dense/Conv/DepthwiseConv) kernels, measured on the
  model itself after the optimizer step.

Sparsity is an exact count (``round(target * n)`` of the same ``n`` weights on both sides), so the sequences
must be equal, not close.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

pytest.importorskip("torch", reason="torch not installed")
pytest.importorskip("lightning_plugins", reason="lightning not installed")
pytest.importorskip("keras", reason="keras not installed")
pytest.importorskip("onnxruntime", reason="the export extra is not installed")
pytest.importorskip("ncnn", reason="the export extra is not installed")

pytestmark = pytest.mark.slow

EPOCHS = 1
BATCH = 64
KEYS = ("pruning/sparsity", "pruning/target", "pruning/channel_sparsity")


def _recipe(granularity: str) -> dict[str, Any]:
    return {
        "version": 1,
        "pruning": {
            "sparsity": 0.5,
            "granularity": granularity,
            "scope": "global",
            "schedule": "polynomial",
            "start": 0.0,
            "end": 0.5,
            "frequency": 1,
        },
        "quantization": {"start": 0.5, "freeze_bn": 0.75, "freeze_observers": 0.9},
        "distillation": {"temperature": 4.0, "alpha": 0.7},
        # relative: each framework runs in its own working directory, so the recipe stays identical
        "export": {"targets": ["onnx", "ncnn"], "precision": "int8", "directory": "exports"},
    }


@dataclass
class Run:
    """What one framework's fit produced."""

    steps: int
    logged: dict[int, tuple[float, ...]]  # step -> the logged values of KEYS present, at every mask update
    measured: list[float]  # zero fraction of the weighted layers' kernels after each optimizer step
    kernel_sizes: int  # Conv/Linear weights of the final (possibly channel-pruned) model
    export_dir: Path
    report: Any


def _logged(metrics: dict[str, Any]) -> tuple[float, ...]:
    return tuple(float(metrics[k]) for k in KEYS if k in metrics)


# ------------------------------------------------------------------------------------------- Lightning


def _fit_lightning(recipe_path: Path, workdir: Path) -> Run:
    import torch
    from torch import nn

    import lightning_plugins
    from lightning_plugins._compat import pl
    from lightning_plugins.reference import DigitsClassifier, DigitsDataModule
    from tests.lightning_plugins.helpers import CaptureLogger

    def zero_fraction(module: nn.Module) -> float:
        weights = [m.weight.detach() for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
        return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)

    class Measure(pl.Callback):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            self.values: list[float] = []

        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            self.values.append(zero_fraction(pl_module.model))

    torch.manual_seed(0)
    teacher = DigitsClassifier(width=0.5).model  # untrained: the sparsity does not depend on what it teaches
    module = DigitsClassifier(width=1.0)
    callbacks = lightning_plugins.from_recipe(recipe_path, teacher=teacher)
    measure, logger = Measure(), CaptureLogger()
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[*callbacks, measure],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        log_every_n_steps=1,
        default_root_dir=str(workdir),
    )
    trainer.fit(module, datamodule=DigitsDataModule(batch_size=BATCH, seed=0))
    logged = {int(step): _logged(m) for step, m in logger.rows if step is not None and "pruning/sparsity" in m}
    export = callbacks[-1]
    kernels = sum(m.weight.numel() for m in module.model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    return Run(int(trainer.global_step), logged, measure.values, kernels, workdir / "exports", export.report)


# ----------------------------------------------------------------------------------------------- Keras


def _fit_keras(recipe_path: Path, workdir: Path) -> Run:
    import keras

    import keras_callbacks
    from fitslim.data import digits
    from keras_callbacks.reference import build_digits_classifier

    def kernels(model: Any) -> list[np.ndarray]:
        out = []
        for layer in model.layers:
            if isinstance(layer, keras.layers.Conv2D | keras.layers.DepthwiseConv2D | keras.layers.Dense):
                out.append(np.asarray(keras.ops.convert_to_numpy(layer.kernel)))
        return out

    class Record(keras.callbacks.Callback):
        """After ``Pruning`` in the list: sees its logs and the masked kernels after every step."""

        def __init__(self) -> None:
            super().__init__()
            self.logged: list[tuple[float, ...]] = []
            self.values: list[float] = []

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            self.logged.append(_logged(logs or {}))
            ks = kernels(self.model)
            self.values.append(sum(int((k == 0).sum()) for k in ks) / sum(k.size for k in ks))

    keras.utils.set_random_seed(0)
    d = digits(size=8, layout="NHWC")
    teacher = build_digits_classifier(width=0.5)
    model = build_digits_classifier(width=1.0)
    callbacks = keras_callbacks.from_recipe(recipe_path, teacher=teacher)
    record = Record()
    pruning, export = callbacks[0], callbacks[-1]
    model.fit(
        d.x_train,
        d.y_train,
        batch_size=BATCH,
        epochs=EPOCHS,
        verbose=0,
        callbacks=[*callbacks[:-1], record, export],
    )
    steps = len(record.logged)
    final = pruning.pruned_model if pruning.pruned_model is not None else model
    size = sum(k.size for k in kernels(final))
    # Keras reports the values in force at every step, Lightning logs them at each mask update: compare them
    # at the schedule's update steps (every step's effect on the weights is compared through `measured`)
    resolved = pruning.schedule.resolve(steps)
    logged = {s: record.logged[s] for s in range(steps) if resolved.should_update(s)}
    return Run(steps, logged, record.values, size, workdir / "exports", export.report)


# ------------------------------------------------------------------------------------------------ runs


@pytest.fixture(scope="module", params=["unstructured", "channel"])
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Run, Run]]:
    granularity: str = request.param
    root = tmp_path_factory.mktemp(f"parity-{granularity}")
    recipe_path = root / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(_recipe(granularity), sort_keys=False), encoding="utf-8")
    out = []
    with pytest.MonkeyPatch.context() as mp:
        for name, fit in (("lightning", _fit_lightning), ("keras", _fit_keras)):
            work = root / name
            work.mkdir()
            mp.chdir(work)
            out.append(fit(recipe_path, work))
    yield out[0], out[1]


def test_same_number_of_steps(runs: tuple[Run, Run]) -> None:
    lightning, keras = runs
    assert lightning.steps == keras.steps == int(np.ceil(1259 / BATCH)) * EPOCHS


def test_same_sparsity_at_every_mask_update(runs: tuple[Run, Run]) -> None:
    lightning, keras = runs
    assert sorted(lightning.logged) == sorted(keras.logged), "the masks were updated at different steps"
    assert len(lightning.logged) > 5
    for step in sorted(lightning.logged):
        assert lightning.logged[step] == keras.logged[step], f"step {step}: {KEYS} differ"
    final = lightning.logged[max(lightning.logged)]
    assert final[0] == pytest.approx(0.5, abs=1e-3) and final[1] == pytest.approx(0.5)


def test_same_zero_fraction_after_every_step(runs: tuple[Run, Run], request: pytest.FixtureRequest) -> None:
    lightning, keras = runs
    assert len(lightning.measured) == len(keras.measured) == lightning.steps
    last_update = max(lightning.logged)
    if request.node.callspec.params["runs"] == "channel":
        # Lightning cuts the masked channels out at the schedule's end (no zeros left after it); Keras keeps
        # them masked until fit end and then rebuilds a smaller model: compare while both mask
        n = last_update
        assert lightning.measured[:n] == keras.measured[:n]
        assert lightning.measured[-1] == 0.0 and keras.measured[-1] > 0.4
    else:
        assert lightning.measured == keras.measured
        assert lightning.measured[-1] == pytest.approx(0.5, abs=1e-3)


def test_same_final_kernel_size(runs: tuple[Run, Run]) -> None:
    lightning, keras = runs
    assert lightning.kernel_sizes == keras.kernel_sizes


def test_same_artifacts(runs: tuple[Run, Run]) -> None:
    lightning, keras = runs
    files = {name: sorted(p.name for p in run.export_dir.iterdir()) for name, run in (("L", lightning), ("K", keras))}
    assert files["L"] == files["K"]
    assert files["L"] == sorted(
        [
            "model.int8.onnx",
            "model.int8.ncnn.param",
            "model.int8.ncnn.bin",
            "quant_spec.json",
            "report.json",
            "report.md",
        ]  # fmt: skip
    )
    for run in runs:
        assert run.report is not None and run.report.ok, str(run.report)
        assert {r.target: sorted(r.files) for r in run.report} == {
            "onnx": ["model.int8.onnx"],  # ONNX Runtime's int8 (QDQ) form
            "ncnn": ["model.int8.ncnn.bin", "model.int8.ncnn.param"],
        }
        assert {r.target: r.precision for r in run.report} == {"onnx": "int8", "ncnn": "int8"}


@pytest.mark.parametrize("side", ["lightning_plugins", "keras_callbacks"])
def test_attention_reaches_the_pruning_callback_on_both_sides(side: str) -> None:
    import importlib

    from fitslim.recipe import RecipeError

    if side == "keras_callbacks":
        pytest.importorskip("keras")
    module = importlib.import_module(side)
    (cb,) = module.from_recipe({"pruning": {"granularity": "channel", "attention": "mlp"}})
    assert isinstance(cb, module.Pruning) and cb.attention == "mlp"
    (cb,) = module.from_recipe({"pruning": {"granularity": "channel"}})
    assert cb.attention == "heads"
    with pytest.raises(RecipeError, match=r"^pruning.attention: 'all' is not one of \['heads', 'mlp'\]"):
        module.from_recipe({"pruning": {"attention": "all"}})
