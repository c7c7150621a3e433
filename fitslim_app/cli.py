"""The ``fitslim`` command line: ``demo``, ``export`` and ``report``.

``fitslim export`` takes the file a user already has: an ``.onnx`` model, a Keras ``.keras`` file, a torch
``ExportedProgram`` saved with ``torch.export.save`` (``.pt2``), or a Lightning ``.ckpt`` with the class that
loads it (``--module pkg.Class``). Exit status: 0 every target ok, 1 a target failed or does not match the
model, 2 bad arguments. Errors are one line naming the flag or file and the fix; ``--debug`` adds the
traceback.

Example:
    $ fitslim export model.ckpt --module my_project.Classifier --input-shape 1,3,32,32 --to onnx ncnn
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import re
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fitslim import __version__

__all__ = ["UsageError", "installed_frameworks", "main"]

TARGETS = ("onnx", "ncnn", "tflite", "tensorrt")
MODEL_SUFFIXES = (".onnx", ".keras", ".pt2", ".ckpt")
DTYPES = ("float32", "float16", "int64", "int32", "bool")
_FRAMEWORK_EXTRA = {"torch": "lightning", "lightning": "lightning", "keras": "keras", "onnx": "onnx"}

#: Python argument names in library messages, and the flag a CLI user sets instead
_FLAGS = {
    "targets": "--to",
    "calibration": "--calibration",
    "example_input": "--input-shape",
    "precision": "--precision",
    "quant_spec": "--quant-spec",
    "directory": "--output",
    "threads": "--threads",
    "model": "MODEL",
}
_FLAG_RE = re.compile(r"(?<![\w.\-'\"])(" + "|".join(_FLAGS) + r")(?=[:=]| must| needs)")


def _why(err: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters)."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__


class UsageError(ValueError):
    """A bad argument: the CLI prints the message and exits with status 2."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fitslim", description="Compress and export models trained with Lightning or Keras."
    )
    parser.add_argument("--version", action="version", version=f"fitslim {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="train, compress (pruning + QAT + distillation), export and compare the reference CNN on the bundled "
        "digits with each installed framework",
    )
    demo.add_argument("--output", default="fitslim-demo", help="output folder (default: %(default)s)")
    demo.add_argument("--quick", action="store_true", help="a short run (fewer epochs)")
    demo.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--data",
        default="digits",
        choices=["digits", "fashion-mnist"],
        help="digits: the bundled scikit-learn digits (default); fashion-mnist: Fashion-MNIST, installed separately "
        "(apt-get install dataset-fashion-mnist, or the four files in $FITSLIM_FASHION_MNIST)",
    )
    demo.add_argument(
        "--frameworks",
        nargs="+",
        default=None,
        choices=["lightning", "keras"],
        help="which frameworks to run (default: every installed one)",
    )
    demo.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    exp = sub.add_parser(
        "export",
        help="export a model file (.onnx, .keras, .pt2, Lightning .ckpt) to ONNX, ncnn, TFLite and TensorRT, "
        "each artifact verified in its runtime",
    )
    exp.add_argument(
        "model",
        metavar="MODEL",
        help=".onnx, .keras, .pt2 (torch.export.save of an ExportedProgram) or a Lightning .ckpt (with --module)",
    )
    exp.add_argument("--to", nargs="+", required=True, metavar="TARGET", help="any of " + " ".join(TARGETS))
    exp.add_argument(
        "--module",
        default=None,
        metavar="PKG.CLASS",
        help="the LightningModule class of a .ckpt, e.g. my_project.models.Classifier (importable from here)",
    )
    exp.add_argument(
        "--input-shape",
        action="append",
        default=None,
        metavar="SHAPE",
        help="one input's shape, e.g. 1,3,160,160; repeat for each input (default: the model's declared shape)",
    )
    exp.add_argument(
        "--input-dtype",
        action="append",
        default=None,
        metavar="DTYPE",
        help=f"one input's dtype, in the order of --input-shape: {', '.join(DTYPES)} (default: float32)",
    )
    exp.add_argument(
        "--calibration", default=None, help=".npy file of real inputs in the model's layout, (N, *input shape)"
    )
    exp.add_argument("--precision", default="fp32", help="fp32, fp16 or int8 (default: %(default)s)")
    exp.add_argument("--quant-spec", default=None, help="a quant_spec.json learned by QAT")
    exp.add_argument("--output", default="exports", help="output folder (default: %(default)s)")
    exp.add_argument("--threads", type=int, default=2)
    exp.add_argument(
        "--ncnn-depthwise",
        choices=["int8", "float"],
        default="int8",
        help="float: depthwise convolutions stay fp32 in the ncnn int8 model, faster on x86 (default: %(default)s)",
    )
    exp.add_argument(
        "--onnx-weights",
        choices=["auto", "int8", "uint8"],
        default="auto",
        help="weight storage of the onnx int8 artifact: uint8 for x86 CPUs without VNNI, int8 for ARM and VNNI CPUs, "
        "auto for this CPU (default: %(default)s)",
    )
    exp.add_argument("--no-verify", action="store_true", help="skip running each artifact in its runtime")
    exp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    rep = sub.add_parser("report", help="print the report of an earlier export")
    rep.add_argument("directory", nargs="?", default="exports")
    rep.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    return parser


# --------------------------------------------------------------------------------------------- arguments


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        raise UsageError(f"--input-shape: expected integers like 1,3,160,160; got {text!r}.") from None
    if not dims or any(d < 1 for d in dims):
        raise UsageError(f"--input-shape: every dimension must be >= 1; got {text!r}. Give e.g. 1,3,160,160.")
    return dims


def _need(module: str, what: str, extra: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise UsageError(f"{what} needs {module.split('.')[0]} ({err}): pip install 'fitslim[{extra}]'") from err


@dataclass
class _Inputs:
    """The example inputs the CLI builds: shapes and dtypes per input (None where the model declares them)."""

    shapes: list[tuple[int, ...]] = field(default_factory=list)
    dtypes: list[str] = field(default_factory=list)

    def arrays(self) -> list[npt.NDArray[Any]]:
        rng = np.random.default_rng(0)
        out: list[npt.NDArray[Any]] = []
        for shape, dtype in zip(self.shapes, self.dtypes, strict=True):
            if dtype in ("float32", "float16"):
                out.append(rng.random(shape, dtype=np.float32).astype(dtype))
            else:  # 0 or 1: valid token ids for any vocabulary and valid attention masks
                out.append(rng.integers(0, 2, shape).astype(dtype))
        return out


def _inputs(args: argparse.Namespace) -> _Inputs:
    shapes = [_shape(s) for s in args.input_shape or []]
    dtypes = list(args.input_dtype or [])
    for d in dtypes:
        if d not in DTYPES:
            raise UsageError(f"--input-dtype: unknown {d!r}; choose one of {', '.join(DTYPES)}.")
    if dtypes and len(dtypes) != len(shapes):
        raise UsageError(
            f"--input-dtype: got {len(dtypes)} dtype(s) for {len(shapes)} --input-shape(s); give one "
            "--input-dtype per --input-shape, in the same order."
        )
    return _Inputs(shapes, dtypes or ["float32"] * len(shapes))


def _check_targets(args: argparse.Namespace) -> list[str]:
    bad = [t for t in args.to if t not in TARGETS]
    if bad:
        raise UsageError(f"--to: unknown target(s) {bad}; choose any of {' '.join(TARGETS)}.")
    if "tflite" in args.to and Path(args.model).suffix.lower() == ".onnx":
        raise UsageError(
            "--to tflite: the TFLite converters take the Keras or torch model, not an .onnx file. "
            "Give the .keras, .pt2 or .ckpt file instead, or drop tflite."
        )
    return list(dict.fromkeys(args.to))


def _check_precision(text: str) -> str:
    from fitslim.recipe import PRECISIONS

    if text not in PRECISIONS:
        raise UsageError(f"--precision: unknown {text!r}; choose one of {', '.join(PRECISIONS)}.")
    return text


def _check_output(text: str) -> tuple[Path, bool]:
    """The output folder and whether it exists already; nothing is created here."""
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output: {text!r} is a file, not a folder; give a folder name, e.g. --output exports.")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"--output: {str(probe)!r} (in {text!r}) is a file; give a path made of folders.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--output: cannot write in {str(probe)!r} (permission denied); choose a writable folder.")
    return out, out.exists()


def _load_calibration(text: str) -> npt.NDArray[Any]:
    path = Path(text)
    if not path.is_file():
        raise UsageError(f"--calibration: {text!r} does not exist; give an .npy file saved with numpy.save.")
    if path.suffix.lower() != ".npy":
        raise UsageError(
            f"--calibration: {text!r} is not an .npy file; save the inputs with numpy.save('calib.npy', x)."
        )
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as err:  # truncated, pickled or not NumPy at all
        raise UsageError(
            f"--calibration: {text!r} is not a readable NumPy array ({type(err).__name__}: {err}); "
            "save a numeric array with numpy.save('calib.npy', x)."
        ) from err
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "biuf":
        raise UsageError(
            f"--calibration: {text!r} holds {getattr(data, 'dtype', type(data).__name__)} data; "
            "save a numeric array of inputs, e.g. x.astype('float32')."
        )
    if data.ndim < 2 or len(data) == 0:
        raise UsageError(
            f"--calibration: {text!r} has shape {data.shape}; expected (N, *input shape) with N >= 1 samples."
        )
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise UsageError(f"--calibration: {text!r} contains NaN or infinite values; pass real inputs.")
    return data


def _check_calibration(data: npt.NDArray[Any], text: str, expected: tuple[int | None, ...] | None) -> None:
    """Compare the per-sample shape with the model's declared input (batch dimension excluded)."""
    if expected is None:
        return
    want = tuple(expected[1:])
    got = tuple(data.shape[1:])
    fits = len(got) == len(want) and all(w is None or w == g for w, g in zip(want, got, strict=True))
    if fits:
        return
    hint = "save inputs of the model's shape"
    if len(got) == 3 and len(want) == 3 and want[0] is not None and got[-1] == want[0] and got[:2] == want[1:]:
        hint = "this looks like NHWC (channels last) while the model takes NCHW: np.transpose(x, (0, 3, 1, 2))"
    elif len(got) == 3 and len(want) == 3 and want[-1] is not None and got[0] == want[-1] and got[1:] == want[:2]:
        hint = "this looks like NCHW (channels first) while the model takes NHWC: np.transpose(x, (0, 2, 3, 1))"
    shown = tuple("?" if w is None else w for w in want)
    raise UsageError(f"--calibration: samples of {text!r} have shape {got}, the model takes {shown}; {hint}.")


# ----------------------------------------------------------------------------------------------- models


@dataclass
class _Loaded:
    model: Any  # what exporters.export takes: an .onnx path, a torch.nn.Module or a Keras model
    framework: str  # onnx, torch or keras
    input_shape: tuple[int | None, ...] | None  # the declared input (batch dimension first) when known
    example: list[npt.NDArray[Any]] | None = None  # inputs saved with the model (ExportedProgram)


def _load_onnx(path: Path) -> _Loaded:
    onnx = _need("onnx", f"MODEL {str(path)!r}", "onnx")
    try:
        proto = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(proto)
    except Exception as err:
        raise UsageError(
            f"MODEL: {str(path)!r} is not a valid ONNX model ({_why(err)}); "
            "the file may be truncated or not ONNX at all: export it again."
        ) from err
    init = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init]
    if not inputs:
        raise UsageError(f"MODEL: {str(path)!r} has no graph input; export a model that takes an input.")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = tuple((d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None) for d in dims)
    return _Loaded(str(path), "onnx", shape)


def _load_keras(path: Path) -> _Loaded:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _need("keras", f"MODEL {str(path)!r}", "keras")
    kc = _need("keras_callbacks", f"MODEL {str(path)!r}", "keras")
    try:
        model = kc.load_model(path, compile=False)
    except Exception as err:
        raise UsageError(
            f"MODEL: cannot load {str(path)!r} as a Keras model ({_why(err)}); "
            "save it with model.save('model.keras') (custom layers need @keras.saving.register_keras_serializable)."
        ) from err
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, list):
        shape = shape[0]
    return _Loaded(model, "keras", tuple(shape) if shape is not None else None)


def _load_pt2(path: Path) -> _Loaded:
    torch = _need("torch", f"MODEL {str(path)!r}", "lightning")
    quiet = logging.getLogger("torch.export")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # torch logs a traceback before raising on a file that is not a .pt2
    try:
        program = torch.export.load(str(path))
    except Exception as err:
        raise UsageError(
            f"MODEL: cannot load {str(path)!r} as a torch ExportedProgram ({_why(err)}); save one with "
            "torch.export.save(torch.export.export(model.eval(), (x,)), 'model.pt2')."
        ) from err
    finally:
        quiet.setLevel(level)
    example = None
    args = getattr(program, "example_inputs", None)
    if args and args[0]:
        example = [a.detach().cpu().numpy() for a in args[0] if hasattr(a, "detach")]
    shape = tuple(example[0].shape) if example else None
    return _Loaded(_program_module(torch, program), "torch", shape, example)


def _program_module(torch: Any, program: Any) -> Any:
    """An ``nn.Module`` running the ExportedProgram on any batch size its graph allows.

    ``ExportedProgram.module()`` refuses ``eval()`` and checks every call against the batch size it was exported
    with; the exporters trace with batch 2 and a dynamic batch axis. The batch check is dropped here, and the
    probe in :func:`_probe` tells whether the graph really runs on another batch size.
    """
    try:
        graph = program.module(check_guards=False)
    except TypeError:  # torch before 2.9 has no guard functions to skip
        graph = program.module()
    for key, hook in list(graph._forward_pre_hooks.items()):
        if getattr(hook, "__name__", "") == "_check_input_constraints_pre_hook":
            del graph._forward_pre_hooks[key]

    class ExportedProgramModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.program = graph

        def train(self, mode: bool = True) -> ExportedProgramModule:
            self.training = mode  # the graph is already in inference form; it refuses train()/eval()
            return self

    # forward takes the program's named inputs, so exporters can give dynamic shapes and ONNX names per input
    names = [spec.arg.name for spec in program.graph_signature.input_specs if spec.kind.name == "USER_INPUT"]
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(n, kind) for n in ["self", *names]]

    def forward(self: Any, *args: Any) -> Any:
        return self.program(*args)

    forward.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    cls = type("ExportedProgramModule", (ExportedProgramModule,), {"forward": forward})
    return cls()


def _load_ckpt(path: Path, module: str | None) -> _Loaded:
    if not module:
        raise UsageError(
            f"--module: {str(path)!r} is a Lightning checkpoint, which holds weights but not the model class; "
            "add --module my_project.models.MyModule (the LightningModule class that wrote it)."
        )
    _need("torch", f"MODEL {str(path)!r}", "lightning")
    mod_name, _, cls_name = module.rpartition(".")
    if not mod_name or not cls_name:
        raise UsageError(f"--module: expected a dotted path like my_project.models.MyModule; got {module!r}.")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does: the user's package is found from here
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as err:
        raise UsageError(
            f"--module: cannot import {mod_name!r} ({err}); run from the folder that holds it or set PYTHONPATH."
        ) from err
    cls = getattr(mod, cls_name, None)
    if cls is None:
        raise UsageError(
            f"--module: {mod_name!r} has no {cls_name!r}; give the LightningModule class that wrote the checkpoint."
        )
    if not callable(getattr(cls, "load_from_checkpoint", None)):
        raise UsageError(
            f"--module: {module!r} is not a LightningModule class (it has no load_from_checkpoint); "
            "give the class that wrote the checkpoint."
        )
    try:
        model = cls.load_from_checkpoint(str(path), map_location="cpu")
    except Exception as err:
        raise UsageError(
            f"MODEL: cannot load {str(path)!r} with {module}.load_from_checkpoint ({_why(err)}); "
            "check that the checkpoint was written by that class."
        ) from err
    model.eval()
    example = getattr(model, "example_input_array", None)
    arrays = None
    if example is not None and hasattr(example, "detach"):
        arrays = [example.detach().cpu().numpy()]
    return _Loaded(model, "torch", tuple(arrays[0].shape) if arrays else None, arrays)


def _load(args: argparse.Namespace) -> _Loaded:
    path = Path(args.model)
    suffix = path.suffix.lower()
    if suffix not in MODEL_SUFFIXES:
        hint = (
            " For a torch model, save an ExportedProgram: torch.export.save(torch.export.export(model.eval(), (x,)), "
            "'model.pt2')."
            if suffix in (".pt", ".pth", ".bin")
            else ""
        )
        raise UsageError(
            f"MODEL: {args.model!r} is not a supported file; give an .onnx, .keras, .pt2 or a Lightning .ckpt "
            f"(with --module).{hint}"
        )
    if not path.exists():
        raise UsageError(f"MODEL: {args.model!r} does not exist; check the path.")
    if not path.is_file():
        raise UsageError(f"MODEL: {args.model!r} is a folder; give the model file inside it.")
    if args.module and suffix != ".ckpt":
        raise UsageError(f"--module: only a Lightning .ckpt needs the module class; drop it for {suffix} files.")
    if suffix == ".onnx":
        return _load_onnx(path)
    if suffix == ".keras":
        return _load_keras(path)
    if suffix == ".pt2":
        return _load_pt2(path)
    return _load_ckpt(path, args.module)


def _example(loaded: _Loaded, inputs: _Inputs) -> list[npt.NDArray[Any]] | None:
    """The example inputs: --input-shape, else what the file carries; checked against a declared shape."""
    if not inputs.shapes:
        return loaded.example
    declared = loaded.input_shape
    if declared is not None and len(inputs.shapes) == 1:
        got = inputs.shapes[0]
        fits = len(got) == len(declared) and all(
            d is None or d == g for d, g in zip(declared[1:], got[1:], strict=False)
        )
        if not fits:
            shown = ",".join("?" if d is None else str(d) for d in declared)
            raise UsageError(
                f"--input-shape: {','.join(map(str, got))} does not fit the model's input ({shown}); give "
                "the shape the model was trained on (torch models take NCHW, Keras models NHWC)."
            )
    return inputs.arrays()


def _probe(loaded: _Loaded, example: list[npt.NDArray[Any]]) -> None:
    """Run the model once on the example, so that a shape or layout error is an argument error, not a crash."""
    if loaded.framework != "torch":
        return
    import torch

    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in example]
    try:
        with torch.no_grad():
            loaded.model(*tensors)
    except Exception as err:
        shapes = " and ".join(str(tuple(a.shape)) for a in example)
        raise UsageError(
            f"--input-shape: the model fails on inputs of shape {shapes} ({_why(err)}); "
            "torch models take NCHW, e.g. 1,3,224,224."
        ) from err
    try:  # the exporters trace with batch 2 and a dynamic batch axis
        with torch.no_grad():
            loaded.model(*[torch.cat([t[:1], t[:1]]) for t in tensors])
    except Exception as err:
        raise UsageError(
            f"MODEL: the model runs with batch 1 only ({_why(err)}); export the ExportedProgram with a dynamic "
            "batch: torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim('batch')},))."
        ) from err


def _flags(message: str) -> str:
    """A library message with Python argument names replaced by the CLI flags that set them."""
    return _FLAG_RE.sub(lambda m: _FLAGS[m.group(1)], message)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()  # only succeeds on an empty folder
    except OSError:
        pass


def _export(args: argparse.Namespace) -> int:
    targets = _check_targets(args)
    precision = _check_precision(args.precision)
    if args.threads < 1:
        raise UsageError(f"--threads: must be >= 1; got {args.threads}.")
    inputs = _inputs(args)
    out, existed = _check_output(args.output)
    calibration = _load_calibration(args.calibration) if args.calibration else None
    spec = None
    if args.quant_spec:
        from fitslim.quantspec import QuantSpec

        if not Path(args.quant_spec).is_file():
            raise UsageError(f"--quant-spec: {args.quant_spec!r} does not exist; give the quant_spec.json QAT wrote.")
        try:
            spec = QuantSpec.load(args.quant_spec)
        except Exception as err:
            raise UsageError(
                f"--quant-spec: {args.quant_spec!r} is not a QuantSpec ({type(err).__name__}: {err}); "
                "give the quant_spec.json written by QuantizationAware or an earlier int8 export."
            ) from err
    if precision == "int8" and calibration is None and spec is None:
        raise UsageError("--calibration: int8 needs real inputs to calibrate on (an .npy file) or --quant-spec.")
    loaded = _load(args)
    example = _example(loaded, inputs)
    if calibration is not None:
        declared = tuple(example[0].shape) if example else loaded.input_shape
        _check_calibration(calibration, args.calibration, declared)
        calibration = calibration.astype(np.float32)
        if example is None:
            example = [calibration[:1]]
    if example is None and loaded.framework == "torch":
        raise UsageError(
            "--input-shape: this model does not say what input it takes; give one, e.g. --input-shape 1,3,224,224."
        )
    if example is not None:
        _probe(loaded, example)
    example_input: Any = None
    if example is not None:
        example_input = example[0] if len(example) == 1 else tuple(example)

    from exporters import export

    steps = iter(range(1, 100))

    def progress(msg: str) -> None:
        print(f"[{next(steps)}/{len(targets) + 1}] {msg} ...", flush=True)

    try:
        report = export(
            loaded.model,
            targets,
            example_input=example_input,
            calibration=calibration,
            precision=precision,
            quant_spec=spec,
            directory=out,
            verify=not args.no_verify,
            threads=args.threads,
            progress=progress,
            ncnn_depthwise=args.ncnn_depthwise,
            onnx_weights=args.onnx_weights,
        )
    except BaseException:
        if not existed:
            _remove_if_empty(out)
        raise
    print()
    print(report)
    if report.ok:
        return 0
    if report.results and all(r.written for r in report.results):  # written; what nothing checked is said
        names = ", ".join(f"{r.target} ({r.precision})" for r in report.unverified)
        why = "--no-verify" if args.no_verify else "see the reasons above"
        print(f"fitslim export: {names} written but not verified ({why})", file=sys.stderr)
        return 0
    bad = [f"{r.target} {r.status}" for r in report.results if r.status != "ok"]
    print(f"fitslim export: {', '.join(bad)} (see {out / 'report.md'})", file=sys.stderr)
    return 1


# --------------------------------------------------------------------------------------------------- demo


#: what each framework's half of the demo trains with: (module, or alternatives split by |) -> extra
_DEMO_NEEDS: dict[str, list[tuple[str, str]]] = {
    "lightning": [("torch", "lightning"), ("lightning|pytorch_lightning", "lightning"), ("torch_pruning", "lightning")],
    "keras": [("keras", "keras"), ("tensorflow", "keras")],
}
#: what each export target of the demo needs, per framework
_DEMO_TARGET_NEEDS: dict[str, dict[str, tuple[list[str], str]]] = {
    "lightning": {
        "onnx": (["onnx", "onnxruntime", "onnxscript"], "onnx"),
        "ncnn": (["onnx", "onnxscript", "pnnx", "ncnn"], "ncnn"),
        "tflite": (["litert_torch", "ai_edge_litert"], "tflite-torch"),
        "tensorrt": (["onnx", "onnxruntime", "onnxscript"], "tensorrt"),
    },
    "keras": {
        "onnx": (["onnx", "onnxruntime", "tf2onnx"], "onnx"),
        "ncnn": (["tf2onnx", "pnnx", "ncnn"], "ncnn"),
        "tflite": (["ai_edge_litert"], "tflite"),
        "tensorrt": (["onnx", "onnxruntime", "tf2onnx"], "tensorrt"),
    },
}


def _installed(name: str) -> bool:
    import importlib.util

    try:
        return any(importlib.util.find_spec(alt) is not None for alt in name.split("|"))
    except (ImportError, ValueError):
        return False


def installed_frameworks(requested: Sequence[str] | None) -> tuple[list[str], dict[str, str]]:
    """The demo's frameworks whose packages are installed, and for each missing one the pip command.

    Args:
        requested: the frameworks asked for (None: both).
    """
    available: list[str] = []
    missing: dict[str, str] = {}
    for fw in requested or list(_DEMO_NEEDS):
        absent = [m.split("|")[0] for m, _ in _DEMO_NEEDS[fw] if not _installed(m)]
        if absent:
            missing[fw] = f"{', '.join(absent)} not installed: pip install 'fitslim[{_DEMO_NEEDS[fw][0][1]}]'"
        else:
            available.append(fw)
    return available, missing


def _demo(args: argparse.Namespace) -> int:
    from fitslim_app.demo import format_results, run_demo

    available, missing = installed_frameworks(args.frameworks)
    for name, hint in missing.items():
        print(f"fitslim demo: skipping {name}: {hint}", file=sys.stderr)
    if not available:
        raise UsageError("no framework to run: pip install 'fitslim[lightning]' or 'fitslim[keras]' (or both).")
    for fw in available:
        for target, (modules, extra) in _DEMO_TARGET_NEEDS[fw].items():
            absent = [m for m in modules if not _installed(m)]
            if absent:
                print(
                    f"fitslim demo: {fw} {target} will fail: {', '.join(absent)} not installed: "
                    f"pip install 'fitslim[{extra}]'",
                    file=sys.stderr,
                )
    from fitslim.data import FashionMNISTNotFound

    try:
        result = run_demo(
            args.output,
            quick=args.quick,
            frameworks=tuple(available),
            epochs=args.epochs,
            seed=args.seed,
            data=args.data,
        )
    except FashionMNISTNotFound as err:
        raise UsageError(f"--data fashion-mnist: {err}") from err
    print()
    print(format_results(result))
    if missing:
        print(f"Skipped (not installed): {', '.join(missing)}.")
    print(f"Report, plots and artifacts in {result.output}/ ({result.seconds:.0f} s in all).")
    failed = [
        f"{r.framework} {v.name} {a.target}"
        for r in result.frameworks
        for v in (r.dense, r.compressed)
        for a in v.artifacts
        if a.status != "ok"
    ]
    if failed:
        print(f"fitslim demo: failed artifacts: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _report(args: argparse.Namespace) -> int:
    from exporters.core.report import ExportReport

    try:
        print(ExportReport.load(args.directory))
    except FileNotFoundError as err:
        raise UsageError(str(err)) from err
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fitslim`` console script; returns the exit code (0 ok, 1 failed target, 2 bad input)."""
    args = _parser().parse_args(argv)
    # fitslim's own progress at INFO; other libraries' loggers (Lightning has its own handler) stay quieter
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for package in ("fitslim", "exporters", "lightning_plugins", "keras_callbacks"):
        logging.getLogger(package).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    command = {"demo": _demo, "export": _export, "report": _report}[args.command]
    try:
        return command(args)
    except (
        UsageError,
        ValueError,
        TypeError,
        FileNotFoundError,
        PermissionError,
        NotADirectoryError,
        ImportError,
    ) as err:
        if args.debug:
            traceback.print_exc()
        print(f"fitslim {args.command}: {_flags(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fitslim {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            traceback.print_exc()
        first = str(err).splitlines()[0] if str(err) else ""
        print(
            f"fitslim {args.command}: failed: {type(err).__name__}: {first} (run with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
