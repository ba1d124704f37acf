"""How a process, a duration and a CLOSE_WAIT's age are written, everywhere they are shown."""
from __future__ import annotations

import pandas as pd


def close_wait_age(row) -> str:
    """A CLOSE_WAIT's age; for one begun before tracing, the snapshot gives only a lower bound."""
    if pd.isna(row.close_wait_age_s):
        return "age unknown (begun before tracing)"
    return (f"at least {row.close_wait_age_s:.1f} s (begun before tracing)" if row.partial
            else f"{row.close_wait_age_s:.1f} s")


def printable(name) -> str:
    """A name as a terminal may show it.  Any process names itself (prctl, exec of any
    file name), so a newline or an escape sequence in it would print a fake row or move the
    cursor: every character that is not printable is shown escaped, as Python writes it."""
    name = "" if name is None or (not isinstance(name, str) and pd.isna(name)) else str(name)
    if name.isprintable():
        return name
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in name)


def owner(pid, comm: str) -> str:
    """A process as every output names it: "comm (pid N)"; with no pid, the name given
    in its place (states: "(no process found)") or "unknown owner"."""
    if pid is None or pd.isna(pid):
        return printable(comm) or "unknown owner"
    return f"{printable(comm)} (pid {int(pid)})"


def who(row) -> str:
    """owner() of a row with pid and comm; a row that folds several processes of one name
    (analysis.workloads) is "comm (N processes)"."""
    folded = getattr(row, "processes", 1)
    if not pd.isna(folded) and folded > 1:
        return f"{printable(row.comm)} ({int(folded):,} processes)"
    return owner(row.pid, row.comm)


def span_text(seconds: int) -> str:
    """A range of whole seconds as people say it: "6 h", "30 min", "90 s"."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def duration_text(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.1f} s"
