"""The analysis of a run, in one call: events -> connections -> per-process, per-peer,
port-pressure and timeline figures -> findings."""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..record.runinfo import RunInfo
from . import churn, lives, ports, processes
from .findings import findings


@dataclass
class Analysis:
    """Everything the outputs show, computed once from the events of a run."""
    run: RunInfo
    conns: pd.DataFrame
    procs: pd.DataFrame  # processes.processes and the churn columns of churn.processes
    peers: pd.DataFrame
    pressure: pd.DataFrame
    timeline: pd.DataFrame
    findings: list[dict]


def analyse(events: pd.DataFrame, run: RunInfo) -> Analysis:
    """events (record.decode's columns) and their run -> everything the outputs show."""
    started, ended = run.started_at, run.ended_at
    conns = lives.connections(events, ended, run.timewait_method)
    procs = churn.processes(conns, processes.processes(conns, ended), started, ended)
    peers = churn.peers(conns, started, ended)
    pressure = ports.pressure(conns, run)
    timeline = churn.timeline(conns, started, ended, run.timewait_followed)
    return Analysis(run, conns, procs, peers, pressure, timeline, findings(conns, procs, pressure, run))
