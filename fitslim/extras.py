"""Which ``pip install 'fitslim[...]'`` provides what: one message for a missing optional dependency.

Example:
    >>> from fitslim.extras import require
    >>> require("the example", {"json": "the standard library"}, "none")  # present: nothing happens
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

__all__ = ["require"]


def require(user: str, modules: Mapping[str, str], extra: str) -> None:
    """Import each module; if one is missing raise an ImportError naming it and the extra that installs it.

    Args:
        user: what needs the modules, e.g. ``"lightning_plugins"``.
        modules: module to import (alternatives separated by ``|``) → the package name shown to the user.
        extra: the fitslim extra that installs them.

    Raises:
        ImportError: ``"<user> needs <package> (No module named ...): pip install 'fitslim[<extra>]'"``.
    """
    for names, package in modules.items():
        error: ImportError | None = None
        for name in names.split("|"):
            try:
                importlib.import_module(name)
                error = None
                break
            except ImportError as err:
                error = error or err
        if error is not None:
            raise ImportError(f"{user} needs {package} ({error}): pip install 'fitslim[{extra}]'") from error
