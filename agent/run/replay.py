"""A recording (trace --record) made into connection rows as the trace made them, for
`tcpclose report` and `doctor`: its events go through analysis.stream a frame at a time, in
the order recorded, and the rows are kept on disk (run.kept), so that what is held is what
was alive at that point of the run, however long the recording.  The figures are made from
the rows a batch at a time once they are all made (analysis.tally).  The same for the
records a trace -o killed while behind left in its directory (waiting_rows)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ..analysis.stream import END_OF_RUN, GRACE_S, RECORDS_GRACE_S, Stream
from ..record import decode, layout, recording, rundir
from ..record.decode import concat
from ..record.runinfo import RunInfo
from ..record.runrows import RunRows
from ..errors import BadRecording
from .control import announce_long_end
from .kept import STEP_RECORDS, Kept
from .owners import Owners

# A record waiting when a killed run last wrote its run.json was taken before then, after its
# start (its life, or its timewait, began after the probe was attached): one outside these
# bounds, and this slack, is not the run's (a file anyone could have written).
TIME_SLACK_S = 60.0


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


def rows_of_directory(directory: Path, announce: Callable[[str], None] | None = None,
                      made: Callable[[int, int], None] | None = None) -> tuple[RunRows, RunInfo]:
    """The rows (with their figures) and the run of a run directory (rundir.read), those of
    the records a run killed while behind left waiting included (waiting_rows: announce and
    made as rows_of's)."""
    return rundir.read(directory, lambda path, run, spec: waiting_rows(path, run, spec, announce, made))


def waiting_rows(directory: Path, run: RunInfo, spec: dict, announce: Callable[[str], None] | None = None,
                 made: Callable[[int, int], None] | None = None) -> rundir.Batches:
    """The rows of the records that waited for a step at the last run.json of a trace -o
    that was killed (`spec`: rundir.read_waiting), made as its steps would have made them (on
    their own clock, as behind), from records decoded as it decoded them, and as they stood
    then (Stream.provisional: a TIME_WAIT not ended by then is open), as PENDING's are; made
    once, kept in a file of rows.  A life held then has its row in PENDING: a record of it
    among these (its TIME_WAIT's end) finds none here, and leaves that row as it stood."""
    owners, kept, total, done = Owners.frozen(spec["owners"]), Kept(), spec["records"], 0
    stream, now = Stream(run.timewait_method, dict(run.pods), decode.empty_events()), float("-inf")
    announce_long_end(total, announce)
    for raw in rundir.waiting_records(directory, spec, layout.EVENT_DTYPE, STEP_RECORDS):
        outside = decode.time_outside(raw, spec["offset_ns"], run.started_at - TIME_SLACK_S, run.ended_at + TIME_SLACK_S)
        if outside is not None:
            raise BadRecording(f"{Path(directory) / spec['file']} (or a file after it): record {done + outside[0]:,}'s "
                               f"{outside[1]} is not within the run")
        done += len(raw)
        if made:
            made(done, total)
        frame = owners.named(decode.decode(raw, spec["offset_ns"], spec["hz"]))
        if len(frame):
            now = max(now, float(np.nanmax(frame["event_at"].astype(float))))
            for rows in stream.step_parts(frame, now, RECORDS_GRACE_S):
                kept.add(rows)
    for rows in stream.provisional(max(run.ended_at, now)):
        kept.add(rows)
    return kept.batches()
