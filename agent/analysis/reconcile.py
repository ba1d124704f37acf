"""The kernel's own counts of timewait sockets (TcpExt, per network namespace) beside tcpclose's."""
from __future__ import annotations

from ..record.runinfo import RunInfo


RECONCILED = [  # (what, TcpExt counter)
    ("timewait sockets created (TW)", "TW"),
    ("  armed for <= 4 s (TWKilled)", "TWKilled"),
    ("4-tuples taken over by connect() (TWRecycled)", "TWRecycled"),
    ("never created: tcp_max_tw_buckets full (TCPTimeWaitOverflow)", "TCPTimeWaitOverflow"),
]


# tcpclose's own counts, as the kernel counts (analysis.tally's measures): timewait sockets
# at creation, TW when armed for more than 4 s and TWKilled for 4 s or less
OURS = {"TW": "kernel_tw", "TWKilled": "kernel_tw_killed", "TWRecycled": "timewait_reused",
        "TCPTimeWaitOverflow": "timewait_overflow"}


def reconcile(tally, run: RunInfo) -> list[dict]:
    """Per network namespace: the kernel's TcpExt counts over the run beside tcpclose's.

    Returns [{"netns", "name", "kernel": {counter: n or None}, "tcpclose": {counter: n}}], the
    namespace tcpclose runs in first, then every other one where either side counted
    something; lives whose owner's namespace is not known come last (netns None).
    """
    tcpext = run.tcpext
    start, end = tcpext.get("start", {}), tcpext.get("end", {})
    cells = tally.owners.cells()
    per_netns = cells.groupby(cells["netns"].fillna(""), sort=False)[list(OURS.values())].sum()

    def ours(ns: str) -> dict[str, int]:
        counted = per_netns.loc[ns] if ns in per_netns.index else None
        return {c: 0 if counted is None else int(counted[m]) for c, m in OURS.items()}
    out = []
    order = [run.netns] + sorted((set(start) | set(per_netns.index) - {""}) - {run.netns})
    for ns in order:
        before = start.get(ns, {}).get("counters", {})
        after = end.get(ns, {}).get("counters", {})
        kernel = {c: after[c] - before[c] if c in before and c in after else None for _, c in RECONCILED}
        counted = ours(ns)
        if ns == run.netns or any(kernel.values()) or any(counted.values()):
            name = (start.get(ns) or end.get(ns) or {}).get("name", "")
            out.append({"netns": ns, "name": name, "kernel": kernel, "tcpclose": counted})
    unknown = ours("")
    if any(unknown.values()):
        out.append({"netns": None, "name": "", "kernel": {c: None for _, c in RECONCILED}, "tcpclose": unknown})
    return out
