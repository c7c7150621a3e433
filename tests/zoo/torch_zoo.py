"""Torch zoo: HuggingFace ``transformers`` architectures from small configs, plus user-style modules.

Every model is built with random weights (no download); BatchNorm statistics come from a few batches
of the case's own inputs so activations stay in a data-like range. HF models are wrapped so
``forward`` takes tensors and returns the logits tensor, as a user's LightningModule would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tests.zoo import ZooCase, image_batch, token_batch

__all__ = ["CASES", "HFLogits", "build"]


class HFLogits(nn.Module):
    """A HuggingFace model seen as ``forward(*tensors) -> logits`` (vision: pixels; text: ids, mask)."""

    def __init__(self, model: nn.Module, text: bool = False) -> None:
        super().__init__()
        self.model = model
        self.text = text

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.text:
            return self.model(input_ids=x, attention_mask=attention_mask).logits
        return self.model(pixel_values=x).logits


def _bn_stats(model: nn.Module, inputs: Callable[[int, int], Any], batches: int = 4) -> nn.Module:
    """Set every BatchNorm's running statistics from a few input batches (cumulative average)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        saved = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        with torch.no_grad():
            for seed in range(batches):
                x = inputs(8, 1000 + seed)
                args = x if isinstance(x, tuple) else (x,)
                model(*[torch.from_numpy(a) for a in args])
        for m, mom in zip(bns, saved, strict=True):
            m.momentum = mom
    return model.eval()


def _last_linear(model: nn.Module) -> nn.Module:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def _hf(config_name: str, model_name: str, text: bool = False, **config: Any) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import transformers

        torch.manual_seed(0)
        cfg = getattr(transformers, config_name)(**config)
        model = getattr(transformers, model_name)(cfg)
        # HF initializes weights (EfficientNet: BN scales too) with std 0.02 whatever the fan-in, so
        # activations of deep random vision models vanish (EfficientNet's pooled features are ~1e-34)
        # and logits tie. Unit-gain fan-in init keeps them data-like, so agreement checks mean something.
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear) and (not text or m is _last_linear(model)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:  # EfficientNet draws these ~N(0, 0.02)
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        return HFLogits(model, text=text).eval()

    return make


# ---- user-style modules -----------------------------------------------------------------------


class SENet(nn.Module):
    """Conv stem, a squeeze-excitation block with Hardswish / SiLU, a classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Hardswish())
        self.conv = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.SiLU())
        self.se_reduce = nn.Conv2d(32, 8, 1)
        self.se_expand = nn.Conv2d(8, 32, 1)
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.stem(x))
        s = F.adaptive_avg_pool2d(x, 1)
        s = torch.sigmoid(self.se_expand(F.relu(self.se_reduce(s))))
        x = x * s
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class GroupedNet(nn.Module):
    """Grouped 3x3 convs (ResNeXt-style) with a residual add."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 1), nn.BatchNorm2d(32),
        )
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.block(x))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class AttentionNet(nn.Module):
    """Patch embedding, LayerNorm, ``F.scaled_dot_product_attention`` with its own head split, GELU MLP."""

    def __init__(self, classes: int = 10, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.proj(a)
        x = x + self.mlp(self.norm2(x))
        return self.head(x.mean(1))


class UNetLike(nn.Module):
    """Downsample, upsample and concat skip connection (segmentation-style), then a classifier."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = nn.Sequential(nn.Conv2d(48, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.enc(x)
        d = self.up(self.down(e))
        x = self.fuse(torch.cat([e, d], 1))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _user(cls: type[nn.Module]) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        torch.manual_seed(0)
        return cls().eval()

    return make


# ---- the cases ----------------------------------------------------------------------------------

_IMG64 = image_batch((3, 64, 64))
_IMG32 = image_batch((3, 32, 32))
_TOK = token_batch(vocab=100, length=16)
_LABELS = {"num_labels": 10}
_BERT = {"vocab_size": 100, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
         "intermediate_size": 64, "max_position_embeddings": 64, "num_labels": 3}


def _case(name: str, family: str, make: Callable[[], nn.Module], inputs: Callable[[int, int], Any],
          kind: str = "vision", ci: bool = False, tags: tuple[str, ...] = ()) -> ZooCase:
    def build() -> nn.Module:
        return _bn_stats(make(), inputs)

    return ZooCase(name, family, build, inputs, kind, ci, tags)


_ALL = [
    _case("hf_resnet", "resnet", _hf("ResNetConfig", "ResNetForImageClassification", embedding_size=16,
          hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], layer_type="bottleneck", **_LABELS), _IMG64, ci=True),
    _case("hf_resnet_basic", "resnet", _hf("ResNetConfig", "ResNetForImageClassification", embedding_size=16,
          hidden_sizes=[16, 32, 64, 128], depths=[2, 2, 2, 2], layer_type="basic", **_LABELS), _IMG64),
    _case("hf_mobilenet_v1", "mobilenet_v1", _hf("MobileNetV1Config", "MobileNetV1ForImageClassification",
          depth_multiplier=0.25, image_size=64, **_LABELS), _IMG64, ci=True),
    _case("hf_mobilenet_v2", "mobilenet_v2", _hf("MobileNetV2Config", "MobileNetV2ForImageClassification",
          depth_multiplier=0.35, image_size=64, **_LABELS), _IMG64, ci=True),
    _case("hf_convnext", "convnext", _hf("ConvNextConfig", "ConvNextForImageClassification",
          hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], image_size=64, **_LABELS), _IMG64, ci=True,
          tags=("layernorm",)),
    _case("hf_convnext_v2", "convnext_v2", _hf("ConvNextV2Config", "ConvNextV2ForImageClassification",
          hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], image_size=64, **_LABELS), _IMG64, ci=True,
          tags=("layernorm",)),
    _case("hf_efficientnet", "efficientnet", _hf("EfficientNetConfig", "EfficientNetForImageClassification",
          width_coefficient=0.25, depth_coefficient=0.25, image_size=64, hidden_dim=320, **_LABELS), _IMG64, ci=True),
    _case("hf_regnet", "regnet", _hf("RegNetConfig", "RegNetForImageClassification", embedding_size=16,
          hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], groups_width=8, layer_type="y", **_LABELS), _IMG64,
          ci=True, tags=("groups",)),
    _case("hf_vit", "vit", _hf("ViTConfig", "ViTForImageClassification", image_size=32, patch_size=8, hidden_size=64,
          num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, **_LABELS), _IMG32, ci=True,
          tags=("attention",)),
    _case("hf_deit", "deit", _hf("DeiTConfig", "DeiTForImageClassification", image_size=32, patch_size=8,
          hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, **_LABELS), _IMG32,
          tags=("attention",)),
    _case("hf_mobilevit", "mobilevit", _hf("MobileViTConfig", "MobileViTForImageClassification", image_size=64,
          hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 128], num_attention_heads=2,
          **_LABELS), _IMG64, ci=True, tags=("attention", "layernorm")),
    _case("hf_swin", "swin", _hf("SwinConfig", "SwinForImageClassification", image_size=32, patch_size=2, embed_dim=16,
          depths=[1, 1], num_heads=[2, 4], window_size=4, **_LABELS), _IMG32, ci=True, tags=("attention",)),
    _case("hf_bert", "bert", _hf("BertConfig", "BertForSequenceClassification", text=True, **_BERT), _TOK,
          kind="text", ci=True, tags=("attention",)),
    _case("hf_distilbert", "distilbert", _hf("DistilBertConfig", "DistilBertForSequenceClassification", text=True,
          vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=64, num_labels=3),
          _TOK, kind="text", ci=True, tags=("attention",)),
    _case("user_se", "user_se", _user(SENet), _IMG32, ci=True),
    _case("user_grouped", "user_grouped", _user(GroupedNet), _IMG32, ci=True, tags=("groups",)),
    _case("user_attention", "user_attention", _user(AttentionNet), _IMG32, ci=True, tags=("attention", "layernorm")),
    _case("user_unet", "user_unet", _user(UNetLike), _IMG32, ci=True),
]

CASES: dict[str, ZooCase] = {c.name: c for c in _ALL}


def build(name: str) -> tuple[nn.Module, Any]:
    """The model of a case and one example batch (2 samples) as tensors."""
    case = CASES[name]
    x = case.inputs(2, 0)
    args = tuple(torch.from_numpy(a) for a in x) if isinstance(x, tuple) else torch.from_numpy(x)
    return case.build(), args


if __name__ == "__main__":  # a quick look at the zoo: parameters and output shapes
    import time

    for case in CASES.values():
        t0 = time.perf_counter()
        model, x = build(case.name)
        with torch.no_grad():
            y = model(*x) if isinstance(x, tuple) else model(x)
        n = sum(p.numel() for p in model.parameters())
        print(f"{case.name:18s} {n:>9,d} params  out {tuple(y.shape)}  finite {bool(torch.isfinite(y).all())}  "
              f"std {float(y.std()):.3f}  {time.perf_counter() - t0:.1f}s  ci={case.ci}")
    print(np.__version__)
