"""Files written by --out: connections.csv, processes.csv, summary.txt (DESIGN.md section 3)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .aggregate import EXTRA_PROCESS_COLUMNS, PROCESS_COLUMNS
from .lifecycle import CONNECTION_COLUMNS


def write(out_dir: Path, conns: pd.DataFrame, procs: pd.DataFrame, summary: str, run: dict) -> list[Path]:
    """The contract's three files, and run.json: the run's times and BPF counters."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in ("connections.csv", "processes.csv", "summary.txt", "run.json")]
    conns[CONNECTION_COLUMNS].to_csv(paths[0], index=False, float_format="%.6f")
    procs[PROCESS_COLUMNS + EXTRA_PROCESS_COLUMNS].to_csv(paths[1], index=False, float_format="%.3f")
    paths[2].write_text(summary, encoding="utf-8")
    paths[3].write_text(json.dumps(run, indent=1) + "\n", encoding="utf-8")
    return paths
