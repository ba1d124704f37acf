"""Files written by --out (DESIGN.md section 3, and what the incident report adds).

  connections.csv  one row per socket life (the contract's columns)
  processes.csv    one row per process: the contract's columns, then TIME_WAIT end
                   reasons and the churn profile
  peers.csv        one row per peer: churn and who closes first (analysis.churn.peers)
  ports.csv        ephemeral-port pressure per destination (analysis.ports.pressure)
  timeline.csv     per time bin: opened, closed, TIME_WAIT and CLOSE_WAIT alive
  summary.txt      the terminal summary
  summary.json     the findings and figures, for machines
  report.html      the incident report, one self-contained file
  run.json         the run's times, BPF counters, kernel counters and sysctls
"""
from __future__ import annotations

import json
from pathlib import Path

from ..analysis.churn import CHURN_COLUMNS, PEER_COLUMNS
from ..analysis.lives import CONNECTION_COLUMNS
from ..analysis.pipeline import Analysis
from ..analysis.ports import PRESSURE_COLUMNS
from ..analysis.processes import EXTRA_PROCESS_COLUMNS, PROCESS_COLUMNS
from ..record.runinfo import RunInfo
from . import summary_json

FILES = ("connections.csv", "processes.csv", "peers.csv", "ports.csv", "timeline.csv", "summary.txt",
         "summary.json", "report.html", "run.json")


def write(out_dir: Path, a: Analysis, text: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in FILES}
    a.conns[CONNECTION_COLUMNS].to_csv(paths["connections.csv"], index=False, float_format="%.6f")
    a.procs[PROCESS_COLUMNS + EXTRA_PROCESS_COLUMNS + CHURN_COLUMNS].to_csv(
        paths["processes.csv"], index=False, float_format="%.3f")
    a.peers[PEER_COLUMNS].to_csv(paths["peers.csv"], index=False, float_format="%.4f")
    a.pressure[PRESSURE_COLUMNS].to_csv(paths["ports.csv"], index=False, float_format="%.4f")
    a.timeline.to_csv(paths["timeline.csv"], index=False, float_format="%.3f")
    paths["summary.txt"].write_text(text, encoding="utf-8")
    paths["summary.json"].write_text(json.dumps(summary_json.build(a), indent=1) + "\n", encoding="utf-8")
    from . import report_html  # matplotlib: imported when a report is written, not before tracing starts

    paths["report.html"].write_text(report_html.render(a, text), encoding="utf-8")
    paths["run.json"].write_text(a.run.to_json(), encoding="utf-8")
    return list(paths.values())


AGGREGATE_FILES = ("processes.csv", "summary.txt", "run.json")


def write_aggregates(out_dir: Path, procs, text: str, run: RunInfo) -> list[Path]:
    """What a --aggregates run has: per-process rows, the summary and run.json (no per-connection files)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in AGGREGATE_FILES}
    procs[PROCESS_COLUMNS + EXTRA_PROCESS_COLUMNS].to_csv(paths["processes.csv"], index=False, float_format="%.3f")
    paths["summary.txt"].write_text(text, encoding="utf-8")
    paths["run.json"].write_text(run.to_json(), encoding="utf-8")
    return list(paths.values())
