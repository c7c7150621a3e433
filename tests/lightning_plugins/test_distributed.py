"""Every Lightning callback under ``ddp`` and ``ddp_spawn`` (2 CPU processes, gloo) against one process.

The 2-process runs (batch 8 per rank, ``DistributedSampler(shuffle=False)``) and the 1-process run (batch 16, the
same order) see the same 16 samples at every step, so they take the same SGD steps up to float rounding (no
BatchNorm; see ``_ddp_case``). Masks, channel decisions, QuantSpecs, the teacher, adapters and the final model are
compared across ranks (exactly) and with the 1-process run. ``ddp`` re-launches its command line for rank 1, so it
runs ``python -m tests.lightning_plugins._ddp_case`` in a subprocess; ``ddp_spawn`` and the 1-process runs run
here. Six fits in all (each ~5-30 s on 2 shared cores), run once per module.

Tolerances: the 1-process and 2-process weights differed by at most 4e-8 after the 8 steps (mean of two batch-8
means vs one batch-16 mean, then SGD with momentum), so ``ATOL = 1e-5`` leaves a 250x margin; a statistic taken
from one rank's batches instead of the union moved the weights by ~1e-3 in the same fit (measured), far outside.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lightning_plugins._fakequant import OBSERVERS
from tests.lightning_plugins._ddp_case import PROBES, models, run

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
STRATEGIES = ("ddp", "ddp_spawn")
ATOL = 1e-5  # weights, 2 processes vs 1 (measured <= 4e-8, see the module docstring)
RTOL_SCALES = 1e-5  # QuantSpec scales, 2 processes vs 1 (measured <= 1e-7 relative)
_DIST_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "GLOBAL_RANK", "LOCAL_WORLD_SIZE")

Rows = list[dict[str, Any]]


def _load(out: Path, world: int) -> Rows:
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


@pytest.fixture(scope="module")
def fits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str, str], Rows]]:
    """``fits(scenario, strategy)``: the per-rank rows of that fit, run on first use and kept for the module."""
    root = tmp_path_factory.mktemp("distributed")
    cache: dict[tuple[str, str], Rows] = {}
    saved = {k: os.environ[k] for k in _DIST_ENV if k in os.environ}

    def get(scenario: str, strategy: str) -> Rows:
        key = (scenario, strategy)
        if key in cache:
            return cache[key]
        out = root / f"{scenario}-{strategy}"
        for k in _DIST_ENV:  # a fresh free port per run (an earlier run may have left its own in the environment)
            os.environ.pop(k, None)
        if strategy == "ddp":
            env = {k: v for k, v in os.environ.items() if k not in _DIST_ENV} | {"OMP_NUM_THREADS": "1"}
            proc = subprocess.run(
                [sys.executable, "-m", "tests.lightning_plugins._ddp_case", scenario, "ddp", str(out)],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr[-4000:]
        elif strategy == "resume":  # 1 process, from the checkpoint the ddp run wrote after epoch 0
            get(scenario, "ddp")
            run(scenario, "single", out, ckpt_path=str(root / f"{scenario}-ddp" / "ckpt" / "epoch=0.ckpt"))
        elif strategy == "single-masked":  # the 1-process reference of a ddp_spawn channel fit (no removal)
            run(scenario, "single", out, permanent_like="ddp_spawn")
        else:
            run(scenario, strategy, out)
        cache[key] = [row | {"out": str(out)} for row in _load(out, 2 if strategy in STRATEGIES else 1)]
        return cache[key]

    yield get
    for k in _DIST_ENV:
        os.environ.pop(k, None)
    os.environ.update(saved)


def _reference(fits: Callable[[str, str], Rows], scenario: str, strategy: str) -> dict[str, Any]:
    """The 1-process run a 2-process ``strategy`` run is compared with."""
    masked = scenario == "channel" and strategy == "ddp_spawn"
    return fits(scenario, "single-masked" if masked else "single")[0]


def _assert_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape, k
        if atol == 0.0 or not a[k].is_floating_point():
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=0.0, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


def _assert_specs(a: dict[str, Any], b: dict[str, Any], rtol: float) -> None:
    names = [(x["name"], x["weight_shape"]) for x in a["layers"]]
    assert names == [(x["name"], x["weight_shape"]) for x in b["layers"]]
    for x, y in zip(a["layers"], b["layers"], strict=True):
        assert x["input_scale"] == pytest.approx(y["input_scale"], rel=rtol, abs=0.0), x["name"]
        np.testing.assert_allclose(x["weight_scales"], y["weight_scales"], rtol=rtol, atol=0.0, err_msg=x["name"])


# -- Pruning ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_unstructured_masks_and_model_match_one_process(fits: Callable[[str, str], Rows], strategy: str) -> None:
    ranks, ref = fits("masks", strategy), _reference(fits, "masks", strategy)
    pruned = sum(int((~m).sum()) for m in ref["masks"].values()) / sum(m.size for m in ref["masks"].values())
    assert pruned == pytest.approx(0.5, abs=0.01)  # the schedule's end target was reached: the masks are not trivial
    for row in ranks:
        assert row["world"] == 2 and row["step"] == ref["step"] == 8
        assert row["masks"].keys() == ref["masks"].keys()
        for key, mask in ref["masks"].items():  # magnitudes from identical weights: the same decisions, exactly
            np.testing.assert_array_equal(row["masks"][key], mask, err_msg=key)
            weight = row["state"][key]  # make_permanent folded the mask: exact zeros where it was False
            assert torch.equal(weight == 0, torch.from_numpy(~mask)), key
        _assert_states(row["state"], ref["state"], atol=ATOL)
    _assert_states(ranks[0]["state"], ranks[1]["state"])  # DDP keeps the ranks bit-identical


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_channel_decisions_match_one_process(fits: Callable[[str, str], Rows], strategy: str) -> None:
    ranks, ref = fits("channel", strategy), _reference(fits, "channel", strategy)
    for row in ranks:
        if strategy == "ddp":  # channels removed physically mid-fit (DDP re-wrapped), the same ones as in 1 process
            assert ref["structure"] and row["structure"] == ref["structure"]
            assert row["state"]["conv2.weight"].shape[0] == len(ref["structure"]["conv2"]["out"]) < 16
        else:  # a spawn strategy keeps the channels masked: whole output channels, the same ones
            assert row["masks"].keys() == ref["masks"].keys()
            for key, mask in ref["masks"].items():
                np.testing.assert_array_equal(row["masks"][key], mask, err_msg=key)
            dropped = ~ref["masks"]["conv2.weight"].reshape(16, -1).all(axis=1)
            assert 0 < dropped.sum() < 16 and (~ref["masks"]["conv2.weight"][dropped]).all()
        _assert_states(row["state"], ref["state"], atol=ATOL)
    _assert_states(ranks[0]["state"], ranks[1]["state"])


# -- QuantizationAware -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("scenario", ["masks", "channel"], ids=["percentile", "minmax"])
def test_quant_spec_matches_one_process(fits: Callable[[str, str], Rows], strategy: str, scenario: str) -> None:
    ranks, ref = fits(scenario, strategy), _reference(fits, scenario, strategy)
    assert ranks[0]["spec"] == ranks[1]["spec"]  # identical on every rank, exactly
    _assert_specs(ranks[0]["spec"], ref["spec"], RTOL_SCALES)  # equal to 1 process on the union of the batches


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_observer_reduces_to_the_union_of_the_batches(fits: Callable[[str, str], Rows], strategy: str) -> None:
    # Each rank observes its half of four fixed batches (the last split 2:1); one process observes the whole batches.
    # A percentile of the union is below the larger of the two halves' percentiles: MAX-reducing it fails here.
    ranks, ref = fits("channel", strategy), _reference(fits, "channel", strategy)
    assert set(ref["probe"]) == {name for name, _, _ in PROBES} and {o for _, o, _ in PROBES} == set(OBSERVERS)
    for row in ranks:
        for observer, value in ref["probe"].items():
            assert row["probe"][observer] == pytest.approx(value, rel=1e-6, abs=0.0), observer


# -- Distillation ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_teacher_stays_outside_ddp_and_adapters_match(fits: Callable[[str, str], Rows], strategy: str) -> None:
    ranks, ref = fits("masks", strategy), _reference(fits, "masks", strategy)
    initial_teacher = {k: v.clone() for k, v in models()[1].state_dict().items()}
    for row in ranks:
        assert row["wrapper"] == "DistributedDataParallel"
        assert row["wrapped_params"] == row["student_params"]  # only the student's tensors are all-reduced
        assert row["teacher_in_wrapper"] == 0 and row["teacher_grads"] == 0
        _assert_states(row["teacher"], initial_teacher)  # a full, untrained copy on every rank
        _assert_states(row["adapters"]["conv2"], ref["adapters"]["conv2"], atol=ATOL)
    _assert_states(ranks[0]["adapters"]["conv2"], ranks[1]["adapters"]["conv2"])
    # the distilled student itself: test_unstructured_masks_and_model_match_one_process (the same fits)


# -- Export and resume -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_export_once_on_rank_zero_while_others_wait(fits: Callable[[str, str], Rows], strategy: str) -> None:
    ranks = fits("masks", strategy)
    out = Path(ranks[0]["out"])
    assert sorted(p.name for p in (out / "exports").iterdir()) == ["model.onnx", "report.json", "report.md"]
    assert [p.name for p in out.glob("**/quant_spec.json")] == ["quant_spec.json"]  # written once, by rank zero
    for row in ranks:
        # rank 1 passed Export.on_fit_end only after rank zero's report.json was complete, and got its report
        assert row["report_on_disk"] is True
        assert row["report"] == ["ok"]


def test_resume_from_a_ddp_checkpoint_continues_like_one_process(fits: Callable[[str, str], Rows]) -> None:
    resumed, ref = fits("masks", "resume")[0], fits("masks", "single")[0]
    ckpt = torch.load(Path(fits("masks", "ddp")[0]["out"]) / "ckpt" / "epoch=0.ckpt", weights_only=False)
    weights = ckpt["state_dict"]  # written under ddp mid-pruning and mid-QAT: masks and observer ranges inside
    assert any(k.endswith("weight_mask") and not bool(v.all()) for k, v in weights.items())
    assert any(k.endswith("fq_input_range") and float(v) > 0 for k, v in weights.items())
    for key, mask in ref["masks"].items():  # masks and the pruning schedule continued from the DDP checkpoint
        np.testing.assert_array_equal(resumed["masks"][key], mask, err_msg=key)
    _assert_specs(resumed["spec"], ref["spec"], RTOL_SCALES)  # observer ranges came back from its buffers
    _assert_states(resumed["adapters"]["conv2"], ref["adapters"]["conv2"], atol=ATOL)
    _assert_states(resumed["state"], ref["state"], atol=ATOL)
