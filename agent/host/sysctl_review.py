"""`tcpclose doctor --sysctl FILE`: the sysctl block a user is about to apply, judged line
by line against this host's evidence, before anything is changed.

The blog posts hand out one block and say it fixes TIME_WAIT; most of its lines govern
something else (DESIGN.md section 1).  Each line gets what it governs, whether the key
exists on this kernel (a missing one makes `sysctl -p` fail), its current value and
default, the evidence here, and one verdict:

  helps here       it changes what this host's evidence shows is the problem
  no effect        it governs something other than TIME_WAIT and CLOSE_WAIT (said what)
  harmful          it removes a protection, or breaks something this host relies on
  unknown key      this kernel has no such setting: `sysctl -p` stops at it
  not judged       a setting tcpclose has no rule for (it exists; nothing is claimed)
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..analysis import queues
from ..kernel import diag, procfs
from ..kernel.netns import in_netns

HELPS, NO_EFFECT, HARMFUL, UNKNOWN, NOT_JUDGED = "helps here", "no effect", "harmful", "unknown key", "not judged"
FAILING = (HARMFUL, UNKNOWN)  # the verdicts that make the review exit non-zero
TIME_WAIT_LEN_S = 60.0
LINE = re.compile(r"^\s*(-?)\s*([A-Za-z0-9_./-]+)\s*=\s*(.*?)\s*$")


@dataclass
class Evidence:
    """What the review judges against: this host's (or namespace's) settings and counters,
    its sockets now, and a trace's findings where one was given."""
    sysctls: dict[str, str | None]  # "net.ipv4.tcp_tw_reuse" -> text, for the keys reviewed
    tcpext: dict[str, int]
    states: dict[str, int]  # sockets per state now (host.states.counts)
    timewait_on_listeners: int  # TIME_WAITs on a port something listens on: the server closed first
    listening_ports: list[int]
    listeners_pressed: list[str] = field(default_factory=list)  # queues.describe of the near-full ones
    client_rate_per_s: float | None = None  # a trace's busiest destination's opening rate


@dataclass
class Verdict:
    line: int
    key: str
    value: str
    verdict: str
    governs: str
    current: str | None
    default: str | None
    why: str
    evidence: str


def parse(text: str) -> list[tuple[int, str, str] | tuple[int, None, str]]:
    """(line number, key with dots, value) per setting line; (line number, None, the line) for
    one that is not `key = value`.  Comments (#, ;) and blank lines are skipped; `/` separators
    and sysctl.conf's leading `-` (ignore errors) are accepted."""
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith(";") else ""
        if not line:
            continue
        m = LINE.match(line)
        if not m:
            out.append((number, None, raw.strip()))
            continue
        key = m[2].strip("/").replace("/", ".")
        out.append((number, key, " ".join(m[3].split())))
    return out


def read_sysctl(key: str) -> str | None:
    """A setting's current value as the kernel shows it (whitespace collapsed); None: no such key."""
    path = Path("/proc/sys") / key.replace(".", "/")
    try:
        return " ".join(path.read_text().split())
    except OSError:
        return None


def _client_side_timewaits(e: Evidence) -> int:
    return e.states.get("TIME_WAIT", 0) - e.timewait_on_listeners


def _tw_reuse(value: str, e: Evidence) -> tuple[str, str, str]:
    client = _client_side_timewaits(e)
    stamps = e.sysctls.get("net.ipv4.tcp_timestamps")
    evidence = (f"{client} TIME_WAITs on connections this host opened, {e.timewait_on_listeners} on its listening "
                f"ports; tcp_timestamps = {stamps}; TcpExt TWRecycled = {e.tcpext.get('TWRecycled', '?')}")
    if value not in ("0", "1", "2"):
        return HARMFUL, f"{value} is not a value the kernel documents (0, 1 or 2)", evidence
    if value == "0":
        why = "0 stops connect() from taking over any TIME_WAIT, on loopback too"
        return (HARMFUL, why + ": this host's client-side TIME_WAITs then hold their ports for 60 s", evidence) \
            if client else (NO_EFFECT, why + "; this host has no client-side TIME_WAIT now", evidence)
    if stamps == "0":
        return NO_EFFECT, "it needs TCP timestamps, and tcp_timestamps is 0 here", evidence
    if value == "1" and client:
        return HELPS, ("this host's TIME_WAITs are on connections it opened, and 1 lets connect() take over one "
                       "older than 1 s towards any destination (2, the default, only towards loopback)"), evidence
    if e.timewait_on_listeners:
        return NO_EFFECT, ("it helps only the connecting side, and this host's TIME_WAITs are on its listening "
                           "ports (the server closes first): no connect() reuses those"), evidence
    return NO_EFFECT, "it helps only the connecting side" + (
        ", and 2 (the default) already covers loopback" if value == "2" else ", and no TIME_WAIT is here to reuse"), evidence


def _tw_recycle(value: str, e: Evidence) -> tuple[str, str, str]:
    return (HARMFUL, "it dropped SYNs whose timestamp went backwards, so clients behind one NAT cut each other "
                     "off; Linux 4.12 removed it", "present on this kernel (older than 4.12)")


def _fin_timeout(value: str, e: Evidence) -> tuple[str, str, str]:
    return (NO_EFFECT, "it bounds how long an orphaned connection waits in FIN_WAIT2 for the peer's FIN; TIME_WAIT "
                       "is 60 s whatever it says (TCP_TIMEWAIT_LEN, compiled in)",
            f"{e.states.get('FIN_WAIT2', 0) + e.states.get('FIN_WAIT2 (timewait)', 0)} sockets in FIN_WAIT2 now, "
            f"{e.states.get('TIME_WAIT', 0)} in TIME_WAIT")


def _keepalive_time(value: str, e: Evidence) -> tuple[str, str, str]:
    return (NO_EFFECT, "it applies only to sockets with SO_KEEPALIVE, to find dead peers of idle connections; it "
                       "shortens neither TIME_WAIT nor CLOSE_WAIT, which only the application's close() ends",
            f"{e.states.get('CLOSE_WAIT', 0)} CLOSE_WAIT and {e.states.get('TIME_WAIT', 0)} TIME_WAIT sockets now")


def _syncookies(value: str, e: Evidence) -> tuple[str, str, str]:
    sent = {c: e.tcpext.get(c, 0) for c in ("SyncookiesSent", "TCPReqQFullDoCookies", "ListenOverflows")}
    evidence = ", ".join(f"TcpExt {c} = {n}" for c, n in sent.items())
    if value == "0":
        return HARMFUL, "0 turns off the SYN-flood defence: a full SYN queue then drops new connections", evidence
    return NO_EFFECT, ("the SYN-flood defence (on by default): cookies are sent only when a listener's SYN queue "
                       "overflows; nothing to do with TIME_WAIT"), evidence


def _port_range(value: str, e: Evidence) -> tuple[str, str, str]:
    size = procfs.port_range_size(value)
    if not size or size <= 0:
        return HARMFUL, f"{value!r} is not two port numbers, low then high", ""
    low, high = (int(v) for v in value.split())
    inside = sorted(p for p in set(e.listening_ports) if low <= p <= high)
    reserved = e.sysctls.get("net.ipv4.ip_local_reserved_ports") or ""
    now = procfs.port_range_size(e.sysctls.get("net.ipv4.ip_local_port_range"))
    rate = (f"{size} ports allow {size / TIME_WAIT_LEN_S:.0f} connections/s per destination without reuse"
            + (f" (now {now}: {now / TIME_WAIT_LEN_S:.0f}/s)" if now else ""))
    evidence = rate + (f"; listening ports inside it: {', '.join(map(str, inside[:10]))}" if inside else "")
    if inside and not reserved:
        return HARMFUL, ("services listen on ports inside the new range: connect() may take one as an ephemeral port "
                         "while the service restarts; list them in net.ipv4.ip_local_reserved_ports first"), evidence
    needed = e.client_rate_per_s
    if needed is not None and now and needed > now / TIME_WAIT_LEN_S * 0.5 and size > now:
        return HELPS, f"the traced client rate, {needed:.0f}/s, presses the current range; the wider one lifts it", evidence
    return NO_EFFECT, ("it only widens the ephemeral ports a client draws from; "
                       + ("no port pressure was measured here" if needed is None or not now else
                          f"the traced rate ({needed:.0f}/s) is well within the current range")), evidence


def _max_syn_backlog(value: str, e: Evidence) -> tuple[str, str, str]:
    drops = {c: e.tcpext.get(c, 0) for c in ("TCPReqQFullDrop", "ListenDrops")}
    evidence = ", ".join(f"TcpExt {c} = {n}" for c, n in drops.items()) + (
        "; " + "; ".join(e.listeners_pressed[:3]) if e.listeners_pressed else "; no listener near full")
    if drops["TCPReqQFullDrop"]:
        return HELPS, ("it bounds half-open (SYN_RECV) connections, with somaxconn and each listen() backlog, and "
                       "SYNs were dropped here on a full SYN queue"), evidence
    return NO_EFFECT, ("it bounds half-open (SYN_RECV) connections per listener, with somaxconn and the listen() "
                       "backlog; no SYN was dropped on a full queue here, and it touches no TIME_WAIT"), evidence


def _somaxconn(value: str, e: Evidence) -> tuple[str, str, str]:
    overflows = e.tcpext.get("ListenOverflows", 0)
    evidence = f"TcpExt ListenOverflows = {overflows}" + (
        "; " + "; ".join(e.listeners_pressed[:3]) if e.listeners_pressed else "; no listener near full")
    if overflows and e.listeners_pressed:
        return HELPS, ("it caps each listen() backlog, and accept queues overflowed here: raise it with the "
                       "application's own backlog"), evidence
    return NO_EFFECT, "it caps the accept queue of each listener; no accept queue overflowed here", evidence


def _max_tw_buckets(value: str, e: Evidence) -> tuple[str, str, str]:
    now = e.states.get("TIME_WAIT", 0) + e.states.get("FIN_WAIT2 (timewait)", 0)
    evidence = f"{now} timewait sockets now; TcpExt TCPTimeWaitOverflow = {e.tcpext.get('TCPTimeWaitOverflow', 0)}"
    try:
        limit = int(value)
    except ValueError:
        return HARMFUL, f"{value!r} is not a number", evidence
    current = int(e.sysctls.get("net.ipv4.tcp_max_tw_buckets") or 0)
    if limit < current:
        return HARMFUL, (f"past {limit} timewait sockets new ones are not made at all: those connections lose "
                         "TIME_WAIT's protection (a late segment can corrupt a new connection on the same ports), and "
                         "the count only looks lower"), evidence
    if e.tcpext.get("TCPTimeWaitOverflow", 0):
        return HELPS, "TIME_WAITs overflowed here; a higher limit keeps their protection", evidence
    return NO_EFFECT, "the limit was never reached here", evidence


# key -> (what it governs, its default on current kernels (None: set at boot from memory), rule)
RULES: dict[str, tuple[str, str | None, Callable[[str, Evidence], tuple[str, str, str]]]] = {
    "net.ipv4.tcp_tw_reuse": ("whether connect() may take over a TIME_WAIT's 4-tuple", "2", _tw_reuse),
    "net.ipv4.tcp_tw_recycle": ("fast TIME_WAIT recycling by timestamp (removed in Linux 4.12)", None, _tw_recycle),
    "net.ipv4.tcp_fin_timeout": ("how long an orphaned FIN_WAIT2 waits for the peer's FIN", "60", _fin_timeout),
    "net.ipv4.tcp_keepalive_time": ("idle time before keepalive probes, SO_KEEPALIVE sockets only", "7200",
                                    _keepalive_time),
    "net.ipv4.tcp_syncookies": ("SYN cookies when a listener's SYN queue overflows", "1", _syncookies),
    "net.ipv4.ip_local_port_range": ("the ephemeral ports connect() draws from", "32768 60999", _port_range),
    "net.ipv4.tcp_max_syn_backlog": ("half-open (SYN_RECV) connections per listener", None, _max_syn_backlog),
    "net.core.somaxconn": ("the largest listen() backlog (accept queue)", "4096", _somaxconn),
    "net.ipv4.tcp_max_tw_buckets": ("timewait sockets the kernel keeps at most", None, _max_tw_buckets),
}
EVIDENCE_KEYS = (*RULES, "net.ipv4.tcp_timestamps", "net.ipv4.ip_local_reserved_ports")


def review(text: str, e: Evidence, read: Callable[[str], str | None]) -> list[Verdict]:
    """One verdict per setting line of `text`; read(key): the setting's value now, None if
    this kernel has no such setting (read_sysctl, in the namespace reviewed)."""
    out = []
    for number, key, value in parse(text):
        if key is None:
            out.append(Verdict(number, value, "", UNKNOWN, "", None, None, "not a `key = value` line", ""))
            continue
        governs, default, rule = RULES.get(key, ("", None, None))
        current = read(key)
        if current is None:
            why = ("this kernel has no such setting: `sysctl -p` stops at this line"
                   + (" (removed in Linux 4.12)" if key == "net.ipv4.tcp_tw_recycle" else ""))
            out.append(Verdict(number, key, value, UNKNOWN, governs, None, default, why, "/proc/sys has no such file"))
            continue
        if rule is None:
            out.append(Verdict(number, key, value, NOT_JUDGED, "", current, None,
                               "tcpclose has no rule for this setting; it exists on this kernel", ""))
            continue
        verdict, why, evidence = rule(value, e)
        out.append(Verdict(number, key, value, verdict, governs, current, default, why, evidence))
    return out


def gather(netns: Path | None = None, run_rate: float | None = None) -> Evidence:
    """This host's evidence (or the namespace's that netns opens)."""
    from ..filters import Filters
    from . import states

    sysctls = in_netns(netns, lambda: {key: read_sysctl(key) for key in EVIDENCE_KEYS})
    tcpext = procfs.tcpext(netns)
    frame = states.sockets_now(Filters(), netns)
    counts = states.counts(frame)
    on_listeners = int(((frame["state"] == "TIME_WAIT") & (frame["owner"] == "listener")).sum())
    listening = sorted(set(int(p) for p in frame.loc[frame["state"] == "LISTEN", "lport"]))
    pressed = [queues.describe(r) for r in queues.pressed(diag.listeners(netns)).itertuples(index=False)]
    return Evidence(sysctls, {k: v for k, v in tcpext.items() if k in (*procfs.QUEUE_COUNTERS, *procfs.TIMEWAIT_COUNTERS)},
                    counts["states"], on_listeners, listening, pressed, run_rate)


def render(verdicts: list[Verdict]) -> str:
    import textwrap

    from ..labels import printable

    lines = ["tcpclose doctor --sysctl: each line of the block, judged on this host (nothing is changed)"]
    for v in verdicts:
        head = f"\nline {v.line}: {printable(v.key)}" + (f" = {printable(v.value)}" if v.value else "")
        lines.append(head + f"  [{v.verdict}]")
        facts = []
        if v.governs:
            facts.append(f"governs: {v.governs}")
        if v.verdict != UNKNOWN or v.current is not None:
            facts.append(f"now: {v.current if v.current is not None else '-'}"
                         + (f", default {v.default}" if v.default else ""))
        lines.append(textwrap.fill("; ".join(facts), 100, initial_indent="  ", subsequent_indent="  ")
                     if facts else "")
        lines.append(textwrap.fill(f"why: {v.why}", 100, initial_indent="  ", subsequent_indent="    "))
        if v.evidence:
            lines.append(textwrap.fill(f"evidence: {v.evidence}", 100, initial_indent="  ", subsequent_indent="    "))
    failing = [v for v in verdicts if v.verdict in FAILING]
    lines.append(f"\n{len(verdicts)} lines: " + ", ".join(
        f"{sum(v.verdict == k for v in verdicts)} {k}" for k in (HELPS, NO_EFFECT, HARMFUL, UNKNOWN, NOT_JUDGED)
        if any(v.verdict == k for v in verdicts))
        + (f". Exit code 9: {len(failing)} harmful or unknown." if failing else "."))
    return "\n".join(line for line in lines if line != "") + "\n"
