"""Recordings: the decoded event stream as JSONL (trace --record), one event a line, then
the run's line; and reading one back for `tcpclose report`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TextIO

import pandas as pd

from ..errors import BadRecording, open_for_writing
from . import layout
from .decode import EVENT_COLUMNS, REQUIRED_COLUMNS, SNAPSHOT_KINDS, empty_events
from .runinfo import RunInfo


class Recorder:
    """Writes the decoded event stream as JSONL, one event a line, then one `run` line."""

    def __init__(self, path: Path):
        self._file: TextIO = open_for_writing(path, "recording")

    def write(self, events: pd.DataFrame) -> None:
        if len(events):
            self._file.write(events.to_json(orient="records", lines=True, double_precision=15))
            self._file.flush()

    def finish(self, run: RunInfo) -> None:
        self._file.write(json.dumps({"kind": "run", **run.to_dict()}) + "\n")
        self._file.close()


def read_recording(path: Path) -> tuple[pd.DataFrame, RunInfo]:
    """Events and the run line of a recording; BadRecording names the first bad line.
    A recording cut short (no run line) is bounded by the times of its events."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BadRecording(f"cannot read recording {path}: {exc}") from None
    rows, run = [], None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadRecording(f"{path}:{number}: not JSON ({exc.msg}); is this a tcpclose --record file?") from None
        if not isinstance(row, dict) or "kind" not in row:
            raise BadRecording(f"{path}:{number}: not a tcpclose event (no 'kind'); is this a tcpclose --record file?")
        if row["kind"] == "run":
            run = row
            continue
        missing = [c for c in REQUIRED_COLUMNS if c not in row]
        if missing or row["kind"] not in (*layout.KIND_NAMES.values(), *SNAPSHOT_KINDS):
            raise BadRecording(f"{path}:{number}: not a tcpclose event (missing {', '.join(missing) or 'a known kind'})")
        rows.append(row)
    events = pd.DataFrame(rows, columns=EVENT_COLUMNS) if rows else empty_events()
    if run is None:  # the tracer was killed before it could finish the file: bound the run by its events
        if not rows:
            raise BadRecording(f"{path} holds no events and no run: record again with 'tcpclose trace --record'")
        times = events[["opened_at", "event_at"]].astype(float)
        return events, RunInfo(started_at=times.min().min(), ended_at=times.max().max(), cut_short=True)
    return events, RunInfo.from_dict(run)
