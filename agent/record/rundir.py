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
RUN = "run.json"


def is_run_directory(path: Path) -> bool:
    return (Path(path) / ROWS).is_file() and (Path(path) / RUN).is_file()


def read(directory: Path) -> tuple[pd.DataFrame, RunInfo]:
    """The rows and the run of a run directory.  run.json is rewritten as the run goes: a run
    that never finished has no `ended_at` of its end, and is taken to end at its last row
    (RunInfo.cut_short)."""
    directory = Path(directory)
    try:
        run = RunInfo.from_dict(json.loads((directory / RUN).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise BadRecording(f"{directory / RUN} is not a tcpclose run.json: {exc}") from None
    try:
        conns = rows.read(directory / ROWS)
    except (OSError, ValueError) as exc:
        raise BadRecording(f"{directory / ROWS} is not a tcpclose rows file: {exc}") from None
    if run.cut_short:  # (a run.json of a run still going: its end is where its rows stop)
        last = pd.concat([conns["closed_at"], conns["tw_end"]]).max()
        run.ended_at = max(run.started_at, float(last)) if pd.notna(last) else run.started_at
    return conns, run
