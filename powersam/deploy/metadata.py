"""The exported-graph metadata format, re-exported from :mod:`powersam.runtime.metadata`, which owns it.

The runtime reads this format on devices without torch or the exporter, so it lives there and the exporter imports
it from there (never the other way round). This module stays for imports written before the move.
"""
from __future__ import annotations

from ..runtime.metadata import (  # noqa: F401 - re-exported
    FORMAT_VERSION,
    GRAPH_KINDS,
    HIGH_RES_NAMES,
    KEY_PREFIX,
    PROMPT_ORDERS,
    RESIZE_MODES,
    GraphMetadata,
    attach_metadata,
)

__all__ = [
    "FORMAT_VERSION", "GRAPH_KINDS", "HIGH_RES_NAMES", "KEY_PREFIX", "PROMPT_ORDERS", "RESIZE_MODES", "GraphMetadata",
    "attach_metadata",
]
