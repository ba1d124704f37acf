"""The file of connection rows that -o writes: connections.csv (the default) or, with
--format parquet, connections.parquet.  Each module has NAME and Writer (rows appended as a
trace makes them); write() writes one whole."""
from __future__ import annotations

from typing import Iterable

import pandas as pd

from . import connections_csv, connections_parquet, rows

FORMATS = {"csv": connections_csv, "parquet": connections_parquet}
NAMES = tuple(module.NAME for module in FORMATS.values())


def write(out, fmt: str, parts: Iterable[pd.DataFrame]) -> None:
    """The file of --format `fmt` written whole into `out` (safefiles.OutputDir), from rows (frames)."""
    module = FORMATS[fmt]
    with out.replacing_binary(module.NAME) as f:
        writer = module.Writer(f)
        for part in parts:
            writer.append(rows.table(part))
        writer.close()
