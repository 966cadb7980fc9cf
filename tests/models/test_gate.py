"""The embedder's priority gate: one run at a time, an urgent caller before any waiting normal one — with real
threads, and through the real int8 and PyTorch embedders (an urgent encode overtakes a full batch in progress)."""

from __future__ import annotations

import threading
import time

import pytest

from routing_engine.models.gate import PriorityGate

from fixtures import overtakes


def _wait_until(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError("timed out")
        time.sleep(0.001)


def test_an_urgent_caller_goes_before_normal_callers_that_waited_longer():
    gate = PriorityGate()
    order: list[str] = []
    release = threading.Event()

    def first():
        with gate.hold():
            order.append("first")
            release.wait(5)

    def caller(name, urgent):
        with gate.hold(urgent):
            order.append(name)

    t0 = threading.Thread(target=first)
    t0.start()
    _wait_until(lambda: order == ["first"])
    normal = [threading.Thread(target=caller, args=(f"normal{i}", False)) for i in range(3)]
    for t in normal:
        t.start()
    time.sleep(0.05)  # the normal callers are queued on the gate before the urgent one arrives
    urgent = threading.Thread(target=caller, args=("urgent", True))
    urgent.start()
    _wait_until(lambda: gate.urgent_waiting == 1)
    release.set()
    for t in [t0, *normal, urgent]:
        t.join(5)
    assert order[:2] == ["first", "urgent"]
    assert sorted(order[2:]) == ["normal0", "normal1", "normal2"]
    assert gate.urgent_waiting == 0


def test_one_holder_at_a_time_and_an_exception_releases_the_gate():
    gate = PriorityGate()
    inside, most = [0], [0]
    lock = threading.Lock()

    def work(urgent):
        for _ in range(50):
            with gate.hold(urgent):
                with lock:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                time.sleep(0.0002)
                with lock:
                    inside[0] -= 1

    threads = [threading.Thread(target=work, args=(i % 2 == 0,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert most[0] == 1
    with pytest.raises(RuntimeError):
        with gate.hold(True):
            raise RuntimeError("boom")
    done = threading.Event()
    threading.Thread(target=lambda: (gate.hold().__enter__(), done.set())).start()
    assert done.wait(2), "the gate stayed held after an exception"


def test_an_urgent_encode_overtakes_a_full_batch_in_the_torch_embedder(embedder):
    overtakes(embedder, n=192)  # PyTorch fp32: ~100-300 texts/s here
