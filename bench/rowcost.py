"""What a record costs to be made into connection rows and their figures: the analysis a
trace runs on its BPF records (analysis.stream, analysis.tally), timed on a recording with
the recording's own reading left out (its JSON lines are read once, before the repeats).

    .venv/bin/python -m bench.rowcost RECORDING [--repeats 3]

At the development VM's maximum churn the default mode keeps up only if this is about
2 µs a record (docs/overhead.md, "What keeping up at maximum churn would take", which timed a
recording of 8 s of the bench's churn: `tcpclose trace --record FILE` while it ran).  Prints
each repeat's CPU seconds, then the median in µs a record, and the rows it made."""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from unittest import mock

from agent.record import recording
from agent.run import replay


def read(path: Path) -> tuple[recording.Survey, list, dict]:
    """The recording's survey, its event frames and its run line, read once."""
    found: dict = {}
    return recording.survey(path), list(recording.event_frames(path, found)), found


def timed(path: Path, surveyed: recording.Survey, frames: list, found: dict) -> tuple[float, int]:
    """CPU seconds to make the rows and figures of the frames read (run.replay, as `tcpclose
    report` makes them), their frames' copying left out; and the rows made."""
    copying = 0.0

    def event_frames(_path, into: dict):
        nonlocal copying
        into.update(found)
        for frame in frames:  # (a copy each: what is read is not changed for the next repeat)
            started = time.process_time()
            copy = frame.copy()
            copying += time.process_time() - started
            yield copy

    with mock.patch.object(recording, "survey", lambda _path: surveyed), \
            mock.patch.object(recording, "event_frames", event_frames):
        started = time.process_time()
        rows, _ = replay.rows_of(path)
        spent = time.process_time() - started - copying
    return spent, rows.tally.lives


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rowcost", description=__doc__.split("\n\n")[0])
    parser.add_argument("recording", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    surveyed, frames, found = read(args.recording)
    records = sum(len(frame) for frame in frames)
    costs = []
    for repeat in range(args.repeats):
        spent, rows = timed(args.recording, surveyed, frames, found)
        costs.append(spent / max(records, 1) * 1e6)
        print(f"  [{repeat + 1}/{args.repeats}] {spent:.2f} s CPU, {costs[-1]:.2f} µs a record", flush=True)
    print(f"{records:,} records, {rows:,} rows: {statistics.median(costs):.2f} µs a record (median)")


if __name__ == "__main__":
    main()
