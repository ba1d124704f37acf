"""What a run keeps until its end: what arrived since the last step, the lives the stream
holds (analysis.stream), the connection rows made so far, on disk (record.rows), and the
figures made from them as they came (analysis.tally), so that the tracer's memory stays flat
however long it runs, and its end makes the tables from the figures without reading the rows
back."""
from __future__ import annotations

import tempfile
import time
from typing import BinaryIO, Callable, Iterator

import numpy as np
import pandas as pd

from ..analysis.stream import GRACE_S, RECORDS_GRACE_S, Stream
from ..analysis.tally import Tally
from ..errors import CannotWrite
from ..record import decode
from ..record import rows as rowfile
from ..kernel import procfs
from ..record.runinfo import RunInfo
from ..record import rundir
from ..record.runrows import RunRows
from ..record.formats import FORMATS
from ..safefiles import OutputDir, scratch_directory
from . import memory
from .backlog import Backlog
from .writer_thread import WriterThread

STEP_EVERY_S = 1.0  # what arrived is decoded and made into connection rows this often (analysis.stream)
STEP_RECORDS = 50_000  # at most this many records a step (a second or two): the rest wait in the backlog
# Making a row costs 10 to 20 us of Python (decoding, the joins, writing it; docs/overhead.md):
# at full churn most of a core.  While tracing, the steps take at most STEP_SHARE of a core on a busy host,
# about 3,000 connections/s here; what arrives faster waits in the backlog for a quieter
# moment, or the end.  Where the CPUs were idle since the last step, the steps take more
# (IDLE_SHARES: half a core where half a core was idle, 0.9 where a whole one was): that CPU
# would be idle otherwise, and a run that keeps up holds only what is alive and ends in
# seconds (6,000 connections/s here need about 0.6 of a core).  The workload wanting it back
# shows as less idle CPU at the next step.
STEP_SHARE = 0.1
IDLE_SHARES = ((1.0, 0.9), (0.5, 0.5))  # (idle cores since the last step, the share the steps may take)


class Kept:
    def __init__(self, directory: str | None = None, file: BinaryIO | None = None, also=None,
                 waiting: OutputDir | None = None):
        """file: where to keep the rows (open for reading and writing: trace -o's
        connections.arrow); None: a file of our own in `directory` (None: the scratch
        directory), with no name, so that it goes with the process however that ends.
        also: a writer of the rows' file of -o (record.formats: connections.csv or .parquet), to
        append them to as they are made.  waiting: the records waiting for a step are kept
        there, for a run killed while behind (run.backlog; note())."""
        if file is None:
            directory = directory or scratch_directory()
            try:
                file = tempfile.TemporaryFile(prefix="tcpclose-rows-", dir=directory)
            except OSError as exc:
                raise CannotWrite(f"cannot make the file of connection rows in {directory or tempfile.gettempdir()}: "
                                  f"{exc.strerror}; set TMPDIR to a writable directory on disk") from None
        self._file = file
        self._writer = rowfile.RowsWriter(self._file)
        self._also = also
        self._written_apart: WriterThread | None = None  # (finish(): the rows' files written on a thread)
        self.files: tuple[str, ...] = ()  # those of -o the rows are written into (into())
        self._backlog = Backlog(out=waiting)  # the BPF records not made into rows yet
        self._frames: list[pd.DataFrame] = []  # and sock_diag's TIME_WAIT ends
        self._stream: Stream | None = None
        self._decoder: Callable[[np.ndarray], pd.DataFrame] | None = None
        self.stepped_at, self._step_s = time.monotonic(), 0.0
        self._idle_at = (self.stepped_at, procfs.idle_cpu_seconds())  # (step_due)
        self._pending: rundir.Pending | None = None  # (note())
        self.tally: Tally | None = None  # (start())
        self._meanwhile: Callable[[], object] = lambda: None  # (start())
        self._reading: Callable[[], dict] = dict  # (start())

    @classmethod
    def into(cls, out: OutputDir, fmt: str, waiting: bool = False) -> "Kept":
        """Rows kept in -o's directory as they are made: connections.arrow, and the file of
        --format `fmt` (record.formats); waiting: the records waiting for a step too."""
        rows_file = FORMATS[fmt]
        kept = cls(file=out.appending(rundir.ROWS), also=rows_file.Writer(out.appending(rows_file.NAME)),
                   waiting=out if waiting else None)
        if waiting:  # (what a run killed here before left waiting is not this run's)
            out.remove([rundir.WAITING, *(n for n in out.names() if n.startswith(rundir.WAITING_PREFIX))])
        kept.files = (rundir.ROWS, rows_file.NAME)
        return kept

    def step_due(self) -> bool:
        """Is it time for a step: STEP_EVERY_S since the last, or longer after a long one, so
        that the steps take their share of a core (STEP_SHARE; IDLE_SHARES while CPUs are idle)?"""
        now = time.monotonic()
        since = now - self.stepped_at
        if since < STEP_EVERY_S:
            return False
        if since >= self._step_s / STEP_SHARE:
            return True
        late = [cores for cores, share in IDLE_SHARES if since >= self._step_s / share]  # (shares it would keep to)
        return bool(late) and self._idle_cores(now) >= min(late)

    def _idle_cores(self, now: float) -> float:
        """How many CPUs were idle, on average, since the last step ended (0: not known)."""
        idle, (then, before) = procfs.idle_cpu_seconds(), self._idle_at
        if idle is None or before is None or now <= then:
            return 0.0
        return (idle - before) / (now - then)

    def _stepped(self, started: float, note: bool = False) -> None:
        """A step, or a note, that began at `started` ended now.  A note's time is added to the
        last step's, so that steps and notes keep to their share together, but it does not
        restart the next step's clock: notes every second (--interval 1) that took more than a
        poll's tenth of a second each put every step off until the end, once (a slow host)."""
        memory.return_freed()  # after every step: what it freed, handed back before the next (docs/overhead.md)
        if note:
            self._step_s += time.monotonic() - started
            return
        self.stepped_at = time.monotonic()
        self._step_s = self.stepped_at - started
        self._idle_at = (self.stepped_at, procfs.idle_cpu_seconds())

    def start(self, stream: Stream, decoder: Callable[[np.ndarray], pd.DataFrame], tally: Tally,
              meanwhile: Callable[[], object] | None = None, reading: Callable[[], dict] | None = None) -> None:
        """Make rows from here on with `stream`, and add them to `tally`; `decoder` decodes the
        BPF records (Tracer._decoded), and `reading` says what decoding them needs, for the
        records waiting that a note leaves (rundir.write_waiting).  meanwhile: called between
        the parts of a step or a note while tracing (Tracer._take), so that what arrives during
        the seconds a busy host's note or step can take waits in the backlog (on disk past its
        16 MiB), not in the drainer's memory: 160 bytes a record, 25 MiB a second at full churn."""
        self._stream, self._decoder, self.tally = stream, decoder, tally
        self._meanwhile, self._reading = meanwhile or self._meanwhile, reading or self._reading

    @property
    def rows(self) -> int:
        """The rows the end of the run has still to make: of the lives held, and of the records
        waiting (those made are not read again: the figures were made as they came)."""
        return (self._stream.held if self._stream else 0) + len(self._backlog)

    @property
    def behind(self) -> int:
        """Records waiting for a step."""
        return len(self._backlog)

    @property
    def spilled(self) -> int:
        """Records that waited on disk, over the run (run.backlog)."""
        return self._backlog.spilled

    def arrive(self, part: np.ndarray | pd.DataFrame) -> None:
        """BPF records (raw) or decoded events (sock_diag's), until the next step."""
        if isinstance(part, np.ndarray):
            self._backlog.add(part)
        elif len(part):
            self._frames.append(part)

    def step(self) -> None:
        """The rows final now, made from what arrived (the oldest STEP_RECORDS), and written.
        Behind, the step's clock is its records' own: the lives' grace and the TIME_WAITs' ends
        are timed as they happened, not by how late they are made into rows; and every record
        before the step's last is in hand, so the grace is the stream's short one (unless
        sock_diag's sightings came, timed when they were seen)."""
        started = time.monotonic()
        sightings = bool(self._frames)
        frame = self._take_arrived()
        own_clock = len(self._backlog) > 0 and len(frame) > 0  # (behind)
        now = float(np.nanmax(frame["event_at"].astype(float))) if own_clock else time.time()
        grace_s = RECORDS_GRACE_S if own_clock and not sightings else GRACE_S
        parts = self._stream.step_parts(frame, now, grace_s)
        del frame  # (the stream lets the decoded batch go once it holds what it brought)
        for rows in parts:  # each written before the next is made
            self.add(rows)
            self._meanwhile()
        self._stepped(started)

    def finish(self, ends: list[pd.DataFrame], ended_at: float, followed: pd.DataFrame | None = None,
               made: Callable[[int, int], None] | None = None) -> int:
        """The rest of the rows: the records still waiting, a step at a time (after each,
        made(done, total) of them), then with what the end of the run read (`ends`: decoded;
        `followed`: the timewait sockets the BPF side still followed, see
        Stream.finish_parts); returns how many were made before what they waited for came
        (Stream.settled_early)."""
        self._meanwhile = lambda: None  # (tracing is over: nothing arrives)
        total = len(self._backlog)
        self._written_apart = WriterThread(self._write)
        try:
            while len(self._backlog):
                self.step()
                if made:
                    made(total - len(self._backlog), total)
            self._frames += ends
            for rows in self._stream.finish_parts(self._take_arrived(), ended_at, followed):
                self.add(rows)
        finally:
            written, self._written_apart = self._written_apart, None
            written.close()
        self._backlog.close()
        if self._pending is not None:
            self._pending.close()
        self._close_also()
        return self._stream.settled_early

    def _close_also(self) -> None:
        if self._also is not None:
            self._also.close()
            self._also.file.close()

    def note(self, out: OutputDir, run: RunInfo, tables: Callable[[OutputDir, Tally, RunInfo], None] | None = None) -> bool:
        """The rows of the lives held, as if the run ended now (run.ended_at), and `run`, into
        `out`: with the rows made, what a run killed now leaves (record.rundir); and `tables`,
        the run's tables so far, made from the figures of its rows final by now.  False: they
        could not be written (a full disk).  Its time counts as a step's (STEP_SHARE)."""
        started, waited = time.monotonic(), len(self._backlog)  # (what arrives while it writes is after `run`)
        try:
            if self._pending is None:
                self._pending = rundir.Pending(out)
            self._pending.write(lambda everything: self._between(self._stream.provisional(run.ended_at, everything)),
                                self._stream.held)
            run.lives_pending = self._stream.held + len(self._backlog)  # (not in the tables: not final yet)
            waiting = self._backlog.persist() if waited else None
            if waiting is None:
                out.remove([rundir.WAITING])
            else:
                rundir.write_waiting(out, (*waiting[:2], waited), self._writer.rows, self._reading())
            out.write_text(rundir.RUN, run.to_json())
            if tables is not None:
                tables(out, self.tally, run)
        except CannotWrite as exc:
            if getattr(exc, "arriving", False):
                raise
            return False
        finally:
            self._stepped(started, note=True)
        return True

    def _between(self, parts: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        """`parts`, with meanwhile() called after each has been written: a CannotWrite of its
        own (the backlog's file) goes on up as it would from a drain, not taken for the note's."""
        for part in parts:
            yield part
            try:
                self._meanwhile()
            except CannotWrite as exc:
                exc.arriving = True
                raise

    def _take_arrived(self) -> pd.DataFrame:
        """The oldest records waiting, decoded at once, and the decoded events that arrived."""
        raw = self._backlog.take(STEP_RECORDS)
        frames, self._frames = self._frames, []
        return decode.concat([self._decoder(raw) if len(raw) else decode.empty_events(), *frames])

    def add(self, rows: pd.DataFrame) -> None:
        """Rows made final, written and counted in the figures."""
        if not len(rows):  # (most steps of a quiet host)
            return
        if self.tally is not None:
            self.tally.add(rows)
        (self._written_apart or self._write)(rowfile.table(rows))

    def _write(self, table) -> None:
        """Rows in record.rows' schema, appended to the rows' file and to -o's connections file."""
        self._writer.append_table(table)
        if self._also is not None:
            self._also.append(table)

    def rows_of_run(self, run: RunInfo) -> RunRows:
        """The run's rows, once finished: the figures made as they came (made now, a batch at
        a time, where no tally was fed: a recording's, whose start was not known before its
        end), and the file of the rows to read them again from (see RunRows)."""
        batches = self.batches()
        return RunRows(self.tally, batches, self._file.close) if self.tally is not None else RunRows.tallied(batches, run)

    def batches(self) -> Callable[[], Iterator[pd.DataFrame]]:
        """No more rows: the rows made, a batch at a time, read again from their file each time called."""
        self._writer.close()
        file = self._file

        def batches():
            file.seek(0)
            yield from rowfile.batches(file)
        return batches

    def rotate(self, out: OutputDir, fmt: str, tally: Tally, run: RunInfo) -> RunRows:
        """The rows made final since the last rotation (`run`: that period), and from now on,
        rows kept in `out` (as into()) and added to `tally`.  The lives held and the records
        waiting stay: their rows go to the period in which they become final."""
        rows = self.rows_of_run(run)
        if self._pending is not None:  # (the caller removes its file: those rows are not this period's)
            self._pending.close()
            self._pending = None
        self._close_also()
        new = Kept.into(out, fmt)
        self._file, self._writer, self._also, self.files = new._file, new._writer, new._also, new.files
        self.tally = tally
        return rows
