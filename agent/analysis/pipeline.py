"""The analysis of a run, in one call: its figures (analysis.tally) -> per-process, per-peer,
port-pressure and timeline tables -> findings."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..record.runinfo import RunInfo
from . import churn, ports, processes, workloads
from .findings import findings
from .tally import Tally


@dataclass
class Analysis:
    """Everything the outputs show, computed once from the figures of a run."""
    run: RunInfo
    tally: Tally  # the figures kept as the rows were made (analysis.tally)
    procs: pd.DataFrame  # processes.processes: per process, with the churn columns
    groups: pd.DataFrame  # what the summary, findings and report show: procs, or per name (--by)
    workloads: pd.DataFrame  # per process name, always (workloads.csv)
    peers: pd.DataFrame
    pressure: pd.DataFrame
    timeline: pd.DataFrame
    findings: list[dict]
    by: str = "comm"  # --by: the grouping of `groups`
    top: int | None = workloads.DEFAULT_TOP  # --top: rows shown per table


def analyse(tally: Tally, run: RunInfo, by: str = "comm", top: int | None = workloads.DEFAULT_TOP) -> Analysis:
    """A run's figures (its connection rows, made as the records arrive by analysis.stream
    and added to `tally` as they were: a trace's, or a recording's through run.replay) ->
    everything the outputs show."""
    ended = run.ended_at
    procs = processes.processes(tally, ended)
    per_comm = workloads.grouped(tally, procs, ended, "comm")
    groups = per_comm if by == "comm" else workloads.grouped(tally, procs, ended, by)
    pressure = ports.pressure(tally, run)
    return Analysis(run, tally, procs, groups, per_comm, churn.peers(tally, ended), pressure,
                    churn.timeline(tally, ended), findings(tally, groups, pressure, run, workloads.BY[by]), by, top)

