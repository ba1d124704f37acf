"""Files written by --out (DESIGN.md section 3, and what the incident report adds).

  connections.csv  one row per socket life (the contract's columns)
  processes.csv    one row per process: the contract's columns, then TIME_WAIT end
                   reasons and the churn profile
  workloads.csv    the same per process name, the pids folded in (analysis.workloads)
  peers.csv        one row per peer: churn and who closes first (analysis.churn.peers)
  ports.csv        ephemeral-port pressure per destination (analysis.ports.pressure)
  timeline.csv     per time bin: opened, closed, TIME_WAIT and CLOSE_WAIT alive
  summary.txt      the terminal summary
  summary.json     the findings and figures, for machines
  report.html      the incident report, one self-contained file
  run.json         the run's times, BPF counters, kernel counters and sysctls
  connections.arrow  every column of every connection row (record.rows), from which
                   `tcpclose report DIR` writes the rest again (record.rundir)
"""
from __future__ import annotations

import json
from typing import Callable, Iterable

import pandas as pd

from ..analysis.churn import CHURN_COLUMNS, PEER_COLUMNS
from ..analysis.pipeline import Analysis
from ..analysis.ports import PRESSURE_COLUMNS
from ..analysis.processes import EXTRA_PROCESS_COLUMNS, PROCESS_COLUMNS
from ..analysis.workloads import WORKLOAD_COLUMNS
from ..record import connections_csv, formats, rows, rundir
from ..record.formats import FORMATS, NAMES
from ..record.runinfo import RunInfo
from ..safefiles import OutputDir
from . import summary_json

FILES = ("connections.csv", "processes.csv", "workloads.csv", "peers.csv", "ports.csv", "timeline.csv", "summary.txt",
         "summary.json", "report.html", "run.json")
TABLES = ("summary.txt", "summary.json", "processes.csv", "workloads.csv", "peers.csv", "ports.csv", "timeline.csv")
AGGREGATE_FILES = ("processes.csv", "workloads.csv", "summary.txt", "run.json")
FORMULA_STARTS = connections_csv.FORMULA_STARTS  # (a cell a spreadsheet would run as a formula)
FREE_TEXT = ("comm", "processes")  # the columns whose text comes from processes, not from tcpclose


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with every free-text cell that would start a formula quoted."""
    columns = [c for c in FREE_TEXT if c in frame.columns]
    risky = {c: frame[c].astype(str).str.startswith(FORMULA_STARTS) for c in columns}
    if not any(mask.any() for mask in risky.values()):
        return frame
    out = frame.copy()
    for column, mask in risky.items():
        if mask.any():  # (a count column of that name, workloads.csv's processes, never is)
            out.loc[mask, column] = "'" + out.loc[mask, column].astype(str)
    return out


def _csv(out: OutputDir, name: str, frame: pd.DataFrame, float_format: str) -> None:
    with out.replacing(name) as f:
        spreadsheet_safe(frame).to_csv(f, index=False, float_format=float_format)


def write(out: OutputDir, a: Analysis, batches: Callable[[], Iterable[pd.DataFrame]], text: str,
          there: tuple[str, ...] = (), fmt: str = "csv") -> list:
    """Every file of -o, each written whole under a temporary name and renamed into place; the
    small ones that say what the run was first.  batches: the run's connection rows, a batch
    at a time (record.runrows), for the files of them not `there`: in `out` already, whole (a
    trace writes connections.arrow and connections.csv as it goes; `report DIR` finds
    connections.arrow).  fmt: --format, the file of the connection rows (record.formats); the
    other one an earlier run left is removed."""
    out.write_text("run.json", a.run.to_json())
    write_tables(out, a, text)
    rows_file = FORMATS[fmt]
    if rows_file.NAME not in there:
        formats.write(out, fmt, batches())
    out.remove(name for name in NAMES if name != rows_file.NAME and name not in there)
    from . import report_html  # matplotlib: imported when a report is written, not before tracing starts

    out.write_text("report.html", report_html.render(a, text))
    if rundir.ROWS not in there:
        with out.replacing_binary(rundir.ROWS) as f:
            writer = rows.RowsWriter(f)
            for part in batches():
                writer.append(part)
            writer.close()
    return [out.path / (rows_file.NAME if name == connections_csv.NAME else name) for name in (*FILES, rundir.ROWS)]


def write_tables(out: OutputDir, a: Analysis, text: str) -> None:
    """The summary and the tables (TABLES), each whole under a temporary name renamed into
    place: at the end of a run, and every --interval while a trace -o runs."""
    out.write_text("summary.txt", text)
    out.write_text("summary.json", json.dumps(summary_json.build(a), indent=1) + "\n")
    _csv(out, "processes.csv", a.procs[PROCESS_COLUMNS + EXTRA_PROCESS_COLUMNS + CHURN_COLUMNS], "%.3f")
    _csv(out, "workloads.csv", a.workloads[WORKLOAD_COLUMNS], "%.3f")
    _csv(out, "peers.csv", a.peers[PEER_COLUMNS], "%.4f")
    _csv(out, "ports.csv", a.pressure[PRESSURE_COLUMNS], "%.4f")
    _csv(out, "timeline.csv", a.timeline, "%.3f")


def write_aggregates(out: OutputDir, procs: pd.DataFrame, names: pd.DataFrame, text: str, run: RunInfo) -> list:
    """What a --aggregates run has: per-process rows, the same per name (`names`:
    analysis.workloads.folded), the summary and run.json.  The per-connection files an
    earlier run left in the directory are removed: they are not this run's."""
    out.write_text("run.json", run.to_json())
    out.write_text("summary.txt", text)
    _csv(out, "processes.csv", procs[PROCESS_COLUMNS + EXTRA_PROCESS_COLUMNS], "%.3f")
    _csv(out, "workloads.csv", names.reindex(columns=WORKLOAD_COLUMNS[:-len(CHURN_COLUMNS)]), "%.3f")
    out.remove(name for name in (*FILES, *NAMES, rundir.ROWS, rundir.PENDING) if name not in AGGREGATE_FILES)
    return [out.path / name for name in AGGREGATE_FILES]
