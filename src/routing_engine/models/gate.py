"""One model run at a time, urgent callers first: the embedder's cores go to the urgent lane's batch between two
runs of a full batch, instead of both running at once on the same cores.

A full enrich batch (up to 512 texts) is embedded as runs of 32; each run takes the gate. An urgent caller waiting
for the gate goes before the next run of any normal caller, so it waits for at most one run, then has every core to
itself. The int8 embedder sends an urgent batch through the gate only from one run's worth of texts up; fewer start
at once beside the run in progress (`OnnxEmbedder.encode_now`). Measured while a full batch embeds back to back
(`bench/lane_embed.py`, 2 cores): 64 urgent texts took 595 ms p50 beside it and 350 ms through the gate, 8 texts
58.5 and 59.6 ms, one text 7.8 and 47.5 ms. The PyTorch embedder has only the gate.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class PriorityGate:
    """A lock with two classes of callers: `hold(urgent=True)` is granted before any waiting `hold()`."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._busy = False
        self._urgent_waiting = 0

    @contextlib.contextmanager
    def hold(self, urgent: bool = False) -> Iterator[None]:
        with self._cv:
            if urgent:
                self._urgent_waiting += 1
                try:
                    while self._busy:
                        self._cv.wait()
                finally:
                    self._urgent_waiting -= 1
            else:
                while self._busy or self._urgent_waiting:
                    self._cv.wait()
            self._busy = True
        try:
            yield
        finally:
            with self._cv:
                self._busy = False
                self._cv.notify_all()

    @property
    def urgent_waiting(self) -> int:
        return self._urgent_waiting


__all__ = ["PriorityGate"]
