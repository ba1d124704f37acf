"""What a run means, in plain words: who made the TIME_WAITs and what would remove them,
whether ports are running out, who leaks CLOSE_WAIT.  The same findings open
report.html, fill summary.json and close `tcpclose doctor` given a recording.

Each finding is {"topic", "severity" (problem | warning | info), "text", "evidence"}:
text says what to do, evidence the numbers it rests on.
"""
from __future__ import annotations

import pandas as pd

from ..labels import close_wait_age, duration_text, owner, who
from .accounting import unseen
from ..record.runinfo import RunInfo
from . import ports, queues
from .processes import PER_PROCESS, open_close_waits
from .tally import SHORT_S, Tally

TOP = 3  # processes and peers named per finding
SHORT_SHARE_CHURN = 0.5  # a process whose connections mostly close within 1 s is churning


def finding(topic: str, severity: str, text: str, evidence: str) -> dict:
    return {"topic": topic, "severity": severity, "text": text, "evidence": evidence}


def of(frame: pd.DataFrame, row, keys: list[str]) -> pd.Series:
    """The rows of `frame` (connection rows, or a tally's summary) that belong to one row of a
    grouped table (keys: analysis.processes.PER_PROCESS, PER_COMM or PER_WORKLOAD); an unknown
    owner's row has no pid, and is the lives with none."""
    mask = pd.Series(True, index=frame.index)
    for key in keys:
        value = getattr(row, key)
        mask &= frame[key].isna() if pd.isna(value) else (frame[key] == value).fillna(False)
    return mask


def close_wait_owner(group: pd.DataFrame) -> str:
    """Who holds a group of open CLOSE_WAITs: one process, or a name and how many share it."""
    pids = group["pid"].dropna().unique()
    if len(pids) > 1:
        return owner(None, group["comm"].iloc[0]) + f" ({len(pids):,} processes)"
    return owner(pids[0] if len(pids) else None, group["comm"].iloc[0])


def _timewait_makers(tally: Tally, procs: pd.DataFrame, keys: list[str]) -> list[dict]:
    """The processes holding the TIME_WAITs, and what on their side would remove them."""
    out = []
    makers = procs[procs["timewait_count"] > 0].sort_values("timewait_count", ascending=False, kind="stable")
    towards = tally.makers.summary([*keys, "raddr", "rport"], {}) if len(makers) else None
    for row in makers.head(TOP).itertuples(index=False):
        as_server = int(row.tw_as_server)
        evidence = (f"closed first on {row.active_closes} of {row.connections} connections "
                    f"({row.simultaneous_closes} simultaneous); {row.timewait_count} TIME_WAITs, "
                    f"{as_server} of them as the server")
        if as_server * 2 > row.timewait_count:
            advice = ("it is a server that closes first, so the TIME_WAITs pile up on the server. Let clients close "
                      "first (keep-alive with idle timeouts on the client side, or wait for the client's FIN before "
                      "close()); tcp_tw_reuse cannot help here, it only helps the connecting side")
        else:
            top_peer = towards[of(towards, row, keys)].sort_values("timewait_count", ascending=False, kind="stable")
            peer = f"{top_peer.iloc[0].raddr}:{top_peer.iloc[0].rport}" if len(top_peer) else "its peers"
            advice = (f"it is the client and closes first: keep its connections to {peer} open and reuse them "
                      "(HTTP keep-alive, a connection pool) and the TIME_WAITs go with the churn")
        out.append(finding("timewait", "warning" if row.timewait_count >= 1000 else "info",
                            f"{who(row)} made {row.timewait_count} TIME_WAITs: {advice}.", evidence))
    return out


def _churn(procs: pd.DataFrame) -> list[dict]:
    out = []
    churners = procs[(procs["short_share"] >= SHORT_SHARE_CHURN) & (procs["opened"] > 0)]
    for row in churners.sort_values("opened_per_s", ascending=False, kind="stable").head(TOP).itertuples(index=False):
        verb = "accepts" if row.servers * 2 > row.connections else "opens"
        out.append(finding(
            "churn", "info",
            f"{who(row)} {verb} short connections: {row.opened_per_s:.1f}/s on average "
            f"(busiest second {row.peak_opened_per_s:.0f}/s), {row.short_share:.0%} closed within "
            f"{SHORT_S:.0f} s. Each costs a handshake, a close and, on the side that closes first, "
            "a TIME_WAIT; reusing connections removes all three.",
            f"{row.opened} opened while tracing; duration p50 {duration_text(row.duration_p50_s)}, "
            f"p95 {duration_text(row.duration_p95_s)}, p99 {duration_text(row.duration_p99_s)}"))
    return out


def _port_pressure(pressure: pd.DataFrame) -> list[dict]:
    out = []
    for row in pressure[pressure["warning"]].itertuples(index=False):
        severity = "problem" if not row.tw_reuse and not pd.isna(row.seconds_left) else "warning"
        out.append(finding("ports", severity, ports.describe(row),
                            f"{row.timewait_peak} TIME_WAITs at peak toward {row.raddr}:{row.rport}; "
                            f"range {row.port_range}; rate in the last {ports.RATE_WINDOW_S:.0f} s "
                            f"{row.rate_now_per_s:.0f}/s"))
    return out


def _close_wait(tally: Tally, run: RunInfo, keys: list[str]) -> list[dict]:
    out = []
    cw = open_close_waits(tally.close_waits(), run.ended_at)
    for _, group in cw.groupby(keys, dropna=False, sort=False):
        oldest = group.iloc[0]
        fds = ", ".join(str(fd) for fd in group["fd"].dropna().head(5))
        out.append(finding(
            "close_wait", "problem",
            f"{close_wait_owner(group)} leaks CLOSE_WAIT: {len(group)} sockets whose peer closed and that it never closed. "
            "Find where it reads EOF (recv() returning 0) or an error and add close(); no sysctl fixes this.",
            f"oldest {close_wait_age(oldest)}" + (f"; fds {fds}" if fds else "")))
    return out


def _kernel_overflows(run: RunInfo) -> int | None:
    """TcpExt TCPTimeWaitOverflow over the run, all namespaces; None where the run has no counters."""
    start, end = run.tcpext.get("start", {}), run.tcpext.get("end", {})
    pairs = [(start[ns].get("counters", {}), end[ns].get("counters", {})) for ns in set(start) & set(end)]
    pairs = [(a["TCPTimeWaitOverflow"], b["TCPTimeWaitOverflow"]) for a, b in pairs
             if "TCPTimeWaitOverflow" in a and "TCPTimeWaitOverflow" in b]
    return sum(b - a for a, b in pairs) if pairs else None


def _overflow(procs: pd.DataFrame, run: RunInfo) -> list[dict]:
    lost = int(procs["timewait_overflow"].sum()) if len(procs) else 0
    if not lost:
        return []
    kernel = _kernel_overflows(run)
    if kernel == 0:  # the kernel made every timewait it was asked for: tcpclose missed their timers
        return [finding(
            "overflow", "info",
            f"{lost} active closes left no timewait timer that tcpclose saw, and the kernel counted no "
            "tcp_max_tw_buckets overflow while tracing: their TIME_WAITs were most likely made, their timers "
            "unseen (see Not seen); nothing to change.",
            "TcpExt TCPTimeWaitOverflow did not move in any network namespace")]
    return [finding(
        "overflow", "problem",
        f"{lost} TIME_WAITs were never created because tcp_max_tw_buckets was full: those connections lost "
        "TIME_WAIT's protection (a late segment of the old connection can corrupt a new one on the same ports). "
        "Raise tcp_max_tw_buckets, or make fewer TIME_WAITs.",
        "active closes whose timewait timer was never armed (TcpExt TCPTimeWaitOverflow counts the same)")]


def listen_queues(run: RunInfo) -> list[dict]:
    """Listen queues that overflowed while tracing, per network namespace (TcpExt over the
    run), with the listeners near full at the end named."""
    out = []
    start, end = run.tcpext.get("start", {}), run.tcpext.get("end", {})
    pressed = pd.DataFrame(run.listen_queues or [], columns=["netns", "laddr", "lport", "pid", "comm",
                                                             "accept_queue", "backlog", "syn_recv"])
    for ns in sorted(set(start) & set(end)):
        moved = queues.moved(start[ns].get("counters", {}), end[ns].get("counters", {}))
        if not moved:
            continue
        name = start[ns].get("name") or ""
        rows = list(pressed[pressed["netns"] == ns].itertuples(index=False))
        text, evidence = queues.overflow_finding(moved, rows, f"in {ns}" + (f" ({name})" if name else ""))
        overflowed = any(moved.get(c) for c in ("ListenOverflows", "ListenDrops", "TCPReqQFullDrop"))
        out.append(finding("listen_queue", "problem" if overflowed else "info", text, evidence))
    return out


def findings(tally: Tally, procs: pd.DataFrame, pressure: pd.DataFrame, run: RunInfo,
             keys: list[str] = PER_PROCESS) -> list[dict]:
    """procs: the grouped rows (analysis.workloads.grouped) whose `keys` name them."""
    out = (_port_pressure(pressure) + _close_wait(tally, run, keys) + _overflow(procs, run) + listen_queues(run)
           + _timewait_makers(tally, procs, keys) + _churn(procs))
    if not out:
        out.append(finding("quiet", "info", "No TIME_WAIT, CLOSE_WAIT leak or port pressure was seen while tracing.",
                            f"{tally.lives} socket lives traced"))
    missed = {what: n for what, n in unseen(run).items() if n}
    if missed:
        out.append(finding("unseen", "info", "Some of the run could not be seen; the numbers above leave it out.",
                            ", ".join(f"{n} {what}" for what, n in missed.items())))
    return out
