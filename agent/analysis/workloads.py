"""The application as people mean it: processes grouped by name (or by container or systemd
unit) for the summary, the findings and the plots (a curl loop is one "curl (2,954
processes)", not 2,954 rows), and the longest tables cut to their top rows with the rest
summed in one "K others" row."""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import processes
from .churn import CHURN_COLUMNS
from .processes import EXTRA_PROCESS_COLUMNS, GROUP_COLUMNS, PROCESS_COLUMNS
from .tally import Tally

BY = {"comm": processes.PER_COMM, "pid": processes.PER_PROCESS, "workload": processes.PER_WORKLOAD}  # --by
DEFAULT_TOP = 20  # --top: rows of a table on the terminal and in the report (about a screenful)
# folded into "other" by summing: counts.  The percentiles and rates of the rest are not
# sums; "other" leaves them blank rather than show a figure no one measured
_SUMMED = ["connections", "active_closes", "passive_closes", "simultaneous_closes", "resets_local",
           "resets_remote", "timewait_count", "close_wait_open", "timewait_expired", "timewait_reused",
           "timewait_killed", "timewait_open", "timewait_unknown", "timewait_overflow", "closes_unseen",
           "processes", "opened", "opened_per_s"]
_HIGHEST = ["timewait_max_s", "close_wait_max_age_s"]
# workloads.csv: one row per process name, the pids folded in
WORKLOAD_COLUMNS = ["comm", *GROUP_COLUMNS, *PROCESS_COLUMNS[2:], *EXTRA_PROCESS_COLUMNS, *CHURN_COLUMNS]


def grouped(tally: Tally, procs: pd.DataFrame, ended_at: float, by: str = "comm") -> pd.DataFrame:
    """The rows the summary, the findings and the report show: procs itself (by "pid"), or
    one row per process name (by "comm") or per workload (its label in comm), with the same
    columns."""
    return procs if by == "pid" else processes.processes(tally, ended_at, BY[by])


def folded(procs: pd.DataFrame, by: str) -> pd.DataFrame:
    """A per-process table of counts only (--aggregates: processes.from_counts) grouped `by`:
    counts summed, the highest of maxima kept."""
    if by == "pid":
        return procs.assign(processes=procs["pid"].notna().astype(int),
                            pids=procs["pid"].astype(str).where(procs["pid"].notna(), ""))
    summed = [c for c in _SUMMED if c in procs and c != "processes"]
    out = procs.groupby("comm", dropna=False, sort=False).agg(
        processes=("pid", "nunique"), pids=("pid", processes.pid_examples),
        pid=("pid", lambda s: s.iloc[0] if s.nunique() == 1 else pd.NA),
        **{c: (c, "sum") for c in summed}, **{c: (c, "max") for c in _HIGHEST if c in procs},
        netns=("netns", "first")).reset_index()
    out["pid"] = out["pid"].astype("Int64")
    return out.sort_values(["connections", "comm"], ascending=[False, True], kind="stable").reset_index(drop=True)


def top(table: pd.DataFrame, n: int | None) -> pd.DataFrame:
    """The first n rows of a table sorted busiest first, and the rest in one row
    ("K others"): counts summed, the highest of maxima kept, the rest blank."""
    if n is None or len(table) <= n:
        return table
    head, rest = table.iloc[:n], table.iloc[n:]
    other = {column: np.nan for column in table.columns}
    other.update({c: rest[c].sum() for c in _SUMMED if c in rest})
    other.update({c: rest[c].max() for c in _HIGHEST if c in rest})
    other.update(comm=f"{len(rest):,} others", pid=pd.NA, pids="", netns=None)
    return pd.concat([head, pd.DataFrame([other]).astype(head.dtypes.to_dict(), errors="ignore")],
                     ignore_index=True)
