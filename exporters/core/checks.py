"""Checks of ``export()``'s inputs that run before anything is written, and what the converters share.

A bad file, an input in the wrong layout or an output path that is a file becomes a ``ValueError`` naming the
argument and the fix, instead of an error from deep inside a converter, and no folder is left behind.

Example:
    >>> from exporters.core.checks import output_dir
    >>> output_dir("exports").name
    'exports'
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "CALIBRATION_LIMIT",
    "Refusal",
    "check_onnx_file",
    "converter_error",
    "converter_summary",
    "failing_op",
    "legacy_trace_check",
    "output_dir",
    "probe_source",
    "quiet",
]

log = logging.getLogger(__name__)

#: at most this many calibration inputs are used (the TFLite converter's representative data set, PT2E observers)
CALIBRATION_LIMIT = 512


def _why(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:200]}" if text else type(err).__name__


def output_dir(directory: str | os.PathLike[str]) -> Path:
    """The output folder as a Path, refused when it, or a folder above it, is a file.

    Raises:
        ValueError: naming ``directory`` and the file in the way.
    """
    out = Path(directory)
    probe = out
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "" if probe == out else f" (in {str(out)!r})"
        raise ValueError(f"directory: {str(probe)!r}{where} is a file, not a folder; give a folder, e.g. 'exports'.")
    return out


def check_onnx_file(path: str | os.PathLike[str]) -> None:
    """Load and check an ``.onnx`` model file.

    Raises:
        ValueError: naming ``model`` and the file: truncated, corrupt or not ONNX.
    """
    import onnx

    try:
        onnx.checker.check_model(onnx.load(str(path), load_external_data=False))
    except Exception as err:
        raise ValueError(
            f"model: {str(path)!r} is not a valid ONNX model ({_why(err)}); the file may be truncated or not "
            "ONNX at all: export it again."
        ) from err


def probe_source(source: Any, example: Any) -> None:
    """Run the source model once on the example input, so a wrong shape or layout is named as such.

    Raises:
        ValueError: naming ``example_input``, its shape, the model's error and the layout the framework takes.
    """
    if source.framework == "onnx":
        return
    several = isinstance(example, tuple)
    first = tuple(a[:1] for a in example) if several else example[:1]
    try:
        source.predict(first)
    except Exception as err:
        shape = " and ".join(str(tuple(a.shape)) for a in example) if several else str(tuple(example.shape))
        layout = (
            "torch models take NCHW (batch, channels, height, width): np.transpose(x, (0, 3, 1, 2)) turns NHWC into it"
            if source.framework == "torch"
            else "Keras models take NHWC (batch, height, width, channels): np.transpose(x, (0, 2, 3, 1)) turns NCHW "
            "into it"
        )
        raise ValueError(
            f"example_input: the model fails on an input of shape {shape} ({_why(err)}); pass "
            f"inputs (example_input, calibration) the model takes; {layout}."
        ) from err


def legacy_trace_check(
    export_fn: Any, example: tuple[npt.NDArray[Any], ...], path: Path, dynamo_error: BaseException
) -> str:
    """Guard the fallback to the legacy (tracing) torch.onnx exporter: it is reported, and refused when unsafe.

    A trace records the operations one input runs through, so a branch on the data (``if x.sum() > 0``) is
    frozen to the branch the example took. The model is traced a second time on a different input, and both
    ONNX graphs are run on both inputs: if they disagree, the model has data-dependent control flow and the
    trace is refused.

    Args:
        export_fn: ``export_fn(inputs, path)`` runs the legacy exporter on the given NumPy inputs.
        example: the example inputs (the first trace, already written to ``path``).
        path: the ONNX file of the first trace.
        dynamo_error: why the dynamo exporter failed.

    Returns:
        The warning for the report.

    Raises:
        RuntimeError: the two traces differ.
    """
    reason = _why(dynamo_error).replace("\x1b[96m", "").replace("\x1b[0m", "")
    warning = (
        f"WARNING: the legacy torch.onnx tracer was used because torch.export failed ({reason}); a trace keeps "
        "only the branch the example input took"
    )
    if not all(a.dtype.kind == "f" for a in example):
        return warning + " (not checked: integer inputs)."
    other = tuple((-1.0 - 3.0 * a).astype(a.dtype) for a in example)  # another sign and scale: flips x>0, x.sum()>c
    second = path.with_name(path.stem + ".second.onnx")
    try:
        export_fn(other, second)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        first_s, second_s = (
            ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"]) for p in (path, second)
        )
        names = [i.name for i in first_s.get_inputs()]
        for inputs in (example, other):
            feed = dict(zip(names, inputs, strict=True))
            a = np.asarray(first_s.run(None, feed)[0], dtype=np.float64)
            b = np.asarray(second_s.run(None, feed)[0], dtype=np.float64)
            if a.shape != b.shape or np.max(np.abs(a - b), initial=0.0) > 1e-4 * max(1.0, float(np.max(np.abs(a)))):
                raise Refusal(
                    f"{warning}, and two traces (on the example input and on a second input) compute different "
                    "outputs: the model branches on its input data, so any trace is wrong for some inputs. "
                    "Make the branch traceable (torch.where, or torch.cond) so torch.export can export it."
                )
    finally:
        second.unlink(missing_ok=True)
    return warning + "; a second trace on another input computes the same outputs."


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and the exceptions it was raised from or during, outermost first."""
    out: list[BaseException] = []
    e: BaseException | None = err
    while e is not None and e not in out and len(out) < 8:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _fx_node(value: Any) -> bool:
    return type(value).__module__ == "torch.fx.node" and hasattr(value, "target") and hasattr(value, "meta")


def _tf2onnx_node(value: Any) -> bool:
    return type(value).__module__.startswith("tf2onnx") and hasattr(value, "type") and hasattr(value, "name")


def _short_type(t: Any) -> str:
    name = t.__name__ if isinstance(t, type) else str(t)
    return name.rsplit(".", 1)[-1].rstrip("'>")


def _describe_fx(node: Any) -> str:
    op = str(node.target) if node.op == "call_function" else f"{node.op} {node.target}"
    text = f"node {op!r}"
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, kind = list(stack.values())[-1]
        path = re.sub(r"^L\['self'\]\.?", "", str(path)).replace("._modules['", ".").replace("']", "")
        path = re.sub(r"\[(\d+)\]", r".\1", path)
        if path:
            text += f" in layer {path!r} ({_short_type(kind)})"
    return text


#: converter error texts that name the op (or layer) that broke
_TEXT_PATTERNS = (
    (re.compile(r"While executing %\w+ : .*?target=([\w.:]+)"), "node {0!r}"),
    (re.compile(r"Exporting the operator '([\w:.]+)'"), "op {0!r}"),
    (re.compile(r"No Op registered for (\w+)"), "TensorFlow op {0!r}"),
    (re.compile(r"Unsupported ops: Counter\(\{([^}]*)\}\)"), "ops {0}"),
    (re.compile(r"'(tfl?\.\w+)' op"), "op {0!r}"),
)


def failing_op(err: BaseException) -> str:
    """The op, node and layer a converter failed on, read from its exception, or ``""`` when nothing names one.

    Torch converters (``torch.export``-based ONNX export, litert-torch) fail while handling an FX node: the
    innermost node in the traceback's frames names the aten op and, from its ``nn_module_stack``, the layer.
    tf2onnx handlers hold their node the same way. Otherwise the converter's text is searched for an op name
    (TensorFlow's ``'tf.Op' op``, ``No Op registered for``, torch's ``Exporting the operator``), and a
    ``loc("...")`` gives the Keras layer.

    Example:
        >>> failing_op(RuntimeError("No Op registered for StatefulPartitionedCall"))
        "TensorFlow op 'StatefulPartitionedCall'"
    """
    for e in _chain(err):
        found: Any = None
        tb = e.__traceback__
        while tb is not None:
            for value in list(tb.tb_frame.f_locals.values()):
                if _fx_node(value) or _tf2onnx_node(value):
                    found = value
            tb = tb.tb_next
        if found is not None:
            if _fx_node(found):
                return _describe_fx(found)
            return f"node {str(found.name)!r} ({found.type})"
    for e in _chain(err):
        text = str(e)
        for pattern, form in _TEXT_PATTERNS:
            m = pattern.search(text)
            if m:
                what = form.format(m.group(1))
                # a TensorFlow location: loc(fused["Svd:", "model/layer/Svd@__inference_..."]) -> model/layer
                paths = [p.split("@")[0] for p in re.findall(r'"([^"]+)"', text[: m.start()][-400:]) if "/" in p]
                return what + (f" in layer {paths[-1].rsplit('/', 1)[0]!r}" if paths else "")
    return ""


def converter_summary(err: BaseException) -> str:
    """``Type: message`` on one line; a torch export error's own summary line when it has one."""
    text = str(err)
    m = re.search(r"## Exception summary\s+<class '([\w.]+)'>: (.+)", text)
    if m:
        return f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2).strip()[:200]}"
    return _why(err)


class Refusal(RuntimeError):
    """fitslim's own refusal of a model it cannot export correctly; the message already says what to do, so
    converter-error wrapping passes it through unchanged."""


def converter_error(err: BaseException, what: str, converter: str, instead: str) -> RuntimeError:
    """A RuntimeError that names the converter, the op/node/layer it broke on, the original error and a way out.

    Args:
        err: the converter's exception.
        what: the artifact, e.g. ``"tflite int8"``.
        converter: e.g. ``"litert-torch"``.
        instead: what to try, e.g. ``"try precision='fp32' for tflite or the onnx/tensorrt targets"``.
    """
    where = failing_op(err)
    on = f" on {where}" if where else ""
    return RuntimeError(f"{what}: {converter} failed{on} ({converter_summary(err)}); {instead}")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Route the converters' prints and progress bars to the debug log instead of the user's console."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    finally:
        text = (out.getvalue() + err.getvalue()).strip()
        if text:
            log.debug("converter output:\n%s", text)
