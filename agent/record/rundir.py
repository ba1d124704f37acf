"""A run kept as a directory: its run.json and its connection rows (connections.arrow, in
record.rows' format), as a trace with -o writes them while it runs and as a trace whose
files could not be written is rescued.  `tcpclose report DIR` reads it back, without root,
and writes every other file from it: a run killed midway is finished that way."""
from __future__ import annotations

import json
import os
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
# A run behind its records (run.kept) keeps those not made into rows yet in files of raw BPF
# records (run.backlog), and at each interval says in WAITING where they start and how to
# read them: a run killed then is finished with their rows too (run.replay.waiting_rows).
WAITING = "connections.waiting.json"
WAITING_PREFIX = "connections.waiting."
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


def waiting_name(n: int) -> str:
    """The name of the backlog's `n`th file of records waiting (run.backlog)."""
    return f"{WAITING_PREFIX}{n}.records"


def write_waiting(out: OutputDir, where: tuple[str, int, int], rows_before: int, reading: dict) -> None:
    """WAITING: the records waiting start in file where[0] at record where[1] (and go on in the
    files after it), where[2] of them (those after came after this run.json); connections.arrow
    held `rows_before` rows then; `reading`: what decoding them needs (run.tracer.Tracer.reading:
    the clock's offset, HZ, the owners known)."""
    name, first, count = where
    out.write_text(WAITING, json.dumps({"file": name, "from": first, "records": count, "rows_before": rows_before,
                                        **reading}))


def read_waiting(directory: Path) -> dict | None:
    """What WAITING says, checked (None: there is none; BadRecording: it is not one a trace wrote)."""
    path = Path(directory) / WAITING
    try:
        with _opened(path) as f:
            spec = json.loads(f.read())
        number = spec["file"][len(WAITING_PREFIX):-len(".records")]
        if not (spec["file"] == waiting_name(int(number)) and isinstance(spec["owners"], dict)):
            raise ValueError("not a file of records waiting")
        if min(int(spec["from"]), int(spec["records"]), int(spec["rows_before"])) < 0:
            raise ValueError("a count below zero")
        names = {part: {int(key): None if value is None else str(value) for key, value in spec["owners"][part].items()}
                 for part in spec["owners"]}
        return {**spec, "first": int(number), "from": int(spec["from"]), "records": int(spec["records"]),
                "rows_before": int(spec["rows_before"]), "offset_ns": int(spec["offset_ns"]),
                "hz": None if spec["hz"] is None else int(spec["hz"]), "owners": names}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise BadRecording(f"{path} is not a tcpclose {WAITING}: {exc}") from None


def waiting_records(directory: Path, spec: dict, dtype: np.dtype, limit: int) -> Iterator[np.ndarray]:
    """The records waiting (read_waiting's `spec`), oldest first, at most `limit` at a time:
    from its first file, then the files the backlog made after it (each removed once read to
    its end: its records are rows then), up to the last whole record."""
    left = spec["records"]
    for n in sorted(_waiting_files(directory)):
        if n < spec["first"]:
            continue
        path = Path(directory) / waiting_name(n)
        try:
            f = _opened(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise BadRecording(f"cannot read {path}: {exc.strerror}") from None
        with f:
            f.seek(spec["from"] * dtype.itemsize if n == spec["first"] else 0)
            while left > 0 and (chunk := f.read(min(limit, left) * dtype.itemsize)):
                whole = len(chunk) - len(chunk) % dtype.itemsize
                left -= whole // dtype.itemsize
                yield np.frombuffer(chunk[:whole], dtype)


def _waiting_files(directory: Path) -> list[int]:
    """The numbers of the files of records waiting in `directory`."""
    found = []
    for name in os.listdir(directory):
        number = name[len(WAITING_PREFIX):-len(".records")]
        if name.startswith(WAITING_PREFIX) and name.endswith(".records") and number.isdigit():
            found.append(int(number))
    return found


def _opened(path: Path):
    """`path` opened for reading, never through a link planted there."""
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb")


def is_run_directory(path: Path) -> bool:
    return rows_file(path) is not None and (Path(path) / RUN).is_file()


def rows_file(path: Path) -> str | None:
    """The file of a run directory's rows: ROWS, else a closed PARQUET; None: neither."""
    for name in (ROWS, PARQUET):
        if (Path(path) / name).is_file():
            return name
    return None


Batches = Callable[[], Iterator[pd.DataFrame]]


def read(directory: Path, waiting: Callable[[Path, RunInfo, dict], Batches] | None = None) -> tuple[RunRows, RunInfo]:
    """The rows (with their figures) and the run of a run directory.  run.json is rewritten as
    the run goes: a run that never finished (RunInfo.cut_short) ends where its rows stop, and
    its lives whose rows were not final yet are taken as they stood at its last run.json
    (PENDING: the last row of each), those made final since excepted, a TIME_WAIT still open
    as old as the run.  waiting(directory, run, spec): the rows of the records that waited for
    a step (WAITING; run.replay.waiting_rows makes them, once), but those of lives made final since."""
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
    spec = read_waiting(directory) if waiting is not None else None
    pending, last, since = _pending_and_last(directory, made, spec["rows_before"] if spec else None)
    waited = waiting(directory, run, spec) if spec is not None else lambda: iter(())
    for part in waited():
        last = np.fmax(last, _last(part))
    run.ended_at = max(run.ended_at, last) if pd.notna(last) else run.ended_at

    def finished(part: pd.DataFrame) -> pd.DataFrame:
        still = (part["tw_end_reason"] == "open").to_numpy()  # (a row written intervals ago: its age then)
        part.loc[still, "tw_s"] = run.ended_at - part.loc[still, "tw_start"]
        return part

    def batches() -> Iterator[pd.DataFrame]:
        yield from (finished(part) for part in made())
        if len(pending):
            yield finished(pending.copy())
        for part in waited():
            yield finished(part[~_lives(part).isin(since)])
    return RunRows.tallied(batches, run), run


def _pending_and_last(directory: Path, made: Callable[[], Iterator[pd.DataFrame]], rows_before: int | None = None
                      ) -> tuple[pd.DataFrame, float, pd.MultiIndex]:
    """Of a run cut short: the last row of each life PENDING holds that has no final row,
    the last moment any row shows, and the lives of the rows after the first `rows_before`.
    What is kept while the rows are read is bounded by PENDING's lives (those held at the
    last note) and the rows after `rows_before` (an interval's), not by the run's length:
    each batch's lives are looked up among PENDING's (a killed ten-minute run at full churn
    has some 35 million rows; an index of all their lives took 1.5 GB for 4 million)."""
    pending = rows.read(directory / PENDING) if (directory / PENDING).is_file() else rows.empty()
    held = _lives(pending)
    last_of_each = ~held.duplicated(keep="last")
    pending, held = pending[last_of_each].reset_index(drop=True), held[last_of_each]
    final = np.zeros(len(pending), dtype=bool)
    last, seen, since = float("nan"), 0, []
    for part in made():
        life = _lives(part)
        if rows_before is not None and seen + len(part) > rows_before:
            since.append(life[max(rows_before - seen, 0):])
        seen += len(part)
        last = np.fmax(last, _last(part))
        if len(pending):
            found = held.get_indexer(life)
            final[found[found >= 0]] = True
    since = since[0].append(since[1:]) if since else pd.MultiIndex.from_arrays([[]] * len(LIFE), names=LIFE)
    pending = pending[~final].reset_index(drop=True)
    return pending, np.fmax(last, _last(pending)), since


def _lives(part: pd.DataFrame) -> pd.MultiIndex:
    """Each row's life (LIFE), a missing time as -1."""
    return pd.MultiIndex.from_frame(part[LIFE].fillna(-1.0))


def _last(part: pd.DataFrame) -> float:
    """The last moment these rows show."""
    times = np.r_[part["closed_at"].to_numpy(float), part["tw_end"].to_numpy(float)]
    times = times[~np.isnan(times)]
    return float(times.max()) if len(times) else float("nan")
