"""How much of a run can be analysed in memory at its end.

The default mode makes each life's connection row as the records arrive
(analysis.stream) and keeps the rows on disk (run.kept); its end reads them back
and makes the figures from all of them, which a long run at a high churn would
need more memory for than the host has.  Past the guard the run is counted per
process only, as --aggregates does (analysis.processes.counts_of_rows), and the
run says so (RunInfo.analysis_skipped).
"""
from __future__ import annotations

import ctypes
import ctypes.util

# What the end of a run costs, per connection row: the rows still to make (the backlog),
# those read back and the figures made from them.  Measured above the memory while tracing
# at 1.27 kB a row after 60 s at full churn (2.64 M rows, most made at the end) and 0.83 kB
# at 6,000 conn/s (docs/overhead.md, "Rows made as the run goes"); 1.5 kB leaves a margin.
ANALYSIS_BYTES_PER_RECORD = 1500
ANALYSIS_SHARE_OF_MEMORY = 0.8  # of MemAvailable, for a run analysed whole


def too_big(rows: int, available_bytes: int | None) -> dict | None:
    """None where `rows` can be analysed whole with `available_bytes` (MemAvailable; None:
    not known, so try); else what RunInfo.analysis_skipped says: rows, needed and available bytes."""
    need = rows * ANALYSIS_BYTES_PER_RECORD
    if available_bytes is None or need < available_bytes * ANALYSIS_SHARE_OF_MEMORY:
        return None
    return {"records": rows, "needed_bytes": need, "available_bytes": available_bytes}


def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_TRIM = _malloc_trim()


def return_freed() -> None:
    """Hand the free pages of the C heap back to the kernel (glibc's malloc_trim).  glibc
    keeps what a step freed for later allocations, so a tracer's resident memory would show
    its biggest step since the start, not what it holds (a third more with a minute of
    TIME_WAITs held).  Nothing where the C library has no malloc_trim."""
    if _TRIM is not None:
        _TRIM(0)
