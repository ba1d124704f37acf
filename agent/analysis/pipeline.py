"""The analysis of a run, in one call: connections -> per-process, per-peer,
port-pressure and timeline figures -> findings."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..record.runinfo import RunInfo
from . import churn, ports, processes, workloads
from .findings import findings
from .tally import Tally


@dataclass
class Analysis:
    """Everything the outputs show, computed once from the events of a run."""
    run: RunInfo
    conns: pd.DataFrame
    procs: pd.DataFrame  # processes.processes: per process, with the churn columns
    groups: pd.DataFrame  # what the summary, findings and report show: procs, or per name (--by)
    workloads: pd.DataFrame  # per process name, always (workloads.csv)
    peers: pd.DataFrame
    pressure: pd.DataFrame
    timeline: pd.DataFrame
    findings: list[dict]
    by: str = "comm"  # --by: the grouping of `groups`
    top: int | None = workloads.DEFAULT_TOP  # --top: rows shown per table


def analyse(conns: pd.DataFrame, run: RunInfo, by: str = "comm", top: int | None = workloads.DEFAULT_TOP) -> Analysis:
    """A run's connection rows (made as the records arrive by analysis.stream: a trace's, or a
    recording's through run.replay) -> everything the outputs show."""
    started, ended = run.started_at, run.ended_at
    tally = Tally.of(conns, started)
    procs = processes.processes(tally, ended)
    per_comm = workloads.grouped(tally, procs, ended, "comm")
    groups = per_comm if by == "comm" else workloads.grouped(tally, procs, ended, by)
    peers = churn.peers(tally, ended)
    pressure = ports.pressure(conns, run)
    timeline = churn.timeline(conns, started, ended, run.timewait_followed)
    return Analysis(run, conns, procs, groups, per_comm, peers, pressure, timeline,
                    findings(conns, groups, pressure, run, workloads.BY[by]), by, top)
