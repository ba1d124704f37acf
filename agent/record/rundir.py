"""A run kept as a directory: its run.json and its connection rows (connections.arrow, in
record.rows' format), as a trace with -o writes them while it runs and as a trace whose
files could not be written is rescued.  `tcpclose report DIR` reads it back, without root,
and writes every other file from it: a run killed midway is finished that way."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..errors import BadRecording
from . import rows
from .runinfo import RunInfo

ROWS = "connections.arrow"
PENDING = "connections.pending.arrow"  # the rows not final yet, as they stood at the last run.json
RUN = "run.json"
LIFE = ["skaddr", "opened_at", "closed_at"]  # one life: its row, provisional or final, is made from one record


def is_run_directory(path: Path) -> bool:
    return (Path(path) / ROWS).is_file() and (Path(path) / RUN).is_file()


def read(directory: Path) -> tuple[pd.DataFrame, RunInfo]:
    """The rows and the run of a run directory.  run.json is rewritten as the run goes: a run
    that never finished (RunInfo.cut_short) ends where its rows stop, and its lives whose rows
    were not final yet are taken as they stood at its last run.json (PENDING), those made final
    since excepted."""
    directory = Path(directory)
    try:
        run = RunInfo.from_dict(json.loads((directory / RUN).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise BadRecording(f"{directory / RUN} is not a tcpclose run.json: {exc}") from None
    try:
        conns = rows.read(directory / ROWS)
    except (OSError, ValueError) as exc:
        raise BadRecording(f"{directory / ROWS} is not a tcpclose rows file: {exc}") from None
    if run.analysis_skipped:  # counted per process where it ran, for want of memory: here, analysed
        run.aggregates = run.analysis_skipped = None
    if run.cut_short:
        if (directory / PENDING).is_file():
            pending = rows.read(directory / PENDING)
            made = pd.MultiIndex.from_frame(conns[LIFE].fillna(-1.0))
            pending = pending[~pd.MultiIndex.from_frame(pending[LIFE].fillna(-1.0)).isin(made)]
            conns = pd.concat([conns, pending], ignore_index=True) if len(pending) else conns
        last = pd.concat([conns["closed_at"], conns["tw_end"]]).max()
        run.ended_at = max(run.ended_at, float(last)) if pd.notna(last) else run.ended_at
    return conns, run
