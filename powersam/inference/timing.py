"""Per-stage wall-clock timings of one inference call (``Results.speed``)."""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator, Optional


class StageTimer:
    """Accumulates milliseconds per named stage, in the order the stages first ran.

    ``sync`` is called before each clock read when given (``torch.cuda.synchronize`` for a GPU backend), so a stage's
    time includes the asynchronous work it launched rather than leaking into the next stage.
    """

    def __init__(self, sync: Optional[Callable[[], None]] = None) -> None:
        self.sync = sync
        self.ms: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if self.sync is not None:
            self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync is not None:
                self.sync()
            self.ms[stage] = self.ms.get(stage, 0.0) + (time.perf_counter() - start) * 1e3


def null_timer() -> StageTimer:
    """A timer whose readings nobody keeps (for backend calls made outside a timed pipeline)."""
    return StageTimer()
