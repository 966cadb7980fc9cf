"""One model run at a time, urgent callers first: the embedder's cores go to the urgent lane's few texts between
two runs of a full batch, instead of both running at once on the same cores.

A full enrich batch (512 texts) is embedded as runs of ~32; each run takes the gate. An urgent caller waiting for
the gate goes before the next run of any normal caller, so it waits for at most one run, then has every core to
itself. Before, an urgent batch of 8 ran beside the full batch's run (both sessions' threads on 2 cores) and took
70-160 ms to embed; the lane, draining a backlog of door-urgent tickets 8 at a time, made the last of them wait
~1.1 s (p50) in front of enrich in `calm --tickets 5000 --fast`.
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
