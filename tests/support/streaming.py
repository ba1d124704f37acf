"""Replay a recorded run through analysis.stream as the tracer feeds it: its arrivals in
batches, then what the end of the run read, and compare with the whole-run analysis."""
from __future__ import annotations

import numpy as np
import pandas as pd

from agent.analysis import lives
from agent.analysis.stream import ARRIVING, END_OF_RUN, Stream
from agent.record.decode import FOLLOWED_COLUMNS, concat

ORDER = ["family", "laddr", "lport", "raddr", "rport", "opened_at", "closed_at", "skaddr", "initiator"]


def streamed(events: pd.DataFrame, run, cuts: int, seed: int = 0, apart: bool = False) -> tuple[pd.DataFrame, Stream]:
    """The rows of `events` (a recording's, in arrival order) made by a Stream fed `cuts`
    batches cut at random, each step's clock the latest event time so far.  apart: the end's
    timewait rows handed over apart, with their own columns only, as the tracer reads them
    from the BPF maps (decode.from_followed_timewaits)."""
    kind = events["kind"].to_numpy(object)
    end_rows = np.flatnonzero(np.isin(kind, END_OF_RUN))  # (what Tracer.finish reads: after every arrival)
    first_end = end_rows[0] if len(end_rows) else len(events)
    arrivals = events.iloc[:first_end]
    stream = Stream(run.timewait_method, run.pods, arrivals[arrivals["kind"] == "existing"])
    arrivals = arrivals[arrivals["kind"].isin(ARRIVING)]
    edges = np.sort(np.random.default_rng(seed).choice(np.arange(1, max(len(arrivals), 2)), size=min(cuts, max(len(arrivals) - 1, 0)), replace=False))
    rows, now = [], float("-inf")
    for start, stop in zip([0, *edges], [*edges, len(arrivals)]):
        batch = arrivals.iloc[start:stop]
        if len(batch):
            now = max(now, float(np.nanmax(batch["event_at"].astype(float))))
        rows.append(stream.step(batch, now))
    end = events.iloc[first_end:]
    mapped = end["kind"].isin(["tw_open", "tw_end"]).to_numpy() & apart
    rows.append(stream.finish(end[~mapped], run.ended_at, end[mapped][list(FOLLOWED_COLUMNS)] if apart else None))
    return concat(rows), stream


def in_order(conns: pd.DataFrame) -> pd.DataFrame:
    """The rows sorted on what names a life, for comparing two analyses of one run."""
    return conns.sort_values(ORDER, kind="stable", na_position="last").reset_index(drop=True)


def whole_run(events: pd.DataFrame, run) -> pd.DataFrame:
    """A recorded run's events analysed whole, at once: the reference the streaming core
    (analysis.stream, and run.replay that reads recordings through it) is checked against."""
    return lives.connections(events, run.ended_at, run.timewait_method, run.pods)


def differences(events: pd.DataFrame, run, cuts: int, seed: int = 0, apart: bool = False) -> pd.DataFrame:
    """The cells where streaming `events` in `cuts` batches and analysing them whole disagree."""
    return cells_differ(whole_run(events, run), streamed(events, run, cuts, seed, apart)[0])


def cells_differ(whole: pd.DataFrame, parts: pd.DataFrame) -> pd.DataFrame:
    """The cells where two analyses of one run disagree (both sorted first: in_order)."""
    whole, parts = in_order(whole), in_order(parts)
    columns = lives.CONNECTION_COLUMNS + lives.EXTRA_COLUMNS
    if len(whole) != len(parts):
        return pd.DataFrame({"rows": [len(whole), len(parts)]}, index=["whole", "streamed"])
    a, b = whole[columns].astype(object), parts[columns].astype(object)
    same = (a == b) | (a.isna() & b.isna())
    for column in columns:  # floats made by the same arithmetic in another order
        if pd.api.types.is_float_dtype(whole[column]):
            same[column] |= np.isclose(whole[column].astype(float), parts[column].astype(float), rtol=0, atol=1e-6)
    bad = ~same
    return pd.concat({"whole": a[bad.any(axis=1)], "streamed": b[bad.any(axis=1)]}, axis=1) if bad.any().any() else pd.DataFrame()


def left_by_a_kill(directory, made: pd.DataFrame, pending: pd.DataFrame, started_at: float, noted_at: float) -> None:
    """What trace -o leaves in `directory` when killed (record.rundir): the rows made final,
    the held lives' rows as the last interval wrote them, and run.json cut short then."""
    from agent.record import rows, rundir
    from agent.record.runinfo import RunInfo

    for name, frame in ((rundir.ROWS, made), (rundir.PENDING, pending)):
        with open(directory / name, "wb") as f:
            writer = rows.RowsWriter(f)
            writer.append(frame)
            writer.close()
    (directory / rundir.RUN).write_text(RunInfo(started_at=started_at, ended_at=noted_at, cut_short=True).to_json())
