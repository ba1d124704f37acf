"""The kernel's own counts of timewait sockets (TcpExt, per network namespace) beside tcpclose's."""
from __future__ import annotations

import pandas as pd

from ..record.runinfo import RunInfo


RECONCILED = [  # (what, TcpExt counter)
    ("timewait sockets created (TW)", "TW"),
    ("  armed for <= 4 s (TWKilled)", "TWKilled"),
    ("4-tuples taken over by connect() (TWRecycled)", "TWRecycled"),
    ("never created: tcp_max_tw_buckets full (TCPTimeWaitOverflow)", "TCPTimeWaitOverflow"),
]


def _our_counts(conns: pd.DataFrame) -> dict[str, int]:
    """tcpclose's own counts, as the kernel counts: timewait sockets at creation,
    TW when armed for more than 4 s and TWKilled for 4 s or less."""
    made = conns["tw_made"]
    short = made & (conns["tw_timeout_s"] <= 4.0)
    return {
        "TW": int((made & ~short).sum()),
        "TWKilled": int(short.sum()),
        "TWRecycled": int((conns["tw_end_reason"] == "reused").sum()),
        "TCPTimeWaitOverflow": int(conns["tw_overflow"].sum()),
    }


def reconcile(conns: pd.DataFrame, run: RunInfo) -> list[dict]:
    """Per network namespace: the kernel's TcpExt counts over the run beside tcpclose's.

    Returns [{"netns", "name", "kernel": {counter: n or None}, "tcpclose": {counter: n}}], the
    namespace tcpclose runs in first, then every other one where either side counted
    something; lives whose owner's namespace is not known come last (netns None).
    """
    tcpext = run.tcpext
    start, end = tcpext.get("start", {}), tcpext.get("end", {})
    netns_col = conns["netns"]
    out = []
    order = [run.netns] + sorted((set(start) | set(netns_col.dropna())) - {run.netns})
    for ns in order:
        before = start.get(ns, {}).get("counters", {})
        after = end.get(ns, {}).get("counters", {})
        kernel = {c: after[c] - before[c] if c in before and c in after else None for _, c in RECONCILED}
        ours = _our_counts(conns[netns_col == ns])
        if ns == run.netns or any(kernel.values()) or any(ours.values()):
            name = (start.get(ns) or end.get(ns) or {}).get("name", "")
            out.append({"netns": ns, "name": name, "kernel": kernel, "tcpclose": ours})
    unknown = _our_counts(conns[netns_col.isna()])
    if any(unknown.values()):
        out.append({"netns": None, "name": "", "kernel": {c: None for _, c in RECONCILED}, "tcpclose": unknown})
    return out
