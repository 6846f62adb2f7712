"""Whole events (CALPAGAN, seed 004): Pythia 8 events, fast and detailed 72 x 72 tower images, jets.

Needs the ``events`` extra (``pip install calosim[events]``: pythia8mc, fastjet, awkward);
:func:`require` turns a missing package into a one-line error naming the extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require", "EventsError"]


class EventsError(ValueError):
    """An events file, image file or option is not what the events chain expects."""


def require(module: str) -> ModuleType:
    """Import ``module`` (e.g. ``"pythia8"``, ``"fastjet"``) or fail naming the ``events`` extra."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise EventsError(f"the events chain needs the Python package {module!r}: "
                          "pip install 'calosim[events]'") from None
