"""How much of a run can be analysed in memory at its end.

The default mode makes each life's connection row as the records arrive
(analysis.stream) and keeps the rows on disk (run.kept); its end reads them back
and makes the figures from all of them, which a long run at a high churn would
need more memory for than the host has.  Past the guard the run is counted per
process only, as --aggregates does (analysis.processes.counts_of_rows), and the
run says so (RunInfo.analysis_skipped).
"""
from __future__ import annotations

# What analysing a run costs at its end, per connection row: the rows read back and the
# figures made from them.  Measured when the end decoded every record too, at 0.70 kB a
# row at 8.1 M and 17.0 M rows (docs/overhead.md); 0.9 kB leaves a margin.
ANALYSIS_BYTES_PER_RECORD = 900
ANALYSIS_SHARE_OF_MEMORY = 0.8  # of MemAvailable, for a run analysed whole


def too_big(rows: int, available_bytes: int | None) -> dict | None:
    """None where `rows` can be analysed whole with `available_bytes` (MemAvailable; None:
    not known, so try); else what RunInfo.analysis_skipped says: rows, needed and available bytes."""
    need = rows * ANALYSIS_BYTES_PER_RECORD
    if available_bytes is None or need < available_bytes * ANALYSIS_SHARE_OF_MEMORY:
        return None
    return {"records": rows, "needed_bytes": need, "available_bytes": available_bytes}
