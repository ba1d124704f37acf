"""Raw BPF records kept on disk while tracing, so that the tracer's memory stays flat.

A busy host hands over tens of thousands of socket lives a second; kept in
memory until the end of the run, their records (one struct tcpclose_event,
160 bytes, each) grow the tracer by gigabytes every ten minutes at full churn.
The spool appends each batch to an unnamed temporary file instead, and hands
it all back, in one array, when the run is analysed.
"""
from __future__ import annotations

import os
import tempfile
from typing import Callable

import numpy as np
import pandas as pd

from ..errors import CannotWrite

from ..safefiles import scratch_directory


class Spool:
    """Batches of raw records of one numpy dtype, appended to a temporary file.

    The file has no name (tempfile.TemporaryFile unlinks it at once), so it goes
    with the process however the process ends."""

    def __init__(self, dtype: np.dtype, directory: str | None = None):
        if directory is None:
            directory = scratch_directory()
        try:
            self._file = tempfile.TemporaryFile(prefix="tcpclose-spool-", dir=directory)
        except OSError as exc:
            raise CannotWrite(f"cannot make the spool file in {directory or tempfile.gettempdir()}: "
                              f"{exc.strerror}; set TMPDIR to a writable directory on disk") from None
        self.dtype = dtype
        self.count = 0

    def append(self, raw: np.ndarray) -> range:
        """Write a batch; return the positions it took (what read()[span] gives back)."""
        # the array's own bytes, not a copy (tobytes() made one): at full churn the tracer
        # spools tens of MB a second, and copying them was a visible part of its CPU
        self._file.write(np.ascontiguousarray(raw, self.dtype).view(np.uint8))
        span = range(self.count, self.count + len(raw))
        self.count += len(raw)
        return span

    def read(self) -> np.ndarray:
        """Every record appended so far, in order."""
        self._file.flush()
        self._file.seek(0)
        data = self._file.read(self.count * self.dtype.itemsize)
        self._file.seek(0, os.SEEK_END)
        return np.frombuffer(data, self.dtype)

    def batches(self, size: int):
        """The records in order, `size` at a time: all of them without holding them all."""
        self._file.flush()
        for start in range(0, self.count, size):
            self._file.seek(start * self.dtype.itemsize)
            n = min(size, self.count - start)
            yield np.frombuffer(self._file.read(n * self.dtype.itemsize), self.dtype)
        self._file.seek(0, os.SEEK_END)

    def close(self) -> None:
        self._file.close()


def in_order(parts: list[range | pd.DataFrame], spooled: np.ndarray,
             decode: Callable[[np.ndarray], pd.DataFrame]) -> list[pd.DataFrame]:
    """The frames of a run in arrival order: spans of the spool (decoded, consecutive
    spans together, as one batch) between frames that were kept as they are."""
    frames, first, stop = [], None, None
    for part in [*parts, None]:
        if isinstance(part, range):
            if first is not None and part.start != stop:
                raise ValueError(f"spool spans out of order: {part} after ..{stop}")
            first = part.start if first is None else first
            stop = part.stop
            continue
        if first is not None:
            frames.append(decode(spooled[first:stop]))
            first = None
        if part is not None:
            frames.append(part)
    return frames
