"""A recording (trace --record) made into connection rows as the trace made them, for
`tcpclose report` and `doctor`: its events go through analysis.stream a frame at a time, in
the order recorded, and the rows are kept on disk (run.kept), so that what is held is what
was alive at that point of the run, however long the recording.  The figures are made from
the rows a batch at a time once they are all made (analysis.tally)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..analysis.stream import END_OF_RUN, GRACE_S, RECORDS_GRACE_S, Stream
from ..record import recording
from ..record.decode import concat
from ..record.runinfo import RunInfo
from ..record.runrows import RunRows
from .control import announce_long_end
from .kept import Kept


class _Bounds:
    """The least and the greatest time of the events: a recording cut short ends there."""

    def __init__(self):
        self.started, self.ended = np.nan, np.nan

    def add(self, frame: pd.DataFrame) -> None:
        times = frame[recording.TIMES].astype(float).to_numpy()
        if np.isfinite(times).any():
            self.started = np.nanmin([self.started, np.nanmin(times)])
            self.ended = np.nanmax([self.ended, np.nanmax(times)])


def rows_of(path: Path, announce: Callable[[str], None] | None = None,
            made: Callable[[int, int], None] | None = None) -> tuple[RunRows, RunInfo]:
    """The connection rows (with their figures) and the run of the recording at `path`
    (BadRecording: it is not one); made(done, total): after each frame, how many of its
    events have been read and made into rows."""
    surveyed = recording.survey(path)
    announce_long_end(surveyed.events, announce)
    recorded = RunInfo.from_dict(surveyed.run) if surveyed.run else RunInfo(0.0, 0.0)  # (cut short: none followed)
    method, pods = recorded.timewait_method, dict(recorded.pods)
    kept, stream, bounds = Kept(), None, _Bounds()
    # the clock is the records' own, in the order the ring held them: the short grace, but where
    # sock_diag's sightings came among them, timed when they were seen (Kept.step)
    grace_s = GRACE_S if method == "diag" else RECORDS_GRACE_S
    snapshot, waiting, ends, seen, now = [], [], [], 0, float("-inf")
    found: dict = {}
    for frame in recording.event_frames(path, found):
        bounds.add(frame)
        seen += len(frame)
        if stream is None:  # the snapshot at the start may come after the first lives: it goes first
            is_snapshot = (frame["kind"] == "existing").to_numpy()
            snapshot.append(frame[is_snapshot])
            waiting.append(frame[~is_snapshot])
            if seen < surveyed.existing_until:
                continue
            stream, frame = Stream(method, pods, concat(snapshot)), concat(waiting)
        if not ends:
            at_end = np.flatnonzero(np.isin(frame["kind"].to_numpy(object), END_OF_RUN))
            arrivals = frame.iloc[:at_end[0]] if len(at_end) else frame
            if len(arrivals):
                now = max(now, float(np.nanmax(arrivals["event_at"].astype(float))))
                for rows in stream.step_parts(arrivals, now, grace_s):
                    kept.add(rows)
            frame = frame.iloc[len(arrivals):]
        if len(frame):
            ends.append(frame)  # from the first record of the end of the run on: all to finish()
        if made:
            made(seen, surveyed.events)
    if found.get("run") is None:
        run = recording.cut_short_run(path, bounds.started, bounds.ended, seen)
    else:
        run = RunInfo.from_dict(found["run"])
    if stream is None:
        stream = Stream(method, pods, concat(snapshot))
        ends = waiting
    for rows in stream.finish_parts(concat(ends), run.ended_at):
        kept.add(rows)
    return kept.rows_of_run(run), run
