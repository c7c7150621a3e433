"""benchmarks/realdata.py: the goal table (every row, every goal column) and the verdicts beside the figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import realdata
from benchmarks.realdata_common import COLUMNS, GOALS, Artifact, ModelResult

QUANTITIES = ("test accuracy", "test accuracy (floor)", "parameters", "file size", "latency, batch 1")


def _result(drop_pt: float, size_ratio: float, gains_pt: list[float]) -> ModelResult:
    """A synthetic result: dense 90.00%, every int8 artifact ``drop_pt`` below it, files ``size_ratio`` of fp32."""
    res = ModelResult("lightning", "resnet", "synthetic", dense_params=1000, student_params=300, dense_accuracy=0.9)
    for target in ("onnx", "ncnn", "tflite"):
        res.dense[target] = Artifact(target, "fp32", "ok", size=100_000, accuracy=0.9, latency_ms=1.0)
    for target in realdata.INT8_TARGETS:
        res.int8[target] = Artifact(target, "int8", "ok", size=int(100_000 * size_ratio),
                                    accuracy=0.9 - drop_pt / 100, latency_ms=0.55)  # fmt: skip
    res.seeds = list(range(len(gains_pt)))
    res.plain = [0.88] * len(gains_pt)
    res.kd = [0.88 + g / 100 for g in gains_pt]
    res.kd_float, res.plain_float = list(res.kd), list(res.plain)
    return res


def _by(rows: list[dict[str, str]], quantity: str, runtime: str) -> dict[str, str]:
    return next(r for r in rows if r["quantity"].startswith(quantity) and r["runtime"] == runtime)


def test_goal_verdicts_follow_the_figures() -> None:
    # 0.7 pt lost: misses the 0.5 pt goal, meets the 1.0 pt floor
    rows = realdata.rows(_result(drop_pt=0.7, size_ratio=0.10, gains_pt=[0.2, 0.3, 0.1]))
    acc, floor = _by(rows, "test accuracy", "ncnn"), _by(rows, "test accuracy (floor)", "ncnn")
    assert (acc["measured"], acc["goal"], acc["status"]) == ("+0.70 pt drop", "<= 0.5 pt", "MISSED")
    assert (floor["goal"], floor["status"]) == ("<= 1 pt", "met")
    assert _by(rows, "parameters", "-")["measured"] == "0.300x" and _by(rows, "parameters", "-")["status"] == "met"
    assert _by(rows, "file size", "LiteRT")["status"] == "met"
    # latency 0.55x: ncnn's goal (0.6x) met, onnxruntime's and LiteRT's (0.5x) missed, TensorRT has none
    assert _by(rows, "latency", "ncnn")["status"] == "met"
    assert _by(rows, "latency", "onnxruntime")["status"] == "MISSED"
    assert _by(rows, "latency", "LiteRT")["status"] == "MISSED"
    assert _by(rows, "latency", realdata.RUNTIME["tensorrt"][0])["status"] == "-"
    kd = _by(rows, "distillation gain", "onnxruntime (int8 ONNX)")
    assert kd["measured"] == "+0.20 ± 0.10 pt" and kd["status"] == "MISSED"
    # the other side of every bound
    rows = realdata.rows(_result(drop_pt=0.3, size_ratio=0.2, gains_pt=[0.4, 0.5, 0.3]))
    assert _by(rows, "test accuracy", "onnxruntime")["status"] == "met"
    assert _by(rows, "file size", "onnxruntime")["status"] == "MISSED"
    assert _by(rows, "distillation gain", "onnxruntime (int8 ONNX)")["status"] == "met"


def test_a_failed_model_is_a_missed_row_not_a_crash() -> None:
    rows = realdata.rows(ModelResult("keras", "mobilenet_v2", "", error="RuntimeError: QAT on a fitted model"))
    expected = ("keras mobilenet_v2", "error", "-", "-", "-", "RuntimeError: QAT on a fitted model", "-", "MISSED")
    assert rows == [dict(zip(COLUMNS, expected, strict=True))]


def test_parse_quick_and_full_defaults() -> None:
    quick, full = realdata.parse(["--quick"]), realdata.parse([])
    assert (quick.seeds, quick.train_subset, quick.test_subset, quick.batch_size) == (1, 256, 200, 32)
    assert (full.seeds, full.train_subset, full.test_subset, full.batch_size) == (3, None, None, 128)  # all 10,000
    assert full.seeds >= 3 and full.threads == 2


@pytest.mark.slow
@pytest.mark.realdata
def test_quick_run_writes_every_row_and_goal(tmp_path: Path) -> None:
    # 256 training images in batches of 32: 8 steps, enough for the pruning and QAT schedules to resolve
    args = ["--quick", "--test-subset", "100", "--rounds", "1", "--burst", "1", "--out", str(tmp_path)]
    text = realdata.main(args)
    header = "| " + " | ".join(COLUMNS) + " |"
    assert header in text
    payload = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    rows = payload["rows"]
    assert rows and all(set(r) == set(COLUMNS) for r in rows)
    assert not any(r["quantity"] == "error" for r in rows), rows
    for quantity in QUANTITIES:
        runtimes = {r["runtime"] for r in rows if r["quantity"] == quantity}
        expected = {"-"} if quantity == "parameters" else {realdata.RUNTIME[t][0] for t in realdata.INT8_TARGETS}
        assert runtimes == expected, (quantity, runtimes)
    assert [r["goal"] for r in rows if r["quantity"].startswith("distillation gain")] == [GOALS["distillation"].text()]
    # every goal column is filled with a verdict computed from a figure (not "-"), except the TensorRT latency
    for r in rows:
        if r["goal"] != "(no goal)":
            assert r["status"] in ("met", "MISSED") and r["measured"] != "-", r
    # every artifact was scored in its own runtime on the test images
    for target, art in payload["results"][0]["int8"].items():
        assert art["accuracy"] is not None, (target, art)
    assert (tmp_path / "results.md").read_text(encoding="utf-8").startswith("## Fashion-MNIST")
    assert list((tmp_path / "dense").glob("lightning-resnet-*.pt")), "the dense model is cached for later runs"


# -- the Keras half (benchmarks/realdata_keras.py) --------------------------------------------------------------


@pytest.mark.slow  # importing torch, transformers and keras: about 30 s on a busy 2-core machine
def test_keras_resnet_mirrors_the_torch_model() -> None:
    """The Keras ResNet-style CNN is the torch side's ResNetConfig model layer for layer: the same parameters."""
    pytest.importorskip("keras")
    pytest.importorskip("transformers")
    from benchmarks import realdata_keras

    for quick, expected in ((True, 78_178), (False, 309_178)):
        torch_params = realdata.count_params(realdata.torch_model("resnet", 28, quick))
        keras_params = realdata_keras.count_params(realdata_keras.build_model("resnet", quick))
        assert torch_params == keras_params == expected, (quick, torch_params, keras_params)


@pytest.mark.slow  # importing keras and building two MobileNetV2: about 11 s on a busy 2-core machine
def test_keras_mobilenet_v2_batchnorm_momentum_is_lowered() -> None:
    """keras.applications.MobileNetV2 builds momentum 0.999 (chance accuracy in inference after a short training);
    the benchmark's model has 0.9 in every BatchNormalization, in the config ``model.save`` writes."""
    keras = pytest.importorskip("keras")
    from benchmarks import realdata_keras

    stock = keras.applications.MobileNetV2(input_shape=(32, 32, 1), alpha=0.35, weights=None, classes=10)
    assert {layer.momentum for layer in stock.layers if isinstance(layer, keras.layers.BatchNormalization)} == {0.999}
    model = realdata_keras.build_model("mobilenet_v2", quick=True)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) > 40 and {bn.get_config()["momentum"] for bn in bns} == {realdata_keras.BN_MOMENTUM}
    assert model.output_shape == (None, 10) and model.layers[-1].get_config()["activation"] == "linear"  # logits


@pytest.mark.slow
@pytest.mark.realdata
def test_quick_keras_run_writes_every_row_and_goal(tmp_path: Path) -> None:
    # the Keras ResNet-style CNN through the whole pipeline: fit, save, reload, recipe fit from a fresh reload with
    # and without the teacher, int8 export to every target, every artifact scored in its runtime, timed
    args = ["--quick", "--frameworks", "keras", "--test-subset", "100", "--rounds", "1", "--burst", "1"]
    text = realdata.main([*args, "--out", str(tmp_path)])
    assert "| keras resnet | parameters |" in text
    payload = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    rows = payload["rows"]
    assert not any(r["quantity"] == "error" for r in rows), rows
    for quantity in QUANTITIES:
        runtimes = {r["runtime"] for r in rows if r["quantity"] == quantity}
        expected = {"-"} if quantity == "parameters" else {realdata.RUNTIME[t][0] for t in realdata.INT8_TARGETS}
        assert runtimes == expected, (quantity, runtimes)
    for r in rows:
        if r["goal"] != "(no goal)":
            assert r["status"] in ("met", "MISSED") and r["measured"] != "-", r
    res = payload["results"][0]
    assert (res["framework"], res["model"], len(res["kd"]), len(res["plain"])) == ("keras", "resnet", 1, 1)
    for kind in ("dense", "int8"):
        for target, art in res[kind].items():
            assert art["accuracy"] is not None and art["latency_ms"], (kind, target, art)
    # the dense fp32 files reproduce the Keras model on the test images (one of the 100 may flip on a near-tie);
    # channel pruning removed channels
    assert all(abs(art["accuracy"] - res["dense_accuracy"]) <= 0.01 for art in res["dense"].values()), res["dense"]
    assert res["student_params"] < 0.35 * res["dense_params"], (res["student_params"], res["dense_params"])
    assert list((tmp_path / "dense").glob("keras-resnet-*.keras")), "the dense model is saved for later runs"
