"""A run kept as a directory: its run.json and its connection rows (connections.arrow, in
record.rows' format), as a trace with -o writes them while it runs and as a trace whose
files could not be written is rescued.  `tcpclose report DIR` reads it back, without root,
and writes every other file from it: a run killed midway is finished that way."""
from __future__ import annotations

import json
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import BadRecording
from ..safefiles import OutputDir
from . import rows
from .runinfo import RunInfo
from .runrows import RunRows

ROWS = "connections.arrow"
PARQUET = "connections.parquet"  # (--format parquet: record.connections_parquet) read where ROWS is not there
PENDING = "connections.pending.arrow"  # the rows not final yet, as they stood at the last run.json
RUN = "run.json"
LIFE = ["skaddr", "opened_at", "closed_at"]  # one life: its row, provisional or final, is made from one record
BATCH_ROWS = 100_000  # rows read from a Parquet file at a time
ROTATE_SLACK = 10_000  # PENDING is made anew once it holds more rows than this and twice the lives held


class Pending:
    """PENDING as a run writes it: every interval, the rows of the lives held that were not
    written before or may have changed (analysis.stream.Stream.provisional) are appended; a
    life's latest row is the one that counts.  Once the file holds more than twice the lives
    held (most of them made final since), it is made anew with those held only, under a
    temporary name renamed into place, so that a kill at any moment leaves a whole file."""

    def __init__(self, out: OutputDir):
        self._out = out
        self._file: BinaryIO | None = None
        self._writer: rows.RowsWriter | None = None

    def write(self, provisional: Callable[[bool], Iterable[pd.DataFrame]], held: int) -> None:
        """provisional(everything): the rows of the lives held, all of them or those new or
        changed, in parts."""
        if self._writer is not None and self._writer.rows <= 2 * held + ROTATE_SLACK:
            for part in provisional(False):
                self._writer.append(part)
            return
        temporary = f".{PENDING}.tcpclose-tmp"
        file = self._out.appending(temporary)
        writer = rows.RowsWriter(file)
        for part in provisional(True):
            writer.append(part)
        self._out.rename(temporary, PENDING)
        self.close()
        self._file, self._writer = file, writer

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = self._writer = None


def is_run_directory(path: Path) -> bool:
    return rows_file(path) is not None and (Path(path) / RUN).is_file()


def rows_file(path: Path) -> str | None:
    """The file of a run directory's rows: ROWS, else a closed PARQUET; None: neither."""
    for name in (ROWS, PARQUET):
        if (Path(path) / name).is_file():
            return name
    return None


def read(directory: Path) -> tuple[RunRows, RunInfo]:
    """The rows (with their figures) and the run of a run directory.  run.json is rewritten as
    the run goes: a run that never finished (RunInfo.cut_short) ends where its rows stop, and
    its lives whose rows were not final yet are taken as they stood at its last run.json
    (PENDING: the last row of each), those made final since excepted, a TIME_WAIT still open
    as old as the run."""
    directory = Path(directory)
    try:
        run = RunInfo.from_dict(json.loads((directory / RUN).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise BadRecording(f"{directory / RUN} is not a tcpclose run.json: {exc}") from None
    name = rows_file(directory)

    def made() -> Iterator[pd.DataFrame]:
        try:
            if name == ROWS:
                yield from rows.batches(directory / ROWS)
            else:
                yield from (rows.frame(b) for b in pq.ParquetFile(directory / PARQUET).iter_batches(BATCH_ROWS))
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise BadRecording(f"{directory / str(name)} is not a tcpclose rows file: {exc}") from None
    if run.analysis_skipped:  # counted per process where it ran, for want of memory: here, analysed
        run.aggregates = run.analysis_skipped = None
    run.lives_pending = None  # (a run.json of a run still tracing: its lives held are in PENDING)
    if not run.cut_short:
        return RunRows.tallied(made, run), run
    pending, last = _pending_and_last(directory, made)
    run.ended_at = max(run.ended_at, last) if pd.notna(last) else run.ended_at

    def finished(part: pd.DataFrame) -> pd.DataFrame:
        still = (part["tw_end_reason"] == "open").to_numpy()  # (a row written intervals ago: its age then)
        part.loc[still, "tw_s"] = run.ended_at - part.loc[still, "tw_start"]
        return part

    def batches() -> Iterator[pd.DataFrame]:
        yield from (finished(part) for part in made())
        if len(pending):
            yield finished(pending.copy())
    return RunRows.tallied(batches, run), run


def _pending_and_last(directory: Path, made: Callable[[], Iterator[pd.DataFrame]]) -> tuple[pd.DataFrame, float]:
    """Of a run cut short: the last row of each life PENDING holds that has no final row,
    and the last moment any row shows."""
    lives, last = [], float("nan")
    for part in made():
        lives.append(pd.MultiIndex.from_frame(part[LIFE].fillna(-1.0)))
        last = np.fmax(last, np.nanmax(np.r_[part["closed_at"].to_numpy(float), part["tw_end"].to_numpy(float),
                                             np.nan]))
    if not (directory / PENDING).is_file():
        return rows.empty(), last
    pending = rows.read(directory / PENDING)
    life = pd.MultiIndex.from_frame(pending[LIFE].fillna(-1.0))
    final = lives[0].append(lives[1:]) if lives else life[:0]
    pending = pending[~life.duplicated(keep="last") & ~life.isin(final)].reset_index(drop=True)
    last = np.fmax(last, np.nanmax(np.r_[pending["closed_at"].to_numpy(float), pending["tw_end"].to_numpy(float),
                                         np.nan]))
    return pending, last
