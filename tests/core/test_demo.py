"""``fitslim demo``: both frameworks trained, compressed by one recipe, exported, scored and reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fitslim_app.demo import ACCURACY_BOUND, FrameworkResult, Speed, format_results, run_demo, time_interleaved

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: the runtimes whose speed the demo claims (the TensorRT row is the Q/DQ file in onnxruntime: no TensorRT figure)
RUNTIMES = ("onnx", "ncnn", "tflite")
#: compressed int8 / dense fp32 latency, timed side by side in one run: the demo's model gives about 0.5x
#: (onnxruntime, LiteRT) and 0.85x (ncnn, whose x86 int8 kernels are no faster than fp32: the gain is the removed
#: channels); 0.9 still says "faster" with room for a busy test machine
MAX_RATIO = 0.9
#: --quick trains the dense model 3 epochs and fine-tunes it 3 (EPOCHS), so its accuracy on the 269 test digits is
#: noisier than the full run's (ACCURACY_BOUND, 1 pt): the compressed model may trail it by at most 3 pt (8 images)
QUICK_BOUND = 0.03


def test_bad_arguments_fail_before_any_training(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"frameworks: unknown \['tensorflow'\]"):
        run_demo(tmp_path, frameworks=("tensorflow",))
    with pytest.raises(ValueError, match="epochs must be >= 1; got 0"):
        run_demo(tmp_path, epochs=0)
    assert not (tmp_path / "report.json").exists()


def _check_framework(fw: dict[str, Any]) -> None:
    name, dense, small = fw["framework"], fw["dense"], fw["compressed"]
    # channel pruning removed parameters for real (half the channels of the prunable layers)
    assert small["parameters"] < 0.7 * dense["parameters"], (name, small["parameters"], dense["parameters"])
    assert dense["model_accuracy"] > 0.85 and small["model_accuracy"] > 0.8, name
    # compared with dense, not only a floor: the compressed model keeps the dense model's accuracy
    assert small["model_accuracy"] >= dense["model_accuracy"] - QUICK_BOUND, (name, small, dense)
    for variant in (dense, small):
        arts = {a["target"]: a for a in variant["artifacts"]}
        assert set(arts) == {"onnx", "ncnn", "tflite", "tensorrt"}, (name, variant["name"])
        for target, a in arts.items():
            assert a["status"] == "ok", (name, variant["name"], target, a["reason"])
            assert a["test_accuracy"] is not None, (name, variant["name"], target, a["reason"])
            # the artifact scores like the model it was exported from (int8 within 4 points)
            assert abs(a["test_accuracy"] - variant["model_accuracy"]) <= 0.04, (name, variant["name"], target)
            assert a["size_bytes"] > 0 and a["latency_ms"] > 0
    dense_arts = {a["target"]: a for a in dense["artifacts"]}
    small_arts = {a["target"]: a for a in small["artifacts"]}
    for target in ("onnx", "ncnn", "tflite", "tensorrt"):  # int8 and half the channels: files 0.2x or less
        assert small_arts[target]["precision"] == "int8"
        assert small_arts[target]["size_bytes"] <= 0.2 * dense_arts[target]["size_bytes"], (name, target)
    # compressed int8 faster than dense fp32 in every runtime, timed side by side in one run
    speed = {t["target"]: t for t in fw["speed"]}
    for target in RUNTIMES:
        t = speed[target]
        assert t["ratio"] == pytest.approx(t["compressed_ms"] / t["dense_ms"])
        assert t["ratio"] <= MAX_RATIO, (name, target, t)
    steps = fw["sparsity_steps"]
    values = [s for _, s in steps]
    # half the channels of every conv in a chain: half the outputs and about half the inputs of each kernel, so
    # the kernel sparsity ends near 1 - 0.5 * 0.5 (0.735 measured), never below the channel target 0.5
    assert values == sorted(values) and 0.48 <= values[-1] <= 0.8, (name, values[-5:])
    assert fw["layer_sparsity"] and all(0.0 <= v <= 1.0 for v in fw["layer_sparsity"].values())


@pytest.mark.slow
def test_quick_demo_writes_tables_report_and_plots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("lightning")
    pytest.importorskip("keras")
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "fitslim_app.cli", "demo", "--quick", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=1800,  # a busy shared 2-core machine took over 900 s
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for title in ("Lightning: demo CNN", "Keras: demo CNN"):
        assert title in proc.stdout
    assert proc.stdout.count("compressed int8") >= 2 and "ncnn" in proc.stdout
    assert "compressed is" in proc.stdout and proc.stdout.count("faster") >= 2 * len(RUNTIMES)

    report = json.loads((out / "report.json").read_text())
    assert [fw["framework"] for fw in report["frameworks"]] == ["lightning", "keras"]
    for fw in report["frameworks"]:
        _check_framework(fw)
    # one recipe, both frameworks: the same pruning target after every optimizer step
    lightning, keras = (dict(fw["sparsity_steps"]) for fw in report["frameworks"])
    common = sorted(set(lightning) & set(keras))
    assert len(common) >= 10
    assert all(abs(lightning[s] - keras[s]) < 0.02 for s in common), [(s, lightning[s], keras[s]) for s in common]

    markdown = (out / "report.md").read_text()
    assert markdown.count("| target | runtime |") == 2 and "granularity: channel" in markdown
    for name in ("sparsity_over_steps.png", "layer_sparsity.png", "size_latency_accuracy.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
        assert f"({name})" in markdown
    assert not list(out.rglob("*.partial"))

    # a second run reuses the cached dense model (the teacher) instead of training it again: stopped once the dense
    # model is loaded and scored (what follows is the first run's work again)
    for framework, fw in zip(("lightning", "keras"), report["frameworks"], strict=True):
        again = _dense_of_a_second_run(out, framework, monkeypatch, capsys)
        assert again["cached"] and again["accuracy"] == pytest.approx(fw["dense"]["model_accuracy"]), framework


def _dense_of_a_second_run(
    out: Path, framework: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> dict[str, Any]:
    """Run the quick demo of ``framework`` again in ``out`` up to its dense model: trained again or reused, and its
    test accuracy."""
    import fitslim_app.demo as demo

    seen: dict[str, Any] = {}

    def stop(framework: str, model: Any, parameters: int, accuracy: float, *args: Any) -> None:
        seen["accuracy"] = accuracy
        raise _Stop

    capsys.readouterr()
    with monkeypatch.context() as m:
        m.setattr(demo, "_dense_variant", stop)
        with pytest.raises(_Stop):
            run_demo(out, quick=True, frameworks=(framework,))
    printed = capsys.readouterr().out
    seen["cached"] = f"[{framework}] dense model: reusing" in printed and "training the dense CNN" not in printed
    return seen


class _Stop(Exception):
    pass


def test_keras_half_trains_with_the_lightning_halfs_adam(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both Keras trainings of the demo (dense model, fine-tune) use ``torch.optim.Adam``'s epsilon, not Keras' 1e-7.

    The two halves must train alike: with Keras' epsilon the Keras dense model of the default seed compressed
    3 points worse than its dense model on the test split, the Lightning one under 1 point.
    """
    torch = pytest.importorskip("torch")
    pytest.importorskip("keras")
    import fitslim_app.demo as demo
    import keras_callbacks.reference as reference

    calls: list[dict[str, Any]] = []
    real = demo.keras_demo_classifier

    def build(**kwargs: Any) -> Any:
        calls.append(kwargs)
        if len(calls) == 2:  # the fine-tune's student: enough seen
            raise _Stop
        model = real(**kwargs)
        model.fit = lambda *args, **kw: None  # the optimizer is what counts here, not the training
        return model

    monkeypatch.setattr(demo, "keras_demo_classifier", build)
    monkeypatch.setattr(demo, "_dense_variant", lambda *args: None)  # no export of the dense model
    with pytest.raises(_Stop):
        run_demo(tmp_path, frameworks=("keras",), epochs=1)
    torch_eps = torch.optim.Adam([torch.zeros(1, requires_grad=True)]).defaults["eps"]
    assert len(calls) == 2 and [c.get("lr", 1e-2) for c in calls] == [1e-2, 3e-3]
    assert all(c.get("epsilon") == torch_eps for c in calls), calls
    assert reference.TORCH_ADAM_EPSILON == torch_eps
    model = real(epsilon=reference.TORCH_ADAM_EPSILON)
    assert model.optimizer.epsilon == pytest.approx(torch_eps, rel=1e-9)


def test_time_interleaved_rotates_and_measures() -> None:
    import time

    calls: list[str] = []

    def sleeper(name: str, seconds: float) -> Any:
        def run(x: object) -> None:
            calls.append(name)
            time.sleep(seconds)

        return run

    fast, slow = time_interleaved([sleeper("fast", 0.0), sleeper("slow", 0.004)], None, rounds=4, burst=2)
    assert len(fast) == len(slow) == 8
    assert min(slow) >= 3.9 and sorted(fast)[4] < sorted(slow)[4]
    # rotating order: round 0 starts with the first runner, round 1 with the second
    rounds = calls[6:]
    assert rounds[:3] == ["fast"] * 3 and rounds[3:6] == ["slow"] * 3 and rounds[6:9] == ["slow"] * 3
    with pytest.raises(ValueError, match="rounds >= 1"):
        time_interleaved([sleeper("x", 0)], None, rounds=0)


def test_table_says_faster_or_slower_and_the_accuracy_verdict() -> None:
    from fitslim_app.demo import ArtifactResult, DemoResult, VariantResult

    def variant(name: str, acc: float, precision: str) -> VariantResult:
        arts = [ArtifactResult(t, precision, "ok", ["f"], 1000, acc, 1.0, 1.0, "rt") for t in ("onnx", "ncnn")]
        return VariantResult(name, 100, acc, arts)

    fw = FrameworkResult(
        "lightning", variant("dense fp32", 0.95, "fp32"), variant("compressed int8", 0.93, "int8"), 1, 1, False,
        [], {}, 0.0, [Speed("onnx", 1.0, 0.5, 0.5), Speed("ncnn", 1.0, 1.2, 1.2)],
    )  # fmt: skip
    text = format_results(DemoResult([fw], "out", {}, 10))
    onnx_row = next(line for line in text.splitlines() if line.startswith("onnx "))
    ncnn_row = next(line for line in text.splitlines() if line.startswith("ncnn "))
    assert "0.50x" in onnx_row and "faster" in onnx_row
    assert "1.20x" in ncnn_row and "slower" in ncnn_row
    assert f"-2.0 pt; NOT within {ACCURACY_BOUND * 100:.0f} pt of dense" in text
    better = FrameworkResult(
        "keras", variant("dense fp32", 0.817, "fp32"), variant("compressed int8", 0.838, "int8"), 1, 1, False,
        [], {}, 0.0, [Speed("onnx", 1.0, 0.5, 0.5)],
    )  # fmt: skip
    assert "+2.1 pt; better than dense)" in format_results(DemoResult([better], "out", {}, 10))
