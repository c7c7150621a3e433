"""Kept for console scripts installed by fitslim 0.1.0 (``fitslim.cli:main``); the CLI is :mod:`fitslim.app.cli`.

The import of the application layer happens only when :func:`main` runs, so importing this module loads
neither the plugin sets nor the exporters.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run :func:`fitslim.app.cli.main`."""
    from fitslim.app.cli import main as app_main

    return app_main(argv)
