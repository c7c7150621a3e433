"""Bad inputs, through the ``fitslim`` CLI and the Python API: each is refused with a message naming the flag,
argument or file and the fix, exits 2 (CLI) without a traceback, and leaves no artifact and no empty folder.
"""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fitslim_app.cli import main

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _tiny_onnx(path: Path) -> Path:
    """Conv(1->4, 3x3) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(4->10), input [N, 1, 8, 8]."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.standard_normal((10, 4)).astype(np.float32), "fc")
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["output"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
        [w, fc],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    good = _tiny_onnx(d / "tiny.onnx")
    data = good.read_bytes()
    (d / "corrupt.onnx").write_bytes(np.random.default_rng(1).bytes(2000))
    (d / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (d / "folder.onnx").mkdir()
    (d / "model.pt").write_bytes(b"\x80\x02}q\x00.")
    (d / "junk.ckpt").write_bytes(b"not a checkpoint")
    (d / "junk.pt2").write_bytes(b"not a zip archive")
    (d / "junk.keras").write_bytes(b"PK\x03\x04 truncated")
    (d / "a_file").write_text("I am a file")
    np.save(d / "calib.npy", np.random.default_rng(2).random((16, 1, 8, 8), dtype=np.float32))
    np.save(d / "nhwc.npy", np.random.default_rng(2).random((16, 8, 8, 1), dtype=np.float32))
    np.save(d / "wrong.npy", np.random.default_rng(2).random((16, 1, 7, 7), dtype=np.float32))
    np.save(d / "flat.npy", np.zeros(16, dtype=np.float32))
    np.save(d / "empty.npy", np.zeros((0, 1, 8, 8), dtype=np.float32))
    np.save(d / "nan.npy", np.full((4, 1, 8, 8), np.nan, dtype=np.float32))
    np.save(d / "strings.npy", np.array([["a", "b"], ["c", "d"]]))
    np.save(d / "objects.npy", np.array([{"x": 1}, None], dtype=object), allow_pickle=True)
    (d / "junk.npy").write_bytes(b"\x93NUMPY garbage that is not a header")
    (d / "calib.txt").write_text("0.1 0.2 0.3")
    (d / "spec.json").write_text("{not json")
    return {p.name: p for p in d.iterdir()}


# (case id, argv with {name} for a file of the fixture and {out} for the output folder, words the message must hold)
CLI_CASES: list[tuple[str, list[str], list[str]]] = [
    ("missing model", ["{dir}/nope.onnx", "--to", "onnx"], ["MODEL", "does not exist"]),
    ("unsupported suffix", ["{model.pt}", "--to", "onnx"], ["MODEL", "not a supported file", "torch.export.save"]),
    ("model is a folder", ["{folder.onnx}", "--to", "onnx"], ["MODEL", "is a folder"]),
    (
        "corrupt onnx",
        ["{corrupt.onnx}", "--to", "onnx"],
        ["MODEL", "corrupt.onnx", "not a valid ONNX", "export it again"],
    ),
    ("truncated onnx", ["{truncated.onnx}", "--to", "onnx"], ["MODEL", "truncated.onnx", "truncated"]),
    ("unknown target", ["{tiny.onnx}", "--to", "tfite"], ["--to", "tfite", "choose any of"]),
    ("tflite from onnx", ["{tiny.onnx}", "--to", "ncnn", "tflite"], ["--to tflite", ".keras", "drop tflite"]),
    ("bad precision", ["{tiny.onnx}", "--to", "onnx", "--precision", "int4"], ["--precision", "int4", "choose"]),
    ("shape not integers", ["{tiny.onnx}", "--to", "onnx", "--input-shape", "1,x,8"], ["--input-shape", "integers"]),
    ("shape zero dim", ["{tiny.onnx}", "--to", "onnx", "--input-shape", "0,1,8,8"], ["--input-shape", ">= 1"]),
    ("shape vs model", ["{tiny.onnx}", "--to", "onnx", "--input-shape", "1,3,8,8"], ["--input-shape", "?,1,8,8"]),
    (
        "unknown dtype",
        ["{tiny.onnx}", "--to", "onnx", "--input-shape", "1,1,8,8", "--input-dtype", "float8"],
        ["--input-dtype", "float8", "choose"],
    ),
    (
        "dtype count",
        ["{tiny.onnx}", "--to", "onnx", "--input-dtype", "int64"],
        ["--input-dtype", "one --input-dtype per"],
    ),
    (
        "missing calibration",
        ["{tiny.onnx}", "--to", "onnx", "--calibration", "{dir}/none.npy"],
        ["--calibration", "does not exist", "numpy.save"],
    ),
    (
        "calibration not npy",
        ["{tiny.onnx}", "--to", "onnx", "--calibration", "{calib.txt}"],
        ["--calibration", "calib.txt", "numpy.save"],
    ),
    (
        "junk npy",
        ["{tiny.onnx}", "--to", "onnx", "--calibration", "{junk.npy}"],
        ["--calibration", "junk.npy", "not a readable NumPy array"],
    ),
    (
        "pickled npy",
        ["{tiny.onnx}", "--to", "onnx", "--calibration", "{objects.npy}"],
        ["--calibration", "objects.npy", "numpy.save"],
    ),
    (
        "string npy",
        ["{tiny.onnx}", "--to", "onnx", "--calibration", "{strings.npy}"],
        ["--calibration", "strings.npy", "numeric"],
    ),
    (
        "1-d calibration",
        ["{tiny.onnx}", "--to", "onnx", "--calibration", "{flat.npy}"],
        ["--calibration", "(N, *input"],
    ),
    ("empty calibration", ["{tiny.onnx}", "--to", "onnx", "--calibration", "{empty.npy}"], ["--calibration", "N >= 1"]),
    ("nan calibration", ["{tiny.onnx}", "--to", "onnx", "--calibration", "{nan.npy}"], ["--calibration", "NaN"]),
    (
        "calibration shape",
        ["{tiny.onnx}", "--to", "onnx", "--calibration", "{wrong.npy}"],
        ["--calibration", "(1, 7, 7)", "(1, 8, 8)"],
    ),
    (
        "nhwc calibration",
        ["{tiny.onnx}", "--to", "onnx", "--calibration", "{nhwc.npy}"],
        ["--calibration", "NHWC", "np.transpose(x, (0, 3, 1, 2))"],
    ),
    ("int8 without data", ["{tiny.onnx}", "--to", "onnx", "--precision", "int8"], ["--calibration", "--quant-spec"]),
    (
        "missing quant spec",
        ["{tiny.onnx}", "--to", "onnx", "--quant-spec", "{dir}/q.json"],
        ["--quant-spec", "does not exist"],
    ),
    (
        "junk quant spec",
        ["{tiny.onnx}", "--to", "onnx", "--quant-spec", "{spec.json}"],
        ["--quant-spec", "spec.json", "not a QuantSpec"],
    ),
    ("output is a file", ["{tiny.onnx}", "--to", "onnx", "--output", "{a_file}"], ["--output", "is a file"]),
    (
        "output under a file",
        ["{tiny.onnx}", "--to", "onnx", "--output", "{a_file}/exports"],
        ["--output", "a_file", "folders"],
    ),
    ("threads", ["{tiny.onnx}", "--to", "onnx", "--threads", "0"], ["--threads", ">= 1"]),
    ("module for onnx", ["{tiny.onnx}", "--to", "onnx", "--module", "x.Y"], ["--module", "drop it"]),
    ("ckpt without module", ["{junk.ckpt}", "--to", "onnx"], ["--module", "checkpoint", "--module my_project"]),
    ("module not dotted", ["{junk.ckpt}", "--to", "onnx", "--module", "Classifier"], ["--module", "dotted path"]),
]
TORCH_CASES: list[tuple[str, list[str], list[str]]] = [
    (
        "module not importable",
        ["{junk.ckpt}", "--to", "onnx", "--module", "no_such_pkg.Model"],
        ["--module", "no_such_pkg", "PYTHONPATH"],
    ),
    (
        "module has no class",
        ["{junk.ckpt}", "--to", "onnx", "--module", "lightning_plugins.reference.Nope"],
        ["--module", "'Nope'"],
    ),
    (
        "module not lightning",
        ["{junk.ckpt}", "--to", "onnx", "--module", "collections.OrderedDict"],
        ["--module", "load_from_checkpoint"],
    ),
    (
        "corrupt ckpt",
        ["{junk.ckpt}", "--to", "onnx", "--module", "lightning_plugins.reference.DigitsClassifier"],
        ["MODEL", "junk.ckpt", "load_from_checkpoint"],
    ),
    ("corrupt pt2", ["{junk.pt2}", "--to", "onnx"], ["MODEL", "junk.pt2", "torch.export.save"]),
]
KERAS_CASES: list[tuple[str, list[str], list[str]]] = [
    ("corrupt keras", ["{junk.keras}", "--to", "tflite"], ["MODEL", "junk.keras", "model.save"]),
]


def _argv(template: list[str], files: dict[str, Path], out: Path) -> list[str]:
    names = {"dir": str(next(iter(files.values())).parent), "out": str(out), **{k: str(v) for k, v in files.items()}}
    out_args = []
    for a in template:
        for key, value in names.items():
            a = a.replace("{" + key + "}", value)
        out_args.append(a)
    return out_args


def _run_bad(argv: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    before = {p for p in out.parent.rglob("*")}
    code = main(["export", *argv] + ([] if "--output" in argv else ["--output", str(out)]))
    captured = capsys.readouterr()
    assert code == 2, (code, captured.out[-2000:], captured.err[-2000:])
    err = captured.err.strip()
    assert "Traceback" not in captured.err + captured.out
    assert err.startswith("fitslim export: ") and "\n" not in err, err
    assert not out.exists(), "a refused export must not create its output folder"
    created = {p for p in out.parent.rglob("*")} - before
    assert not created, created
    return err


def _check(case: tuple[str, list[str], list[str]], files: dict[str, Path], tmp_path: Path, capsys: Any) -> None:
    _, template, words = case
    err = _run_bad(_argv(template, files, tmp_path / "exports"), tmp_path / "exports", capsys)
    for word in words:
        assert word in err, (word, err)


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_refuses(case: Any, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _check(case, files, tmp_path, capsys)


@pytest.mark.parametrize("case", TORCH_CASES, ids=[c[0] for c in TORCH_CASES])
def test_cli_refuses_torch_files(
    case: Any, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("lightning")
    _check(case, files, tmp_path, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("case", KERAS_CASES, ids=[c[0] for c in KERAS_CASES])
def test_cli_refuses_keras_files(
    case: Any, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("keras")
    _check(case, files, tmp_path, capsys)


def test_cli_refuses_read_only_output(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.geteuid() == 0:  # root writes anywhere: answer as the file system would for anyone else
        real = os.access
        monkeypatch.setattr(
            os,
            "access",
            lambda p, mode: real(p, mode) and not (mode & os.W_OK and not os.stat(p).st_mode & stat.S_IWUSR),
        )
    try:
        err = _run_bad(
            [str(files["tiny.onnx"]), "--to", "onnx", "--output", str(locked / "exports")], locked / "exports", capsys
        )
    finally:
        locked.chmod(stat.S_IRWXU)
    assert "--output" in err and "locked" in err and "writable folder" in err


def test_debug_shows_the_traceback(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["export", str(files["corrupt.onnx"]), "--to", "onnx", "--output", str(tmp_path / "e")]
    assert main(["--debug", *argv]) == 2
    assert "Traceback" in capsys.readouterr().err
    assert main([*argv, "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("fitslim export: MODEL")


def test_argparse_errors_exit_2_with_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["export", "model.onnx"])  # --to is required
    assert exc.value.code == 2
    assert "--to" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- Python API


def _no_artifacts(root: Path) -> None:
    left = [p for p in root.rglob("*") if p.is_file() and p.suffix not in (".onnx", ".npy")]
    assert not left, left


def test_api_unknown_target_and_precision(files: dict[str, Path], tmp_path: Path) -> None:
    from exporters import export

    out = tmp_path / "e"
    with pytest.raises(ValueError, match=r"targets: unknown \['tfite'\]; choose"):
        export(str(files["tiny.onnx"]), ["tfite"], directory=out)
    with pytest.raises(ValueError, match=r"precision: unknown 'int4'; choose"):
        export(str(files["tiny.onnx"]), ["onnx"], precision="int4", directory=out)
    assert not out.exists()


def test_api_int8_without_calibration_leaves_no_folder(files: dict[str, Path], tmp_path: Path) -> None:
    from exporters import export

    out = tmp_path / "e"
    with pytest.raises(ValueError, match="calibration: int8 export needs calibration"):
        export(str(files["tiny.onnx"]), ["onnx"], precision="int8", directory=out)
    assert not out.exists()


def test_api_model_paths(files: dict[str, Path], tmp_path: Path) -> None:
    from exporters import export

    with pytest.raises(FileNotFoundError, match="model: ONNX file .* does not exist"):
        export(str(tmp_path / "nope.onnx"), ["onnx"], directory=tmp_path / "e")
    with pytest.raises(ValueError, match="model: a path must name an .onnx file"):
        export(str(files["model.pt"]), ["onnx"], directory=tmp_path / "e")
    with pytest.raises(ValueError, match="model: unsupported type builtins.object"):
        export(object(), ["onnx"], directory=tmp_path / "e")
    assert not (tmp_path / "e").exists()


def test_api_corrupt_onnx(files: dict[str, Path], tmp_path: Path) -> None:
    from exporters import export

    out = tmp_path / "e"
    with pytest.raises(ValueError, match=r"model: .*corrupt\.onnx.* is not a valid ONNX model"):
        export(str(files["corrupt.onnx"]), ["onnx"], directory=out)
    assert not out.exists()


def test_api_calibration_batches(files: dict[str, Path], tmp_path: Path) -> None:
    from exporters import export

    out = tmp_path / "e"
    model = str(files["tiny.onnx"])
    with pytest.raises(ValueError, match="calibration: the iterable gave no batch"):
        export(model, ["onnx"], calibration=iter([]), precision="int8", directory=out)
    odd = [np.zeros((2, 1, 8, 8), np.float32), np.zeros((2, 1, 7, 7), np.float32)]
    with pytest.raises(ValueError, match="calibration: batches have different sample shapes"):
        export(model, ["onnx"], calibration=odd, precision="int8", directory=out)
    with pytest.raises(ValueError, match=r"calibration: a dict batch needs one of the keys"):
        export(model, ["onnx"], calibration=[{"pixels": np.zeros((2, 1, 8, 8))}], precision="int8", directory=out)
    assert not out.exists()


def test_api_output_is_a_file(files: dict[str, Path], tmp_path: Path) -> None:
    from exporters import export

    with pytest.raises(ValueError, match=r"directory: .*a_file.* is a file"):
        export(str(files["tiny.onnx"]), ["onnx"], directory=files["a_file"])
    assert files["a_file"].read_text() == "I am a file"


def test_api_nhwc_batch_to_a_torch_model(tmp_path: Path, digits_nhwc: Any) -> None:
    pytest.importorskip("torch")
    from exporters import export
    from lightning_plugins.models import torch_model

    out = tmp_path / "e"
    with pytest.raises(ValueError, match=r"example_input: .*\(1, 8, 8, 1\).*NCHW"):
        export(torch_model("digits_cnn", width=0.5), ["onnx"], example_input=digits_nhwc.x_test[:1], directory=out)
    assert not out.exists()


def test_pickle_is_never_loaded(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A pickled .npy could run code: it is refused, not unpickled."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> Any:
            return (Path.touch, (marker,))

    path = tmp_path / "evil.npy"
    np.save(path, np.array([Payload()], dtype=object), allow_pickle=True)
    assert pickle.dumps(Payload())  # the payload is real
    err = _run_bad([str(files["tiny.onnx"]), "--to", "onnx", "--calibration", str(path)], tmp_path / "out", capsys)
    assert "--calibration" in err and not marker.exists()


def _branchy() -> Any:
    torch = pytest.importorskip("torch")

    class Branchy(torch.nn.Module):
        """Branches on its input: torch.export cannot trace it, the legacy tracer keeps one branch."""

        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.a = torch.nn.Linear(64, 10)
            self.b = torch.nn.Linear(64, 10)

        def forward(self, x: Any) -> Any:
            x = x.flatten(1)
            return self.a(x) if x.sum() > 0 else self.b(x)

    return Branchy()


@pytest.mark.slow
def test_legacy_tracer_fallback_is_refused_for_data_dependent_branches(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from exporters import export

    x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    report = export(_branchy(), ["onnx", "ncnn"], example_input=x, directory=tmp_path / "e")
    for row in report:
        assert row.status == "failed", row
        assert "legacy torch.onnx tracer" in row.reason and "branches on its input data" in row.reason, row.reason
        assert "torch.cond" in row.reason
    assert not list((tmp_path / "e").glob("*.onnx")) and not list((tmp_path / "e").rglob("*.partial"))


@pytest.mark.slow
def test_legacy_tracer_fallback_is_a_warning_in_the_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When torch.export fails on a model without data-dependent branches, the trace is used, and the report says so."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from exporters import export

    real = torch.onnx.export

    def dynamo_fails(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("dynamo"):
            raise RuntimeError("simulated torch.export failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    x = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    report = export(model, ["onnx"], example_input=x, directory=tmp_path / "e")
    assert report["onnx"].status == "ok", report["onnx"].reason
    notes = " ".join(report["onnx"].notes)
    assert "WARNING: the legacy torch.onnx tracer was used" in notes and "simulated torch.export failure" in notes
    assert "a second trace on another input computes the same outputs" in notes
    assert "WARNING: the legacy torch.onnx tracer" in (tmp_path / "e" / "report.md").read_text()
