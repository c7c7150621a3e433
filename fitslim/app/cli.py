"""The ``fitslim`` command line.

Example:
    $ fitslim demo --quick
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fitslim", description="Compress and export models trained with Lightning or Keras."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="train, compress (pruning + QAT + distillation), export and compare the reference CNN on the bundled "
        "digits with Lightning and Keras",
    )
    demo.add_argument("--output", default="fitslim-demo", help="output folder (default: %(default)s)")
    demo.add_argument("--quick", action="store_true", help="a short run (fewer epochs, under two minutes)")
    demo.add_argument("--epochs", type=int, default=None, help="override the number of epochs")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--frameworks",
        nargs="+",
        default=["lightning", "keras"],
        choices=["lightning", "keras"],
        help="which frameworks to run (default: both)",
    )
    exp = sub.add_parser(
        "export", help="export an .onnx model to ncnn, TFLite and TensorRT, verified in each runtime"
    )
    exp.add_argument("model", help="path to an .onnx file")
    exp.add_argument(
        "--to",
        nargs="+",
        required=True,
        metavar="TARGET",
        help="any of onnx ncnn tensorrt (tflite needs the Keras or torch model: use exporters.export in Python)",
    )
    exp.add_argument(
        "--input-shape", default=None, help="e.g. 1,3,160,160 (needed when the ONNX input is dynamic)"
    )
    exp.add_argument("--calibration", default=None, help=".npy file of calibration inputs (N, C, H, W)")
    exp.add_argument("--precision", default="fp32", help="fp32, fp16 or int8 (default: %(default)s)")
    exp.add_argument("--quant-spec", default=None, help="a quant_spec.json learned by QAT")
    exp.add_argument("--output", default="exports", help="output folder (default: %(default)s)")
    exp.add_argument("--threads", type=int, default=2)
    exp.add_argument("--no-verify", action="store_true", help="skip running each artifact in its runtime")
    rep = sub.add_parser("report", help="print the report of an earlier export")
    rep.add_argument("directory", nargs="?", default="exports")
    return parser


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        raise ValueError(f"--input-shape: expected integers like 1,3,160,160; got {text!r}.") from None
    if not dims or any(d < 1 for d in dims):
        raise ValueError(f"--input-shape: every dimension must be >= 1; got {text!r}.")
    return dims


def _export(args: argparse.Namespace) -> int:
    import numpy as np

    from exporters import export
    from fitslim.quantspec import QuantSpec

    if "tflite" in args.to:
        raise ValueError(
            "--to tflite: the TFLite converters take the Keras or torch model, not an .onnx file. "
            "HINT: call exporters.export(model, ['tflite'], ...) on the model in Python, or drop tflite here."
        )
    example = None
    if args.input_shape:
        example = np.random.default_rng(0).random(_shape(args.input_shape), dtype=np.float32)
    calibration = None
    if args.calibration:
        calibration = np.load(args.calibration).astype(np.float32)
        if example is None:
            example = calibration[:1]
    spec = QuantSpec.load(args.quant_spec) if args.quant_spec else None
    steps = iter(range(1, 100))

    def progress(msg: str) -> None:
        print(f"[{next(steps)}/{len(args.to) + 1}] {msg} ...", flush=True)

    report = export(
        args.model,
        args.to,
        example_input=example,
        calibration=calibration,
        precision=args.precision,
        quant_spec=spec,
        directory=args.output,
        verify=not args.no_verify,
        threads=args.threads,
        progress=progress,
    )
    print()
    print(report)
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fitslim`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    # fitslim's own progress at INFO; other libraries' loggers (Lightning has its own handler) stay quieter
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for package in ("fitslim", "exporters", "lightning_plugins", "keras_callbacks"):
        logging.getLogger(package).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    if args.command == "demo":
        from fitslim.app.demo import format_results, run_demo

        try:
            result = run_demo(
                args.output,
                quick=args.quick,
                frameworks=tuple(args.frameworks),
                epochs=args.epochs,
                seed=args.seed,
            )
        except ValueError as err:
            print(f"fitslim demo: {err}", file=sys.stderr)
            return 2
        print()
        print(format_results(result))
        print(f"Report, plots and artifacts in {result.output}/ ({result.seconds:.0f} s in all).")
        failed = [
            f"{r.framework} {v.name} {a.target}"
            for r in result.frameworks
            for v in (r.dense, r.compressed)
            for a in v.artifacts
            if a.status == "failed"
        ]
        if failed:
            print(f"fitslim demo: failed artifacts: {', '.join(failed)}", file=sys.stderr)
            return 1
        return 0
    if args.command == "export":
        try:
            return _export(args)
        except (ValueError, FileNotFoundError, ImportError) as err:
            print(f"fitslim export: {err}", file=sys.stderr)
            return 2
    if args.command == "report":
        from exporters.report import ExportReport

        try:
            print(ExportReport.load(args.directory))
        except FileNotFoundError as err:
            print(f"fitslim report: {err}", file=sys.stderr)
            return 2
        return 0
    return 2  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":
    sys.exit(main())
