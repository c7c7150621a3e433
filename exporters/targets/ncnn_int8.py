"""fitslim's own ncnn int8 writer: turns pnnx's fp32 ``.param``/``.bin`` into an int8 pair with our scales.

The ``ncnn`` wheel ships no ``ncnn2table``/``ncnn2int8``, and pnnx cannot carry ONNX Q/DQ, so the int8
model is written here from the fp32 pair pnnx produced and a :class:`~exporters.core.quant.QuantTable`.
The byte layout follows ncnn's own loaders (``src/modelbin.cpp``, each layer's ``load_model``) and its
writer (``tools/modelwriter.h``):

- a *tagged* array (``mb.load(n, 0)``) is a 4-byte tag, then the data padded to 4 bytes: tag 0 is raw
  fp32, ``0x01306B47`` fp16, ``0x000D4B38`` int8, ``0x0002C056`` raw fp32, any other non-zero tag a
  256-entry fp32 lookup table followed by one byte index per value;
- a *raw* array (``mb.load(n, 1)``) is ``n`` fp32 values, no tag.

Convolution and InnerProduct get ``8=2`` and, after their weights and bias, one weight multiplier per
output channel and one input multiplier; ConvolutionDepthWise gets ``8=1`` and one weight multiplier per
group. Weights are stored pre-quantized (int8 tag) with :func:`fitslim.int8.quantize` and ncnn's
rounding (half away from zero), so the file is about a quarter of the fp32 one and ncnn runs exactly the
integers the NumPy reference computes with. ncnn's multipliers are ``1 / scale``.

MultiHeadAttention gets ``18=2`` (ncnn's ``int8_scale_term``): its four weight matrices (q, k, v, out) are
stored int8 with their float biases, followed by per-row q, k and v multipliers and one multiplier for the
output projection (the largest channel scale, so no weight is clipped); ncnn quantizes the layer's
activations at run time, so no input scale is stored.

Where an int8 Convolution/ConvolutionDepthWise feeds only int8 layers (directly, or through a Split
whose every branch is one, all with the same input scale) the requantize is fused as ``ncnn2int8``
does: ``8=102``/``101`` and the consumer's input multiplier appended as the top-blob scale, so the
int32 accumulator goes straight to int8 without a float round trip.

Example:
    >>> # summary = write_int8("fp32.param", "fp32.bin", "int8.param", "int8.bin", job.quant)
    >>> # summary.describe()  ->  '5 layers int8, 2 requantize fusions'
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from exporters.core.quant import QuantizedNode, QuantTable
from fitslim.fileio import atomic_path
from fitslim.int8 import ncnn_multiplier, quantize

__all__ = [
    "MAGIC",
    "TAG_FP16",
    "TAG_FP32",
    "TAG_INT8",
    "GROUPED_FLOAT_NOTE",
    "Chunk",
    "Int8Summary",
    "LayerData",
    "NcnnLayer",
    "NcnnParam",
    "read_model",
    "write_int8",
]

log = logging.getLogger(__name__)

#: First line of every text ``.param``.
MAGIC = 7767517
TAG_FP32 = 0x00000000
TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38
#: raw fp32 "with extra scaling" (read exactly like tag 0)
TAG_FP32_RAW = 0x0002C056

#: Why :func:`write_int8` keeps grouped convolutions float unless ``int8_grouped=True`` (ncnn 20261020,
#: src/layer/x86/convolutiondepthwise_x86.cpp ``forward_int8_x86``): with packing on (ncnn's default) each group's
#: Convolution writes a dequantized output packed by 8 (AVX) or 16 (AVX-512) where its caller prepared a slice
#: packed by 4, so ``Mat::create`` allocates a new blob and the caller's output is never written. A torch model
#: with a Conv2d(32, 32, groups=4) feeding a float Add measured 0.0% top-1 agreement on 64 decisive samples
#: (spread error 59) with packing on, 100% with packing off; RegNet-Y (groups_width=8) 80% (spread error 4.7).
GROUPED_FLOAT_NOTE = (
    "ncnn's packed int8 grouped path (ConvolutionDepthWise_x86 with use_packing_layout, ncnn's default) loses the "
    "output of a group whose output channels are a multiple of 8 when it is dequantized; kept float they give the "
    "right result under default options (write_int8(..., int8_grouped=True) quantizes them)"
)

#: Layers this writer quantizes.
QUANTIZED_TYPES = ("Convolution", "ConvolutionDepthWise", "InnerProduct", "Gemm", "MultiHeadAttention")
#: MultiHeadAttention's four projections, in the order ncnn's ``load_model`` reads them
_MHA_PROJECTIONS = ("q", "k", "v", "out")
#: Layers that can requantize their output to int8 (ncnn reads a top-blob scale only for these).
_FUSE_PRODUCERS = ("Convolution", "ConvolutionDepthWise")
#: Layers that take an int8 blob as it is (their x86 kernels skip quantizing an 8-bit input). ncnn2int8
#: fuses only into convolutions; an InnerProduct consumer was checked to give the same outputs as unfused.
_FUSE_CONSUMERS = ("Convolution", "ConvolutionDepthWise", "InnerProduct")
#: Layers whose .bin data stays float: copied byte for byte (they are not weighted compute layers).
_COPIED_TYPES = (
    "BatchNorm",
    "Bias",
    "Scale",
    "PReLU",
    "InstanceNorm",
    "GroupNorm",
    "LayerNorm",
    "RMSNorm",
    "Normalize",
    "Padding",
    "MemoryData",
)
#: Weighted compute layers ncnn can load but this writer does not quantize: an error, never a silent
#: float layer in an "int8" model. Quantize/Dequantize/Requantize mean the input is already int8.
_UNSUPPORTED_WEIGHTED = (
    "Convolution1D",
    "Convolution3D",
    "ConvolutionDepthWise1D",
    "ConvolutionDepthWise3D",
    "Deconvolution",
    "Deconvolution1D",
    "Deconvolution3D",
    "DeconvolutionDepthWise",
    "DeconvolutionDepthWise1D",
    "DeconvolutionDepthWise3D",
    "DeformableConv2D",
    "Embed",
    "GRU",
    "LSTM",
    "RNN",
    "Quantize",
    "Dequantize",
    "Requantize",
)

_TOKEN = re.compile(r'(?:[^\s"]+|"[^"]*")+')


def _align4(n: int) -> int:
    return (n + 3) // 4 * 4


@dataclass
class NcnnLayer:
    """One line of a text ``.param``: ``type name nbottom ntop bottoms... tops... key=value...``.

    Values are kept as the text they were written with, so untouched layers are written back unchanged.
    """

    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[str, str] = field(default_factory=dict)

    def get_int(self, key: int, default: int = 0) -> int:
        """The integer parameter ``key`` (ncnn's ``pd.get(key, default)``).

        Raises:
            ValueError: the value is not a number.
        """
        value = self.params.get(str(key))
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            try:
                return int(float(value))
            except ValueError as err:
                raise ValueError(
                    f"layer {self.name!r} ({self.type}): parameter {key}={value!r} is not a number"
                ) from err

    def set(self, key: int, value: int | float | str) -> None:
        """Set parameter ``key`` (appended after the existing ones when new)."""
        self.params[str(key)] = str(value)

    def line(self) -> str:
        """The layer as a ``.param`` line."""
        head = f"{self.type:<24} {self.name:<24} {len(self.bottoms)} {len(self.tops)}"
        rest = [*self.bottoms, *self.tops, *(f"{k}={v}" for k, v in self.params.items())]
        return " ".join([head, *rest]) if rest else head


@dataclass
class NcnnParam:
    """A parsed text ``.param`` file (magic 7767517).

    Example:
        >>> net = NcnnParam.parse("7767517\\n2 2\\nInput in0 0 1 in0 0=4\\nReLU relu 1 1 in0 out0\\n")
        >>> net.input_blob(), net.output_blob(), net.layers[1].type
        ('in0', 'out0', 'ReLU')
        >>> net.layers[0].get_int(0), net.layers[0].get_int(1, 7)
        (4, 7)
    """

    layers: list[NcnnLayer]
    blob_count: int

    @classmethod
    def parse(cls, text: str, source: str = "<param>") -> NcnnParam:
        """Parse the text of a ``.param`` file.

        Args:
            text: the file's text.
            source: the file name, for error messages.

        Raises:
            ValueError: not a text ncnn param (wrong magic, counts, or a malformed layer line).
        """
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if not lines or lines[0].strip() != str(MAGIC):
            raise ValueError(f"{source}: not a text ncnn .param (first line must be {MAGIC}).")
        try:
            layer_count, blob_count = (int(v) for v in lines[1].split())
        except (IndexError, ValueError) as err:
            raise ValueError(f"{source}: second line must be '<layer count> <blob count>'.") from err
        if len(lines) - 2 != layer_count:
            raise ValueError(f"{source}: header says {layer_count} layers, the file has {len(lines) - 2} layer lines.")
        layers = []
        for number, ln in enumerate(lines[2:], start=3):
            tok = _TOKEN.findall(ln)
            try:
                nb, nt = int(tok[2]), int(tok[3])
                blobs = tok[4 : 4 + nb + nt]
                if len(blobs) != nb + nt:
                    raise ValueError("too few blob names")
                params: dict[str, str] = {}
                for kv in tok[4 + nb + nt :]:
                    key, sep, value = kv.partition("=")
                    if not sep:
                        raise ValueError(f"parameter {kv!r} is not key=value")
                    int(key)
                    params[key] = value
            except (IndexError, ValueError) as err:
                raise ValueError(f"{source} line {number}: malformed layer line ({err}): {ln.strip()!r}") from err
            layers.append(NcnnLayer(tok[0], tok[1], blobs[:nb], blobs[nb:], params))
        return cls(layers, blob_count)

    def dumps(self) -> str:
        """The text of the ``.param`` file."""
        head = [str(MAGIC), f"{len(self.layers)} {self.blob_count}"]
        return "\n".join(head + [layer.line() for layer in self.layers]) + "\n"

    def consumers(self) -> dict[str, list[int]]:
        """Blob name → indices of the layers that read it."""
        out: dict[str, list[int]] = {}
        for i, layer in enumerate(self.layers):
            for b in layer.bottoms:
                out.setdefault(b, []).append(i)
        return out

    def input_blob(self) -> str:
        """The top blob of the first ``Input`` layer.

        Raises:
            ValueError: the graph has no Input layer.
        """
        for layer in self.layers:
            if layer.type == "Input" and layer.tops:
                return layer.tops[0]
        raise ValueError("the ncnn graph has no Input layer")

    def output_blob(self) -> str:
        """``out0`` when present (pnnx's name), else the last layer's first top."""
        tops = {t for layer in self.layers for t in layer.tops}
        if "out0" in tops:
            return "out0"
        return self.layers[-1].tops[0]


@dataclass(frozen=True)
class Chunk:
    """One array of a ``.bin``, as stored (``data`` holds its exact bytes: tag, values, padding)."""

    role: str
    tagged: bool
    count: int
    data: bytes

    @property
    def tag(self) -> int | None:
        """The 4-byte tag of a tagged array, None for a raw one."""
        return int.from_bytes(self.data[:4], "little") if self.tagged else None

    def values(self) -> npt.NDArray[np.float32] | npt.NDArray[np.int8]:
        """The decoded values: float32, or int8 for an int8-tagged array."""
        if not self.tagged:
            return np.frombuffer(self.data, dtype="<f4", count=self.count).astype(np.float32)
        tag, body = self.tag, self.data[4:]
        if tag == TAG_INT8:
            return np.frombuffer(body, dtype=np.int8, count=self.count).copy()
        if tag == TAG_FP16:
            return np.frombuffer(body, dtype="<f2", count=self.count).astype(np.float32)
        if tag in (TAG_FP32, TAG_FP32_RAW):
            return np.frombuffer(body, dtype="<f4", count=self.count).astype(np.float32)
        table = np.frombuffer(body, dtype="<f4", count=256)
        index = np.frombuffer(body, dtype=np.uint8, count=self.count, offset=1024)
        return table[index].astype(np.float32)


class _BinReader:
    """Walks a ``.bin`` the way ncnn's ``ModelBinFromDataReader::load`` does."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data = data
        self.pos = 0
        self.source = source

    def _take(self, n: int, where: str) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(
                f"{self.source}: ends at byte {len(self.data)} while reading {where} "
                f"({n} bytes from offset {self.pos}); the .param and .bin do not belong together."
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def chunk(self, role: str, tagged: bool, count: int, where: str) -> Chunk:
        if count < 0:
            raise ValueError(f"{where}: negative array size {count}")
        if not tagged:
            return Chunk(role, False, count, self._take(4 * count, where))
        head = self._take(4, where)
        tag = int.from_bytes(head, "little")
        if tag == TAG_FP16:
            size = _align4(2 * count)
        elif tag == TAG_INT8:
            size = _align4(count)
        elif tag in (TAG_FP32, TAG_FP32_RAW):
            size = 4 * count
        else:  # any other non-zero flag: a 256-entry lookup table and byte indices
            size = 1024 + _align4(count)
        return Chunk(role, True, count, head + self._take(size, where))

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos


def _reads(layer: NcnnLayer) -> list[tuple[str, bool, int]]:
    """The arrays ``layer.load_model`` reads, in order, as ``(role, tagged, count)``.

    Mirrors ncnn's ``src/layer/*.cpp`` ``load_model``; layers not listed there read nothing.

    Raises:
        ValueError: a weighted layer type this writer does not handle, or an unknown int8 scale term.
    """
    t, g = layer.type, layer.get_int
    where = f"layer {layer.name!r} ({t})"
    if t in ("Convolution", "ConvolutionDepthWise", "InnerProduct"):
        if t == "InnerProduct":
            num_output, bias_term, size, int8 = g(0), g(1), g(2), g(8)
        else:
            if g(19):  # dynamic weight: the weight is an input blob, nothing in the .bin
                return []
            num_output, bias_term, size, int8 = g(0), g(5), g(6), g(8)
        out = [("weight", True, size)]
        if bias_term:
            out.append(("bias", False, num_output))
        if int8 == 0:
            return out
        if t == "ConvolutionDepthWise":
            if int8 in (1, 101):
                out.append(("weight_scales", False, g(7, 1)))
            elif int8 in (2, 102):
                out.append(("weight_scales", False, 1))
            else:
                raise ValueError(f"{where}: int8_scale_term 8={int8} is not one ncnn reads (1, 2, 101, 102)")
        elif int8 in (1, 2, 101, 102) and not (t == "InnerProduct" and int8 > 100):
            out.append(("weight_scales", False, num_output))
        else:
            raise ValueError(f"{where}: int8_scale_term 8={int8} is not one ncnn reads for {t}")
        out.append(("input_scale", False, 1))
        if int8 > 100:
            out.append(("top_scale", False, 1))
        return out
    if t == "BatchNorm":
        return [(r, False, g(0)) for r in ("slope", "mean", "var", "bias")]
    if t in ("Bias", "PReLU"):
        return [("data", False, g(0))]
    if t == "Scale":
        if g(0) == -233:
            return []
        return [("scale", False, g(0))] + ([("bias", False, g(0))] if g(1) else [])
    if t == "InstanceNorm":
        return [("gamma", False, g(0)), ("beta", False, g(0))] if g(2, 1) else []
    if t == "GroupNorm":
        return [("gamma", False, g(1)), ("beta", False, g(1))] if g(3, 1) else []
    if t == "LayerNorm":
        return [("gamma", False, g(0)), ("beta", False, g(0))] if g(2, 1) else []
    if t == "RMSNorm":
        return [("gamma", False, g(0))] if g(2, 1) else []
    if t == "Normalize":
        return [("scale", False, g(3))]
    if t == "Padding":
        return [("pad", False, g(6))] if g(6) else []
    if t == "MemoryData":
        w, h, d, c = g(0), g(1), g(11), g(2)
        n = w * h * d * c if d else w * h * c if c else w * h if h else w
        return [("data", g(21, 1) == 0, n)] if n else []
    if t == "Gemm" and not (g(4) or g(5) or g(6)):
        return []
    if t == "Gemm" and not g(4) and g(5):  # a constant B (a Linear's weight) times the input blob A
        n, k, m, c_type = g(8), g(9), g(7), g(10)
        out = [("weight", True, n * k)]
        if g(6) and c_type != -1:
            count = {0: 1, 1: m, 2: m, 3: n * m, 4: n}.get(c_type)
            if count is None:
                raise ValueError(f"{where}: constant_broadcast_type_C 10={c_type} is not one ncnn reads")
            out.append(("bias", True, count))
        if g(18):
            out.append(("weight_scales", False, 1))
        return out
    if t == "MultiHeadAttention":
        embed, size = g(0), g(2)
        if embed <= 0 or size % embed:
            raise ValueError(f"{where}: weight_data_size 2={size} is not a multiple of embed_dim 0={embed}")
        qdim, kdim, vdim = size // embed, g(3, embed), g(4, embed)
        out = []
        for proj, (n_in, n_out) in zip(
            _MHA_PROJECTIONS, ((qdim, embed), (kdim, embed), (vdim, embed), (embed, qdim)), strict=True
        ):
            out += [(f"{proj}_weight", True, n_in * n_out), (f"{proj}_bias", False, n_out)]
        term = g(18)
        if term == 0:
            return out
        if term not in (1, 2, 3):
            raise ValueError(f"{where}: int8_scale_term 18={term} is not one this writer reads (int8: 2)")
        return (
            out
            + [(f"{p}_weight_scales", False, embed) for p in _MHA_PROJECTIONS[:3]]
            + [("out_weight_scale", False, 1)]
        )
    if t == "Gemm" or t in _UNSUPPORTED_WEIGHTED:
        raise ValueError(
            f"{where} holds weights the ncnn int8 writer cannot quantize "
            f"(it handles {', '.join(QUANTIZED_TYPES)}); it would stay float in an int8 model. "
            "Export this model in fp32/fp16 for ncnn, or replace the layer."
        )
    return []


@dataclass
class LayerData:
    """A layer of a ``.param`` with the arrays it reads from the ``.bin`` (keyed by role)."""

    layer: NcnnLayer
    chunks: dict[str, Chunk]


def _walk(net: NcnnParam, data: bytes, source: str) -> list[LayerData]:
    reader = _BinReader(data, source)
    out = []
    for layer in net.layers:
        where = f"layer {layer.name!r} ({layer.type})"
        chunks = {role: reader.chunk(role, tagged, n, where) for role, tagged, n in _reads(layer)}
        out.append(LayerData(layer, chunks))
    if reader.remaining:
        raise ValueError(
            f"{source}: {reader.remaining} bytes left after the last layer; the .bin holds data this reader "
            "does not know how a layer reads (or the .param and .bin do not belong together)."
        )
    return out


def read_model(param: str | os.PathLike[str], bin_path: str | os.PathLike[str]) -> list[LayerData]:
    """Parse an ncnn ``.param``/``.bin`` pair (fp32, fp16 or int8) into layers and their arrays.

    Raises:
        ValueError: a malformed param, a .bin of the wrong size, or a weighted layer type it cannot read.
    """
    net = NcnnParam.parse(Path(param).read_text(encoding="utf-8"), str(param))
    return _walk(net, Path(bin_path).read_bytes(), str(bin_path))


@dataclass
class Int8Summary:
    """What :func:`write_int8` did.

    Args:
        layers: ncnn layer name → the ONNX node whose scales it took, for every int8 layer.
        fused: ``(producer, consumer)`` ncnn layer names whose requantize was fused.
        kept_float: weight-holding layers copied unchanged (BatchNorm, PReLU, ...).
        bytes_in: size of the fp32 ``.bin``.
        bytes_out: size of the int8 ``.bin``.
        notes: anything that deviates from the table (e.g. grouped convolutions sharing one scale).

    Example:
        >>> Int8Summary(layers={"conv_0": "node_Conv_1", "fc": "node_Gemm_2"}, fused=[("conv_0", "fc")]).describe()
        '2 layers int8, 1 requantize fusions'
    """

    layers: dict[str, str] = field(default_factory=dict)
    fused: list[tuple[str, str]] = field(default_factory=list)
    kept_float: list[str] = field(default_factory=list)
    bytes_in: int = 0
    bytes_out: int = 0
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line for the report, e.g. ``7 layers int8, 3 requantize fusions``."""
        text = f"{len(self.layers)} layers int8, {len(self.fused)} requantize fusions"
        if self.kept_float:
            text += f", {len(self.kept_float)} weight-holding layers kept float ({', '.join(self.kept_float)})"
        return text


@dataclass
class _Quantized:
    layer: NcnnLayer
    entry: QuantizedNode
    weight: npt.NDArray[np.int8]
    bias: Chunk | None
    weight_multipliers: npt.NDArray[np.float32]
    input_multiplier: np.float32
    int8_scale_term: int
    top_multiplier: np.float32 | None = None


def _same_weight(ref: npt.NDArray[np.float32], w: npt.NDArray[np.float32]) -> bool:
    # the criterion of QuantTable.match_weight
    return ref.size == w.size and bool(np.allclose(ref.reshape(w.shape), w, atol=1e-5, rtol=1e-4))


def _match(table: QuantTable, w: npt.NDArray[np.float32], used: dict[str, str], layer: NcnnLayer) -> QuantizedNode:
    try:
        entry: QuantizedNode | None = table.match_weight(w)
    except KeyError:
        entry = None
    if entry is not None and entry.node.node in used:
        # two layers with equal weights (e.g. both still at their initial values): take the next unused one
        entry = next((q for q in table.nodes if q.node.node not in used and _same_weight(q.node.weight, w)), None)
    if entry is None:
        raise ValueError(
            f"ncnn layer {layer.name!r} ({layer.type}, weight {w.shape}) has no entry in the QuantTable: "
            f"no weighted ONNX node has equal weights (table nodes: {[q.node.node for q in table.nodes]}). "
            "It would stay float; the converter changed its weights or the table belongs to another model."
        )
    return entry


def _checked_scales(entry: QuantizedNode, n: int, where: str) -> npt.NDArray[np.float32]:
    scales = np.asarray(entry.weight_scales, dtype=np.float32).reshape(-1)
    if scales.size != n:
        raise ValueError(
            f"{where}: the table entry {entry.node.node!r} has {scales.size} weight scales for {n} outputs."
        )
    if not np.all(np.isfinite(scales) & (scales > 0)):
        raise ValueError(f"{where}: the table entry {entry.node.node!r} has a zero, negative or non-finite scale.")
    return scales


def _mha_bytes(data: LayerData, table: QuantTable, used: dict[str, str], notes: list[str]) -> tuple[bytes, list[str]]:
    """ncnn's int8 MultiHeadAttention (``18=2``): int8 weights, then q/k/v per-row and one out weight multiplier.

    ncnn quantizes the layer's activations at run time (per tensor / per row), so only weight scales are
    stored; the table's input scales of the four projections are not used. The output projection has one
    scale in ncnn: the largest of its channels' scales, so no weight is clipped. Returns the bytes and the
    table nodes the four projections took their scales from.
    """
    layer = data.layer
    where = f"ncnn layer {layer.name!r} (MultiHeadAttention)"
    if layer.get_int(18):
        raise ValueError(f"{where} is already int8; pass the fp32 model pnnx wrote.")
    embed = layer.get_int(0)
    parts: list[bytes] = []
    multipliers: list[npt.NDArray[np.float32]] = []
    nodes: list[str] = []
    for proj in _MHA_PROJECTIONS:
        chunk = data.chunks[f"{proj}_weight"]
        if chunk.tag == TAG_INT8:
            raise ValueError(f"{where} already stores int8 weights; pass the fp32 model pnnx wrote.")
        n_out = embed if proj != "out" else chunk.count // embed
        w = np.asarray(chunk.values(), dtype=np.float32).reshape(n_out, -1)
        entry = _match(table, w, used, layer)
        used[entry.node.node] = layer.name
        nodes.append(entry.node.node)
        scales = _checked_scales(entry, n_out, f"{where} {proj} projection")
        if proj == "out":
            scales = np.full(n_out, scales.max(), np.float32)
            multipliers.append(np.asarray([ncnn_multiplier(scales[0])], dtype=np.float32))
        else:
            multipliers.append(np.asarray(ncnn_multiplier(scales), dtype=np.float32))
        body = quantize(w, scales, axis=0, rounding="half_away").astype(np.int8).tobytes()
        parts += [TAG_INT8.to_bytes(4, "little"), body, b"\0" * (_align4(len(body)) - len(body))]
        parts.append(data.chunks[f"{proj}_bias"].data)
    parts += [m.astype("<f4").tobytes() for m in multipliers]
    layer.set(18, 2)
    notes.append(
        f"{layer.name}: MultiHeadAttention int8 with per-channel q/k/v and one output-projection weight scale; "
        "ncnn quantizes its activations at run time"
    )
    return b"".join(parts), nodes


def _quantize_layer(data: LayerData, table: QuantTable, used: dict[str, str], notes: list[str]) -> _Quantized:
    layer = data.layer
    where = f"ncnn layer {layer.name!r} ({layer.type})"
    gemm = layer.type == "Gemm"
    if layer.get_int(18 if gemm else 8):
        raise ValueError(f"{where} is already int8; pass the fp32 model pnnx wrote.")
    chunk = data.chunks["weight"]
    if chunk.tag == TAG_INT8:
        raise ValueError(f"{where} already stores int8 weights; pass the fp32 model pnnx wrote.")
    num_output = layer.get_int(8 if gemm else 0)
    flat = np.asarray(chunk.values(), dtype=np.float32)
    if num_output <= 0 or flat.size % num_output:
        raise ValueError(f"{where}: weight size {flat.size} is not a multiple of num_output {num_output}")
    transposed = gemm and not layer.get_int(3)  # transB=0 stores B as (K, N)
    w = flat.reshape(-1, num_output).T if transposed else flat.reshape(num_output, -1)
    entry = _match(table, w, used, layer)
    used[entry.node.node] = layer.name
    scales = np.asarray(entry.weight_scales, dtype=np.float32).reshape(-1)
    if scales.size != num_output:
        raise ValueError(
            f"{where}: the table entry {entry.node.node!r} has {scales.size} weight scales "
            f"for {num_output} output channels."
        )
    if not np.all(np.isfinite(scales) & (scales > 0)) or not (np.isfinite(entry.input_scale) and entry.input_scale > 0):
        raise ValueError(f"{where}: the table entry {entry.node.node!r} has a zero, negative or non-finite scale.")
    if gemm:
        # ncnn's int8 Gemm has one weight scale for all of B and quantizes its input per row at run time:
        # the largest channel scale clips no weight; the table's input scale is not used
        scale = np.float32(scales.max())
        notes.append(
            f"{layer.name}: Gemm int8 uses one weight scale (the largest of {num_output}) and ncnn's per-row "
            "dynamic input quantization"
        )
        q = quantize(w, np.full(num_output, scale, np.float32), axis=0, rounding="half_away")
        stored = q.T if transposed else q
        return _Quantized(
            layer,
            entry,
            np.ascontiguousarray(stored).reshape(-1),
            data.chunks.get("bias"),
            np.asarray([ncnn_multiplier(scale)], dtype=np.float32),
            np.float32(ncnn_multiplier(np.float32(entry.input_scale))),
            2,
        )
    if layer.type == "ConvolutionDepthWise":
        group = layer.get_int(7, 1)
        if group <= 0 or num_output % group:
            raise ValueError(f"{where}: group {group} does not divide num_output {num_output}")
        if group != num_output:
            # ncnn's ConvolutionDepthWise has one weight scale per group: a grouped (not depthwise)
            # convolution gets the largest of its channels' scales, so no weight is clipped
            scales = np.repeat(scales.reshape(group, -1).max(axis=1), num_output // group).astype(np.float32)
            notes.append(f"{layer.name}: grouped convolution ({group} groups) uses one weight scale per group")
        multipliers = ncnn_multiplier(scales[:: num_output // group])
        term = 1
    else:
        multipliers = ncnn_multiplier(scales)
        term = 2
    q = quantize(w, scales, axis=0, rounding="half_away")
    return _Quantized(
        layer,
        entry,
        q.reshape(-1),
        data.chunks.get("bias"),
        multipliers.astype(np.float32),
        np.float32(ncnn_multiplier(np.float32(entry.input_scale))),
        term,
    )


def _is_grouped(layer: NcnnLayer) -> bool:
    """A grouped, not depthwise, convolution: ncnn runs it as one Convolution per group (``group_ops``)."""
    group = layer.get_int(7, 1)
    return layer.type == "ConvolutionDepthWise" and 1 < group < layer.get_int(0)


def _fuse(net: NcnnParam, quantized: dict[int, _Quantized], summary: Int8Summary) -> None:
    """Mark requantize fusions: an int8 conv whose output only feeds int8 convs with one input scale."""
    consumers = net.consumers()
    for q in quantized.values():
        layer = q.layer
        if layer.type not in _FUSE_PRODUCERS or len(layer.tops) != 1:
            continue
        users = consumers.get(layer.tops[0], [])
        if len(users) != 1:
            continue
        nxt = net.layers[users[0]]
        if nxt.type == "Split":
            branches = [consumers.get(top, []) for top in nxt.tops]
            if any(len(b) != 1 for b in branches):
                continue
            targets = [b[0] for b in branches]
        else:
            targets = [users[0]]
        ok = all(
            t in quantized and net.layers[t].type in _FUSE_CONSUMERS and len(net.layers[t].bottoms) == 1
            for t in targets
        )
        if not ok:
            continue
        multipliers = {float(quantized[t].input_multiplier) for t in targets}
        if len(multipliers) != 1:
            # the branches would read one int8 blob with different scales
            continue
        q.top_multiplier = quantized[targets[0]].input_multiplier
        q.int8_scale_term += 100
        summary.fused.append((layer.name, net.layers[targets[0]].name if nxt.type != "Split" else nxt.name))


def _int8_bytes(q: _Quantized) -> bytes:
    body = q.weight.astype(np.int8).tobytes()
    parts = [TAG_INT8.to_bytes(4, "little"), body, b"\0" * (_align4(len(body)) - len(body))]
    if q.bias is not None:
        parts.append(q.bias.data)
    parts.append(q.weight_multipliers.astype("<f4").tobytes())
    if q.layer.type == "Gemm":  # B's one scale and no input scale (ncnn quantizes A per row)
        return b"".join(parts)
    parts.append(np.asarray([q.input_multiplier], dtype="<f4").tobytes())
    if q.top_multiplier is not None:
        parts.append(np.asarray([q.top_multiplier], dtype="<f4").tobytes())
    return b"".join(parts)


def write_int8(
    param_in: str | os.PathLike[str],
    bin_in: str | os.PathLike[str],
    param_out: str | os.PathLike[str],
    bin_out: str | os.PathLike[str],
    table: QuantTable,
    fuse: bool = True,
    keep_float: Sequence[str] = (),
    int8_grouped: bool = False,
) -> Int8Summary:
    """Write an int8 ncnn model from an fp32 one and a QuantTable.

    Every Convolution, ConvolutionDepthWise and InnerProduct is matched to its table entry by weight
    content (pnnx renames layers), quantized with the table's per-output-channel weight scales and
    ncnn's rounding, and given the entry's input scale; layers that hold float data ncnn never runs in
    int8 (BatchNorm, PReLU, ...) are copied byte for byte.

    Args:
        param_in: the fp32 ``.param`` pnnx wrote.
        bin_in: its ``.bin``.
        param_out: where the int8 ``.param`` goes (written atomically).
        bin_out: where the int8 ``.bin`` goes (written atomically; removed again if the param fails).
        table: the int8 scales of the same model's ONNX graph.
        fuse: fuse requantize where an int8 Convolution/ConvolutionDepthWise feeds only int8 layers
            (``8=102``/``101`` plus a top-blob scale).
        keep_float: ncnn layer types written in fp32 inside the int8 model (e.g. ``("ConvolutionDepthWise",)``:
            on x86 ncnn's int8 depthwise kernel is slower than its fp32 one); their table entries are matched by
            weight as usual, so a wrong table still fails, and they are listed as kept float.
        int8_grouped: also write grouped convolutions (ConvolutionDepthWise with ``1 < group < num_output``) in
            int8. Off by default: ncnn's packed int8 grouped path is wrong (see :data:`GROUPED_FLOAT_NOTE`), and a
            user's app runs the file with ncnn's default options, packing on; kept float they are matched and
            checked like ``keep_float`` layers and named in a note.

    Raises:
        ValueError: a weighted layer type the writer does not quantize, an ncnn weighted layer with no table
            entry, a table entry with no ncnn layer, or a malformed/already-int8 input, each named.
    """
    bad = [t for t in keep_float if t not in QUANTIZED_TYPES]
    if bad:
        raise ValueError(f"keep_float: {bad} are not int8 layer types; choose from {list(QUANTIZED_TYPES)}.")
    net = NcnnParam.parse(Path(param_in).read_text(encoding="utf-8"), str(param_in))
    data = Path(bin_in).read_bytes()
    walked = _walk(net, data, str(bin_in))
    summary = Int8Summary(bytes_in=len(data))
    used: dict[str, str] = {}
    quantized: dict[int, _Quantized] = {}
    attention: dict[int, bytes] = {}
    grouped_float: list[str] = []
    for i, ld in enumerate(walked):
        grouped = not int8_grouped and ld.layer.type not in keep_float and _is_grouped(ld.layer)
        if (ld.layer.type in keep_float or grouped) and "weight" in ld.chunks:
            _quantize_layer(ld, table, used, [])  # matched and checked like an int8 layer, then left as it is
            summary.kept_float.append(f"{ld.layer.name} ({ld.layer.type})")
            if grouped:
                grouped_float.append(ld.layer.name)
        elif ld.layer.type == "MultiHeadAttention":
            attention[i], nodes = _mha_bytes(ld, table, used, summary.notes)
            summary.layers[ld.layer.name] = ", ".join(nodes)
        elif ld.layer.type in QUANTIZED_TYPES and "weight" in ld.chunks:
            quantized[i] = _quantize_layer(ld, table, used, summary.notes)
        elif ld.chunks:
            summary.kept_float.append(f"{ld.layer.name} ({ld.layer.type})")
        elif ld.layer.type in QUANTIZED_TYPES:
            # 19=1: the weight is an input blob, not a constant (no QuantTable entry either)
            summary.notes.append(f"{ld.layer.name} ({ld.layer.type}) takes its weight as an input and stays float")
    if grouped_float:
        summary.notes.append(f"grouped convolutions kept float ({', '.join(grouped_float)}): {GROUPED_FLOAT_NOTE}")
    missing = [q.node.node for q in table.nodes if q.node.node not in used]
    if missing:
        raise ValueError(
            f"QuantTable nodes {missing} have no int8 layer in the ncnn graph (ncnn weighted layers: "
            f"{[q.layer.name for q in quantized.values()]}); pnnx merged or rewrote them, so their scales "
            "cannot be applied."
        )
    if fuse:
        _fuse(net, quantized, summary)
    out: list[bytes] = []
    for i, ld in enumerate(walked):
        if i in attention:
            out.append(attention[i])
            continue
        q = quantized.get(i)
        if q is None:
            out.extend(c.data for c in ld.chunks.values())
            continue
        q.layer.set(18 if q.layer.type == "Gemm" else 8, q.int8_scale_term)
        summary.layers[q.layer.name] = q.entry.node.node
        out.append(_int8_bytes(q))
    blob = b"".join(out)
    summary.bytes_out = len(blob)
    bin_final = Path(bin_out)
    with atomic_path(bin_final) as tmp:
        tmp.write_bytes(blob)
    try:
        with atomic_path(param_out) as tmp:
            tmp.write_text(net.dumps(), encoding="utf-8")
    except BaseException:
        bin_final.unlink(missing_ok=True)
        raise
    log.info(
        "ncnn int8: %s; weights %.1f KB → %.1f KB",
        summary.describe(),
        summary.bytes_in / 1024,
        summary.bytes_out / 1024,
    )
    return summary
