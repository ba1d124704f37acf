"""Recordings: the decoded event stream as JSONL (trace --record), one event a line, then
the run's line; and reading one back for `tcpclose report`."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import TextIO

import pandas as pd

from ..errors import BadRecording
from ..safefiles import open_stream
from . import layout
from .decode import EVENT_COLUMNS, REQUIRED_COLUMNS, SNAPSHOT_KINDS, empty_events
from .runinfo import RunInfo
from .schema import event_problem, run_problem


class Recorder:
    """Writes the decoded event stream as JSONL, one event a line, then one `run` line.

    A disk that fills up (or fails) stops the recording, not the run: what was written
    stays readable (read_recording takes a last line cut off mid-write), and `stopped`
    says why (RunInfo.recording_stopped, in the summary)."""

    def __init__(self, path: Path, force: bool = False):
        self.path = Path(path)
        self._file: TextIO | None = open_stream(path, "recording", force)
        self.stopped: str | None = None

    def _written(self, text: str) -> None:
        if self._file is None:
            return
        try:
            self._file.write(text)
            self._file.flush()
        except OSError as exc:
            self.stopped = f"{self.path}: {exc.strerror}"
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    def write(self, events: pd.DataFrame) -> None:
        if len(events):
            self._written(events.to_json(orient="records", lines=True, double_precision=15))

    def finish(self, run: RunInfo) -> None:
        self._written(json.dumps({"kind": "run", **run.to_dict()}) + "\n")
        if self._file is not None:
            self._file.close()


def read_recording(path: Path) -> tuple[pd.DataFrame, RunInfo]:
    """Events and the run line of a recording; BadRecording names the first bad line.
    A recording cut short (no run line, its last line perhaps cut off mid-write) is bounded
    by the times of its events."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # /dev/zero never ends, a FIFO may never start
            raise BadRecording(f"{path} is not a regular file: give a file 'tcpclose trace --record' wrote")
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BadRecording(f"cannot read recording {path}: {exc}") from None
    lines = text.splitlines()
    rows, run = [], None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) and not text.endswith("\n"):
                break  # a last line cut off mid-write: the normal end of an interrupted recording
            raise BadRecording(f"{path}:{number}: not JSON ({exc.msg}); is this a tcpclose --record file?") from None
        if not isinstance(row, dict) or "kind" not in row:
            raise BadRecording(f"{path}:{number}: not a tcpclose event (no 'kind'); is this a tcpclose --record file?")
        if row["kind"] == "run":
            if (why := run_problem(row)):
                raise BadRecording(f"{path}:{number}: not a tcpclose run line ({why})")
            run = row
            continue
        missing = [c for c in REQUIRED_COLUMNS if c not in row]
        if missing or row["kind"] not in (*layout.KIND_NAMES.values(), *SNAPSHOT_KINDS):
            raise BadRecording(f"{path}:{number}: not a tcpclose event (missing {', '.join(missing) or 'a known kind'})")
        if (why := event_problem(row)):
            raise BadRecording(f"{path}:{number}: not a tcpclose event ({why})")
        rows.append(row)
    events = pd.DataFrame(rows, columns=EVENT_COLUMNS) if rows else empty_events()
    events["tw_timer"] = events["tw_timer"].fillna(0)  # a column older recordings lack: no timer linked
    if run is None:  # the tracer was killed before it could finish the file: bound the run by its events
        if not rows:
            raise BadRecording(f"{path} holds no events and no run: record again with 'tcpclose trace --record'")
        times = events[["opened_at", "estab_at", "close_wait_at", "fin_at", "event_at", "tw_start_at"]].astype(float)
        started, ended = times.min().min(), times.max().max()
        if pd.isna(started):
            raise BadRecording(f"{path} has no run line and no event with a time: nothing bounds the run")
        return events, RunInfo(started_at=started, ended_at=ended, cut_short=True)
    return events, RunInfo.from_dict(run)
