"""int8 TFLite from torch on graph patterns of real architectures (HF MobileNetV2, EfficientNet, Swin).

Each module reproduces, in two or three blocks, the pattern that broke litert-torch's PT2E path on the
full model: TF-style explicit ``F.pad`` before convs next to a residual add (layout pass assertion),
``padding="same"`` convs (left in float), and shape arithmetic on the batch size (an observer on an int).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("litert_torch", reason="litert-torch not installed")
pytest.importorskip("ai_edge_litert", reason="ai-edge-litert not installed")

import torch
import torch.nn.functional as F
from ai_edge_litert.interpreter import Interpreter
from torch import nn

from exporters import export
from exporters.targets.tflite import KERNEL_OPS
from exporters.targets.tflite_torch import _rewrite_for_quantization


def tf_same(x: torch.Tensor, conv: Any) -> torch.Tensor:
    """HF MobileNetV2's ``apply_tf_padding``: an explicit pad before every conv, zero-width for 1x1 convs."""
    pads = []
    for size, k, s in zip(reversed(x.shape[-2:]), reversed(conv.kernel_size), reversed(conv.stride), strict=True):
        total = max(k - (s if size % s == 0 else size % s), 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class InvertedResiduals(nn.Module):
    """Two MobileNetV2 blocks (expand 1x1, depthwise 3x3, reduce 1x1), TF padding, one residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2)
        self.blocks = nn.ModuleList(
            nn.ModuleList([nn.Conv2d(8, 24, 1), nn.Conv2d(24, 24, 3, stride=s, groups=24), nn.Conv2d(24, 8, 1)])
            for s in (2, 1)
        )
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.stem(tf_same(x, self.stem)))
        for i, block in enumerate(self.blocks):
            expand, dw, reduce = block.children()
            y = F.relu6(expand(tf_same(x, expand)))
            y = F.relu6(dw(tf_same(y, dw)))
            y = reduce(tf_same(y, reduce))
            x = x + y if i else y
        return self.head(x.mean((2, 3)))


class SamePadding(nn.Module):
    """EfficientNet-style ``padding="same"`` convs: odd, even (asymmetric) and dilated kernels."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding="same")
        self.b = nn.Conv2d(16, 16, 4, padding="same", groups=16)
        self.c = nn.Conv2d(16, 16, 3, padding="same", dilation=2)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.a(x))
        x = F.silu(self.b(x))
        x = F.silu(self.c(x))
        return self.head(x.mean((2, 3)))


class Windows(nn.Module):
    """Swin-style windows: ``view(-1, ...)`` and a head split whose sizes are computed from the batch size."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, stride=4)
        self.fc = nn.Linear(16, 16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x)
        b, c, h, w = x.shape
        x = x.permute(0, 2, 3, 1).reshape(b, 2, h // 2, 2, w // 2, c).permute(0, 1, 3, 2, 4, 5)
        x = x.reshape(-1, (h // 2) * (w // 2), c)
        shape = x.shape[:-1]
        x = x + self.fc(x).view(*shape, -1, 4).flatten(2)
        return self.head(x.reshape(b, -1, c).mean(1))


def images(n: int, seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, size, size)).astype(np.float32)


def kernel_dtypes(path: Path) -> list[tuple[str, str, str]]:
    """(op, input dtype, weight dtype) of every conv / FC kernel, read back in LiteRT."""
    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    out = []
    for op in it._get_ops_details():
        if op["op_name"] in KERNEL_OPS:
            x, w = (it._get_tensor_details(int(i), 0) for i in op["inputs"][:2])
            out.append((op["op_name"], np.dtype(x["dtype"]).name, np.dtype(w["dtype"]).name))
    return out


def export_int8(model: nn.Module, tmp_path: Path, size: int = 32) -> Any:
    for m in model.modules():  # unit-gain init keeps random activations data-like (no tied logits)
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
    samples = images(48, 2, size)
    [row] = export(
        model.eval(),
        ["tflite"],
        example_input=samples[:1],
        calibration=images(48, 1, size),
        samples=samples,
        precision="int8",
        directory=tmp_path,
    )
    return row


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make", "size", "kernels", "note"),
    [
        (lambda: InvertedResiduals(), 33, 8, "zero-width pad"),  # TF-style padding and residual adds
        (lambda: SamePadding(), None, 4, "3 conv(s) with string padding"),  # padding='same' convs
    ],
    ids=["tf_padding_and_residual", "same_padding"],
)
def test_padding_patterns_convert_to_int8_kernels(
    tmp_path: Path, make: Any, size: int | None, kernels: int, note: str
) -> None:
    torch.manual_seed(0)
    row = export_int8(make(), tmp_path, **({"size": size} if size else {}))
    assert row.status != "failed", row.reason
    ks = kernel_dtypes(tmp_path / row.files[0])
    assert len(ks) == kernels and all(k[1:] == ("int8", "int8") for k in ks), ks
    assert any(note in n for n in row.notes), row.notes
    assert row.ok, row.reason


@pytest.mark.slow
def test_batch_size_arithmetic_is_not_observed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    row = export_int8(Windows(), tmp_path)
    assert row.ok, row.reason
    assert [k[1:] for k in kernel_dtypes(tmp_path / row.files[0])] == [("int8", "int8")] * 3


def test_rewrite_keeps_outputs_identical() -> None:
    """The rewritten graph (zero pads gone, string padding made explicit) computes what the model computes."""
    torch.manual_seed(0)
    for model in (SamePadding().eval(), InvertedResiduals().eval()):
        x = torch.from_numpy(images(2, 0, 33))
        gm = torch.export.export(model, (x,)).module()
        before = {str(n.target) for n in gm.graph.nodes}
        notes = _rewrite_for_quantization(gm)
        after = {str(n.target) for n in gm.graph.nodes}
        assert notes, "nothing was rewritten"
        assert "aten.conv2d.padding" not in after
        if "aten.conv2d.padding" in before:
            assert "aten.pad.default" in after  # the even kernel pads asymmetrically
        with torch.no_grad():
            torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)
