"""Comparing an artifact's outputs with the source model's, judging them, and timing a runtime.

An artifact is ``ok`` only when :func:`judge` finds its outputs finite and inside its precision's bounds
(:data:`BOUNDS`); otherwise its row gets the status ``mismatch`` with the reason, the file stays where it was
written, and a warning is logged.

Example:
    >>> import numpy as np
    >>> ref = np.array([[1.0, 3.0], [2.0, -1.0]], np.float32)
    >>> a = compare(ref, ref + np.float32(0.01))
    >>> round(a.max_abs_error, 4), a.top1_agreement, judge(a, "fp16")
    (0.01, 1.0, '')
    >>> judge(compare(ref, np.full_like(ref, np.nan)), "fp32")
    'outputs are not finite (NaN or Inf)'
    >>> judge(compare(ref, ref[:, ::-1]), "int8")[:14]
    'RMS error 1.75'
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from exporters.core.report import TargetResult

__all__ = [
    "BOUNDS",
    "Agreement",
    "Bounds",
    "compare",
    "fill_agreement",
    "judge",
    "layer_name",
    "locate_int8_error",
    "median_latency_ms",
    "nchw_to_nhwc",
    "nhwc_to_nchw",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bounds:
    """What an artifact of one precision must reach to be ``ok``.

    Args:
        max_rel_error: largest allowed :attr:`Agreement.max_rel_error` (None: not checked).
        max_spread_error: largest allowed :attr:`Agreement.spread_error`, the RMS error relative to how much the
            reference outputs vary from input to input. It catches a garbled artifact of a model whose
            outputs are dominated by a constant (tied logits), where ``max_rel_error`` and top-1 stay good.
        noise_floor: the relative error a faithful artifact of this precision reaches through its own rounding
            alone, at the outputs' scale (fp32: float noise of a deep graph; fp16: one half-precision step;
            int8: about one step of a 255-level grid). The spread criterion decides only when the reference's
            input-to-input spread is at least this fraction of its largest output (:attr:`Agreement.relative_spread`)
            *and* the max relative error exceeds it: a spread below the floor is an input-dependent part this
            precision cannot carry, and the spread ratio is then noise over noise.
        flat_max_rel_error: the max relative error bound that applies instead when the spread is below the
            floor (None: ``max_rel_error`` already applies at every spread).
        min_top1: smallest allowed top-1 agreement over the decisive samples (None: not checked).
        min_decisive: the top-1 rule applies only when at least this many samples are decisive.
        undecided_spread_error: the tighter spread bound that replaces the top-1 rule when fewer than
            ``min_decisive`` samples are decisive (no class wins clearly, or outputs are not logits).
    """

    max_rel_error: float | None
    max_spread_error: float
    noise_floor: float
    flat_max_rel_error: float | None = None
    min_top1: float | None = None
    min_decisive: int = 10
    undecided_spread_error: float | None = None


#: per-precision bounds: fp32 within 1e-4 relative, fp16 within 1e-2; int8 by top-1 agreement on the decisive
#: samples, or by a spread error of 0.2 when too few samples are decisive; outputs unrelated to the reference
#: (spread error about 1.4) are out of bounds at every precision. Each relative bound is ten times the
#: precision's noise floor (int8's 0.1 applies to outputs too flat for the spread criterion).
BOUNDS: dict[str, Bounds] = {
    "fp32": Bounds(max_rel_error=1e-4, max_spread_error=0.2, noise_floor=1e-5),
    "fp16": Bounds(max_rel_error=1e-2, max_spread_error=0.2, noise_floor=1e-3),
    "int8": Bounds(
        max_rel_error=None,
        max_spread_error=0.5,
        noise_floor=1e-2,
        flat_max_rel_error=0.1,
        min_top1=0.97,
        undecided_spread_error=0.2,
    ),
}

#: a sample is decisive when its reference top-1 / top-2 margin is at least this fraction of the
#: outputs' input-to-input spread (RMS); smaller margins flip on quantization noise alone
DECISIVE_MARGIN = 0.5


@dataclass(frozen=True)
class Agreement:
    """How close an artifact's outputs are to the source's.

    ``max_rel_error`` is the largest absolute difference divided by the largest absolute reference
    output, so it is scale-free and well defined when single outputs are near zero. ``spread_error`` is
    the RMS difference divided by the RMS of the reference's deviation from its mean over the samples
    (its input-dependent part): about 1.4 for outputs unrelated to the reference, whatever their scale.
    ``relative_spread`` is that spread divided by the largest absolute reference output: how much of the
    outputs' magnitude depends on the input at all (near zero for a random-weight network whose outputs barely
    vary between inputs; 0 for a constant model). ``top1_agreement`` covers every sample;
    ``decisive_top1`` only the ``decisive`` samples whose top-2 margin is meaningful (see :data:`DECISIVE_MARGIN`).
    """

    max_abs_error: float
    max_rel_error: float
    top1_agreement: float | None
    samples: int
    finite: bool = True
    spread_error: float = 0.0
    decisive: int = 0
    decisive_top1: float | None = None
    relative_spread: float = 1.0


def _spread(ref: npt.NDArray[np.float64], out: npt.NDArray[np.float64]) -> tuple[float, float]:
    """The spread error and the spread relative to the largest absolute reference output."""
    r = ref.reshape(len(ref), -1) if ref.ndim else ref.reshape(1, 1)
    o = out.reshape(r.shape)
    spread = float(np.sqrt(np.mean((r - r.mean(0)) ** 2))) if len(r) > 1 else 0.0
    if spread == 0.0 and len(r) == 1:  # one sample: relative to the outputs themselves
        spread = float(np.sqrt(np.mean(r**2))) if r.size else 0.0
    peak = float(np.max(np.abs(r))) if r.size else 0.0
    relative = spread / peak if peak > 0 else 0.0
    err = float(np.sqrt(np.mean((o - r) ** 2))) if r.size else 0.0
    if err == 0.0:
        return 0.0, relative
    if spread == 0.0:  # a constant model: relative to the outputs themselves
        rms = float(np.sqrt(np.mean(r**2)))
        return (err / rms if rms > 0 else float("inf")), relative
    return err / spread, relative


def compare(reference: npt.ArrayLike, output: npt.ArrayLike) -> Agreement:
    """Compare outputs of the same inputs; arg-max agreement for (N, C>1) logit-like outputs.

    Raises:
        ValueError: the shapes differ (a layout or batch bug in an exporter).
    """
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(output, dtype=np.float64)
    if ref.shape != out.shape:
        raise ValueError(f"output shape {out.shape} differs from the source's {ref.shape}.")
    samples = int(ref.shape[0]) if ref.ndim else 1
    finite = bool(np.all(np.isfinite(out)))
    if not finite:
        return Agreement(math.inf, math.inf, None, samples, finite=False, spread_error=math.inf)
    diff = float(np.max(np.abs(ref - out))) if ref.size else 0.0
    denom = float(np.max(np.abs(ref))) if ref.size else 0.0
    rel = diff / denom if denom > 0 else (0.0 if diff == 0 else float("inf"))
    spread, relative_spread = _spread(ref, out)
    top1 = decisive_top1 = None
    decisive = 0
    if ref.ndim == 2 and ref.shape[1] > 1:
        hits = ref.argmax(1) == out.argmax(1)
        top1 = float(np.mean(hits))
        top2 = np.sort(ref, axis=1)[:, -2:]
        scale = float(np.sqrt(np.mean((ref - ref.mean(0)) ** 2))) if len(ref) > 1 else 0.0
        mask = (top2[:, 1] - top2[:, 0]) >= DECISIVE_MARGIN * scale if scale > 0 else np.zeros(len(ref), bool)
        decisive = int(mask.sum())
        decisive_top1 = float(np.mean(hits[mask])) if decisive else None
    return Agreement(diff, rel, top1, samples, finite, spread, decisive, decisive_top1, relative_spread)


def judge(agreement: Agreement, precision: str) -> str:
    """Why ``agreement`` is out of ``precision``'s :data:`BOUNDS` (empty when it is within them).

    The spread criterion (:attr:`Bounds.max_spread_error`) condemns only what the relative error also shows: the
    reference's input-to-input spread must be at least the precision's :attr:`Bounds.noise_floor` of its largest
    output, and the max relative error must exceed that floor. Below it, the outputs are too flat for this
    precision to carry their input-dependent part, and :attr:`Bounds.flat_max_rel_error` applies instead.

    Args:
        agreement: the comparison of the artifact's outputs with the source's (:func:`compare`).
        precision: ``fp32``, ``fp16`` or ``int8``.

    Raises:
        ValueError: an unknown precision.
    """
    if precision not in BOUNDS:
        raise ValueError(f"precision: no verification bounds for {precision!r}; choose one of {list(BOUNDS)}.")
    b = BOUNDS[precision]
    if not agreement.finite:
        return "outputs are not finite (NaN or Inf)"
    why = []
    if b.max_rel_error is not None and agreement.max_rel_error > b.max_rel_error:
        why.append(
            f"max relative error {agreement.max_rel_error:.2e} exceeds the {precision} bound {b.max_rel_error:.0e}"
        )
    flat = agreement.relative_spread < b.noise_floor
    if flat and b.flat_max_rel_error is not None and agreement.max_rel_error > b.flat_max_rel_error:
        why.append(
            f"max relative error {agreement.max_rel_error:.2e} exceeds the {precision} bound "
            f"{b.flat_max_rel_error:.0e} for outputs whose input-to-input spread ({agreement.relative_spread:.1e} "
            f"of their largest value) is below the {precision} noise floor {b.noise_floor:.0e}"
        )
    spread_bound = b.max_spread_error
    if b.min_top1 is not None and agreement.decisive >= b.min_decisive and agreement.decisive_top1 is not None:
        if agreement.decisive_top1 < b.min_top1:
            why.append(
                f"top-1 agreement {agreement.decisive_top1 * 100:.1f}% on {agreement.decisive} decisive samples is "
                f"under the {precision} bound {b.min_top1 * 100:.0f}%"
            )
    elif b.undecided_spread_error is not None:
        spread_bound = b.undecided_spread_error
    beyond_noise = not flat and agreement.max_rel_error > b.noise_floor
    if beyond_noise and agreement.spread_error > spread_bound:
        why.append(
            f"RMS error {agreement.spread_error:.2f} of the outputs' input-to-input spread exceeds the bound "
            f"{spread_bound}"
        )
    return "; ".join(why)


def fill_agreement(result: TargetResult, agreement: Agreement) -> TargetResult:
    """Copy an :class:`Agreement` into a :class:`TargetResult`, judge it, and return it.

    A result outside its precision's bounds gets the status ``mismatch`` and the reason (its files stay
    where they were written, for inspection); a warning is logged.
    """
    result.max_abs_error = agreement.max_abs_error
    result.max_rel_error = agreement.max_rel_error
    result.top1_agreement = agreement.top1_agreement
    result.samples = agreement.samples
    result.spread_error = agreement.spread_error
    result.decisive_top1 = agreement.decisive_top1
    result.decisive_samples = agreement.decisive
    why = judge(agreement, result.precision) if result.precision in BOUNDS else ""
    if why:
        result.status = "mismatch"
        result.reason = f"verification failed: {why}" + (f" ({result.reason})" if result.reason else "")
        log.warning("%s %s artifact does not match the source: %s", result.target, result.precision, why)
    elif result.status == "mismatch":  # re-verified (e.g. a TensorRT engine after its ONNX) and now within bounds
        result.status, result.reason = "ok", ""
    return result


def median_latency_ms(run: Callable[[], Any], warmup: int = 5, repeats: int = 30) -> float:
    """Median wall time of ``run()`` in milliseconds after ``warmup`` calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(statistics.median(times))


def nchw_to_nhwc(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """(N, C, H, W) → (N, H, W, C); other ranks are returned unchanged."""
    a = np.asarray(x, dtype=np.float32)
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if a.ndim == 4 else a


def nhwc_to_nchw(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """(N, H, W, C) → (N, C, H, W); other ranks are returned unchanged."""
    a = np.asarray(x, dtype=np.float32)
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2)) if a.ndim == 4 else a


#: a node's own int8 error is large when the noise it adds is at least ~3% of its output's power (SQNR in dB)
LARGE_INT8_ERROR_DB = 15.0

#: at most this many samples are run through the float and Q/DQ models to locate an int8 error (one at a time:
#: only one sample's intermediate tensors are held, a ViT-Base-sized model's about 0.25 GB at 224x224)
LOCATE_SAMPLES = 16


def _sqnr_db(reference: Any, other: Any) -> float:
    """Signal-to-noise of ``other`` against ``reference`` in dB (ONNX Runtime's definition, 20 log10 of the norms).

    Unlike ``qdq_loss_debug.compute_signal_to_quantization_noice_ratio``, an exact copy is +inf (not 0 dB: an
    all-zero attention mask equal in both graphs was named as where ViT's int8 error starts), the norms are taken
    in float64 (a ``finfo(float32).min`` mask fill overflows float32 squares), and non-finite elements are left out.
    """
    noise = _Noise()
    noise.add(np.asarray(reference), np.asarray(other))
    return noise.db()


def _own_db(out_db: float, in_db: float) -> float:
    """The SQNR of the noise a node adds itself: its output's relative noise power less its inputs'."""
    added = 10.0 ** (-out_db / 10.0) - (10.0 ** (-in_db / 10.0) if math.isfinite(in_db) else 0.0)
    return -10.0 * math.log10(added) if added > 0 else math.inf


def layer_name(model: Any, node: Any) -> str:
    """A node's source layer: the name of its weight (``blocks.0.conv.weight`` -> ``blocks.0.conv``), else its own."""
    import re

    inits = {i.name for i in model.graph.initializer}
    for name in node.input[1:2]:
        if name in inits:
            stem = re.sub(r"(_folded\d+_w|\.weight|\.kernel|/ReadVariableOp:0|:0)$", "", name)
            if stem and not stem.startswith(("onnx::", "val_", "const")):
                return stem
    return str(node.name or node.output[0])


class _Intermediates:
    """An ONNX graph with every float intermediate tensor as an output (``qdq_loss_debug``'s augmentation), run
    one sample at a time: each call returns that sample's tensors, flattened, by their names in the graph."""

    def __init__(self, path: str, tmp: str) -> None:
        from pathlib import Path

        import onnxruntime as ort
        from onnxruntime.quantization.qdq_loss_debug import modify_model_output_intermediate_tensors

        self.path = path
        augmented = str(Path(tmp) / (Path(path).stem + ".augmented.onnx"))
        modify_model_output_intermediate_tensors(path, augmented)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph as written
        self.session = ort.InferenceSession(augmented, opts, providers=["CPUExecutionProvider"])
        suffix = "_ReshapedSavedOutput"  # qdq_loss_debug's name for a saved tensor
        self.outputs = [o.name for o in self.session.get_outputs() if o.name.endswith(suffix)]
        self.names = [o[: -len(suffix)] for o in self.outputs]

    def __call__(self, feed: dict[str, Any]) -> dict[str, Any]:
        return dict(zip(self.names, self.session.run(self.outputs, feed), strict=True))


class _Noise:
    """Signal and noise power of one tensor pair summed over samples, as :func:`_sqnr_db` takes them over all the
    samples' values at once (float64, non-finite elements left out); a pair whose sizes differ is not compared."""

    __slots__ = ("signal", "noise", "valid")

    def __init__(self) -> None:
        self.signal, self.noise, self.valid = 0.0, 0.0, True

    def add(self, reference: Any, other: Any) -> None:
        if reference.size != other.size:
            self.valid = False
            return
        a, b = np.asarray(reference, np.float64).ravel(), np.asarray(other, np.float64).ravel()
        keep = np.isfinite(a) & np.isfinite(b)
        a, b = a[keep], b[keep]
        self.signal += float(np.dot(a, a))
        d = a - b
        self.noise += float(np.dot(d, d))

    def db(self) -> float:
        if self.noise == 0.0:
            return math.inf
        return 10.0 * math.log10(self.signal / self.noise) if self.signal > 0 else -math.inf


def locate_int8_error(float_onnx: Any, qdq_onnx: Any, inputs: Any, samples: int = LOCATE_SAMPLES) -> str:
    """Where an int8 model's error comes from, in words, from ONNX Runtime's per-tensor activation comparison.

    Both models run on the same inputs with every intermediate tensor saved
    (``onnxruntime.quantization.qdq_loss_debug``); each tensor of the float graph is compared with its
    namesake in the Q/DQ graph (SQNR in dB), and each Q/DQ pair's output with its input. The first node
    that reads an activation its int8 grid cannot carry (Q/DQ SQNR under :data:`LARGE_INT8_ERROR_DB`), or whose
    own contribution (its output's noise less its inputs') is under that bound and at least doubles the noise
    it receives, is where the error originates; when there is none, the error builds up over many layers and
    the text says so.

    Args:
        float_onnx: the float ONNX (path); graph node outputs keep their names in ``qdq_onnx``.
        qdq_onnx: the same graph with QuantizeLinear/DequantizeLinear (path).
        inputs: one array or a tuple of arrays (one per graph input), batch first.
        samples: at most this many samples are run, one at a time.

    Returns:
        A sentence for a report (empty when nothing was measured).
    """
    import tempfile

    import onnx

    model = onnx.load(str(float_onnx))
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    arrays = inputs if isinstance(inputs, tuple) else (inputs,)
    if len(arrays) != len(names):
        return ""
    types = {onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32, onnx.TensorProto.BOOL: np.bool_}
    dtypes = [types.get(i.type.tensor_type.elem_type, np.float32) for i in model.graph.input if i.name in names]
    n = min(samples, len(arrays[0]))
    feeds: list[dict[str, Any]] = [
        {k: np.ascontiguousarray(a[i : i + 1], dtype=t) for k, a, t in zip(names, arrays, dtypes, strict=True)}
        for i in range(n)
    ]
    qmodel = onnx.load(str(qdq_onnx))
    producer = {o: nd for nd in qmodel.graph.node for o in nd.output}
    made_by = {o: nd.op_type for nd in model.graph.node for o in nd.output}
    with tempfile.TemporaryDirectory(prefix="fitslim-int8-locate-") as tmp:
        float_run, qdq_run = _Intermediates(str(float_onnx), tmp), _Intermediates(str(qdq_onnx), tmp)
        in_ref, in_got = set(float_run.names), set(qdq_run.names)
        # what the Q/DQ graph's consumers read for a float tensor: the DequantizeLinear output of its Q/DQ pair,
        # else the tensor itself when the same kind of node made it (ONNX Runtime folds a ReLU into its
        # QuantizeLinear and the Conv's output takes the ReLU's name); and the int8 grid's own loss on each
        # quantized activation (its Q/DQ pair's output against its input)
        read_as: dict[str, str] = {}
        grid_pairs: list[tuple[str, str]] = []
        for dq in qmodel.graph.node:
            q = producer.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear" and q.input[0] in in_got and dq.output[0] in in_got:
                t = q.input[0]
                read_as[t] = dq.output[0]
                # a ReLU / Clip folded into the QuantizeLinear's range is no loss of the grid
                if t in made_by and t in producer and producer[t].op_type == made_by[t]:
                    grid_pairs.append((t, dq.output[0]))
        compared: dict[str, str] = {}  # float tensor -> the Q/DQ graph's tensor it is compared with
        for node in model.graph.node:
            for o in node.output:
                other = read_as.get(o)
                if other is None and o in in_got and producer.get(o) is not None:
                    other = o if producer[o].op_type == node.op_type else None
                if other is not None and o in in_ref:
                    compared[o] = other
        # one sample at a time: only one sample's tensors of each graph are held, whatever the model's size
        outputs = {o: _Noise() for o in compared}
        grids = {pair: _Noise() for pair in grid_pairs}
        for feed in feeds:
            ref, got = float_run(feed), qdq_run(feed)
            for o, noise in outputs.items():
                noise.add(ref[o], got[compared[o]])
            for (t, dq_out), noise in grids.items():
                noise.add(got[t], got[dq_out])
            del ref, got
    grid: dict[str, float] = {}
    for (t, _dq), noise in grids.items():
        if noise.valid:
            grid[t] = min(grid.get(t, math.inf), noise.db())
    sqnr: dict[str, float] = {}
    pending: dict[str, tuple[list[Any], float]] = {}  # tensors not compared: the nodes behind them, their inputs' dB
    first = None
    first_inputs: list[str] = []
    first_outputs: list[str] = []
    worst: tuple[float, Any, float, float] | None = None
    layers = 0
    for node in model.graph.node:
        members, in_db = [], math.inf
        for i in node.input:
            if i in sqnr:
                in_db = min(in_db, sqnr[i])
            elif i in pending:
                more, db = pending[i]
                members += [m for m in more if m not in members]
                in_db = min(in_db, db)
        members.append(node)
        values = [outputs[o].db() for o in node.output if o in outputs and outputs[o].valid]
        if not values or node.op_type in ("Constant", "Shape"):
            for o in node.output:
                pending[o] = (members, in_db)
            continue
        out_db = min(values)
        for o in node.output:
            sqnr[o] = out_db
        own = _own_db(out_db, in_db)
        layers += 1
        named = next((m for m in members if layer_name(model, m) != (m.name or m.output[0])), node)
        if worst is None or own < worst[0]:
            worst = (own, named, out_db, in_db)
        inputs = [i for m in members for i in m.input]
        # the origin: an input the int8 grid itself cannot carry, or a node that at least doubles the noise it
        # receives (3 dB) and leaves it large; a small step on an already noisy signal is accumulation
        lossy_grid = any(grid.get(t, math.inf) < LARGE_INT8_ERROR_DB for t in [*inputs, *node.output])
        own_large = own < LARGE_INT8_ERROR_DB and out_db < LARGE_INT8_ERROR_DB and out_db <= in_db - 3.0
        if first is None and (lossy_grid or own_large):
            first = (own, named, out_db, in_db)
            first_inputs = inputs
            first_outputs = list(node.output)
    if worst is None or not sqnr:
        return ""
    last = model.graph.output[0].name
    out_final = sqnr.get(last, min(sqnr.values()))

    def where(node: Any, out_db: float, in_db: float) -> str:
        came = f", from {in_db:.1f} dB at its inputs" if math.isfinite(in_db) else ""
        return f"{layer_name(model, node)!r} ({node.op_type}, SQNR {out_db:.1f} dB{came})"

    if first is not None:
        _own, node, out_db, in_db = first
        text = f"int8 error first becomes large at {where(node, out_db, in_db)}"
        for role, tensors in (("input", first_inputs), ("output", first_outputs)):
            lossy = [(grid[t], t) for t in tensors if grid.get(t, math.inf) < LARGE_INT8_ERROR_DB]
            if lossy:
                db, tensor = min(lossy)
                readers = [layer_name(model, n) for n in model.graph.node if tensor in n.input]
                read = f", read by {', '.join(repr(r) for r in readers[:3])}" if role == "output" and readers else ""
                text += (
                    f"; its {role} {tensor!r} loses the signal on its int8 grid (SQNR {db:.0f} dB: a range too wide "
                    f"for 256 levels{read})"
                )
                break
        return text + ": train with QuantizationAware (learned ranges) or export this model at fp16"
    _own, node, out_db, in_db = worst
    return (
        f"int8 error builds up over {layers} layers with no single large step (output SQNR {out_final:.0f} dB; "
        f"largest step at {where(node, out_db, in_db)}): calibrate on more representative inputs or train with "
        "QuantizationAware"
    )
