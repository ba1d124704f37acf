"""Build event streams the way the kernel side makes them: raw struct tcpclose_event bytes.

Packed with struct (not with the numpy dtype under test), decoded by
agent.record.decode, written as a recording and read back, so that unit tests run
through the same boundary as a live trace.
"""
from __future__ import annotations

import gzip
import ipaddress
import struct
from pathlib import Path

import numpy as np

from agent.record import decode, layout, recording
from agent.record.runinfo import RunInfo

# struct tcpclose_event, field by field (bpf/tcpclose.h)
RAW = struct.Struct("<7Q2I16s16s16s4H4BI3QB7x")
D = layout.DEFINES
OFFSET_NS = 1_700_000_000 * 10**9  # epoch - monotonic, as measured at start
HZ = 250


def states_mask(*names: str) -> int:
    return sum(1 << D["TCP_" + name] for name in names)


def raw(kind="life", *, skaddr=0xFFFF888100000000, states=(), last="FIN_WAIT2", flags=0,
        pid=100, tid=None, comm="app", owner="syscall", family=4,
        laddr="127.0.0.1", lport=40000, raddr="127.0.0.1", rport=8080,
        opened=1.0, estab=None, close_wait=None, fin=None, ts=2.0, cgroup_id=1,
        tw_timer=0, tw_start=None, tw_rearm=None, tw_timeout=60.0, tw_end=None) -> bytes:
    """One record; times in seconds of monotonic clock (0/None = not set)."""
    ns = lambda t: int(round(t * 1e9)) if t else 0  # noqa: E731
    addr = lambda a: ipaddress.ip_address(a).packed.ljust(16, b"\0")  # noqa: E731
    kinds = {v: k for k, v in layout.KIND_NAMES.items()}
    owners = {v: k for k, v in layout.OWNER_SRC_NAMES.items()}
    return RAW.pack(
        ns(ts), ns(opened), ns(estab), ns(close_wait), ns(fin), skaddr, cgroup_id,
        pid, tid if tid is not None else pid, comm.encode(), addr(laddr), addr(raddr),
        lport, rport, 2 if family == 4 else 10, states_mask(*states),
        kinds[kind], owners[owner], D["TCP_" + last], flags,
        int(tw_timeout * HZ) if tw_timer else 0, tw_timer, ns(tw_start), ns(tw_rearm),
        {v: k for k, v in layout.TW_END_NAMES.items()}.get(tw_end, 0),
    )


def timewait(how=None, *, timer, start, end=None, rearm=None, timeout=60.0) -> bytes:
    """The record of a timewait socket's end (how: expired | cancelled | replaced), or,
    with how None, of one still open at the end of tracing."""
    return raw("tw_end" if how else "tw_open", skaddr=0, pid=0, comm="", owner="none", states=(),
               last="CLOSE", opened=None, ts=end, laddr="0.0.0.0", raddr="0.0.0.0", lport=0, rport=0,
               tw_timer=timer, tw_start=start, tw_rearm=rearm, tw_timeout=timeout, tw_end=how)


def replay(tmp_path: Path, *chunks: bytes, started=0.5, ended=10.0, timewait="none", **run_extra):
    """Decode the records, write them as a recording, read it back: (events, run).
    run_extra: more of run.json, such as sysctls."""
    path = tmp_path / "stream.jsonl"
    recorder = recording.Recorder(path)
    events = decode.decode(b"".join(chunks), OFFSET_NS, HZ)
    events.loc[events["kind"] == "tw_open", "event_at"] = ended + OFFSET_NS / 1e9  # as Tracer.finish does
    recorder.write(events)
    recorder.finish(RunInfo(started_at=started + OFFSET_NS / 1e9, ended_at=ended + OFFSET_NS / 1e9,
                            timewait_method=timewait, **run_extra))
    return recording.read_recording(path)


def recorded_text(path: Path) -> str:
    """A recording's lines as text (Recorder compresses them)."""
    data = Path(path).read_bytes()
    return (gzip.decompress(data) if data.startswith(b"\x1f\x8b") else data).decode()


def epoch(t: float) -> float:
    return t + OFFSET_NS / 1e9


def churn(connections: int, span: float = 60.0) -> bytes:
    """The records of `connections` loopback connections spread over `span` seconds, each
    a client that closes first (its TIME_WAIT expires) and its server: three records a
    connection, with socket addresses, timers and ephemeral ports of their own."""
    one = np.frombuffer(b"".join([
        raw(skaddr=0xFFFF888200000000, pid=1000, comm="churn-client", last="FIN_WAIT2",
            states=("SYN_SENT", "ESTABLISHED", "FIN_WAIT1", "FIN_WAIT2"), laddr="127.0.0.1", lport=32768,
            raddr="127.0.0.2", rport=9000, opened=1.0, estab=1.0001, fin=1.0002, ts=1.0003,
            tw_timer=0xFFFF888100000000, tw_start=1.0003),
        raw(skaddr=0xFFFF888300000000, pid=2000, comm="churn-server", owner="listener", last="LAST_ACK",
            states=("SYN_RECV", "ESTABLISHED", "CLOSE_WAIT", "LAST_ACK"), laddr="127.0.0.2", lport=9000,
            raddr="127.0.0.1", rport=32768, opened=1.0, estab=1.0001, close_wait=1.0002, fin=1.0002, ts=1.0003),
        timewait("expired", timer=0xFFFF888100000000, start=1.0003, end=61.0003)]), layout.EVENT_DTYPE)
    recs = np.tile(one, connections)
    i = np.repeat(np.arange(connections, dtype=np.uint64), len(one))
    later = np.repeat((np.arange(connections) * span / connections * 1e9).astype(np.uint64), len(one))
    for field in ("ts_ns", "opened_ns", "estab_ns", "close_wait_ns", "fin_ns", "tw_start_ns"):
        recs[field] = np.where(recs[field] > 0, recs[field] + later, 0)
    for field, step in (("skaddr", 4096), ("tw_timer", 256)):
        recs[field] = np.where(recs[field] > 0, recs[field] + i * step, 0)
    port = (32768 + i % 28000).astype(np.uint16)
    for field in ("sport", "dport"):
        recs[field] = np.where(recs[field] == 32768, port, recs[field])
    return recs.tobytes()
