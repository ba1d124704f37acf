"""The ring-buffer reader on memory laid out as the kernel lays it out (no BPF needed)."""
import mmap
import os
import struct
import time

import numpy as np
import pytest

from agent.kernel import ringbuf
from agent.record import layout
from support.streams import raw

PAGE = 4096
DATA = 4096  # a small ring: 24 records of 168 bytes (8-byte header)
REC = ringbuf.RECORD_DTYPE.itemsize


class FakeRing:
    """A consumer page, and a producer page followed by the data area mapped twice."""

    def __init__(self):
        self.consumer = bytearray(PAGE)
        self.data = bytearray(DATA)
        self.prod = 0

    def producer(self) -> bytearray:
        return bytearray(struct.pack("<Q", self.prod).ljust(PAGE, b"\0")) + self.data + self.data

    def submit(self, sample: bytes, busy=False, discard=False):
        length = len(sample) | (ringbuf.BUSY_BIT if busy else 0) | (ringbuf.DISCARD_BIT if discard else 0)
        record = struct.pack("<II", length, 0) + sample
        for i, byte in enumerate(record):
            self.data[(self.prod + i) % DATA] = byte
        self.prod += len(record)

    def reader(self):
        return ringbuf.RingReader(self.consumer, self.producer(), DATA, PAGE)

    @property
    def cons(self):
        return struct.unpack_from("<Q", self.consumer)[0]


def test_reads_a_batch_and_gives_the_space_back():
    ring = FakeRing()
    for pid in (1, 2, 3):
        ring.submit(raw(pid=pid))
    events = ring.reader().read()
    assert list(events["pid"]) == [1, 2, 3]
    assert ring.cons == 3 * REC
    assert len(ring.reader().read()) == 0


def test_a_record_that_wraps_around_the_end_is_read_whole():
    ring = FakeRing()
    start = DATA - REC // 2  # the next record straddles the end of the data area
    ring.prod = start
    ring.consumer[:8] = struct.pack("<Q", start)
    ring.submit(raw(pid=77, comm="wrapped"))
    events = ring.reader().read()
    assert list(events["pid"]) == [77] and events["comm"][0] == b"wrapped"


def test_stops_at_a_record_not_yet_submitted():
    ring = FakeRing()
    ring.submit(raw(pid=1))
    ring.submit(raw(pid=2), busy=True)
    ring.submit(raw(pid=3))
    assert list(ring.reader().read()["pid"]) == [1]
    assert ring.cons == REC


def test_skips_discarded_records_but_consumes_them():
    ring = FakeRing()
    ring.submit(raw(pid=1), discard=True)
    ring.submit(raw(pid=2))
    assert list(ring.reader().read()["pid"]) == [2]
    assert ring.cons == 2 * REC


def test_a_record_of_another_size_is_an_error():
    ring = FakeRing()
    ring.submit(raw() + bytes(8))  # a 168-byte sample: not ours
    with pytest.raises(ValueError, match="168 bytes, not the 160"):
        ring.reader().read()


def test_a_ring_of_transitions_is_read_with_its_own_stride():
    ring = FakeRing()
    for pid in (7, 8, 9):
        sample = np.zeros(1, layout.TRANSITION_DTYPE)
        sample["pid"], sample["newstate"] = pid, layout.DEFINES["TCP_CLOSE"]
        ring.submit(sample.tobytes())
    reader = ringbuf.RingReader(ring.consumer, ring.producer(), DATA, PAGE, layout.TRANSITION_DTYPE)
    got = reader.read()
    assert list(got["pid"]) == [7, 8, 9] and set(got["newstate"]) == {layout.DEFINES["TCP_CLOSE"]}
    assert ring.cons == 3 * (8 + layout.TRANSITION_DTYPE.itemsize)


def test_a_limited_read_takes_the_oldest_and_leaves_the_rest_for_the_next():
    ring = FakeRing()
    for pid in (1, 2, 3):
        ring.submit(raw(pid=pid))
    reader = ring.reader()
    assert list(reader.read(limit=2)["pid"]) == [1, 2]
    assert ring.cons == 2 * REC
    assert list(ring.reader().read(limit=2)["pid"]) == [3]


def test_records_read_are_out_of_the_ring_before_its_space_is_given_back():
    ring = FakeRing()
    for pid in (5, 6):
        ring.submit(raw(pid=pid))
    producer = ring.producer()
    events = ringbuf.RingReader(ring.consumer, producer, DATA, PAGE).read()
    producer[PAGE:] = bytes(len(producer) - PAGE)  # the kernel writes new records over the space given back
    assert list(events["pid"]) == [5, 6]


@pytest.mark.slow  # millions of reads from a second process
def test_the_kernel_never_reads_a_consumer_position_the_reader_did_not_write():
    """A reservation on another CPU reads consumer_pos while the reader stores it.  It must
    see the old value or the new one: struct.pack_into zeroes the eight bytes before it
    packs them, and a reservation that read that 0 found the ring full (the drops at full
    churn until the reader stored the position whole).  Here a child process reads the
    ring in a loop while this one watches the position from another CPU."""
    ring = FakeRing()
    ring.consumer = mmap.mmap(-1, PAGE)  # shared with the child
    start = 1 << 36  # far past the first lap, as on a host that has traced for a while
    ring.prod = start
    for pid in range(1, 25):
        ring.submit(raw(pid=pid))
    position = np.frombuffer(ring.consumer, np.uint64, 1)
    position[0] = start
    written = {start + k * REC for k in range(25)}
    child = os.fork()
    if child == 0:
        status = 1
        try:
            reader = ring.reader()
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                if not len(reader.read(limit=1)):
                    position[0] = start  # read to the end: round again
            status = 0
        finally:
            os._exit(status)
    seen = set()
    while True:
        for _ in range(10_000):
            seen.add(int(position[0]))
        done, status = os.waitpid(child, os.WNOHANG)
        if done:
            break
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(seen & written) > 10  # the child did read, record by record
    assert seen <= written, f"positions never written were read: {sorted(seen - written)[:5]}"
