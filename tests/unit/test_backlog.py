"""What waits for a step when the steps fall behind (run.backlog), and the thread that keeps
the ring buffer from filling meanwhile (run.drainer)."""
import threading
import time

import numpy as np

from agent.record import layout
from agent.run import backlog as backlogs
from agent.run.backlog import Backlog
from agent.run.drainer import Drainer


def records(first: int, n: int) -> np.ndarray:
    out = np.zeros(n, layout.EVENT_DTYPE)
    out["pid"] = np.arange(first, first + n)
    return out


def test_records_wait_in_memory_then_on_disk_and_come_back_oldest_first(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(backlogs, "IN_MEMORY_BYTES", 10 * layout.EVENT_DTYPE.itemsize)
    waiting = Backlog()
    for first in range(0, 40, 8):  # 8 at a time: the first fits in memory, the rest go to disk
        waiting.add(records(first, 8))
    assert len(waiting) == 40 and waiting.spilled == 32
    taken = [waiting.take(7)["pid"].tolist() for _ in range(3)]
    waiting.add(records(40, 5))  # arrived while the file is read: after it
    taken += [waiting.take(100)["pid"].tolist() for _ in range(3)]
    assert sum(taken, []) == list(range(45))
    assert len(waiting) == 0 and not list(tmp_path.iterdir())  # the file was unnamed, and is closed


def test_takes_across_the_parts_held_in_memory_come_oldest_first():
    waiting = Backlog()
    sizes = [3, 1, 7, 2, 9, 4]
    first = 0
    for n in sizes:
        waiting.add(records(first, n))
        first += n
    taken = []
    for limit in (2, 5, 1, 9, 100):  # within a part, across several, past the end
        part = waiting.take(limit)["pid"].tolist()
        assert len(part) == min(limit, first - len(sum(taken, [])))
        taken.append(part)
    assert sum(taken, []) == list(range(first)) and len(waiting) == 0


def test_the_drainer_reads_on_its_own_thread_until_it_stops():
    reads, lock = [], threading.Lock()

    def poll():
        with lock:
            reads.append(threading.get_native_id())
            return records(len(reads), 1)

    drainer = Drainer(poll, every=0.01)
    try:
        time.sleep(0.2)  # the main thread busy elsewhere: the ring is read anyway
        assert len({tid for tid in reads if tid != threading.get_native_id()}) == 1
        taken = np.concatenate(drainer.take())["pid"].tolist()
        assert taken == sorted(taken) and len(taken) >= 5
    finally:
        drainer.stop()
    count = len(reads)
    time.sleep(0.05)
    assert len(reads) == count  # stopped: no read after stop()


def test_the_records_a_drain_takes_are_kept_and_returned_a_part_at_a_time_never_joined():
    """After a long step, the drainer holds seconds of full churn in parts: each is learnt and
    kept alone, and drain() hands the parts on, so that no one numpy operation over all of
    them holds Python's GIL (and the drainer) for long (Tracer._take)."""
    from agent.run.drainer import joined
    from agent.run.tracer import Tracer

    parts = [records(0, 3), records(3, 5), records(8, 2)]
    parts[1]["kind"] = layout.DEFINES["EV_LIFE"]
    learnt, arrived = [], []
    tracer = Tracer.__new__(Tracer)  # (no BPF: the parts of one take, and what each went to)
    tracer._drainer = type("D", (), {"take": lambda self: list(parts)})()
    tracer.owners = type("O", (), {"learn": lambda self, raw: learnt.append(raw)})()
    tracer._recorder, tracer._kept = None, type("K", (), {"arrive": lambda self, raw: arrived.append(raw)})()
    tracer.tally = {"lives": 0, "timewaits": 0}
    taken = tracer._take()
    assert [len(p) for p in learnt] == [len(p) for p in arrived] == [3, 5, 2]
    assert all(a is b for a, b in zip(taken, parts)) and len(taken) == 3  # the same arrays: no copy
    assert tracer.tally["lives"] == 5
    assert joined(taken)["pid"].tolist() == list(range(10)) and len(joined([])) == 0
