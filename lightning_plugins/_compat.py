"""The one place that decides which Lightning namespace to use.

Lightning ships the same trainer twice: ``lightning.pytorch`` and ``pytorch_lightning``. Trainers of
either namespace run callbacks of the other (hooks are duck-typed), so fitslim's callbacks subclass the
namespace found here and never ``isinstance``-check a trainer or module against one namespace.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["pl", "namespace"]

_MISSING = "fitslim's Lightning callbacks need torch and Lightning: pip install 'fitslim[lightning]'"


def _import() -> ModuleType:
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError(_MISSING)


pl: ModuleType = _import()
namespace: str = pl.__name__
