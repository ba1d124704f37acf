"""The BPF records waiting for their step (run.kept), oldest first: in memory, and on disk past
IN_MEMORY_BYTES.

At a churn the steps cannot keep up with (tens of thousands of connections a second on two
cores: making a row costs tens of microseconds of Python), records arrive faster than they
are made into rows.  They are not dropped: they wait here, and the steps catch up later, or
the end of the run does.  Past IN_MEMORY_BYTES they wait in an unnamed file ($TMPDIR, else
/var/tmp), so the tracer's memory stays bounded however far behind it is.

With -o (`out`), that file is named in the run's directory instead (rundir.waiting_name: one
name per file, never written again once read to its end and removed), and persist() puts
what waits in memory there too, so that a run killed while behind leaves its records for
`tcpclose report DIR` to make into rows (run.replay.waiting_rows).
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

from ..errors import CannotWrite
from ..record import layout, rundir
from ..safefiles import OutputDir, scratch_directory

IN_MEMORY_BYTES = 16 << 20  # about 100,000 records: two steps (run.kept.STEP_RECORDS)


class Backlog:
    def __init__(self, dtype: np.dtype = layout.EVENT_DTYPE, out: OutputDir | None = None):
        self._dtype = dtype
        self._memory: list[np.ndarray] = []
        self._memory_bytes = 0
        self._file = None
        self._written = self._read = 0  # records in the file, and read from it
        self.spilled = 0  # records that waited on disk, over the run
        self._out, self._files = out, 0  # (with out: the file's name is waiting_name(files))

    def __len__(self) -> int:
        return sum(len(p) for p in self._memory) + self._written - self._read

    def add(self, raw: np.ndarray) -> None:
        if not len(raw):
            return
        if self._file is None and self._memory_bytes + raw.nbytes <= IN_MEMORY_BYTES:
            self._memory.append(raw)
            self._memory_bytes += raw.nbytes
            return
        if self._file is None:  # from here on, until it is read to its end, arrivals go after it
            self._open()
        self._write(raw)

    def _open(self) -> None:
        if self._out is not None:  # named, and what waits in memory goes first: all that waits is in it
            self._file = self._out.appending(rundir.waiting_name(self._files))
            memory, self._memory, self._memory_bytes = self._memory, [], 0
            for part in memory:
                self._write(part)
            return
        directory = scratch_directory()
        try:
            self._file = tempfile.TemporaryFile(prefix="tcpclose-backlog-", dir=directory)
        except OSError as exc:
            raise CannotWrite(f"cannot make the backlog file in {directory or tempfile.gettempdir()}: "
                              f"{exc.strerror}; set TMPDIR to a writable directory on disk") from None

    def _write(self, raw: np.ndarray) -> None:
        self._file.seek(0, os.SEEK_END)
        self._file.write(np.ascontiguousarray(raw, self._dtype).view(np.uint8))
        self._written += len(raw)
        self.spilled += len(raw)

    def persist(self) -> tuple[str, int, int] | None:
        """With out: every record waiting put in its file, written through to the kernel (a
        SIGKILL then loses none of them); returns the file's name, the first record in it
        still waiting (those before were taken) and how many wait, or None where none does."""
        if self._out is None or not len(self):
            return None
        if self._file is None:
            self._open()
        self._file.flush()
        return rundir.waiting_name(self._files), self._read, len(self)

    def take(self, limit: int) -> np.ndarray:
        """The oldest records, at most `limit` of them (memory first: it is older than the file)."""
        if self._memory:
            taken, count = 0, 0  # (only the parts the limit reaches are joined: memory holds 16 MiB)
            while taken < len(self._memory) and count < limit:
                count += len(self._memory[taken])
                taken += 1
            raw = np.concatenate(self._memory[:taken]) if taken > 1 else self._memory[0]
            out, rest = raw[:limit], raw[limit:]
            self._memory = ([rest] if len(rest) else []) + self._memory[taken:]
            self._memory_bytes = sum(p.nbytes for p in self._memory)
            return out
        if self._file is None:
            return np.empty(0, self._dtype)
        n = min(limit, self._written - self._read)
        self._file.seek(self._read * self._dtype.itemsize)
        out = np.frombuffer(self._file.read(n * self._dtype.itemsize), self._dtype)
        self._read += n
        if self._read == self._written:  # read to its end: back to memory
            self.close()
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file, self._written, self._read = None, 0, 0
            if self._out is not None:  # (its records are rows now) the next file has a name of its own
                self._out.remove([rundir.waiting_name(self._files)])
                self._files += 1
