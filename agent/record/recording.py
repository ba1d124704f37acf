"""Recordings: the decoded event stream as gzip-compressed JSONL (trace --record), one event a
line, then the run's line; and reading one back for `tcpclose report`.

The compressed stream is flushed (a zlib sync flush) after every batch, so whatever was
written before a kill -9, an OOM kill or a full disk decompresses; the reader takes such a
stream, and a last line cut off mid-write, as the normal end of an interrupted recording.
Plain JSONL (recordings of earlier versions, or one piped through zcat) reads the same."""
from __future__ import annotations

import gzip
import json
import os
import stat
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

import pandas as pd

from ..errors import BadRecording
from ..safefiles import open_stream
from . import layout
from .decode import EVENT_COLUMNS, REQUIRED_COLUMNS, SNAPSHOT_KINDS, concat, empty_events
from .runinfo import RunInfo
from .schema import event_problem, run_problem

COMPRESS_LEVEL = 1  # the fastest: JSONL shrinks about tenfold already, and the tracer writes it while tracing
GZIP_MAGIC = b"\x1f\x8b"
READ_BYTES = 1 << 20
MAX_LINE = 16 << 20  # an event line is under 2 kB, a run line tens of kB: a longer line is not a recording's
ROWS_PER_FRAME = 50_000  # lines parsed into dicts, then into a frame: the dicts never pile up


class Recorder:
    """Writes the decoded event stream as gzip-compressed JSONL, one event a line, then one
    `run` line.

    A disk that fills up (or fails) stops the recording, not the run: what was written
    stays readable (read_recording takes a stream cut off mid-write), and `stopped`
    says why (RunInfo.recording_stopped, in the summary)."""

    def __init__(self, path: Path, force: bool = False):
        self.path = Path(path)
        self._raw: BinaryIO | None = open_stream(path, "recording", force, binary=True)
        self._file: gzip.GzipFile | None = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=COMPRESS_LEVEL,
                                                         mtime=0)
        self.stopped: str | None = None

    def _written(self, text: str) -> None:
        if self._file is None:
            return
        try:
            self._file.write(text.encode("utf-8"))
            self._file.flush()  # a sync flush: readable up to here whatever happens next
        except OSError as exc:
            self.stopped = f"{self.path}: {exc.strerror}"
            self._close()

    def _close(self) -> None:
        for f in (self._file, self._raw):
            try:
                f.close()
            except OSError as exc:
                self.stopped = self.stopped or f"{self.path}: {exc.strerror}"
        self._file = self._raw = None

    def write(self, events: pd.DataFrame) -> None:
        if len(events):
            self._written(events.to_json(orient="records", lines=True, double_precision=15))

    def finish(self, run: RunInfo) -> None:
        self._written(json.dumps({"kind": "run", **run.to_dict()}) + "\n")
        if self._file is not None:
            self._close()


def _chunks(f: BinaryIO) -> Iterator[bytes]:
    """The file's bytes, decompressed where it is gzip; a compressed stream that stops before
    its end (the tracer was killed) gives what it holds."""
    first = f.read(READ_BYTES)
    if not first.startswith(GZIP_MAGIC):
        while first:
            yield first
            first = f.read(READ_BYTES)
        return
    unzip = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    data = first
    while data:
        try:
            out = unzip.decompress(data, READ_BYTES)
            while out:
                yield out
                out = unzip.decompress(unzip.unconsumed_tail, READ_BYTES) if unzip.unconsumed_tail else b""
        except zlib.error as exc:
            raise BadRecording(f"{f.name}: its compressed data is damaged ({exc})") from None
        if unzip.eof:
            return
        data = f.read(READ_BYTES)


def _lines(f: BinaryIO) -> Iterator[tuple[int, bytes, bool]]:
    """(number, line, whole): whole is False for a last line with no newline (cut off mid-write)."""
    number, pending = 0, b""
    for chunk in _chunks(f):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            number += 1
            yield number, line, True
        if len(pending) > MAX_LINE:
            raise BadRecording(f"{f.name}:{number + 1}: a line longer than {MAX_LINE >> 20} MiB; "
                               "is this a tcpclose --record file?")
    if pending:
        yield number + 1, pending, False


@dataclass
class Survey:
    """What a first pass over a recording finds without parsing its events (survey())."""
    run: dict | None = None  # its run line (checked again when the events are read)
    events: int = 0  # event lines
    existing_until: int = 0  # event lines up to the last one of the snapshot at the start (kind "existing")


def survey(path: Path) -> Survey:
    """A recording's run line and how many event lines it has, read without parsing the
    events (the run line comes last: what reads the events needs it first)."""
    found = Survey()
    with _opened(path) as f:
        for _, line, whole in _lines(f):
            if not line.strip():
                continue
            if b'"run"' in line and whole:
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    row = None
                if isinstance(row, dict) and row.get("kind") == "run":
                    found.run = None if run_problem(row) else row  # (a bad one is named by event_frames)
                    continue
            found.events += 1
            if b'"existing"' in line:  # (a name "existing" too: the snapshot then ends later, never sooner)
                found.existing_until = found.events
    return found


def event_frames(path: Path, found: dict) -> Iterator[pd.DataFrame]:
    """A recording's events, checked, in frames of ROWS_PER_FRAME in the order recorded; its
    run line (checked) into found["run"]; BadRecording names the first bad line."""
    with _opened(path) as f:
        for frame in _events(f, str(path), found):
            frame["tw_timer"] = frame["tw_timer"].fillna(0)  # a column older recordings lack: no timer linked
            yield frame


TIMES = ["opened_at", "estab_at", "close_wait_at", "fin_at", "event_at", "tw_start_at"]


def cut_short_run(path: Path, started: float, ended: float, events: int) -> RunInfo:
    """The run of a recording the tracer was killed before it could finish (no run line):
    bounded by the times of its events (`started`, `ended`: their least and greatest)."""
    if not events:
        raise BadRecording(f"{path} holds no events and no run: record again with 'tcpclose trace --record'")
    if pd.isna(started):
        raise BadRecording(f"{path} has no run line and no event with a time: nothing bounds the run")
    return RunInfo(started_at=started, ended_at=ended, cut_short=True)


def read_recording(path: Path) -> tuple[pd.DataFrame, RunInfo]:
    """Events and the run line of a recording, whole; BadRecording names the first bad line.
    A recording cut short (no run line, its last line perhaps cut off mid-write) is bounded
    by the times of its events."""
    found: dict = {}
    frames = list(event_frames(path, found))
    events = concat(frames) if frames else empty_events()
    if found.get("run") is None:  # the tracer was killed before it could finish the file: bound the run by its events
        times = events[TIMES].astype(float)
        return events, cut_short_run(path, times.min().min(), times.max().max(), len(events))
    return events, RunInfo.from_dict(found["run"])


@contextmanager
def _opened(path: Path) -> Iterator[BinaryIO]:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # /dev/zero never ends, a FIFO may never start
            raise BadRecording(f"{path} is not a regular file: give a file 'tcpclose trace --record' wrote")
        with open(path, "rb") as f:
            yield f
    except OSError as exc:
        raise BadRecording(f"cannot read recording {path}: {exc.strerror or exc}") from None


def _events(f: BinaryIO, path: str, found: dict) -> Iterator[pd.DataFrame]:
    """The event lines as frames of ROWS_PER_FRAME, checked line by line; the run line into found["run"]."""
    rows = []
    for number, line, whole in _lines(f):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            if not whole:
                break  # a last line cut off mid-write: the normal end of an interrupted recording
            why = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
            raise BadRecording(f"{path}:{number}: not JSON ({why}); is this a tcpclose --record file?") from None
        if not isinstance(row, dict) or "kind" not in row:
            raise BadRecording(f"{path}:{number}: not a tcpclose event (no 'kind'); is this a tcpclose --record file?")
        if row["kind"] == "run":
            if (why := run_problem(row)):
                raise BadRecording(f"{path}:{number}: not a tcpclose run line ({why})")
            found["run"] = row
            continue
        missing = [c for c in REQUIRED_COLUMNS if c not in row]
        if missing or row["kind"] not in (*layout.KIND_NAMES.values(), *SNAPSHOT_KINDS):
            raise BadRecording(f"{path}:{number}: not a tcpclose event (missing {', '.join(missing) or 'a known kind'})")
        if (why := event_problem(row)):
            raise BadRecording(f"{path}:{number}: not a tcpclose event ({why})")
        rows.append(row)
        if len(rows) == ROWS_PER_FRAME:
            yield pd.DataFrame(rows, columns=EVENT_COLUMNS)
            rows = []
    if rows:
        yield pd.DataFrame(rows, columns=EVENT_COLUMNS)
