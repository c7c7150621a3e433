"""fitslim: pruning, quantization-aware training and distillation as callbacks, with verified device export.

This is the framework-free core (NumPy and PyYAML only): sparsity schedules, the recipe schema, the int8
math reference and the QuantSpec shared by both plugin sets and the exporters.
"""

from __future__ import annotations

from fitslim.int8 import absmax_scale, dequantize, fake_quant, percentile_scale, quantize
from fitslim.quantspec import LayerQuant, QuantSpec
from fitslim.recipe import Recipe, RecipeError
from fitslim.schedules import ConstantSparsity, Cubic, PolynomialDecay, SparsitySchedule, make_schedule

__version__ = "0.1.0"

__all__ = [
    "ConstantSparsity",
    "Cubic",
    "PolynomialDecay",
    "SparsitySchedule",
    "make_schedule",
    "LayerQuant",
    "QuantSpec",
    "Recipe",
    "RecipeError",
    "absmax_scale",
    "dequantize",
    "fake_quant",
    "percentile_scale",
    "quantize",
    "__version__",
]
