"""Files written by --out: connections.csv, processes.csv, summary.txt (DESIGN.md section 3)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .aggregate import PROCESS_COLUMNS
from .lifecycle import CONNECTION_COLUMNS


def write(out_dir: Path, conns: pd.DataFrame, procs: pd.DataFrame, summary: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "connections.csv", out_dir / "processes.csv", out_dir / "summary.txt"]
    conns[CONNECTION_COLUMNS].to_csv(paths[0], index=False, float_format="%.6f")
    procs[PROCESS_COLUMNS].to_csv(paths[1], index=False, float_format="%.3f")
    paths[2].write_text(summary, encoding="utf-8")
    return paths
