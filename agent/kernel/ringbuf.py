"""Reading a BPF ring buffer straight from its memory map, a batch at a time, with numpy.

bcc's ring_buffer_consume() calls back into Python once per record: at full
churn that is most of tcpclose's CPU, and a reader short of CPU lets the ring
fill and drop records.  Here the whole batch between the consumer and the
producer position is viewed as one numpy array instead.

The layout is the kernel's (kernel/bpf/ringbuf.c):
  - mmap offset 0: one page holding consumer_pos (u64), which the reader writes;
  - offset PAGE_SIZE: one page holding producer_pos (u64), then the data area,
    mapped twice in a row so that a record that wraps around is contiguous;
  - each record: a u32 length with BUSY (not committed yet) and DISCARD bits,
    a u32 page offset, then the sample, the whole rounded up to 8 bytes.
Each of tcpclose's ring buffers carries one struct only (struct tcpclose_event
in `events`, struct tcpclose_transition in `transitions`), so every record of a
ring has the same size and a batch is a plain strided array.
"""
from __future__ import annotations

import numpy as np

from ..record import layout

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30


def record_dtype(sample: np.dtype) -> np.dtype:
    """A ring-buffer record holding one `sample`: the 8-byte header, then the sample."""
    record = np.dtype([("len", "<u4"), ("pg_off", "<u4"), ("event", sample)])
    assert record.itemsize % 8 == 0  # records are 8-byte aligned: one fixed stride
    return record


RECORD_DTYPE = record_dtype(layout.EVENT_DTYPE)


class RingReader:
    """consumer: the writable consumer page; producer: producer page + data area mapped twice;
    sample: the one struct this ring carries."""

    def __init__(self, consumer, producer, data_size: int, page_size: int, sample: np.dtype = layout.EVENT_DTYPE):
        assert data_size & (data_size - 1) == 0, "a BPF ring buffer is a power of two"
        self._consumer, self._producer = consumer, producer
        self._mask = data_size - 1
        self._page = page_size
        self._sample = sample
        self._record = record_dtype(sample)

    def read(self, limit: int | None = None) -> np.ndarray:
        """The committed records since the last read (copied; at most `limit`), and give their space back."""
        # The two positions as whole u64s: numpy reads and writes an aligned u64 with one
        # load or store, which x86-64 and arm64 make atomic.  struct.pack_into zeroes its
        # bytes before it packs the value into them: a reservation on another CPU that
        # read consumer_pos in between found the ring full (0 is a whole ring behind the
        # producer once it has gone round) and failed, 50-160 times a minute at full
        # churn.  (Views made per read: a view kept would hold the maps open, and
        # mmap.close() refuses while one exists.)
        consumer_pos = np.frombuffer(self._consumer, np.uint64, 1)
        cons, prod = int(consumer_pos[0]), int(np.frombuffer(self._producer, np.uint64, 1)[0])
        count = (prod - cons) // self._record.itemsize
        if limit is not None:
            count = min(count, limit)
        if count <= 0:
            return np.empty(0, self._sample)
        batch = np.frombuffer(self._producer, self._record, count, self._page + (cons & self._mask))
        lengths = batch["len"]
        busy = np.flatnonzero(lengths & BUSY_BIT)
        if len(busy):  # reserved but not submitted yet: stop before it
            batch, lengths = batch[: busy[0]], lengths[: busy[0]]
        sizes = lengths & ~np.uint32(DISCARD_BIT)
        if len(sizes) and not (sizes == self._sample.itemsize).all():
            raise ValueError(f"ring buffer record of {int(sizes.max())} bytes, not the {self._sample.itemsize} "
                             "of the struct this ring carries")
        # a boolean index copies: the records are out of the ring before its space is given back
        events = batch["event"][(lengths & DISCARD_BIT) == 0]
        consumer_pos[0] = cons + len(batch) * self._record.itemsize
        return events
