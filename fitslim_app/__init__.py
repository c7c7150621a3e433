"""The application layer: the ``fitslim`` command line and the demo.

Unlike the core (:mod:`fitslim` without this subpackage), which depends on NumPy and PyYAML only, the
application layer drives the plugin sets and the exporters: :mod:`fitslim_app.cli` is the console script,
:mod:`fitslim_app.demo` the quickstart on the bundled digits. Nothing in the core imports it.
"""

from __future__ import annotations

__all__: list[str] = []
