"""The ``/v1/segment`` image-embedding cache: a least-recently-used map bounded by entry count and bytes.

The first ``/v1/segment`` call on an image runs the encoder and stores the predictor's image state
(:meth:`~powersam.prompt_frame.PromptFrameMixin.image_state`: embedding, features, sizes) under a random id; each
further click restores it and runs only the prompt decoder. The low-res mask logits of the last call are kept with
the entry, so the next click can refine them (``"mask": "previous"``). Thread-safe.
"""
from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

__all__ = ["CacheEntry", "EmbeddingCache", "nbytes"]


def nbytes(value: Any) -> int:
    """Bytes held by the arrays/tensors in ``value`` (nested tuples, lists and dicts; other objects count 0)."""
    if value is None:
        return 0
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    size = getattr(value, "nbytes", None)  # NumPy arrays and torch tensors both have it
    return int(size) if isinstance(size, (int, np.integer)) else 0


@dataclass
class CacheEntry:
    """One encoded image: the predictor state, its size (H, W) and the last call's low-res logits."""

    state: dict[str, Any]
    image_size: tuple[int, int]
    low_res: Optional[np.ndarray] = None
    created: float = field(default_factory=time.monotonic)
    # for zoomed prompts (docs/zoom.md): the upload as sent (compressed bytes, decoded again to crop) and the
    # predictor states of the windows encoded so far, so later clicks on the same object reuse them
    image_bytes: Optional[np.ndarray] = None
    windows: dict[Any, dict[str, Any]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return nbytes(self.state) + nbytes(self.low_res) + nbytes(self.image_bytes) + nbytes(self.windows)


class EmbeddingCache:
    """At most ``max_entries`` entries and ``max_bytes`` bytes; inserting past either bound evicts the least
    recently used entries. An entry larger than ``max_bytes`` alone is refused (ValueError)."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError(f"cache bounds must be positive; got {max_entries} entries, {max_bytes} bytes")
        self.max_entries, self.max_bytes = int(max_entries), int(max_bytes)
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._lock = threading.Lock()
        self._bytes = 0
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    @property
    def bytes(self) -> int:
        return self._bytes

    def put(self, state: dict[str, Any], image_size: tuple[int, int], image_bytes: Optional[bytes] = None) -> str:
        """Store a new image's state (and, for zoomed prompts later, its upload) → its id (random, 128 bits,
        URL-safe)."""
        entry = CacheEntry(state=state, image_size=(int(image_size[0]), int(image_size[1])),
                           image_bytes=None if image_bytes is None else np.frombuffer(image_bytes, np.uint8))
        size = entry.nbytes
        if size > self.max_bytes:
            raise ValueError(f"one image embedding takes {size} bytes, more than the whole cache "
                             f"({self.max_bytes} bytes, --cache-mb)")
        key = secrets.token_urlsafe(16)
        with self._lock:
            self._entries[key] = entry
            self._bytes += size
            self._evict(keep=key)
        return key

    def get(self, key: str) -> Optional[CacheEntry]:
        """The entry (now the most recently used), or None when unknown or evicted."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def set_low_res(self, key: str, low_res: Optional[np.ndarray]) -> None:
        """Keep the last call's low-res logits with the entry (counted in the byte bound)."""
        self._replace(key, "low_res", low_res)

    def set_windows(self, key: str, windows: dict[Any, dict[str, Any]]) -> None:
        """Keep the predictor states of the zoom windows encoded on this image (counted in the byte bound)."""
        self._replace(key, "windows", dict(windows))

    def _replace(self, key: str, name: str, value: Any) -> None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            self._bytes += nbytes(value) - nbytes(getattr(entry, name))
            setattr(entry, name, value)
            self._evict(keep=key)

    def pop(self, key: str) -> bool:
        """Forget one entry; False when it was not there."""
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._bytes -= entry.nbytes
            return entry is not None

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _evict(self, keep: str) -> None:
        """Drop least recently used entries (never ``keep``) until both bounds hold; caller holds the lock."""
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            oldest = next(iter(self._entries))
            if oldest == keep:
                if len(self._entries) == 1:
                    break  # keep alone still too big: only possible through set_low_res / set_windows; it stays usable
                self._entries.move_to_end(keep)
                continue
            self._bytes -= self._entries.pop(oldest).nbytes
            self.evictions += 1

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._entries), "bytes": self._bytes, "max_entries": self.max_entries,
                "max_bytes": self.max_bytes, "hits": self.hits, "misses": self.misses, "evictions": self.evictions}
